"""``rag-lfm ask`` and ``rag-lfm eval qa``: thin typer layers over :func:`ask` and :func:`evaluate_qa`.

Example (shell)::

    rag-lfm ask indexes/wiki-vital "Which painter founded Impressionism?" -k 3
    rag-lfm ask indexes/wiki-vital "..." --strategy replug -k 5 --json
    rag-lfm eval qa indexes/wiki-vital --builtin wiki-vital --n 100 --strategy in-context -k 1
    rag-lfm eval qa indexes/notes --data questions.jsonl --json
    rag-lfm ask indexes/wiki-vital "..." --reader llamacpp --model path/to/model.gguf
    rag-lfm ask indexes/wiki-vital "..." --reader openai --model qwen2.5 --base-url http://127.0.0.1:8080/v1
    rag-lfm serve indexes/wiki-vital --reader llamacpp --port 8000
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from rag_lfm.errors import RagLfmError

STRATEGY_HELP = "closed-book, in-context, replug or extractive."
READER_HELP = "transformers (a local model folder), llamacpp (a GGUF file) or openai (an OpenAI-compatible URL)."
MODEL_HELP = ("Reader model: a folder or known name (transformers), a .gguf file or known name (llamacpp), the served "
              "model's name (openai). Default: the packaged SmolLM2-135M-Instruct.")


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _reader(model: str | None, max_new_tokens: int | None, max_passage_tokens: int | None, device: str, dtype: str,
            constrain: str | None, *, kind: str = "transformers", base_url: str | None = None,
            api_key_env: str | None = None, api: str | None = None, tokenizer: str | None = None,
            candidates: str | None = None, answer_starts: int | None = None, adapter: str | None = None):
    """A reader from the CLI's options; options left unset (None) take the reader's own defaults, so the
    CLI and Python answer alike."""
    from rag_lfm.readers.registry import make_reader

    opts: dict = {"max_new_tokens": max_new_tokens, "max_passage_tokens": max_passage_tokens, "constrain": constrain,
                  "candidates": candidates, "answer_starts": answer_starts, "adapter": adapter}
    name = kind.strip().lower()
    if name == "transformers":
        opts.update(device=device, dtype=dtype)
    elif name == "openai":
        opts.update(base_url=base_url, api_key_env=api_key_env, api=api, tokenizer=tokenizer)
    given = {"--base-url": base_url, "--api-key-env": api_key_env, "--api": api, "--tokenizer": tokenizer}
    if name != "openai" and any(v is not None for v in given.values()):
        from rag_lfm.errors import ConfigError

        used = ", ".join(k for k, v in given.items() if v is not None)
        raise ConfigError(f"{used} apply to --reader openai only, not to --reader {kind}")
    return make_reader(kind, model, **opts)


ReaderOpt = Annotated[str, typer.Option("--reader", "-r", help=READER_HELP)]
BaseUrlOpt = Annotated[Optional[str], typer.Option(help="openai: the API root, e.g. http://127.0.0.1:8080/v1.")]
KeyEnvOpt = Annotated[Optional[str], typer.Option(help="openai: NAME of the environment variable holding the API key.")]
ApiOpt = Annotated[Optional[str], typer.Option(help="openai: 'chat' (default) or 'completions' for in-context answers.")]
TokOpt = Annotated[Optional[str], typer.Option(help="openai: a local tokenizer for exact token budgets.")]
ConstrainOpt = Annotated[Optional[str], typer.Option(
    help="'copy' (answer is a span of the passages; the local readers' default) or 'none' (openai's only option).")]
StrategyOpt = Annotated[Optional[str], typer.Option("--strategy", "-s", help=STRATEGY_HELP + " Default: the measured best.")]
KOpt = Annotated[Optional[int], typer.Option("--k", "-k", help="Passages to retrieve (default: the measured best).")]
MethodOpt = Annotated[Optional[str], typer.Option(
    help="Retrieval: the index's own retriever by default (hybrid dense + BM25), or dense, bm25, hybrid, "
         "hybrid-lead, mmr, metric:<name> (see `rag-lfm retrieve`).")]
FilterOpt = Annotated[Optional[str], typer.Option(help='Metadata filter as JSON, e.g. \'{"topic": "History"}\'.')]
MaxNewOpt = Annotated[Optional[int], typer.Option(help="Longest answer, in tokens (default: the reader's).")]
PassageOpt = Annotated[Optional[int], typer.Option(help="Each passage is cut to this many tokens (default: the reader's).")]
DeviceOpt = Annotated[str, typer.Option(help="transformers: auto, cpu, cuda ...")]
DtypeOpt = Annotated[str, typer.Option(help="transformers: auto (bfloat16 on a GPU or a CPU with native bfloat16, else float32), float32, bfloat16, float16.")]
CandidatesOpt = Annotated[Optional[str], typer.Option(
    help="transformers/llamacpp: 'titles' (the passages' titles compete with the decoded answer) or 'none'.")]
AdapterOpt = Annotated[Optional[str], typer.Option(
    help="transformers: a reader adapter (LoRA or prompt tuning from `rag-lfm tune reader`): a folder or a name.")]
StartsOpt = Annotated[Optional[int], typer.Option(
    help="transformers: answers decoded from this many likeliest first tokens, then scored whole (default: the reader's).")]


def _source(kb, method: str | None):
    """What to retrieve from: the index itself (its recorded retriever) or a named method."""
    if method is None or method == "default":
        return kb
    from rag_lfm.retrieval.cli import build_retriever

    return build_retriever(kb, method)


def _filter(text: str | None):
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RagLfmError(f"--filter {text!r} is not valid JSON ({exc.msg}); e.g. --filter '{{\"topic\": \"History\"}}'") from None


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``ask`` to ``app`` and ``qa`` to ``eval_app``."""

    @app.command()
    def ask(
        index: Annotated[str, typer.Argument(help="Index directory.")],
        question: Annotated[str, typer.Argument(help="The question.")],
        strategy: StrategyOpt = None,
        k: KOpt = None,
        method: MethodOpt = None,
        filter: FilterOpt = None,
        reader_kind: ReaderOpt = "transformers",
        model: Annotated[Optional[str], typer.Option(help=MODEL_HELP)] = None,
        max_new_tokens: MaxNewOpt = None,
        max_passage_tokens: PassageOpt = None,
        constrain: ConstrainOpt = None,
        candidates: CandidatesOpt = None,
        answer_starts: StartsOpt = None,
        adapter: AdapterOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        base_url: BaseUrlOpt = None,
        api_key_env: KeyEnvOpt = None,
        api: ApiOpt = None,
        tokenizer: TokOpt = None,
        stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the Answer).")] = False,
    ) -> None:
        """Answer QUESTION from the passages retrieved from INDEX, citing them."""
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.readers.base import DEFAULT_K, DEFAULT_STRATEGY, check_strategy
        from rag_lfm.readers.pipeline import _check_not_empty
        from rag_lfm.readers.pipeline import ask as ask_fn

        try:
            strategy = check_strategy(strategy or DEFAULT_STRATEGY)
            k = DEFAULT_K if k is None else k
            flt = _filter(filter)
            reader = _reader(model, max_new_tokens, max_passage_tokens, device, dtype, constrain, kind=reader_kind,
                             base_url=base_url, api_key_env=api_key_env, api=api, tokenizer=tokenizer,
                             candidates=candidates, answer_starts=answer_starts, adapter=adapter)
            kb = KnowledgeBase.open(index)
            source = _source(kb, method)
            if stream and not as_json:
                hits: list = []
                if strategy != "closed-book":
                    _check_not_empty(kb)
                    hits = source.search_batch([question], k, filter=flt)[0]
                for piece in reader.stream(question, hits, strategy=strategy):
                    typer.echo(piece, nl=False)
                    sys.stdout.flush()
                typer.echo("")
                for rank, h in enumerate(hits, start=1):
                    typer.echo(f"  [{rank}] {h.score:.3f}  {h.metadata.get('title') or h.doc_id}  ({h.source_id})")
                return
            answer = ask_fn(source, question, reader=reader, strategy=strategy, k=k, filter=flt)
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False, default=str))
            return
        typer.echo(answer.text)
        for c in answer.citations:
            extra = f" weight {c.weight:.2f}" if strategy == "replug" else ""
            cut = " (cut)" if c.truncated else ""
            typer.echo(f"  [{c.number}] {c.score:.3f}{extra}  {c.title}  ({c.source_id}, chunk {c.chunk_id}){cut}")
        if answer.dropped:
            typer.echo(f"  ({answer.dropped} retrieved passages left out by the token budget)")
        typer.echo(f"  {answer.strategy}, {answer.prompt_tokens} prompt tokens, {answer.generated_tokens} generated, "
                   f"{answer.latency_s:.2f} s")

    @eval_app.command("qa")
    def eval_qa(
        index: Annotated[str, typer.Argument(help="Index directory.")],
        data: Annotated[Optional[str], typer.Option(help="JSONL with question and answers per line.")] = None,
        builtin: Annotated[Optional[str], typer.Option(help="A built-in task: 'wiki-vital'.")] = None,
        n: Annotated[int, typer.Option(help="Built-in task: questions to sample.")] = 300,
        seed: Annotated[int, typer.Option(help="Built-in task: sample seed.")] = 0,
        split: Annotated[str, typer.Option(help="Built-in task: 'test' (held out), 'dev' (tuning) or 'train'.")] = "test",
        strategy: StrategyOpt = None,
        k: KOpt = None,
        method: MethodOpt = None,
        filter: FilterOpt = None,
        reader_kind: ReaderOpt = "transformers",
        model: Annotated[Optional[str], typer.Option(help=MODEL_HELP)] = None,
        max_new_tokens: MaxNewOpt = None,
        max_passage_tokens: PassageOpt = None,
        constrain: ConstrainOpt = None,
        candidates: CandidatesOpt = None,
        answer_starts: StartsOpt = None,
        adapter: AdapterOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        base_url: BaseUrlOpt = None,
        api_key_env: KeyEnvOpt = None,
        api: ApiOpt = None,
        tokenizer: TokOpt = None,
        records: Annotated[bool, typer.Option("--records", help="With --json: include one record per question.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Exact match, token F1, answer-in-context rate and latency of a strategy on a QA set."""
        from rag_lfm.errors import ConfigError
        from rag_lfm.eval.qa import evaluate_qa, load_qa_jsonl, wiki_vital_task
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.readers.base import DEFAULT_K, DEFAULT_STRATEGY

        try:
            if (data is None) == (builtin is None):
                raise ConfigError("pass exactly one of --data FILE.jsonl or --builtin wiki-vital")
            if builtin is not None and builtin != "wiki-vital":
                raise ConfigError(f"built-in task {builtin!r} is unknown; available: wiki-vital")
            examples = load_qa_jsonl(data) if data else wiki_vital_task(n, seed=seed, split=split)
            reader = _reader(model, max_new_tokens, max_passage_tokens, device, dtype, constrain, kind=reader_kind,
                             base_url=base_url, api_key_env=api_key_env, api=api, tokenizer=tokenizer,
                             candidates=candidates, answer_starts=answer_starts, adapter=adapter)
            source = _source(KnowledgeBase.open(index), method)
            report = evaluate_qa(source, reader, examples, strategy=strategy or DEFAULT_STRATEGY,
                                 k=DEFAULT_K if k is None else k, filter=_filter(filter), progress=not as_json)
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(report.to_dict(records=records), ensure_ascii=False, default=str))
        else:
            typer.echo(report.row())

    @app.command("serve")
    def serve_cmd(
        index: Annotated[str, typer.Argument(help="Index directory (opened read-only, once).")],
        reader_kind: ReaderOpt = "transformers",
        model: Annotated[Optional[str], typer.Option(help=MODEL_HELP)] = None,
        host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
        strategy: StrategyOpt = None,
        k: KOpt = None,
        max_k: Annotated[int, typer.Option(help="The largest k a request gets.")] = 50,
        method: MethodOpt = None,
        max_new_tokens: MaxNewOpt = None,
        max_passage_tokens: PassageOpt = None,
        constrain: ConstrainOpt = None,
        candidates: CandidatesOpt = None,
        answer_starts: StartsOpt = None,
        adapter: AdapterOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        base_url: BaseUrlOpt = None,
        reader_api_key_env: Annotated[Optional[str], typer.Option(
            help="openai reader: NAME of the environment variable with the upstream endpoint's key.")] = None,
        api: ApiOpt = None,
        tokenizer: TokOpt = None,
        api_key_env: Annotated[Optional[str], typer.Option(
            help="NAME of an environment variable: clients must send 'Authorization: Bearer <its value>'.")] = None,
        max_body_bytes: Annotated[int, typer.Option(help="Larger request bodies get 413.")] = 1 << 20,
        max_pending: Annotated[int, typer.Option(help="Requests waiting for the model at once; more get 429.")] = 64,
        max_batch: Annotated[int, typer.Option(help="Questions waiting together are answered as one batch of at most this many.")] = 32,
        batch_wait_ms: Annotated[float, typer.Option(
            help="A batch that is not full starts once no question has come for this long (ms); it also waits for "
                 "the last batch's clients, up to a tenth of that batch's time (at most 25x this). 0: at once.")] = 20.0,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Serve INDEX and a reader over HTTP: /search, /ask, OpenAI-compatible /v1/chat/completions and /v1/completions."""
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.readers.base import DEFAULT_K, DEFAULT_STRATEGY
        from rag_lfm.serve import create_app, serve

        try:
            reader = _reader(model, max_new_tokens, max_passage_tokens, device, dtype, constrain, kind=reader_kind,
                             base_url=base_url, api_key_env=reader_api_key_env, api=api, tokenizer=tokenizer,
                             candidates=candidates, answer_starts=answer_starts, adapter=adapter)
            kb = KnowledgeBase.open(index)
            source = _source(kb, method)
            strategy = strategy or DEFAULT_STRATEGY
            k = DEFAULT_K if k is None else k
            if hasattr(reader, "warm_up"):
                reader.warm_up()  # load the model now, not on the first request
            app = create_app(source, reader, strategy=strategy, k=k, max_k=max_k, max_body_bytes=max_body_bytes,
                             max_pending=max_pending, max_batch=max_batch, batch_wait_ms=batch_wait_ms, api_key_env=api_key_env, index_path=str(index),
                             on_shutdown=kb.close)
        except RagLfmError as exc:
            _fail(exc)
        typer.echo(f"rag-lfm serve: {index} ({len(kb)} chunks), reader {reader.name}, http://{host}:{port}", err=True)
        serve(app, host=host, port=port, log_level=log_level)
