"""PDF connector: the PDFs of a folder (or one file), one Document per page or per file.

Text is extracted with pypdf. With ``per="page"`` (the default) each page is a Document
with id ``"<relative path>#page=<n>"`` (1-based, the form PDF viewers open) and metadata
``{"path", "page", "pages", "title"}``; with ``per="file"`` a file is one Document whose
metadata also holds ``page_starts`` (the character offset where each page begins), so a
chunk's page is ``bisect(page_starts, chunk.start)``.

An encrypted PDF is opened with ``password`` (or the empty password many PDFs use); one
that still can't be opened, a damaged file and a page without extractable text (a scanned
image: OCR it first) are yielded as ``Skipped``, and the other files go on.

Example:
    >>> pdfs = PdfConnector(path="papers/", per="page")     # doctest: +SKIP
    >>> kb.sync(pdfs)                                       # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.types import Document, Skipped

_PAGE_SEP = "\n\n"


def _pypdf():
    try:
        import pypdf
    except ImportError as exc:
        raise ImportError("the pdf connector needs pypdf; run: pip install 'rag-lfm[pdf]'") from exc
    return pypdf


class PdfConnector:
    """PDF files under ``path`` as Documents, per page (default) or per file.

    Args:
        path: a folder (searched with ``pattern``) or a single ``.pdf`` file.
        pattern: glob under a folder, e.g. ``"**/*.pdf"`` (recursive, the default) or ``"*.pdf"``.
        per: ``"page"`` (one Document per page) or ``"file"`` (one per file, pages joined).
        password: tried on encrypted files (after the empty password).
        name: source id; default ``"pdf:<absolute folder>"``.

    Attributes:
        source_id, complete (True: every matching file is yielded or reported).
    """

    def __init__(
        self,
        *,
        path: str,
        pattern: str = "**/*.pdf",
        per: Literal["page", "file"] = "page",
        password: str | None = None,
        name: str | None = None,
    ) -> None:
        if per not in ("page", "file"):
            raise ConfigError(f"PdfConnector per={per!r} is not valid; valid options: 'page', 'file'")
        self.path = Path(path).expanduser()
        self.pattern = pattern
        self.per = per
        self.password = password
        self.complete = True
        self.source_id = name if name is not None else f"pdf:{self.path.resolve()}"

    def describe(self) -> dict[str, Any]:
        """The spec that rebuilds this connector (what `rag-lfm sync` re-runs); no password."""
        spec: dict[str, Any] = {"type": "pdf", "path": str(self.path), "pattern": self.pattern, "per": self.per,
                                "name": self.source_id}
        return spec

    def __repr__(self) -> str:
        return f"PdfConnector(source_id={self.source_id!r}, per={self.per!r})"

    def _files(self) -> tuple[Path, list[Path]]:
        if self.path.is_file():
            return self.path.parent, [self.path]
        if not self.path.is_dir():
            raise SourceError(
                f"PdfConnector path={str(self.path)!r} does not exist; give a folder of PDFs or one .pdf file"
            )
        return self.path, sorted(p for p in self.path.glob(self.pattern) if p.is_file())

    def iter_documents(self) -> Iterator[Document | Skipped]:
        """Yield Documents per page (or file); Skipped for unreadable files and empty pages.

        Raises:
            SourceError: ``path`` does not exist.
        """
        root, files = self._files()
        for file in files:
            yield from read_pdf(file, file.relative_to(root).as_posix(), per=self.per, password=self.password)


def _open(file: Path, ref: str, password: str | None):
    """Return a PdfReader, or a Skipped saying why the file can't be read."""
    pypdf = _pypdf()
    try:
        reader = pypdf.PdfReader(str(file), strict=False)
        if reader.is_encrypted:
            ok = False
            for pw in ("", password) if password else ("",):
                try:
                    ok = bool(reader.decrypt(pw))
                except (pypdf.errors.PdfReadError, NotImplementedError, ValueError) as exc:
                    if "cryptography" in str(exc) or "AES" in str(exc):
                        return Skipped(ref, f"encrypted with AES; pip install cryptography to open it ({exc})")
                    ok = False
                if ok:
                    break
            if not ok:
                hint = "the given password= is wrong" if password else "pass password= in the spec"
                return Skipped(ref, f"encrypted PDF could not be opened: {hint}")
        _ = len(reader.pages)  # forces the page tree to be parsed: a damaged file fails here
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        # pypdf reports damaged structures with several exception types
        return Skipped(ref, f"not a readable PDF ({type(exc).__name__}: {exc})")
    return reader


def read_pdf(
    file: Path, rel: str, *, per: Literal["page", "file"] = "page", password: str | None = None
) -> Iterator[Document | Skipped]:
    """One PDF as Documents (per page, or one per file with ``page_starts``), or Skipped with the reason.

    ``rel`` is the id of the file (its path relative to the connector's root). Used by
    :class:`PdfConnector` and by the files connector for the PDFs of a mixed folder.
    """
    pypdf = _pypdf()
    # pypdf logs warnings for every recoverable defect; the Skipped reports carry what matters
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    opened = _open(file, rel, password)
    if isinstance(opened, Skipped):
        yield opened
        return
    reader = opened
    try:
        title = str((reader.metadata or {}).get("/Title") or "") if reader.metadata is not None else ""
    except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError) as exc:
        title = ""
        logging.getLogger(__name__).debug("no title in %s: %s", rel, exc)
    n_pages = len(reader.pages)
    if per == "page":
        for i, page in enumerate(reader.pages, start=1):
            ref = f"{rel}#page={i}"
            try:
                t = (page.extract_text() or "").strip()
            except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
                yield Skipped(ref, f"page text could not be extracted ({type(exc).__name__}: {exc})")
                continue
            if not t:
                yield Skipped(ref, "page has no extractable text (a scanned image? OCR it first)")
                continue
            yield Document(id=ref, text=t, metadata={"path": rel, "page": i, "pages": n_pages, "title": title})
        return
    texts: list[str] = []
    for i, page in enumerate(reader.pages, start=1):
        try:
            texts.append((page.extract_text() or "").strip())
        except (pypdf.errors.PyPdfError, ValueError, KeyError, TypeError, AttributeError) as exc:
            yield Skipped(rel, f"text of page {i} could not be extracted ({type(exc).__name__}: {exc})")
            return
    starts, pos = [], 0
    for t in texts:
        starts.append(pos)
        pos += len(t) + len(_PAGE_SEP)
    text = _PAGE_SEP.join(texts)
    if not text.strip():
        yield Skipped(rel, "no extractable text on any page (a scanned PDF? OCR it first)")
        return
    yield Document(id=rel, text=text, metadata={"path": rel, "pages": n_pages, "title": title, "page_starts": starts})


register_connector("pdf", PdfConnector)
