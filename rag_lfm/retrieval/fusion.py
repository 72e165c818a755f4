"""Rank fusion of several result lists: reciprocal rank fusion (RRF) and weighted score fusion.

Every list is a pair ``(scores[b, n], ids[b, n])`` per query batch, ids ``-1`` meaning "no
result" (the padding FAISS and the BM25 wrapper use). Fusion works on ids alone, so a dense
list and a BM25 list over the same chunks combine without knowing where they came from.

Example:
    >>> import numpy as np
    >>> dense = (np.array([[0.9, 0.8]]), np.array([[1, 2]]))
    >>> bm25 = (np.array([[7.0, 3.0]]), np.array([[2, 3]]))
    >>> rrf([dense, bm25], k=3)[1].tolist()
    [[2, 1, 3]]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rag_lfm.errors import ConfigError

Ranked = tuple[np.ndarray, np.ndarray]

NORMALIZATIONS = ("minmax", "zscore", "none")


def _check(lists: Sequence[Ranked], weights: Sequence[float] | None) -> list[float]:
    if not lists:
        raise ConfigError("fusion needs at least one result list, got none")
    b = np.asarray(lists[0][1]).shape[0]
    for i, (s, ids) in enumerate(lists):
        if np.asarray(s).shape != np.asarray(ids).shape or np.asarray(ids).shape[0] != b:
            raise ConfigError(
                f"fusion list {i}: scores {np.asarray(s).shape} and ids {np.asarray(ids).shape} must both be [b, n] "
                f"with the same b = {b} as list 0"
            )
    if weights is None:
        return [1.0] * len(lists)
    if len(weights) != len(lists):
        raise ConfigError(f"fusion weights {list(weights)} must have one weight per list ({len(lists)} lists)")
    return [float(w) for w in weights]


def _top(fused: list[dict[int, float]], k: int) -> Ranked:
    b = len(fused)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    out_i = np.full((b, k), -1, dtype=np.int64)
    for row, acc in enumerate(fused):
        # Ties break on the smaller id so a fusion is deterministic.
        best = sorted(acc.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        for j, (cid, sc) in enumerate(best):
            out_i[row, j] = cid
            out_s[row, j] = sc
    return out_s, out_i


def rrf(lists: Sequence[Ranked], *, k: int, rrf_k: float = 60.0, weights: Sequence[float] | None = None) -> Ranked:
    """Reciprocal rank fusion: ``sum_lists w / (rrf_k + rank)`` (rank from 1), top ``k`` per query.

    Scores of the inputs are ignored (only their order counts), which is what makes RRF robust
    to lists on incomparable scales (cosine vs BM25).
    """
    w = _check(lists, weights)
    if rrf_k < 0:
        raise ConfigError(f"rrf_k must be >= 0, got {rrf_k}")
    b = np.asarray(lists[0][1]).shape[0]
    fused: list[dict[int, float]] = [dict() for _ in range(b)]
    for weight, (_, ids) in zip(w, lists):
        ids = np.asarray(ids)
        for row in range(b):
            acc = fused[row]
            for rank, cid in enumerate(ids[row].tolist(), start=1):
                if cid < 0:
                    continue
                acc[cid] = acc.get(cid, 0.0) + weight / (rrf_k + rank)
    return _top(fused, k)


def _normalize(scores: np.ndarray, valid: np.ndarray, how: str) -> np.ndarray:
    s = np.where(valid, scores, np.nan).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan():
        if how == "minmax":
            lo, hi = np.nanmin(s, axis=1, keepdims=True), np.nanmax(s, axis=1, keepdims=True)
            out = (s - lo) / np.where(hi > lo, hi - lo, 1.0)
        elif how == "zscore":
            mu, sd = np.nanmean(s, axis=1, keepdims=True), np.nanstd(s, axis=1, keepdims=True)
            out = (s - mu) / np.where(sd > 0, sd, 1.0)
        else:
            out = s
    return out


class _quiet_nan:
    """Silence numpy's all-NaN-row warnings (a query with no results in one list is normal)."""

    def __enter__(self) -> None:
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc: object) -> None:
        self._ctx.__exit__(*exc)


def weighted(
    lists: Sequence[Ranked],
    *,
    k: int,
    weights: Sequence[float] | None = None,
    normalize: str = "minmax",
) -> Ranked:
    """Weighted score fusion: ``sum_lists w * norm(score)``, top ``k`` per query.

    Each list's scores are normalised per query first (``minmax`` to [0, 1], ``zscore``, or
    ``none``); a candidate absent from a list gets that list's minimum after normalisation
    (0 for minmax), i.e. "at most as good as the worst one seen", not a free pass.
    """
    w = _check(lists, weights)
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize={normalize!r} is not supported; use one of {NORMALIZATIONS}")
    b = np.asarray(lists[0][1]).shape[0]
    normed = []
    for s, ids in lists:
        ids = np.asarray(ids)
        normed.append((_normalize(np.asarray(s, dtype=np.float64), ids >= 0, normalize), ids))
    fused: list[dict[int, float]] = []
    for row in range(b):
        acc: dict[int, float] = {}
        floors = []
        for ns, ids in normed:
            vals = ns[row][ids[row] >= 0]
            floors.append(float(vals.min()) if len(vals) else 0.0)
        union = {int(c) for _, ids in normed for c in ids[row].tolist() if c >= 0}
        for cid in union:
            acc[cid] = 0.0
        for weight, floor, (ns, ids) in zip(w, floors, normed):
            seen = {}
            for cid, val in zip(ids[row].tolist(), ns[row].tolist()):
                if cid >= 0 and cid not in seen:
                    seen[cid] = val
            for cid in union:
                acc[cid] += weight * seen.get(cid, floor)
        fused.append(acc)
    return _top(fused, k)


def fuse(
    lists: Sequence[Ranked],
    *,
    k: int,
    method: str = "rrf",
    weights: Sequence[float] | None = None,
    rrf_k: float = 60.0,
    normalize: str = "minmax",
) -> Ranked:
    """Dispatch to :func:`rrf` or :func:`weighted` by ``method`` name."""
    if method == "rrf":
        return rrf(lists, k=k, rrf_k=rrf_k, weights=weights)
    if method == "weighted":
        return weighted(lists, k=k, weights=weights, normalize=normalize)
    raise ConfigError(f"fusion method {method!r} is not supported; use 'rrf' or 'weighted'")
