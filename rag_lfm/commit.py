"""The commit protocol of an index directory, and the concurrency model it implements.

An index directory holds::

    manifest.json                 a readable copy of the commit record, plus where the doc store is
    index-<gen>-<tag>.faiss[...]  the vector index of commit <gen> (immutable; <tag> is random per attempt)
    <side files>                  files a commit binds, e.g. bm25/..., adapters/<name>/... (see below)
    docstore.sqlite               the doc store (or a SQL server named in manifest.json)
    .lock                         the write lock

The commit record -- one JSON row (key ``commit``) of the doc store's ``meta`` table -- is
the single source of truth: the generation, the index files and their sha256, the side
files and their sha256, the configuration (embedder, metric, index type, chunking and any
other manifest key but the doc store's location), the counts. A commit changes the doc
store and replaces this row in ONE transaction: that transaction is the commit point.

Concurrency model (what :class:`IndexDirectory` guarantees; tests/adversarial checks each line):

1. One writer at a time per index, across processes: a write (an ingest, a sync, a delete,
   a side-file commit) holds an exclusive ``flock`` on ``.lock`` from its first read to its
   last commit (:meth:`IndexDirectory.write_lock`). A second writer waits for it (up to
   ``lock_timeout_s``, then :class:`~rag_lfm.errors.ConcurrentWriteError`). Readers take no lock.
2. A writer starts from the committed state: on taking the lock, a handle that another
   writer has overtaken rolls forward (reloads the committed index) before it computes
   anything, so a batch is built from the committed doc store AND the committed index.
3. Optimistic generation check at commit: the commit transaction first replaces the
   commit row only where it still holds the record the writer started from (a
   compare-and-set on the row, which also locks it), then applies the changes. If another
   commit landed in between -- possible only when the lock was bypassed, e.g. two machines
   sharing a network file system whose ``flock`` does not reach each other -- nothing is
   applied and :class:`~rag_lfm.errors.ConcurrentWriteError` is raised; the handle reloads.
   A stale handle never commits an index built from an old state.
4. Immutable files: a commit writes its index files under new names (fsynced, atomic
   renames), then commits the transaction, then rewrites manifest.json, then removes files
   no record names. A crash before the commit point leaves the previous commit (the orphan
   files are removed by the next writer); a crash after it is rolled forward.
5. Readers never write and never see a half state: :meth:`IndexDirectory.load` reads the
   record, verifies the sha256 of every file it names, loads them; when a file is missing
   or fails its check it reads the record again: if a commit replaced it meanwhile, it
   retries with the new record; only if the record did not change is the index reported
   damaged. A long-lived reader checks the record before each search and rolls forward
   in memory when it changed.
6. Roll-forward: manifest.json may lag the record (a crash between the commit point and its
   rewrite, or an index written by format version 1). Readers use the record, in memory;
   only a writer, under the lock, rewrites manifest.json.
7. Format version 1 (rag-lfm before this module): readable as is (its record has no
   configuration, so the configuration comes from manifest.json, unbound); the first write
   migrates it in place, under the lock, to version 2.

Side files (derived data and companions stored beside the index: the BM25 sidecar, query
adapters, any file a loader must trust) are bound to the record the same way as the index
files. A writer writes them under the lock (atomically, preferably under new names), then
commits their digests; readers get them verified::

    with kb.write_lock():                                   # one writer; rolled forward
        save_my_files(kb.path / "adapters" / "q")           # write the files (atomic writes)
        kb.commit_side_files(digest_files(kb.path, "adapters/q"),     # {rel path: sha256}
                             config={"adapter": {"name": "q"}})       # optional manifest keys
    data = kb.read_side_file("adapters/q/weights.safetensors")        # verified bytes
    folder = kb.side_folder("adapters/q")                   # every committed file under it verified

``side_files`` maps a path relative to the index directory to its sha256 (checked against
the file on disk before the commit, so a wrong digest is never recorded) or to ``None`` to
remove the entry (the file is deleted after the commit point). Entries not named are kept.
``config`` adds or replaces top-level manifest keys (``None`` removes one); such keys are
bound like the rest of the configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_lfm.atomic import sha256_file, write_json
from rag_lfm.docstore import DocStore
from rag_lfm.errors import ConcurrentWriteError, ConfigError, IndexFormatError
from rag_lfm.redaction import MASK

FORMAT = "rag-lfm-index"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
SQLITE_NAME = "docstore.sqlite"
PASSWORD_ENV = "RAG_LFM_DOCSTORE_PASSWORD"  # the doc store's password, when its URL had one (never stored)
LOCK = ".lock"
LOCK_TIMEOUT_S = 60.0
LOAD_ATTEMPTS = 8
# Manifest keys that are not configuration: the doc store's location (it cannot be bound to
# what it points at) and the copy of the record's own fields.
UNBOUND_KEYS = frozenset({"format_version", "docstore", "generation", "files", "side_files", "counts", "updated_at", "index_base"})


@dataclass(frozen=True)
class CommitRecord:
    """One committed state of an index (the ``commit`` row of the doc store)."""

    generation: int
    index_base: str  # the path given to the backend's save()/load(), relative to the directory
    files: dict[str, str]  # index files -> sha256
    side_files: dict[str, str]  # relative path -> sha256
    config: dict[str, Any] | None  # bound manifest content; None in a format-1 record
    factory: str
    counts: dict[str, int]
    updated_at: float
    format_version: int
    raw: str | None = field(default=None, compare=False)  # the row as stored: the compare-and-set value

    @classmethod
    def from_raw(cls, raw: str) -> CommitRecord:
        try:
            d = json.loads(raw)
            gen = int(d["generation"])
            return cls(
                generation=gen,
                index_base=d.get("index_base") or f"index-{gen}.faiss",
                files=dict(d.get("files") or {}),
                side_files=dict(d.get("side_files") or {}),
                config=d.get("config"),
                factory=d.get("factory") or "",
                counts=dict(d.get("counts") or {"documents": 0, "chunks": 0}),
                updated_at=float(d.get("updated_at") or 0.0),
                format_version=int(d.get("format_version") or 1),
                raw=raw,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise IndexFormatError(f"the doc store's commit record is not valid ({exc}): {raw[:200]!r}; restore the doc store from a backup") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version, "generation": self.generation, "index_base": self.index_base,
            "files": self.files, "side_files": self.side_files, "config": self.config, "factory": self.factory,
            "counts": self.counts, "updated_at": self.updated_at,
        }


def bound_config(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of a manifest a commit record binds (everything but the doc store's location and the record's copy)."""
    return json.loads(json.dumps({k: v for k, v in manifest.items() if k not in UNBOUND_KEYS}))


def manifest_from(record: CommitRecord, config: dict[str, Any], docstore: dict[str, Any]) -> dict[str, Any]:
    """The manifest that describes ``record`` (what readers use and writers write to manifest.json)."""
    m = json.loads(json.dumps(config))
    m.update({
        "format_version": record.format_version, "docstore": dict(docstore), "generation": record.generation,
        "files": dict(record.files), "side_files": dict(record.side_files), "counts": dict(record.counts),
        "updated_at": record.updated_at, "index_base": record.index_base,
    })
    if record.factory and isinstance(m.get("index"), dict):
        m["index"]["factory"] = record.factory
    return m


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse and check ``root/manifest.json`` (format and version); raises IndexFormatError with the fix."""
    f = root / MANIFEST
    if not root.is_dir():
        raise IndexFormatError(f"index path {str(root)!r} is not a directory; build an index there first (`rag-lfm ingest SOURCE --index {root}`)")
    if not f.exists():
        hint = " (it has a doc store: its creation was interrupted; create it again)" if (root / "docstore.sqlite").exists() else ""
        raise IndexFormatError(f"{str(root)!r} is not a rag-lfm index: it has no {MANIFEST}{hint}; build one with `rag-lfm ingest SOURCE --index {root}`")
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{f} is not valid JSON ({exc}); the manifest is damaged: restore it or rebuild the index") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{f} is not a rag-lfm manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise IndexFormatError(
            f"{root} has index format version {manifest.get('format_version')!r}; this rag-lfm reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade rag-lfm or rebuild the index"
        )
    return manifest


# -- opening a directory: where its doc store is, and creates that a crash interrupted -----
def sqlite_url(root: Path) -> str:
    """The default doc store: a SQLite file inside the index directory."""
    return f"sqlite:///{(root / SQLITE_NAME).resolve()}"


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def interrupted_create(root: Path) -> bool:
    """True when ``root`` holds the manifest of a create that never reached its first commit."""
    m = read_json(root / MANIFEST)
    if not isinstance(m, dict) or m.get("format") != FORMAT or int(m.get("generation", 0) or 0) != 0:
        return False
    try:
        store = DocStore(docstore_url(root, m.get("docstore") or {}, None), prefix=(m.get("docstore") or {}).get("prefix", "rag_"))
    except ConfigError:
        return False
    try:
        return store.get_commit_raw() is None
    except Exception:  # noqa: BLE001 - tables never created: interrupted too
        return True
    finally:
        store.dispose()


def empty_record(store: DocStore) -> bool:
    """True when a doc store's record is the empty first commit of a create (nothing to keep)."""
    commit = store.get_commit() or {}
    return int((commit.get("counts") or {}).get("documents", 1)) == 0 and store.counts() == (0, 0) and not store.source_infos()


def docstore_url(root: Path, recorded: dict[str, Any], given: str | None) -> str:
    """The URL to open: ``given``, else the recorded one (with the password from the environment when it had one)."""
    if given:
        return given
    url = recorded.get("url")
    if not url:
        return sqlite_url(root)
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - DocStore reports a bad URL with the fix
        return url
    if parsed.password == MASK:
        password = os.environ.get(PASSWORD_ENV)
        if not password:
            raise ConfigError(
                f"the doc store of {root} ({url}) needs a password, which is never stored; set ${PASSWORD_ENV}, "
                "or pass the full URL: KnowledgeBase.open(path, docstore='...')"
            )
        return parsed.set(password=password).render_as_string(hide_password=False)
    return url


def digest_files(root: str | os.PathLike[str], rel: str) -> dict[str, str]:
    """``{relative path: sha256}`` of the file ``root/rel``, or of every file under the folder ``root/rel``.

    Example:
        >>> digest_files(kb.path, "bm25")                    # doctest: +SKIP
        {'bm25/chunk_ids.npy': '9f2c...', 'bm25/params.index.json': '41aa...', ...}
    """
    root = Path(root)
    target = root / rel
    if target.is_file():
        return {Path(rel).as_posix(): sha256_file(target)}
    if not target.is_dir():
        raise ConfigError(f"side file {rel!r} does not exist under {root}; write it before committing it")
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(target.rglob("*")) if p.is_file() and not p.name.startswith(".")}


def _check_rel(rel: str) -> str:
    p = Path(rel)
    if not isinstance(rel, str) or not rel or p.is_absolute() or ".." in p.parts:
        raise ConfigError(f"side file path {rel!r} must be a relative path inside the index directory, e.g. 'bm25/params.index.json'")
    top = p.parts[0]
    if top in (MANIFEST, LOCK) or top.startswith("docstore.") or (len(p.parts) == 1 and top.startswith("index-")):
        raise ConfigError(f"side file path {rel!r} names a file the commit protocol owns; use a folder of your own, e.g. 'adapters/<name>/...'")
    return p.as_posix()


class IndexDirectory:
    """The commit protocol over one index directory and its doc store (see the module docstring).

    Args:
        root: the index directory.
        docstore: its :class:`~rag_lfm.docstore.DocStore`.

    Attributes:
        record: the commit record this handle last loaded or committed (None before the first).
        lock_timeout_s: how long :meth:`write_lock` waits for another writer.
    """

    def __init__(self, root: Path, docstore: Any) -> None:
        self.root = Path(root)
        self.docstore = docstore
        self.record: CommitRecord | None = None
        self.lock_timeout_s = LOCK_TIMEOUT_S
        self._lock_depth = 0
        self._lock_fh: Any = None
        self._seen_stat: tuple[int, int, int] | None = None

    # -- the write lock ------------------------------------------------------------------
    @property
    def locked(self) -> bool:
        """True while this handle holds the write lock."""
        return self._lock_depth > 0

    @contextlib.contextmanager
    def write_lock(self, timeout_s: float | None = None) -> Iterator[None]:
        """Hold the index's exclusive write lock (re-entrant within this handle).

        Waits for another writer up to ``timeout_s`` (default :attr:`lock_timeout_s`).
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        wait = self.lock_timeout_s if timeout_s is None else timeout_s
        fh = open(self.root / LOCK, "a+")  # noqa: SIM115 - held for the whole write
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConcurrentWriteError(
                            f"{self.root} is being written by another process (waited {wait:g} s for its write lock); "
                            "wait for it to finish, or raise kb.lock_timeout_s"
                        ) from None
                    time.sleep(0.02)
            self._lock_fh, self._lock_depth = fh, 1
            try:
                yield
            finally:
                self._lock_depth = 0
                self._lock_fh = None
                fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()

    def _require_lock(self, what: str) -> None:
        if not self._lock_depth:
            raise ConcurrentWriteError(f"{what} needs the write lock of {self.root}; call it inside `with kb.write_lock():`")

    # -- reading -------------------------------------------------------------------------
    def read_record(self) -> CommitRecord | None:
        """The committed record, read from the doc store now (None when the index was never committed)."""
        raw = self.docstore.get_commit_raw()
        return None if raw is None else CommitRecord.from_raw(raw)

    def load(self, manifest: dict[str, Any], load_index: Callable[[Path, dict[str, Any]], Any], *, verify: bool = True) -> tuple[CommitRecord, dict[str, Any], Any]:
        """Load the committed index: ``(record, effective manifest, index)``; retries when a commit replaces it meanwhile.

        ``load_index(path, manifest)`` builds the backend from ``root/record.index_base``.
        With ``verify`` every index file's sha256 is checked against the record first.
        """
        last_error: Exception | None = None
        for attempt in range(LOAD_ATTEMPTS):
            record = self.read_record()
            if record is None:
                raise IndexFormatError(
                    f"{self.root}: its creation was interrupted before the first commit (the doc store has no commit record); "
                    f"create it again: KnowledgeBase.create({str(self.root)!r}) or `rag-lfm ingest SOURCE --index {self.root}`"
                )
            if int(manifest.get("generation", 0)) > record.generation:
                raise IndexFormatError(
                    f"{self.root}: manifest.json says generation {manifest.get('generation')} but the doc store's commit record says "
                    f"{record.generation}; the doc store was restored from an older backup or belongs to another index"
                )
            config = record.config if record.config is not None else bound_config(manifest)
            effective = manifest_from(record, config, manifest.get("docstore") or {})
            if record.format_version == 1 and not record.factory:
                effective["index"]["factory"] = manifest["index"]["factory"]
            try:
                if verify:
                    self._verify(record.files, kind="index file")
                index = load_index(self.root / record.index_base, effective)
            except (IndexFormatError, OSError) as exc:
                # A commit may have replaced the files under us: only an unchanged record means damage.
                last_error = exc
                now = self.read_record()
                if now is not None and now.raw != record.raw:
                    time.sleep(0.005 * (attempt + 1))
                    continue
                raise
            self.record = record
            return record, effective, index
        raise IndexFormatError(
            f"{self.root}: the index changed {LOAD_ATTEMPTS} times while it was being loaded ({last_error}); "
            "a writer is committing very often: open it again, or raise commit_every in the writer"
        )

    def _verify(self, files: dict[str, str], *, kind: str) -> None:
        for name, digest in files.items():
            f = self.root / name
            if not f.exists():
                raise IndexFormatError(f"{self.root}: {kind} {name} is missing; restore it or rebuild the index")
            if sha256_file(f) != digest:
                raise IndexFormatError(f"{self.root}: {kind} {name} fails its sha256 check (truncated or modified); restore it or rebuild the index")

    def refresh(self) -> CommitRecord | None:
        """The committed record if it differs from :attr:`record` (another handle committed), else None.

        Called before every search, so it is cheap for a SQLite doc store: when the database
        file is unchanged since the last check, no query runs (one ``stat``, ~2 us, instead
        of a query, ~60-180 us).
        """
        stat = self._db_stat()
        if stat is not None and stat == self._seen_stat:
            return None
        raw = self.docstore.get_commit_raw()
        # Trust an unchanged stat later only if the file's mtime is older than the clock's
        # coarseness: a write after this point then gets a later mtime, never the same one.
        self._seen_stat = stat if stat is not None and time.time_ns() - stat[0] > 50_000_000 else None
        if raw is None or (self.record is not None and raw == self.record.raw):
            return None
        return CommitRecord.from_raw(raw)

    def _db_stat(self) -> tuple[int, int, int] | None:
        url = self.docstore.engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        try:
            st = os.stat(url.database)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    # -- side files ----------------------------------------------------------------------
    def read_side_file(self, rel: str) -> bytes:
        """The bytes of committed side file ``rel``, checked against the record's sha256."""
        rel = Path(rel).as_posix()
        record = self._current()
        if rel not in record.side_files:
            known = ", ".join(sorted(record.side_files)) or "(none)"
            raise IndexFormatError(f"{self.root}: {rel!r} is not a committed side file of this index; committed: {known}")
        try:
            data = (self.root / rel).read_bytes()
        except FileNotFoundError:
            raise IndexFormatError(f"{self.root}: side file {rel} is missing; restore it or rebuild it (e.g. delete its folder and let it be rebuilt)") from None
        if hashlib.sha256(data).hexdigest() != record.side_files[rel]:
            raise IndexFormatError(f"{self.root}: side file {rel} fails its sha256 check (truncated or modified); restore it or rebuild it")
        return data

    def verify_side_files(self, prefix: str) -> dict[str, str]:
        """Check every committed side file under ``prefix`` (a folder or a file); returns them ``{rel: sha256}``."""
        prefix = Path(prefix).as_posix().rstrip("/")
        record = self._current()
        chosen = {r: d for r, d in record.side_files.items() if r == prefix or r.startswith(prefix + "/")}
        if not chosen:
            raise IndexFormatError(f"{self.root}: no committed side file under {prefix!r}; committed: {', '.join(sorted(record.side_files)) or '(none)'}")
        self._verify(chosen, kind="side file")
        return chosen

    def _current(self) -> CommitRecord:
        if self.record is None:
            raise IndexFormatError(f"{self.root}: no commit loaded yet")
        return self.record

    # -- writing -------------------------------------------------------------------------
    def commit(
        self,
        changes: Any,
        *,
        config: dict[str, Any],
        index: Any = None,
        side_files: dict[str, str | None] | None = None,
    ) -> CommitRecord:
        """Commit ``changes`` (a ChangeSet) and, when given, a new ``index`` (a backend to save) as the next record.

        Must run under :meth:`write_lock`. ``config`` is the bound manifest content of the new
        record; ``side_files`` adds (``{rel: sha256}``) or removes (``{rel: None}``) side files.
        Raises ConcurrentWriteError when the committed record is no longer the one this
        handle started from (nothing is applied then).
        """
        self._require_lock("a commit")
        base = self.record
        gen = (base.generation if base else 0) + (1 if index is not None or base is None else 0)
        if index is not None:
            index_base = f"index-{gen}-{secrets.token_hex(4)}.faiss"
            saved = index.save(self.root / index_base)
            files = {f.name: sha256_file(f) for f in saved}
            factory = getattr(index, "factory", "")
        else:
            assert base is not None
            index_base, files, factory = base.index_base, dict(base.files), base.factory
        merged = dict(base.side_files) if base else {}
        removed = []
        for rel, digest in (side_files or {}).items():
            rel = _check_rel(rel)
            if digest is None:
                if merged.pop(rel, None) is not None:
                    removed.append(rel)
                continue
            f = self.root / rel
            if not f.is_file():
                raise ConfigError(f"side file {rel!r} does not exist in {self.root}; write it before committing it")
            actual = sha256_file(f)
            if actual != digest:
                raise ConfigError(f"side file {rel!r} has sha256 {actual[:12]}..., not the {str(digest)[:12]}... given; pass digest_files(kb.path, {rel!r})")
            merged[rel] = digest
        record = CommitRecord(
            generation=gen, index_base=index_base, files=files, side_files=merged, config=json.loads(json.dumps(config)),
            factory=factory, counts=dict(base.counts) if base else {"documents": 0, "chunks": 0}, updated_at=time.time(),
            format_version=FORMAT_VERSION,
        )
        body = record.to_dict()
        try:
            self.docstore.apply(changes, body, expect=base.raw if base else None)  # the commit point; fills counts
        except ConcurrentWriteError:
            raise ConcurrentWriteError(
                f"{self.root}: another writer committed since this handle loaded generation {base.generation if base else 0}, "
                "bypassing the write lock (a network file system?); nothing was applied: reopen the index and run the write again"
            ) from None
        self.record = CommitRecord.from_raw(self.docstore.encode_commit(body))
        for rel in removed:
            (self.root / rel).unlink(missing_ok=True)
        return self.record

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Rewrite manifest.json (writers only, under the lock)."""
        self._require_lock("rewriting manifest.json")
        write_json(self.root / MANIFEST, manifest)

    def remove_unreferenced(self) -> None:
        """Remove index files no committed record names, and temporary files of crashed writes (under the lock)."""
        self._require_lock("removing files")
        keep = set(self.record.files) if self.record else set()
        for f in self.root.iterdir():
            name = f.name
            if name.startswith("index-") and name not in keep:
                f.unlink(missing_ok=True)
            elif name.startswith(".") and ".tmp-" in name and (name.startswith(".index-") or name.startswith(f".{MANIFEST}")):
                f.unlink(missing_ok=True)
