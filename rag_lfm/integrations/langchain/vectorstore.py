"""A rag-lfm index as a LangChain ``VectorStore``.

Writes go through the :class:`~rag_lfm.connectors.InMemory` connector into
:meth:`KnowledgeBase.ingest`, so everything an ingest does applies: documents are
chunked with the embedder's tokenizer, an unchanged document (same id, text and
metadata) is skipped by content hash, a changed one re-embeds only its changed chunks,
commits are atomic (a crash leaves the last commit loadable) and text and metadata live
in the SQL doc store (SQLite, PostgreSQL or MariaDB).

Ids. A LangChain document id is a rag-lfm document id in this store's ``source``
(default ``"langchain"``): ``add_documents(docs, ids=...)`` upserts by id, ``delete(ids)``
and ``get_by_ids(ids)`` look ids up in that source. Searches cover the whole index (every
source); restrict them with ``filter={"_source": "langchain"}``. A long document is
split into chunks, so a search returns chunks: each ``Document`` carries the id the user
gave its document (chunks of one document share it) and the document's metadata as given.

Scores. ``similarity_search_with_score`` returns rag-lfm's score, higher is better: for
an ``ip`` index the inner product (the cosine when the embedder normalises, as every
rag-lfm embedder does by default), for an ``l2`` index minus the squared Euclidean
distance. ``similarity_search_with_relevance_scores`` maps it into [0, 1], 1 = most similar:

* ``ip``, normalised vectors: ``(1 + cos) / 2`` (0 = opposite, 0.5 = orthogonal, 1 = same direction);
* ``l2``, normalised vectors: ``1 - d^2 / 4`` (for unit vectors ``d^2 = 2 - 2 cos``, so this is
  the same ``(1 + cos) / 2``: both metrics give the same relevance for the same pair);
* unnormalised vectors (an embedder built with ``normalize=False``): with ``ip`` the cosine
  is computed from the stored chunk vectors and the query, then ``(1 + cos) / 2``, so the
  relevance need not follow the ranking (which is by raw inner product); with ``l2``,
  ``1 / (1 + d)``, which follows the ranking but is no cosine.

(LangChain's FAISS store maps an L2 distance with ``1 - d / sqrt(2)``, which goes negative
for distances above sqrt(2), and cosine indexes with ``1 - distance`` applied to a similarity.)

Filters: rag-lfm's language (``{"topic": {"$in": [...]}}``, ``$and``/``$or``/``$not``), plus
LangChain FAISS's plain forms (a list value means ``$in``, ``$neq`` means ``$ne``). The
filter restricts the index search itself, so a selective filter still returns k hits when
k chunks match (LangChain's FAISS store filters the top ``fetch_k`` afterwards and returns
fewer). An unknown field is an error listing the known ones.

Async: every ``a*`` method is LangChain's default, which runs the sync method in a worker
thread. That is deliberate: the work is embedding (torch / ONNX Runtime / OpenVINO),
FAISS search and SQL, all of which release the GIL, so a thread gives the event loop its
concurrency without a second code path. Searches run concurrently; a write waits for
running searches and blocks new ones while it changes the index (FAISS must not be
searched while ids are added or removed).

Example:
    >>> from langchain_core.documents import Document
    >>> store = RagLfmVectorStore.create("/tmp/lc-store", embedding="hash-64")        # doctest: +SKIP
    >>> store.add_documents([Document("Paris is in France.", metadata={"lang": "en"})], ids=["paris"])  # doctest: +SKIP
    >>> store.similarity_search("France", k=1)[0].id                                  # doctest: +SKIP
    'paris'
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    from langchain_core.documents import Document as LCDocument
    from langchain_core.embeddings import Embeddings
    from langchain_core.vectorstores import VectorStore
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from rag_lfm.connectors.memory import InMemory
from rag_lfm.docstore import doc_key
from rag_lfm.errors import ConfigError, EmbedderMismatchError
from rag_lfm.integrations.langchain._common import (
    PROVENANCE_KEY,
    as_kb,
    check_k,
    check_unknown,
    hit_to_document,
    readable_errors,
    translate_filter,
)
from rag_lfm.integrations.langchain.embeddings import LangChainEmbedder, RagLfmEmbeddings, as_embedder
from rag_lfm.retrieval.mmr import mmr
from rag_lfm.types import Document, Hit

_SEARCH_KWARGS = ("filter", "fetch_k")


class _ReadWriteLock:
    """Many readers or one writer (searches run together; a write runs alone)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer)
            self._writer = True
            self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class RagLfmVectorStore(VectorStore):
    """A :class:`~rag_lfm.KnowledgeBase` as a LangChain ``VectorStore`` (see the module docstring).

    Args:
        kb: an open KnowledgeBase, or the path of an index directory.
        embedding: optional; when given it must be the embedder the index was built with
            (same name and dimension, else :class:`~rag_lfm.errors.EmbedderMismatchError`), and
            it replaces the one the index would load (needed to reopen an index built with a
            LangChain ``Embeddings`` object).
        source: the rag-lfm source that ``add_*``, ``delete`` and ``get_by_ids`` work in.
        provenance: add ``metadata["rag_lfm"] = {score, chunk_id, doc_id, source_id, start, end}``
            to returned Documents (off by default: LangChain's contract is that a Document
            comes back with the metadata it was added with).
        commit_every: documents per atomic commit while adding.

    Use :meth:`create`, :meth:`open` or :meth:`from_texts` to build one from a path.
    """

    def __init__(
        self,
        kb: Any,
        *,
        embedding: Any = None,
        source: str = "langchain",
        provenance: bool = False,
        commit_every: int = 1000,
    ) -> None:
        self.kb = as_kb(kb)
        if not isinstance(source, str) or not source:
            raise ConfigError(f"source={source!r} must be a non-empty str (the rag-lfm source this store writes to)")
        check_k(commit_every, "commit_every")
        if embedding is not None:
            emb = as_embedder(embedding)
            want = self.kb.manifest["embedder"]
            if emb.name != want["name"] or int(emb.dim) != int(want["dim"]):
                raise EmbedderMismatchError(
                    f"{self.kb.path} was built with embedder {want['name']!r} (dim {want['dim']}), not {emb.name!r} "
                    f"(dim {emb.dim}); pass the embedder the index was built with, or create a new index for this one"
                )
            self.kb.embedder = emb
        self.source = source
        self.provenance = bool(provenance)
        self.commit_every = int(commit_every)
        self._lock = _ReadWriteLock()

    # -- construction --------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | None = None,
        embedding: Any = "all-MiniLM-L6-v2",
        *,
        source: str = "langchain",
        provenance: bool = False,
        commit_every: int = 1000,
        **kb_kwargs: Any,
    ) -> RagLfmVectorStore:
        """A store over a new index at ``path`` (a fresh temporary directory when None).

        ``embedding``: a rag-lfm model name (``"all-MiniLM-L6-v2"``, ``"hash-64"``), a
        :class:`RagLfmEmbeddings` (any backend), or any LangChain ``Embeddings``.
        ``kb_kwargs`` go to :meth:`KnowledgeBase.create` (``metric``, ``index``, ``docstore``...).
        """
        from rag_lfm.knowledge_base import KnowledgeBase

        if path is None:
            # LangChain's from_texts builds in memory; rag-lfm needs a directory. A temporary
            # one is removed by the OS eventually: pass path= to keep the index.
            path = tempfile.mkdtemp(prefix="rag-lfm-langchain-")
        embedder = as_embedder(embedding)
        kb = KnowledgeBase.create(path, embedder=embedder, **kb_kwargs)
        return cls(kb, source=source, provenance=provenance, commit_every=commit_every)

    @classmethod
    def open(cls, path: str | os.PathLike[str], embedding: Any = None, **kwargs: Any) -> RagLfmVectorStore:
        """A store over the existing index at ``path`` (``embedding`` as in the constructor)."""
        from rag_lfm.knowledge_base import KnowledgeBase

        kb = KnowledgeBase.open(Path(path), embedder=as_embedder(embedding) if embedding is not None else None)
        return cls(kb, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | Any,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        path: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> RagLfmVectorStore:
        """A new index at ``path`` (temporary when None) holding ``texts``.

        Example:
            >>> store = RagLfmVectorStore.from_texts(["red apple", "blue sky"], RagLfmEmbeddings("hash-64"))  # doctest: +SKIP
        """
        store = cls.create(path, embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @property
    def embeddings(self) -> Embeddings:
        """The index's embedder as LangChain ``Embeddings`` (the object given, for a LangChain one)."""
        emb = self.kb.embedder
        if isinstance(emb, LangChainEmbedder):
            return emb.embeddings
        return RagLfmEmbeddings(emb)

    @property
    def path(self) -> Path:
        """The index directory."""
        return Path(self.kb.path)

    # -- writes --------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add or update texts (upsert by id); return their ids (a new uuid where none was given).

        Every input is checked before anything is written: texts must be non-empty str,
        metadata JSON-serialisable dicts without the reserved key ``"rag_lfm"``, ids unique.
        """
        check_unknown(kwargs, (), "add_texts()")
        if isinstance(texts, str):
            raise ConfigError("add_texts() takes a list of texts, got one str; wrap it in a list")
        texts = list(texts)
        n = len(texts)
        if metadatas is not None and len(metadatas) != n:
            raise ConfigError(f"got {n} texts but {len(metadatas)} metadatas; pass one metadata dict per text")
        if ids is not None and len(ids) != n:
            raise ConfigError(f"got {n} texts but {len(ids)} ids; pass one id per text")
        out_ids = [str(uuid.uuid4()) if ids is None or ids[i] is None else ids[i] for i in range(n)]
        docs = []
        seen: set[str] = set()
        for i, (text, doc_id) in enumerate(zip(texts, out_ids)):
            meta = (metadatas[i] if metadatas is not None else None) or {}
            docs.append(_checked_document(i, doc_id, text, meta, seen))
        if not docs:
            return []
        with self._lock.write(), readable_errors(self.kb):
            report = self.kb.ingest(InMemory(docs, name=self.source, complete=False), commit_every=self.commit_every, progress=False)
        if report.failed:
            bad = "; ".join(f"{s.ref}: {s.reason}" for s in report.failed[:5])
            raise ConfigError(f"{len(report.failed)} of {n} documents were not added ({bad}); the others were committed")
        return out_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete documents by id (missing ids are ignored); ``ids=None`` deletes every document of this store's source."""
        check_unknown(kwargs, (), "delete()")
        if isinstance(ids, str):
            ids = [ids]
        with self._lock.write(), readable_errors(self.kb):
            if self.source not in self.kb.docstore.source_counts():
                return True  # nothing was ever added here (or all of it is gone): nothing to delete
            if ids is None:
                self.kb.delete(source=self.source)
            elif ids:
                self.kb.delete([str(i) for i in ids], source=self.source)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[LCDocument]:
        """The documents with these ids (of this store's source), in the order asked; missing ids are left out.

        A document split into several chunks is rebuilt from them (overlaps merged; where two
        chunks do not overlap, the whitespace between them becomes one space).
        """
        wanted = list(dict.fromkeys(str(i) for i in ids))
        if not wanted:
            return []
        with self._lock.read(), readable_errors(self.kb):
            chunk_ids = self.kb.docstore.chunk_ids_of_docs([doc_key(self.source, i) for i in wanted])
            hits = self.kb.fetch(chunk_ids) if chunk_ids else []
        by_doc: dict[str, list[Hit]] = {}
        for h in hits:
            by_doc.setdefault(h.doc_id, []).append(h)
        out = []
        for i in wanted:
            parts = by_doc.get(i)
            if parts:
                parts.sort(key=lambda h: (h.start, h.end))
                meta = dict(parts[0].metadata or {})
                out.append(LCDocument(page_content=_join_chunks(parts), metadata=meta, id=i))
        return out

    # -- searches ------------------------------------------------------------------------
    def _query_vector(self, query: str) -> np.ndarray:
        if not isinstance(query, str):
            raise ConfigError(f"query must be a str, got {type(query).__name__}: {query!r}")
        return np.asarray(self.kb.embedder.encode([query], kind="query"), dtype=np.float32)

    def _as_query_vector(self, embedding: Sequence[float] | np.ndarray) -> np.ndarray:
        q = np.asarray(embedding, dtype=np.float32)
        if q.ndim != 1:
            raise ConfigError(f"embedding must be one vector (a list of floats), got an array of shape {q.shape}")
        return q[None, :]

    def _search(self, qvec: np.ndarray, k: int, kwargs: dict[str, Any], fetch: int | None = None) -> tuple[list[Hit], np.ndarray]:
        check_unknown(kwargs, _SEARCH_KWARGS, "search")
        # fetch_k is accepted for code written for LangChain's FAISS store, which post-filters
        # the top fetch_k; here the filter restricts the search itself, so it is not needed.
        flt = translate_filter(kwargs.get("filter"))
        k = check_k(k)
        with self._lock.read(), readable_errors(self.kb):
            scores, ids = self.kb.search_vectors(qvec, fetch or k, filter=flt)
            hits = self.kb.hits(scores, ids)[0]
        return hits, qvec[0]

    def _doc(self, hit: Hit) -> LCDocument:
        return hit_to_document(hit, with_provenance=self.provenance)

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, **kwargs: Any
    ) -> list[tuple[LCDocument, float]]:
        """(Document, rag-lfm score) for the ``k`` chunks nearest ``embedding`` (higher score = more similar)."""
        hits, _ = self._search(self._as_query_vector(embedding), k, kwargs)
        return [(self._doc(h), float(h.score)) for h in hits]

    def similarity_search_by_vector(self, embedding: Sequence[float], k: int = 4, **kwargs: Any) -> list[LCDocument]:
        """The ``k`` chunks nearest ``embedding``; ``filter=`` restricts them."""
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[LCDocument, float]]:
        """(Document, rag-lfm score) for the ``k`` chunks nearest ``query`` (see the module docstring for the scale)."""
        hits, _ = self._search(self._query_vector(query), k, kwargs)
        return [(self._doc(h), float(h.score)) for h in hits]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[LCDocument]:
        """The ``k`` chunks nearest ``query``; ``filter=`` restricts them (restricting the search itself)."""
        return [d for d, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def _similarity_search_with_relevance_scores(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[LCDocument, float]]:
        hits, q = self._search(self._query_vector(query), k, kwargs)
        rel = self._relevance(q, hits)
        return [(self._doc(h), float(r)) for h, r in zip(hits, rel)]

    def _relevance(self, q: np.ndarray, hits: list[Hit]) -> np.ndarray:
        """Relevance in [0, 1] for each hit (the rules of the module docstring)."""
        if not hits:
            return np.zeros(0)
        s = np.array([h.score for h in hits], dtype=np.float64)
        metric = self.kb.manifest["metric"]
        if self.kb.manifest["embedder"].get("normalize", True):
            rel = (1.0 + s) / 2.0 if metric == "ip" else 1.0 + s / 4.0
        elif metric == "ip":
            with readable_errors(self.kb):
                vecs = self.kb.vectors([h.chunk_id for h in hits]).astype(np.float64)
            norms = np.linalg.norm(vecs, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
            rel = (1.0 + (vecs @ q.astype(np.float64)) / np.maximum(norms, 1e-12)) / 2.0
        else:
            rel = 1.0 / (1.0 + np.sqrt(np.maximum(-s, 0.0)))
        return np.clip(rel, 0.0, 1.0)  # float rounding can step a hair outside

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """score -> relevance, for normalised embedders (unnormalised ones need the vectors: see above)."""
        metric = self.kb.manifest["metric"]
        if not self.kb.manifest["embedder"].get("normalize", True):
            if metric == "l2":
                return lambda s: 1.0 / (1.0 + float(np.sqrt(max(-s, 0.0))))
            raise ConfigError(
                "relevance from an inner-product score alone is undefined for an unnormalised embedder; "
                "call similarity_search_with_relevance_scores(), which computes the cosine from the stored vectors"
            )
        if metric == "ip":
            return lambda s: min(1.0, max(0.0, (1.0 + s) / 2.0))
        return lambda s: min(1.0, max(0.0, 1.0 + s / 4.0))

    def max_marginal_relevance_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[LCDocument]:
        """``k`` chunks picked from the ``fetch_k`` nearest for relevance and diversity (rag-lfm's MMR).

        ``lambda_mult`` 1 = relevance only, 0 = diversity only.
        """
        return self._mmr(self._as_query_vector(embedding), k, fetch_k, lambda_mult, kwargs)

    def max_marginal_relevance_search(
        self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5, **kwargs: Any
    ) -> list[LCDocument]:
        """As :meth:`max_marginal_relevance_search_by_vector`, for a query text."""
        return self._mmr(self._query_vector(query), k, fetch_k, lambda_mult, kwargs)

    def _mmr(self, qvec: np.ndarray, k: int, fetch_k: int, lam: float, kwargs: dict[str, Any]) -> list[LCDocument]:
        k = check_k(k)
        fetch_k = check_k(fetch_k, "fetch_k")
        if not isinstance(lam, (int, float)) or not 0.0 <= float(lam) <= 1.0:
            raise ConfigError(f"lambda_mult={lam!r} must be a number in [0, 1]")
        kwargs = {key: v for key, v in kwargs.items() if key != "fetch_k"}
        hits, _ = self._search(qvec, k, kwargs, fetch=max(fetch_k, k))
        if len(hits) <= 1:
            return [self._doc(h) for h in hits]
        with self._lock.read(), readable_errors(self.kb):
            vecs = self.kb.vectors([h.chunk_id for h in hits])
        order = mmr(np.array([h.score for h in hits]), vecs, k=k, lam=float(lam))
        return [self._doc(hits[i]) for i in order]


def _checked_document(i: int, doc_id: Any, text: Any, meta: Any, seen: set[str]) -> Document:
    """A rag-lfm Document for input ``i``, or a ConfigError naming what is wrong with it."""
    if not isinstance(doc_id, str) or not doc_id:
        raise ConfigError(f"id {i} is {doc_id!r}; ids must be non-empty str (or None for a generated one)")
    if doc_id in seen:
        raise ConfigError(f"id {doc_id!r} appears twice in one call; each document needs its own id")
    seen.add(doc_id)
    if not isinstance(text, str):
        raise ConfigError(f"text {i} (id {doc_id!r}) is {type(text).__name__}, not str")
    if not text.strip():
        raise ConfigError(f"text {i} (id {doc_id!r}) is empty; rag-lfm indexes no empty documents: leave it out")
    if not isinstance(meta, dict):
        raise ConfigError(f"metadata {i} (id {doc_id!r}) is {type(meta).__name__}, not a dict")
    if PROVENANCE_KEY in meta:
        raise ConfigError(
            f"metadata {i} (id {doc_id!r}) has the key {PROVENANCE_KEY!r}, which rag-lfm reserves for retrieval "
            "provenance (score, chunk id, offsets); rename it"
        )
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"metadata {i} (id {doc_id!r}) is not JSON-serialisable ({exc}); the SQL doc store keeps JSON: "
            "convert values to str, number, bool, list or dict"
        ) from None
    return Document(doc_id, text, dict(meta))


def _join_chunks(parts: list[Hit]) -> str:
    """A document's text from its chunks, sorted by start offset."""
    text, end = parts[0].text, parts[0].end
    for h in parts[1:]:
        if h.start >= end:
            text += (" " if h.start > end else "") + h.text
        elif h.end > end:
            text += h.text[end - h.start :]
        end = max(end, h.end)
    return text
