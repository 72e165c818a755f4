"""Retrieval metrics: any Python scoring function, registered by name, as a first-class metric.

FAISS only knows inner product and L2, and a custom metric there needs C++. Here a metric
is a plain callable ::

    score(queries[b, d], candidates[b, n, d]) -> scores[b, n]      # higher is better

written with numpy or torch, registered under a name and used by the two-stage search of
:class:`rag_lfm.retrieval.Retriever`: FAISS returns a candidate pool, the metric rescores it
on the stored vectors. A metric may also read the candidates' metadata (recency decay,
source weights): it then takes a third argument ``metadata[b][n]`` (one dict per candidate,
holding the chunk's metadata plus ``doc_id`` and ``source_id``).

Built-ins: ``cosine``, ``dot``, ``l2`` (negative Euclidean distance, so higher is better).
Learned metrics (:class:`BilinearMetric` ``q^T W c`` and :class:`MahalanobisMetric`
``-||L(q - c)||^2``) are fitted from relevance pairs with :func:`fit_bilinear` /
:func:`fit_mahalanobis` and saved as ``.npy`` + JSON (no pickle).

Example:
    >>> import numpy as np
    >>> from rag_lfm.metrics import register_metric, get_metric, score
    >>> _ = register_metric("neg_l1", lambda q, c: -np.abs(c - q[:, None, :]).sum(-1), replace=True)
    >>> q = np.zeros((1, 2), np.float32); c = np.array([[[1, 1], [0, 1]]], np.float32)
    >>> score("neg_l1", q, c).tolist()
    [[-2.0, -1.0]]
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError, RagLfmError

__all__ = [
    "Metric",
    "MetricError",
    "register_metric",
    "unregister_metric",
    "get_metric",
    "metric_names",
    "score",
    "BilinearMetric",
    "MahalanobisMetric",
    "fit_bilinear",
    "fit_mahalanobis",
    "load_learned_metric",
    "recency_decay",
    "source_weights",
]


class MetricError(RagLfmError, ValueError):
    """A metric returned scores of the wrong shape, NaN, or could not be evaluated."""


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: the registry name (what a manifest or a CLI option records).
        fn: ``fn(queries[b,d], candidates[b,n,d][, metadata]) -> [b,n]``, higher is better.
        backend: ``"numpy"`` (the function gets numpy arrays) or ``"torch"`` (it gets torch
            tensors on the CPU, zero-copy views of the same memory).
        uses_metadata: the function takes a third argument ``metadata[b][n]`` (dicts).
        query_transform: optional ``q[b,d] -> q'[b,d]`` such that the first-stage inner-product
            search with ``q'`` ranks candidates the way the metric does (exact for a bilinear
            metric); without it the first stage searches with the raw query.
    """

    name: str
    fn: Callable[..., Any]
    backend: str = "numpy"
    uses_metadata: bool = False
    query_transform: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(
        self,
        queries: np.ndarray,
        candidates: np.ndarray,
        metadata: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    ) -> np.ndarray:
        return score(self, queries, candidates, metadata)


# --------------------------------------------------------------------------- built-ins


def _cosine(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    qn = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
    cn = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    return np.einsum("bd,bnd->bn", qn, cn)


def _dot(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.einsum("bd,bnd->bn", q, c)


def _l2(q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return -np.linalg.norm(c - q[:, None, :], axis=-1)


_BUILTINS = ("cosine", "dot", "l2")
_REGISTRY: dict[str, Metric] = {}


def _valid_backend(backend: str) -> str:
    if backend not in ("numpy", "torch"):
        raise ConfigError(f"metric backend {backend!r} is not supported; use 'numpy' or 'torch'")
    return backend


def register_metric(
    name: str,
    fn: Callable[..., Any],
    *,
    backend: str = "numpy",
    uses_metadata: bool | None = None,
    query_transform: Callable[[np.ndarray], np.ndarray] | None = None,
    replace: bool = False,
) -> Metric:
    """Register ``fn`` as the metric ``name`` and return the :class:`Metric`.

    ``uses_metadata`` defaults to ``fn.uses_metadata`` when the function carries that
    attribute (the factories :func:`recency_decay` and :func:`source_weights` set it).

    Raises:
        ConfigError: ``name`` is empty, already registered (pass ``replace=True`` to
            overwrite a user metric; built-ins can never be replaced), or ``fn`` is not callable.

    Example:
        >>> import numpy as np
        >>> m = register_metric("dot_x2", lambda q, c: 2 * np.einsum("bd,bnd->bn", q, c), replace=True)
        >>> m.name
        'dot_x2'
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"metric name {name!r} must be a non-empty string")
    if not callable(fn):
        raise ConfigError(f"metric {name!r}: fn must be callable, got {type(fn).__name__}")
    if name in _BUILTINS and name in _REGISTRY:
        raise ConfigError(f"metric {name!r} is a built-in and cannot be replaced; register under another name")
    if name in _REGISTRY and not replace:
        raise ConfigError(
            f"metric {name!r} is already registered; pick another name or pass replace=True "
            f"(registered: {', '.join(metric_names())})"
        )
    if uses_metadata is None:
        uses_metadata = bool(getattr(fn, "uses_metadata", False))
    if query_transform is None:
        query_transform = getattr(fn, "query_transform", None)
    metric = Metric(name, fn, _valid_backend(backend), uses_metadata, query_transform)
    _REGISTRY[name] = metric
    return metric


def unregister_metric(name: str) -> None:
    """Remove a user metric (built-ins stay). Raises ConfigError for an unknown or built-in name."""
    if name in _BUILTINS:
        raise ConfigError(f"metric {name!r} is a built-in and cannot be unregistered")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown metric {name!r}; registered metrics: {', '.join(metric_names())}")
    del _REGISTRY[name]


def metric_names() -> list[str]:
    """The registered metric names, built-ins first."""
    return list(_BUILTINS) + sorted(n for n in _REGISTRY if n not in _BUILTINS)


def get_metric(metric: str | Metric | Callable[..., Any]) -> Metric:
    """Resolve a name (or pass through a Metric; wrap a bare callable as an unnamed metric).

    Raises:
        ConfigError: an unknown name; the message lists the registered ones.
    """
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        found = _REGISTRY.get(metric)
        if found is None:
            raise ConfigError(
                f"unknown metric {metric!r}; registered metrics: {', '.join(metric_names())}. "
                "Register your own with rag_lfm.metrics.register_metric(name, fn)"
            )
        return found
    if callable(metric):
        return Metric(
            getattr(metric, "name", None) or getattr(metric, "__name__", "custom"),
            metric,
            uses_metadata=bool(getattr(metric, "uses_metadata", False)),
            query_transform=getattr(metric, "query_transform", None),
        )
    raise ConfigError(f"metric must be a registered name, a Metric or a callable; got {type(metric).__name__}")


for _name, _fn in (("cosine", _cosine), ("dot", _dot), ("l2", _l2)):
    _REGISTRY[_name] = Metric(_name, _fn)


def _to_numpy(name: str, out: Any) -> np.ndarray:
    if isinstance(out, np.ndarray):
        return out
    if hasattr(out, "detach") and hasattr(out, "cpu"):  # a torch tensor, without importing torch
        return out.detach().cpu().float().numpy()
    try:
        return np.asarray(out, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MetricError(
            f"metric {name!r} returned {type(out).__name__}, not an array of scores; return a numpy array "
            "or torch tensor of shape [b, n]"
        ) from exc


def score(
    metric: str | Metric | Callable[..., Any],
    queries: np.ndarray,
    candidates: np.ndarray,
    metadata: Sequence[Sequence[Mapping[str, Any]]] | None = None,
) -> np.ndarray:
    """Score ``candidates[b,n,d]`` against ``queries[b,d]`` with a metric, checking its output.

    Returns float32 ``[b, n]``. The check is what turns a buggy user metric into a clear error
    at the call that caused it, rather than a silently wrong ranking.

    Raises:
        MetricError: the output is not ``[b, n]``, or holds NaN (``-inf`` is allowed: it means
            "never rank this candidate").
        ConfigError: inputs of the wrong rank or dimension.
    """
    m = get_metric(metric)
    q = np.asarray(queries, dtype=np.float32)
    c = np.asarray(candidates, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 3 or c.shape[0] != q.shape[0] or c.shape[2] != q.shape[1]:
        raise ConfigError(
            f"metric {m.name!r}: queries must be [b, d] and candidates [b, n, d]; got {q.shape} and {c.shape}"
        )
    b, n = c.shape[:2]
    args: list[Any] = [q, c]
    if m.backend == "torch":
        import torch  # lazily: numpy metrics never pay for it

        args = [torch.from_numpy(q), torch.from_numpy(c)]
    if m.uses_metadata:
        if metadata is None:
            raise MetricError(
                f"metric {m.name!r} uses metadata, but none was passed; score it through a Retriever "
                "(which fetches the candidates' metadata) or pass metadata=[[dict, ...], ...]"
            )
        args.append(metadata)
    out = _to_numpy(m.name, m.fn(*args))
    if out.shape != (b, n):
        raise MetricError(
            f"metric {m.name!r} returned scores of shape {tuple(out.shape)}; expected (b, n) = {(b, n)} "
            "(one score per candidate of each query)"
        )
    out = out.astype(np.float32, copy=False)
    if np.isnan(out).any():
        bad = int(np.isnan(out).sum())
        raise MetricError(
            f"metric {m.name!r} returned {bad} NaN score(s) of {b * n}; return finite scores "
            "(or -inf to exclude a candidate)"
        )
    return out


# --------------------------------------------------------------------------- metadata-aware factories


def _base_fn(base: str | Metric | Callable[..., Any]) -> Metric:
    m = get_metric(base)
    if m.uses_metadata:
        raise ConfigError(f"base metric {m.name!r} itself uses metadata; pass a vector metric such as 'cosine'")
    return m


def recency_decay(
    field: str = "timestamp",
    *,
    half_life_days: float = 30.0,
    weight: float = 0.1,
    base: str | Metric | Callable[..., Any] = "cosine",
    now: float | None = None,
) -> Callable[..., np.ndarray]:
    """A metadata metric: ``base + weight * 0.5 ** (age_days / half_life_days)``.

    ``metadata[field]`` is a Unix timestamp (seconds) or an ISO-8601 date string; a
    candidate without the field gets no bonus. Additive (rather than multiplicative) so the
    bonus means the same for positive and negative base scores.

    Example:
        >>> fn = recency_decay("published", half_life_days=7, weight=0.2)
        >>> _ = register_metric("fresh", fn, replace=True)  # uses_metadata is inferred
    """
    if half_life_days <= 0:
        raise ConfigError(f"half_life_days must be > 0, got {half_life_days}")
    base_metric = _base_fn(base)

    def _age_seconds(value: Any, ref: float) -> float | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            return ref - float(value)
        from datetime import datetime, timezone

        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError as exc:
            raise MetricError(
                f"recency_decay: metadata field {field!r} = {value!r} is neither a Unix timestamp nor an "
                "ISO-8601 date"
            ) from exc
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return ref - dt.timestamp()

    def fn(q: np.ndarray, c: np.ndarray, metadata: Sequence[Sequence[Mapping[str, Any]]]) -> np.ndarray:
        ref = time.time() if now is None else now
        s = score(base_metric, q, c)
        bonus = np.zeros_like(s)
        for i, row in enumerate(metadata):
            for j, meta in enumerate(row[: s.shape[1]]):
                age = _age_seconds(meta.get(field) if meta else None, ref)
                if age is not None:
                    bonus[i, j] = 0.5 ** (max(age, 0.0) / 86400.0 / half_life_days)
        return s + weight * bonus

    fn.uses_metadata = True  # type: ignore[attr-defined]
    return fn


def source_weights(
    weights: Mapping[str, float],
    *,
    field: str = "source_id",
    default: float = 1.0,
    base: str | Metric | Callable[..., Any] = "cosine",
) -> Callable[..., np.ndarray]:
    """A metadata metric: ``base + log(weight[metadata[field]])``, i.e. a prior per source.

    A log-prior keeps the ordering within one source intact and lets weight 2 mean
    "as if the score were higher by log 2" whatever the sign of the base score.

    Example:
        >>> fn = source_weights({"docs:manual": 2.0, "web": 0.5})
        >>> _ = register_metric("trusted", fn, replace=True)
    """
    for key, w in weights.items():
        if not w > 0:
            raise ConfigError(f"source_weights: weight for {key!r} must be > 0, got {w}")
    base_metric = _base_fn(base)

    def fn(q: np.ndarray, c: np.ndarray, metadata: Sequence[Sequence[Mapping[str, Any]]]) -> np.ndarray:
        s = score(base_metric, q, c)
        prior = np.zeros_like(s)
        for i, row in enumerate(metadata):
            for j, meta in enumerate(row[: s.shape[1]]):
                prior[i, j] = math.log(weights.get(str((meta or {}).get(field)), default))
        return s + prior

    fn.uses_metadata = True  # type: ignore[attr-defined]
    return fn


# --------------------------------------------------------------------------- learned metrics


class _LearnedBase:
    kind = ""
    matrix_file = "matrix.npy"

    def __init__(self, matrix: np.ndarray, info: dict[str, Any] | None = None) -> None:
        m = np.asarray(matrix, dtype=np.float32)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ConfigError(f"{self.kind} metric matrix must be square [d, d]; got shape {m.shape}")
        self.matrix = m
        self.info = dict(info or {})

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[0])

    def save(self, folder: str | Path) -> Path:
        """Write ``matrix.npy`` and ``metric.json`` into ``folder`` (no pickle)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / self.matrix_file, self.matrix, allow_pickle=False)
        meta = {"kind": self.kind, "dim": self.dim, "format_version": 1, **self.info}
        (folder / "metric.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return folder

    def register(self, name: str, *, replace: bool = False) -> Metric:
        """Register this learned metric under ``name``."""
        return register_metric(name, self, replace=replace, query_transform=self.query_transform)


class BilinearMetric(_LearnedBase):
    """``score(q, c) = q^T W c``, with ``W`` fitted from relevance pairs (:func:`fit_bilinear`).

    Because ``q^T W c = (q W) . c``, this metric IS a linear query adapter
    (:class:`rag_lfm.adapters.QueryAdapter` of kind ``linear``, unnormalised) followed by the
    dot product: the adapter is its implementation, and a first-stage inner-product search with
    the transformed query ranks exactly as the metric does, so the candidate pool misses nothing.
    :meth:`as_adapter` hands the same map to anything that takes a query adapter.
    """

    kind = "bilinear"

    def __init__(self, matrix: np.ndarray, info: dict[str, Any] | None = None) -> None:
        super().__init__(matrix, info)
        from rag_lfm.adapters.query import QueryAdapter

        self.adapter = QueryAdapter("linear", {"matrix": self.matrix}, normalize=False, info=self.info)

    def __call__(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("bd,bnd->bn", self.adapter.apply(q), c)

    def query_transform(self, q: np.ndarray) -> np.ndarray:
        return self.adapter.apply(q)

    def as_adapter(self):  # -> QueryAdapter
        """This metric as a (linear, unnormalised) query adapter."""
        return self.adapter


class MahalanobisMetric(_LearnedBase):
    """``score(q, c) = -||L (q - c)||^2`` (a Mahalanobis distance with ``M = L^T L``, always PSD).

    The first stage searches with ``q @ L^T L``, which matches the cross term of the distance;
    the candidates' own norms ``||L c||^2`` are only applied in the rescoring stage.
    """

    kind = "mahalanobis"

    def __call__(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        diff = (c - q[:, None, :]) @ self.matrix.T
        return -np.einsum("bnd,bnd->bn", diff, diff)

    def query_transform(self, q: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(q, dtype=np.float32) @ (self.matrix.T @ self.matrix))


def load_learned_metric(folder: str | Path) -> BilinearMetric | MahalanobisMetric:
    """Load a metric saved by ``.save(folder)``.

    Raises:
        ConfigError: the folder lacks ``metric.json``/``matrix.npy`` or names an unknown kind.
    """
    folder = Path(folder)
    meta_path = folder / "metric.json"
    if not meta_path.exists() or not (folder / "matrix.npy").exists():
        raise ConfigError(f"learned metric folder {str(folder)!r} must hold metric.json and matrix.npy")
    meta = json.loads(meta_path.read_text())
    kinds = {"bilinear": BilinearMetric, "mahalanobis": MahalanobisMetric}
    cls = kinds.get(meta.get("kind"))
    if cls is None:
        raise ConfigError(f"{meta_path}: unknown kind {meta.get('kind')!r}; expected one of {sorted(kinds)}")
    matrix = np.load(folder / "matrix.npy", allow_pickle=False)
    info = {k: v for k, v in meta.items() if k not in ("kind", "dim", "format_version")}
    return cls(matrix, info)


def _check_pairs(queries: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(queries, dtype=np.float32)
    p = np.asarray(positives, dtype=np.float32)
    if q.ndim != 2 or p.shape != q.shape:
        raise ConfigError(
            f"relevance pairs: queries and positives must both be [n, d] with the same shape; got {q.shape} and {p.shape}"
        )
    if len(q) < 2:
        raise ConfigError(f"relevance pairs: need at least 2 pairs (in-batch negatives), got {len(q)}")
    return q, p


def _fit(
    kind: str,
    queries: np.ndarray,
    positives: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    reg: float,
    temperature: float,
    seed: int,
    corpus: np.ndarray | None,
    hard_negatives: int,
    mined_negatives: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    # One training loop for every learned map: rag_lfm.adapters.query.train_contrastive (the
    # bilinear metric's W is a linear query adapter's matrix; Mahalanobis only swaps the score).
    import torch  # fitting needs autograd; scoring stays numpy

    from rag_lfm.adapters.query import train_contrastive

    q_np, p_np = _check_pairs(queries, positives)
    n, d = q_np.shape
    # The positives are corpus rows 0..n-1 (each its own document); the corpus, when given, follows.
    extra = np.asarray(corpus, dtype=np.float32).reshape(-1, d) if corpus is not None else np.zeros((0, d), np.float32)
    cands = np.concatenate([p_np, extra])
    docs = np.arange(len(cands))
    eye = torch.eye(d)
    params = {"matrix": torch.nn.Parameter(eye.clone())}

    if kind == "bilinear":
        def score(p: dict[str, Any], qb: Any, c: Any) -> Any:
            return (qb @ p["matrix"]) @ c.T

        def transform(p: dict[str, Any], qb: Any) -> Any:
            return qb @ p["matrix"]
    else:
        def score(p: dict[str, Any], qb: Any, c: Any) -> Any:
            lq, lc = qb @ p["matrix"].T, c @ p["matrix"].T
            return -(lq.pow(2).sum(-1, keepdim=True) - 2 * lq @ lc.T + lc.pow(2).sum(-1)[None, :])

        transform = None
    fit = train_contrastive(
        score, params, q_np, cands, np.arange(n), query_docs=np.arange(n), corpus_docs=docs, transform=transform,
        reg=(lambda p: reg * (p["matrix"] - eye).pow(2).sum()) if reg > 0 else None, epochs=epochs,
        batch_size=batch_size, lr=lr, temperature=temperature, hard_negatives=mined_negatives,
        random_negatives=hard_negatives if corpus is not None else 0, seed=seed,
    )
    losses = [h["loss"] for h in fit.history]
    info = {
        "fitted_on_pairs": int(n),
        "epochs": epochs,
        "lr": lr,
        "reg": reg,
        "temperature": temperature,
        "seed": seed,
        "final_loss": round(losses[-1], 6) if losses else None,
    }
    return fit.params["matrix"], info


def fit_bilinear(
    queries: np.ndarray,
    positives: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    reg: float = 1e-2,
    temperature: float = 0.05,
    seed: int = 0,
    corpus: np.ndarray | None = None,
    hard_negatives: int = 0,
    mined_negatives: int = 0,
) -> BilinearMetric:
    """Fit ``W`` of ``q^T W c`` from relevance pairs ``(queries[i], positives[i])``.

    Contrastive (InfoNCE) loss with in-batch negatives (plus ``hard_negatives`` random rows of
    ``corpus`` per batch when given, and ``mined_negatives`` per query: the highest-scoring
    other rows), ``W`` starting at the identity (= the plain dot product) and pulled back to it
    by ``reg * ||W - I||^2`` so a few thousand pairs do not overfit a ``d x d`` matrix. The
    training loop is the query adapters' (:func:`rag_lfm.adapters.query.train_contrastive`).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0); q = rng.normal(size=(64, 8)).astype("float32")
        >>> m = fit_bilinear(q, q + 0.1, epochs=2)
        >>> m.matrix.shape
        (8, 8)
    """
    matrix, info = _fit(
        "bilinear", queries, positives, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg,
        temperature=temperature, seed=seed, corpus=corpus, hard_negatives=hard_negatives,
        mined_negatives=mined_negatives,
    )
    return BilinearMetric(matrix, info)


def fit_mahalanobis(
    queries: np.ndarray,
    positives: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 256,
    lr: float = 1e-3,
    reg: float = 1e-2,
    temperature: float = 0.05,
    seed: int = 0,
    corpus: np.ndarray | None = None,
    hard_negatives: int = 0,
) -> MahalanobisMetric:
    """Fit ``L`` of ``-||L (q - c)||^2`` from relevance pairs (same training as :func:`fit_bilinear`)."""
    matrix, info = _fit(
        "mahalanobis", queries, positives, epochs=epochs, batch_size=batch_size, lr=lr, reg=reg,
        temperature=temperature, seed=seed, corpus=corpus, hard_negatives=hard_negatives,
    )
    return MahalanobisMetric(matrix, info)
