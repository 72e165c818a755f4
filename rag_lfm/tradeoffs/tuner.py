"""The tuner: measure index families on a collection and pick the best one for a stated budget.

For each family (:mod:`rag_lfm.index.families`) whose estimated size fits the memory budget,
the tuner builds the index from the streamed collection (trained on a bounded sample, added
batch by batch), then for each of its search settings (``nprobe``, ``efSearch``, ``k_factor``)
measures on a sample of real queries:

* recall@k against exact search (flat search over the same collection, streamed),
* p50 / p99 latency of one query at a time, and queries per second in one batch,
* build time, resident bytes (bytes/vector) and on-disk bytes (e.g. a rescoring stage's vectors).

Queries are the user's (a query log, embedded) or, by default, stored vectors of chunks held
out of the collection while tuning (they are left out of every candidate and of the ground
truth, so no query finds itself). A setting *meets* the budget when its resident bytes are at
most ``max_memory``, its recall at least ``min_recall`` and (if given) its p50 at most
``max_p50_ms``; among those the tuner picks by ``objective`` (``"latency"``: fastest p50, then
smallest; ``"memory"``: smallest, then fastest; ``"recall"``: best recall, then fastest). When
none meets it, it names the closest (smallest sum of relative shortfalls) and changes nothing.

Peak memory: one candidate at a time (freed before the next), one batch of the collection,
the training sample (at most 256k vectors, :func:`rag_lfm.index.build.train_size`) and the
queries' ground truth; measured by ``benchmarks/bench_tradeoffs.py``.

Example:
    >>> from rag_lfm.tradeoffs import SyntheticClustered, tune
    >>> result = tune(SyntheticClustered(20_000, 64), max_memory="2MB", min_recall=0.9, progress=False,
    ...               families=["flat", "sq8", "ivf-pq-rescore"])                          # doctest: +SKIP
    >>> result.choice.factory                                                               # doctest: +SKIP
    'IVF512,PQ8x8,Rescore'
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError
from rag_lfm.index.build import build_backend
from rag_lfm.index.families import Family, estimate_bytes, get_family, nprobe_grid
from rag_lfm.tradeoffs.memory import parse_bytes
from rag_lfm.tradeoffs.sources import exact_topk, heldout

OBJECTIVES = ("latency", "memory", "recall")
DEFAULT_FAMILIES = (
    "flat", "flat-fp16", "sq8", "sq4", "sq4-rescore", "pq-rescore", "opq-pq-rescore", "ivf-flat", "ivf-sq8", "ivf-pq",
    "ivf-pq-rescore", "ivf-pq12-rescore", "ivf-pq16-rescore", "ivf-pq4-rescore", "ivf-pq-fs-rescore", "hnsw", "hnsw-sq8", "binary", "binary-ivf",
)
ESTIMATE_SLACK = 1.25  # build a candidate whose estimated size is at most this times the budget


@dataclass
class Trial:
    """One family at one search setting, measured."""

    family: str
    factory: str
    params: dict[str, int]
    status: str = "ok"  # "ok", "skipped: ...", "failed: ..."
    n: int = 0
    resident_bytes: int = 0
    disk_bytes: int = 0
    recall: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    qps: float = float("nan")
    build_s: float = float("nan")
    meets: bool = False

    @property
    def bytes_per_vector(self) -> float:
        return self.resident_bytes / max(1, self.n)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"bytes_per_vector": self.bytes_per_vector}

    def label(self) -> str:
        p = ",".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.family}[{p}]" if p else self.family


@dataclass
class TuneResult:
    """What the tuner measured and chose (``choice`` None: nothing met the budget; see ``closest``)."""

    trials: list[Trial]
    choice: Trial | None
    closest: Trial | None
    max_memory: int
    min_recall: float
    max_p50_ms: float | None
    objective: str
    n: int
    dim: int
    n_queries: int
    queries: str  # "held-out" or "given"
    k: int = 10
    applied: bool = False
    generation: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("trials", "choice", "closest")}
        d["trials"] = [t.to_dict() for t in self.trials]
        d["choice"] = self.choice.to_dict() if self.choice else None
        d["closest"] = self.closest.to_dict() if self.closest else None
        return d

    def summary(self) -> str:
        budget = f"<= {self.max_memory / 1e6:.1f} MB resident, recall@{self.k} >= {self.min_recall:.3f}"
        if self.max_p50_ms is not None:
            budget += f", p50 <= {self.max_p50_ms:g} ms"
        if self.choice is not None:
            c = self.choice
            msg = (f"chose {c.label()} = {c.factory!r}: {c.resident_bytes / 1e6:.1f} MB ({c.bytes_per_vector:.0f} B/vector), "
                   f"recall@{self.k} {c.recall:.3f}, p50 {c.p50_ms:.2f} ms (budget {budget})")
            if self.applied:
                msg += f"; the index was rebuilt with it (generation {self.generation})"
            return msg
        if self.closest is None:
            return f"nothing was measured (budget {budget}): " + "; ".join(self.notes or ["every family failed; see the table"])
        c = self.closest
        measured = (f"recall@{self.k} {c.recall:.3f}, p50 {c.p50_ms:.2f} ms" if c.status == "ok"
                    else "not built: estimated size only")
        return (f"nothing meets the budget ({budget}); the closest is {c.label()} = {c.factory!r}: "
                f"{c.resident_bytes / 1e6:.3f} MB, {measured}. "
                "Raise the memory budget, lower min_recall or drop max_p50_ms; the index is unchanged")

    def table(self) -> str:
        """One fixed-format row per trial (what the CLI prints)."""
        head = f"{'family[setting]':<40}{'MB':>9}{'B/vec':>8}{'disk MB':>9}{f'R@{self.k}':>7}{'p50 ms':>8}{'p99 ms':>8}{'QPS':>9}{'build s':>9}  meets"
        rows = [head]
        for t in self.trials:
            if t.status != "ok":
                rows.append(f"{t.family:<40}{t.resident_bytes / 1e6:>9.1f}{t.bytes_per_vector:>8.0f}  {t.status}")
                continue
            mark = "*" if self.choice is t else ("yes" if t.meets else "")
            rows.append(f"{t.label():<40}{t.resident_bytes / 1e6:>9.1f}{t.bytes_per_vector:>8.0f}{t.disk_bytes / 1e6:>9.1f}"
                        f"{t.recall:>7.3f}{t.p50_ms:>8.2f}{t.p99_ms:>8.2f}{t.qps:>9.0f}{t.build_s:>9.1f}  {mark}")
        return "\n".join(rows)

    def plot(self, path: str, title: str | None = None) -> str:
        """Write the memory-vs-recall and latency-vs-recall Pareto plots to ``path`` (PNG)."""
        from rag_lfm.tradeoffs.plot import pareto_plot

        return pareto_plot(self, path, title)


def _family(spec: str | Family) -> Family:
    """A registered family by name, or a raw FAISS factory string swept over what its structure has."""
    if isinstance(spec, Family):
        return spec
    try:
        return get_family(spec)
    except ConfigError:
        if "," not in spec and not re.match(r"^(IVF|HNSW|PQ|OPQ|SQ|Flat|B(Flat|IVF|HNSW)|IDMap)", spec):
            raise

    def grid(n: int, d: int, f: str = spec) -> list[dict[str, int]]:
        from rag_lfm.index.faiss_backend import split_rescore

        base, rescore = split_rescore(f)
        ivf = re.search(r"(?:^|,)B?IVF(\d+)", base)
        settings = nprobe_grid(int(ivf.group(1))) if ivf else ([{"efSearch": e} for e in (16, 64, 256)] if "HNSW" in base else [{}])
        return [{**x, "k_factor": k} for x in settings for k in (4, 10)] if rescore else settings

    return Family(spec, "a FAISS factory string", lambda n, d, f=spec: f, grid)


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    vals = []
    for a, b in zip(got, truth):
        want = set(b[b >= 0].tolist())
        if want:
            vals.append(len(want & set(a[a >= 0].tolist())) / len(want))
    return float(np.mean(vals)) if vals else float("nan")


def _measure(backend: Any, queries: np.ndarray, truth: np.ndarray, k: int, n_latency: int) -> dict[str, float]:
    for q in queries[:3]:  # warm caches and lazily built structures out of the timings
        backend.search(q[None, :], k)
    t = time.perf_counter()
    _, ids = backend.search(queries, k)
    batch_s = time.perf_counter() - t
    lat = []
    for q in queries[:n_latency]:
        t = time.perf_counter()
        backend.search(q[None, :], k)
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    return {"recall": _recall(ids, truth), "p50_ms": statistics.median(lat),
            "p99_ms": lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))], "qps": len(queries) / max(batch_s, 1e-9)}


def _trim_heap() -> None:
    """Give freed heap pages back to the OS between candidates (glibc keeps them otherwise, and the
    process would carry the largest candidate's footprint into every later one)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def _disk_bytes(backend: Any) -> int:
    store = getattr(backend, "rescore", None)
    return int(store.disk_bytes + store.resident_bytes) if store is not None else 0


def _shortfall(t: Trial, max_memory: int, min_recall: float, max_p50_ms: float | None) -> float:
    s = max(0.0, t.resident_bytes / max_memory - 1) + max(0.0, (min_recall - t.recall) / max(min_recall, 1e-9))
    if max_p50_ms is not None:
        s += max(0.0, t.p50_ms / max_p50_ms - 1)
    return s


def choose(trials: list[Trial], max_memory: int, min_recall: float, max_p50_ms: float | None, objective: str) -> tuple[Trial | None, Trial | None]:
    """(choice, closest) among measured trials; marks ``meets`` on each."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is not one of {OBJECTIVES}")
    ok = [t for t in trials if t.status == "ok" and np.isfinite(t.recall)]
    for t in ok:
        t.meets = (t.resident_bytes <= max_memory and t.recall >= min_recall and (max_p50_ms is None or t.p50_ms <= max_p50_ms))
    feasible = [t for t in ok if t.meets]
    keys = {"latency": lambda t: (t.p50_ms, t.resident_bytes), "memory": lambda t: (t.resident_bytes, t.p50_ms),
            "recall": lambda t: (-t.recall, t.p50_ms)}
    if feasible:
        return min(feasible, key=keys[objective]), None
    if ok:
        return None, min(ok, key=lambda t: (_shortfall(t, max_memory, min_recall, max_p50_ms), t.p50_ms))
    # nothing was built (every estimate over the budget): the smallest estimate is the closest
    skipped = [t for t in trials if t.status.startswith("skipped") and t.resident_bytes > 0]
    return None, (min(skipped, key=lambda t: t.resident_bytes) if skipped else None)


def tune(
    source: Any,
    *,
    max_memory: int | str,
    min_recall: float = 0.95,
    max_p50_ms: float | None = None,
    queries: np.ndarray | None = None,
    n_queries: int = 200,
    families: list[str | Family] | tuple[str, ...] | None = None,
    k: int = 10,
    objective: str = "latency",
    n_latency: int = 100,
    measure_all: bool = False,
    progress: bool = True,
    seed: int = 0,
    on_built: Any = None,
) -> TuneResult:
    """Measure index families on ``source`` (a :class:`~rag_lfm.tradeoffs.sources.VectorSource`) and choose one.

    Args:
        max_memory: resident bytes the index may take (``"200MB"``, ``"1GiB"`` or a number).
        min_recall: recall@k against exact search that the choice must reach.
        max_p50_ms: optional bound on the median latency of one query.
        queries: query vectors ``[m, d]``; None = ``n_queries`` stored vectors held out of the collection.
        families: names (or raw FAISS factory strings) to try; default :data:`DEFAULT_FAMILIES`.
        objective: among the settings that meet the budget, pick the fastest (``"latency"``),
            the smallest (``"memory"``) or the most accurate (``"recall"``).
        measure_all: also build candidates whose estimated size is far over the budget (for plots).
        on_built: ``fn(family_name, backend, trials, queries)`` called after a family's settings are
            measured, before its index is freed (the benchmark compares with FAISS there).
    """
    t_start = time.perf_counter()
    budget = parse_bytes(max_memory)
    if not 0 < min_recall <= 1:
        raise ConfigError(f"min_recall={min_recall!r} must be in (0, 1]")
    if max_p50_ms is not None and max_p50_ms <= 0:
        raise ConfigError(f"max_p50_ms={max_p50_ms!r} must be positive")
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective {objective!r} is not one of {OBJECTIVES}")
    fams = [_family(f) for f in (families or DEFAULT_FAMILIES)]
    n_all, dim = len(source), int(source.dim)
    exclude = None
    if queries is None:
        exclude, qvecs = heldout(source, n_queries, seed=seed)
        kind = "held-out"
    else:
        qvecs = np.ascontiguousarray(queries, dtype=np.float32)
        if qvecs.ndim != 2 or qvecs.shape[1] != dim or len(qvecs) == 0:
            raise ConfigError(f"queries of shape {qvecs.shape} do not match the collection's dimension {dim}; pass [m, {dim}] vectors")
        kind = "given"
    n = n_all - (len(exclude) if exclude is not None else 0)
    _, truth = exact_topk(source, qvecs, k, exclude=exclude, progress=progress)

    from tqdm.auto import tqdm

    plans = [(f, f.factory(n, dim), f.grid(n, dim)) for f in fams]
    trials: list[Trial] = []
    notes: list[str] = []
    coarse: dict[Any, np.ndarray] = {}  # IVF centroids shared by the families of one nlist
    bar = tqdm(total=sum(len(g) for _, _, g in plans), desc="tune", unit="setting", disable=not progress)
    for fam, factory, grid in plans:
        try:
            est = estimate_bytes(factory, dim, n)
        except Exception as exc:  # noqa: BLE001 - a factory FAISS cannot parse is reported, not fatal
            trials.append(Trial(fam.name, factory, {}, f"failed: {type(exc).__name__}: {str(exc).splitlines()[-1][:120]}", n))
            bar.update(len(grid))
            continue
        if est > ESTIMATE_SLACK * budget and not measure_all:
            trials.append(Trial(fam.name, factory, {}, f"skipped: estimated {est / 1e6:.1f} MB > budget {budget / 1e6:.1f} MB", n, est))
            bar.update(len(grid))
            continue
        bar.set_postfix_str(fam.name)
        done = 0
        try:
            t = time.perf_counter()
            backend = build_backend(factory, dim, lambda: source.iter_batches(), n=n_all, metric=source.metric,
                                    params=grid[0], exclude=exclude, seed=seed, use_gpu=False, coarse_cache=coarse)
            if getattr(backend, "rescore", None) is not None:
                backend.rescore.compact()  # rescoring vectors on disk in one sorted segment, as in a saved index
            build_s = time.perf_counter() - t
            resident = int(backend.memory_report()["resident"]) if hasattr(backend, "memory_report") else int(backend.memory_bytes)
            disk = _disk_bytes(backend)
            for params in grid:
                backend.set_params(**{"nprobe": None, "efSearch": None, "k_factor": None, **params})
                m = _measure(backend, qvecs, truth, k, n_latency)
                trials.append(Trial(fam.name, factory, dict(params), "ok", n, resident, disk, m["recall"], m["p50_ms"], m["p99_ms"], m["qps"], build_s))
                bar.update(1)
                done += 1
        except Exception as exc:  # noqa: BLE001 - one family failing (e.g. too few vectors to train) must not stop the sweep
            trials.append(Trial(fam.name, factory, {}, f"failed: {type(exc).__name__}: {str(exc).splitlines()[-1][:160]}", n))
            bar.update(len(grid) - done)
        else:
            if on_built is not None:  # the caller's hook: its errors are its own, not the family's
                on_built(fam.name, backend, trials[-len(grid):], qvecs)
        finally:
            backend = None
            gc.collect()
            _trim_heap()
    bar.close()
    choice, closest = choose(trials, budget, min_recall, max_p50_ms, objective)
    if not any(t.status == "ok" for t in trials):
        notes.append("no family was built: every estimate is over the budget or failed (see the table)")
    return TuneResult(trials, choice, closest, budget, float(min_recall), max_p50_ms, objective, n, dim, len(qvecs), kind, k,
                      seconds=time.perf_counter() - t_start, notes=notes)


def tune_kb(
    kb: Any,
    *,
    max_memory: int | str,
    min_recall: float = 0.95,
    max_p50_ms: float | None = None,
    queries: Any = None,
    apply: bool = True,
    plot: str | None = None,
    **options: Any,
) -> TuneResult:
    """:func:`tune` on a knowledge base's stored vectors; with ``apply``, rebuild the KB with the choice.

    ``queries``: None (held-out chunks' stored vectors), a list of query texts (a query log,
    embedded with the KB's embedder), or query vectors. The rebuild is a normal commit: a new
    generation written beside the old one and switched atomically, with the chosen factory
    (as the index spec, so later commits keep it) and search parameters in the manifest.
    """
    from rag_lfm.tradeoffs.sources import KBSource

    qvecs = None
    if queries is not None:
        if isinstance(queries, str):
            raise ConfigError("queries must be a list of query texts or an array of vectors, not one str; wrap it in a list")
        if isinstance(queries, np.ndarray):
            qvecs = queries
        else:
            texts = list(queries)
            if not texts or not all(isinstance(q, str) for q in texts):
                raise ConfigError("queries must be a non-empty list of str (a query log) or an array of query vectors")
            qvecs = kb.embedder.encode(texts, kind="query")
    source = KBSource(kb)
    result = tune(source, max_memory=max_memory, min_recall=min_recall, max_p50_ms=max_p50_ms, queries=qvecs, **options)
    if plot:
        result.plot(plot)
    if apply and result.choice is not None:
        c = result.choice
        kb._rebuild_with(lambda: build_backend(c.factory, kb.dim, lambda: source.iter_batches(), n=len(source), metric=source.metric,
                                               params=c.params, use_gpu="auto"),
                         spec=c.factory, params=dict(c.params))
        result.applied, result.generation = True, kb.generation
    return result
