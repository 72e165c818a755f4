"""Retrieval-augmented QA with a frozen SmolLM2-135M on the built-in wiki-vital task.

Strategies side by side on the same held-out questions (test split, fixed seed):
closed-book (the peer: the same frozen model without retrieval), in-context k=1/3/5
and REPLUG k=5; exact match, token F1, answer-in-context rate, seconds per question.
Then the issue's targets: best retrieval-augmented EM >= closed-book EM + 0.30;
EM >= 0.8 x answer-in-context rate for the best strategy; REPLUG s/q <= 1.5 x in-context k=5.

The index must hold all 10,033 documents (`python -m rag_lfm.demo` builds indexes/wiki-vital).

    python benchmarks/bench_rag.py --size L            # 300 questions
    python benchmarks/bench_rag.py --n 50 --json       # last stdout line: one JSON object

Other QA sets and settings (how the defaults of issue 9 were chosen, on dev):

    python benchmarks/bench_rag.py --qa wiki,benchmarks/data/general_dev.jsonl --split dev --query question \
        --retriever hybrid-lead --strategies in-context:1:titles,in-context:1:none,replug:3:none --json

A strategy is ``name[:k[:candidates]]`` (candidates: titles, none; default: the reader's default).
``--retriever default`` is what ``ask`` uses without options (the index's recorded retriever).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SIZES = {"S": 50, "M": 150, "L": 300}
DEFAULT_STRATEGIES = "closed-book,in-context:1,in-context:3,in-context:5,replug:5"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--size", choices=sorted(SIZES), default="L", help="S=50, M=150, L=300 questions")
    ap.add_argument("--n", type=int, default=None, help="questions (overrides --size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", choices=["test", "dev", "train"])
    ap.add_argument("--query", default="description", choices=["description", "question"],
                    help="retrieval query: the description alone, or the full question")
    ap.add_argument("--qa", default="wiki",
                    help="comma list of QA sets: 'wiki' (the built-in task, --split/--n/--seed) or JSONL files")
    ap.add_argument("--retriever", default="dense",
                    help="dense (MiniLM only), default (the index's own retriever, what ask uses), or a method of "
                         "`rag-lfm eval retrieval` (hybrid, hybrid-weighted, hybrid-lead, ...)")
    ap.add_argument("--strategies", default=DEFAULT_STRATEGIES, help="comma list of strategy[:k]")
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--max-passage-tokens", type=int, default=None, help="default: the reader's")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the reader's")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--constrain", default=None, choices=["copy", "none"], help="default: the reader's")
    ap.add_argument("--variants", default="{}",
                    help="JSON object or list of objects: TransformersReader arguments, each variant run with every "
                         "strategy (e.g. '[{\"answer_starts\": 1}, {\"answer_starts\": 4, \"drop_echoes\": true}]')")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n or SIZES[args.size]
    print(f"args: {vars(args)} n={n}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rag_lfm.eval.qa import evaluate_qa, load_qa_jsonl, wiki_vital_task
    from rag_lfm.knowledge_base import KnowledgeBase
    from rag_lfm.readers import TransformersReader

    kb = KnowledgeBase.open(args.index)
    print(f"index: {args.index}, {len(kb)} chunks; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    if args.retriever == "dense":
        source = kb
    elif args.retriever == "default":
        source = kb.retriever
    else:
        from rag_lfm.retrieval.cli import build_retriever

        source = build_retriever(kb, args.retriever)
    qa_sets = {}
    for name in args.qa.split(","):
        if name == "wiki":
            qa_sets[f"wiki-{args.split}"] = wiki_vital_task(n, seed=args.seed, split=args.split, query=args.query)
        else:
            qa_sets[os.path.basename(name).removesuffix(".jsonl")] = load_qa_jsonl(name)
    readers: dict[str, TransformersReader] = {}
    base = {k: v for k, v in {"max_new_tokens": args.max_new_tokens, "max_passage_tokens": args.max_passage_tokens,
                              "constrain": args.constrain}.items() if v is not None}
    variants = json.loads(args.variants)
    variants = [variants] if isinstance(variants, dict) else variants

    def reader_for(candidates: str, variant: dict) -> TransformersReader:
        key = json.dumps([candidates, variant], sort_keys=True)
        if key not in readers:
            extra = {"candidates": candidates} if candidates else {}
            readers[key] = TransformersReader(args.model, batch_size=args.batch_size, **{**base, **variant, **extra}).warm_up()
        return readers[key]

    r0 = reader_for("", variants[0])
    print(f"reader: {r0.name} on {r0.device} ({r0.dtype}), window {r0.context_window}")
    rows = []
    t0 = time.perf_counter()
    for set_name, examples in qa_sets.items():
        for variant in variants:
            for spec in args.strategies.split(","):
                name, k, candidates = (spec.split(":") + ["", ""])[:3]
                reader = reader_for(candidates, variant)
                rep = evaluate_qa(source, reader, examples, strategy=name, k=int(k or 5), progress=not args.json)
                label = ",".join(f"{a}={b}" for a, b in variant.items())
                rep.qa_set, rep.candidates, rep.variant = set_name, reader.candidates, label  # type: ignore[attr-defined]
                rows.append(rep)
                print(f"{set_name:<14} {reader.candidates:<7} {label:<34}", rep.row(), flush=True)
    total = time.perf_counter() - t0

    print(f"\n{'QA set':<16}{'strategy':<16}{'cands':<8}{'variant':<34}{'EM':>7}{'contains':>9}{'F1':>7}{'in-ctx':>8}"
          f"{'EM/in-ctx':>10}{'s/q':>8}{'EM-CB':>8}")
    for r in rows:
        cb = next((x for x in rows if x.strategy == "closed-book" and x.qa_set == r.qa_set and x.variant == r.variant), None)
        label = r.strategy if r.strategy == "closed-book" else f"{r.strategy} k={r.k}"
        aic = "-" if r.answer_in_context is None else f"{r.answer_in_context:.3f}"
        ratio = "-" if not r.answer_in_context else f"{r.exact_match / r.answer_in_context:.2f}"
        gain = "-" if cb is None or r is cb else f"{r.exact_match - cb.exact_match:+.3f}"
        print(f"{r.qa_set:<16}{label:<16}{r.candidates:<8}{r.variant:<34}{r.exact_match:7.3f}{r.contains:9.3f}{r.f1:7.3f}{aic:>8}"
              f"{ratio:>10}{r.seconds_per_question:8.3f}{gain:>8}")
    first = next(iter(qa_sets))
    rows_first = [r for r in rows if r.qa_set == first]
    cb = next((r for r in rows_first if r.strategy == "closed-book"), None)
    rag = [r for r in rows_first if r.strategy != "closed-book"]
    targets = {}
    if rag:
        best = max(rag, key=lambda r: r.exact_match)
        targets["best"] = f"{best.strategy} k={best.k}"
        if cb is not None:
            targets["rag_gain_over_closed_book"] = best.exact_match - cb.exact_match
            targets["rag_gain_ok(>=0.30)"] = best.exact_match - cb.exact_match >= 0.30
        if best.answer_in_context:
            targets["best_em_over_in_context"] = best.exact_match / best.answer_in_context
            targets["best_em_over_in_context_ok(>=0.8)"] = best.exact_match / best.answer_in_context >= 0.8
        rp = next((r for r in rag if r.strategy == "replug" and r.k == 5), None)
        ic5 = next((r for r in rag if r.strategy == "in-context" and r.k == 5), None)
        if rp and ic5:
            targets["replug_cost_over_in_context5"] = rp.seconds_per_question / ic5.seconds_per_question
            targets["replug_cost_ok(<=1.5)"] = rp.seconds_per_question / ic5.seconds_per_question <= 1.5
    print("targets:", json.dumps(targets))
    print(f"total {total:.0f} s")
    if args.json:
        print(json.dumps({"n": n, "args": vars(args), "total_s": total, "targets": targets,
                          "rows": [r.to_dict() | {"qa_set": r.qa_set, "candidates": r.candidates, "variant": r.variant}
                                   for r in rows]}))


if __name__ == "__main__":
    main()
