"""KnowledgeBase: one index directory = a FAISS index + a SQL doc store + a manifest.

Ingest: connector -> documents -> chunks -> embeddings (reused from the store when a
chunk's text was embedded before) -> index + doc store, committed every
``commit_every`` documents. Search: query -> embedding -> FAISS (restricted to a
metadata filter's ids inside the search) -> hits with text and metadata.

On disk (see ../DESIGN.md)::

    manifest.json        format version, embedder, index factory, counts, sha256 of index files
    index-<gen>.faiss    the vector index of commit <gen> (immutable once written)
    docstore.sqlite      documents, chunks, stored vectors, and the commit record

A commit writes ``index-<gen+1>.*`` beside the old files, then records generation
gen+1 and the files' sha256 in the doc store in the same transaction as the document
changes (the commit point), then rewrites manifest.json, then removes older files. A
crash before the doc store transaction leaves gen (the orphan file is removed at the
next write); a crash after it is rolled forward when the index is opened. Readers
only ever load immutable files named by a committed record.

Example:
    >>> from rag_lfm import KnowledgeBase, Files                     # doctest: +SKIP
    >>> kb = KnowledgeBase.create("indexes/notes", embedder="all-MiniLM-L6-v2")
    >>> kb.ingest(Files("notes/", glob="**/*.md")).summary()
    >>> for hit in kb.search("who painted water lilies?", k=3, filter={"topic": "Arts"}):
    ...     print(f"{hit.score:.3f} {hit.doc_id}")
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import sha256_file, write_json
from rag_lfm.chunking import Chunker
from rag_lfm.connectors.base import Connector
from rag_lfm.docstore import ChangeSet, DocStore, doc_key, metadata_fields
from rag_lfm.embedders import embedder_config, embedder_from_config, make_embedder
from rag_lfm.errors import ConfigError, EmbedderMismatchError, IndexFormatError, SourceError
from rag_lfm.index import TorchExactBackend, faiss_gpu_count, load_backend, make_backend, resolve_factory
from rag_lfm.index.build import build_backend, chain_batches, sample_stream, train_size
from rag_lfm.types import Document, Hit, Skipped

FORMAT = "rag-lfm-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SQLITE_NAME = "docstore.sqlite"
COMPACT_MASKED_SHARE = 0.2  # rebuild an index that cannot remove ids once this share is masked
_PASSWORD_IN_URL = re.compile(r"^([a-zA-Z][\w+.-]*://[^:/@\s]+:)([^@\s]+)(@)")
EXACT_FILTER_LIMIT = 4096  # a filter matching at most this many chunks is scored exactly from stored vectors
EXACT_FACTORIES = ("IDMap2,Flat", "IDMap,Flat", "torch-exact")  # searched exhaustively: a selector never starves them


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

    def __init__(self, path: Path, manifest: dict[str, Any], embedder: Any, docstore: DocStore, index: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.embedder = embedder
        self.docstore = docstore
        self.index = index
        self.chunker = Chunker(embedder.tokenizer, size=manifest["chunking"]["size"], overlap=manifest["chunking"]["overlap"])

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
        embedder_backend: str = "torch",
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
            docstore: a SQLAlchemy URL; default a SQLite file inside the directory.
            chunk_size: tokens per chunk (default: the embedder's limit, at most 256).
            chunk_overlap: tokens shared by consecutive chunks.
            embedder_backend: ``"torch"``, ``"onnx"``, ``"onnx-int8"``, ``"openvino"`` or ``"openvino-int8"`` for a sentence-transformers model.
        """
        root = Path(path)
        if (root / MANIFEST).exists():
            raise ConfigError(f"{root} already holds an index; open it with KnowledgeBase.open({str(root)!r}) or choose another path")
        if root.exists() and not root.is_dir():
            raise ConfigError(f"index path {root} is a file; pass a directory path")
        if backend not in ("faiss", "torch", "auto"):
            raise ConfigError(f"backend={backend!r} must be 'faiss', 'torch' or 'auto'")
        if backend == "auto":
            backend = "torch" if _torch_cuda() and faiss_gpu_count() == 0 else "faiss"
        emb = make_embedder(embedder, device=device, backend=embedder_backend) if isinstance(embedder, str) else make_embedder(embedder)
        size = chunk_size or min(256, emb.max_tokens - 2)
        Chunker(None, size=size, overlap=chunk_overlap)  # validates size/overlap before anything is written
        root.mkdir(parents=True, exist_ok=True)
        store = DocStore(docstore or _sqlite_url(root), prefix=table_prefix)
        store.create_tables()
        if store.get_commit() is not None:
            raise ConfigError(f"doc store {store.safe_url} with prefix {table_prefix!r} already holds an index; pass another table_prefix")
        dim = int(emb.dim)
        factory = resolve_factory(index, 0, dim)  # "auto", a family name (rag_lfm.index.families) or a factory string
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "embedder": embedder_config(emb),
            "metric": metric,
            "index": {"spec": index, "factory": factory, "backend": backend},
            "chunking": {"size": size, "overlap": chunk_overlap},
            "docstore": {"url": docstore, "prefix": table_prefix},
            "generation": 0,
            "files": {},
            "counts": {"documents": 0, "chunks": 0},
            "created_at": time.time(),
        }
        kb = cls(root, manifest, emb, store, cls._new_backend(manifest, dim, device))
        with kb._write_lock():
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
    ) -> KnowledgeBase:
        """Open an existing index directory.

        Args:
            embedder: optional override (name or object); must match the recorded name and dimension.
            embedder_backend: run the recorded model with another backend (e.g. ``"onnx-int8"``).
            mmap: memory-map the index's inverted lists / code arrays instead of reading them, so an
                index larger than the process' memory is searchable (read-only use).
            verify: check the sha256 of the index files against the commit record.
        """
        root = Path(path)
        manifest = _read_manifest(root)
        dstore = manifest["docstore"]
        store = DocStore(dstore["url"] or _sqlite_url(root), prefix=dstore["prefix"])
        store.check_tables()
        commit = store.get_commit()
        if commit is None:
            raise IndexFormatError(f"{root}: its doc store has no commit record; the index was never completed, create it again")
        if commit["generation"] != manifest["generation"]:
            # A crash after the doc store committed but before manifest.json was rewritten: roll forward.
            manifest.update({k: commit[k] for k in ("generation", "files", "counts", "updated_at")})
            manifest["index"]["factory"] = commit["factory"]
            write_json(root / MANIFEST, manifest)
        if verify:
            for name, digest in commit["files"].items():
                f = root / name
                if not f.exists():
                    raise IndexFormatError(f"{root}: index file {name} is missing; restore it or rebuild the index")
                if sha256_file(f) != digest:
                    raise IndexFormatError(f"{root}: index file {name} fails its sha256 check (truncated or modified); restore it or rebuild the index")
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
        index = cls._load_backend(root, manifest, mmap=mmap, device=device)
        if int(getattr(index, "dim", manifest["embedder"]["dim"])) != int(manifest["embedder"]["dim"]):
            raise IndexFormatError(f"{root}: the index file has dimension {index.dim} but the manifest says {manifest['embedder']['dim']}")
        return cls(root, manifest, emb, store, index)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], **create_kwargs: Any) -> KnowledgeBase:
        """Open ``path`` if it holds an index, else create one with ``create_kwargs``."""
        if (Path(path) / MANIFEST).exists():
            return cls.open(path, device=create_kwargs.get("device", "auto"))
        return cls.create(path, **create_kwargs)

    @staticmethod
    def _new_backend(manifest: dict[str, Any], dim: int, device: str = "auto", factory: str | None = None) -> Any:
        idx = manifest["index"]
        if idx["backend"] == "torch":
            return TorchExactBackend(dim, metric=manifest["metric"], device=device)
        return make_backend(dim, factory or idx["factory"], metric=manifest["metric"], params=_index_params(idx), device=device)

    @staticmethod
    def _load_backend(root: Path, manifest: dict[str, Any], *, mmap: bool, device: str) -> Any:
        f = root / f"index-{manifest['generation']}.faiss"
        if manifest["index"]["backend"] == "torch":
            return TorchExactBackend.load(f, metric=manifest["metric"], device=device)
        idx = manifest["index"]
        return load_backend(f, idx["factory"], metric=manifest["metric"], params=_index_params(idx), mmap=mmap, device=device)

    def reload(self) -> None:
        """Reload the last committed state (after another process wrote, or after a failed write)."""
        fresh = KnowledgeBase.open(self.path, embedder=self.embedder, verify=False)
        self.manifest, self.index = fresh.manifest, fresh.index
        fresh.docstore.dispose()

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
    def ingest(self, connector: Connector, *, commit_every: int = 1000, progress: bool = True, delete_missing: bool = False) -> IngestReport:
        """Add or update every document ``connector`` yields; skip unchanged ones by content hash.

        Bad records are reported in ``report.failed`` and skipped; the rest ingests.
        Work is committed every ``commit_every`` documents, so an interrupted ingest
        keeps what it committed and a re-run only does the rest. With
        ``delete_missing`` (what :meth:`sync` does) documents of this source that the
        connector no longer yields are deleted, once the whole source was read.
        """
        if commit_every < 1:
            raise ConfigError(f"commit_every={commit_every!r} must be >= 1")
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
                    if len(batch) >= commit_every:
                        self._ingest_batch(batch, source_id, report)
                        bar.update(len(batch))  # the bar counts committed documents, not documents read
                        batch = []
                if batch:
                    self._ingest_batch(batch, source_id, report)
                    bar.update(len(batch))
            except Exception as exc:
                report.error = f"{type(exc).__name__}: {exc}"
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
        bar.close()
        report.seconds = time.perf_counter() - t0
        return report

    def sync(self, connector: Connector, **kwargs: Any) -> IngestReport:
        """Make the index match the source: add new, update changed, skip unchanged, delete gone documents."""
        return self.ingest(connector, delete_missing=True, **kwargs)

    def _ingest_batch(self, docs: list[Document], source_id: str, report: IngestReport) -> None:
        keys = [doc_key(source_id, d.id) for d in docs]
        states = self.docstore.doc_states(keys)
        changes = ChangeSet()
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
            if old is None:
                report.added += 1
            else:
                report.updated += 1
        if not changes.upsert_docs:
            return
        # The embedding cache: a chunk whose text was embedded before (same model: one per index) is not re-embedded.
        cached = self.docstore.vectors_by_hash([c.content_hash for _, c in new_chunks], self.dim)
        todo: dict[str, str] = {}
        for _, c in new_chunks:
            if c.content_hash not in cached:
                todo.setdefault(c.content_hash, c.text)
        if todo:
            vecs = self.embedder.encode(list(todo.values()), kind="document")
            cached.update(zip(todo.keys(), vecs))
        report.chunks_embedded += len(todo)
        report.chunks_reused += len(new_chunks) - len(todo)
        ids = np.array([c.id for _, c in new_chunks], dtype=np.int64)
        vectors = np.stack([cached[c.content_hash] for _, c in new_chunks]).astype(np.float32) if new_chunks else np.zeros((0, self.dim), np.float32)
        changes.add_chunks = [
            {"id": int(c.id), "doc_key": key, "ordinal": c.ordinal, "start": c.start, "end": c.end, "text": c.text, "content_hash": c.content_hash, "vector": vectors[i].tobytes()}
            for i, (key, c) in enumerate(new_chunks)
        ]
        self._apply(changes, ids, vectors)
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
        gen = self.generation + 1
        if rebuild:
            _, n_chunks = self.docstore.counts()
            self._maybe_rebuild(n_chunks + len(changes.add_chunks) - len(changes.delete_chunk_ids), changes)
        files = self.index.save(self.path / f"index-{gen}.faiss")
        commit = {"generation": gen, "files": {f.name: sha256_file(f) for f in files}, "factory": self.index.factory, "updated_at": time.time()}
        self.docstore.apply(changes, commit)  # the commit point; fills commit["counts"]
        self.manifest.update({k: commit[k] for k in ("generation", "files", "counts", "updated_at")})
        self.manifest["index"]["factory"] = self.index.factory
        write_json(self.path / MANIFEST, self.manifest)
        self._remove_stale_files()

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

    def _remove_stale_files(self) -> None:
        keep = set(self.manifest["files"]) | {MANIFEST}
        for f in self.path.iterdir():
            if (f.name.startswith("index-") or f.name.startswith(".index-")) and f.name not in keep:
                f.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[None]:
        """One writer per index directory at a time (readers need no lock)."""
        with open(self.path / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self.path} is being written by another process; wait for it to finish") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # -- delete --------------------------------------------------------------------------
    def delete(self, doc_ids: Sequence[str] = (), *, source: str | None = None) -> int:
        """Delete documents by id (in ``source``, or in every source), or every document of ``source``.

        Returns the number of documents deleted.
        """
        if isinstance(doc_ids, str):
            doc_ids = [doc_ids]
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
        with self._write_lock():
            return self._delete_keys(keys, whole_source=source if not doc_ids else None)

    def _delete_keys(self, keys: list[str], *, whole_source: str | None = None) -> int:
        changes = ChangeSet(delete_doc_keys=keys, delete_chunk_ids=self.docstore.chunk_ids_of_docs(keys))
        if whole_source is not None:
            changes.delete_sources.append(whole_source)
        self._apply(changes, np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32))
        return len(keys)

    def _record_source(self, source_id: str, connector: Any, report: IngestReport) -> None:
        # The spec lets `rag-lfm sync` rebuild this connector later; "name" keeps its source id.
        describe = getattr(connector, "describe", None)
        spec = getattr(connector, "spec", None) or (describe() if callable(describe) else None)
        if isinstance(spec, dict):
            # Never store a password in the doc store: specs should name it through url_env.
            spec = {k: _PASSWORD_IN_URL.sub(r"\1***\3", v) if isinstance(v, str) else v for k, v in spec.items()} | {"name": source_id}
        info = {
            "type": type(connector).__name__,
            "spec": spec,
            "last_sync": time.time(),
            "last_report": {k: v for k, v in report.to_dict().items() if k not in ("failed",)} | {"failed": len(report.failed)},
        }
        changes = ChangeSet(sources={source_id: json.loads(json.dumps(info, default=str))})
        self._commit_small(changes)

    def _commit_small(self, changes: ChangeSet) -> None:
        """Record doc-store-only changes (no vector changes) under the current generation's files."""
        commit = {k: self.manifest[k] for k in ("generation", "files")} | {"factory": self.index.factory, "updated_at": time.time()}
        self.docstore.apply(changes, commit)

    # -- search --------------------------------------------------------------------------
    def search(self, query: str, k: int = 10, *, filter: dict[str, Any] | None = None) -> list[Hit]:
        """The ``k`` best chunks for ``query`` (restricted to documents matching ``filter``)."""
        if not isinstance(query, str):
            raise ConfigError(f"query must be a str, got {type(query).__name__}: {query!r}; for many queries use search_batch()")
        return self.search_batch([query], k, filter=filter)[0]

    def search_batch(self, queries: Sequence[str], k: int = 10, *, filter: dict[str, Any] | None = None) -> list[list[Hit]]:
        """Search many queries at once (one embedding pass, one index search)."""
        if isinstance(queries, str):
            raise ConfigError("search_batch() takes a list of queries, got one str; use search() or wrap it in a list")
        if not queries:
            return []
        qvecs = self.embedder.encode(list(queries), kind="query")
        scores, ids = self.search_vectors(qvecs, k, filter=filter)
        return self.hits(scores, ids)

    def search_vectors(self, qvecs: np.ndarray, k: int, *, filter: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores ``[b, k]``, chunk ids ``[b, k]``) for query vectors; id -1 where fewer than k match."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r} must be a positive int")
        qvecs = np.ascontiguousarray(qvecs, dtype=np.float32)
        if qvecs.ndim != 2 or qvecs.shape[1] != self.dim:
            raise ConfigError(f"query vectors of shape {qvecs.shape} do not match the index dimension {self.dim}")
        if not filter:
            return self.index.search(qvecs, int(k))
        allowed = self.docstore.filter_ids(filter)
        if len(allowed) == 0:
            return np.full((len(qvecs), k), -np.inf, np.float32), np.full((len(qvecs), k), -1, np.int64)
        if len(allowed) <= EXACT_FILTER_LIMIT and self.index.factory not in EXACT_FACTORIES:
            # A small match set on an approximate index: score it exactly from the stored vectors,
            # so IVF/HNSW never starve a selective filter.
            return self._exact(qvecs, allowed, int(k))
        return self.index.search(qvecs, int(k), allowed)

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


def _read_manifest(root: Path) -> dict[str, Any]:
    f = root / MANIFEST
    if not root.is_dir():
        raise IndexFormatError(f"index path {str(root)!r} is not a directory; build an index there first (`rag-lfm ingest SOURCE --index {root}`)")
    if not f.exists():
        raise IndexFormatError(f"{str(root)!r} is not a rag-lfm index: it has no {MANIFEST}; build one with `rag-lfm ingest SOURCE --index {root}`")
    try:
        manifest = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexFormatError(f"{f} is not valid JSON ({exc}); the manifest is damaged: restore it or rebuild the index") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise IndexFormatError(f"{f} is not a rag-lfm manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}, expected {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{root} has index format version {manifest.get('format_version')!r}; this rag-lfm reads version {FORMAT_VERSION}: upgrade rag-lfm or rebuild the index")
    return manifest


def _sqlite_url(root: Path) -> str:
    return f"sqlite:///{(root / SQLITE_NAME).resolve()}"


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
