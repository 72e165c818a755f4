"""Vector collections the tuner and the benchmark stream from: a knowledge base, an array, synthetic data.

A source yields ``(ids int64 [b], vectors float32 [b, d])`` batches, the same ones each time
it is iterated, so a build can make two passes (train on a sample, then add) without the
collection ever being held in memory at once.

Example:
    >>> src = SyntheticClustered(100_000, 384, seed=0)
    >>> ids, vecs = next(iter(src.iter_batches()))
    >>> vecs.shape, round(float((vecs[0] ** 2).sum()), 3)
    ((16384, 384), 1.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rag_lfm.errors import ConfigError
from rag_lfm.index.topk import TopK

BATCH = 16_384  # rows per batch: 25 MB of 384-d float32, the bounded buffer a build streams through


@runtime_checkable
class VectorSource(Protocol):
    """A re-iterable collection of vectors: ``dim``, ``metric``, ``len()``, ``iter_batches()``."""

    dim: int
    metric: str

    def __len__(self) -> int: ...

    def iter_batches(self, batch_size: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


class KBSource:
    """A knowledge base's stored vectors (streamed from its doc store)."""

    def __init__(self, kb: Any) -> None:
        self.kb, self.dim, self.metric = kb, int(kb.dim), kb.manifest["metric"]

    def __len__(self) -> int:
        return int(self.kb.docstore.counts()[1])

    def iter_batches(self, batch_size: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        yield from self.kb.docstore.iter_vectors(batch_size)


class ArraySource:
    """Vectors in an array (or a read-only memory map: batches are read one at a time)."""

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None, *, metric: str = "ip") -> None:
        if vectors.ndim != 2:
            raise ConfigError(f"vectors must be 2-D [n, dim], got shape {vectors.shape}")
        self.vectors = vectors
        self.ids = np.arange(len(vectors), dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.dim, self.metric = int(vectors.shape[1]), metric

    def __len__(self) -> int:
        return len(self.vectors)

    def iter_batches(self, batch_size: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, len(self.vectors), batch_size):
            yield self.ids[a : a + batch_size], np.ascontiguousarray(self.vectors[a : a + batch_size], dtype=np.float32)


class SyntheticClustered:
    """``n`` unit vectors from a Gaussian mixture with a decaying spectrum, generated batch by batch (fixed seed).

    Sentence embeddings are clustered by topic and anisotropic (a few directions carry most
    of the variance); uniform random vectors are neither, and make every index look either
    perfect or hopeless. Here: ``clusters`` centres with popularity ~ 1/sqrt(rank); in a
    random rotation, dimension i has standard deviation (i+1)^-``decay``/2 for the centres and
    ``spread`` times that inside a cluster; each vector is normalised. Batch ``b`` is drawn from
    its own seeded generator (blocks of 16,384 rows), so any part can be regenerated alone and
    every batch size reads the same collection.

    Args:
        n: vectors; dim: dimension; clusters: mixture components; spread: within-cluster
        scale relative to between-cluster; decay: spectrum exponent; seed: the fixed seed.
    """

    def __init__(self, n: int, dim: int = 384, *, clusters: int = 1000, spread: float = 0.6, decay: float = 1.0,
                 seed: int = 0, metric: str = "ip") -> None:
        self.n, self.dim, self.metric, self.seed = int(n), int(dim), metric, int(seed)
        self.spread = float(spread)
        rng = np.random.default_rng([self.seed, 1])
        self.scale = ((np.arange(dim) + 1.0) ** (-decay / 2)).astype(np.float32)
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.centers = (rng.standard_normal((clusters, dim)).astype(np.float32) * self.scale) @ self.rotation
        w = 1.0 / np.sqrt(np.arange(clusters) + 1.0)
        self.weights = w / w.sum()

    def __len__(self) -> int:
        return self.n

    def _draw(self, rng: np.random.Generator, m: int) -> np.ndarray:
        # in place where numpy allows: a batch costs ~3 arrays of its size, not 6
        c = rng.choice(len(self.centers), size=m, p=self.weights)
        noise = rng.standard_normal((m, self.dim), dtype=np.float32)
        noise *= self.spread * self.scale
        x = noise @ self.rotation
        del noise
        x += self.centers[c]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    BLOCK = 16_384  # rows per seeded block: the collection is the same whatever batch size reads it

    def _block(self, b: int) -> np.ndarray:
        m = min(self.BLOCK, self.n - b * self.BLOCK)
        return self._draw(np.random.default_rng([self.seed, 2, b]), m).astype(np.float32)

    def iter_batches(self, batch_size: int = BATCH) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for a in range(0, self.n, batch_size):
            z = min(self.n, a + batch_size)
            blocks = range(a // self.BLOCK, (z - 1) // self.BLOCK + 1)
            x = np.concatenate([self._block(b) for b in blocks])
            off = blocks[0] * self.BLOCK
            yield np.arange(a, z, dtype=np.int64), x[a - off : z - off]

    def queries(self, m: int, seed: int = 1) -> np.ndarray:
        """``m`` query vectors from the same mixture, none of them in the collection."""
        return self._draw(np.random.default_rng([self.seed, 3, seed]), m).astype(np.float32)


def exact_topk(source: Any, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None, batch_size: int = BATCH,
               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of ``queries`` over ``source`` (flat search per batch, merged): the ground truth for recall.

    Memory: one batch plus ``[queries, k]``. ``exclude``: ids left out (held-out queries).
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    acc = TopK(len(queries), k)
    metric = faiss.METRIC_INNER_PRODUCT if source.metric == "ip" else faiss.METRIC_L2
    from tqdm.auto import tqdm

    bar = tqdm(total=len(source), desc="exact ground truth", unit="vec", disable=not progress)
    for ids, vecs in source.iter_batches(batch_size):
        bar.update(len(ids))
        if exclude is not None:
            keep = ~np.isin(ids, exclude)
            ids, vecs = ids[keep], vecs[keep]
        if len(ids) == 0:
            continue
        d, i = faiss.knn(queries, np.ascontiguousarray(vecs, dtype=np.float32), min(k, len(ids)), metric=metric)
        scores = d if source.metric == "ip" else -d
        acc.add(scores, np.where(i >= 0, ids[np.maximum(i, 0)], -1))
    bar.close()
    return acc.result()


def heldout(source: Any, m: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, vectors)`` of ``m`` stored vectors drawn uniformly at random: queries held out of the index while tuning."""
    n = len(source)
    if n < 2:
        raise ConfigError(f"the collection has {n} vector(s); tuning needs at least 2 (one to query, one to find)")
    m = min(m, max(1, n // 10))  # never hold out more than a tenth of the collection
    want = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    out_ids, out_vecs, pos = [], [], 0
    for ids, vecs in source.iter_batches():
        lo, hi = np.searchsorted(want, [pos, pos + len(ids)])
        rows = want[lo:hi] - pos
        out_ids.append(np.asarray(ids)[rows])
        out_vecs.append(np.asarray(vecs, np.float32)[rows])
        pos += len(ids)
    return np.concatenate(out_ids), np.concatenate(out_vecs)
