"""Cost of a custom Python metric with two-stage rescoring vs plain FAISS inner-product search.

Builds a knowledge base of synthetic vectors (faiss.contrib.datasets.SyntheticDataset: 384-d
with low intrinsic dimension, so neighbours mean something), then times, on the SAME FAISS
index and the same query vectors (query encoding excluded on both sides):

* peer: ``index.search(queries, 10)`` on the KB's own FAISS index (inner product);
* ours: ``two_stage_search`` with a registered numpy metric (a per-dimension weighted dot
  product, which FAISS has no index type for): FAISS returns a pool of candidates, the
  metric rescores their stored vectors (in-memory ``VectorCache``), top 10 are kept.

It reports queries per second for both (batched calls and one query per call), their
ratio, and the recall of ours against the metric's exact top 10 (brute force over all
vectors), for several pool sizes.

Usage:
    python benchmarks/bench_metric_overhead.py --size M          # 100k vectors (the issue's setting)
    python benchmarks/bench_metric_overhead.py --size S --json   # 10k, quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

PRESETS = {"S": (10_000, 500), "M": (100_000, 1000), "L": (1_000_000, 1000)}


class LookupEmbedder:
    """Embedder protocol over a fixed matrix: the text "v:<row>" embeds to that row."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix
        self.name = f"lookup-{matrix.shape[1]}"
        self.normalize = False

    dim = property(lambda self: int(self.matrix.shape[1]))
    max_tokens = property(lambda self: 512)
    tokenizer = property(lambda self: None)

    def encode(self, texts, *, kind="document", batch_size=None):
        return self.matrix[[int(t.split(":")[1]) for t in texts]]


class Rows:
    complete = True
    source_id = "synthetic"

    def __init__(self, n: int) -> None:
        self.n = n

    def iter_documents(self):
        from rag_lfm.types import Document

        for i in range(self.n):
            yield Document(f"doc{i}", f"v:{i}", {})


def qps(fn, n_queries: int, *, min_seconds: float = 1.0) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while True:
        fn()
        reps += 1
        el = time.perf_counter() - t0
        if el >= min_seconds:
            return reps * n_queries / el


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(PRESETS), default="M")
    ap.add_argument("--n", type=int, help="number of vectors (overrides --size)")
    ap.add_argument("--nq", type=int, help="number of queries (overrides --size)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--pools", default="20,50,100,200,1000")
    ap.add_argument("--batch", type=int, default=100, help="queries per call in batched mode")
    ap.add_argument("--single", type=int, default=50, help="queries timed one per call")
    ap.add_argument("--index", help="keep the synthetic KB here (reused when it exists)")
    ap.add_argument("--threads", type=int, default=1, help="FAISS/BLAS threads on both sides")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timed seconds per measurement")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args()
    n, nq = PRESETS[args.size]
    n, nq = args.n or n, args.nq or nq
    print(f"args: {vars(args)} -> n={n} nq={nq}", flush=True)

    import faiss
    from faiss.contrib.datasets import SyntheticDataset

    from rag_lfm import KnowledgeBase
    from rag_lfm.metrics import register_metric
    from rag_lfm.retrieval import VectorCache, two_stage_search

    ds = SyntheticDataset(args.dim, 0, n, nq, metric="IP", seed=1338)
    xb, xq = ds.get_database().astype(np.float32), ds.get_queries().astype(np.float32)

    path = args.index or os.path.join(tempfile.mkdtemp(prefix="bench-metric-"), "kb")
    t0 = time.perf_counter()
    if os.path.exists(os.path.join(path, "manifest.json")):
        kb = KnowledgeBase.open(path, embedder=LookupEmbedder(xb))
    else:
        kb = KnowledgeBase.create(path, embedder=LookupEmbedder(xb), index="IDMap2,Flat")
        kb.ingest(Rows(n), progress=True, commit_every=20_000)
    print(f"kb: {len(kb)} vectors, index {kb.manifest['index']['factory']}, ready in {time.perf_counter() - t0:.1f} s")
    cache = VectorCache.from_kb(kb)
    raw = kb.index.index  # the FAISS object the KB searches
    doc_of_row = {}
    for batch in kb.iter_chunks(batch_size=20_000):
        for h in batch:
            doc_of_row[h.chunk_id] = int(h.doc_id[3:])

    rng = np.random.default_rng(0)
    w = rng.uniform(0.25, 4.0, size=args.dim).astype(np.float32)  # e.g. per-field importance

    def weighted_dot(q, c):  # the user's metric: plain numpy, not expressible as a FAISS index
        return np.matmul(c, (q * w)[:, :, None])[..., 0]

    register_metric("weighted_dot", weighted_dot, replace=True)

    # Exact top-k of the metric over every vector (brute force), for recall.
    exact = np.argsort(-((xq * w) @ xb.T), axis=1)[:, : args.k]
    k = args.k
    bq = xq[: args.batch]
    sq = xq[: args.single]
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    print(f"faiss threads: {faiss.omp_get_max_threads()}; peer measured right before ours on every row "
          "(the machine is shared, so load drifts)")
    T = args.seconds
    rows = []
    print(f"{'pool':>6} {'FAISS b':>8} {'ours b':>8} {'ratio':>6} {'FAISS 1':>8} {'ours 1':>8} {'ratio':>6} "
          f"{'recall@10 vs exact metric':>26}   (QPS; b = {len(bq)} queries per call, 1 = one per call)")
    for pool in [int(p) for p in args.pools.split(",")]:
        def ours(qv):
            return two_stage_search(kb, qv, k, metric="weighted_dot", pool=pool, cache=cache)

        faiss_batch = qps(lambda: raw.search(bq, k), len(bq), min_seconds=T)
        ob = qps(lambda: ours(bq), len(bq), min_seconds=T)
        faiss_single = qps(lambda: [raw.search(sq[i : i + 1], k) for i in range(len(sq))], len(sq), min_seconds=T)
        osg = qps(lambda: [ours(sq[i : i + 1]) for i in range(len(sq))], len(sq), min_seconds=T)
        _, ids = ours(xq)
        got = np.vectorize(lambda c: doc_of_row.get(int(c), -1))(ids)
        recall = float(np.mean([len(set(got[i]) & set(exact[i])) / k for i in range(len(xq))]))
        rows.append({"pool": pool, "faiss_qps_batched": round(faiss_batch, 1), "qps_batched": round(ob, 1),
                     "ratio_batched": round(ob / faiss_batch, 3), "faiss_qps_single": round(faiss_single, 1),
                     "qps_single": round(osg, 1), "ratio_single": round(osg / faiss_single, 3),
                     "recall_at_10": round(recall, 4)})
        print(f"{pool:>6} {faiss_batch:>8.0f} {ob:>8.0f} {ob / faiss_batch:>6.2f} {faiss_single:>8.0f} {osg:>8.0f} "
              f"{osg / faiss_single:>6.2f} {recall:>26.4f}", flush=True)
    plain_recall = None
    _, pids = raw.search(xq, k)
    pgot = np.vectorize(lambda c: doc_of_row.get(int(c), -1))(pids)
    plain_recall = float(np.mean([len(set(pgot[i]) & set(exact[i])) / k for i in range(len(xq))]))
    print(f"(plain FAISS IP top-10 has recall {plain_recall:.4f} of the weighted metric's exact top-10)")
    out = {"n": n, "nq": nq, "dim": args.dim, "k": k, "threads": args.threads,
           "plain_ip_recall_of_metric_top10": round(plain_recall, 4),
           "vector_cache_bytes": cache.nbytes, "pools": rows}
    kb.close()
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
