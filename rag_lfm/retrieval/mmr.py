"""Maximal marginal relevance (Carbonell & Goldstein, 1998): relevant *and* diverse results.

Greedy: the next pick maximises ``lam * rel(c) - (1 - lam) * max_{s in picked} sim(c, s)``,
with ``sim`` the cosine between candidate vectors. ``lam = 1`` is the plain ranking,
``lam = 0`` pure diversity.

Example:
    >>> import numpy as np
    >>> v = np.array([[1, 0], [1, 0.01], [0, 1]], dtype=np.float32)
    >>> mmr(np.array([1, 0.99, 0.5]), v, k=2, lam=0.5).tolist()   # skips the near-duplicate
    [0, 2]
"""

from __future__ import annotations

import numpy as np

from rag_lfm.errors import ConfigError


def mmr(relevance: np.ndarray, vectors: np.ndarray, *, k: int, lam: float = 0.5) -> np.ndarray:
    """Indices (into the candidates) of the ``k`` MMR picks, in pick order.

    Args:
        relevance: ``[n]`` relevance of each candidate to the query (any scale: it is min-max
            normalised to [0, 1] so it trades off against cosine similarity on a fixed scale).
        vectors: ``[n, d]`` candidate vectors (normalised here for the cosine).
        k: how many to pick (at most ``n``).
        lam: relevance weight in [0, 1].
    """
    if not 0.0 <= lam <= 1.0:
        raise ConfigError(f"MMR lambda must be in [0, 1], got {lam}")
    rel = np.asarray(relevance, dtype=np.float64)
    vec = np.asarray(vectors, dtype=np.float32)
    if vec.ndim != 2 or rel.shape != (vec.shape[0],):
        raise ConfigError(f"MMR: relevance must be [n] and vectors [n, d]; got {rel.shape} and {vec.shape}")
    n = len(rel)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    finite = np.isfinite(rel)
    lo, hi = (rel[finite].min(), rel[finite].max()) if finite.any() else (0.0, 1.0)
    rel = np.where(finite, (rel - lo) / (hi - lo if hi > lo else 1.0), -1.0)
    unit = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    picked: list[int] = []
    max_sim = np.full(n, -np.inf)
    available = np.ones(n, dtype=bool)
    for _ in range(k):
        redundancy = np.where(np.isfinite(max_sim), max_sim, 0.0)
        gain = lam * rel - (1.0 - lam) * redundancy
        gain[~available] = -np.inf
        j = int(np.argmax(gain))
        picked.append(j)
        available[j] = False
        max_sim = np.maximum(max_sim, sim[j])
    return np.asarray(picked, dtype=np.int64)
