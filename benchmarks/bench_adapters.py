"""Adapters around the frozen models on wiki-vital: a query adapter over MiniLM, LoRA / prompt tuning over SmolLM2.

Everything is split BY DOCUMENT (:func:`rag_lfm.eval.splits.document_split`, fixed): adapters train on
``train`` documents, settings are chosen on ``dev`` documents, figures are reported on ``test`` documents.

1. Query adapter (phase ``query``): (query, doc) pairs of train documents -- their descriptions, plus
   description-like lead fragments ("a French painter and founder of ...", :mod:`rag_lfm.adapters.tuning`) --
   train candidates (kind, rank, forms, hard negatives) against the index's stored vectors; the best on dev
   R@1 is reported on test: R@1, R@10, nDCG@10 of dense search and of the default hybrid retriever
   (:data:`rag_lfm.retrieval.retriever.DEFAULT_CONFIG`), before and after.
2. Reader adapters (phases ``train-lora``, ``train-prompt``): LoRA and prompt tuning of SmolLM2-135M through
   PEFT on (question, dense-retrieved passages in retriever order, answer), k drawn from 1..5, two question
   forms (description -> title; a fill-in-the-blank of a lead's first sentences -> a name or year that is
   not the title); early stopping on dev documents.
3. QA (phases ``qa-frozen``, ``qa-lora``, ``qa-prompt``): EM, F1, answer-in-context at k = 1, 3, 5 on the wiki
   test questions (dense retrieval, query = description, as benchmarks/bench_rag.py), the general factoid dev
   set (benchmarks/data/general_dev.jsonl, the reader's default k = 1) and closed-book on both (the shift an
   adapter causes where it was not trained).

    python benchmarks/bench_adapters.py --json                  # every phase, one process
    python benchmarks/bench_adapters.py --phase query --json    # one phase (results cached in --out), then:
    python benchmarks/bench_adapters.py --phase report --json   # the tables and targets from the cached phases

The index must hold all 10,033 leads (`rag-lfm ingest connectors/wiki-vital.toml`, or `python -m rag_lfm.demo`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

PHASES = ("query", "train-lora", "train-prompt", "qa-frozen", "qa-lora", "qa-prompt")
DATA = Path(__file__).resolve().parent / "data"


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--out", default="benchmarks/out/adapters", help="phase results (JSON) and trained reader adapters")
    ap.add_argument("--phase", default="all", help=f"all, report, or a comma list of: {', '.join(PHASES)}")
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS threads (pinned before torch loads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qa-n", type=int, default=40, help="wiki test questions (the same sample for every reader)")
    ap.add_argument("--qa-split", default="test", choices=["test", "dev"],
                    help="wiki questions from test documents (the report) or dev documents (to choose reader-adapter settings)")
    ap.add_argument("--general-n", type=int, default=40, help="general_dev questions (first N; 0 = all 292)")
    ap.add_argument("--train-n", type=int, default=80, help="reader training examples (train documents)")
    ap.add_argument("--valid-n", type=int, default=8, help="reader early-stopping examples (dev documents)")
    ap.add_argument("--cloze-share", type=float, default=0.4, help="share of fill-in-the-blank training examples")
    ap.add_argument("--anchors", type=int, default=0,
                    help="closed-book anchors added to the reader training examples: N of their questions without "
                         "passages, the target the frozen reader's own answer (holds the closed-book shift); the "
                         "held-out set gets the same share")
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=8, help="optimizer steps between early-stopping checks")
    ap.add_argument("--lora-rank", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--lora-top-layers", type=int, default=12, help="LoRA on the last N layers only (0 = all)")
    ap.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj", help="modules LoRA wraps")
    ap.add_argument("--choice-weight", type=float, default=0.0,
                    help="LoRA: weight of the loss on choosing the gold answer among the passages' titles (0 = off)")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--prompt-lr", type=float, default=3e-2)
    ap.add_argument("--max-passage-tokens", type=int, default=64,
                    help="reader option for every reader compared (the reader's own default is 160; 64 keeps CPU training affordable)")
    ap.add_argument("--query-candidates", default="all", help="comma list of query-adapter candidate names, or all")
    ap.add_argument("--final", default="train+dev", choices=["train", "train+dev"],
                    help="the reported query adapter: the chosen one as trained on train documents, or its settings "
                         "retrained on train+dev documents")
    ap.add_argument("--save-adapter", default="wiki", help="name to save the chosen query adapter under in the index ('' = no)")
    ap.add_argument("--json", action="store_true", help="last stdout line: one JSON object of the figures")
    return ap.parse_args()


# --------------------------------------------------------------------------- retrieval metrics


def doc_metrics(ids, doc_of, gold) -> dict[str, float]:
    """R@1, R@10, nDCG@10 with one relevant document per query (document-level: a document's best chunk counts)."""
    import math

    r1 = r10 = ndcg = 0.0
    for row, g in zip(ids, gold):
        seen: list[str] = []
        for c in row.tolist():
            d = doc_of.get(int(c))
            if d is not None and d not in seen:
                seen.append(d)
            if len(seen) >= 10:
                break
        if g in seen:
            rank = seen.index(g) + 1
            r1 += rank == 1
            r10 += 1
            ndcg += 1.0 / math.log2(rank + 1)
    n = max(len(gold), 1)
    return {"recall@1": round(r1 / n, 4), "recall@10": round(r10 / n, 4), "ndcg@10": round(ndcg / n, 4)}


def _cand(kind="mlp", rank=64, forms=("description",), **kw):
    base = {"kind": kind, "rank": rank, "forms": forms, "hard_negatives": 8, "remine_every": 0, "reg": 1e-3, "lr": 1e-3,
            "temperature": 0.05, "hard_skip": 0, "patience": 3}
    return {**base, **kw}


# Query-adapter candidates, chosen between on dev documents (dense R@1).
QUERY_CANDIDATES = {
    "mlp64-desc": _cand(),
    "mlp64-desc+lead": _cand(forms=("description", "lead")),
    "mlp128-desc+lead-hn32": _cand(rank=128, forms=("description", "lead"), hard_negatives=32, remine_every=2),
    "linear-desc+lead": _cand("linear", forms=("description", "lead"), reg=1e-2),
    "mlp32-desc": _cand(rank=32),
    "mlp64-desc-lr3e-4": _cand(lr=3e-4, patience=5),
    "mlp64-desc-hn32": _cand(hard_negatives=32),
    "mlp64-desc-hn32-skip2": _cand(hard_negatives=32, hard_skip=2),
    "mlp64-desc-t0.1": _cand(temperature=0.1),
    "mlp64-desc-t0.02": _cand(temperature=0.02),
    "mlp64-desc-reg1e-2": _cand(reg=1e-2),
    "mlp256-desc-lr3e-4": _cand(rank=256, lr=3e-4, patience=5),
    "linear-desc-reg1e-1": _cand("linear", reg=1e-1),
    "mlp64-desc+lead-lr3e-4": _cand(forms=("description", "lead"), lr=3e-4, patience=5),
}


def phase_query(args, kb) -> dict:
    import numpy as np

    from rag_lfm.adapters.tuning import IndexVectors, derive_pairs, tune_query_adapter
    from rag_lfm.eval.retrieval import wiki_vital_task
    from rag_lfm.eval.splits import document_split
    from rag_lfm.retrieval import Retriever
    from rag_lfm.retrieval.retriever import DEFAULT_CONFIG

    t0 = time.perf_counter()
    task = wiki_vital_task()
    iv = IndexVectors(kb)
    doc_of = {int(c): kb_doc for c, kb_doc in zip(iv.ids.tolist(), (iv.keys[d][1] for d in iv.doc.tolist()))}
    by_split: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    for qid, text in task.queries.items():
        title = next(iter(task.qrels[qid]))
        by_split[document_split(title)].append((text, title))
    train_docs = {t for _, t in by_split["train"]} | {d for d in task.corpus if document_split(d) == "train"}
    pairs_all = derive_pairs(kb, ("description", "lead"), docs=train_docs)
    print(f"queries: train {len(by_split['train'])}, dev {len(by_split['dev'])}, test {len(by_split['test'])}; "
          f"derived train pairs {len(pairs_all)} ({sum(p.form == 'lead' for p in pairs_all)} lead fragments)", flush=True)
    te = time.perf_counter()
    texts = [p.query for p in pairs_all] + [q for s in ("dev", "test") for q, _ in by_split[s]]
    cache = Path(args.out) / "query_vectors.npz"  # the frozen embedder's vectors of these texts (a rerun skips encoding)
    key = hashlib.sha256(json.dumps([kb.manifest["embedder"], texts]).encode()).hexdigest()
    if cache.is_file() and str(np.load(cache, allow_pickle=False)["key"]) == key:
        allv = np.load(cache, allow_pickle=False)["vectors"]
    else:
        allv = kb.embedder.encode(texts, kind="query")
        np.savez(cache, key=np.array(key), vectors=allv)
    qv_pairs = allv[: len(pairs_all)]
    qv = {"dev": allv[len(pairs_all) : len(pairs_all) + len(by_split["dev"])], "test": allv[len(pairs_all) + len(by_split["dev"]) :]}
    print(f"encoded {len(texts)} queries in {time.perf_counter() - te:.0f} s", flush=True)

    def dense_eval(split: str, adapter) -> dict:
        q = qv[split] if adapter is None else adapter.apply(qv[split])
        _, ids = kb.search_vectors(q, 100)
        return doc_metrics(ids, doc_of, [t for _, t in by_split[split]])

    results = {"dev_before": dense_eval("dev", None), "candidates": {}}
    print(f"dev dense before: {results['dev_before']}", flush=True)
    names = list(QUERY_CANDIDATES) if args.query_candidates == "all" else args.query_candidates.split(",")
    best = None
    for name in names:
        c = dict(QUERY_CANDIDATES[name])
        forms = c.pop("forms")
        keep = np.array([p.form in forms for p in pairs_all])
        pairs = [p for p, k in zip(pairs_all, keep) if k]
        a = tune_query_adapter(kb, pairs, name=None, epochs=40, seed=args.seed, progress=False, vectors=iv,
                               query_vectors=qv_pairs[keep], **c)
        dev = dense_eval("dev", a)
        results["candidates"][name] = {"dev": dev, "params": a.n_params, "pairs": a.info["pairs"], "seconds": a.info["seconds"],
                                       "best_epoch": a.info["best_epoch"], "valid_r1": [a.info["valid_r1_before"], a.info["valid_r1_best"]]}
        print(f"  {name:<24} dev {dev}  ({a.n_params:,} params, {a.info['pairs']} pairs, best epoch {a.info['best_epoch']}, "
              f"{a.info['seconds']:.0f} s)", flush=True)
        if best is None or dev["recall@1"] > best[1]["recall@1"]:
            best = (name, dev, a)
    name, _, adapter = best
    results["chosen"] = name
    results["test_dense_before"] = dense_eval("test", None)
    results["test_dense_after_train_only"] = dense_eval("test", adapter)
    if args.final == "train+dev":
        # The chosen settings, retrained on train AND dev documents (dev only chose; early stopping holds out
        # a tenth of these documents); test documents stay out of training.
        c = dict(QUERY_CANDIDATES[name])
        forms = c.pop("forms")
        dev_docs = {d for d in task.corpus if document_split(d) == "dev"}
        more = [p for p in derive_pairs(kb, forms, docs=dev_docs)]
        pairs = [p for p in pairs_all if p.form in forms] + more
        qv_more = kb.embedder.encode([p.query for p in more], kind="query")
        keep = np.array([p.form in forms for p in pairs_all])
        adapter = tune_query_adapter(kb, pairs, name=None, epochs=40, seed=args.seed, progress=False, vectors=iv,
                                     query_vectors=np.concatenate([qv_pairs[keep], qv_more]), **c)
        print(f"  retrained on train+dev documents: {adapter.info['pairs']} pairs, best epoch {adapter.info['best_epoch']}, "
              f"{adapter.info['seconds']:.0f} s", flush=True)
    results["final"] = args.final
    results["params"] = adapter.n_params
    st = getattr(kb.embedder, "st", None)  # the frozen embedder's own size, for the trainable share
    results["embedder_params"] = int(sum(p.numel() for p in st.parameters())) if st is not None and hasattr(st, "parameters") else None
    results["train_seconds"] = adapter.info["seconds"]
    results["train_pairs"] = adapter.info["pairs"]
    results["test_dense_after"] = dense_eval("test", adapter)
    # inside the default hybrid retriever: the adapter moves its dense list only
    tq = [q for q, _ in by_split["test"]]
    gold = [t for _, t in by_split["test"]]
    for label, spec in (("before", "none"), ("after", adapter)):
        r = Retriever.from_config(kb, DEFAULT_CONFIG, adapter=spec)
        ids = np_concat([r.search_ids(tq[s : s + 512], 100, qvecs=qv["test"][s : s + 512])[1] for s in range(0, len(tq), 512)])
        results[f"test_hybrid_{label}"] = doc_metrics(ids, doc_of, gold)
    results["n_test"] = len(tq)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    if args.save_adapter:
        from rag_lfm.adapters.store import save_query_adapter

        save_query_adapter(kb, adapter, args.save_adapter, activate=False, replace=True)
        results["saved_as"] = args.save_adapter
    for k in ("test_dense_before", "test_dense_after_train_only", "test_dense_after", "test_hybrid_before", "test_hybrid_after"):
        print(f"{k:<28} {results[k]}", flush=True)
    return results


def np_concat(parts):
    import numpy as np

    return np.concatenate(parts) if parts else np.zeros((0, 100), np.int64)


# --------------------------------------------------------------------------- reader


def _source(kb):
    from rag_lfm.retrieval import Retriever

    return Retriever(kb, method="dense", adapter="none")  # the reader is compared on the same plain dense passages


def _reader(args, adapter=None):
    from rag_lfm.readers import TransformersReader

    opts = {"max_passage_tokens": args.max_passage_tokens} if args.max_passage_tokens else {}
    return TransformersReader("SmolLM2-135M-Instruct", adapter=adapter, **opts).warm_up()


def phase_train(args, kb, method: str) -> dict:
    from rag_lfm.adapters.reader import train_reader_adapter, wiki_reader_examples

    src = _source(kb)
    t0 = time.perf_counter()
    train = wiki_reader_examples(src, split="train", n=args.train_n, cloze_share=args.cloze_share, seed=args.seed)
    valid = wiki_reader_examples(src, split="dev", n=args.valid_n, cloze_share=args.cloze_share, seed=args.seed + 1)
    print(f"{method}: {len(train)} training examples ({sum(e.form == 'cloze' for e in train)} cloze), {len(valid)} held-out, "
          f"built in {time.perf_counter() - t0:.0f} s", flush=True)
    reader = _reader(args)
    if args.anchors:
        from rag_lfm.adapters.reader import closed_book_anchors

        n_valid = round(args.anchors * len(valid) / max(len(train), 1))
        train = train + closed_book_anchors(reader, [e.question for e in train][: args.anchors], seed=args.seed)
        valid = valid + closed_book_anchors(reader, [e.question for e in valid][:n_valid], seed=args.seed + 1)
        print(f"{method}: + closed-book anchors (the frozen reader's answers): {sum(e.form == 'keep' for e in train)} "
              f"training, {sum(e.form == 'keep' for e in valid)} held-out", flush=True)
    before = reader.base_weights_fingerprint()
    kw = {"rank": args.lora_rank, "lr": args.lora_lr, "target_modules": args.lora_targets.split(","),
                                         "top_layers": args.lora_top_layers or None, "choice_weight": args.choice_weight} if method == "lora" else {"virtual_tokens": args.prompt_tokens, "lr": args.prompt_lr}
    rep = train_reader_adapter(reader, train, valid, method=method, out=Path(args.out) / f"reader-{method}", epochs=1,
                               grad_accum=args.grad_accum, eval_every=args.eval_every, patience=3, seed=args.seed,
                               progress=not args.json, **kw)
    assert reader.base_weights_fingerprint() == before
    out = rep.to_dict()
    out["examples"] = {"train": len(train), "valid": len(valid), "cloze": sum(e.form == "cloze" for e in train),
                       "anchors": sum(e.form == "keep" for e in train)}
    out["base_hash_unchanged"] = _reader(args, adapter=rep.out).base_weights_fingerprint() == before
    print(f"{method}: {rep.steps} steps, best held-out loss {rep.best_valid_loss}, {rep.trainable_params:,} trainable "
          f"({100 * rep.trainable_share:.3f}%), {rep.seconds:.0f} s; base hash unchanged: {out['base_hash_unchanged']}", flush=True)
    return out


def phase_qa(args, kb, which: str) -> dict:
    from rag_lfm.eval.qa import evaluate_qa, load_qa_jsonl, wiki_vital_task

    adapter = None if which == "frozen" else str(Path(args.out) / f"reader-{which}")
    reader = _reader(args, adapter)
    src = _source(kb)
    wiki = wiki_vital_task(args.qa_n, seed=args.seed, split=args.qa_split, query="description")
    general = load_qa_jsonl(DATA / "general_dev.jsonl")
    general = general[: args.general_n] if args.general_n else general
    rows = {}
    t0 = time.perf_counter()
    for label, examples, strategy, k in [("wiki k=1", wiki, "in-context", 1), ("wiki k=3", wiki, "in-context", 3),
                                         ("wiki k=5", wiki, "in-context", 5), ("wiki closed-book", wiki, "closed-book", 0),
                                         ("general k=1", general, "in-context", 1),
                                         ("general closed-book", general, "closed-book", 0)]:
        rep = evaluate_qa(src, reader, examples, strategy=strategy, k=max(k, 1), progress=False)
        rows[label] = {"em": round(rep.exact_match, 4), "f1": round(rep.f1, 4), "contains": round(rep.contains, 4),
                       "aic": None if rep.answer_in_context is None else round(rep.answer_in_context, 4),
                       "s_per_q": round(rep.seconds_per_question, 3), "n": rep.n,
                       "title_answers": round(sum(r["prediction"] in {c for c in r["cited"]} for r in rep.records) / rep.n, 4)}
        print(f"{which:<7} {label:<20} {json.dumps(rows[label])}", flush=True)
    return {"reader": which, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- report


def report(args) -> dict:
    out = Path(args.out)
    got = {p: json.loads((out / f"{p}.json").read_text()) for p in PHASES if (out / f"{p}.json").is_file()}
    summary: dict = {"phases": sorted(got)}
    if "query" in got:
        q = got["query"]
        print(f"\nQuery adapter (chosen on dev: {q['chosen']}; reported: trained on {q['final']} documents, "
              f"{q['train_pairs']} pairs, {q['params']:,} parameters against the frozen embedder's {q.get('embedder_params') or 0:,}, "
              f"trained in {q['train_seconds']:.0f} s), {q['n_test']} test queries:")
        print(f"{'':<30}{'R@1':>8}{'R@10':>8}{'nDCG@10':>9}")
        for k in ("test_dense_before", "test_dense_after_train_only", "test_dense_after", "test_hybrid_before", "test_hybrid_after"):
            m = q[k]
            print(f"{k.removeprefix('test_'):<30}{m['recall@1']:8.4f}{m['recall@10']:8.4f}{m['ndcg@10']:9.4f}")
        gain = q["test_dense_after"]["recall@1"] - q["test_dense_before"]["recall@1"]
        summary["query"] = {k: q.get(k) for k in ("chosen", "final", "train_pairs", "params", "embedder_params", "train_seconds", "n_test",
                                               "test_dense_before", "test_dense_after_train_only", "test_dense_after",
                                               "test_hybrid_before", "test_hybrid_after")}
        summary["query"]["dev"] = {"before": q["dev_before"], **{n: c["dev"] for n, c in q["candidates"].items()}}
        summary["targets"] = {"query_adapter_dense_r1_gain": round(gain, 4), "query_adapter_ok(>=+0.05)": gain >= 0.05}
    qa = {w: got[f"qa-{w}"]["rows"] for w in ("frozen", "lora", "prompt") if f"qa-{w}" in got}
    if qa:
        labels = list(next(iter(qa.values())))
        print("\nReader: EM / F1 / answer-in-context (share of answers that are a cited title)")
        print(f"{'':<22}" + "".join(f"{w:>30}" for w in qa))
        for lab in labels:
            cells = []
            for w in qa:
                r = qa[w].get(lab)
                aic = "-" if not r or r["aic"] is None else f"{r['aic']:.3f}"
                cells.append("-" if not r else f"{r['em']:.3f} / {r['f1']:.3f} / {aic} ({r['title_answers']:.2f})")
            print(f"{lab:<22}" + "".join(f"{c:>30}" for c in cells))
        summary["qa"] = qa
        t = summary.setdefault("targets", {})
        for w in ("lora", "prompt"):
            if w in qa and "frozen" in qa:
                t[f"{w}_wiki_k5_em"] = qa[w]["wiki k=5"]["em"]
                t[f"{w}_wiki_k5_ok(>=0.60)"] = qa[w]["wiki k=5"]["em"] >= 0.60
                t[f"{w}_general_k1_not_worse"] = qa[w]["general k=1"]["em"] >= qa["frozen"]["general k=1"]["em"]
                shift = max(abs(qa[w][f"{s} closed-book"]["em"] - qa["frozen"][f"{s} closed-book"]["em"]) for s in ("wiki", "general"))
                t[f"{w}_closed_book_shift"] = round(shift, 4)
                t[f"{w}_closed_book_shift_ok(<0.02)"] = shift < 0.02
    for w in ("lora", "prompt"):
        if f"train-{w}" in got:
            tr = got[f"train-{w}"]
            print(f"{w}: {tr['trainable_params']:,} trainable of {tr['frozen_params']:,} frozen ({100 * tr['trainable_share']:.3f}%), "
                  f"{tr['steps']} steps x {args.grad_accum} examples, {tr['seconds']:.0f} s, best held-out loss "
                  f"{tr['best_valid_loss']}, stopped early {tr['stopped_early']}, base hash unchanged {tr['base_hash_unchanged']}")
            summary[f"train_{w}"] = {k: tr[k] for k in ("trainable_params", "frozen_params", "trainable_share", "steps",
                                                          "seconds", "best_valid_loss", "stopped_early", "base_hash_unchanged",
                                                          "examples", "history")}
            summary.setdefault("targets", {})[f"{w}_trainable_ok(<=1%)"] = tr["trainable_share"] <= 0.01
    if summary.get("targets"):
        print("targets:", json.dumps(summary["targets"]))
    return summary


def main() -> None:
    args = _args()
    print(f"args: {vars(args)}", flush=True)
    # Thread pinning before torch / faiss / BLAS load.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    phases = list(PHASES) if args.phase == "all" else ([] if args.phase == "report" else args.phase.split(","))
    bad = [p for p in phases if p not in PHASES]
    if bad:
        sys.exit(f"unknown phase(s) {bad}; use all, report or {', '.join(PHASES)}")
    if phases:
        from rag_lfm import KnowledgeBase

        kb = KnowledgeBase.open(args.index)
        print(f"index {args.index}: {len(kb)} chunks, embedder {kb.manifest['embedder']['name']} "
              f"({kb.manifest['embedder'].get('backend')}); machine {platform.machine()}, {os.cpu_count()} CPUs, "
              f"torch threads {torch.get_num_threads()}", flush=True)
        for p in phases:
            t = time.perf_counter()
            if p == "query":
                res = phase_query(args, kb)
            elif p.startswith("train-"):
                res = phase_train(args, kb, p.split("-", 1)[1])
            else:
                res = phase_qa(args, kb, p.split("-", 1)[1])
            res["phase_seconds"] = round(time.perf_counter() - t, 1)
            res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            # dev-split QA results sit beside the report's (test) ones, never in their place
            name = f"{p}-dev" if p.startswith("qa-") and args.qa_split == "dev" else p
            (out / f"{name}.json").write_text(json.dumps(res, indent=1, default=str))
    summary = report(args)
    if args.json:
        print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
