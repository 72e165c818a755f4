"""Reader overhead: our decoding loop against plain ``model.generate``, and batched against one-by-one.

1. tokens/s on the same prompt token ids, same model, greedy, batch 1, free decoding
   (no copy constraint, stop only at end of turn): ours vs ``model.generate`` (target >= 0.95x);
   the two are run alternately, prompt by prompt, so background load hits both alike.
2. answering 32 questions (in-context, k passages, the reader's default settings) in one
   batched call vs one call per question (target >= 3x throughput); the answers must match.

Prompts: held-out-free dev questions of the wiki-vital task, each with its own article and
k-1 random others as passages (no index needed: this measures the reader only).

Where the real weights cannot travel (the lent GPU), ``--random-weights CONFIG_DIR`` builds
the model from a config + tokenizer folder with random weights (same architecture, so the
same cost per token; answers are gibberish and their lengths vary), and ``--leads FILE``
reads the wiki-vital entries from a JSONL export instead of the package.
:mod:`benchmarks.bench_gpu` imports the functions below.

    python benchmarks/bench_reader_overhead.py --size S --json
    python benchmarks/bench_reader_overhead.py --device cuda --random-weights .gpu_carry/smollm2 \\
        --leads .gpu_carry/wiki_leads_2000.jsonl --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SIZES = {"S": (8, 32), "M": (16, 32), "L": (32, 64)}


def load_leads(path: str | None = None) -> list[dict[str, Any]]:
    """The wiki-vital entries: from a JSONL export (one ``{title, extract, description}`` per line) or the package."""
    if path is None:
        from rag_lfm.connectors.wiki import load_wiki_vital

        return load_wiki_vital()
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def make_inputs(n: int, k: int, entries: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """``n`` dev questions, each with its own article and ``k - 1`` random others as passages."""
    from rag_lfm.eval.qa import wiki_vital_task
    from rag_lfm.types import Hit

    by_title = {e["title"]: e for e in entries}
    titles = sorted(by_title)
    rng = random.Random(0)
    examples = wiki_vital_task(n, seed=0, split="dev", entries=entries)
    passages = []
    for e in examples:
        chosen = [e.id] + rng.sample(titles, k - 1)
        rng.shuffle(chosen)
        passages.append([Hit(i, t, 0.8 - 0.01 * i, by_title[t]["extract"], {"title": t}, "wiki-vital")
                         for i, t in enumerate(chosen)])
    return [e.question for e in examples], passages


def random_weights_model(config_dir: str | Path, out_dir: str | Path, *, seed: int = 0,
                         overrides: dict[str, Any] | None = None) -> str:
    """Save a causal LM with ``config_dir``'s config (+ ``overrides``) and tokenizer, weights random, to ``out_dir``.

    Saved in bfloat16 (what a GPU reader runs; half the bytes to write and read).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(config_dir)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    out = Path(out_dir)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    if (Path(config_dir) / "generation_config.json").exists():
        shutil.copy2(Path(config_dir) / "generation_config.json", out / "generation_config.json")
    return str(out)


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def bench_tokens(model_ref: str, questions: list[str], passages: list[list[Any]], *, device: str = "auto",
                 max_new_tokens: int = 16, max_passage_tokens: int = 64) -> dict[str, Any]:
    """Part 1: tokens/s of our loop vs ``model.generate`` on the same ids (free decoding, batch 1)."""
    import torch

    from rag_lfm.readers import TransformersReader

    free = TransformersReader(model_ref, device=device, max_new_tokens=max_new_tokens,
                              max_passage_tokens=max_passage_tokens, constrain="none", stop_at_newline=False,
                              candidates="none").warm_up()  # the decoding loop alone, as generate runs it
    model = free.model
    dev = free.device
    print(f"model {free.name} on {dev} ({free.dtype}), torch threads {torch.get_num_threads()}")
    ours_t = plain_t = 0.0
    ours_tok = plain_tok = 0
    free.generate(questions[0], passages[0])  # warm-up of both paths
    with torch.inference_mode():
        ids0 = torch.tensor([free.prompts.build(questions[0], passages[0]).ids], device=dev)
        model.generate(ids0, attention_mask=torch.ones_like(ids0), max_new_tokens=2, do_sample=False)
    _sync(dev)
    for n, (q, p) in enumerate(zip(questions, passages)):
        ids = torch.tensor([free.prompts.build(q, p).ids], device=dev)

        def ours() -> tuple[float, int]:
            t = time.perf_counter()
            a = free.generate(q, p)
            _sync(dev)
            return time.perf_counter() - t, a.generated_tokens + (a.finish_reason == "stop")  # generate counts the stop

        def plain() -> tuple[float, int]:
            t = time.perf_counter()
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                     do_sample=False)
            _sync(dev)
            return time.perf_counter() - t, out.shape[1] - ids.shape[1]

        # Alternate which side meets a prompt first: a first call on a new shape can cost more.
        (ot, on), (pt, pn) = (ours(), plain()) if n % 2 == 0 else tuple(reversed((plain(), ours())))
        ours_t, ours_tok, plain_t, plain_tok = ours_t + ot, ours_tok + on, plain_t + pt, plain_tok + pn
    ours_tps, plain_tps = ours_tok / ours_t, plain_tok / plain_t
    print(f"\n{'':<28}{'ours':>10}{'generate':>10}{'ratio':>8}")
    print(f"{'tokens generated':<28}{ours_tok:>10}{plain_tok:>10}")
    print(f"{'tokens/s (prefill included)':<28}{ours_tps:>10.2f}{plain_tps:>10.2f}{ours_tps / plain_tps:>8.2f}")
    return {"ours_tokens_per_s": ours_tps, "generate_tokens_per_s": plain_tps, "ours_over_generate": ours_tps / plain_tps,
            "ours_tokens": ours_tok, "generate_tokens": plain_tok, "n_generate": len(questions),
            "device": dev, "dtype": free.dtype}


def bench_batching(model_ref: str, questions: list[str], passages: list[list[Any]], *, k: int, device: str = "auto",
                   max_new_tokens: int = 16, max_passage_tokens: int = 64, warm_up: bool = False) -> dict[str, Any]:
    """Part 2: ``len(questions)`` questions in one ``generate_batch`` vs one ``generate`` each (reader defaults)."""
    from rag_lfm.readers import TransformersReader

    n = len(questions)
    reader = TransformersReader(model_ref, device=device, max_new_tokens=max_new_tokens,
                                max_passage_tokens=max_passage_tokens, batch_size=n).warm_up()
    if warm_up:  # first CUDA calls of a shape allocate and pick kernels: not what is measured
        reader.generate_batch(questions[:2], passages[:2])
        reader.generate(questions[0], passages[0])
    _sync(reader.device)
    t = time.perf_counter()
    single = [reader.generate(q, p) for q, p in zip(questions, passages)]
    single_t = time.perf_counter() - t
    t = time.perf_counter()
    batched = reader.generate_batch(questions, passages)
    batch_t = time.perf_counter() - t
    same = sum(a.text == b.text for a, b in zip(single, batched))
    single_tok, batch_tok = sum(a.generated_tokens for a in single), sum(a.generated_tokens for a in batched)
    print(f"\n{'':<28}{'batched':>10}{'one-by-one':>12}{'ratio':>8}")
    print(f"{'questions/s (in-context k=' + str(k) + ')':<28}{n / batch_t:>10.2f}{n / single_t:>12.2f}"
          f"{single_t / batch_t:>8.2f}")
    print(f"{'tokens generated':<28}{batch_tok:>10}{single_tok:>12}")
    print(f"identical answers: {same}/{n}")
    return {"batched_q_per_s": n / batch_t, "single_q_per_s": n / single_t, "batched_over_single": single_t / batch_t,
            "identical_answers": same, "n_batch": n, "batched_tokens": batch_tok, "single_tokens": single_tok,
            "device": reader.device, "dtype": reader.dtype}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--random-weights", metavar="CONFIG_DIR", default=None,
                    help="build the model from this config + tokenizer folder with random weights (ignores --model)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda ...")
    ap.add_argument("--leads", default=None, help="wiki-vital entries as JSONL (default: the installed package)")
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

    import tempfile

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    questions, passages = make_inputs(max(n_gen, n_batch), args.k, load_leads(args.leads))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.random_weights:
            model = random_weights_model(args.random_weights, Path(tmp) / "random-model")
        common = {"device": args.device, "max_new_tokens": args.max_new_tokens, "max_passage_tokens": args.max_passage_tokens}
        tokens = bench_tokens(model, questions[:n_gen], passages[:n_gen], **common)
        batching = bench_batching(model, questions[:n_batch], passages[:n_batch], k=args.k,
                                  warm_up=str(tokens["device"]).startswith("cuda"), **common)
    if args.json:
        print(json.dumps({"args": vars(args), **{k: v for k, v in tokens.items() if k != "n_generate"}, **batching}))


if __name__ == "__main__":
    main()
