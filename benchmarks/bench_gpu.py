"""GPU measurements in one run, each figure beside its peer: search, embedding + ingest, reader batching.

a. search: ``TorchExactBackend`` (fp16 and int8 storage; its numpy-in, numpy-out API) vs plain torch
   ``topk(q @ db.T)`` on the same device-resident vectors (8M x 384 random unit vectors, fixed seed);
   1 query (as a share of the measured copy bandwidth) and 256-query batches (with a sweep of the
   tile size and the two-level top-k), median latency; recall@10 against exact fp32 search.
b. embedding: a randomly initialised BERT with all-MiniLM-L6-v2's exact config and tokenizer
   (mean pooling + normalize, as the real model) on the wiki-vital leads: our
   ``SentenceTransformerEmbedder`` vs plain ``SentenceTransformer.encode(batch_size=128)``; then
   ``KnowledgeBase.create(backend="auto") + ingest`` end to end, and search latency on that index.
c. reader: a randomly initialised LlamaForCausalLM with SmolLM2-135M-Instruct's exact config,
   tokenizer and chat template, through ``bench_reader_overhead``'s functions: our decoding loop
   vs ``model.generate`` (tokens/s), and 32 in-context questions batched vs one by one.

Random weights cost what the real ones cost per token (same shapes), but their answers are
gibberish of varying length: the tokens each side generated are reported beside the speeds.
The inputs come from ``.gpu_carry/`` (``benchmarks/gpu_prepare.sh``): configs, tokenizers,
2,000 leads as JSONL. Each part is guarded: a failure is recorded as ``{"error": ...}`` and
the next part runs.

    python benchmarks/bench_gpu.py --json --out benchmarks/out/gpu/bench_gpu.json   # on the GPU
    python benchmarks/bench_gpu.py --device cpu --small                             # code-path check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
CARRY = HERE.parent / ".gpu_carry"
sys.path.insert(0, str(HERE))  # bench_reader_overhead

# n: search vectors; batch: queries per batch; reps1/repsb: timed repetitions; leads: texts embedded and ingested;
# n_gen/n_batch: reader prompts (part 1) / questions (part 2); layers: None = the real depth, else fewer (CPU check)
SIZES = {
    "full": {"n": 8_000_000, "batch": 256, "reps1": 100, "repsb": 20, "leads": 2000, "n_gen": 16, "n_batch": 32,
             "max_new_tokens": 16, "layers": None},
    "small": {"n": 20_000, "batch": 32, "reps1": 5, "repsb": 3, "leads": 150, "n_gen": 2, "n_batch": 4,
              "max_new_tokens": 4, "layers": 2},
}


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], reps: int, device: str, warm: int = 3) -> float:
    """Median wall time of ``fn`` in ms, the device synchronised before and after each call."""
    for _ in range(warm):
        fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth)]))


# -- a. search ----------------------------------------------------------------------------------------
def copy_bandwidth(device: str, gib: float = 2.0, reps: int = 20) -> float:
    """Device copy bandwidth in bytes/s (bytes read + written), as RESOURCES.md measures it."""
    import torch

    if not device.startswith("cuda"):
        gib = 0.25
    src = torch.empty(int(gib * 2**30) // 2, dtype=torch.float16, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), reps, device)
    nbytes = 2 * src.numel() * src.element_size()
    del src, dst
    return nbytes / (ms / 1000)


def bench_search(device: str, n: int, batch: int, reps1: int, repsb: int, dim: int = 384, k: int = 10,
                 chunk: int = 1 << 20) -> dict[str, Any]:
    """TorchExactBackend (fp16 and int8 storage) vs plain ``topk(q @ db.T)`` on n x dim random unit vectors.

    The collection is generated on the device a chunk at a time; the exact fp32 ground truth is
    merged tile by tile (the full fp32 matrix of 8M x 384 would take 12 GB more). Targets
    (issue 14): one query over 8M x 384 fp16 at >= 0.8 of the copy bandwidth; 256 queries >= 2x
    faster than plain. The 256-query run also sweeps the backend's tile size and two-level top-k.
    """
    import torch

    from rag_lfm.index import TorchExactBackend
    from rag_lfm.index.topk import torch_merge, torch_topk_tile

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, dim, generator=g, device=device)
    q /= q.norm(dim=1, keepdim=True)
    fp16 = TorchExactBackend(dim, device=device, dtype="float16" if device.startswith("cuda") else "float32")
    int8 = TorchExactBackend(dim, device=device, dtype="int8")
    db = torch.empty((n, dim), dtype=fp16.dtype, device=device)  # the plain peer's one matrix, same dtype as ours
    truth = None
    t = time.perf_counter()
    with torch.inference_mode():
        for a in range(0, n, chunk):
            m = min(chunk, n - a)
            x = torch.randn(m, dim, generator=g, device=device)
            x /= x.norm(dim=1, keepdim=True)
            v, i = torch_topk_tile(q @ x.T, k)  # exact fp32 (TF32 off: torch's default 'highest' precision)
            truth = torch_merge(truth, v, i + a, k)
            db[a : a + m] = x.to(db.dtype)
            ids = torch.arange(a, a + m, device=device)
            fp16.add(ids, x)  # tensors stay on the device: no host round trip
            int8.add(ids, x)
            del x
    _sync(device)
    add_s = time.perf_counter() - t
    truth_ids = truth[1].cpu().numpy()
    q_np = q.cpu().numpy()
    qd = q.to(db.dtype)

    def plain(qq: Any) -> Any:
        with torch.inference_mode():
            return torch.topk(qq @ db.T, k)

    bw = copy_bandwidth(device)
    allowed = np.arange(0, n, 100, dtype=np.int64)  # a 1% filter, resolved inside the search
    lat = {
        "ours_fp16_1q": median_ms(lambda: fp16.search(q_np[:1], k), reps1, device),
        "ours_int8_1q": median_ms(lambda: int8.search(q_np[:1], k), reps1, device),
        "plain_1q": median_ms(lambda: plain(qd[:1]), reps1, device),
        f"ours_fp16_{batch}q": median_ms(lambda: fp16.search(q_np, k), repsb, device),
        f"ours_int8_{batch}q": median_ms(lambda: int8.search(q_np, k), repsb, device),
        f"plain_{batch}q": median_ms(lambda: plain(qd), repsb, device),
        "ours_fp16_1q_filter_1pct": median_ms(lambda: fp16.search(q_np[:1], k, allowed=allowed), reps1, device),
    }
    sweep = []
    default = (fp16.tile_scores, fp16.topk_group)
    for tile in (1 << 23, 1 << 24, 1 << 25, 1 << 26, 1 << 28):
        for group in (0, 256, 1024):
            fp16.tile_scores, fp16.topk_group = tile, group
            sweep.append({"tile_scores": tile, "topk_group": group, "ms": median_ms(lambda: fp16.search(q_np, k), repsb, device)})
    fp16.tile_scores, fp16.topk_group = default
    best = min(sweep, key=lambda r: r["ms"])
    recall = {"ours_fp16": _recall(fp16.search(q_np, k)[1], truth_ids), "ours_int8": _recall(int8.search(q_np, k)[1], truth_ids),
              "plain": _recall(plain(qd).indices.cpu().numpy(), truth_ids)}
    scan = {  # bytes of vectors read per second by one query, and as a share of the copy bandwidth
        "copy_bandwidth_GBps": bw / 1e9,
        "fp16_1q_GBps": n * dim * db.element_size() / (lat["ours_fp16_1q"] / 1000) / 1e9,
        "int8_1q_GBps": n * dim / (lat["ours_int8_1q"] / 1000) / 1e9,
        "plain_1q_GBps": n * dim * db.element_size() / (lat["plain_1q"] / 1000) / 1e9,
    }
    scan.update({key.replace("GBps", "share_of_copy"): scan[key] / scan["copy_bandwidth_GBps"] for key in list(scan) if key != "copy_bandwidth_GBps"})
    res = {"n": n, "dim": dim, "k": k, "batch": batch, "dtype": str(fp16.dtype).replace("torch.", ""), "device": device,
           "index_bytes": {"fp16": fp16.memory_bytes, "int8": int8.memory_bytes}, "add_s": add_s, "latency_ms": lat,
           "recall_at_10_vs_fp32": recall, "scan": scan, "batch_sweep": sweep, "batch_best": best,
           "defaults": {"tile_scores": default[0], "topk_group": default[1]},
           "targets": {"1q_share_of_copy>=0.8": scan["fp16_1q_share_of_copy"],
                       f"plain_over_ours_{batch}q>=2": lat[f"plain_{batch}q"] / lat[f"ours_fp16_{batch}q"],
                       f"plain_over_best_sweep_{batch}q": lat[f"plain_{batch}q"] / best["ms"]},
           "ours_over_plain_1q": lat["ours_fp16_1q"] / lat["plain_1q"],
           f"ours_over_plain_{batch}q": lat[f"ours_fp16_{batch}q"] / lat[f"plain_{batch}q"]}
    del fp16, int8, db, qd
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    print(f"\n[a] exact search, {n:,} x {dim} {res['dtype']} (and int8) on {device}, k={k} (median ms; built in {add_s:.2f} s)")
    print(f"{'':<26}{'ours fp16':>10}{'ours int8':>10}{'plain':>10}{'plain/ours':>12}")
    for label, key in [("1 query", "1q"), (f"{batch} queries", f"{batch}q")]:
        o, o8, p = lat[f"ours_fp16_{key}"], lat[f"ours_int8_{key}"], lat[f"plain_{key}"]
        print(f"{label:<26}{o:>10.3f}{o8:>10.3f}{p:>10.3f}{p / o:>12.2f}")
    print(f"{'1 query, 1% filter':<26}{lat['ours_fp16_1q_filter_1pct']:>10.3f}")
    print(f"one query scans {scan['fp16_1q_GBps']:.0f} GB/s (fp16) = {scan['fp16_1q_share_of_copy']:.2f} of the copy bandwidth "
          f"{scan['copy_bandwidth_GBps']:.0f} GB/s (target >= 0.8); int8 {scan['int8_1q_GBps']:.0f} GB/s")
    print(f"{batch}-query sweep (tile_scores, topk_group -> ms): "
          + ", ".join(f"({r['tile_scores']:.0e},{r['topk_group']})={r['ms']:.3f}" for r in sweep))
    print(f"best {best}; plain/best = {lat[f'plain_{batch}q'] / best['ms']:.2f} (target >= 2)")
    print(f"recall@10 vs exact fp32: ours fp16 {recall['ours_fp16']:.4f}, int8 {recall['ours_int8']:.4f}, plain {recall['plain']:.4f}")
    return res


# -- b. embedding + ingest ------------------------------------------------------------------------------
def random_minilm(config_dir: Path, out: Path, layers: int | None = None) -> str:
    """all-MiniLM-L6-v2's sentence-transformers folder (configs, tokenizer, pooling) with random BERT weights."""
    import torch
    from transformers import BertConfig, BertModel

    shutil.copytree(config_dir, out)
    config = BertConfig.from_pretrained(config_dir)
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out)  # writes config.json + model.safetensors beside the module configs
    return str(out)


def bench_embed(device: str, config_dir: Path, leads: list[dict[str, Any]], layers: int | None, reps: int = 3) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    from rag_lfm.connectors import InMemory
    from rag_lfm.embedders import SentenceTransformerEmbedder
    from rag_lfm.knowledge_base import KnowledgeBase
    from rag_lfm.types import Document

    texts = [e["extract"] for e in leads]
    with tempfile.TemporaryDirectory() as tmp:
        folder = random_minilm(config_dir, Path(tmp) / "minilm-random", layers)
        ours = SentenceTransformerEmbedder(folder, device=device)
        ours.warm_up()
        plain = SentenceTransformer(folder, device=device)
        ours.encode(texts[:256])
        plain.encode(texts[:256], batch_size=128, normalize_embeddings=True, show_progress_bar=False)
        ours_s, plain_s = [], []
        for _ in range(reps):  # alternated, so a background hiccup hits both alike
            _sync(device)
            t = time.perf_counter()
            a = ours.encode(texts)
            ours_s.append(time.perf_counter() - t)
            _sync(device)
            t = time.perf_counter()
            b = plain.encode(texts, batch_size=128, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            _sync(device)
            plain_s.append(time.perf_counter() - t)
        ours_dps, plain_dps = len(texts) / statistics.median(ours_s), len(texts) / statistics.median(plain_s)
        max_diff = float(np.abs(a - np.asarray(b, dtype=np.float32)).max())
        del ours, plain

        docs = [Document(e["title"], e["extract"], {k: e[k] for k in ("title", "description", "topic") if e.get(k)})
                for e in leads]
        _sync(device)
        t = time.perf_counter()
        kb = KnowledgeBase.create(Path(tmp) / "kb", embedder=folder, backend="auto", device=device)
        report = kb.ingest(InMemory(docs, name="wiki-leads"), progress=False)
        _sync(device)
        ingest_s = time.perf_counter() - t
        index = kb.index
        queries = [e["description"] or e["title"] for e in leads]
        search_ms = median_ms(lambda it=iter(queries * 2): kb.search(next(it), k=10), min(100, len(queries)), device)
        flt = {"topic": leads[0].get("topic") or "History"}
        filter_ms = median_ms(lambda it=iter(queries * 2): kb.search(next(it), k=10, filter=flt), min(50, len(queries)), device)
        batch_q = queries[:256]
        t = time.perf_counter()
        kb.search_batch(batch_q, k=10)
        batch_s = time.perf_counter() - t
        kb.close()
        t = time.perf_counter()
        again = KnowledgeBase.open(Path(tmp) / "kb", device=device)
        again.search(queries[0], k=10)
        reopen_s = time.perf_counter() - t
        again.close()
    res = {
        "device": device, "n_docs": len(texts), "layers": layers or 6,
        "embed_docs_per_s": {"ours": ours_dps, "plain": plain_dps}, "ours_over_plain": ours_dps / plain_dps,
        "embed_max_abs_diff": max_diff, "embed_runs_s": {"ours": ours_s, "plain": plain_s},
        "kb": {"backend": kb.manifest["index"]["backend"], "index_device": str(getattr(index, "device", "cpu")),
               "factory": index.factory, "chunks": len(kb), "added": report.added, "commits": report.commits,
               "ingest_s": ingest_s, "ingest_docs_per_s": len(docs) / ingest_s, "search_p50_ms": search_ms,
               "search_filter_p50_ms": filter_ms, f"search_batch_{len(batch_q)}_ms": batch_s * 1000,
               "reopen_and_first_search_s": reopen_s},
    }
    print(f"\n[b] embedding {len(texts)} leads on {device}, random BERT with all-MiniLM-L6-v2's config ({res['layers']} layers)")
    print(f"{'':<26}{'ours':>10}{'plain ST':>10}{'ours/plain':>12}")
    print(f"{'docs/s':<26}{ours_dps:>10.1f}{plain_dps:>10.1f}{ours_dps / plain_dps:>12.2f}   (max |diff| {max_diff:.2e})")
    k = res["kb"]
    print(f"KnowledgeBase.create(backend='auto') + ingest: {k['ingest_docs_per_s']:.1f} docs/s end to end "
          f"({k['chunks']} chunks, {k['commits']} commits, {k['backend']} index on {k['index_device']})")
    print(f"kb.search p50 {search_ms:.2f} ms, with a filter {filter_ms:.2f} ms; search_batch({len(batch_q)}) "
          f"{batch_s * 1000:.1f} ms; reopen + first search {reopen_s:.2f} s")
    return res


# -- c. reader -------------------------------------------------------------------------------------------
def bench_reader(device: str, config_dir: Path, leads_path: Path, size: dict[str, Any]) -> dict[str, Any]:
    import bench_reader_overhead as bro

    entries = bro.load_leads(str(leads_path))
    n_gen, n_batch, k = size["n_gen"], size["n_batch"], 3
    questions, passages = bro.make_inputs(max(n_gen, n_batch), k, entries)
    common = {"device": device, "max_new_tokens": size["max_new_tokens"], "max_passage_tokens": 64}
    overrides = {"num_hidden_layers": size["layers"]} if size["layers"] else None
    print(f"\n[c] reader: random LlamaForCausalLM with SmolLM2-135M-Instruct's config on {device}"
          + (f" ({size['layers']} layers)" if overrides else ""))
    with tempfile.TemporaryDirectory() as tmp:
        model = bro.random_weights_model(config_dir, Path(tmp) / "smollm2-random", overrides=overrides)
        tokens = bro.bench_tokens(model, questions[:n_gen], passages[:n_gen], **common)
        batching = bro.bench_batching(model, questions[:n_batch], passages[:n_batch], k=k, warm_up=True, **common)
    return {"tokens": tokens, "batching": batching, "k": k, "layers": size["layers"] or 30, **common}


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "device": device,
                           "cuda": torch.version.cuda, "matmul_precision": torch.get_float32_matmul_precision()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(device)
    for mod in ("transformers", "sentence_transformers", "faiss", "sqlalchemy", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - a missing package is a fact to record, not a failure
            env[mod] = f"unavailable: {type(exc).__name__}"
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    ap.add_argument("--small", action="store_true", help="tiny sizes and 2-layer models: checks the code paths, measures nothing")
    ap.add_argument("--parts", default="abc", help="which parts to run, e.g. 'ac'")
    ap.add_argument("--carry", default=str(CARRY), help="the folder gpu_prepare.sh fills")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object on the last line")
    ap.add_argument("--out", default=None, help="also write that JSON to this file")
    args = ap.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    size = SIZES["small" if args.small else "full"]
    carry = Path(args.carry)
    print(f"args: {vars(args)} size: {size}")
    results: dict[str, Any] = {"args": vars(args), "size": size, "env": environment(device)}
    print(f"env: {results['env']}")
    if device.startswith("cuda"):  # the first kernels load lazily: keep that out of every timing
        w = torch.randn(1024, 1024, device=device)
        (w @ w).sum().item()

    def part(name: str, fn: Callable[[], dict[str, Any]]) -> None:
        t = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one failed part must not lose the others' figures
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
        results[name]["part_s"] = time.perf_counter() - t
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        if args.out:  # after every part: a run cut off by a time limit keeps what it measured
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(results, indent=1, default=str))

    leads_path = carry / "wiki_leads_2000.jsonl"
    if "a" in args.parts:
        part("search", lambda: bench_search(device, size["n"], size["batch"], size["reps1"], size["repsb"]))
    if "b" in args.parts:
        def embed() -> dict[str, Any]:
            import bench_reader_overhead as bro

            leads = bro.load_leads(str(leads_path))[: size["leads"]]
            return bench_embed(device, carry / "minilm", leads, size["layers"])

        part("embed", embed)
    if "c" in args.parts:
        part("reader", lambda: bench_reader(device, carry / "smollm2", leads_path, size))

    print("\nsummary")
    s, e, r = results.get("search", {}), results.get("embed", {}), results.get("reader", {})
    rows = []
    if "latency_ms" in s:
        b = s["batch"]
        rows += [("search 1 query (ms)", s["latency_ms"]["ours_fp16_1q"], s["latency_ms"]["plain_1q"]),
                 (f"search {b} queries (ms)", s["latency_ms"][f"ours_fp16_{b}q"], s["latency_ms"][f"plain_{b}q"]),
                 ("search recall@10 vs fp32", s["recall_at_10_vs_fp32"]["ours_fp16"], s["recall_at_10_vs_fp32"]["plain"])]
    if "embed_docs_per_s" in e:
        rows += [("embed docs/s", e["embed_docs_per_s"]["ours"], e["embed_docs_per_s"]["plain"]),
                 ("ingest docs/s (end to end)", e["kb"]["ingest_docs_per_s"], float("nan"))]
    if "tokens" in r:
        rows += [("reader tokens/s (vs generate)", r["tokens"]["ours_tokens_per_s"], r["tokens"]["generate_tokens_per_s"]),
                 ("reader q/s (batched vs 1-by-1)", r["batching"]["batched_q_per_s"], r["batching"]["single_q_per_s"])]
    print(f"{'':<34}{'ours':>12}{'peer':>12}{'ratio':>8}")
    for label, ours, peer in rows:
        ratio = ours / peer if peer == peer and peer else float("nan")
        print(f"{label:<34}{ours:>12.4g}{peer:>12.4g}{ratio:>8.2f}")
    for name in ("search", "embed", "reader"):
        if "error" in results.get(name, {}):
            print(f"{name}: FAILED: {results[name]['error']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    if args.json:
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
