"""Retrieval quality and latency on the wiki-vital task: dense, BM25, hybrid, learned metric, MMR.

Task: each wiki-vital description of >= 3 words ("French Impressionist painter") is a query
whose one relevant document is its own article; the corpus is all 10,033 leads, as indexed in
``indexes/wiki-vital`` (built by ``python -m rag_lfm.demo``: MiniLM-L6 embeddings of the lead
text, chunks of <= 254 tokens, the title is NOT in the embedded or the BM25 text).

Honest protocol for learned parameters: queries are split by a hash of their title into
``fit`` (40%: fits the bilinear metric W), ``tune`` (10%: picks W's regulariser and the fusion
weights) and ``test`` (50%: every figure reported). Methods without learned parameters are
also reported on all 9,469 queries, to compare with the plain-library baselines.

Methods (all through rag-lfm's Retriever on the same KB):
  dense            MiniLM query . chunk vectors (the KB's FAISS index)
  bm25             bm25s over the chunk texts (Snowball stemmer, English stopwords, k1 1.5, b 0.75)
  hybrid-rrf       dense + bm25, reciprocal rank fusion (k = 60), top 100 of each (= the plain baseline)
  mmr              dense + MMR (lambda 0.7 over the top 20)
  hybrid-weighted  dense + bm25, weighted z-score fusion, bm25 weight chosen on tune
  hybrid-lead      dense + bm25 + a second BM25 field holding each document's first sentence
                   (bm25_settings opening_sentences=1), weighted z-score fusion, weights chosen on tune
  learned          dense with a bilinear metric q^T W c fitted on the fit split (the first stage
                   searches with q W, so the pool is exact); W's regulariser chosen on tune
  learned-lead     learned + bm25 + first-sentence BM25, weighted z-score fusion, weights chosen on tune
Latency: one query per call (encode + search + fetch), mean over --latency-queries queries.

Usage:
    python benchmarks/bench_retrieval.py                    # full task
    python benchmarks/bench_retrieval.py --size S --json    # 1,000 test queries, quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import warnings

import numpy as np

PRESETS = {"S": 1000, "M": None}


def split_of(qid: str) -> str:
    h = int.from_bytes(hashlib.blake2b(qid.encode(), digest_size=4).digest(), "big") % 10
    return "test" if h < 5 else ("fit" if h < 9 else "tune")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--size", choices=sorted(PRESETS), default="M", help="S: 1,000 test queries; M: all")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch/faiss threads for the latency runs")
    ap.add_argument("--save-metric", default=None, help="folder to save the fitted metric in")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args()
    print(f"args: {vars(args)}", flush=True)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from rag_lfm import KnowledgeBase
    from rag_lfm.eval.retrieval import evaluate_run, hits_to_run, ids_to_run, wiki_vital_task
    from rag_lfm.metrics import fit_bilinear
    from rag_lfm.retrieval import BM25Index, Retriever, VectorCache, fuse, two_stage_search

    metrics = ["ndcg@10", "recall@1", "recall@10", "mrr@10"]
    kb = KnowledgeBase.open(args.index)
    task = wiki_vital_task()
    print(f"kb: {kb.manifest['counts']} embedder {kb.manifest['embedder']['name']}; "
          f"task: {len(task.corpus)} docs, {len(task.queries)} queries", flush=True)
    qids = list(task.queries)
    parts = {s: [q for q in qids if split_of(q) == s] for s in ("fit", "tune", "test")}
    if PRESETS[args.size]:
        parts["test"] = parts["test"][: PRESETS[args.size]]
    print({s: len(v) for s, v in parts.items()}, flush=True)

    t0 = time.perf_counter()
    qv_all = kb.embedder.encode([task.queries[q] for q in qids], kind="query")
    enc_ms = 1000 * (time.perf_counter() - t0) / len(qids)
    row = {q: i for i, q in enumerate(qids)}
    print(f"encoded {len(qids)} queries: {enc_ms:.2f} ms/query batched", flush=True)
    t0 = time.perf_counter()
    bm25 = BM25Index.for_kb(kb)
    print(f"BM25 ready ({len(bm25)} chunks) in {time.perf_counter() - t0:.1f} s", flush=True)

    def run(retriever, ids, k=100):
        hits = []
        for s in range(0, len(ids), 512):
            part = ids[s : s + 512]
            hits.extend(retriever.search_batch([task.queries[q] for q in part], k=k,
                                               qvecs=qv_all[[row[q] for q in part]]))
        return hits_to_run(ids, hits)

    def score(retriever, ids):
        t = time.perf_counter()
        r = run(retriever, ids)
        el = time.perf_counter() - t
        return {m: round(v, 4) for m, v in evaluate_run({q: task.qrels[q] for q in ids}, r, metrics).items()}, el

    lead = BM25Index.for_kb(kb, opening_sentences=1)
    print(f"BM25 first-sentence field ready ({len(lead)} chunks)", flush=True)

    # ---- fit the bilinear metric on the fit split: query -> first chunk of its article
    first_chunk: dict[str, tuple[int, int]] = {}
    for batch in kb.iter_chunks(5000):
        for h in batch:
            if h.doc_id not in first_chunk or h.start < first_chunk[h.doc_id][1]:
                first_chunk[h.doc_id] = (h.chunk_id, h.start)
    cache = VectorCache.from_kb(kb)
    doc_of = {}
    for batch in kb.iter_chunks(5000):
        doc_of.update({h.chunk_id: h.doc_id for h in batch})

    def pairs(ids):
        docs = [next(iter(task.qrels[q])) for q in ids]
        return qv_all[[row[q] for q in ids]], kb.vectors([first_chunk[d][0] for d in docs])

    tune_ids = parts["tune"]
    tune_q = [task.queries[q] for q in tune_ids]
    tune_v = qv_all[[row[q] for q in tune_ids]]
    tune_qrels = {q: task.qrels[q] for q in tune_ids}

    def tune_score(ranked) -> float:
        return evaluate_run(tune_qrels, ids_to_run(tune_ids, ranked[1], doc_of), ["ndcg@10"])["ndcg@10"]

    fq, fp = pairs(parts["fit"])
    tune_results: dict[str, float] = {}
    best = None
    for reg in (1e-2, 1e-1):
        t = time.perf_counter()
        m = fit_bilinear(fq, fp, epochs=args.epochs, lr=1e-3, reg=reg, temperature=0.05,
                         corpus=cache.vectors, hard_negatives=2048, seed=0)
        sc = tune_score(two_stage_search(kb, tune_v, 100, metric=m, pool=100, cache=cache))
        tune_results[f"learned reg={reg}"] = round(sc, 4)
        print(f"fit W reg={reg}: {time.perf_counter() - t:.1f} s, tune nDCG@10 {sc:.4f}", flush=True)
        if best is None or sc > best[0]:
            best = (sc, reg, m)
    learned = best[2]
    if args.save_metric:
        learned.save(args.save_metric)
    print(f"chosen reg={best[1]}", flush=True)

    # ---- fusion weights, chosen on the tune split (same lists the Retriever fuses)
    lists = {
        "dense": kb.search_vectors(tune_v, 100),
        "learned": two_stage_search(kb, tune_v, 100, metric=learned, pool=100, cache=cache),
        "bm25": bm25.search(tune_q, 100),
        "lead": lead.search(tune_q, 100),
    }
    chosen = {}
    for name, first, grid in [
        ("hybrid-weighted", "dense", [(wb,) for wb in (0.5, 0.75, 1.0)]),
        ("hybrid-lead", "dense", [(wb, wf) for wb in (0.5, 0.75) for wf in (0.25, 0.5, 0.75)]),
        ("learned-lead", "learned", [(wb, wf) for wb in (0.5, 0.75) for wf in (0.25, 0.5, 0.75)]),
    ]:
        for w in grid:
            ls = [lists[first], lists["bm25"]] + ([lists["lead"]] if len(w) == 2 else [])
            sc = tune_score(fuse(ls, k=100, method="weighted", weights=[1.0, *w], normalize="zscore"))
            tune_results[f"{name} w={[1.0, *w]}"] = round(sc, 4)
            if name not in chosen or sc > chosen[name][0]:
                chosen[name] = (sc, [1.0, *w])
        print(f"tune {name}: chosen weights {chosen[name][1]} (nDCG@10 {chosen[name][0]:.4f})", flush=True)

    zs = {"method": "hybrid", "fusion": "weighted", "normalize": "zscore"}
    methods = {
        "dense": Retriever(kb),
        "bm25": Retriever(kb, method="bm25", bm25=bm25),
        "hybrid-rrf": Retriever(kb, method="hybrid", bm25=bm25),
        "mmr": Retriever(kb, mmr_lambda=0.7, mmr_pool=20),
        "hybrid-weighted": Retriever(kb, bm25=bm25, weights=chosen["hybrid-weighted"][1], **zs),
        "hybrid-lead": Retriever(kb, bm25=[bm25, lead], weights=chosen["hybrid-lead"][1], **zs),
        "learned": Retriever(kb, metric=learned, pool=100),
        "learned-lead": Retriever(kb, metric=learned, pool=100, bm25=[bm25, lead],
                                  weights=chosen["learned-lead"][1], **zs),
    }
    tuned_names = {"hybrid-weighted", "hybrid-lead", "learned", "learned-lead"}

    # ---- latency: one query per call, encode included, on --threads threads (both sides)
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    lat_ids = parts["test"][: args.latency_queries]
    latency = {}
    for name, r in methods.items():
        r.search(task.queries[lat_ids[0]], k=10)  # warm-up (BM25 and vector cache loaded)
        t = time.perf_counter()
        for q in lat_ids:
            r.search(task.queries[q], k=10)
        latency[name] = 1000 * (time.perf_counter() - t) / len(lat_ids)

    results = {}
    print(f"\n{'method':<15} {'split':<6} {'nQ':>5} " + " ".join(f"{m:>9}" for m in metrics)
          + f" {'ms/q single':>11} {'x dense':>7} {'ms/q batch':>10}")
    for name, r in methods.items():
        for split in (["test"] if name in tuned_names else ["test", "all"]):
            ids = parts["test"] if split == "test" else qids
            sc, el = score(r, ids)
            batch_ms = enc_ms + 1000 * el / len(ids)
            results[f"{name}/{split}"] = {**sc, "n_queries": len(ids), "ms_per_query_single": round(latency[name], 2),
                                          "latency_x_dense": round(latency[name] / latency["dense"], 2),
                                          "ms_per_query_batched": round(batch_ms, 2)}
            print(f"{name:<15} {split:<6} {len(ids):>5} " + " ".join(f"{sc[m]:>9.4f}" for m in metrics)
                  + f" {latency[name]:>11.2f} {latency[name] / latency['dense']:>7.2f} {batch_ms:>10.2f}", flush=True)
    peer = results["hybrid-rrf/test"]["ndcg@10"]
    best_name = max((n for n in methods), key=lambda n: results[f"{n}/test"]["ndcg@10"])
    ours = results[f"{best_name}/test"]["ndcg@10"]
    print(f"\nbest rag-lfm method ({best_name}) vs plain RRF fusion on the test split: nDCG@10 {ours:.4f} vs "
          f"{peer:.4f} ({ours - peer:+.4f}); latency {results[f'{best_name}/test']['latency_x_dense']:.2f}x dense")
    kb.close()
    if args.json:
        print(json.dumps({"splits": {s: len(v) for s, v in parts.items()}, "tune": tune_results,
                          "chosen": {"reg": best[1], **{n: w for n, (_, w) in chosen.items()}},
                          "best": best_name, "threads_latency": args.threads,
                          "encode_ms_per_query_batched": round(enc_ms, 2), "results": results}))


if __name__ == "__main__":
    main()
