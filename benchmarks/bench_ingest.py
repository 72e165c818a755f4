"""Ingest throughput and query latency: rag-lfm against LangChain's FAISS.from_texts, one run.

Both sides embed the same wiki-vital leads with the same packaged all-MiniLM-L6-v2
(normalised), on the same machine, in the same process. For each collection size:

* peer: ``FAISS.from_texts(texts, HuggingFaceEmbeddings(...))`` -- docs/s; query p50 of
  ``similarity_search_with_score(q, k=10)`` (embed + search + fetch text);
* rag-lfm: ``KnowledgeBase.create(...).ingest(WikiVital(limit=n))`` (chunking, embedding,
  FAISS, SQLite doc store, atomic commits) -- docs/s; query p50 of ``kb.search(q, k=10)``;
  recall@10 of our index against exact search; R@10 of description -> its own article
  (the cost of each lever in retrieval quality).

Rows at the smallest size: ``default`` -- everything a user gets without options (the embedder
backend ``auto``, measured once per machine; the hybrid retriever, whose BM25 sidecar is built at
ingest inside the timed ingest; queries through ``kb.search``, i.e. hybrid) -- then each embedder
backend alone with dense retrieval: torch (what the peer runs), ONNX fp32/int8, OpenVINO fp32/int8,
and a re-ingest of unchanged documents. One-time set-up (model load, ONNX export, quantisation,
the ``auto`` measurement; cached on disk after the first time) is not ingest and is reported apart
as ``setup_s``.

    python benchmarks/bench_ingest.py --size S          # 2,000 leads
    python benchmarks/bench_ingest.py --size M --json   # 2,000 and 10,000 leads
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"S": [2000], "M": [2000, 10000], "L": [10000]}


def p50_ms(fn, queries):
    fn(queries[0])  # warm-up: first-call allocations are not latency
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def recall_at_10_descriptions(search_batch, entries):
    """R@10 of description -> its own article, over descriptions of >= 3 words."""
    pairs = [(e["description"], e["title"]) for e in entries if len(e.get("description", "").split()) >= 3]
    hit = 0
    for s in range(0, len(pairs), 256):
        part = pairs[s : s + 256]
        for (_, title), got in zip(part, search_batch([q for q, _ in part])):
            hit += title in got
    return hit / len(pairs), len(pairs)


def run_peer(model_path, entries, queries):
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_community.vectorstores import FAISS

    emb = HuggingFaceEmbeddings(model_name=str(model_path), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True})
    texts = [e["extract"] for e in entries]
    metas = [{"title": e["title"], "topic": e["topic"]} for e in entries]
    t = time.perf_counter()
    vs = FAISS.from_texts(texts, emb, metadatas=metas)
    secs = time.perf_counter() - t
    p50 = p50_ms(lambda q: vs.similarity_search_with_score(q, k=10), queries)

    def batch(qs):
        qv = np.asarray(emb.embed_documents(qs), dtype=np.float32)
        _, idx = vs.index.search(qv, 10)
        return [{vs.docstore.search(vs.index_to_docstore_id[i]).metadata["title"] for i in row if i >= 0} for row in idx]

    r10, nq = recall_at_10_descriptions(batch, entries)
    return {"docs_per_s": len(entries) / secs, "seconds": secs, "query_p50_ms": p50, "desc_R@10": r10, "n_queries": nq}


def run_ours(backend, n, entries, queries, workdir, *, reingest=False):
    """One row: ``backend`` an embedder backend with dense retrieval (the lever alone), or ``"default"``:
    ``KnowledgeBase.create(path, embedder=...)`` with every default (backend ``auto``, the hybrid retriever
    whose BM25 sidecar is built at ingest, inside the timed ingest; queries through ``kb.search``)."""
    from rag_lfm import KnowledgeBase, WikiVital

    path = Path(workdir) / f"ours-{backend}-{n}"
    shutil.rmtree(path, ignore_errors=True)
    if backend == "default":
        kb = KnowledgeBase.create(path, embedder="all-MiniLM-L6-v2")
    else:
        kb = KnowledgeBase.create(path, embedder="all-MiniLM-L6-v2", embedder_backend=backend, retriever="dense")
    t = time.perf_counter()
    kb.embedder.warm_up()  # model load / ONNX export is set-up, not ingest (the peer's model is loaded before timing too)
    setup_s = time.perf_counter() - t
    t = time.perf_counter()
    report = kb.ingest(WikiVital(limit=n), progress=False)
    secs = time.perf_counter() - t
    out = {"docs_per_s": n / secs, "seconds": secs, "setup_s": setup_s, "chunks_embedded": report.chunks_embedded, "index": kb.index.factory,
           "memory_mib": kb.index.memory_bytes / 2**20, "backend": kb.manifest["embedder"]["backend"],
           "retriever": kb.manifest["retriever"].get("method")}
    out["query_p50_ms"] = p50_ms(lambda q: kb.search(q, k=10), queries)
    # recall@10 of the index against exact search over the stored vectors (1.0 for the exact auto index)
    qv = kb.embedder.encode(queries, kind="query")
    _, got = kb.search_vectors(qv, 10)
    ids, vecs = zip(*kb.docstore.iter_vectors())
    ids, vecs = np.concatenate(ids), np.concatenate(vecs)
    exact = ids[np.argsort(-(qv @ vecs.T), axis=1)[:, :10]]
    out["index_recall@10"] = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)]))
    out["desc_R@10"], _ = recall_at_10_descriptions(lambda qs: [{h.doc_id for h in hits} for hits in kb.search_batch(qs, k=10)], entries)
    if reingest:
        t = time.perf_counter()
        again = kb.ingest(WikiVital(limit=n), progress=False)
        out["reingest_unchanged_s"] = time.perf_counter() - t
        assert again.unchanged == n and again.chunks_embedded == 0
    kb.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="S")
    ap.add_argument("--n", type=int, nargs="*", help="collection sizes (overrides --size)")
    ap.add_argument("--queries", type=int, default=200, help="queries timed for p50 latency")
    ap.add_argument("--levers", default="default,torch,onnx-int8,openvino-int8",
                    help="rows at the smallest size: 'default' (every default, hybrid retriever included) and embedder backends (dense)")
    ap.add_argument("--best", default="default", help="the row run at the larger sizes")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = args.n or SIZES[args.size]
    print(f"# bench_ingest sizes={sizes} queries={args.queries} levers={args.levers} best={args.best} "
          f"machine={platform.machine()} cpus={len(__import__('os').sched_getaffinity(0))}")

    from rag_lfm.connectors.wiki import load_wiki_vital
    from rag_lfm.models import resolve_model

    model_path = resolve_model("all-MiniLM-L6-v2")
    all_entries = load_wiki_vital()
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_ingest_")
    results = {}
    print(f"{'n':>6} {'system':<22} {'docs/s':>8} {'x peer':>7} {'p50 ms':>8} {'x peer':>7} {'idx R@10':>8} {'desc R@10':>9}")
    for i, n in enumerate(sizes):
        entries = all_entries[:n]
        queries = [e["description"] for e in entries if len(e.get("description", "").split()) >= 3][: args.queries]
        peer = run_peer(model_path, entries, queries)
        rows = {"langchain FAISS.from_texts": peer}
        backends = args.levers.split(",") if i == 0 else [args.best]
        for b in backends:
            rows[f"rag-lfm {b}"] = run_ours(b, n, entries, queries, workdir, reingest=(b == args.best))
        for name, r in rows.items():
            r["ingest_ratio"] = r["docs_per_s"] / peer["docs_per_s"]
            r["p50_ratio"] = r["query_p50_ms"] / peer["query_p50_ms"]
            print(f"{n:>6} {name:<22} {r['docs_per_s']:8.1f} {r['ingest_ratio']:7.2f} {r['query_p50_ms']:8.2f} {r['p50_ratio']:7.2f} "
                  f"{r.get('index_recall@10', 1.0):8.3f} {r['desc_R@10']:9.3f}" + (f"  re-ingest unchanged {r['reingest_unchanged_s']:.1f} s" if "reingest_unchanged_s" in r else ""))
        results[str(n)] = rows
    shutil.rmtree(workdir, ignore_errors=True) if args.workdir is None else None
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
