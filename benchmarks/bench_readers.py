"""Reader backends side by side: transformers, llama.cpp, and the OpenAI client against `rag-lfm serve`.

Per reader, on the same questions and the same retrieved passages:
EM on the built-in wiki-vital QA task (test split) and on the general dev set
(benchmarks/data/general_dev.jsonl, when present), seconds per question, decode
tokens/s (a raw 64-token greedy completion) and first-token latency (the first piece
of a streamed in-context answer, prompt processing included).

Then the serving target: `rag-lfm serve` answers per second (the models loaded once,
answering /ask over HTTP) against one `rag-lfm ask` process per question (every call
loads the index, the embedder and the reader again); target >= 10x. `--serve-readers` measures it
for each reader named (`serve --reader X` against `ask --reader X`), both with every other CLI default
(what a user types), or with `--serve-k K` at k=K and the EM rows' token limits.

The readers use the same model, SmolLM2-135M-Instruct: transformers (float32, the
converted GGUF), llama.cpp (the packaged Q4_1 GGUF), and OpenAIReader over HTTP to a
`rag-lfm serve` process serving the transformers reader. OpenAIReader decodes freely
(an endpoint gives no logits, so no copy constraint and no rescoring); the row
``transformers-free`` is the same model decoding the same way in process, so the gap
between it and ``openai->serve`` is what HTTP costs, and the gap between
``transformers`` and ``transformers-free`` is what the logits buy.

    python benchmarks/bench_readers.py --size S                # 20 questions, all readers
    python benchmarks/bench_readers.py --size L --json         # last stdout line: one JSON object
    python benchmarks/bench_readers.py --readers llamacpp,transformers --strategy replug
    python benchmarks/bench_readers.py --readers "" --serve-readers transformers,llamacpp   # the serving target only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"S": (20, 3), "M": (100, 5), "L": (300, 10)}  # questions, and `rag-lfm ask` processes timed
READERS = "transformers,transformers-free,llamacpp,openai"
TOKENS_PROMPT = "Write a short paragraph about the history of Paris, France."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reader_cli_args(args, kind: str) -> list[str]:
    """The `--reader` options of `rag-lfm ask` / `serve` for one reader kind (same model, same limits)."""
    opts = ["--reader", kind, "--max-new-tokens", str(args.max_new_tokens), "--max-passage-tokens", str(args.max_passage_tokens)]
    if kind == "llamacpp" and args.gguf:
        opts += ["--model", args.gguf]
    return opts


def serving_args(args, kind: str) -> list[str]:
    """The options both sides of the serving target get: none but the reader (every default, as a user
    types `rag-lfm ask INDEX Q` and `rag-lfm serve INDEX`), or with ``--serve-k`` the EM rows' settings."""
    if args.serve_k is None:
        return ["--reader", kind] + (["--model", args.gguf] if kind == "llamacpp" and args.gguf else [])
    return ["-k", str(args.serve_k), *reader_cli_args(args, kind)]


def start_server(args, port: int, options: list[str]) -> subprocess.Popen:
    """`rag-lfm serve INDEX *options` as its own process; returns once /health answers."""
    import httpx

    cmd = [sys.executable, "-m", "rag_lfm.cli", "serve", args.index, "--port", str(port), *options, "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"rag-lfm serve did not start: {proc.stderr.read()[-2000:] if proc.stderr else ''}")
        time.sleep(0.3)


def make_reader(name: str, args, url: str | None):
    common = {"max_new_tokens": args.max_new_tokens, "max_passage_tokens": args.max_passage_tokens}
    if name == "transformers":
        from rag_lfm.readers import TransformersReader

        return TransformersReader(args.model, **common).warm_up()
    if name == "transformers-free":
        from rag_lfm.readers import TransformersReader

        return TransformersReader(args.model, constrain="none", candidates="none", **common).warm_up()
    if name == "llamacpp":
        from rag_lfm.readers.llamacpp_reader import LlamaCppReader

        return LlamaCppReader(args.gguf or args.model, n_threads=args.threads, **common).warm_up()
    if name == "openai":
        from rag_lfm.readers.openai_reader import OpenAIReader

        # completions API + the model's tokenizer: the prompt a local reader would see, continued remotely
        return OpenAIReader("served", base_url=f"{url}/v1", api="completions", tokenizer=args.model,
                            context_window=8192, **common).warm_up()
    raise SystemExit(f"unknown reader {name!r}; choose from {READERS}")


def tokens_per_s(reader, n_tokens: int = 64) -> float:
    reader.complete(TOKENS_PROMPT, max_tokens=4)  # warm
    start = time.perf_counter()
    c = reader.complete(TOKENS_PROMPT, max_tokens=n_tokens)
    return c.completion_tokens / (time.perf_counter() - start)


def first_token_s(reader, questions, passages, strategy: str) -> float:
    times = []
    for q, p in zip(questions, passages):
        start = time.perf_counter()
        it = iter(reader.stream(q, p, strategy=strategy))
        next(it, None)
        times.append(time.perf_counter() - start)
        close = getattr(it, "close", None)
        if close is not None:
            close()
    return sorted(times)[len(times) // 2]


def serve_vs_processes(args, url: str, questions: list[str], n_proc: int, kind: str = "transformers") -> dict:
    import httpx

    # one `rag-lfm ask` process per question: loads everything each time
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    for q in questions[:n_proc]:
        subprocess.run([sys.executable, "-m", "rag_lfm.cli", "ask", args.index, q, "--json", *serving_args(args, kind)],
                       env=env, check=True, capture_output=True)
    proc_rate = n_proc / (time.perf_counter() - start)
    n_http = max(n_proc, min(len(questions), 50))

    def post(q: str) -> None:
        httpx.post(f"{url}/ask", json={"question": q}, timeout=600).raise_for_status()  # the server's k

    rates, batches = {}, {}
    for clients in (1, 8):  # one client at a time, then 8 at once (the server batches waiting questions)
        before = httpx.get(f"{url}/health").json()["answer_batches"]
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            list(pool.map(post, questions[:n_http]))
        rates[clients] = n_http / (time.perf_counter() - start)
        batches[clients] = httpx.get(f"{url}/health").json()["answer_batches"] - before  # how the server grouped them
    return {"reader": kind, "options": serving_args(args, kind), "ask_processes": n_proc, "ask_answers_per_s": proc_rate, "serve_requests": n_http,
            "serve_answers_per_s_1_client": rates[1], "serve_answers_per_s": rates[8], "serve_batches_8_clients": batches[8],
            "ratio_1_client": rates[1] / proc_rate, "ratio": rates[8] / proc_rate,
            "ratio_ok(>=10)": rates[8] / proc_rate >= 10}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--index", default="indexes/wiki-vital")
    ap.add_argument("--size", choices=sorted(SIZES), default="M", help="S=20, M=100, L=300 questions")
    ap.add_argument("--n", type=int, default=None, help="questions (overrides --size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test", choices=["test", "dev"])
    ap.add_argument("--general", default=str(ROOT / "benchmarks/data/general_dev.jsonl"),
                    help="the general QA dev set (JSONL); skipped with a note when absent")
    ap.add_argument("--readers", default=READERS, help=f"comma list from {READERS}")
    ap.add_argument("--strategy", default="in-context", choices=["in-context", "replug"])
    ap.add_argument("-k", "--k", type=int, default=3)
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--gguf", default=None, help="llama.cpp model (default: the packaged SmolLM2 GGUF)")
    ap.add_argument("--max-passage-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch / llama.cpp threads (default: theirs)")
    ap.add_argument("--no-serve-target", action="store_true", help="skip the serve vs one-process-per-question run")
    ap.add_argument("--serve-readers", default="transformers",
                    help="comma list: the serving target is measured for each (`serve --reader X` vs `ask --reader X`)")
    ap.add_argument("--serve-k", type=int, default=None,
                    help="serving target at this k with the EM rows' token limits (default: every CLI default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.n or SIZES[args.size][0]
    n_proc = SIZES[args.size][1]
    print(f"args: {vars(args)} n={n}")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rag_lfm.eval.qa import evaluate_qa, load_qa_jsonl, wiki_vital_task
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.open(args.index)
    print(f"index: {args.index}, {len(kb)} chunks; machine: {platform.machine()}, {os.cpu_count()} CPUs")
    tasks = {"wiki-vital": wiki_vital_task(n, seed=args.seed, split=args.split, query="description")}
    general = Path(args.general)
    notes = []
    if general.exists():
        tasks["general-dev"] = load_qa_jsonl(general)[:n]
    else:
        notes.append(f"general dev set {general} not found: its EM column is skipped")
        print("note:", notes[-1])
    names = [r.strip() for r in args.readers.split(",") if r.strip()]
    server = None
    url = None
    if "openai" in names:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        t = time.perf_counter()
        server = start_server(args, port, ["-k", str(args.k), *reader_cli_args(args, "transformers")])
        print(f"rag-lfm serve up in {time.perf_counter() - t:.1f} s at {url}")
    rows = []
    t0 = time.perf_counter()
    try:
        for name in names:
            try:
                reader = make_reader(name, args, url)
            except Exception as exc:  # e.g. llama_cpp missing: say so, keep the other rows
                notes.append(f"{name}: skipped ({type(exc).__name__}: {exc})")
                print("note:", notes[-1])
                continue
            row = {"reader": name, "model": getattr(reader, "name", name), "strategy": args.strategy, "k": args.k}
            for task, examples in tasks.items():
                rep = evaluate_qa(kb, reader, examples, strategy=args.strategy, k=args.k, progress=False)
                row[f"{task}_em"] = rep.exact_match
                row[f"{task}_f1"] = rep.f1
                row[f"{task}_s_per_q"] = rep.seconds_per_question
                row[f"{task}_n"] = rep.n
            row["tokens_per_s"] = tokens_per_s(reader)
            ex = tasks["wiki-vital"][:5]
            row["first_token_s"] = first_token_s(reader, [e.question for e in ex],
                                                 kb.search_batch([e.query for e in ex], args.k), args.strategy)
            rows.append(row)
            print(json.dumps(row), flush=True)
        targets = []
        if not args.no_serve_target:
            questions = [e.question for e in tasks["wiki-vital"]]
            for kind in [r.strip() for r in args.serve_readers.split(",") if r.strip()]:
                if server is not None:  # one server at a time
                    server.send_signal(signal.SIGINT)
                    server.wait(timeout=60)
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                server = start_server(args, port, serving_args(args, kind))
                targets.append(serve_vs_processes(args, url, questions, n_proc, kind))
                print("serve target:", json.dumps(targets[-1]), flush=True)
    finally:
        if server is not None:
            server.send_signal(signal.SIGINT)
            server.wait(timeout=60)
    total = time.perf_counter() - t0

    cols = [("wiki-vital_em", "EM wiki"), ("general-dev_em", "EM general"), ("wiki-vital_s_per_q", "s/q"),
            ("tokens_per_s", "tok/s"), ("first_token_s", "1st tok s")]
    print(f"\n{'reader':<20}" + "".join(f"{h:>12}" for _, h in cols))
    for r in rows:
        cells = [f"{r[c]:12.3f}" if isinstance(r.get(c), float) else f"{'-':>12}" for c, _ in cols]
        print(f"{r['reader']:<20}" + "".join(cells))
    for target in targets:
        print(f"\nserve {' '.join(target['options'])}: {target['serve_answers_per_s']:.2f} answers/s with 8 clients "
              f"in {target['serve_batches_8_clients']} batches "
              f"({target['serve_answers_per_s_1_client']:.2f} with one) vs one `rag-lfm ask` process per question "
              f"{target['ask_answers_per_s']:.3f} answers/s: {target['ratio']:.1f}x "
              f"({target['ratio_1_client']:.1f}x with one client; target >= 10x)")
    for note in notes:
        print("note:", note)
    print(f"total {total:.0f} s")
    if args.json:
        print(json.dumps({"n": n, "args": vars(args), "total_s": total, "rows": rows, "serve_targets": targets,
                          "notes": notes}))


if __name__ == "__main__":
    main()
