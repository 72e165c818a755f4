"""Query adapters: a small trainable map on query embeddings, the embedder and the index stay frozen.

Only queries move: ``q' = f(q)`` is searched against the stored document vectors as they
are, so an adapter is trained and swapped without re-embedding the corpus. Two kinds:

- ``linear``: ``q' = q W``, ``W`` starting at the identity (``d*d`` parameters). Inner-product
  search with ``q W`` is exactly the learned bilinear metric ``q^T W c`` of
  :mod:`rag_lfm.metrics`, which is built on this class (one implementation, not two).
- ``mlp``: a residual low-rank MLP ``q' = q + gelu(q A + b) B`` with ``B`` starting at zero
  (``2*d*r + r`` parameters), so training starts from the frozen embedder's own ranking.

With ``normalize=True`` (the default when the embedder normalises its vectors) the output is
L2-normalised, so inner-product search stays cosine similarity.

Training (:func:`fit_query_adapter`) is contrastive (InfoNCE) over the frozen corpus vectors:
each query's positive is its document's best-matching chunk, the negatives are the other
positives of the batch plus hard negatives mined from the corpus (the chunks of other
documents the current model ranks highest, re-mined every ``remine_every`` epochs), with early
stopping on recall@1 of a held-out split of the pairs (split by document).

Saved as ``adapter.safetensors`` (the weights) + ``adapter.json`` (kind, shapes, the embedder
it was trained for, training record): no pickle. Inside an index directory adapters live in
``adapters/<name>/`` (see :mod:`rag_lfm.adapters.store`).

Example:
    >>> import numpy as np
    >>> a = QueryAdapter.identity("mlp", dim=4, rank=2)
    >>> q = np.eye(4, dtype=np.float32)[:2]
    >>> bool(np.allclose(a.apply(q), q))
    True
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError, EmbedderMismatchError

__all__ = ["KINDS", "QueryAdapter", "FitResult", "fit_query_adapter", "train_contrastive", "mine_hard_negatives"]

KINDS = ("linear", "mlp")
WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"
FORMAT_VERSION = 1
MAX_RANK = 4096


def _gelu(x: np.ndarray) -> np.ndarray:
    # The tanh form, as torch's gelu(approximate="tanh") used in training computes it.
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def check_rank(rank: int, dim: int) -> int:
    """``rank`` as an int in ``1..min(dim, MAX_RANK)``, or a ConfigError naming the range."""
    hi = min(int(dim), MAX_RANK)
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= int(rank) <= hi:
        raise ConfigError(f"adapter rank {rank!r} is out of range; use an int from 1 to {hi} (the embedding dimension)")
    return int(rank)


@dataclass
class QueryAdapter:
    """A map on query vectors ``[b, d] -> [b, d]`` (see the module docstring).

    Attributes:
        kind: ``"linear"`` or ``"mlp"``.
        weights: ``linear``: ``{"matrix": [d, d]}``; ``mlp``: ``{"down": [d, r], "bias": [r], "up": [r, d]}``.
        normalize: L2-normalise the output.
        embedder: what the adapter was trained for (``{"name", "dim", "normalize"}``), or None.
        info: the training record (pairs, epochs, scores, seed, time ...).
    """

    kind: str
    weights: dict[str, np.ndarray]
    normalize: bool = True
    embedder: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"query adapter kind {self.kind!r} is not supported; use one of {', '.join(KINDS)}")
        need = {"linear": ("matrix",), "mlp": ("down", "bias", "up")}[self.kind]
        missing = [k for k in need if k not in self.weights]
        if missing:
            raise ConfigError(f"{self.kind} query adapter needs weights {list(need)}; missing {missing}")
        self.weights = {k: np.ascontiguousarray(np.asarray(self.weights[k], dtype=np.float32)) for k in need}
        d = self.dim
        if self.kind == "linear":
            if self.weights["matrix"].shape != (d, d):
                raise ConfigError(f"linear query adapter matrix must be square [d, d]; got {self.weights['matrix'].shape}")
        else:
            r = self.weights["down"].shape[1] if self.weights["down"].ndim == 2 else -1
            if self.weights["down"].shape != (d, r) or self.weights["up"].shape != (r, d) or self.weights["bias"].shape != (r,):
                raise ConfigError(
                    f"mlp query adapter weights must be down [d, r], bias [r], up [r, d]; got "
                    f"{self.weights['down'].shape}, {self.weights['bias'].shape}, {self.weights['up'].shape}"
                )

    # -- construction --------------------------------------------------------------------
    @classmethod
    def identity(cls, kind: str, dim: int, *, rank: int = 32, normalize: bool = True, seed: int = 0,
                 embedder: dict[str, Any] | None = None) -> QueryAdapter:
        """An adapter that starts as the identity map (``mlp``: random ``down``, zero ``up``)."""
        if kind not in KINDS:
            raise ConfigError(f"query adapter kind {kind!r} is not supported; use one of {', '.join(KINDS)}")
        if int(dim) < 1:
            raise ConfigError(f"adapter dim must be >= 1, got {dim!r}")
        if kind == "linear":
            return cls(kind, {"matrix": np.eye(dim, dtype=np.float32)}, normalize, embedder)
        rank = check_rank(rank, dim)
        rng = np.random.default_rng(seed)
        down = rng.normal(0.0, 1.0 / math.sqrt(dim), size=(dim, rank)).astype(np.float32)
        return cls(kind, {"down": down, "bias": np.zeros(rank, np.float32), "up": np.zeros((rank, dim), np.float32)},
                   normalize, embedder)

    @property
    def dim(self) -> int:
        w = self.weights["matrix"] if self.kind == "linear" else self.weights["down"]
        return int(w.shape[0])

    @property
    def rank(self) -> int | None:
        return None if self.kind == "linear" else int(self.weights["down"].shape[1])

    @property
    def n_params(self) -> int:
        """Trainable parameters."""
        return int(sum(w.size for w in self.weights.values()))

    # -- use -----------------------------------------------------------------------------
    def apply(self, queries: np.ndarray) -> np.ndarray:
        """The adapted query vectors (float32 ``[b, d]``).

        Raises:
            ConfigError: the vectors' dimension is not the adapter's.
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ConfigError(f"query vectors of shape {q.shape} do not fit a query adapter of dimension {self.dim}")
        w = self.weights
        if self.kind == "linear":
            out = q @ w["matrix"]
        else:
            out = q + _gelu(q @ w["down"] + w["bias"]) @ w["up"]
        out = _l2n(out) if self.normalize else out
        return np.ascontiguousarray(out, dtype=np.float32)

    __call__ = apply

    def check_embedder(self, embedder: dict[str, Any], *, where: str = "this index") -> None:
        """Refuse an embedder other than the one this adapter was trained for.

        Raises:
            EmbedderMismatchError: names both embedders and the fix.
        """
        mine = self.embedder
        if mine is None:
            if int(embedder.get("dim", self.dim)) != self.dim:
                raise EmbedderMismatchError(
                    f"query adapter of dimension {self.dim} cannot be used with {where}, whose embedder "
                    f"{embedder.get('name')!r} has dimension {embedder.get('dim')}; train one for it "
                    "(`rag-lfm tune query-adapter INDEX`)"
                )
            return
        same = (str(mine.get("name")) == str(embedder.get("name")) and int(mine.get("dim", -1)) == int(embedder.get("dim", -2))
                and bool(mine.get("normalize", True)) == bool(embedder.get("normalize", True)))
        if not same:
            raise EmbedderMismatchError(
                f"query adapter was trained for embedder {mine.get('name')!r} (dim {mine.get('dim')}, normalize="
                f"{mine.get('normalize')}), but {where} uses {embedder.get('name')!r} (dim {embedder.get('dim')}, "
                f"normalize={embedder.get('normalize')}); an adapter only fits the embedder it was trained on: "
                "train one for this index (`rag-lfm tune query-adapter INDEX`)"
            )

    # -- files ---------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {"format": "rag-lfm-query-adapter", "format_version": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                "rank": self.rank, "normalize": self.normalize, "embedder": self.embedder, "n_params": self.n_params,
                "info": self.info}

    def save(self, folder: str | Path) -> Path:
        """Write ``adapter.safetensors`` and ``adapter.json`` into ``folder`` (atomic writes, no pickle)."""
        from safetensors.numpy import save as st_save

        from rag_lfm.atomic import write_bytes, write_json

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_bytes(folder / WEIGHTS_FILE, st_save(dict(self.weights), metadata={"kind": self.kind}))
        write_json(folder / META_FILE, self.meta())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> QueryAdapter:
        """Read an adapter written by :meth:`save`.

        Raises:
            ConfigError: the folder lacks the files or they are not a query adapter.
        """
        folder = Path(folder)
        meta_path, w_path = folder / META_FILE, folder / WEIGHTS_FILE
        if not meta_path.is_file() or not w_path.is_file():
            raise ConfigError(f"query adapter folder {str(folder)!r} must hold {META_FILE} and {WEIGHTS_FILE} "
                              "(written by QueryAdapter.save or `rag-lfm tune query-adapter`)")
        return cls.from_bytes(meta_path.read_bytes(), w_path.read_bytes(), where=str(folder))

    @classmethod
    def from_bytes(cls, meta_bytes: bytes, weight_bytes: bytes, *, where: str = "adapter") -> QueryAdapter:
        from safetensors.numpy import load as st_load

        try:
            meta = json.loads(meta_bytes)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: {META_FILE} is not valid JSON ({exc.msg})") from None
        if meta.get("format") != "rag-lfm-query-adapter":
            raise ConfigError(f"{where}: {META_FILE} is not a rag-lfm query adapter (format {meta.get('format')!r})")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ConfigError(f"{where}: query adapter format version {meta.get('format_version')} is newer than this "
                              f"rag-lfm reads ({FORMAT_VERSION}); upgrade rag-lfm")
        weights = st_load(weight_bytes)
        return cls(meta["kind"], weights, bool(meta.get("normalize", True)), meta.get("embedder"), dict(meta.get("info") or {}))

    # -- training ------------------------------------------------------------------------
    def torch_params(self) -> dict[str, Any]:
        """The weights as torch Parameters (a copy), for training."""
        import torch

        return {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in self.weights.items()}

    def torch_apply(self, params: dict[str, Any], q: Any) -> Any:
        """:meth:`apply` in torch, differentiable in ``params``."""
        import torch

        if self.kind == "linear":
            out = q @ params["matrix"]
        else:
            out = q + torch.nn.functional.gelu(q @ params["down"] + params["bias"], approximate="tanh") @ params["up"]
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def with_params(self, params: dict[str, Any], info: dict[str, Any] | None = None) -> QueryAdapter:
        weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in params.items()}
        return QueryAdapter(self.kind, weights, self.normalize, self.embedder, dict(info if info is not None else self.info))


# --------------------------------------------------------------------------- training


def mine_hard_negatives(
    queries: np.ndarray, corpus: np.ndarray, query_docs: np.ndarray, corpus_docs: np.ndarray, n: int,
    *, block: int = 2048, skip: int = 0,
) -> np.ndarray:
    """Per query, the ``n`` corpus rows of OTHER documents that score highest (``[q, n]`` int64).

    ``skip`` leaves out the top ``skip`` of them (a document ranked above the positive may be a
    second relevant one that the pairs do not name; skipping a few is the usual guard).
    """
    out = np.zeros((len(queries), n), dtype=np.int64)
    take = n + skip
    for s in range(0, len(queries), block):
        sc = queries[s : s + block] @ corpus.T
        sc[corpus_docs[None, :] == query_docs[s : s + block, None]] = -np.inf
        k = min(take + 1, sc.shape[1] - 1)
        top = np.argpartition(-sc, k, axis=1)[:, :take]
        order = np.argsort(-np.take_along_axis(sc, top, 1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, 1)[:, skip:take]
        out[s : s + block] = top[:, :n] if top.shape[1] >= n else np.pad(top, ((0, 0), (0, n - top.shape[1])), mode="edge")
    return out


@dataclass
class FitResult:
    """What training returns: the best parameters (numpy) and the per-epoch history."""

    params: dict[str, np.ndarray]
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float


def train_contrastive(
    score: Callable[[dict[str, Any], Any, Any], Any],
    params: dict[str, Any],
    queries: np.ndarray,
    corpus: np.ndarray,
    positive_rows: np.ndarray,
    *,
    query_docs: np.ndarray,
    corpus_docs: np.ndarray,
    transform: Callable[[dict[str, Any], Any], Any] | None = None,
    reg: Callable[[dict[str, Any]], Any] | None = None,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.05,
    hard_negatives: int = 8,
    hard_skip: int = 0,
    remine_every: int = 0,
    random_negatives: int = 0,
    patience: int = 3,
    seed: int = 0,
    progress: bool = False,
    desc: str = "train",
) -> FitResult:
    """The one contrastive training loop of every learned query map and metric.

    Args:
        score: ``score(params, q[B, d], cands[C, d]) -> [B, C]`` (differentiable; higher is better).
        params: torch Parameters to train (updated in place; the best epoch's are returned).
        queries / corpus: float32 vectors; ``positive_rows[i]`` is the corpus row of query i's positive.
        query_docs / corpus_docs: document labels (ints) of each query and corpus row: a row of the
            query's own document is never its negative.
        transform: ``transform(params, q)`` -> the query that ranks the corpus by inner product (for
            mining and validation; None = the raw query, e.g. a metric with no such form).
        reg: an extra penalty on the parameters (e.g. ``||W - I||^2``).
        valid: ``(queries, doc labels)`` held out (by document): recall@1 over the whole corpus
            after each epoch; training keeps the best epoch and stops after ``patience`` epochs
            without a gain. None: train every epoch, keep the last.
        hard_negatives: mined negatives per query (0: in-batch negatives only), ``hard_skip``:
            leave out that many top-ranked ones; ``remine_every``: re-mine with the current
            parameters every N epochs (0: mine once, with the starting parameters).
        random_negatives: corpus rows drawn at random per batch, shared by its queries.
    """
    import torch

    t0 = time.perf_counter()
    n = len(queries)
    if n < 2:
        raise ConfigError(f"training needs at least 2 (query, document) pairs (in-batch negatives), got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    c_np = np.ascontiguousarray(corpus, dtype=np.float32)
    c_all = torch.from_numpy(c_np)
    pos = torch.from_numpy(np.asarray(positive_rows, dtype=np.int64))
    qdoc = torch.from_numpy(np.asarray(query_docs, dtype=np.int64))
    cdoc = torch.from_numpy(np.asarray(corpus_docs, dtype=np.int64))
    opt = torch.optim.Adam(list(params.values()), lr=lr)

    def search_q(q: np.ndarray) -> np.ndarray:
        if transform is None:
            return q
        with torch.no_grad():
            return transform(params, torch.from_numpy(np.ascontiguousarray(q, dtype=np.float32))).numpy()

    def mine() -> torch.Tensor | None:
        if hard_negatives <= 0:
            return None
        return torch.from_numpy(mine_hard_negatives(search_q(queries), c_np, np.asarray(query_docs), np.asarray(corpus_docs),
                                                    hard_negatives, skip=hard_skip))

    def r_at_1() -> float:
        vq, vdoc = valid  # type: ignore[misc]
        with torch.no_grad():
            if transform is not None:
                top = np.argmax(search_q(vq) @ c_np.T, axis=1)
            else:
                hits = []
                for s in range(0, len(vq), 512):
                    sc = score(params, torch.from_numpy(vq[s : s + 512]), c_all)
                    hits.append(sc.argmax(1).numpy())
                top = np.concatenate(hits)
        return float(np.mean(np.asarray(corpus_docs)[top] == np.asarray(vdoc)))

    best = {k: v.detach().clone() for k, v in params.items()}
    history: list[dict[str, float]] = []
    best_score, best_epoch, stale = (r_at_1() if valid is not None else -1.0), 0, 0
    if valid is not None:
        history.append({"epoch": 0, "loss": float("nan"), "valid_r1": best_score})
    hard = mine()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, desc=desc, unit="epoch")
    for epoch in range(1, epochs + 1):
        if remine_every and epoch > 1 and (epoch - 1) % remine_every == 0:
            hard = mine()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if len(idx) < 2:
                continue
            qb, pb = q_all[idx], pos[idx]
            cols = pb if hard is None else torch.cat([pb, hard[idx].reshape(-1)])
            if random_negatives > 0:
                cols = torch.cat([cols, torch.randint(0, len(c_np), (random_negatives,), generator=gen)])
            logits = score(params, qb, c_all[cols]) / temperature
            # A column of the query's own document other than its positive is no negative.
            same = qdoc[idx][:, None] == cdoc[cols][None, :]
            same[torch.arange(len(idx)), torch.arange(len(idx))] = False
            logits = logits.masked_fill(same, float("-inf"))
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))
            if reg is not None:
                loss = loss + reg(params)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        row = {"epoch": epoch, "loss": total / n}
        if valid is not None:
            row["valid_r1"] = r_at_1()
        history.append(row)
        if bar is not None:
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
            bar.update(1)
        if valid is None:
            best, best_epoch = {k: v.detach().clone() for k, v in params.items()}, epoch
            continue
        if row["valid_r1"] > best_score:
            best_score, best_epoch, stale = row["valid_r1"], epoch, 0
            best = {k: v.detach().clone() for k, v in params.items()}
        else:
            stale += 1
            if stale >= patience:
                break
    if bar is not None:
        bar.close()
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(best[k])
    return FitResult({k: v.numpy().astype(np.float32) for k, v in best.items()}, history, best_epoch,
                     time.perf_counter() - t0)


def fit_query_adapter(
    queries: np.ndarray,
    corpus: np.ndarray,
    positive_rows: np.ndarray,
    *,
    query_docs: np.ndarray | None = None,
    corpus_docs: np.ndarray | None = None,
    kind: str = "mlp",
    rank: int = 64,
    normalize: bool = True,
    embedder: dict[str, Any] | None = None,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    reg: float = 1e-3,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    temperature: float = 0.05,
    hard_negatives: int = 8,
    hard_skip: int = 0,
    remine_every: int = 0,
    patience: int = 3,
    seed: int = 0,
    progress: bool = False,
) -> QueryAdapter:
    """Train a :class:`QueryAdapter` from (query vector, positive corpus row) pairs.

    ``query_docs`` / ``corpus_docs`` label rows by document (default: every corpus row its own
    document, query ``i`` the document of its positive row). ``reg`` pulls the map towards the
    identity (``||W - I||^2`` for linear, ``||up||^2`` for mlp). See :func:`train_contrastive`
    for the rest.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0); corpus = rng.normal(size=(40, 8)).astype("float32")
        >>> rows = np.arange(40); q = corpus + 0.3 * rng.normal(size=(40, 8)).astype("float32")
        >>> a = fit_query_adapter(q, corpus, rows, kind="linear", epochs=2, normalize=False)
        >>> a.apply(q).shape
        (40, 8)
    """
    import torch

    q = np.ascontiguousarray(queries, dtype=np.float32)
    c = np.ascontiguousarray(corpus, dtype=np.float32)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ConfigError(f"queries [n, d] and corpus [N, d] must share d; got {q.shape} and {c.shape}")
    rows = np.asarray(positive_rows, dtype=np.int64)
    if rows.shape != (len(q),) or (len(rows) and (rows.min() < 0 or rows.max() >= len(c))):
        raise ConfigError(f"positive_rows must be one corpus row (0..{len(c) - 1}) per query; got shape {rows.shape}")
    cdocs = np.arange(len(c)) if corpus_docs is None else np.asarray(corpus_docs, dtype=np.int64)
    qdocs = cdocs[rows] if query_docs is None else np.asarray(query_docs, dtype=np.int64)
    start = QueryAdapter.identity(kind, q.shape[1], rank=rank, normalize=normalize, seed=seed, embedder=embedder)
    params = start.torch_params()
    eye = torch.eye(q.shape[1])

    def score(p: dict[str, Any], qb: Any, cands: Any) -> Any:
        return start.torch_apply(p, qb) @ cands.T

    def penalty(p: dict[str, Any]) -> Any:
        return reg * ((p["matrix"] - eye).pow(2).sum() if kind == "linear" else p["up"].pow(2).sum())

    fit = train_contrastive(
        score, params, q, c, rows, query_docs=qdocs, corpus_docs=cdocs, transform=start.torch_apply,
        reg=penalty if reg > 0 else None, valid=valid, epochs=epochs, batch_size=batch_size, lr=lr,
        temperature=temperature, hard_negatives=min(hard_negatives, max(len(c) - 2, 0)), hard_skip=hard_skip,
        remine_every=remine_every, patience=patience, seed=seed, progress=progress, desc=f"query adapter ({kind})",
    )
    info = {
        "pairs": int(len(q)), "valid_pairs": int(len(valid[0])) if valid is not None else 0, "epochs_run": len(
            [h for h in fit.history if h["epoch"] > 0]), "best_epoch": fit.best_epoch, "lr": lr, "reg": reg,
        "temperature": temperature, "batch_size": batch_size, "hard_negatives": hard_negatives, "hard_skip": hard_skip,
        "remine_every": remine_every, "seed": seed, "seconds": round(fit.seconds, 3),
        "history": [{k: (round(v, 5) if isinstance(v, float) and math.isfinite(v) else v) for k, v in h.items()}
                    for h in fit.history],
    }
    if valid is not None:
        info["valid_r1_before"] = fit.history[0]["valid_r1"]
        info["valid_r1_best"] = max(h["valid_r1"] for h in fit.history)
    return QueryAdapter(kind, fit.params, normalize, embedder, info)


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ConfigError(f"query adapter kind {kind!r} is not supported; use one of {', '.join(KINDS)}")
    return kind


def split_by_document(docs: Sequence[str], fraction: float, *, seed: int = 0) -> np.ndarray:
    """A boolean mask: True for the rows whose document falls in the held-out ``fraction`` (by a hash of the document)."""
    import hashlib

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must be between 0 and 1, got {fraction!r}")
    salt = str(seed).encode()[:16]

    def bucket(d: str) -> float:
        h = hashlib.blake2b(d.encode("utf-8", "surrogatepass"), digest_size=8, salt=salt).digest()
        return int.from_bytes(h, "big") / 2**64

    return np.array([bucket(d) < fraction for d in docs], dtype=bool)
