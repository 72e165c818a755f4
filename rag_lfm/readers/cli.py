"""``rag-lfm ask`` and ``rag-lfm eval qa``: thin typer layers over :func:`ask` and :func:`evaluate_qa`.

Example (shell)::

    rag-lfm ask indexes/wiki-vital "Which painter founded Impressionism?" -k 3
    rag-lfm ask indexes/wiki-vital "..." --strategy replug -k 5 --json
    rag-lfm eval qa indexes/wiki-vital --builtin wiki-vital --n 100 --strategy in-context -k 1
    rag-lfm eval qa indexes/notes --data questions.jsonl --json
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

from rag_lfm.errors import RagLfmError

STRATEGY_HELP = "closed-book, in-context, replug or extractive."


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _reader(model: str, max_new_tokens: int, max_passage_tokens: int, device: str, dtype: str, constrain: str):
    from rag_lfm.readers.transformers_reader import TransformersReader

    return TransformersReader(
        model, max_new_tokens=max_new_tokens, max_passage_tokens=max_passage_tokens, device=device,
        dtype=dtype, constrain=constrain,
    )


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``ask`` to ``app`` and ``qa`` to ``eval_app``."""

    @app.command()
    def ask(
        index: Annotated[str, typer.Argument(help="Index directory.")],
        question: Annotated[str, typer.Argument(help="The question.")],
        strategy: Annotated[str, typer.Option("--strategy", "-s", help=STRATEGY_HELP)] = "in-context",
        k: Annotated[int, typer.Option("--k", "-k", help="Passages to retrieve.")] = 3,
        model: Annotated[str, typer.Option(help="Reader model: a local folder or a known name.")] = "SmolLM2-135M-Instruct",
        max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 24,
        max_passage_tokens: Annotated[int, typer.Option(help="Each passage is cut to this many tokens.")] = 160,
        constrain: Annotated[str, typer.Option(help="'copy' (answer is a span of the passages) or 'none'.")] = "copy",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
        dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
        stream: Annotated[bool, typer.Option("--stream", help="Print the answer as it is generated.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the Answer).")] = False,
    ) -> None:
        """Answer QUESTION from the passages retrieved from INDEX, citing them."""
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.readers.base import check_strategy
        from rag_lfm.readers.pipeline import _check_not_empty
        from rag_lfm.readers.pipeline import ask as ask_fn

        try:
            strategy = check_strategy(strategy)
            reader = _reader(model, max_new_tokens, max_passage_tokens, device, dtype, constrain)
            kb = KnowledgeBase.open(index)
            if stream and not as_json:
                hits: list = []
                if strategy != "closed-book":
                    _check_not_empty(kb)
                    hits = kb.search(question, k=k)
                for piece in reader.stream(question, hits, strategy=strategy):
                    typer.echo(piece, nl=False)
                    sys.stdout.flush()
                typer.echo("")
                for rank, h in enumerate(hits, start=1):
                    typer.echo(f"  [{rank}] {h.score:.3f}  {h.metadata.get('title') or h.doc_id}  ({h.source_id})")
                return
            answer = ask_fn(kb, question, reader=reader, strategy=strategy, k=k)
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
        strategy: Annotated[str, typer.Option("--strategy", "-s", help=STRATEGY_HELP)] = "in-context",
        k: Annotated[int, typer.Option("--k", "-k", help="Passages to retrieve.")] = 3,
        model: Annotated[str, typer.Option(help="Reader model.")] = "SmolLM2-135M-Instruct",
        max_new_tokens: Annotated[int, typer.Option(help="Longest answer, in tokens.")] = 16,
        max_passage_tokens: Annotated[int, typer.Option(help="Each passage is cut to this many tokens.")] = 64,
        constrain: Annotated[str, typer.Option(help="'copy' or 'none'.")] = "copy",
        device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
        dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16, float16.")] = "auto",
        records: Annotated[bool, typer.Option("--records", help="With --json: include one record per question.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Exact match, token F1, answer-in-context rate and latency of a strategy on a QA set."""
        from rag_lfm.errors import ConfigError
        from rag_lfm.eval.qa import evaluate_qa, load_qa_jsonl, wiki_vital_task
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            if (data is None) == (builtin is None):
                raise ConfigError("pass exactly one of --data FILE.jsonl or --builtin wiki-vital")
            if builtin is not None and builtin != "wiki-vital":
                raise ConfigError(f"built-in task {builtin!r} is unknown; available: wiki-vital")
            examples = load_qa_jsonl(data) if data else wiki_vital_task(n, seed=seed, split=split)
            reader = _reader(model, max_new_tokens, max_passage_tokens, device, dtype, constrain)
            report = evaluate_qa(KnowledgeBase.open(index), reader, examples, strategy=strategy, k=k,
                                 progress=not as_json)
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(report.to_dict(records=records), ensure_ascii=False, default=str))
        else:
            typer.echo(report.row())
