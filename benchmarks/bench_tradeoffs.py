"""Memory vs recall vs latency of the index families, our wrapper vs FAISS called directly, and the tuner's choices.

Collections:
  (a) the demo index's MiniLM vectors (``--kb``, default ``indexes/wiki-vital``; read-only: its
      stored vectors are read from the doc store file opened ``mode=ro&immutable=1``), skipped
      when the index does not exist;
  (b) synthetic 384-d vectors with the structure of sentence embeddings (a Gaussian mixture of
      1,000 clusters with a decaying spectrum, unit-normalised, fixed seed:
      :class:`rag_lfm.tradeoffs.SyntheticClustered`), generated batch by batch.

Queries: (a) stored vectors of chunks held out of the collection; (b) fresh draws from the same
mixture. Ground truth: exact flat search over the collection, streamed (faiss.knn per batch,
merged). For each family and search setting (the tuner's sweep, every family built):
bytes/vector resident, on-disk MB (the rescoring stage's vectors), recall@10, p50 / p99 ms of
one query, QPS of one batch of all queries, build s. Then

* our wrapper vs the same FAISS index called directly (``index.search``, same parameters),
  batched QPS and one-query p50 (target: >= 0.95x QPS); for families with our rescoring stage
  the FAISS side searches the codes only, so the ratio includes the rescoring's cost;
* the targets on (b): >= 8x smaller than fp32 Flat at recall@10 >= 0.95 and >= 32x smaller
  at >= 0.90, each with a one-query p50 no slower than exact search (Flat);
* the tuner's choice for three budgets (Flat/8 at 0.95, Flat/32 at 0.90, 200 MB at 0.95; the
  first two also bounded by Flat's p50);
* the tuner's own peak memory on (b) under a 200 MB budget, in a fresh subprocess (VmHWM and
  tracemalloc peak), against budget + bounded buffers.

Sizes: S = 100,000 vectors (a few minutes on 2 cores), M = 300,000, L = 1,000,000 (the issue's
figure; HNSW families are left out at L unless ``--hnsw``: their build takes tens of minutes).
Timings need a quiet machine; recall and bytes do not depend on load.

    python benchmarks/bench_tradeoffs.py --size S
    python benchmarks/bench_tradeoffs.py --size L --json --out benchmarks/out/tradeoffs-L.json --plot benchmarks/tradeoffs-pareto.png
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SIZES = {"S": {"n": 100_000, "queries": 200, "latency": 100}, "M": {"n": 300_000, "queries": 500, "latency": 150},
         "L": {"n": 1_000_000, "queries": 1000, "latency": 200}}


def kb_vectors(path: Path) -> Any:
    """An ArraySource over a knowledge base's stored vectors, read without writing anything."""
    from rag_lfm.tradeoffs import ArraySource

    manifest = json.loads((path / "manifest.json").read_text())
    if manifest["docstore"]["url"]:
        raise SystemExit(f"{path} keeps its doc store in {manifest['docstore']['url']!r}; this benchmark reads SQLite files only")
    dim = int(manifest["embedder"]["dim"])
    db, wal = path / "docstore.sqlite", path / "docstore.sqlite-wal"
    if wal.exists() and wal.stat().st_size > 0:
        # commits still in the write-ahead log: read a copy (immutable=1 would not see them)
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="bench-tradeoffs-"))
        shutil.copy(db, tmp / db.name)
        shutil.copy(wal, tmp / wal.name)
        db = tmp / db.name
    con = sqlite3.connect(f"file:{db}?mode=ro&immutable=1", uri=True) if db.parent == path else sqlite3.connect(db)
    rows = con.execute(f"SELECT id, vector FROM {manifest['docstore']['prefix']}chunks ORDER BY id").fetchall()
    con.close()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    vecs = np.stack([np.frombuffer(r[1], dtype=np.float32, count=dim) for r in rows])
    return ArraySource(vecs, ids, metric=manifest["metric"])


def wrapper_vs_faiss(be: Any, family: str, params: dict[str, int], queries: np.ndarray, n_latency: int) -> dict[str, Any]:
    """Batched QPS and one-query p50 of backend.search vs the same FAISS index's own search, same parameters."""
    be.set_params(**{"nprobe": None, "efSearch": None, "k_factor": None, **params})
    q = np.ascontiguousarray(queries, dtype=np.float32)
    raw_q = be._encode_queries(q)
    depth = 10 * be.k_factor

    def ours(x: np.ndarray) -> Any:
        return be.search(x, 10)

    def direct(x: np.ndarray) -> Any:
        return be.index.search(x, depth)

    side = "same index"
    if be.rescore is not None:
        side = "codes only (no rescoring)"
        sequential = not be._binary and int(be.index.ntotal) == be.rescore.ntotal and all(
            np.array_equal(i, np.arange(a, a + len(i))) for a, (i, _) in zip(range(0, 1 << 62, 1 << 16), be.rescore.iter_batches(1 << 16)))
        if sequential:
            # FAISS' own refine stage as the peer: IndexRefineFlat over the same codes index, float32 vectors in RAM
            # (it looks candidates up by label, so it needs ids 0..n-1: the synthetic collection has them).
            import faiss

            xb = np.ascontiguousarray(np.concatenate([v for _, v in be.rescore.iter_batches(1 << 16)]), dtype=np.float32)
            refine = faiss.IndexRefineFlat(be.index, faiss.swig_ptr(xb))  # copies xb into its flat refine index
            del xb
            refine.k_factor = float(be.k_factor)

            def direct(x: np.ndarray) -> Any:  # noqa: F811 - the peer for a rescoring family
                return refine.search(x, 10)

            raw_q, side = q, "faiss IndexRefineFlat (same codes, fp32 in RAM)"

    out: dict[str, Any] = {"family": family, "params": params, "faiss_side": side}
    for _ in range(2):  # alternate, so a background hiccup hits both alike; keep the better run of each
        for name, fn, qq in (("ours", ours, q), ("faiss", direct, raw_q)):
            fn(qq[:3])
            t = time.perf_counter()
            fn(qq)
            qps = len(qq) / (time.perf_counter() - t)
            lat = []
            for row in qq[:n_latency]:
                t = time.perf_counter()
                fn(row[None, :])
                lat.append((time.perf_counter() - t) * 1000)
            out[f"{name}_qps"] = max(out.get(f"{name}_qps", 0.0), qps)
            out[f"{name}_p50_ms"] = min(out.get(f"{name}_p50_ms", float("inf")), float(np.median(lat)))
    out["qps_ratio"] = out["ours_qps"] / out["faiss_qps"]
    out["p50_ratio"] = out["faiss_p50_ms"] / out["ours_p50_ms"]
    return out


def targets(trials: list[Any], flat: Any) -> dict[str, Any]:
    """The issue's targets on (b): the smallest setting at each recall bar, no slower than Flat on one query."""
    out = {}
    for name, shrink, bar in (("8x_at_0.95", 8, 0.95), ("32x_at_0.90", 32, 0.90)):
        ok = [t for t in trials if t.status == "ok" and t.recall >= bar and t.p50_ms <= flat.p50_ms]
        best = min(ok, key=lambda t: t.resident_bytes) if ok else None
        out[name] = {"met": bool(best and best.resident_bytes * shrink <= flat.resident_bytes),
                     "best": best.to_dict() if best else None,
                     "shrink": flat.resident_bytes / best.resident_bytes if best else None}
    return out


def budgets(result: Any, flat: Any) -> list[dict[str, Any]]:
    from rag_lfm.tradeoffs import choose

    rows = []
    for label, mem, rec, p50 in (("Flat/8, recall>=0.95, p50<=Flat", flat.resident_bytes / 8, 0.95, flat.p50_ms),
                                 ("Flat/32, recall>=0.90, p50<=Flat", flat.resident_bytes / 32, 0.90, flat.p50_ms),
                                 ("200 MB, recall>=0.95", 200e6, 0.95, None)):
        choice, closest = choose(result.trials, int(mem), rec, p50, "latency")
        pick = choice or closest
        rows.append({"budget": label, "max_memory": int(mem), "min_recall": rec, "max_p50_ms": p50, "met": choice is not None,
                     "choice": pick.label() if pick else None, "factory": pick.factory if pick else None,
                     "resident_mb": pick.resident_bytes / 1e6 if pick else None, "recall": pick.recall if pick else None,
                     "p50_ms": pick.p50_ms if pick else None})
    return rows


def peak_child(n: int, budget: str, n_queries: int, families: list[str] | None = None) -> None:
    """Run the tuner alone on the synthetic collection and print its memory high-water marks (JSON).

    Two measures: VmHWM (resident pages of every kind, including the file-backed pages of the
    memory-mapped rescoring vectors, which the kernel drops under pressure) and the peak of
    RssAnon (the process' own heap and anonymous memory), sampled every 5 ms by a thread.
    """
    import threading
    import tracemalloc

    from rag_lfm.tradeoffs import SyntheticClustered, tune

    def vm(key: str) -> int:  # VmHWM, not ru_maxrss: ru_maxrss keeps the parent's high-water mark across exec
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
        return 0

    src = SyntheticClustered(n, 384, seed=0)
    queries = src.queries(n_queries)
    base, anon_base = vm("VmHWM"), vm("RssAnon")
    anon_peak = [anon_base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.005):
            anon_peak[0] = max(anon_peak[0], vm("RssAnon"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    tracemalloc.start()
    t = time.perf_counter()
    res = tune(src, max_memory=budget, min_recall=0.95, queries=queries, families=families, progress=False)
    secs = time.perf_counter() - t
    stop.set()
    sampler.join()
    traced = tracemalloc.get_traced_memory()[1]
    hwm = vm("VmHWM")
    built = [x for x in res.trials if x.status == "ok"]
    print(json.dumps({"budget": res.max_memory, "rss_before": base, "rss_peak": hwm, "rss_growth": hwm - base,
                      "anon_growth": anon_peak[0] - anon_base, "tracemalloc_peak": traced,
                      "largest_candidate": max((x.resident_bytes for x in built), default=0),
                      "choice": res.choice.factory if res.choice else None, "built": len(built), "seconds": secs}))


def run_collection(label: str, source: Any, queries: np.ndarray | None, args: argparse.Namespace, size: dict[str, Any]) -> dict[str, Any]:
    from rag_lfm.tradeoffs import DEFAULT_FAMILIES, tune

    fams = args.families.split(",") if args.families else [f for f in DEFAULT_FAMILIES if args.hnsw or args.size != "L" or not f.startswith("hnsw")]
    if "flat" not in fams:
        fams = ["flat"] + fams  # the baseline every ratio refers to
    print(f"\n[{label}] {len(source):,} x {source.dim}, {size['queries']} {'given' if queries is not None else 'held-out'} queries, "
          f"families: {', '.join(fams)}", flush=True)
    wrapper_rows: list[dict[str, Any]] = []
    wanted = set(args.wrapper_families.split(","))

    def compare(name: str, backend: Any, trials: list[Any], qvecs: np.ndarray) -> None:
        # at the family's most accurate setting, before the tuner frees the index
        if name in wanted and trials and all(x.status == "ok" for x in trials):
            best = max(trials, key=lambda x: (round(x.recall, 3), -x.p50_ms))
            wrapper_rows.append(wrapper_vs_faiss(backend, name, best.params, qvecs, size["latency"]))

    t = time.perf_counter()
    res = tune(source, max_memory="1TB", min_recall=0.95, queries=queries, n_queries=size["queries"], families=fams,
               n_latency=size["latency"], measure_all=True, progress=not args.json, on_built=compare)
    print(res.table())
    print(f"({time.perf_counter() - t:.0f} s)")
    flat = next(x for x in res.trials if x.family == "flat" and x.status == "ok")
    out: dict[str, Any] = {"n": res.n, "dim": res.dim, "queries": res.n_queries, "query_kind": res.queries,
                           "trials": [x.to_dict() for x in res.trials], "flat": flat.to_dict()}
    out["budgets"] = budgets(res, flat)
    print("\ntuner's choice per budget:")
    for b in out["budgets"]:
        print(f"  {b['budget']:<36} {'meets' if b['met'] else 'CLOSEST':<8} {b['choice']}  ({b['factory']}) "
              f"{b['resident_mb']:.1f} MB, recall {b['recall']:.3f}, p50 {b['p50_ms']:.2f} ms")
    out["targets"] = targets(res.trials, flat)
    for name, tgt in out["targets"].items():
        best = tgt["best"]
        desc = (f"{best['family']} {best['params']}: {tgt['shrink']:.1f}x smaller, recall {best['recall']:.3f}, p50 {best['p50_ms']:.2f} ms "
                f"(Flat {flat.p50_ms:.2f} ms)") if best else "no setting reaches the recall no slower than Flat"
        print(f"  target {name:<12} {'MET' if tgt['met'] else 'not met'}: {desc}")
    if args.plot:
        path = args.plot.replace(".png", f"-{label}.png")
        what = "the demo index's vectors" if label == "a" else "synthetic clustered vectors"
        res.plot(path, title=f"({label}) {what}: {res.n:,} x {res.dim}, {res.n_queries} {res.queries} queries, recall@10 vs exact; "
                             "resident bytes (left) and one-query latency (right)")
        out["plot"] = path
        print(f"  Pareto plots: {path}")
    rows = wrapper_rows
    out["wrapper_vs_faiss"] = rows
    print("\nour wrapper vs the same FAISS index called directly (batched QPS; one-query p50):")
    print(f"  {'family':<20}{'params':<28}{'ours QPS':>10}{'faiss QPS':>11}{'ratio':>7}{'ours p50':>10}{'faiss p50':>11}{'ratio':>7}  faiss side")
    for r in rows:
        print(f"  {r['family']:<20}{json.dumps(r['params']):<28}{r['ours_qps']:>10.0f}{r['faiss_qps']:>11.0f}{r['qps_ratio']:>7.2f}"
              f"{r['ours_p50_ms']:>10.3f}{r['faiss_p50_ms']:>11.3f}{r['p50_ratio']:>7.2f}  {r['faiss_side']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="S")
    ap.add_argument("--kb", default=str(HERE.parent / "indexes" / "wiki-vital"), help="(a): a knowledge base whose stored vectors to measure")
    ap.add_argument("--parts", default="ab", help="a: the KB's vectors, b: synthetic, p: the tuner's peak memory")
    ap.add_argument("--families", default=None, help="comma-separated family names (default: all; HNSW left out at L)")
    ap.add_argument("--hnsw", action="store_true", help="include the HNSW families at size L")
    ap.add_argument("--wrapper-families", default="flat,sq8,ivf-flat,ivf-sq8,ivf-pq,hnsw,ivf-pq-rescore,binary")
    ap.add_argument("--threads", type=int, default=1, help="FAISS threads (1: comparable latencies)")
    ap.add_argument("--peak-budget", default="200MB")
    ap.add_argument("--plot", default=None, help="write Pareto plots (PNG) to this path, suffixed per collection")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    ap.add_argument("--n", type=int, default=None, help="override the synthetic collection's size (code-path checks)")
    ap.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    size = dict(SIZES[args.size])
    if args.n:
        size.update(n=args.n, queries=min(size["queries"], max(10, args.n // 50)))
    import faiss

    faiss.omp_set_num_threads(args.threads)
    if args.peak_child:
        peak_child(size["n"], args.peak_budget, min(size["queries"], 200), args.families.split(",") if args.families else None)
        return
    print(f"args: {vars(args)} size: {size}", flush=True)
    from rag_lfm.tradeoffs import SyntheticClustered

    results: dict[str, Any] = {"args": vars(args), "size": size, "faiss": faiss.__version__}
    if "a" in args.parts:
        kb = Path(args.kb)
        if (kb / "manifest.json").exists():
            results["a"] = run_collection("a", kb_vectors(kb), None, args, {**size, "queries": min(size["queries"], 1000)})
        else:
            results["a"] = {"skipped": f"no index at {kb} (build it with `make demo`)"}
            print(f"\n[a] skipped: no index at {kb}")
    if "b" in args.parts:
        src = SyntheticClustered(size["n"], 384, seed=0)
        results["b"] = run_collection("b", src, src.queries(size["queries"]), args, size)
    if "p" in args.parts:
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        out = subprocess.run([sys.executable, __file__, "--peak-child", "--size", args.size, "--peak-budget", args.peak_budget,
                              "--threads", str(args.threads)] + (["--n", str(args.n)] if args.n else [])
                             + (["--families", args.families] if args.families else []),
                             capture_output=True, text=True, env=env)
        if out.returncode != 0:
            results["peak"] = {"error": out.stderr[-1500:]}
        else:
            peak = json.loads(out.stdout.strip().splitlines()[-1])
            results["peak"] = peak
            print(f"\n[p] tuner under a {peak['budget'] / 1e6:.0f} MB budget on {size['n']:,} x 384: heap (RssAnon) grew "
                  f"{peak['anon_growth'] / 1e6:.0f} MB at the peak; all resident pages incl. mapped files (VmHWM) "
                  f"{peak['rss_growth'] / 1e6:.0f} MB; numpy/Python peak {peak['tracemalloc_peak'] / 1e6:.0f} MB; largest candidate "
                  f"{peak['largest_candidate'] / 1e6:.0f} MB; {peak['built']} settings measured, chose {peak['choice']} in {peak['seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
