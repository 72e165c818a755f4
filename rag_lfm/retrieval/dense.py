"""Two-stage dense search: FAISS gives a candidate pool, a registered metric rescores it.

The pool comes from the KB's own index (inner product or L2 on the stored vectors), searched
with the metric's ``query_transform`` of the query when it has one (exact for a bilinear
metric). The rescoring reads the stored vectors of the pool (``kb.vectors``) and, for a
metadata metric, their metadata (``kb.fetch``). When the pool covers the whole collection the
result equals brute-force scoring with the metric; with a smaller pool it is an
approximation whose recall ``bench_metric_overhead.py`` measures.

Example:
    >>> scores, ids = two_stage_search(kb, kb.embedder.encode(["q"], kind="query"), 5, metric="l2")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError
from rag_lfm.metrics import Metric, get_metric, score


def candidate_metadata(kb: Any, ids: np.ndarray) -> list[list[dict[str, Any]]]:
    """``metadata[b][n]`` for a ``[b, n]`` id array: each chunk's metadata plus doc_id and source_id."""
    flat = sorted({int(c) for c in ids.ravel().tolist() if c >= 0})
    by_id: dict[int, dict[str, Any]] = {}
    for hit in kb.fetch(flat) if flat else []:
        meta = dict(hit.metadata)
        meta.setdefault("doc_id", hit.doc_id)
        meta.setdefault("source_id", hit.source_id)
        by_id[int(hit.chunk_id)] = meta
    return [[by_id.get(int(c), {}) for c in row.tolist()] for row in ids]


class VectorCache:
    """A KB's stored vectors held in memory, for fast rescoring of candidate pools.

    Reading a pool's vectors from the SQL doc store costs a query per batch; an in-memory copy
    turns it into one numpy gather. ``dtype="float16"`` halves the memory (384-d: 768 bytes
    per chunk instead of 1,536) at a rescoring precision of about 1e-3 on unit vectors.

    Example:
        >>> cache = VectorCache.from_kb(kb, dtype="float16")           # doctest: +SKIP
        >>> cache.nbytes                                               # doctest: +SKIP
        15409152
    """

    DTYPES = ("float32", "float16")

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, generation: int | None = None) -> None:
        order = np.argsort(ids, kind="stable")
        self.ids = np.asarray(ids, dtype=np.int64)[order]
        self.vectors = np.asarray(vectors)[order]
        self.generation = generation

    @classmethod
    def from_kb(cls, kb: Any, *, dtype: str = "float32") -> VectorCache:
        """Read every stored vector of ``kb`` (streamed from the doc store in batches)."""
        if dtype not in cls.DTYPES:
            raise ConfigError(f"vector cache dtype {dtype!r} is not supported; use one of {cls.DTYPES}")
        ids, vecs = [], []
        for bid, bvec in kb.docstore.iter_vectors():
            ids.append(np.asarray(bid, dtype=np.int64))
            vecs.append(np.asarray(bvec, dtype=dtype))
        dim = int(kb.dim)
        return cls(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                   np.concatenate(vecs) if vecs else np.zeros((0, dim), dtype), kb.generation)

    @property
    def nbytes(self) -> int:
        return int(self.vectors.nbytes + self.ids.nbytes)

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors[..., d] float32, found[...] bool)`` for an id array of any shape."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        pos = np.searchsorted(self.ids, flat)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = (flat >= 0) & (len(self.ids) > 0)
        if len(self.ids):
            found &= self.ids[pos] == flat
        out = np.zeros((len(flat), self.vectors.shape[1]), dtype=np.float32)
        if len(self.ids):
            out[found] = self.vectors[pos[found]]
        return out.reshape(*np.shape(ids), -1), found.reshape(np.shape(ids))


def gather_vectors(kb: Any, ids: np.ndarray, cache: VectorCache | None = None) -> np.ndarray:
    """Stored vectors for a ``[b, n]`` id array as ``[b, n, d]`` (zeros where the id is -1).

    With a ``cache`` the vectors come from memory; ids it lacks (added after it was built)
    are read from the doc store.
    """
    if cache is not None:
        cand, found = cache.gather(ids)
        missing = (ids >= 0) & ~found
        if missing.any():
            cand[missing] = gather_vectors(kb, np.where(missing, ids, -1))[missing]
        return cand
    valid = ids >= 0
    flat = np.unique(ids[valid])
    if len(flat) == 0:
        dim = int(getattr(kb.embedder, "dim", 0) or 1)
        return np.zeros((*ids.shape, dim), dtype=np.float32)
    vecs = np.asarray(kb.vectors(flat), dtype=np.float32)
    pos = np.searchsorted(flat, np.where(valid, ids, flat[0]))
    cand = vecs[pos]
    cand[~valid] = 0.0
    return cand


def two_stage_search(
    kb: Any,
    qvecs: np.ndarray,
    k: int,
    *,
    metric: str | Metric | Any | None = None,
    pool: int | None = None,
    pool_factor: int = 10,
    filter: dict[str, Any] | None = None,
    cache: VectorCache | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query vector: ``(scores[b,k] float32, chunk_ids[b,k] int64)``, ``-1`` = none.

    Args:
        metric: None for the index's own scores (one stage), else a registered name, a
            :class:`~rag_lfm.metrics.Metric` or a callable.
        pool: candidates FAISS returns per query before rescoring (default ``pool_factor * k``).
        filter: a metadata filter, applied by the KB in the first stage.
        cache: in-memory stored vectors (:class:`VectorCache`); without it the pool's vectors
            are read from the doc store.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    k = min(int(k), max(len(kb), 1))  # never allocate for more results than the collection holds
    q = np.ascontiguousarray(np.asarray(qvecs, dtype=np.float32))
    if metric is None:
        return kb.search_vectors(q, k, filter=filter)
    m = get_metric(metric)
    pool = min(int(pool) if pool is not None else pool_factor * k, max(len(kb), k))
    if pool < k:
        raise ConfigError(f"candidate pool {pool} must be >= k = {k}; raise pool (or pool_factor)")
    first_q = m.query_transform(q) if m.query_transform is not None else q
    _, ids = kb.search_vectors(np.ascontiguousarray(first_q, dtype=np.float32), pool, filter=filter)
    ids = np.asarray(ids, dtype=np.int64)
    valid = ids >= 0
    cand = gather_vectors(kb, ids, cache)
    metadata = candidate_metadata(kb, ids) if m.uses_metadata else None
    s = score(m, q, cand, metadata)
    s = np.where(valid, s, -np.inf).astype(np.float32)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    top_s = np.take_along_axis(s, order, axis=1)
    top_i = np.where(np.isfinite(top_s), np.take_along_axis(ids, order, axis=1), -1)
    if top_s.shape[1] < k:  # the pool was smaller than k (tiny collection): pad
        pad = k - top_s.shape[1]
        top_s = np.pad(top_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_i = np.pad(top_i, ((0, 0), (0, pad)), constant_values=-1)
    return top_s, top_i
