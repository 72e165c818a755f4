"""What to distil from and into: the teacher (a reader configuration) and the student (how it is built).

Both are parsed from the short strings the CLI takes, and both round-trip through
``to_dict``/``from_dict`` so that a cache or a student folder records exactly what made it.

- Teacher: ``"replug:5"``, ``"in-context:1"``, ``"closed-book"`` -- a strategy of
  :class:`~rag_lfm.readers.TransformersReader` and its k. The student answers with one
  prompt: a REPLUG teacher (k forward passes per question) teaches an ``in-context`` student
  that reads the same k passages in one prompt (about 1/k of the passes).
- Student: ``"layers=15"`` (keep 15 of the teacher's decoder layers, evenly spaced, first and
  last included, initialised from the teacher's weights, DistilBERT-style), ``"copy"`` (the
  teacher's own weights, full size: the one-pass student of a REPLUG teacher), or
  ``"path=FOLDER"`` (any local causal LM folder; token-level losses need the teacher's tokenizer).

Example:
    >>> TeacherSpec.parse("replug:5")
    TeacherSpec(strategy='replug', k=5)
    >>> TeacherSpec.parse("replug:5").student_strategy
    'in-context'
    >>> StudentSpec.parse("layers=15")
    StudentSpec(layers=15, path=None)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from rag_lfm.errors import ConfigError

TEACHER_STRATEGIES: tuple[str, ...] = ("in-context", "replug", "closed-book")


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher reader configuration: its strategy and how many passages it reads (k)."""

    strategy: str
    k: int

    @classmethod
    def parse(cls, text: str) -> TeacherSpec:
        """``"strategy[:k]"``; k defaults to 5 for replug, 1 for in-context, 0 for closed-book."""
        name, _, k_text = str(text).strip().partition(":")
        name = name.strip().lower()
        if name not in TEACHER_STRATEGIES:
            raise ConfigError(
                f"teacher {text!r} has an unknown strategy {name!r}; use one of {', '.join(TEACHER_STRATEGIES)}, "
                "with ':k' for the passages it reads, e.g. 'replug:5' or 'in-context:1'"
            )
        if name == "closed-book":
            if k_text.strip() not in ("", "0"):
                raise ConfigError(f"teacher {text!r}: closed-book reads no passages; write 'closed-book' without ':k'")
            return cls(name, 0)
        try:
            k = int(k_text) if k_text.strip() else (5 if name == "replug" else 1)
        except ValueError:
            raise ConfigError(f"teacher {text!r}: k {k_text!r} is not an integer; e.g. 'replug:5'") from None
        if not 1 <= k <= 64:
            raise ConfigError(f"teacher {text!r}: k must be from 1 to 64, got {k}")
        return cls(name, k)

    @property
    def student_strategy(self) -> str:
        """How the student answers: one prompt (``in-context`` with the same k), or closed-book."""
        return "closed-book" if self.strategy == "closed-book" else "in-context"

    def __str__(self) -> str:
        return self.strategy if self.strategy == "closed-book" else f"{self.strategy}:{self.k}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StudentSpec:
    """How the student is built: ``layers`` kept from the teacher, or a local model folder (``path``).

    Neither set (``"copy"``) means a full-size copy of the teacher's weights.
    """

    layers: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, text: str) -> StudentSpec:
        """``"layers=N"``, ``"copy"`` or ``"path=FOLDER"``."""
        raw = str(text).strip()
        if raw.lower() == "copy":
            return cls()
        key, sep, value = raw.partition("=")
        key = key.strip().lower()
        if not sep or key not in ("layers", "path") or not value.strip():
            raise ConfigError(
                f"student {text!r} is not valid; use 'layers=N' (keep N of the teacher's decoder layers), "
                "'copy' (the teacher's weights, full size) or 'path=FOLDER' (a local causal LM folder)"
            )
        if key == "path":
            return cls(path=value.strip())
        try:
            layers = int(value)
        except ValueError:
            raise ConfigError(f"student {text!r}: layers {value!r} is not an integer; e.g. 'layers=15'") from None
        if layers < 1:
            raise ConfigError(f"student {text!r}: layers must be >= 1, got {layers}")
        return cls(layers=layers)

    def __str__(self) -> str:
        if self.path:
            return f"path={self.path}"
        return "copy" if self.layers is None else f"layers={self.layers}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
