"""Which retrieval method should `kb.search` use by default? Chosen on dev documents, reported on test.

Two query sets over the same index (``indexes/wiki-vital``, all 10,033 leads, MiniLM chunks),
both split by document with :func:`rag_lfm.eval.splits.document_split`:

* ``description``: each description of >= 3 words ("French Impressionist painter") retrieves
  its own article (the task of `rag-lfm eval retrieval wiki-vital`);
* ``general``: the hand-written factoid questions of ``benchmarks/data/general_{dev,test}.jsonl``
  ("Which river does Budapest stand on?") retrieve the article that answers them.

Candidates (all fused by `rag_lfm.retrieval.fuse` from the same lists the Retriever builds):
``dense``, ``bm25``, ``rrf`` (dense + BM25, reciprocal rank fusion: the plain baseline),
``z[1,b]`` (dense + BM25, per-query z-score weighted fusion), ``z[1,b,f]`` (dense + BM25 on
the text + BM25 on each document's first sentence) and ``z[1,b,f,tw]`` (the same + BM25 on the
documents' titles alone). The default is the candidate with the best
mean nDCG@10 over the two dev sets; the table then shows every candidate on test, and the
latency of one query per call (encode + search + fusion + fetch) of the chosen one against dense.

    python benchmarks/bench_default_retrieval.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
METRICS = ["ndcg@10", "recall@1", "recall@10", "mrr@10"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--latency-queries", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1, help="torch/FAISS threads for the latency runs")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = ap.parse_args()
    print(f"args: {vars(args)}", flush=True)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import faiss
    import torch

    from rag_lfm import KnowledgeBase
    from rag_lfm.eval.qa import load_qa_jsonl
    from rag_lfm.eval.retrieval import evaluate_run, ids_to_run, wiki_vital_task
    from rag_lfm.eval.splits import document_split
    from rag_lfm.retrieval import BM25Index, Retriever, fuse

    kb = KnowledgeBase.open(args.index)
    doc_of: dict[int, str] = {}
    for batch in kb.iter_chunks(5000):
        doc_of.update({h.chunk_id: h.doc_id for h in batch})
    desc = wiki_vital_task()
    sets: dict[str, tuple[list[str], list[str], dict[str, dict[str, int]]]] = {}
    for split in ("dev", "test"):
        ids = [q for q in desc.queries if document_split(next(iter(desc.qrels[q]))) == split]
        sets[f"description-{split}"] = (ids, [desc.queries[q] for q in ids], {q: desc.qrels[q] for q in ids})
        qa = load_qa_jsonl(DATA / f"general_{split}.jsonl")
        rows = [json.loads(line) for line in (DATA / f"general_{split}.jsonl").read_text().splitlines() if line.strip()]
        sets[f"general-{split}"] = ([e.id for e in qa], [e.question for e in qa], {r["id"]: {r["doc_id"]: 1} for r in rows})
    print({k: len(v[0]) for k, v in sets.items()}, flush=True)

    bm25 = BM25Index.for_kb(kb)
    lead = BM25Index.for_kb(kb, opening_sentences=1)
    title = BM25Index.for_kb(kb, fields=["title"], text=False)
    lists = {}
    for name, (_ids, queries, _qrels) in sets.items():
        qv = kb.embedder.encode(queries, kind="query")
        lists[name] = {"dense": kb.search_vectors(qv, 100), "bm25": bm25.search(queries, 100),
                       "lead": lead.search(queries, 100), "title": title.search(queries, 100)}

    candidates: dict[str, dict] = {"dense": {"lists": ["dense"]}, "bm25": {"lists": ["bm25"]},
                                   "rrf": {"lists": ["dense", "bm25"], "method": "rrf"}}
    for wb in (0.5, 0.75, 1.0):
        candidates[f"z[1,{wb}]"] = {"lists": ["dense", "bm25"], "method": "weighted", "weights": [1.0, wb]}
        for wf in (0.25, 0.5, 0.75):
            candidates[f"z[1,{wb},{wf}]"] = {"lists": ["dense", "bm25", "lead"], "method": "weighted", "weights": [1.0, wb, wf]}
            for wt in (0.25, 0.5):
                candidates[f"z[1,{wb},{wf},t{wt}]"] = {"lists": ["dense", "bm25", "lead", "title"], "method": "weighted",
                                                       "weights": [1.0, wb, wf, wt]}

    def ranked(cand: dict, set_name: str):
        ls = [lists[set_name][x] for x in cand["lists"]]
        if len(ls) == 1:
            return ls[0]
        return fuse(ls, k=100, method=cand["method"], weights=cand.get("weights"), normalize="zscore")

    scores: dict[str, dict[str, dict[str, float]]] = {}
    for cname, cand in candidates.items():
        scores[cname] = {}
        for set_name, (ids, _q, qrels) in sets.items():
            run = ids_to_run(ids, ranked(cand, set_name)[1], doc_of)
            scores[cname][set_name] = {m: round(v, 4) for m, v in evaluate_run(qrels, run, METRICS).items()}
    dev_mean = {c: (s["description-dev"]["ndcg@10"] + s["general-dev"]["ndcg@10"]) / 2 for c, s in scores.items()}
    chosen = max(dev_mean, key=dev_mean.get)

    # Latency, one query per call, through the Retriever as `kb.search` will run it.
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    cand = candidates[chosen]
    bm25s_used = [{"dense": None, "bm25": bm25, "lead": lead, "title": title}[x] for x in cand["lists"] if x != "dense"]
    if cand["lists"] == ["dense"]:
        chosen_r = Retriever(kb)
    elif "dense" not in cand["lists"]:
        chosen_r = Retriever(kb, method="bm25", bm25=bm25s_used)
    else:
        chosen_r = Retriever(kb, method="hybrid", fusion=cand["method"], weights=cand.get("weights"),
                             normalize="zscore", bm25=bm25s_used)
    lat_q = sets["general-test"][1][: args.latency_queries // 2] + sets["description-test"][1][: args.latency_queries // 2]
    latency = {}
    for name, r in {"dense": Retriever(kb), chosen: chosen_r}.items():
        r.search(lat_q[0], k=10)
        t = time.perf_counter()
        for q in lat_q:
            r.search(q, k=10)
        latency[name] = 1000 * (time.perf_counter() - t) / len(lat_q)

    head = f"{'candidate':<16}{'dev mean':>9}" + "".join(f"{s:>17}" for s in sets)
    print(f"\nnDCG@10 (R@1 / R@10 in the JSON)\n{head}")
    for c in candidates:
        mark = "  <- chosen on dev" if c == chosen else ""
        print(f"{c:<16}{dev_mean[c]:>9.4f}" + "".join(f"{scores[c][s]['ndcg@10']:>17.4f}" for s in sets) + mark)
    rrf_test = {s: scores["rrf"][s]["ndcg@10"] for s in sets if s.endswith("test")}
    print(f"\nchosen {chosen}: latency {latency[chosen]:.2f} ms/query vs dense {latency['dense']:.2f} "
          f"({latency[chosen] / latency['dense']:.2f}x), {args.threads} thread(s)")
    for s in rrf_test:
        print(f"  {s}: nDCG@10 {scores[chosen][s]['ndcg@10']:.4f} (dense {scores['dense'][s]['ndcg@10']:.4f}, "
              f"plain RRF {rrf_test[s]:.4f})")
    if args.json:
        print(json.dumps({"sets": {k: len(v[0]) for k, v in sets.items()}, "chosen": chosen, "chosen_config": cand,
                          "dev_mean_ndcg10": dev_mean, "scores": scores, "latency_ms": latency}))


if __name__ == "__main__":
    main()
