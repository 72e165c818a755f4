"""KnowledgeBase: one index directory = a FAISS index + a SQL doc store + a manifest.

Ingest: connector -> documents -> chunks -> embeddings (reused from the store when a
chunk's text was embedded before) -> index + doc store, committed every
``commit_every`` documents. Search: query -> embedding -> FAISS (restricted to a
metadata filter's ids inside the search) -> hits with text and metadata.

On disk (see ../DESIGN.md)::

    manifest.json             a copy of the commit record (format, embedder, index factory, counts,
                              sha256 of the index and side files) and where the doc store is
    index-<gen>-<tag>.faiss   the vector index of commit <gen> (immutable once written)
    docstore.sqlite           documents, chunks, stored vectors, and the commit record

Concurrency and safety (the protocol lives in :mod:`rag_lfm.commit`, whose docstring
states the model in full): one writer at a time per index across processes (a file
lock held for a whole ingest, sync or delete; a second writer waits); a writer first
rolls its handle forward to the committed generation, and its commit is a
compare-and-set on the commit record, so a stale handle never commits an index built
from an old state; each commit writes new immutable files, then records them with
their sha256 in the doc store in the same transaction as the document changes (the
commit point), then rewrites manifest.json. Readers take no lock and never write: they
load only files the committed record names, check their sha256, retry when a commit
replaced them meanwhile, and roll forward in memory before each search when another
process committed. Files beside the index (e.g. a BM25 sidecar, adapters) are bound to
the record with :meth:`KnowledgeBase.commit_side_files` and read back verified.

Example:
    >>> from rag_lfm import KnowledgeBase, Files                     # doctest: +SKIP
    >>> kb = KnowledgeBase.create("indexes/notes", embedder="all-MiniLM-L6-v2")
    >>> kb.ingest(Files("notes/", glob="**/*.md")).summary()
    >>> for hit in kb.search("who painted water lilies?", k=3, filter={"topic": "Arts"}):
    ...     print(f"{hit.score:.3f} {hit.doc_id}")
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.chunking import Chunker
from rag_lfm.commit import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PASSWORD_ENV,
    SQLITE_NAME,
    IndexDirectory,
    bound_config,
    docstore_url,
    empty_record,
    interrupted_create,
    manifest_from,
    read_json,
    read_manifest,
    sqlite_url,
)
from rag_lfm.connectors.base import Connector
from rag_lfm.docstore import ChangeSet, DocStore, doc_key, metadata_fields
from rag_lfm.embedders import embedder_config, embedder_from_config, make_embedder
from rag_lfm.errors import ConfigError, EmbedderMismatchError, IndexFormatError, SourceError
from rag_lfm.index import TorchExactBackend, faiss_gpu_count, load_backend, make_backend, resolve_factory
from rag_lfm.index.build import build_backend, chain_batches, sample_stream, train_size
from rag_lfm.redaction import redact
from rag_lfm.types import Document, Hit, Skipped

COMPACT_MASKED_SHARE = 0.2  # rebuild an index that cannot remove ids once this share is masked
SEARCH_ATTEMPTS = 3  # searches redone when a commit lands between the index search and the doc store read
EXACT_FILTER_LIMIT = 4096  # a filter matching at most this many chunks is scored exactly from stored vectors
EXACT_FACTORIES = ("IDMap2,Flat", "IDMap,Flat", "torch-exact")  # searched exhaustively: a selector never starves them


# Documents chunked and embedded at a time during an ingest: small enough that progress moves and a
# commit by time comes on time, large enough that sorting by length inside a group keeps padding low:
# 256 ingested 1,500 wiki leads 12% faster than 64 with onnx-int8 on 2 cores (512: no further gain),
# which is most of the gap to LangChain's single global sort; about 5 s between progress updates.
EMBED_BATCH_DOCS = 256


@dataclass
class _Pending:
    """The changes gathered for the next commit of an ingest."""

    changes: ChangeSet = field(default_factory=ChangeSet)
    read: int = 0  # documents read since the last commit (changed or not): what commit_every counts
    docs: int = 0  # documents that change the index
    ids: list[np.ndarray] = field(default_factory=list)
    vecs: list[np.ndarray] = field(default_factory=list)
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # content hash -> vector, for repeated chunks

    def reset(self) -> None:
        self.changes, self.read, self.docs, self.ids, self.vecs, self.vectors = ChangeSet(), 0, 0, [], [], {}


@dataclass
class IngestReport:
    """What an ingest or sync did, document by document."""

    source_id: str
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: list[Skipped] = field(default_factory=list)
    chunks_embedded: int = 0
    chunks_reused: int = 0
    commits: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = [asdict(s) for s in self.failed]
        return d

    def summary(self) -> str:
        lines = [
            f"source {self.source_id}: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.deleted} deleted, {len(self.failed)} failed; {self.chunks_embedded} chunks embedded, "
            f"{self.chunks_reused} reused; {self.commits} commits in {self.seconds:.1f} s"
        ]
        lines += [f"  failed: {s.ref}: {s.reason}" for s in self.failed[:50]]
        if len(self.failed) > 50:
            lines.append(f"  ... and {len(self.failed) - 50} more")
        if self.error:
            lines.append(f"  error: {self.error} (the index keeps its last committed state)")
        return "\n".join(lines)


class KnowledgeBase:
    """An index directory: create it, ingest sources into it, search it.

    Use :meth:`create` or :meth:`open` (or :meth:`open_or_create`), not the constructor.
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], embedder: Any, docstore: DocStore, index: Any,
        *, directory: IndexDirectory | None = None, open_options: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.embedder = embedder
        self.docstore = docstore
        self.index = index
        self._chunker: Chunker | None = None
        self._retriever: Any = None
        # The commit protocol (lock, compare-and-set commits, verified loads): see rag_lfm.commit.
        self._dir = directory or IndexDirectory(Path(path), docstore)
        self._open_options = dict(open_options or {"mmap": False, "device": "auto", "verify": True})

    @property
    def chunker(self) -> Chunker:
        """The chunker, built on first use: it needs the embedder's tokenizer, which loads the model,
        and reading an index (``info``, counts, filters) should not."""
        if self._chunker is None:
            c = self.manifest["chunking"]
            self._chunker = Chunker(self.embedder.tokenizer, size=c["size"], overlap=c["overlap"])
        return self._chunker

    @property
    def retriever(self) -> Any:
        """The :class:`~rag_lfm.retrieval.Retriever` that :meth:`search` runs, built from the manifest's
        ``retriever`` configuration (indexes made before it was recorded get today's default)."""
        if self._retriever is None:
            from rag_lfm.retrieval.retriever import Retriever

            self._retriever = Retriever.from_config(self, self.manifest.get("retriever"))
        return self._retriever

    @property
    def query_adapter(self) -> Any:
        """The active query adapter (:mod:`rag_lfm.adapters.store`) that searches apply, or None."""
        self._refresh()
        if not self.manifest.get("query_adapters"):
            return None
        from rag_lfm.adapters.store import active_query_adapter

        return active_query_adapter(self)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: Any = "all-MiniLM-L6-v2",
        index: str = "auto",
        backend: str = "faiss",
        metric: str = "ip",
        docstore: str | None = None,
        table_prefix: str = "rag_",
        chunk_size: int | None = None,
        chunk_overlap: int = 40,
        device: str = "auto",
        embedder_backend: str = "auto",
        retriever: str | dict[str, Any] = "default",
    ) -> KnowledgeBase:
        """Create an empty index directory at ``path``.

        Args:
            embedder: a model name/path (sentence-transformers), ``"hash-<dim>"``, or an Embedder object.
            index: ``"auto"`` (see :mod:`rag_lfm.index.base` for the rule), an index family name
                (e.g. ``"ivf-pq-rescore"``, sized as the collection grows; see :mod:`rag_lfm.index.families`)
                or a FAISS factory string (optionally ending in ``",Rescore"``).
            backend: ``"faiss"``, ``"torch"`` (exact search with torch, e.g. on a GPU without faiss-gpu),
                or ``"auto"`` (torch when torch sees a GPU and faiss has none).
            metric: ``"ip"`` (cosine for normalised embedders) or ``"l2"``.
            docstore: a SQLAlchemy URL; default a SQLite file inside the directory. A password in it
                is used now but never written: manifest.json keeps ``***``, and :meth:`open` takes
                the password from ``$RAG_LFM_DOCSTORE_PASSWORD`` (or the full URL from ``docstore=``).
            chunk_size: tokens per chunk (default: the embedder's limit, at most 256).
            chunk_overlap: tokens shared by consecutive chunks.
            embedder_backend: ``"auto"`` (the fastest backend on this machine that keeps the model's
                retrieval quality, measured once per machine: see :func:`rag_lfm.embedders.choose_backend`),
                ``"torch"``, ``"onnx"``, ``"onnx-int8"``, ``"openvino"`` or ``"openvino-int8"``.
            retriever: what :meth:`search` runs: ``"default"`` (hybrid dense + BM25, the best measured:
                see :data:`rag_lfm.retrieval.retriever.DEFAULT_CONFIG`), ``"dense"``, or a configuration
                dict for :meth:`rag_lfm.retrieval.Retriever.from_config`. Recorded in the manifest.
        """
        root = Path(path)
        if (root / MANIFEST).exists() and not interrupted_create(root):
            raise ConfigError(f"{root} already holds an index; open it with KnowledgeBase.open({str(root)!r}) or choose another path")
        if root.exists() and not root.is_dir():
            raise ConfigError(f"index path {root} is a file; pass a directory path")
        if backend not in ("faiss", "torch", "auto"):
            raise ConfigError(f"backend={backend!r} must be 'faiss', 'torch' or 'auto'")
        if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
            raise ConfigError(f"chunk_size={chunk_size!r} must be a positive number of tokens (or None for the embedder's limit, at most 256)")
        if backend == "auto":
            backend = "torch" if _torch_cuda() and faiss_gpu_count() == 0 else "faiss"
        emb = make_embedder(embedder, device=device, backend=embedder_backend) if isinstance(embedder, str) else make_embedder(embedder)
        size = chunk_size or min(256, emb.max_tokens - 2)
        Chunker(None, size=size, overlap=chunk_overlap)  # validates size/overlap before anything is written
        root.mkdir(parents=True, exist_ok=True)
        store = DocStore(docstore or sqlite_url(root), prefix=table_prefix)
        store.create_tables()
        if store.get_commit() is not None:
            if (root / MANIFEST).exists() or not empty_record(store):
                raise ConfigError(f"doc store {store.safe_url} with prefix {table_prefix!r} already holds an index; pass another table_prefix")
            # An interrupted create by an older rag-lfm (committed, manifest never written): nothing to keep.
            store.drop_tables()
            store.create_tables()
        retriever_cfg = _retriever_config(retriever)
        dim = int(emb.dim)
        factory = resolve_factory(index, 0, dim)  # "auto", a family name (rag_lfm.index.families) or a factory string
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "embedder": embedder_config(emb),
            "metric": metric,
            "index": {"spec": index, "factory": factory, "backend": backend},
            "chunking": {"size": size, "overlap": chunk_overlap},
            "docstore": {"url": redact(docstore) if docstore else None, "prefix": table_prefix},
            "retriever": retriever_cfg,
            "generation": 0,
            "files": {},
            "side_files": {},
            "counts": {"documents": 0, "chunks": 0},
            "created_at": time.time(),
        }
        kb = cls(root, manifest, emb, store, cls._new_backend(manifest, dim, device), open_options={"mmap": False, "device": device, "verify": True})
        with kb._dir.write_lock():
            # manifest.json first (generation 0): a crash before the first commit leaves a directory
            # that open() reports as interrupted and create() overwrites, never a doc store without a manifest.
            kb._dir.write_manifest(manifest)
            kb._commit(ChangeSet(), rebuild=False)
        return kb

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        embedder: Any = None,
        device: str = "auto",
        embedder_backend: str | None = None,
        mmap: bool = False,
        verify: bool = True,
        docstore: str | None = None,
    ) -> KnowledgeBase:
        """Open an existing index directory (reads only: it never writes to the directory).

        Args:
            embedder: optional override (name or object); must match the recorded name and dimension.
            embedder_backend: run the recorded model with another backend (e.g. ``"onnx-int8"``).
            mmap: memory-map the index's inverted lists / code arrays instead of reading them, so an
                index larger than the process' memory is searchable (read-only use).
            verify: check the sha256 of the index files against the commit record.
            docstore: the doc store URL with its password, when the recorded one had a password
                (recorded as ``***``); else the password comes from ``$RAG_LFM_DOCSTORE_PASSWORD``.
        """
        root = Path(path)
        manifest = read_manifest(root)
        dstore = manifest["docstore"]
        store = DocStore(docstore_url(root, dstore, docstore), prefix=dstore["prefix"])
        try:
            store.check_tables()
        except IndexFormatError:
            if int(manifest.get("generation", 0)) == 0:
                store.dispose()
                raise IndexFormatError(
                    f"{root}: its creation was interrupted before the first commit; create it again: "
                    f"KnowledgeBase.create({str(root)!r}) or `rag-lfm ingest SOURCE --index {root}`"
                ) from None
            raise
        directory = IndexDirectory(root, store)
        options = {"mmap": mmap, "device": device, "verify": verify}
        try:
            _, manifest, index = directory.load(manifest, lambda f, m: cls._load_backend(f, m, mmap=mmap, device=device), verify=verify)
        except BaseException:
            store.dispose()
            raise
        emb = embedder_from_config(manifest["embedder"], device=device, backend=embedder_backend)
        if embedder is not None:
            given = make_embedder(embedder, device=device) if isinstance(embedder, str) else make_embedder(embedder)
            want = manifest["embedder"]
            if given.name != want["name"] or int(given.dim) != int(want["dim"]):
                raise EmbedderMismatchError(
                    f"{root} was built with embedder {want['name']!r} (dim {want['dim']}), not {given.name!r} (dim {given.dim}); "
                    "open it without an embedder argument, or build a new index for this embedder"
                )
            emb = given
        if int(getattr(index, "dim", manifest["embedder"]["dim"])) != int(manifest["embedder"]["dim"]):
            raise IndexFormatError(f"{root}: the index file has dimension {index.dim} but the manifest says {manifest['embedder']['dim']}")
        return cls(root, manifest, emb, store, index, directory=directory, open_options=options)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], **create_kwargs: Any) -> KnowledgeBase:
        """Open ``path`` if it holds an index, else create one with ``create_kwargs``.

        A directory whose creation was interrupted (a crash before its first commit) is created again.
        """
        root = Path(path)
        if (root / MANIFEST).exists() and not interrupted_create(root):
            return cls.open(path, device=create_kwargs.get("device", "auto"), docstore=create_kwargs.get("docstore"))
        return cls.create(path, **create_kwargs)

    @staticmethod
    def _new_backend(manifest: dict[str, Any], dim: int, device: str = "auto", factory: str | None = None) -> Any:
        idx = manifest["index"]
        if idx["backend"] == "torch":
            return TorchExactBackend(dim, metric=manifest["metric"], device=device)
        return make_backend(dim, factory or idx["factory"], metric=manifest["metric"], params=_index_params(idx), device=device)

    @staticmethod
    def _load_backend(f: Path, manifest: dict[str, Any], *, mmap: bool, device: str) -> Any:
        if manifest["index"]["backend"] == "torch":
            return TorchExactBackend.load(f, metric=manifest["metric"], device=device)
        idx = manifest["index"]
        return load_backend(f, idx["factory"], metric=manifest["metric"], params=_index_params(idx), mmap=mmap, device=device)

    def reload(self) -> None:
        """Reload the last committed state (after another process wrote, or after a failed write); checks sha256."""
        opts = self._open_options
        _, manifest, index = self._dir.load(
            self.manifest, lambda f, m: self._load_backend(f, m, mmap=opts["mmap"], device=opts["device"]), verify=opts["verify"]
        )
        self.manifest, self.index = manifest, index

    def _refresh(self) -> bool:
        """Roll forward in memory when another handle committed since this one loaded; True when it did."""
        record = self._dir.refresh()
        if record is None:
            return False
        current = self._dir.record
        if current is not None and (record.index_base, record.files) == (current.index_base, current.files):
            # Only doc store rows or side files changed: the loaded index is still the committed one.
            config = record.config if record.config is not None else bound_config(self.manifest)
            self.manifest = manifest_from(record, config, self.manifest["docstore"])
            self._dir.record = record
            return True
        self.reload()
        return True

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the index's write lock (one writer at a time across processes), rolled forward.

        Inside, this handle is at the committed generation and no other writer can commit;
        manifest.json is rewritten when it lags the record, and files of crashed writes are
        removed. Ingest, sync and delete take it themselves; take it to commit side files.

        Example:
            >>> with kb.write_lock():                                           # doctest: +SKIP
            ...     kb.commit_side_files(digest_files(kb.path, "adapters/q"))
        """
        with self._dir.write_lock():
            if self._dir.locked and self._dir._lock_depth == 1:
                self._refresh()
                if read_json(self.path / MANIFEST) != self.manifest:
                    self._dir.write_manifest(self.manifest)  # roll forward (or migrate) manifest.json: writers only
                self._dir.remove_unreferenced()
            yield

    _write_lock = write_lock  # the name used before the commit protocol moved to rag_lfm.commit

    @property
    def writing(self) -> bool:
        """True inside this handle's :meth:`write_lock`: it may write and commit side files."""
        return bool(self._dir.locked)

    @property
    def lock_timeout_s(self) -> float:
        """Seconds a write waits for another writer's lock before ConcurrentWriteError (default 60)."""
        return self._dir.lock_timeout_s

    @lock_timeout_s.setter
    def lock_timeout_s(self, value: float) -> None:
        self._dir.lock_timeout_s = float(value)

    def close(self) -> None:
        self.docstore.dispose()

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- properties ----------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """Bumps at every commit; sidecars (e.g. a BM25 index) rebuild when theirs is older."""
        return int(self.manifest["generation"])

    @property
    def dim(self) -> int:
        return int(self.manifest["embedder"]["dim"])

    def __len__(self) -> int:
        return int(self.manifest["counts"]["chunks"])

    # -- ingest --------------------------------------------------------------------------
    def ingest(
        self,
        connector: Connector,
        *,
        commit_every: int = 1000,
        commit_seconds: float = 30.0,
        progress: bool = True,
        delete_missing: bool = False,
    ) -> IngestReport:
        """Add or update every document ``connector`` yields; skip unchanged ones by content hash.

        Bad records are reported in ``report.failed`` and skipped; the rest ingests.
        Documents are chunked and embedded in small batches (``EMBED_BATCH_DOCS``), and the
        work is committed every ``commit_every`` documents or every ``commit_seconds`` of work,
        whichever comes first, so an interrupted ingest keeps what it committed (at most half
        a minute of work is lost, however small the corpus) and a re-run only does the rest.
        The progress bar counts documents as they are embedded, with chunks and commits beside.
        With ``delete_missing`` (what :meth:`sync` does) documents of this source that the
        connector no longer yields are deleted, once the whole source was read.
        """
        if commit_every < 1:
            raise ConfigError(f"commit_every={commit_every!r} must be >= 1")
        if not commit_seconds > 0:
            raise ConfigError(f"commit_seconds={commit_seconds!r} must be > 0 (seconds of work between commits)")
        preflight = getattr(connector, "preflight", None)
        if callable(preflight):
            preflight()  # e.g. a misspelt text field: fail before anything is written
        source_id = getattr(connector, "source_id", None)
        if not isinstance(source_id, str) or not source_id:
            raise ConfigError(f"connector {connector!r} has no source_id (a non-empty str); every connector must name its source")
        report = IngestReport(source_id)
        t0 = time.perf_counter()
        seen: set[str] = set()
        batch: list[Document] = []
        from tqdm.auto import tqdm

        total = len(connector) if hasattr(connector, "__len__") else None  # type: ignore[arg-type]
        bar = tqdm(total=total, desc=f"ingest {source_id}", unit="doc", disable=not progress)
        pending = _Pending()
        last_commit = time.monotonic()

        def flush(force: bool) -> None:
            nonlocal batch, last_commit
            if batch:
                n = len(batch)
                self._prepare_batch(batch, source_id, report, pending)
                pending.read += n
                batch = []
                bar.update(n)  # documents chunked and embedded (committed ones are in the postfix)
            due = pending.read >= commit_every or time.monotonic() - last_commit >= commit_seconds
            if force or due:
                if pending.docs:
                    self._commit_pending(pending, report)
                pending.reset()
                last_commit = time.monotonic()
            bar.set_postfix(chunks=report.chunks_embedded + report.chunks_reused, commits=report.commits, refresh=False)

        with self._write_lock():
            try:
                for item in connector.iter_documents():
                    if isinstance(item, Skipped):
                        bar.update(1)
                        report.failed.append(item)
                        seen.add(doc_key(source_id, item.ref))  # keep its last good version: never delete on a read error
                        continue
                    problem = _check_document(item)
                    key = doc_key(source_id, item.id) if isinstance(getattr(item, "id", None), str) else None
                    if problem is None and key in seen:
                        problem = "duplicate document id in this source (the first one was kept)"
                    if problem is not None:
                        report.failed.append(Skipped(str(getattr(item, "id", item))[:200], problem))
                        bar.update(1)
                        continue
                    seen.add(key)
                    batch.append(item)
                    if len(batch) >= min(commit_every - pending.read, EMBED_BATCH_DOCS):
                        flush(force=False)
                flush(force=True)
            except Exception as exc:
                report.error = redact(f"{type(exc).__name__}: {exc}")
                report.seconds = time.perf_counter() - t0
                bar.close()
                if isinstance(exc, (SourceError, ConfigError)):
                    raise
                raise SourceError(f"ingest of source {source_id!r} stopped: {report.error}; committed batches are kept, re-run to finish") from exc
            if delete_missing and getattr(connector, "complete", True):
                gone = [k for k in self.docstore.doc_keys_of_source(source_id) if k not in seen]
                if gone:
                    report.deleted += self._delete_keys(gone)
                    report.commits += 1
            self._record_source(source_id, connector, report)
            self._refresh_sidecars()
        bar.close()
        report.seconds = time.perf_counter() - t0
        return report

    def sync(self, connector: Connector, **kwargs: Any) -> IngestReport:
        """Make the index match the source: add new, update changed, skip unchanged, delete gone documents."""
        return self.ingest(connector, delete_missing=True, **kwargs)

    def _prepare_batch(self, docs: list[Document], source_id: str, report: IngestReport, pending: _Pending) -> None:
        """Chunk and embed ``docs`` (those whose content changed) into ``pending``, the next commit's changes."""
        keys = [doc_key(source_id, d.id) for d in docs]
        states = self.docstore.doc_states(keys)
        changes = pending.changes
        new_chunks: list[tuple[str, Any]] = []  # (doc_key, Chunk) to store
        now = time.time()
        for key, doc in zip(keys, docs):
            old = states.get(key)
            if old is not None and old[0] == doc.content_hash:
                report.unchanged += 1
                continue
            chunks = self.chunker.split(source_id, doc.id, doc.text)
            if not chunks:
                report.failed.append(Skipped(doc.id, "no text left after tokenisation (empty or whitespace-only document)"))
                continue
            old_ids = set(old[1]) if old else set()
            new_ids = {c.id for c in chunks}
            changes.delete_chunk_ids.extend(sorted(old_ids - new_ids))
            new_chunks.extend((key, c) for c in chunks if c.id not in old_ids)
            changes.upsert_docs.append(
                {"doc_key": key, "source_id": source_id, "doc_id": doc.id, "content_hash": doc.content_hash, "meta": doc.metadata, "n_chunks": len(chunks), "updated_at": now}
            )
            for name, ftype in metadata_fields(doc.metadata).items():
                prev = changes.fields.get(name)
                changes.fields[name] = ftype if prev in (None, ftype) else "mixed"
            pending.docs += 1
            if old is None:
                report.added += 1
            else:
                report.updated += 1
        if not new_chunks:
            return
        # The embedding cache: a chunk whose text was embedded before (same model: one per index) is not
        # re-embedded, whether it was committed or is waiting in this commit.
        hashes = [c.content_hash for _, c in new_chunks]
        cached = {h: pending.vectors[h] for h in hashes if h in pending.vectors}
        cached.update(self.docstore.vectors_by_hash([h for h in hashes if h not in cached], self.dim))
        todo: dict[str, str] = {}
        for _, c in new_chunks:
            if c.content_hash not in cached:
                todo.setdefault(c.content_hash, c.text)
        if todo:
            vecs = self.embedder.encode(list(todo.values()), kind="document")
            cached.update(zip(todo.keys(), vecs))
        report.chunks_embedded += len(todo)
        report.chunks_reused += len(new_chunks) - len(todo)
        vectors = np.stack([cached[c.content_hash] for _, c in new_chunks]).astype(np.float32)
        pending.vectors.update(zip(hashes, vectors))
        pending.ids.append(np.array([c.id for _, c in new_chunks], dtype=np.int64))
        pending.vecs.append(vectors)
        changes.add_chunks.extend(
            {"id": int(c.id), "doc_key": key, "ordinal": c.ordinal, "start": c.start, "end": c.end, "text": c.text, "content_hash": c.content_hash, "vector": vectors[i].tobytes()}
            for i, (key, c) in enumerate(new_chunks)
        )

    def _commit_pending(self, pending: _Pending, report: IngestReport) -> None:
        """Commit what :meth:`_prepare_batch` gathered (one generation), then start a new batch."""
        ids = np.concatenate(pending.ids) if pending.ids else np.zeros(0, np.int64)
        vecs = np.concatenate(pending.vecs) if pending.vecs else np.zeros((0, self.dim), np.float32)
        self._apply(pending.changes, ids, vecs)
        report.commits += 1

    def _apply(self, changes: ChangeSet, add_ids: np.ndarray, add_vectors: np.ndarray) -> None:
        """Change the in-memory index, then commit; on any failure return to the last committed state."""
        try:
            self.index.remove(np.array(changes.delete_chunk_ids, dtype=np.int64))
            if len(add_ids):
                if not getattr(self.index, "is_trained", True):
                    self._train(add_ids, add_vectors, changes)
                self.index.add(add_ids, add_vectors)
            self._commit(changes)
        except BaseException:
            self.reload()
            raise

    def _train(self, add_ids: np.ndarray, add_vectors: np.ndarray, changes: ChangeSet) -> None:
        # A bounded uniform sample of the committed vectors and this batch (not all of them: large collections).
        n = self.docstore.counts()[1] + len(add_ids)
        stream = chain_batches(self.docstore.iter_vectors(), [(add_ids, add_vectors)])
        sample = sample_stream(stream, train_size(self.index, n), n=n)
        nlist = getattr(self.index.ivf, "nlist", 0) if self.index.ivf is not None else 0
        if len(sample) < max(nlist, 1):
            raise ConfigError(
                f"index {self.index.factory!r} needs at least {nlist} vectors to train, got {len(sample)}; "
                "ingest more documents in the first batch (commit_every), use fewer IVF lists, or index='auto'"
            )
        self.index.train(sample)

    # -- commit --------------------------------------------------------------------------
    def _commit(self, changes: ChangeSet, *, rebuild: bool = True) -> None:
        """Commit ``changes`` with the in-memory index as the next generation (see rag_lfm.commit)."""
        if rebuild:
            _, n_chunks = self.docstore.counts()
            self._maybe_rebuild(n_chunks + len(changes.add_chunks) - len(changes.delete_chunk_ids), changes)
        self.manifest["index"]["factory"] = self.index.factory
        self._finish(self._dir.commit(changes, config=bound_config(self.manifest), index=self.index))

    def _finish(self, record: Any) -> None:
        """After a commit point: the handle's manifest follows the record; manifest.json and old files follow."""
        self.manifest = manifest_from(record, record.config, self.manifest["docstore"])
        self._dir.write_manifest(self.manifest)
        self._dir.remove_unreferenced()

    def _maybe_rebuild(self, n_chunks: int, changes: ChangeSet) -> None:
        """Switch the auto (or family) index type when the collection crosses a size threshold; compact masked ids."""
        if self.manifest["index"]["backend"] == "torch":
            return
        want = resolve_factory(self.manifest["index"]["spec"], n_chunks, self.dim)
        if want == self.index.factory and self.index.masked_share <= COMPACT_MASKED_SHARE:
            return
        # Rebuild from the stored vectors, streamed: committed ones minus deletions, plus this batch's additions.
        deleted = np.array(changes.delete_chunk_ids, dtype=np.int64)
        added = []
        if changes.add_chunks:
            added.append((np.array([c["id"] for c in changes.add_chunks], dtype=np.int64),
                          np.stack([np.frombuffer(c["vector"], dtype=np.float32) for c in changes.add_chunks])))
        self.index = build_backend(want, self.dim, lambda: chain_batches(self.docstore.iter_vectors(), added), n=n_chunks + len(deleted),
                                   metric=self.manifest["metric"], params=_index_params(self.manifest["index"]), exclude=deleted)

    def _rebuild_with(self, build: Any, *, spec: str, params: dict[str, Any]) -> None:
        """Replace the index by ``build()`` (a backend made from this KB's stored vectors) as the next generation.

        Used by :meth:`tune`: the new factory (as ``spec``, so later commits keep it) and its search
        parameters go into the manifest with the same commit; on any failure the last committed state is reloaded.
        """
        with self._write_lock():
            try:
                index = build()
                self.manifest["index"].update({"spec": spec, "params": params})
                self.manifest["index"].pop("nprobe", None)
                self.index = index
                self._commit(ChangeSet(), rebuild=False)
            except BaseException:
                self.reload()
                raise
            self._refresh_sidecars()  # the BM25 sidecar follows the new generation

    # -- delete --------------------------------------------------------------------------
    def delete(self, doc_ids: Sequence[str] = (), *, source: str | None = None) -> int:
        """Delete documents by id (in ``source``, or in every source), or every document of ``source``.

        Returns the number of documents deleted.
        """
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
        with self._write_lock():  # the ids to delete are read under the lock too: one consistent state
            n = self._delete(list(doc_ids), source)
            if n:
                self._refresh_sidecars()
            return n

    def _delete(self, doc_ids: list[str], source: str | None) -> int:
        sources = self.docstore.source_infos()
        all_sources = set(sources) | set(self.docstore.source_counts())
        if source is not None and source not in all_sources:
            raise ConfigError(f"source {source!r} is not in this index; sources: {', '.join(sorted(all_sources)) or '(none)'}")
        targets = [source] if source is not None else sorted(all_sources)
        keys = []
        for s in targets:
            present = self.docstore.doc_keys_of_source(s)
            if doc_ids:
                wanted = {doc_key(s, d) for d in doc_ids}
                keys.extend(k for k in present if k in wanted)
            else:
                keys.extend(present)
        if not doc_ids and source is None:
            raise ConfigError("delete() needs document ids or a source; to delete everything, remove the index directory")
        if not keys:
            return 0
        return self._delete_keys(keys, whole_source=source if not doc_ids else None)

    def _delete_keys(self, keys: list[str], *, whole_source: str | None = None) -> int:
        changes = ChangeSet(delete_doc_keys=keys, delete_chunk_ids=self.docstore.chunk_ids_of_docs(keys))
        if whole_source is not None:
            changes.delete_sources.append(whole_source)
        self._apply(changes, np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
        return len(keys)

    def _refresh_sidecars(self) -> None:
        """Bring the retriever's BM25 indexes up to the committed generation (by the writer, at the end
        of a write), so the first hybrid query after an ingest pays nothing extra."""
        if self.manifest.get("retriever", {}).get("method", "hybrid") != "dense" and len(self):
            _ = self.retriever.bm25_indexes

    def _record_source(self, source_id: str, connector: Any, report: IngestReport) -> None:
        # The spec lets `rag-lfm sync` rebuild this connector later; "name" keeps its source id.
        from rag_lfm.connectors.spec import sign_spec

        describe = getattr(connector, "describe", None)
        spec = getattr(connector, "spec", None) or (describe() if callable(describe) else None)
        info: dict[str, Any] = {"type": type(connector).__name__}
        if isinstance(spec, dict):
            spec = json.loads(json.dumps(spec | {"name": source_id}, default=str))
            safe = redact(spec)
            if safe != spec:
                # A secret is never stored; the masked spec is kept for people, and sync won't run it.
                info["spec"], info["spec_redacted"] = safe, True
            else:
                info["spec"] = spec
                signature = sign_spec(spec)
                if signature is not None:
                    info["spec_signature"] = signature
        else:
            info["spec"] = None
        info |= {
            "last_sync": time.time(),
            "last_report": redact({k: v for k, v in report.to_dict().items() if k not in ("failed",)} | {"failed": len(report.failed)}),
        }
        changes = ChangeSet(sources={source_id: json.loads(json.dumps(info, default=str))})
        self._commit_small(changes)

    def _commit_small(self, changes: ChangeSet) -> None:
        """Record doc-store-only changes (no vector changes) under the current generation's files."""
        self._finish(self._dir.commit(changes, config=bound_config(self.manifest)))

    # -- side files ----------------------------------------------------------------------
    @property
    def side_files(self) -> dict[str, str]:
        """The committed side files: ``{path relative to the index directory: sha256}``."""
        return dict(self.manifest.get("side_files") or {})

    def commit_side_files(self, side_files: dict[str, str | None], *, config: dict[str, Any] | None = None) -> None:
        """Bind side files (and optionally manifest keys) to a new commit record, under the write lock.

        Args:
            side_files: ``{relative path: sha256}`` to add or replace (the files must already be
                written; :func:`rag_lfm.commit.digest_files` computes the digests), ``{path: None}``
                to remove an entry (its file is deleted after the commit). Others are kept.
            config: top-level manifest keys to add or replace (``None`` removes one), e.g. a
                retriever configuration. The keys of the index itself (embedder, metric, index,
                chunking, format, docstore) cannot be changed this way.

        Example:
            >>> from rag_lfm.commit import digest_files
            >>> with kb.write_lock():                                   # doctest: +SKIP
            ...     save_adapter(kb.path / "adapters" / "q")
            ...     kb.commit_side_files(digest_files(kb.path, "adapters/q"), config={"adapter": "q"})
        """
        if not self._dir.locked:
            raise ConfigError("commit_side_files() must run inside `with kb.write_lock():` (the files are written under the same lock)")
        merged = bound_config(self.manifest)
        for key, value in (config or {}).items():
            if key in _FIXED_KEYS or key in ("docstore", "generation", "files", "side_files", "counts", "format_version"):
                raise ConfigError(f"config key {key!r} belongs to the index itself and cannot be changed by commit_side_files(); valid: any other top-level name, e.g. 'retriever'")
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        self._finish(self._dir.commit(ChangeSet(), config=merged, side_files=side_files))

    def read_side_file(self, rel: str) -> bytes:
        """The bytes of committed side file ``rel``, verified against its sha256 in the commit record."""
        self._refresh()
        return self._dir.read_side_file(rel)

    def side_folder(self, rel: str) -> Path:
        """``path / rel`` after checking every committed side file under it (for loaders that take a folder)."""
        self._refresh()
        self._dir.verify_side_files(rel)
        return self.path / rel

    # -- search --------------------------------------------------------------------------
    def search(
        self, query: str, k: int = 10, *, filter: dict[str, Any] | None = None, method: str | None = None
    ) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (restricted to documents matching ``filter``).

        ``method``: None runs the index's recorded retriever (:attr:`retriever`: hybrid dense + BM25
        by default); ``"dense"`` the embedding search alone.
        """
        if not isinstance(query, str):
            raise ConfigError(f"query must be a str, got {type(query).__name__}: {query!r}; for many queries use search_batch()")
        return self.search_batch([query], k, filter=filter, method=method)[0]

    def search_batch(
        self, queries: Sequence[str], k: int = 10, *, filter: dict[str, Any] | None = None, method: str | None = None
    ) -> list[list[Hit]]:
        """Search many queries at once (one embedding pass, one index search); see :meth:`search`."""
        queries = check_queries(queries)
        if method not in (None, "dense"):
            raise ConfigError(f"method {method!r} is not valid here; use None (the index's retriever) or 'dense', "
                              "or build a rag_lfm.retrieval.Retriever for other methods")
        if not queries:
            return []
        if method is None and self.manifest.get("retriever", {}).get("method", "hybrid") != "dense":
            return self.retriever.search_batch(list(queries), k, filter=filter)  # retries a racing commit itself
        qvecs = self.embedder.encode(list(queries), kind="query")
        adapter = self.query_adapter
        if adapter is not None:
            qvecs = adapter.apply(qvecs)
        for _ in range(SEARCH_ATTEMPTS):
            scores, ids = self.search_vectors(qvecs, k, filter=filter)
            hits = self.hits(scores, ids)
            # A chunk the doc store no longer has: a commit landed between the index search and the
            # doc store read. Search again from the new commit rather than return fewer than k hits.
            if sum(len(h) for h in hits) == int((ids >= 0).sum()) or not self._refresh():
                break
        return hits

    def search_vectors(self, qvecs: np.ndarray, k: int, *, filter: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores ``[b, k']``, chunk ids ``[b, k']``) for query vectors; id -1 where fewer than k match.

        ``k' = min(k, chunks in the index)`` (at least 1): k is clamped to the collection, so
        nothing is allocated for results that cannot exist. Before searching, the handle
        rolls forward when another process committed since it was opened (a ``stat`` of a
        SQLite doc store, else one small query).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r} must be a positive int")
        qvecs = np.ascontiguousarray(qvecs, dtype=np.float32)
        if qvecs.ndim != 2 or qvecs.shape[1] != self.dim:
            raise ConfigError(f"query vectors of shape {qvecs.shape} do not match the index dimension {self.dim}")
        self._refresh()
        k = min(int(k), max(int(self.index.ntotal), 1))
        if not filter:
            return self.index.search(qvecs, k)
        allowed = self.docstore.filter_ids(filter)
        if len(allowed) == 0:
            return np.full((len(qvecs), 1), -np.inf, np.float32), np.full((len(qvecs), 1), -1, np.int64)
        k = min(k, len(allowed))
        if len(allowed) <= EXACT_FILTER_LIMIT and self.index.factory not in EXACT_FACTORIES:
            # A small match set on an approximate index: score it exactly from the stored vectors,
            # so IVF/HNSW never starve a selective filter.
            return self._exact(qvecs, allowed, k)
        return self.index.search(qvecs, k, allowed)

    def _exact(self, qvecs: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vecs = self.docstore.vectors(ids, self.dim)
        scores = qvecs @ vecs.T
        if self.manifest["metric"] == "l2":
            scores = 2 * scores - (vecs**2).sum(1)[None, :] - (qvecs**2).sum(1, keepdims=True)
        kk = min(k, len(ids))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kk]
        out_s = np.full((len(qvecs), k), -np.inf, np.float32)
        out_i = np.full((len(qvecs), k), -1, np.int64)
        out_s[:, :kk] = np.take_along_axis(scores, top, 1)
        out_i[:, :kk] = ids[top]
        return out_s, out_i

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[list[Hit]]:
        """Turn search results into Hits with text and metadata (one doc store query)."""
        rows = self.docstore.fetch({int(i) for i in ids.ravel() if i >= 0})
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for s, i in zip(srow, irow):
                r = rows.get(int(i))
                if i < 0 or r is None:
                    continue
                hits.append(Hit(int(i), r["doc_id"], float(s), r["text"], r["meta"] or {}, r["source_id"], r["start"], r["end"]))
            out.append(hits)
        return out

    def vectors(self, chunk_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored embedding of each chunk, float32 ``[n, dim]``."""
        return self.docstore.vectors(np.asarray(chunk_ids, dtype=np.int64), self.dim)

    def fetch(self, chunk_ids: Sequence[int] | np.ndarray) -> list[Hit]:
        """Hits (score 0.0) for chunk ids, in the given order; unknown ids are left out."""
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(1, -1)
        return self.hits(np.zeros(ids.shape, np.float32), ids)[0]

    def iter_chunks(self, batch_size: int = 1000) -> Iterator[list[Hit]]:
        """Every chunk as Hits (score 0.0), in id order, in batches."""
        for rows in self.docstore.iter_chunk_rows(batch_size):
            yield [Hit(int(r["id"]), r["doc_id"], 0.0, r["text"], r["meta"] or {}, r["source_id"], r["start"], r["end"]) for r in rows]

    # -- info ----------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Counts, embedder, index type, memory (resident and on-disk bytes per component), files, sources (``rag-lfm info``)."""
        from rag_lfm.tradeoffs.memory import memory_report

        counts = self.docstore.source_counts()
        sources = {}
        for sid, inf in self.docstore.source_infos().items():
            sources[sid] = {"documents": counts.get(sid, 0), "last_sync": inf.get("last_sync"), "type": inf.get("type")}
        for sid, n in counts.items():
            sources.setdefault(sid, {"documents": n, "last_sync": None, "type": None})
        files = {f.name: f.stat().st_size for f in sorted(self.path.iterdir()) if f.is_file() and not f.name.startswith(".")}
        return {
            "path": str(self.path),
            "format_version": self.manifest["format_version"],
            "generation": self.generation,
            "embedder": self.manifest["embedder"],
            "metric": self.manifest["metric"],
            "index": {**self.manifest["index"], "ntotal": self.index.ntotal, "memory_bytes": self.index.memory_bytes},
            "memory": memory_report(self),
            "chunking": self.manifest["chunking"],
            "docstore": self.docstore.safe_url,
            "counts": self.manifest["counts"],
            "side_files": self.side_files,
            "query_adapters": _adapter_list(self),
            "fields": self.docstore.fields(),
            "sources": sources,
            "files": files,
        }

    # -- memory / speed trade-offs -------------------------------------------------------
    def tune(self, max_memory: int | str, min_recall: float = 0.95, max_p50_ms: float | None = None, queries: Any = None, **options: Any) -> Any:
        """Measure index families on this collection and rebuild with the best one that meets the budget.

        See :func:`rag_lfm.tradeoffs.tune_kb` for the options (``families``, ``n_queries``, ``plot``,
        ``apply``, ``objective``, ``progress``). Returns a :class:`rag_lfm.tradeoffs.TuneResult`.

        Example:
            >>> result = kb.tune(max_memory="200MB", min_recall=0.95)     # doctest: +SKIP
            >>> print(result.summary())                                    # doctest: +SKIP
        """
        from rag_lfm.tradeoffs import tune_kb

        return tune_kb(self, max_memory=max_memory, min_recall=min_recall, max_p50_ms=max_p50_ms, queries=queries, **options)

def check_queries(queries: Any) -> list[str]:
    """``queries`` as a list of non-blank str, or a ConfigError naming the bad item.

    Example:
        >>> check_queries(["a", "b"])
        ['a', 'b']
    """
    if isinstance(queries, str):
        raise ConfigError("search_batch() takes a list of queries, got one str; use search() or wrap it in a list")
    try:
        items = list(queries)
    except TypeError:
        raise ConfigError(f"queries must be a list of str, got {type(queries).__name__}: {queries!r}") from None
    for i, q in enumerate(items):
        if not isinstance(q, str):
            raise ConfigError(f"query {i} is a {type(q).__name__} ({q!r}), not a str; pass text queries (search_vectors() takes vectors)")
        if not q.strip():
            raise ConfigError(f"query {i} is empty or blank ({q!r}); an empty query matches nothing meaningful: pass some text")
    return items


def _check_document(doc: Any) -> str | None:
    if not isinstance(doc, Document):
        return f"connector yielded {type(doc).__name__}, not a Document or Skipped"
    if not isinstance(doc.id, str) or not doc.id:
        return f"document id {doc.id!r} must be a non-empty str"
    if not isinstance(doc.text, str):
        return f"document text is {type(doc.text).__name__}, not str"
    if not doc.text.strip():
        return "empty document (no text)"
    if not isinstance(doc.metadata, dict):
        return f"metadata is {type(doc.metadata).__name__}, not a dict"
    try:
        json.dumps(doc.metadata)
    except (TypeError, ValueError) as exc:
        return f"metadata is not JSON-serialisable ({exc}); convert values to str/number/bool/list/dict"
    return None


def _retriever_config(retriever: str | dict[str, Any]) -> dict[str, Any]:
    from rag_lfm.retrieval.retriever import CONFIG_KEYS, DEFAULT_CONFIG, DENSE_CONFIG

    if retriever == "default":
        return dict(DEFAULT_CONFIG)
    if retriever == "dense":
        return dict(DENSE_CONFIG)
    if not isinstance(retriever, dict):
        raise ConfigError(f"retriever={retriever!r} must be 'default', 'dense' or a configuration dict")
    unknown = set(retriever) - set(CONFIG_KEYS)
    if unknown:
        raise ConfigError(f"retriever configuration keys {sorted(unknown)} are unknown; valid keys: {', '.join(CONFIG_KEYS)}")
    return json.loads(json.dumps(retriever))


def _adapter_list(kb: KnowledgeBase) -> dict[str, Any]:
    from rag_lfm.adapters.store import list_query_adapters

    return list_query_adapters(kb)


_FIXED_KEYS = ("format", "embedder", "metric", "index", "chunking", "created_at")


def _torch_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _index_params(idx: dict[str, Any]) -> dict[str, Any]:
    """The search parameters recorded for the index (``params``; older manifests: ``nprobe``)."""
    params = dict(idx.get("params") or {})
    if idx.get("nprobe") and "nprobe" not in params:
        params["nprobe"] = idx["nprobe"]
    return params
