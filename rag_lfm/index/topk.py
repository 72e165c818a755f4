"""Top-k over a database scored tile by tile: a running top-k per query, merged after each tile.

The full ``[queries, n]`` score matrix is never materialised, so exact search (and exact
ground truth for recall) runs in memory bounded by one tile. The merge is exact: every
element of the final top-k is in the top-k of its own tile, so keeping each tile's top-k
and merging them gives the same ids as one top-k over the whole matrix (ties between equal
scores aside, which either side breaks arbitrarily).

Example:
    >>> import numpy as np
    >>> acc = TopK(n_queries=1, k=2)
    >>> acc.add(np.array([[0.1, 0.9, 0.3]]), np.array([10, 11, 12]))
    >>> acc.add(np.array([[0.5, 0.2]]), np.array([13, 14]))
    >>> acc.result()[1].tolist()
    [[11, 13]]
"""

from __future__ import annotations

from typing import Any

import numpy as np


def topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(values, positions)`` of the ``k`` largest scores of each row, best first (numpy, O(n) per row)."""
    n = scores.shape[1]
    kk = min(k, n)
    if kk == 0:
        return np.zeros((len(scores), 0), scores.dtype), np.zeros((len(scores), 0), np.int64)
    part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk] if kk < n else np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1).astype(np.int64)


class TopK:
    """A running top-k for ``n_queries`` queries over tiles of a database (numpy).

    ``add(scores[b, t], ids[t] or ids[b, t])`` folds one tile in; ``result()`` gives
    ``(scores[b, k] float32, ids[b, k] int64)`` best first, ``-inf`` / ``-1`` where fewer
    than k were seen. Invalid entries (id -1 or score -inf) never displace real ones.
    """

    def __init__(self, n_queries: int, k: int) -> None:
        self.k = k
        self.scores = np.full((n_queries, k), -np.inf, np.float32)
        self.ids = np.full((n_queries, k), -1, np.int64)

    def add(self, scores: np.ndarray, ids: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float32)
        if scores.shape[1] == 0:
            return
        vals, pos = topk_rows(scores, self.k)
        ids = np.asarray(ids, dtype=np.int64)
        tile_ids = ids[pos] if ids.ndim == 1 else np.take_along_axis(ids, pos, 1)
        tile_ids = np.where(np.isfinite(vals), tile_ids, -1)
        both_s = np.concatenate([self.scores, vals], axis=1)
        both_i = np.concatenate([self.ids, tile_ids], axis=1)
        s, p = topk_rows(both_s, self.k)
        self.scores, self.ids = s, np.take_along_axis(both_i, p, 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        ids = np.where(np.isfinite(self.scores), self.ids, -1)
        return self.scores.copy(), ids


def torch_topk_tile(scores: Any, k: int, group: int = 0) -> tuple[Any, Any]:
    """``torch.topk(scores, k)`` of a ``[b, t]`` tile, optionally in two exact levels.

    With ``group`` > 0 and ``t`` a multiple of it, the row is cut into groups of ``group``
    scores, the top-k of each group is taken (many short rows: a shape GPU top-k kernels
    handle well), then the top-k of those ``t / group * k`` survivors. Exact: each global
    top-k element is in its group's top-k.
    """
    import torch

    b, t = scores.shape
    kk = min(k, t)
    if group and t % group == 0 and t // group > 1 and group > kk:
        g = t // group
        v, i = torch.topk(scores.view(b, g, group), kk, dim=2)
        i = i + (torch.arange(g, device=scores.device) * group).view(1, g, 1)
        v2, j = torch.topk(v.reshape(b, g * kk), kk, dim=1)
        return v2, torch.gather(i.reshape(b, g * kk), 1, j)
    return torch.topk(scores, kk, dim=1)


def torch_merge(best: tuple[Any, Any] | None, vals: Any, ids: Any, k: int) -> tuple[Any, Any]:
    """Merge a tile's ``(vals[b, k'], ids[b, k'])`` into the running ``best`` (torch, on the device)."""
    import torch

    if best is None:
        return vals, ids
    s = torch.cat([best[0], vals], dim=1)
    i = torch.cat([best[1], ids], dim=1)
    top_s, pos = torch.topk(s, min(k, s.shape[1]), dim=1)
    return top_s, torch.gather(i, 1, pos)
