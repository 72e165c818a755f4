"""The Reader protocol: a frozen model that answers a question from passages.

A reader never changes its model's weights (``requires_grad_(False)``, ``eval()``,
every forward under ``torch.inference_mode``). Strategies, by name:

- ``closed-book``: the question alone (the baseline: what the model knows by itself);
- ``in-context``: the top passages packed into one prompt under a token budget;
- ``replug``: one prompt per passage, run as one batch; the next-token distributions
  are mixed with weights ``softmax(score / temperature)`` over the retrieval scores
  (Shi et al. 2023, "REPLUG"), decoded greedily;
- ``extractive``: no generation: the title (or first sentence) of the top passage.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from rag_lfm.errors import ConfigError, RagLfmError
from rag_lfm.readers.types import Answer
from rag_lfm.types import Hit

STRATEGIES: tuple[str, ...] = ("closed-book", "in-context", "replug", "extractive")


class NoPassagesError(RagLfmError, LookupError):
    """A retrieval-augmented strategy got no passages (empty index, or a filter that matched nothing)."""


class PromptTooLongError(RagLfmError, ValueError):
    """The question (with the instructions) alone does not fit the model's context window."""


def check_strategy(strategy: str) -> str:
    """Return ``strategy`` normalised (``in_context`` -> ``in-context``) or raise listing the valid names."""
    name = strategy.strip().lower().replace("_", "-")
    if name not in STRATEGIES:
        raise ConfigError(f"unknown reader strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}")
    return name


@runtime_checkable
class Reader(Protocol):
    """Answers questions from passages with a frozen model.

    Example:
        >>> reader = TransformersReader("SmolLM2-135M-Instruct")  # doctest: +SKIP
        >>> reader.generate("Who painted Water Lilies?", hits, strategy="in-context").text  # doctest: +SKIP
        'Claude Monet'
    """

    name: str

    def generate(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Answer:
        """Answer one question from ``passages`` (ranked best first)."""
        ...

    def generate_batch(
        self, questions: Sequence[str], passages: Sequence[Sequence[Hit]], *, strategy: str = "in-context"
    ) -> list[Answer]:
        """Answer many questions in batches (same answers as calling :meth:`generate` on each)."""
        ...

    def stream(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Iterator[str]:
        """Yield the answer's text piece by piece as tokens are generated."""
        ...
