"""The Retriever: dense (two-stage, any metric), BM25, or both fused; then optional rerank and MMR.

Stages, each optional after the first::

    query --encode--> two_stage_search (FAISS pool -> metric)  \
                                                                 fuse (RRF / weighted) -> fetch
    query --------->  BM25 (bm25s, beside the KB)              /
          -> cross-encoder rerank of the top ``rerank_top`` -> MMR over the top ``mmr_pool`` -> k hits

Example:
    >>> from rag_lfm import KnowledgeBase                                   # doctest: +SKIP
    >>> r = Retriever(KnowledgeBase.open("indexes/wiki-vital"), method="hybrid")  # doctest: +SKIP
    >>> [h.doc_id for h in r.search("French Impressionist painter", k=3)]   # doctest: +SKIP
    ['Claude Monet', 'Pierre-Auguste Renoir', 'Édouard Manet']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError
from rag_lfm.knowledge_base import check_queries
from rag_lfm.metrics import Metric, get_metric
from rag_lfm.retrieval.bm25 import BM25Index
from rag_lfm.retrieval.dense import VectorCache, gather_vectors, two_stage_search
from rag_lfm.retrieval.fusion import fuse
from rag_lfm.retrieval.mmr import mmr
from rag_lfm.retrieval.rerank import CrossEncoderReranker
from rag_lfm.types import Hit

METHODS = ("dense", "bm25", "hybrid")
GROUP_DEPTH_FACTOR = 4
SEARCH_ATTEMPTS = 3  # searches redone when a commit lands between the search and the fetch of its hits
# What `KnowledgeBase.search` runs unless told otherwise (recorded in each new index's manifest):
# dense + BM25 on the text + BM25 on each document's first sentence, per-query z-score weighted
# fusion 1 / 0.75 / 0.5. Chosen on dev documents by benchmarks/bench_default_retrieval.py (mean nDCG@10
# of wiki descriptions and general factoid questions); on test documents nDCG@10 0.753 vs dense 0.628 for
# descriptions, 0.976 vs 0.977 for general questions (benchmarks/RESULTS.md).
DEFAULT_CONFIG: dict[str, Any] = {
    "method": "hybrid",
    "fusion": "weighted",
    "normalize": "zscore",
    "weights": [1.0, 0.75, 0.5],
    "bm25_settings": [{}, {"opening_sentences": 1}],
}
DENSE_CONFIG: dict[str, Any] = {"method": "dense"}
# The arguments a recorded configuration may set (what `from_config` accepts).
CONFIG_KEYS = ("method", "fusion", "normalize", "weights", "rrf_k", "depth", "bm25_settings", "pool", "pool_factor",
               "metric", "mmr_lambda", "mmr_pool", "group_by", "adapter")


class Retriever:
    """Retrieval over a KnowledgeBase with a pluggable metric, hybrid fusion, reranking and MMR.

    Args:
        kb: an open :class:`rag_lfm.KnowledgeBase`.
        method: ``"dense"``, ``"bm25"`` or ``"hybrid"`` (both, fused).
        metric: rescoring metric for the dense side (registered name, Metric or callable);
            None uses the index's own scores in one stage.
        pool / pool_factor: dense candidate pool per query (default ``pool_factor * depth``).
        fusion: ``"rrf"`` or ``"weighted"``; ``weights`` = one per fused list, dense first, then
            each BM25 field; ``rrf_k``; ``normalize`` (weighted fusion's per-query score
            normalisation: minmax, zscore, none).
        depth: results taken from each list before fusion (default ``max(100, k)``).
        bm25: a ready :class:`BM25Index` (or a list: several BM25 fields), or None to load/rebuild
            ``kb.path/bm25*`` on first use with ``bm25_settings``: one dict, e.g.
            ``{"fields": ["title"]}`` to index a title too, or a list of dicts for several fields,
            e.g. ``[{}, {"opening_sentences": 1}]`` = whole text + each document's first sentence.
        reranker: a :class:`CrossEncoderReranker` or a local model path; ``rerank_top`` hits
            are rescored by it.
        mmr_lambda: when set, MMR picks the final ``k`` of the top ``mmr_pool`` for diversity.
        vector_cache: where rescoring (metric, MMR) reads stored vectors: ``"float32"`` or
            ``"float16"`` (all vectors in memory, loaded on first use and reloaded when the KB
            changes), ``"none"`` (the doc store, per query), or ``"auto"`` (float32 when it takes
            <= ``1 GiB``, else none).
        group_by: ``"doc"`` keeps only the best passage of each document, so ``k`` hits are ``k``
            documents (five passages of one file are often less useful than five files); the
            candidate lists are searched ``GROUP_DEPTH_FACTOR`` times deeper to fill ``k``.
        adapter: the query adapter applied to query vectors before the dense search (and so
            inside the dense list of a hybrid): ``"auto"`` (default: the index's active adapter,
            see :mod:`rag_lfm.adapters.store`; none when it has none), ``"none"``, the name of
            one of the index's adapters, or a :class:`rag_lfm.adapters.QueryAdapter`. An adapter
            trained for another embedder is refused (EmbedderMismatchError).
    """

    def __init__(
        self,
        kb: Any,
        *,
        method: str = "dense",
        metric: str | Metric | Any | None = None,
        pool: int | None = None,
        pool_factor: int = 10,
        fusion: str = "rrf",
        weights: Sequence[float] | None = None,
        rrf_k: float = 60.0,
        normalize: str = "minmax",
        depth: int | None = None,
        bm25: BM25Index | Sequence[BM25Index] | None = None,
        bm25_settings: dict[str, Any] | Sequence[dict[str, Any]] | None = None,
        reranker: CrossEncoderReranker | str | None = None,
        rerank_top: int = 20,
        mmr_lambda: float | None = None,
        mmr_pool: int = 20,
        vector_cache: str = "auto",
        group_by: str | None = None,
        adapter: Any = "auto",
    ) -> None:
        if method not in METHODS:
            raise ConfigError(f"retrieval method {method!r} is not supported; use one of {METHODS}")
        if fusion not in ("rrf", "weighted"):
            raise ConfigError(f"fusion {fusion!r} is not supported; use 'rrf' or 'weighted'")
        if mmr_lambda is not None and not 0.0 <= mmr_lambda <= 1.0:
            raise ConfigError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
        if vector_cache not in ("auto", "none", *VectorCache.DTYPES):
            raise ConfigError(f"vector_cache {vector_cache!r} must be 'auto', 'none', 'float32' or 'float16'")
        if group_by not in (None, "doc"):
            raise ConfigError(f"group_by {group_by!r} is not supported; use None (passages) or 'doc' (one hit per document)")
        self.group_by = group_by
        self.kb = kb
        from rag_lfm.adapters.query import QueryAdapter

        if not (adapter is None or isinstance(adapter, (str, QueryAdapter))):
            raise ConfigError(f"adapter={adapter!r} must be 'auto', 'none', an adapter name or a QueryAdapter")
        if isinstance(adapter, QueryAdapter):
            adapter.check_embedder(kb.manifest["embedder"], where=f"index {kb.path}")
        self.adapter = "none" if adapter is None else adapter
        self._adapter_cache: tuple[Any, Any] | None = None
        self.vector_cache = vector_cache
        self._cache: VectorCache | None = None
        self.method = method
        self.metric = get_metric(metric) if metric is not None else None
        self.pool = pool
        self.pool_factor = pool_factor
        self.fusion = fusion
        self.weights = list(weights) if weights is not None else None
        self.rrf_k = rrf_k
        self.normalize = normalize
        self.depth = depth
        settings = [bm25_settings or {}] if isinstance(bm25_settings, dict) or bm25_settings is None else list(bm25_settings)
        given = [bm25] if isinstance(bm25, BM25Index) else (list(bm25) if bm25 is not None else [])
        if given and bm25_settings is not None and len(settings) != len(given):
            raise ConfigError(f"{len(given)} BM25 indexes but {len(settings)} bm25_settings; pass one or the other")
        self.bm25_settings = [dict(x) for x in settings] if not given else [dict(b.settings) for b in given]
        for x in self.bm25_settings:
            BM25Index.default_settings(**x)  # validate early
        self._bm25_list: list[BM25Index | None] = given or [None] * len(self.bm25_settings)
        self._bm25_owned = not given
        self._bm25_generation: int | None = None
        n_lists = (1 if method == "hybrid" else 0) + (len(self._bm25_list) if method != "dense" else 1)
        if weights is not None and len(weights) != n_lists:
            raise ConfigError(
                f"weights {list(weights)} must have {n_lists} numbers: one per fused list "
                "(dense first when hybrid, then one per BM25 field)"
            )
        self.reranker = CrossEncoderReranker(reranker) if isinstance(reranker, str) else reranker
        self.rerank_top = rerank_top
        self.mmr_lambda = mmr_lambda
        self.mmr_pool = mmr_pool

    @classmethod
    def from_config(cls, kb: Any, config: dict[str, Any] | None = None, **overrides: Any) -> Retriever:
        """A Retriever from a recorded configuration (``DEFAULT_CONFIG`` when None), e.g. a manifest's.

        Example:
            >>> r = Retriever.from_config(kb, {"method": "hybrid", "fusion": "rrf"})   # doctest: +SKIP
        """
        cfg = dict(DEFAULT_CONFIG if config is None else config)
        unknown = set(cfg) - set(CONFIG_KEYS)
        if unknown:
            raise ConfigError(f"retriever configuration keys {sorted(unknown)} are unknown; valid keys: {', '.join(CONFIG_KEYS)}")
        return cls(kb, **{**cfg, **overrides})

    def to_config(self) -> dict[str, Any]:
        """The configuration :meth:`from_config` rebuilds this retriever from (JSON-serialisable).

        Raises:
            ConfigError: the retriever holds something a manifest cannot record (a Python metric
                object that is not registered by name, a reranker model, caller-built BM25 indexes).
        """
        if self.reranker is not None or not self._bm25_owned:
            raise ConfigError("a retriever with a reranker or caller-built BM25 indexes cannot be recorded; "
                              "record the plain configuration and add those at search time")
        if self.metric is not None and get_metric(self.metric.name) is not self.metric:
            raise ConfigError(f"metric {self.metric.name!r} is not registered by name; register it to record it")
        cfg: dict[str, Any] = {"method": self.method, "fusion": self.fusion, "normalize": self.normalize,
                               "weights": self.weights, "rrf_k": self.rrf_k, "depth": self.depth,
                               "bm25_settings": self.bm25_settings, "pool": self.pool, "pool_factor": self.pool_factor,
                               "metric": self.metric.name if self.metric is not None else None,
                               "mmr_lambda": self.mmr_lambda, "mmr_pool": self.mmr_pool, "group_by": self.group_by}
        if not isinstance(self.adapter, str):
            raise ConfigError("a retriever holding a QueryAdapter object cannot be recorded; save it into the index "
                              "(rag_lfm.adapters.save_query_adapter) and record its name")
        if self.adapter != "auto":
            cfg["adapter"] = self.adapter
        return cfg

    @property
    def query_adapter(self) -> Any:
        """The :class:`~rag_lfm.adapters.QueryAdapter` applied to query vectors now, or None."""
        from rag_lfm.adapters.store import active_query_adapter, adapter_key, load_query_adapter

        spec = self.adapter
        if spec == "none":
            return None
        if spec == "auto":
            return active_query_adapter(self.kb)  # cached by the KB per commit
        if not isinstance(spec, str):
            return spec
        self.kb._refresh()
        key = adapter_key(self.kb, spec)
        if self._adapter_cache is None or self._adapter_cache[0] != key:
            self._adapter_cache = (key, load_query_adapter(self.kb, spec))
        return self._adapter_cache[1]

    def adapt(self, qvecs: np.ndarray) -> np.ndarray:
        """Query vectors as the dense search uses them (the query adapter applied, if any)."""
        a = self.query_adapter
        return qvecs if a is None else a.apply(qvecs)

    @property
    def uses_bm25(self) -> bool:
        return self.method in ("bm25", "hybrid")

    @property
    def bm25_indexes(self) -> list[BM25Index]:
        """The KB's BM25 index per field, loaded or rebuilt (when the KB committed since) on use.

        Indexes passed in by the caller are used as they are.
        """
        gen = self.kb.generation
        if self._bm25_owned and (self._bm25_generation != gen or any(b is None for b in self._bm25_list)):
            self._bm25_list = [
                BM25Index.for_kb(self.kb, show_progress=len(self.kb) >= 20_000, **x) for x in self.bm25_settings
            ]
            self._bm25_generation = gen
        return self._bm25_list  # type: ignore[return-value]

    @property
    def bm25(self) -> BM25Index:
        """The first (usually only) BM25 index."""
        return self.bm25_indexes[0]

    @property
    def cache(self) -> VectorCache | None:
        """The in-memory vectors used for rescoring (None when ``vector_cache`` resolves to none)."""
        mode = self.vector_cache
        if mode == "auto":
            mode = "float32" if len(self.kb) * int(self.kb.dim) * 4 <= 2**30 else "none"
        if mode == "none":
            return None
        if self._cache is None or self._cache.generation != self.kb.generation:
            self._cache = VectorCache.from_kb(self.kb, dtype=mode)
        return self._cache

    def _depth(self, k: int) -> int:
        need = k * GROUP_DEPTH_FACTOR if self.group_by == "doc" else k
        if self.reranker is not None:
            need = max(need, self.rerank_top)
        if self.mmr_lambda is not None:
            need = max(need, self.mmr_pool)
        if self.method == "hybrid":
            need = max(need, self.depth or 100)
        return need

    def _allowed(self, filter: dict[str, Any] | None) -> np.ndarray | None:
        # The doc store evaluates the filter (same semantics and errors as dense search).
        return None if not filter else np.asarray(self.kb.docstore.filter_ids(filter), dtype=np.int64)

    def search_ids(
        self, queries: Sequence[str], k: int, *, filter: dict[str, Any] | None = None,
        qvecs: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """First stages only (dense / BM25 / fused): ``(scores[b,depth], chunk_ids[b,depth])``.

        ``qvecs`` lets a caller pass query embeddings it already has (benchmarks encode once): the
        embedder's own vectors; the query adapter, if any, is applied here.
        """
        if isinstance(queries, str):
            raise ConfigError("queries must be a list of strings; use search() for one query")
        k = min(int(k), max(len(self.kb), 1))  # bound every allocation by the collection
        depth = min(self._depth(k), max(len(self.kb), 1))
        lists = []
        if self.method in ("dense", "hybrid"):
            if qvecs is None:
                qvecs = self.kb.embedder.encode(list(queries), kind="query")
            lists.append(
                two_stage_search(self.kb, self.adapt(qvecs), depth, metric=self.metric, pool=self.pool,
                                 pool_factor=self.pool_factor, filter=filter,
                                 cache=self.cache if self.metric is not None else None)
            )
        if self.method in ("bm25", "hybrid"):
            allowed = self._allowed(filter)
            lists.extend(b.search(list(queries), depth, allowed=allowed) for b in self.bm25_indexes)
        if len(lists) == 1:
            return lists[0]
        return fuse(lists, k=depth, method=self.fusion, weights=self.weights, rrf_k=self.rrf_k,
                    normalize=self.normalize)

    def search_batch(
        self, queries: Sequence[str], k: int = 5, *, filter: dict[str, Any] | None = None,
        qvecs: np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Top ``k`` hits for each query (higher score is better)."""
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r} must be a positive int")
        queries = check_queries(queries)
        if qvecs is None and self.method != "bm25":
            qvecs = self.kb.embedder.encode(list(queries), kind="query")
        for _ in range(SEARCH_ATTEMPTS):
            scores, ids = self.search_ids(queries, k, filter=filter, qvecs=qvecs)
            flat = sorted({int(c) for c in ids.ravel().tolist() if c >= 0})
            by_id = {int(h.chunk_id): h for h in (self.kb.fetch(flat) if flat else [])}
            # A candidate the doc store no longer has: another process committed between the search
            # and the fetch. Search again: the KB rolls forward to the new commit before each search.
            if len(by_id) == len(flat):
                break
        out: list[list[Hit]] = []
        for qi, query in enumerate(queries):
            hits = [replace(by_id[int(c)], score=float(s)) for s, c in zip(scores[qi], ids[qi])
                    if c >= 0 and int(c) in by_id]
            if self.reranker is not None and hits:
                hits = self.reranker.rerank(query, hits[: self.rerank_top])
            if self.group_by == "doc":
                seen: set[tuple[str, str]] = set()
                hits = [h for h in hits if (h.source_id, h.doc_id) not in seen and not seen.add((h.source_id, h.doc_id))]
            if self.mmr_lambda is not None and len(hits) > 1:
                hits = self._mmr(query, hits[: self.mmr_pool], k, None if qvecs is None else qvecs[qi])
            out.append(hits[:k])
        return out

    def search(self, query: str, k: int = 5, *, filter: dict[str, Any] | None = None) -> list[Hit]:
        """Top ``k`` hits for one query."""
        return self.search_batch([query], k, filter=filter)[0]

    def _mmr(self, query: str, hits: list[Hit], k: int, qvec: np.ndarray | None) -> list[Hit]:
        ids = np.array([[h.chunk_id for h in hits]], dtype=np.int64)
        vecs = gather_vectors(self.kb, ids, self.cache)[0]
        order = mmr(np.array([h.score for h in hits]), vecs, k=k, lam=float(self.mmr_lambda))
        return [hits[i] for i in order]
