"""One call from a teacher reader to a saved student: retrieve, cache the teacher, build, train, save.

The student is saved as a plain transformers folder (``save_pretrained``, safetensors) with its
tokenizer and a ``distill.json`` that records the teacher, how the student was built, the loss
and training, and the reader options it was trained under. It loads as a reader by path:
``TransformersReader("models/student")`` or ``rag-lfm ask INDEX "..." --model models/student``,
answering with ``strategy`` and ``k`` as ``distill.json`` says (a REPLUG k=5 teacher's student
answers ``in-context`` with k=5).

Example:
    >>> from rag_lfm.distill import distill
    >>> report = distill(kb, teacher="replug:5", student="layers=15", out="models/student", n=300)  # doctest: +SKIP
    >>> TransformersReader("models/student").generate(question, hits, strategy="in-context")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_lfm.atomic import fsync_dir, write_json
from rag_lfm.distill.cache import TeacherCache, build_teacher_cache, reader_options
from rag_lfm.distill.spec import StudentSpec, TeacherSpec
from rag_lfm.distill.student import build_student
from rag_lfm.distill.train import TrainConfig, build_examples, mean_kl, train_student
from rag_lfm.errors import ConfigError

STUDENT_CARD = "distill.json"


@dataclass
class DistillReport:
    """What a run did: the saved student, its size, the cache and training figures."""

    out: str
    teacher: str
    student: str
    strategy: str
    k: int
    loss: str
    parameters: int
    teacher_parameters: int
    examples: int
    cache: dict[str, int]
    steps: int
    resumed_from: int
    kl_before: float | None
    kl_after: float | None
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, *, history: bool = False) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        if not history:
            d.pop("history")
        return d


def save_student(model: Any, tokenizer: Any, out: str | Path, card: dict[str, Any]) -> Path:
    """Write the student folder atomically: built beside ``out``, then renamed into place.

    An existing ``out`` is replaced only when it is a student folder itself (it holds ``distill.json``),
    so a typo never deletes an unrelated folder.
    """
    out = Path(out)
    if out.exists() and not (out / STUDENT_CARD).exists():
        raise ConfigError(f"--out {str(out)!r} exists and is not a distilled student (no {STUDENT_CARD}); "
                          "pass a new folder, or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one small write needs no bar (and --json output stays clean)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    write_json(tmp / STUDENT_CARD, card)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
    return out


def load_card(folder: str | Path) -> dict[str, Any]:
    """A student folder's ``distill.json`` (strategy, k, reader options, teacher, training)."""
    import json

    path = Path(folder) / STUDENT_CARD
    if not path.exists():
        raise ConfigError(f"{str(folder)!r} is not a distilled student (no {STUDENT_CARD})")
    return json.loads(path.read_text(encoding="utf-8"))


def _finished(out: Path, spec: TeacherSpec, sspec: StudentSpec, config: TrainConfig, fingerprint: str,
              n_examples: int) -> dict[str, Any] | None:
    """The card of a student at ``out`` made by exactly this run (teacher, student, training, data), else None."""
    try:
        card = load_card(out)
    except ConfigError:
        return None
    same = (card.get("train") == config.to_dict() and card.get("requested_examples") == n_examples
            and card["teacher"].get("weights_sha256") == fingerprint
            and (card["teacher"].get("strategy"), card["teacher"].get("k")) == (spec.strategy, spec.k)
            and (card["student"].get("layers"), card["student"].get("path")) == (sspec.layers, sspec.path))
    return card if same else None


def distill(
    source: Any,
    *,
    out: str | Path,
    teacher: str | TeacherSpec = "replug:5",
    student: str | StudentSpec = "layers=15",
    examples: Sequence[Any] | None = None,
    n: int = 300,
    seed: int = 0,
    teacher_model: str = "SmolLM2-135M-Instruct",
    teacher_reader: Any = None,
    reader_kwargs: dict[str, Any] | None = None,
    work: str | Path | None = None,
    top_k: int = 32,
    config: TrainConfig | None = None,
    measure_kl: bool = True,
    progress: bool = True,
) -> DistillReport:
    """Distil a teacher reader into a student saved at ``out``.

    Args:
        source: what to retrieve from (a KnowledgeBase or Retriever: anything with ``search_batch``).
        out: the student's folder.
        teacher: ``"replug:5"``, ``"in-context:1"``, ... (:class:`TeacherSpec`).
        student: ``"layers=15"``, ``"copy"`` or ``"path=FOLDER"`` (:class:`StudentSpec`).
        examples: training questions (:class:`~rag_lfm.eval.qa.QAExample`); default: ``n`` questions of
            the built-in wiki-vital task's ``train`` split (documents never in ``dev`` or ``test``).
        teacher_reader: a ready :class:`~rag_lfm.readers.TransformersReader` to use as the teacher, as is; its
            model is only read (the run checks its weights' fingerprint before and after). This is the hook
            for a teacher with a reader adapter (issue 11), which is refused for now with a clear error: a
            LoRA teacher's student has to start from the base weights and a prompt-tuned teacher's cached
            distributions need its virtual tokens; merge the adapter into a model folder meanwhile.
        reader_kwargs: options of the teacher reader built from ``teacher_model`` (and recorded for the student).
        work: the folder of the teacher cache and the checkpoints (default ``<out>.work`` beside ``out``);
            a rerun with the same settings reuses both, so an interrupted run resumes.
        top_k: teacher tokens cached per answer position.
        config: :class:`TrainConfig` (loss, temperature, epochs, lr, batch size, ...).
    """
    import torch

    from rag_lfm.readers import TransformersReader

    start = time.perf_counter()
    spec = teacher if isinstance(teacher, TeacherSpec) else TeacherSpec.parse(teacher)
    sspec = student if isinstance(student, StudentSpec) else StudentSpec.parse(student)
    config = config or TrainConfig()
    out = Path(out)
    work = Path(work) if work is not None else out.with_name(out.name + ".work")
    if examples is None:
        from rag_lfm.eval.qa import wiki_vital_task

        examples = wiki_vital_task(n, seed=seed, split="train")
    if not examples:
        raise ConfigError("distill() got no training examples")
    if teacher_reader is None:
        teacher_reader = TransformersReader(teacher_model, **(reader_kwargs or {}))
    if getattr(teacher_reader, "adapter", None):
        # The hook is here, not yet the support: a LoRA teacher's student must start from the base weights
        # (pruning reads plain layer names), and a prompt-tuned teacher's distributions need its virtual tokens.
        raise ConfigError(
            f"teacher reader {teacher_reader.name!r} carries the reader adapter {teacher_reader.adapter!r}; distilling "
            "an adapted teacher is not supported yet: pass the teacher without adapter=, or merge the adapter into "
            "a model folder and pass that folder as the teacher model"
        )
    reader = teacher_reader.warm_up()
    before = reader.weights_fingerprint()
    cache_stats = build_teacher_cache(reader, source, examples, spec, work / "teacher-cache", top_k=top_k, progress=progress)
    cache = TeacherCache(work / "teacher-cache")
    done = _finished(out, spec, sspec, config, before, len(examples))
    if done is not None:  # this very student is already trained and saved: nothing to redo
        return DistillReport(out=str(out), teacher=str(spec), student=str(sspec), strategy=done["strategy"], k=done["k"],
                             loss=config.loss, parameters=done["student"]["parameters"],
                             teacher_parameters=done["teacher"]["parameters"], examples=done["examples"],
                             cache=cache_stats, steps=done["steps"], resumed_from=done["steps"],
                             kl_before=done["kl_before"], kl_after=done["kl_after"],
                             seconds=time.perf_counter() - start, history=[])
    model, tokenizer, info = build_student(reader.model, reader.tokenizer, sspec)
    model.to(reader.device)
    from rag_lfm.readers.prompts import PromptBuilder

    prompts = PromptBuilder(tokenizer, budget=reader.context_window - reader.max_new_tokens,
                            max_passage_tokens=reader.max_passage_tokens, min_passage_tokens=reader.min_passage_tokens,
                            use_chat_template=reader.use_chat_template, one_shot=reader.one_shot)
    wanted = {str(e.id) for e in examples}
    train_examples = [e for e in build_examples(cache, tokenizer, prompts, spec.student_strategy, config.loss,
                                                replug_temperature=reader.replug_temperature,
                                                same_tokenizer=info["same_tokenizer"]) if e.id in wanted]
    pad_id = int(tokenizer.pad_token_id)
    kl_before = kl_after = None
    kl_examples = None
    if measure_kl and info["same_tokenizer"]:
        kl_examples = build_examples(cache, tokenizer, prompts, spec.student_strategy, "kl",
                                     replug_temperature=reader.replug_temperature)[:16]
        kl_before = mean_kl(model, kl_examples, pad_id)
    result = train_student(model, train_examples, config, work / "checkpoints" / f"{config.loss}-{sspec}".replace("/", "_"),
                           pad_id=pad_id, progress=progress)
    if kl_examples is not None:
        kl_after = mean_kl(model, kl_examples, pad_id)
    if reader.weights_fingerprint() != before:
        raise RuntimeError("the teacher's weights changed during distillation; this is a bug, please report it")
    params = sum(p.numel() for p in model.parameters())
    teacher_params = sum(p.numel() for p in reader.model.parameters())
    card = {"format": 1, "teacher": {**spec.to_dict(), "model": str(reader.model_ref), "weights_sha256": before,
                                     "parameters": teacher_params},
            "student": {**sspec.to_dict(), **info}, "strategy": spec.student_strategy, "k": spec.k,
            "reader_options": reader_options(reader), "train": config.to_dict(), "examples": len(train_examples),
            "steps": result["steps"], "kl_before": kl_before, "kl_after": kl_after,
            "requested_examples": len(examples)}
    model.to(torch.float32)
    save_student(model, tokenizer, out, card)
    return DistillReport(out=str(out), teacher=str(spec), student=str(sspec), strategy=spec.student_strategy, k=spec.k,
                         loss=config.loss, parameters=params, teacher_parameters=teacher_params,
                         examples=len(train_examples), cache=cache_stats, steps=result["steps"],
                         resumed_from=result["resumed_from"], kl_before=kl_before, kl_after=kl_after,
                         seconds=time.perf_counter() - start, history=result["history"])
