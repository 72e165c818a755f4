"""Reader overhead: our decoding loop against plain ``model.generate``, and batched against one-by-one.

1. tokens/s on the same prompt token ids, same model, greedy, batch 1, free decoding
   (no copy constraint, stop only at end of turn): ours vs ``model.generate`` (target >= 0.95x);
   the two are run alternately, prompt by prompt, so background load hits both alike.
2. answering 32 questions (in-context, k passages, the reader's default settings) in one
   batched call vs one call per question (target >= 3x throughput); the answers must match.

Prompts: held-out-free dev questions of the wiki-vital task, each with its own article and
k-1 random others as passages (no index needed: this measures the reader only).

    python benchmarks/bench_reader_overhead.py --size S --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SIZES = {"S": (8, 32), "M": (16, 32), "L": (32, 64)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--size", choices=sorted(SIZES), default="S", help="(prompts for part 1, questions for part 2)")
    ap.add_argument("--n-generate", type=int, default=None, help="prompts for part 1")
    ap.add_argument("--n-batch", type=int, default=None, help="questions for part 2 (the issue: 32)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--max-passage-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_gen, n_batch = SIZES[args.size]
    n_gen, n_batch = args.n_generate or n_gen, args.n_batch or n_batch
    print(f"args: {vars(args)} n_generate={n_gen} n_batch={n_batch}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rag_lfm.connectors.wiki import load_wiki_vital
    from rag_lfm.eval.qa import wiki_vital_task
    from rag_lfm.readers import TransformersReader
    from rag_lfm.types import Hit

    entries = {e["title"]: e for e in load_wiki_vital()}
    titles = sorted(entries)
    rng = random.Random(0)
    examples = wiki_vital_task(max(n_gen, n_batch), seed=0, split="dev")
    passages = []
    for e in examples:
        chosen = [e.id] + rng.sample(titles, args.k - 1)
        rng.shuffle(chosen)
        passages.append([Hit(i, t, 0.8 - 0.01 * i, entries[t]["extract"], {"title": t}, "wiki-vital")
                         for i, t in enumerate(chosen)])
    questions = [e.question for e in examples]

    # -- 1. tokens/s: ours vs model.generate on the same ids --------------------------------
    free = TransformersReader(args.model, max_new_tokens=args.max_new_tokens, max_passage_tokens=args.max_passage_tokens,
                              constrain="none", stop_at_newline=False).warm_up()
    model = free.model
    print(f"model {free.name} on {free.device} ({free.dtype}), torch threads {torch.get_num_threads()}")
    ours_t = plain_t = 0.0
    ours_tok = plain_tok = 0
    free.generate(questions[0], passages[0])  # warm-up of both paths
    with torch.inference_mode():
        ids0 = torch.tensor([free.prompts.build(questions[0], passages[0]).ids])
        model.generate(ids0, attention_mask=torch.ones_like(ids0), max_new_tokens=2, do_sample=False)
    for q, p in zip(questions[:n_gen], passages[:n_gen]):
        ids = torch.tensor([free.prompts.build(q, p).ids])
        t = time.perf_counter()
        a = free.generate(q, p)
        ours_t += time.perf_counter() - t
        ours_tok += a.generated_tokens + (a.finish_reason == "stop")  # count the stop token, as generate does
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False)
        plain_t += time.perf_counter() - t
        plain_tok += out.shape[1] - ids.shape[1]
    ours_tps, plain_tps = ours_tok / ours_t, plain_tok / plain_t
    print(f"\n{'':<28}{'ours':>10}{'generate':>10}{'ratio':>8}")
    print(f"{'tokens generated':<28}{ours_tok:>10}{plain_tok:>10}")
    print(f"{'tokens/s (prefill included)':<28}{ours_tps:>10.2f}{plain_tps:>10.2f}{ours_tps / plain_tps:>8.2f}")

    # -- 2. batched vs one by one ---------------------------------------------------------------
    reader = TransformersReader(args.model, max_new_tokens=args.max_new_tokens,
                                max_passage_tokens=args.max_passage_tokens, batch_size=n_batch).warm_up()
    qs, ps = questions[:n_batch], passages[:n_batch]
    t = time.perf_counter()
    single = [reader.generate(q, p) for q, p in zip(qs, ps)]
    single_t = time.perf_counter() - t
    t = time.perf_counter()
    batched = reader.generate_batch(qs, ps)
    batch_t = time.perf_counter() - t
    same = sum(a.text == b.text for a, b in zip(single, batched))
    print(f"\n{'':<28}{'batched':>10}{'one-by-one':>12}{'ratio':>8}")
    print(f"{'questions/s (in-context k=' + str(args.k) + ')':<28}{n_batch / batch_t:>10.2f}{n_batch / single_t:>12.2f}"
          f"{single_t / batch_t:>8.2f}")
    print(f"identical answers: {same}/{n_batch}")
    if args.json:
        print(json.dumps({
            "args": vars(args), "ours_tokens_per_s": ours_tps, "generate_tokens_per_s": plain_tps,
            "ours_over_generate": ours_tps / plain_tps, "ours_tokens": ours_tok, "generate_tokens": plain_tok,
            "batched_q_per_s": n_batch / batch_t, "single_q_per_s": n_batch / single_t,
            "batched_over_single": single_t / batch_t, "identical_answers": same, "n_batch": n_batch,
        }))


if __name__ == "__main__":
    main()
