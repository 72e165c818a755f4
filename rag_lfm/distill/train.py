"""Training a student on the teacher's cached outputs: resumable, checkpointed, no pickle.

A training example is the student's prompt (built by the reader's own prompt code from the
cached passages, so the student is trained on exactly the prompts it will see as a reader)
followed by the answer it should emit. Only the answer positions go through the output head
and the loss (see :mod:`rag_lfm.distill.losses`).

Checkpoints (``work/checkpoints/``): every ``checkpoint_every`` steps the student's weights and the
optimizer's state are written as safetensors in ``step-NNNNNN/``, then ``latest.json`` (step, loss
history) is switched atomically to name it. A rerun with the same configuration resumes from the
step it names, with the same data order (a fixed seed per epoch), so an interrupted run ends where
an uninterrupted one would.

Example:
    >>> history = train_student(model, examples, TrainConfig(loss="kl", epochs=1), "work/checkpoints")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag_lfm.atomic import write_bytes, write_json
from rag_lfm.distill.cache import TeacherCache, answer_ids, answer_logits, hit_from_dict
from rag_lfm.distill.losses import LOSSES, TARGET_OF, Targets, check_loss
from rag_lfm.errors import ConfigError


@dataclass
class TrainExample:
    """One training sequence: the prompt, the answer tokens (ending with the end token), the teacher's top-k."""

    id: str
    prompt: list[int]
    target: list[int]
    top_idx: Any = None
    top_lp: Any = None
    prefix_len: int = 0  # leading prompt tokens shared by every example (run once per batch, no gradients)


@dataclass
class TrainConfig:
    """Hyper-parameters of a distillation run (recorded in the student's ``distill.json``).

    Args:
        loss: ``kl`` (token-level KD), ``seq`` (sequence-level KD) or ``gold`` (the control).
        temperature: the KL's temperature T (``kl`` only).
        epochs: passes over the training examples; ``max_steps`` caps the optimizer steps.
        lr: AdamW learning rate (constant after ``warmup_steps`` of linear warm-up).
        batch_size: sequences per optimizer step.
        freeze_embeddings: keep the (tied) input embeddings and output head at the teacher's
            values: a third of a 135M model's weights, which a few hundred questions would only
            disturb; training then moves the decoder layers and norms.
        freeze_layers: keep the first N decoder layers at their initial weights too: backpropagation
            then stops at layer N, which cuts a step's cost (a one-pass student of a full-size teacher
            trains its upper layers only).
        checkpoint_every: optimizer steps between checkpoints.
        seed: the data order of every epoch.
    """

    loss: str = "kl"
    temperature: float = 2.0
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 5e-5
    warmup_steps: int = 5
    batch_size: int = 4
    grad_clip: float = 1.0
    freeze_embeddings: bool = True
    freeze_layers: int = 0
    checkpoint_every: int = 25
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_loss(self.loss)
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if int(self.freeze_layers) < 0:
            raise ConfigError(f"freeze_layers must be >= 0, got {self.freeze_layers!r}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ConfigError(f"lr and temperature must be > 0, got lr={self.lr!r}, temperature={self.temperature!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> str:
        """A hash of everything that shapes the training trajectory: checkpoints of another configuration don't resume.

        ``max_steps`` and ``checkpoint_every`` are left out: raising ``max_steps`` continues a run where it stopped.
        """
        d = self.to_dict()
        d.pop("checkpoint_every")
        d.pop("max_steps")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def build_examples(
    cache: TeacherCache,
    tokenizer: Any,
    prompts: Any,
    strategy: str,
    loss: str,
    *,
    replug_temperature: float = 0.05,
    same_tokenizer: bool = True,
) -> list[TrainExample]:
    """Training sequences from a teacher cache, with the student's prompts (``prompts``: a PromptBuilder).

    ``strategy`` is the student's (``in-context`` or ``closed-book``); it reads every cached passage.
    """
    from rag_lfm.readers.prompts import plan_prompts

    check_loss(loss)
    if loss == "kl" and not same_tokenizer:
        raise ConfigError("loss 'kl' compares next-token distributions, so the student needs the teacher's tokenizer; "
                          "this student's differs: use loss 'seq' (sequence-level KD on the teacher's answers)")
    out: list[TrainExample] = []
    for rec in cache.records():
        hits = [hit_from_dict(h) for h in rec["passages"]]
        parts, _ = plan_prompts(prompts, rec["question"], hits, strategy, replug_temperature)
        text = rec["teacher_answer"] if TARGET_OF[loss] == "teacher" else rec["answers"][0]
        target = answer_ids(tokenizer, text)
        ex = TrainExample(str(rec["id"]), list(parts[0].ids), target, prefix_len=parts[0].prefix_len)
        if loss == "kl":
            ex.top_idx, ex.top_lp = cache.tensors(rec)
            if ex.top_idx.shape[0] != len(target):
                raise ConfigError(
                    f"teacher cache record {rec['id']!r} has {ex.top_idx.shape[0]} positions but the student's tokenizer "
                    f"spells the answer {text!r} in {len(target)} tokens; use the teacher's tokenizer or loss 'seq'"
                )
        out.append(ex)
    if not out:
        raise ConfigError(f"teacher cache {str(cache.folder)!r} holds no examples; build it first (build_teacher_cache)")
    return out


def _targets(batch: Sequence[TrainExample]) -> Targets:
    import torch

    tokens = torch.tensor([t for ex in batch for t in ex.target], dtype=torch.long)
    if batch[0].top_idx is None:
        return Targets(tokens)
    return Targets(tokens, torch.cat([ex.top_idx for ex in batch]), torch.cat([ex.top_lp for ex in batch]))


def batch_loss(model: Any, batch: Sequence[TrainExample], config: TrainConfig, pad_id: int) -> Any:
    """The configured loss of ``model`` on one batch (a scalar with a graph when gradients are on)."""
    device = next(model.parameters()).device
    logits = answer_logits(model, [ex.prompt for ex in batch], [ex.target for ex in batch], pad_id,
                           min(ex.prefix_len for ex in batch))
    t = _targets(batch)
    t = Targets(t.tokens.to(device), None if t.top_idx is None else t.top_idx.to(device),
                None if t.top_lp is None else t.top_lp.to(device))
    return LOSSES[config.loss](logits, t, temperature=config.temperature)


def mean_kl(model: Any, examples: Sequence[TrainExample], pad_id: int, *, temperature: float = 1.0, batch_size: int = 8) -> float:
    """The student's mean token-level KL to the teacher (top-k, at ``temperature``) over ``examples``; no gradients."""
    import torch

    from rag_lfm.distill.losses import kl_loss

    total, n = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(examples), batch_size):
            batch = examples[lo : lo + batch_size]
            logits = answer_logits(model, [e.prompt for e in batch], [e.target for e in batch], pad_id,
                                   min(e.prefix_len for e in batch))
            positions = logits.shape[0]
            total += float(kl_loss(logits, _targets(batch), temperature=temperature)) * positions
            n += positions
    model.train(was_training)
    return total / max(n, 1)


def _save_state(model: Any, optimizer: Any, folder: Path) -> None:
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    # Tied weights share storage; each name gets its own copy (safetensors refuses shared tensors).
    weights = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    write_bytes(folder / "model.safetensors", save(weights))
    state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    for pid, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"{pid}/{name}"] = value.detach().cpu().clone().reshape(-1) if value.dim() == 0 else value.detach().cpu().clone()
    write_bytes(folder / "optimizer.safetensors", save(tensors))


def _load_state(model: Any, optimizer: Any, folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    flat = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        pid, name = key.split("/", 1)
        state.setdefault(int(pid), {})[name] = value.reshape(()) if name == "step" else value
    sd = optimizer.state_dict()
    sd["state"] = {pid: {k: (v.to(torch.float32) if k == "step" else v) for k, v in slots.items()}
                   for pid, slots in state.items()}
    optimizer.load_state_dict(sd)


def train_student(
    model: Any,
    examples: Sequence[TrainExample],
    config: TrainConfig,
    checkpoints: str | Path,
    *,
    pad_id: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``model`` in place on ``examples``; resume from the last checkpoint of the same config.

    Returns ``{"steps", "resumed_from", "history": [{"step", "loss"}, ...]}``.
    """
    import torch

    if not examples:
        raise ConfigError("train_student() got no examples")
    folder = Path(checkpoints)
    folder.mkdir(parents=True, exist_ok=True)
    from rag_lfm.distill.student import _LAYER_KEY

    params = []
    for name, p in model.named_parameters():
        frozen = config.freeze_embeddings and (p is model.get_input_embeddings().weight
                                               or p is model.get_output_embeddings().weight)
        m = _LAYER_KEY.match(name)
        if m is not None and int(m.group("i")) < config.freeze_layers:
            frozen = True
        p.requires_grad_(not frozen)
        if not frozen:
            params.append(p)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    per_epoch = (len(examples) + config.batch_size - 1) // config.batch_size
    total = per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, int(config.max_steps))
    latest = folder / "latest.json"
    step, history = 0, []
    if latest.exists():
        info = json.loads(latest.read_text(encoding="utf-8"))
        if info.get("config_key") != config.key() or info.get("examples") != len(examples):
            raise ConfigError(
                f"checkpoints in {str(folder)!r} come from another configuration or data; pass another work folder, "
                "or delete it to start over"
            )
        _load_state(model, optimizer, folder / info["folder"])
        step, history = int(info["step"]), list(info["history"])
    resumed_from = step

    def lr_at(s: int) -> float:
        return config.lr * min(1.0, (s + 1) / max(1, config.warmup_steps))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=step, desc=f"training ({config.loss})", unit="step")
    model.train()
    while step < total:
        epoch, pos = divmod(step, per_epoch)
        order = list(range(len(examples)))
        random.Random(config.seed * 1000 + epoch).shuffle(order)
        batch = [examples[i] for i in order[pos * config.batch_size : (pos + 1) * config.batch_size]]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = batch_loss(model, batch, config, pad_id)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        value = float(loss.detach())
        history.append({"step": step, "loss": round(value, 6)})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}")
        if step % config.checkpoint_every == 0 or step == total:
            name = f"step-{step:06d}"
            _save_state(model, optimizer, folder / name)
            write_json(latest, {"step": step, "folder": name, "config_key": config.key(), "examples": len(examples),
                                "history": history})
            for old in folder.glob("step-*"):
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
    if bar is not None:
        bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {"steps": step, "resumed_from": resumed_from, "history": history}
