"""``rag-lfm distill``: a thin typer layer over :func:`rag_lfm.distill.distill`.

Example (shell)::

    rag-lfm distill indexes/wiki-vital --teacher replug:5 --student layers=15 --out models/student
    rag-lfm ask indexes/wiki-vital "Which article is described as: ...?" --model models/student -k 5
    rag-lfm eval qa indexes/wiki-vital --builtin wiki-vital --model models/student --strategy in-context -k 5
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rag_lfm.errors import RagLfmError


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``distill`` to ``app``."""

    @app.command()
    def distill(
        index: Annotated[str, typer.Argument(help="Index directory the teacher retrieves from.")],
        out: Annotated[str, typer.Option("--out", "-o", help="Folder for the student (a model folder readers load by path).")],
        teacher: Annotated[str, typer.Option(help="Teacher reader configuration: strategy[:k], e.g. replug:5, in-context:1.")] = "replug:5",
        student: Annotated[str, typer.Option(help="layers=N (keep N of the teacher's layers), copy, or path=FOLDER.")] = "layers=15",
        teacher_model: Annotated[Optional[str], typer.Option(help="Teacher model folder or known name (default SmolLM2-135M-Instruct).")] = None,
        loss: Annotated[str, typer.Option(help="kl (token-level KD), seq (sequence-level KD on the teacher's answers) or gold (no-KD control).")] = "kl",
        data: Annotated[Optional[str], typer.Option(help="Training questions as JSONL (default: the wiki-vital task's train split).")] = None,
        n: Annotated[int, typer.Option(help="Training questions drawn from the built-in task (ignored with --data).")] = 300,
        seed: Annotated[int, typer.Option(help="Seed of the question sample and the data order.")] = 0,
        epochs: Annotated[int, typer.Option(help="Passes over the training questions.")] = 1,
        max_steps: Annotated[Optional[int], typer.Option(help="Cap on optimizer steps.")] = None,
        lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 5e-5,
        batch_size: Annotated[int, typer.Option(help="Sequences per optimizer step.")] = 4,
        freeze_layers: Annotated[int, typer.Option(help="Keep the first N decoder layers at the teacher's weights (cheaper steps).")] = 0,
        temperature: Annotated[float, typer.Option(help="KL temperature (loss kl).")] = 2.0,
        top_k: Annotated[int, typer.Option(help="Teacher tokens cached per answer position.")] = 32,
        max_passage_tokens: Annotated[Optional[int], typer.Option(help="Passages cut to this many tokens (default: the reader's).")] = None,
        work: Annotated[Optional[str], typer.Option(help="Teacher cache and checkpoints (default OUT.work); a rerun resumes there.")] = None,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
        threads: Annotated[Optional[int], typer.Option(help="torch threads (default: torch's choice).")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (the report).")] = False,
    ) -> None:
        """Distil a teacher reader (strategy + k over INDEX) into a smaller or one-pass student saved at --out."""
        from rag_lfm.distill.run import distill as distill_fn
        from rag_lfm.distill.train import TrainConfig
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            if threads:
                import torch

                torch.set_num_threads(int(threads))
            examples = None
            if data:
                from rag_lfm.eval.qa import load_qa_jsonl

                examples = load_qa_jsonl(data)
            config = TrainConfig(loss=loss, temperature=temperature, epochs=epochs, max_steps=max_steps, lr=lr,
                                 batch_size=batch_size, seed=seed, freeze_layers=freeze_layers)
            kwargs = {"device": device}
            if max_passage_tokens is not None:
                kwargs["max_passage_tokens"] = max_passage_tokens
            kb = KnowledgeBase.open(index)
            report = distill_fn(kb, out=out, teacher=teacher, student=student, examples=examples, n=n, seed=seed,
                                teacher_model=teacher_model or "SmolLM2-135M-Instruct", reader_kwargs=kwargs,
                                work=work, top_k=top_k, config=config, progress=not as_json)
        except RagLfmError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(report.to_dict(), default=str))
            return
        kl = "" if report.kl_before is None else f"; KL to the teacher {report.kl_before:.4f} -> {report.kl_after:.4f}"
        typer.echo(f"student {report.student} of teacher {report.teacher} ({report.loss}): {report.parameters:,} parameters "
                   f"({report.parameters / report.teacher_parameters:.2f}x the teacher), {report.steps} steps on "
                   f"{report.examples} questions{kl}")
        typer.echo(f"saved to {report.out}; answer with: rag-lfm ask {index} \"...\" --model {report.out} "
                   f"--strategy {report.strategy}" + (f" -k {report.k}" if report.k else ""))
