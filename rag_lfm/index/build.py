"""Build an index from a stream of ``(ids, vectors)`` batches: train on a sample, then add batch by batch.

Memory stays at the index itself plus one batch plus the training sample (bounded:
:func:`train_size`), never the whole collection in float32: this is how a knowledge base
rebuilds (auto type switch, compaction, the tuner's choice) and how the tuner builds its
candidates.

Example:
    >>> from rag_lfm.index.build import build_backend                              # doctest: +SKIP
    >>> be = build_backend("IVF1024,PQ48x8,Rescore", 384, lambda: kb.docstore.iter_vectors(), n=len(kb))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from rag_lfm.index.families import make_backend

Batches = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
MIN_TRAIN = 20_000  # PQ/SQ/binary codebooks: 256 centroids x ~80 points
MAX_TRAIN = 262_144
POINTS_PER_LIST = 40  # faiss warns under 39 training points per IVF list


def train_size(backend: Any, n: int) -> int:
    """How many vectors to train ``backend`` on: 40 per IVF list, at least 20k, at most 256k (and n)."""
    ivf = getattr(backend, "ivf", None)
    nlist = int(ivf.nlist) if ivf is not None else 0
    return int(min(n, max(MIN_TRAIN, min(MAX_TRAIN, POINTS_PER_LIST * nlist))))


def sample_stream(batches: Iterable[tuple[np.ndarray, np.ndarray]], size: int, *, n: int | None = None, seed: int = 0,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """A uniform random sample of ``size`` vectors from a stream, in O(size) memory.

    With ``n`` (the stream's length) the positions are drawn up front; without it, reservoir
    sampling (Algorithm R). ``exclude``: ids never sampled (held-out queries).
    """
    rng = np.random.default_rng(seed)
    dim = None
    if n is not None:
        want = np.sort(rng.choice(n, size=min(size, n), replace=False)) if size < n else np.arange(n)
        out: np.ndarray | None = None  # filled in place: no second copy of the sample at the end
        filled, pos = 0, 0
        for ids, vecs in batches:
            if out is None:
                out = np.empty((len(want), vecs.shape[1]), np.float32)
            lo, hi = np.searchsorted(want, [pos, pos + len(ids)])
            rows = want[lo:hi] - pos
            if exclude is not None and len(rows):
                rows = rows[~np.isin(np.asarray(ids)[rows], exclude)]
            out[filled : filled + len(rows)] = np.asarray(vecs, np.float32)[rows]
            filled += len(rows)
            pos += len(ids)
        return out[:filled] if out is not None else np.zeros((0, 0), np.float32)
    reservoir: np.ndarray | None = None
    seen = 0
    for ids, vecs in batches:
        vecs = np.asarray(vecs, np.float32)
        if exclude is not None:
            vecs = vecs[~np.isin(ids, exclude)]
        if reservoir is None:
            reservoir = np.empty((size, vecs.shape[1]), np.float32)
        for row in vecs:
            if seen < size:
                reservoir[seen] = row
            else:
                j = rng.integers(0, seen + 1)
                if j < size:
                    reservoir[j] = row
            seen += 1
    return reservoir[: min(seen, size)] if reservoir is not None else np.zeros((0, 0), np.float32)


def add_stream(backend: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], *, exclude: np.ndarray | None = None) -> int:
    """Add every batch to ``backend`` (leaving out ``exclude`` ids); returns the number added."""
    added = 0
    for ids, vecs in batches:
        ids = np.asarray(ids, np.int64)
        if exclude is not None:
            keep = ~np.isin(ids, exclude)
            ids, vecs = ids[keep], vecs[keep]
        backend.add(ids, vecs)
        added += len(ids)
    return added


def build_backend(factory: str, dim: int, batches: Batches, *, n: int | None = None, metric: str = "ip", params: dict[str, Any] | None = None,
                  exclude: np.ndarray | None = None, seed: int = 0, device: str = "auto", use_gpu: bool | str = "auto",
                  coarse_cache: dict[tuple[int, str], np.ndarray] | None = None) -> Any:
    """A trained, filled backend for ``factory`` from a re-iterable stream (``batches()`` is called once per pass).

    Two passes when the index needs training (sample, then add), one otherwise. ``coarse_cache``
    (the tuner's): IVF centroids by (nlist, metric), reused by the next float IVF index of the
    same size: the same sample and seed would train the same k-means, so this only saves time.
    """
    backend = make_backend(dim, factory, metric=metric, params=params, device=device, use_gpu=use_gpu)
    if not getattr(backend, "is_trained", True):
        size = train_size(backend, n if n is not None else MAX_TRAIN)
        sample = sample_stream(batches(), size, n=n, seed=seed, exclude=exclude)
        if len(sample) == 0:
            # nothing to train on: an empty collection keeps an untrained index until its first add
            return backend
        key = _coarse_key(backend, metric, size, seed) if coarse_cache is not None else None
        if key is not None and key in coarse_cache:
            backend.ivf.quantizer.add(coarse_cache[key])  # IndexIVF.train skips a quantizer holding nlist centroids
        backend.train(sample)
        if key is not None and key not in coarse_cache:
            coarse_cache[key] = backend.ivf.quantizer.reconstruct_n(0, backend.ivf.nlist)
        del sample
    if n is not None and hasattr(backend, "reserve"):
        backend.reserve(n - (len(exclude) if exclude is not None else 0))
    add_stream(backend, batches(), exclude=exclude)
    return backend


def _coarse_key(backend: Any, metric: str, size: int, seed: int) -> tuple[Any, ...] | None:
    """A cache key for a float IVF index's coarse quantizer (None: not cacheable: binary, or after a transform like OPQ)."""
    import faiss

    from rag_lfm.index.faiss_backend import _walk

    if getattr(backend, "_binary", False) or backend.ivf is None:
        return None
    if any(isinstance(p, faiss.IndexPreTransform) for p in _walk(backend.index)):
        return None
    return (int(backend.ivf.nlist), metric, size, seed)


def chain_batches(*streams: Iterable[tuple[np.ndarray, np.ndarray]]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for s in streams:
        yield from s
