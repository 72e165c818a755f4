"""Distillation losses: plain callables in a name -> function table (:data:`LOSSES`).

Each takes the student's logits at the answer positions (``(N, V)``, every position that
predicts an answer token or the end of the answer) and a :class:`Targets` batch, and returns
a scalar. What each one is for:

- ``kl`` -- token-level knowledge distillation (Hinton et al. 2015): ``T^2 * KL(p_T || q_T)``
  between the teacher's next-token distribution (its cached top-k, renormalised at
  temperature ``T``) and the student's, at every position of the teacher's answer. It passes
  on how the teacher ranks the alternatives, not only its choice. With a REPLUG teacher the
  target is REPLUG's mixed distribution over k passages, so a one-pass student learns to
  answer as the k-pass ensemble does. Needs the teacher's tokenizer.
- ``seq`` -- sequence-level KD (Kim & Rush 2016): cross-entropy on the teacher's decoded
  answer. Only the answer's text is used, so it works across tokenizers.
- ``gold`` -- the control: cross-entropy on the gold answer, no teacher at all. KD is worth
  its cost only where it beats this.

Example:
    >>> import torch
    >>> t = Targets(tokens=torch.tensor([1]), top_idx=torch.tensor([[1, 2]]), top_lp=torch.tensor([[-0.1, -2.4]]))
    >>> round(float(kl_loss(torch.tensor([[0.0, 4.0, 1.0]]), t, temperature=1.0)), 3)
    0.034
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rag_lfm.errors import ConfigError


@dataclass
class Targets:
    """What the losses compare against, one row per answer position.

    ``tokens``: the token each position should emit (the teacher's answer for ``kl``/``seq``,
    the gold answer for ``gold``); ``top_idx``/``top_lp``: the teacher's top-k ids and
    log-probabilities (``kl`` only).
    """

    tokens: Any
    top_idx: Any = None
    top_lp: Any = None


def kl_loss(logits: Any, targets: Targets, *, temperature: float = 2.0, **_: Any) -> Any:
    """``T^2 * KL(teacher_T || student_T)`` over the teacher's top-k, averaged over positions.

    The teacher's top-k log-probabilities are renormalised at temperature T; the student's
    distribution is its full-vocabulary softmax at T, read at those k ids (so the loss is >= 0 and
    is 0 only when the student puts the teacher's mass on the teacher's tokens).
    """
    import torch

    if targets.top_idx is None:
        raise ConfigError("loss 'kl' needs the teacher's cached distributions; use loss 'seq' or 'gold' without them")
    t = float(temperature)
    p_log = torch.log_softmax(targets.top_lp.float() / t, dim=-1)
    q_log = torch.log_softmax(logits.float() / t, dim=-1).gather(-1, targets.top_idx.long())
    return (p_log.exp() * (p_log - q_log)).sum(-1).mean() * (t * t)


def ce_loss(logits: Any, targets: Targets, **_: Any) -> Any:
    """Cross-entropy on ``targets.tokens`` (the teacher's answer for ``seq``, the gold answer for ``gold``)."""
    import torch

    return torch.nn.functional.cross_entropy(logits.float(), targets.tokens.long())


LOSSES: dict[str, Callable[..., Any]] = {"kl": kl_loss, "seq": ce_loss, "gold": ce_loss}
# Which answer a loss trains on: the teacher's or the gold one.
TARGET_OF: dict[str, str] = {"kl": "teacher", "seq": "teacher", "gold": "gold"}


def check_loss(name: str) -> str:
    """Return ``name`` or raise listing the valid losses."""
    if name not in LOSSES:
        raise ConfigError(f"loss {name!r} is not valid; use one of {', '.join(LOSSES)} "
                          "(kl: token-level KD, seq: sequence-level KD, gold: the no-KD control)")
    return name
