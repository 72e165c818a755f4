"""The files connector: a directory (with globs) or one file of .txt, .md, .html, .pdf, .json, .jsonl, .csv.

A folder ingests every type it recognises, each with its reader:

* ``.txt`` / ``.md`` / ``.rst``: one document per file, id = the path relative to the root,
  title = the first Markdown heading (``# ...``) or else the file name without its suffix.
* ``.html`` / ``.htm``: text extracted with a real HTML parser (BeautifulSoup + lxml);
  scripts, styles and navigation dropped; title = ``<title>``, else the first ``<h1>``, else the name.
* ``.pdf``: one document per file with pypdf (``page_starts`` in the metadata map a chunk's
  offset to its page); title = the PDF's own title, else the name. Needs ``pip install 'rag-lfm[pdf]'``;
  for a document per page use :class:`~rag_lfm.connectors.pdf.PdfConnector`.
* ``.json`` (a list of objects, or one object), ``.jsonl`` (an object per line), ``.csv``
  (a header row): one document per record, with a field mapping -- ``text_field`` (or
  several, joined by a blank line), ``id_field`` (else ``<file>#<row>``) and
  ``metadata_fields`` (else every other scalar field).

Every file document carries ``path`` (relative), ``folder`` (its relative folder, "" at the
root), ``title``, ``type``, ``size`` (bytes) and ``mtime`` (seconds since the epoch) as
metadata, so a search can filter by folder or path prefix
(``{"path": {"$prefix": "docs/api/"}}``), size or date.

A file that cannot be read (binary, not UTF-8, no permission) or a record that is
malformed (bad JSON line, missing text field) is yielded as :class:`Skipped` with the
file (and line) and the reason; the rest of the batch goes on. A ``text_field`` that no
record file has (a misspelling) is caught by :meth:`Files.preflight` before anything is
written: the error lists the fields the files do have.

Symbolic links inside the folder are not followed by default: a link can point out of
the folder (``notes/x -> /etc/passwd``), and whoever can write the folder would then
choose what the ingesting user's process reads. Each link is reported as Skipped with
its target; ``follow_symlinks=True`` reads what links point to.

Example:
    >>> from rag_lfm.connectors import Files
    >>> docs = Files("notes/", glob="**/*.md")                       # doctest: +SKIP
    >>> rows = Files("products.csv", text_field="description", id_field="sku")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError
from rag_lfm.types import Document, Skipped

TEXT_TYPES = (".txt", ".md", ".markdown", ".rst")
HTML_TYPES = (".html", ".htm")
PDF_TYPES = (".pdf",)
RECORD_TYPES = (".json", ".jsonl", ".csv")
SUPPORTED = TEXT_TYPES + HTML_TYPES + PDF_TYPES + RECORD_TYPES
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
TEXT_FIELD_HINT = "pass --text-field FIELD on the command line (text_field='FIELD' in Python)"


class Files:
    """Documents from files under ``path``.

    Args:
        path: a directory or a single file.
        glob: pattern(s) relative to ``path`` (default: every supported file, recursively).
        text_field: for JSON/JSONL/CSV records, the field (or list of fields) holding the text.
        id_field: for records, the field holding a stable id (default ``<file>#<row number>``).
        metadata_fields: for records, the fields kept as metadata (default: every other scalar field).
        encoding: text encoding of the files.
        name: the source id (default ``files:<path>``).
        follow_symlinks: read files that symbolic links inside ``path`` point to (default
            False: links are reported as Skipped). ``path`` itself may always be a link.
    """

    complete = True

    def __init__(
        self,
        path: str,
        *,
        glob: str | list[str] = "**/*",
        text_field: str | list[str] | None = None,
        id_field: str | None = None,
        metadata_fields: list[str] | None = None,
        encoding: str = "utf-8",
        name: str | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        self.root = Path(path).expanduser()
        if not self.root.exists():
            raise ConfigError(f"files connector: path {path!r} does not exist; pass an existing file or directory")
        self.globs = [glob] if isinstance(glob, str) else list(glob)
        self.text_fields = [text_field] if isinstance(text_field, str) else list(text_field or [])
        self.id_field = id_field
        self.metadata_fields = metadata_fields
        self.encoding = encoding
        self.follow_symlinks = bool(follow_symlinks)
        self.source_id = name or f"files:{Path(path).as_posix().rstrip('/')}"

    def describe(self) -> dict[str, Any]:
        spec = {"type": "files", "path": str(self.root), "glob": self.globs, "text_field": self.text_fields or None, "id_field": self.id_field}
        if self.follow_symlinks:
            spec["follow_symlinks"] = True
        return spec

    def _scan(self) -> tuple[list[Path], list[Path]]:
        """(files to read, symbolic links not followed), both sorted."""
        if self.root.is_file():
            return [self.root], []
        found: set[Path] = set()
        links: set[Path] = set()
        for pattern in self.globs:
            for p in self.root.glob(pattern):
                link = None if self.follow_symlinks else self._first_link(p)
                if link is not None:
                    links.add(link)
                elif p.is_file():
                    found.add(p)
        # Default glob: supported types only; an explicit pattern reports what it cannot read.
        if self.globs == ["**/*"]:
            found = {p for p in found if p.suffix.lower() in SUPPORTED}
        return sorted(found), sorted(links)

    def _first_link(self, p: Path) -> Path | None:
        cur = self.root
        for part in p.relative_to(self.root).parts:
            cur = cur / part
            if cur.is_symlink():
                return cur
        return None

    def paths(self) -> list[Path]:
        return self._scan()[0]

    def __len__(self) -> int:
        files, links = self._scan()
        return len(files) + len(links)

    def _rel(self, p: Path) -> str:
        return p.name if self.root.is_file() else p.relative_to(self.root).as_posix()

    def preflight(self) -> None:
        """Check the field mapping against the record files before anything is ingested.

        Raises:
            ConfigError: ``text_field`` (or ``id_field``) is in no record file's header or
                first record -- a misspelling would otherwise fail every record one by one.
        """
        if not self.text_fields and self.id_field is None:
            return
        seen: dict[str, list[str]] = {}
        for p in self.paths():
            if p.suffix.lower() in RECORD_TYPES:
                fields = _record_fields(p, self.encoding)
                if fields is not None:
                    seen[self._rel(p)] = fields
        if not seen:
            return
        for label, wanted in [("text field", f) for f in self.text_fields] + [("id field", self.id_field)]:
            if wanted is not None and not any(wanted in fields for fields in seen.values()):
                example = next(iter(seen.items()))
                raise ConfigError(
                    f"{label} {wanted!r} is in none of the {len(seen)} record file(s); {example[0]} has the fields "
                    f"{', '.join(map(repr, example[1][:20]))}: pick one of them "
                    f"({'--text-field / text_field=' if label == 'text field' else '--id-field / id_field='})"
                )

    def iter_documents(self) -> Iterator[Document | Skipped]:
        files, links = self._scan()
        for link in links:
            try:
                target = str(link.readlink())
            except OSError:
                target = "?"
            yield Skipped(link.relative_to(self.root).as_posix(), f"symbolic link to {target!r}: not followed (pass follow_symlinks=True to read what links point to)")
        for p in files:
            rel = self._rel(p)
            suffix = p.suffix.lower()
            if suffix not in SUPPORTED:
                yield Skipped(rel, f"unsupported file type {suffix or '(none)'!r}; supported: {', '.join(SUPPORTED)}")
                continue
            try:
                stat = p.stat()
                base = {"path": rel, "folder": "" if "/" not in rel else rel.rsplit("/", 1)[0],
                        "type": suffix.lstrip("."), "size": stat.st_size, "mtime": round(stat.st_mtime, 3)}
                if suffix in PDF_TYPES:
                    yield from self._pdf(p, rel, base)
                    continue
                raw = p.read_bytes()
            except OSError as exc:
                yield Skipped(rel, f"cannot read file: {exc.strerror or exc}")
                continue
            if b"\x00" in raw[:8192]:
                yield Skipped(rel, "binary file (NUL bytes); only text files are ingested")
                continue
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                yield Skipped(rel, f"not valid {self.encoding} text ({exc.reason} at byte {exc.start}); pass encoding=... or convert the file")
                continue
            if suffix in TEXT_TYPES:
                heading = _MD_HEADING.search(text) if suffix in (".md", ".markdown") else None
                title = heading.group(1).strip() if heading else p.stem
                yield Document(rel, text, base | {"title": title})
            elif suffix in HTML_TYPES:
                yield _html_document(rel, text, base, p.stem)
            else:
                yield from self._records(rel, suffix, text, base)

    def _pdf(self, p: Path, rel: str, base: dict[str, Any]) -> Iterator[Document | Skipped]:
        from rag_lfm.connectors.pdf import read_pdf

        for item in read_pdf(p, rel, per="file"):
            if isinstance(item, Document):
                meta = base | item.metadata
                meta["title"] = item.metadata.get("title") or p.stem
                item = Document(item.id, item.text, meta)
            yield item

    def _records(self, rel: str, suffix: str, text: str, base: dict[str, Any]) -> Iterator[Document | Skipped]:
        if not self.text_fields:
            yield Skipped(rel, f"{suffix} files hold records, one document each: {TEXT_FIELD_HINT} to ingest them")
            return
        if suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                yield Skipped(rel, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
                return
            records = data if isinstance(data, list) else [data]
            for i, rec in enumerate(records):
                yield self._record(rel, f"{rel}#{i}", rec, base)
        elif suffix == ".jsonl":
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield Skipped(f"{rel}:{lineno}", f"invalid JSON line: {exc.msg} at column {exc.colno}")
                    continue
                yield self._record(rel, f"{rel}:{lineno}", rec, base)
        else:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            header = reader.fieldnames or []
            absent = [f for f in self.text_fields if f not in header]
            if absent:  # one report for the file, not one per row
                yield Skipped(rel, f"CSV header has no text field {absent[0]!r}; its fields: {', '.join(header)}")
                return
            try:
                for rec in reader:
                    where = f"{rel}:{reader.line_num}"
                    if None in rec:
                        yield Skipped(where, f"row has {len(rec) - 1 + len(rec[None])} fields but the header has {len(reader.fieldnames or [])}")
                        continue
                    yield self._record(rel, where, rec, base)
            except csv.Error as exc:
                yield Skipped(f"{rel}:{reader.line_num}", f"malformed CSV: {exc}")

    def _record(self, rel: str, where: str, rec: Any, base: dict[str, Any]) -> Document | Skipped:
        if not isinstance(rec, dict):
            return Skipped(where, f"record is a {type(rec).__name__}, not an object")
        missing = [f for f in self.text_fields if f not in rec]
        if missing:
            return Skipped(where, f"record has no text field {missing[0]!r}; its fields: {', '.join(map(str, rec))}")
        text = "\n\n".join(str(rec[f]) for f in self.text_fields if rec[f] not in (None, ""))
        if self.id_field is not None:
            if rec.get(self.id_field) in (None, ""):
                return Skipped(where, f"record has no id field {self.id_field!r}")
            doc_id = str(rec[self.id_field])
        else:
            doc_id = where.replace(":", "#", 1) if ":" in where else where
        skip = set(self.text_fields) | ({self.id_field} if self.id_field else set())
        keys = self.metadata_fields if self.metadata_fields is not None else [k for k in rec if k not in skip]
        meta = {k: rec[k] for k in keys if k in rec and isinstance(rec[k], (str, int, float, bool))}
        for k, v in base.items():
            meta.setdefault(k, v)
        return Document(doc_id, text, meta)


def _record_fields(p: Path, encoding: str) -> list[str] | None:
    """The fields of a record file: the CSV header, or the keys of the first JSON/JSONL record."""
    try:
        with open(p, encoding=encoding, newline="") as fh:
            if p.suffix.lower() == ".csv":
                return next(csv.reader(fh), None)
            if p.suffix.lower() == ".jsonl":
                for line in fh:
                    if line.strip():
                        rec = json.loads(line)
                        return list(rec) if isinstance(rec, dict) else None
                return None
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError, csv.Error):
        return None  # unreadable files are reported one by one during ingest
    first = data[0] if isinstance(data, list) and data else data
    return list(first) if isinstance(first, dict) else None


def _html_document(rel: str, html: str, base: dict[str, Any], stem: str) -> Document:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if not title and soup.h1 is not None:
        title = soup.h1.get_text(" ", strip=True)
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template", "svg"]):
        tag.decompose()
    body = soup.body or soup
    lines = [ln.strip() for ln in body.get_text("\n").splitlines()]
    text = "\n".join(ln for ln in lines if ln)
    return Document(rel, text, base | {"type": "html", "title": title or stem})


register_connector("files", Files)
