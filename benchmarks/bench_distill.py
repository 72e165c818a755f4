"""Distillation into smaller, cheaper readers (issue 15): teacher vs students on held-out wiki-vital questions.

Two students, each trained twice -- with knowledge distillation (``kl``: token-level KL to the teacher's
cached top-k distributions) and as the control without KD (``gold``: cross-entropy on the gold answers):

- smaller: the teacher's reader configuration (in-context k=1, the library's default) with a student that
  keeps 15 of SmolLM2-135M's 30 decoder layers, initialised from the teacher's weights;
- one-pass: a student of REPLUG k=5 (5 forward passes per question, mixed) that reads the same 5 passages
  in one in-context prompt, trained on REPLUG's mixed distribution.

Training questions come from the ``train`` split of the wiki-vital task (documents never in ``test``); the
figures are measured on the ``test`` split, fixed seed, every model in this one process, one after another.
Targets (issue 15): the smaller student keeps >= 0.9x the teacher's EM at >= 1.8x its speed; the one-pass
student keeps >= 0.9x REPLUG k=5's EM at <= 0.4x its cost; KD beats the control in both.

    python benchmarks/bench_distill.py --threads 1 --json
    python benchmarks/bench_distill.py --stage train --only small --threads 1    # train ahead (resumable), then
    python benchmarks/bench_distill.py --threads 1 --json                        # measure: reuses what is trained

Everything trained or cached lives under --work (teacher caches, checkpoints, student folders): a rerun
resumes there instead of recomputing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SIZES = {"S": (64, 60), "M": (128, 100), "L": (300, 300)}  # (training questions, test questions)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--work", default="benchmarks/out/distill", help="teacher caches, checkpoints, students")
    ap.add_argument("--size", choices=sorted(SIZES), default="S", help="S=64/60, M=128/100, L=300/300 train/test questions")
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--n-test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct", help="the teacher's model (a folder or known name)")
    ap.add_argument("--small-teacher", default="in-context:1")
    ap.add_argument("--small-student", default="layers=15")
    ap.add_argument("--onepass-teacher", default="replug:5")
    ap.add_argument("--onepass-student", default="copy")
    ap.add_argument("--small-freeze", type=int, default=0, help="decoder layers of the smaller student kept frozen")
    ap.add_argument("--onepass-freeze", type=int, default=15, help="decoder layers of the one-pass student kept frozen")
    ap.add_argument("--losses", default="kl,gold", help="comma list: kl, seq, gold (gold is the no-KD control)")
    ap.add_argument("--max-passage-tokens", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--onepass-n-train", type=int, default=None,
                    help="training questions of the one-pass students (the first N of --n-train; default all)")
    ap.add_argument("--onepass-epochs", type=int, default=None, help="epochs of the one-pass students (default --epochs)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--top-k", type=int, default=32)
    ap.add_argument("--stage", choices=["all", "train"], default="all", help="train: teacher caches and students only")
    ap.add_argument("--only", choices=["small", "onepass", "both"], default="both")
    ap.add_argument("--reference", action="store_true", help="also time the untrained teacher in-context with k=5")
    ap.add_argument("--forward-reps", type=int, default=7, help="interleaved prefills of teacher vs smaller student (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n_train, n_test = SIZES[args.size]
    n_train, n_test = args.n_train or n_train, args.n_test or n_test
    print(f"args: {vars(args)} n_train={n_train} n_test={n_test}", flush=True)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from rag_lfm.distill import TrainConfig, distill, load_card
    from rag_lfm.eval.qa import evaluate_qa, wiki_vital_task
    from rag_lfm.knowledge_base import KnowledgeBase
    from rag_lfm.readers import TransformersReader

    kb = KnowledgeBase.open(args.index)
    print(f"index: {args.index}, {len(kb)} chunks; machine: {platform.machine()} {platform.processor() or ''}, "
          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}", flush=True)
    train = wiki_vital_task(n_train, seed=args.seed, split="train")
    test = wiki_vital_task(n_test, seed=args.seed, split="test")
    assert not {e.id for e in train} & {e.id for e in test}
    reader_kw = {"max_passage_tokens": args.max_passage_tokens, "device": "cpu", "dtype": "float32"}
    teacher = TransformersReader(args.model, **reader_kw).warm_up()
    fingerprint = teacher.weights_fingerprint()
    work = Path(args.work)
    groups = {"small": (args.small_teacher, args.small_student), "onepass": (args.onepass_teacher, args.onepass_student)}
    freeze = {"small": args.small_freeze, "onepass": args.onepass_freeze}
    if args.only != "both":
        groups = {args.only: groups[args.only]}
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    trained: dict[tuple[str, str], dict] = {}
    for group, (t_spec, s_spec) in groups.items():
        for loss in losses:
            out = work / f"{group}-{loss}"
            timing = work / f"{group}-{loss}.timing.json"
            epochs = args.onepass_epochs if group == "onepass" and args.onepass_epochs else args.epochs
            config = TrainConfig(loss=loss, temperature=args.temperature, epochs=epochs, lr=args.lr,
                                 batch_size=args.batch_size, seed=args.seed, checkpoint_every=8,
                                 freeze_layers=freeze[group])
            t0 = time.perf_counter()
            examples = train[: args.onepass_n_train] if group == "onepass" and args.onepass_n_train else train
            rep = distill(kb, out=out, teacher=t_spec, student=s_spec, examples=examples, teacher_reader=teacher,
                          work=work / f"{group}.work", top_k=args.top_k, config=config, progress=not args.json)
            took = time.perf_counter() - t0
            before = json.loads(timing.read_text()) if timing.exists() else {"seconds": 0.0}
            spent = before["seconds"] + (took if rep.resumed_from < rep.steps or rep.cache["computed"] else 0.0)
            timing.write_text(json.dumps({"seconds": spent}))
            trained[(group, loss)] = {"report": rep.to_dict(), "train_seconds": spent}
            print(f"{group:<8} {loss:<5} {t_spec} -> {s_spec}: {rep.parameters:,} params, {rep.steps} steps on "
                  f"{rep.examples} questions (resumed at {rep.resumed_from}), cache {rep.cache}, "
                  f"KL {rep.kl_before:.4f} -> {rep.kl_after:.4f}, {spent:.0f} s in all", flush=True)
    if teacher.weights_fingerprint() != fingerprint:
        raise SystemExit("the teacher's weights changed")
    if args.stage == "train":
        return

    rows: list[dict] = []

    def measure(label: str, reader: TransformersReader, strategy: str, k: int, group: str, role: str) -> None:
        reader.warm_up()
        # first use decodes the vocabulary's pieces once; keep that out of the timed run
        reader.generate_batch([train[0].question], [kb.search_batch([train[0].query], max(k, 1))[0]], strategy=strategy)
        rep = evaluate_qa(kb, reader, test, strategy=strategy, k=k, progress=not args.json)
        reading = sum(r["latency_s"] for r in rep.records)
        gen = sum(r["generated_tokens"] for r in rep.records)
        prompt = sum(r["prompt_tokens"] for r in rep.records)
        row = {"model": label, "group": group, "role": role, "strategy": strategy, "k": k,
               "params": sum(p.numel() for p in reader.model.parameters()),
               "em": rep.exact_match, "f1": rep.f1, "contains": rep.contains, "in_context": rep.answer_in_context,
               "s_per_q": rep.seconds_per_question, "gen_tok_s": gen / reading if reading else 0.0,
               "prompt_tok_s": prompt / reading if reading else 0.0, "n": rep.n}
        rows.append(row)
        print(f"{label:<24} {strategy:<10} k={k}  EM {row['em']:.3f}  F1 {row['f1']:.3f}  {row['s_per_q']:.3f} s/q", flush=True)

    t_all = time.perf_counter()
    if "small" in groups:
        spec = args.small_teacher.split(":")
        measure(f"teacher {args.small_teacher}", teacher, spec[0], int(spec[1]) if len(spec) > 1 else 1, "small", "teacher")
        for loss in losses:
            card = load_card(work / f"small-{loss}")
            student = TransformersReader(str(work / f"small-{loss}"), **reader_kw)
            measure(f"{args.small_student} {loss}", student, card["strategy"], card["k"], "small", loss)
            del student
    if "onepass" in groups:
        spec = args.onepass_teacher.split(":")
        k = int(spec[1]) if len(spec) > 1 else 5
        measure(f"teacher {args.onepass_teacher}", teacher, spec[0], k, "onepass", "teacher")
        if args.reference:
            measure(f"untrained in-context:{k}", teacher, "in-context", k, "onepass", "untrained")
        for loss in losses:
            card = load_card(work / f"onepass-{loss}")
            student = TransformersReader(str(work / f"onepass-{loss}"), **reader_kw)
            measure(f"one-pass {args.onepass_student} {loss}", student, card["strategy"], card["k"], "onepass", loss)
            del student
    total = time.perf_counter() - t_all

    # Load-robust model cost: the same prompts through the teacher and the smaller student, interleaved,
    # median of several prefills (the machine is shared; end-to-end s/q drifts with other jobs' load).
    forward: dict[str, float] = {}
    small_dir = work / f"small-{losses[0]}"
    if args.forward_reps and (small_dir / "distill.json").exists():
        import statistics

        from transformers import AutoModelForCausalLM

        student_model = AutoModelForCausalLM.from_pretrained(small_dir, dtype=torch.float32).eval()
        k = load_card(small_dir)["k"]
        hits = kb.search_batch([e.query for e in test[:4]], k)
        prompt_ids = [teacher.prompts.build(e.question, h).ids for e, h in zip(test[:4], hits)]
        width = max(len(r) for r in prompt_ids)
        ids = torch.tensor([[teacher.tokenizer.pad_token_id] * (width - len(r)) + r for r in prompt_ids])
        mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in prompt_ids])[:, None]).long()
        times: dict[str, list[float]] = {"teacher": [], "student": []}
        with torch.inference_mode():
            for _ in range(args.forward_reps):
                for name, m in (("teacher", teacher.model), ("student", student_model)):
                    t0 = time.perf_counter()
                    m(input_ids=ids, attention_mask=mask, logits_to_keep=1)
                    times[name].append(time.perf_counter() - t0)
        forward = {f"{name}_prefill_s": statistics.median(v) for name, v in times.items()}
        forward["prefill_speedup"] = forward["teacher_prefill_s"] / forward["student_prefill_s"]
        forward["prompt_tokens"] = int(mask.sum())
        print(f"prefill of {forward['prompt_tokens']} prompt tokens (4 test prompts, median of {args.forward_reps}, "
              f"interleaved): teacher {forward['teacher_prefill_s']:.3f} s, {small_dir.name} "
              f"{forward['student_prefill_s']:.3f} s, speed-up {forward['prefill_speedup']:.2f}x", flush=True)

    print(f"\n{'model':<26}{'strategy':<14}{'params':>12}{'EM':>7}{'F1':>7}{'in-ctx':>8}{'s/q':>8}{'gen tok/s':>10}"
          f"{'prompt tok/s':>13}{'EM ratio':>9}{'speed x':>8}")
    targets: dict[str, object] = {}
    for group in groups:
        base = next(r for r in rows if r["group"] == group and r["role"] == "teacher")
        for r in (x for x in rows if x["group"] == group):
            r["em_ratio"] = r["em"] / base["em"] if base["em"] else 0.0
            r["speedup"] = base["s_per_q"] / r["s_per_q"]
            r["cost_ratio"] = r["s_per_q"] / base["s_per_q"]
            aic = "-" if r["in_context"] is None else f"{r['in_context']:.3f}"
            print(f"{r['model']:<26}{r['strategy'] + ' k=' + str(r['k']):<14}{r['params']:>12,}{r['em']:>7.3f}{r['f1']:>7.3f}"
                  f"{aic:>8}{r['s_per_q']:>8.3f}{r['gen_tok_s']:>10.1f}{r['prompt_tok_s']:>13.0f}{r['em_ratio']:>9.2f}"
                  f"{r['speedup']:>8.2f}")
        kd = next((x for x in rows if x["group"] == group and x["role"] == "kl"), None)
        ctrl = next((x for x in rows if x["group"] == group and x["role"] == "gold"), None)
        if kd is not None:
            if group == "small":
                targets["small_em_ratio"] = round(kd["em_ratio"], 3)
                targets["small_speedup"] = round(kd["speedup"], 3)
                targets["small_ok(em>=0.9x,speed>=1.8x)"] = kd["em_ratio"] >= 0.9 and kd["speedup"] >= 1.8
            else:
                targets["onepass_em_ratio"] = round(kd["em_ratio"], 3)
                targets["onepass_cost_ratio"] = round(kd["cost_ratio"], 3)
                targets["onepass_ok(em>=0.9x,cost<=0.4x)"] = kd["em_ratio"] >= 0.9 and kd["cost_ratio"] <= 0.4
            if ctrl is not None:
                targets[f"{group}_kd_em_minus_control"] = round(kd["em"] - ctrl["em"], 3)
                targets[f"{group}_kd_beats_control"] = kd["em"] > ctrl["em"]
    print("targets:", json.dumps(targets))
    print(f"measured in {total:.0f} s")
    if args.json:
        print(json.dumps({"args": vars(args), "n_train": n_train, "n_test": n_test, "rows": rows, "targets": targets,
                          "training": {f"{g}-{loss}": {"train_seconds": round(v["train_seconds"], 1),
                                                       "steps": v["report"]["steps"],
                                                       "kl_before": v["report"]["kl_before"],
                                                       "kl_after": v["report"]["kl_after"]}
                                       for (g, loss), v in trained.items()},
                          "forward": forward, "measure_seconds": round(total, 1)}, default=str))


if __name__ == "__main__":
    main()
