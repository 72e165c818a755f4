"""rag-lfm's LangChain VectorStore against langchain_community's FAISS store, one run.

Same texts (wiki-vital leads), same model (the packaged all-MiniLM-L6-v2, normalised, so
inner product = cosine on both sides), same process. Each store starts empty and gets
every lead through its own ``add_texts`` (with ids and metadata ``{title, topic, bucket}``,
``bucket = i % 100``), then answers the same queries:

* peer: ``FAISS(HuggingFaceEmbeddings(...), IndexFlatIP, InMemoryDocstore)``, LangChain's
  own FAISS store, ``distance_strategy=MAX_INNER_PRODUCT``; the model runs on torch;
* ours: ``RagLfmVectorStore.create(path, embedding=RagLfmEmbeddings(model, backend=B))``:
  chunking, embedding, FAISS, SQLite doc store, atomic commits every 1,000 documents.
  Two rows: ``--backend`` (default openvino-int8, our fastest CPU embedder backend; its
  embeddings differ slightly from torch's, see benchmarks/RESULTS.md) and the same
  backend as the peer (torch), so the store's own cost shows apart from the embedder's.

Figures per row: ``add_texts`` docs/s (model load, ONNX export and quantisation are
set-up, outside the timing, as the peer's model load is); ``similarity_search(q, k)`` p50;
the selective filter ``{"bucket": 7}`` (1% of documents): mean and minimum number of hits
per query at k (LangChain's FAISS store post-filters its top ``fetch_k`` = 20 and returns
fewer than k; ours restricts the search itself) and its p50; overlap@k of the unfiltered
results with the peer's (a check that both sides search the same thing).
Targets (issue 12): add_texts >= 1.5x the peer's docs/s, similarity_search p50 <= 0.7x.

``--qa N`` adds a quality comparison on our store (load-independent): the README's chain
(``retriever | prompt | RagLfmChatModel | StrOutputParser()``) against ``RagLfmQA`` on N
questions of the built-in task's dev split whose articles are among the n leads (exact
match, token F1, answer length in words, share of answers cut by ``max_tokens``); same
retriever (k=3), same frozen SmolLM2-135M-Instruct. ``--qa-only`` skips the speed rows.

    python benchmarks/bench_langchain.py --size S          # 2,000 leads
    python benchmarks/bench_langchain.py --size M --json   # 10,000 leads
    python benchmarks/bench_langchain.py --size S --qa 100 --qa-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"S": 2000, "M": 10000, "L": 10033}
BUCKET = 7  # the filter {"bucket": 7} matches 1% of the documents


def p50_ms(fn, queries):
    fn(queries[0])  # warm-up: first-call allocations are not latency
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def measure(store, texts, metas, ids, queries, k):
    """add_texts throughput, search p50, filtered-search counts and p50, top-k ids per query."""
    t = time.perf_counter()
    store.add_texts(texts, metas, ids=ids)
    secs = time.perf_counter() - t
    out = {"docs_per_s": len(texts) / secs, "add_seconds": secs}
    out["search_p50_ms"] = p50_ms(lambda q: store.similarity_search(q, k=k), queries)
    flt = {"bucket": BUCKET}
    counts = [len(store.similarity_search(q, k=k, filter=flt)) for q in queries]
    out["filter_hits_mean"] = float(np.mean(counts))
    out["filter_hits_min"] = int(min(counts))
    out["filter_p50_ms"] = p50_ms(lambda q: store.similarity_search(q, k=k, filter=flt), queries)
    out["top_ids"] = [[d.id for d in store.similarity_search(q, k=k)] for q in queries]
    return out


def run_peer(model_path, texts, metas, ids, queries, k):
    import faiss
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_community.embeddings import HuggingFaceEmbeddings
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy

    t = time.perf_counter()
    emb = HuggingFaceEmbeddings(model_name=str(model_path), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True})
    dim = len(emb.embed_query("warm-up"))
    setup = time.perf_counter() - t
    store = FAISS(embedding_function=emb, index=faiss.IndexFlatIP(dim), docstore=InMemoryDocstore(), index_to_docstore_id={},
                  distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT)
    return {"setup_s": setup, **measure(store, texts, metas, ids, queries, k)}


def print_qa(qa):
    print(f"QA on {qa['questions']} dev questions of the built-in task (k=3, SmolLM2-135M-Instruct, max_tokens 48):")
    print(f"{'way':<10} {'EM':>6} {'F1':>6} {'words':>6} {'cut':>6} {'seconds':>8}")
    for name in ("chain", "RagLfmQA"):
        r = qa[name]
        print(f"{name:<10} {r['EM']:6.3f} {r['F1']:6.3f} {r['words_mean']:6.1f} {r['cut_share']:6.2f} {r['seconds']:8.1f}")


def run_ours(backend, workdir, texts, metas, ids, queries, k, qa_questions=0, entries=None):
    from rag_lfm.integrations.langchain import RagLfmEmbeddings, RagLfmVectorStore

    path = Path(workdir) / f"ours-{backend}"
    shutil.rmtree(path, ignore_errors=True)
    t = time.perf_counter()
    emb = RagLfmEmbeddings("all-MiniLM-L6-v2", backend=backend, device="cpu")
    emb.embedder.warm_up()  # model load / ONNX export / quantisation: set-up, cached on disk after the first time
    setup = time.perf_counter() - t
    store = RagLfmVectorStore.create(path, embedding=emb)
    out = {"setup_s": setup, **measure(store, texts, metas, ids, queries, k), "index": store.kb.index.factory}
    if qa_questions:
        out["qa"] = run_qa(store, entries, qa_questions)
    store.kb.close()
    return out


def run_qa(store, entries, n_questions, max_tokens=48):
    """The README chain vs RagLfmQA on the built-in task's dev questions (quality only)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from rag_lfm.eval.qa import exact_match, token_f1, wiki_vital_task
    from rag_lfm.integrations.langchain import RagLfmChatModel, RagLfmQA, RagLfmRetriever, format_documents

    examples = wiki_vital_task(n_questions, split="dev", entries=entries)
    retriever = RagLfmRetriever(kb=store.kb, k=3)
    model = RagLfmChatModel(max_tokens=max_tokens)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer from the numbered passages only, in one short sentence; cite the passage as [n]."),
        ("human", "{context}\n\nQuestion: {question}"),
    ])
    chain = {"context": retriever | format_documents, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    qa = RagLfmQA(retriever, reader=model)
    out = {}
    for name, answer in (("chain", lambda q: (chain.invoke(q), None)),
                         ("RagLfmQA", lambda q: (lambda o: (o["answer"], o["finish_reason"]))(qa.invoke(q)))):
        em, f1, words, cut = [], [], [], 0
        t = time.perf_counter()
        for ex in examples:
            text, _ = answer(ex.question)
            em.append(exact_match(text, ex.answers))
            f1.append(token_f1(text, ex.answers))
            words.append(len(text.split()))
            cut += len(model.get_reader().tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_tokens
        out[name] = {"EM": float(np.mean(em)), "F1": float(np.mean(f1)), "words_mean": float(np.mean(words)),
                     "cut_share": cut / len(examples), "seconds": time.perf_counter() - t}
    out["questions"] = len(examples)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="S")
    ap.add_argument("--n", type=int, help="number of leads (overrides --size)")
    ap.add_argument("--queries", type=int, default=200, help="queries timed (descriptions of >= 3 words)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--backend", default="openvino-int8", help="our embedder backend for the main row (torch is always run too)")
    ap.add_argument("--threads", type=int, default=None, help="pin torch and FAISS to this many threads (default: library defaults)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--qa", type=int, default=0, help="also compare the README chain with RagLfmQA on N dev questions")
    ap.add_argument("--qa-only", action="store_true", help="skip the speed rows (build our store, run --qa)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n or SIZES[args.size]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# bench_langchain n={n} queries={args.queries} k={args.k} backend={args.backend} threads={args.threads} "
          f"machine={platform.machine()} cpus={cpus}")
    if args.threads:
        import faiss
        import torch

        torch.set_num_threads(args.threads)
        faiss.omp_set_num_threads(args.threads)

    from rag_lfm.connectors.wiki import load_wiki_vital
    from rag_lfm.models import resolve_model

    entries = load_wiki_vital()[:n]
    texts = [e["extract"] for e in entries]
    metas = [{"title": e["title"], "topic": e["topic"], "bucket": i % 100} for i, e in enumerate(entries)]
    ids = [e["title"] for e in entries]
    queries = [e["description"] for e in entries if len(e.get("description", "").split()) >= 3][: args.queries]
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_langchain_")
    if args.qa_only:
        from rag_lfm.integrations.langchain import RagLfmEmbeddings, RagLfmVectorStore

        store = RagLfmVectorStore.create(Path(workdir) / "qa", embedding=RagLfmEmbeddings("all-MiniLM-L6-v2", backend=args.backend))
        store.add_texts(texts, metas, ids=ids)
        qa = run_qa(store, entries, args.qa or 100)
        print_qa(qa)
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        if args.json:
            print(json.dumps({"n": n, "qa": qa}))
        return
    rows = {"langchain FAISS (torch)": run_peer(resolve_model("all-MiniLM-L6-v2"), texts, metas, ids, queries, args.k)}
    backends = [args.backend] + (["torch"] if args.backend != "torch" else [])
    for b in backends:
        rows[f"rag-lfm {b}"] = run_ours(b, workdir, texts, metas, ids, queries, args.k,
                                        qa_questions=args.qa if b == args.backend else 0, entries=entries)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    peer = rows["langchain FAISS (torch)"]
    print(f"{'system':<26} {'add docs/s':>10} {'x peer':>7} {'p50 ms':>8} {'x peer':>7} "
          f"{'filter hits mean/min @k':>23} {'filter p50 ms':>13} {'overlap@k':>9}")
    for name, r in rows.items():
        r["add_ratio"] = r["docs_per_s"] / peer["docs_per_s"]
        r["p50_ratio"] = r["search_p50_ms"] / peer["search_p50_ms"]
        r["overlap_with_peer"] = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(r["top_ids"], peer["top_ids"])]))
        print(f"{name:<26} {r['docs_per_s']:10.1f} {r['add_ratio']:7.2f} {r['search_p50_ms']:8.2f} {r['p50_ratio']:7.2f} "
              f"{r['filter_hits_mean']:17.2f} / {r['filter_hits_min']:<3d} {r['filter_p50_ms']:13.2f} {r['overlap_with_peer']:9.3f}")
    ours = rows[f"rag-lfm {args.backend}"]
    print(f"targets: add_texts >= 1.5x: {'met' if ours['add_ratio'] >= 1.5 else 'NOT met'} ({ours['add_ratio']:.2f}x); "
          f"similarity_search p50 <= 0.7x: {'met' if ours['p50_ratio'] <= 0.7 else 'NOT met'} ({ours['p50_ratio']:.2f}x); "
          f"filter {{'bucket': {BUCKET}}} ({sum(m['bucket'] == BUCKET for m in metas)} of {n} documents) at k={args.k}: "
          f"peer {peer['filter_hits_mean']:.2f} hits per query, ours {ours['filter_hits_mean']:.2f}")
    if "qa" in ours:
        print_qa(ours["qa"])
    if args.json:
        for r in rows.values():
            r.pop("top_ids")
        print(json.dumps({"n": n, "k": args.k, "queries": len(queries), "rows": rows}))


if __name__ == "__main__":
    main()
