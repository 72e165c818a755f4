"""The Reader protocol: a frozen model that answers a question from passages.

A reader never changes its model's weights (``requires_grad_(False)``, ``eval()``,
every forward under ``torch.inference_mode``). Strategies, by name:

- ``closed-book``: the question alone (the baseline: what the model knows by itself);
- ``in-context``: the top passages packed into one prompt under a token budget;
- ``replug``: one prompt per passage, run as one batch; the next-token distributions
  are mixed with weights ``softmax(score / temperature)`` over the retrieval scores
  (Shi et al. 2023, "REPLUG"), decoded greedily;
- ``extractive``: no generation: the title (or first sentence) of the top passage.

Readers differ in what their model lets them do: a model in this process exposes its
logits, an HTTP endpoint at most the top log-probabilities of each next token. Each
reader declares :class:`Capabilities`; :func:`check_reader` (called by the pipeline and
by the readers themselves) turns a request a reader cannot serve into a clear
:class:`CapabilityError` naming what is missing, instead of a wrong answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from rag_lfm.errors import ConfigError, RagLfmError
from rag_lfm.readers.types import Answer
from rag_lfm.types import Hit

STRATEGIES: tuple[str, ...] = ("closed-book", "in-context", "replug", "extractive")
# What `ask`, `rag-lfm ask`, `rag-lfm eval qa`, `rag-lfm serve` and the demo use unless told otherwise:
# the strategy and k that scored best on the dev split of both QA sets (the built-in description task
# and the general factoid questions), with the index's own retriever (benchmarks/RESULTS.md, issue 9).
DEFAULT_STRATEGY = "in-context"
DEFAULT_K = 1


class NoPassagesError(RagLfmError, LookupError):
    """A retrieval-augmented strategy got no passages (empty index, or a filter that matched nothing)."""


class PromptTooLongError(RagLfmError, ValueError):
    """The question (with the instructions) alone does not fit the model's context window."""


class CapabilityError(ConfigError):
    """A reader was asked for something its model does not expose (e.g. REPLUG without log-probabilities)."""


@dataclass(frozen=True)
class Capabilities:
    """What a reader's model lets it do.

    Attributes:
        logprobs: next-token log-probabilities (at least the top few): REPLUG mixes them across passages.
        logits: the whole next-token distribution at every step, so decoding can be constrained
            (copy-constrained answers) and whole answers rescored.
        batching: many prompts answered together (one forward pass, or concurrent requests).
        streaming: the answer can be yielded piece by piece.
        completion: raw prompt continuation (``complete`` / ``stream_complete``).

    Example:
        >>> Capabilities(logprobs=True, logits=False).missing("replug")
        []
    """

    logprobs: bool = False
    logits: bool = False
    batching: bool = False
    streaming: bool = False
    completion: bool = False

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)

    def missing(self, strategy: str, *, constrain: str = "none") -> list[str]:
        """The capabilities ``strategy`` (and a ``"copy"`` constraint) would need that this reader lacks."""
        need = [name for name, _ in NEEDS.get(strategy, ())]
        if constrain == "copy" and strategy not in ("closed-book", "extractive"):
            need.append("logits")
        return [n for n in need if not getattr(self, n)]


# What each strategy needs, and why (the reason goes into the error message).
NEEDS: dict[str, tuple[tuple[str, str], ...]] = {
    "replug": (("logprobs", "REPLUG mixes the next-token log-probabilities of one prompt per passage"),),
}
WHY = {
    "logprobs": "next-token log-probabilities",
    "logits": "the model's logits at every step (copy-constrained decoding restricts them to spans of the passages)",
}


def capabilities_of(reader: Any) -> Capabilities | None:
    """A reader's declared capabilities, or None for a reader that declares none (it is trusted)."""
    caps = getattr(reader, "capabilities", None)
    return caps if isinstance(caps, Capabilities) else None


def check_reader(reader: Any, strategy: str, *, constrain: str | None = None) -> None:
    """Raise :class:`CapabilityError` when ``reader`` cannot run ``strategy`` (with its constraint).

    Example:
        >>> check_reader(OpenAIReader("m", base_url=url, logprobs=False), "replug")  # doctest: +SKIP
        CapabilityError: reader 'openai:m' cannot run strategy 'replug': it lacks next-token log-probabilities ...
    """
    caps = capabilities_of(reader)
    if caps is None:
        return
    if constrain is None:
        constrain = getattr(reader, "constrain", "none")
    lacking = caps.missing(strategy, constrain=constrain)
    if not lacking:
        return
    name = getattr(reader, "name", type(reader).__name__)
    why = "; ".join(WHY.get(n, n) for n in lacking)
    if lacking == ["logits"]:
        fix = "use constrain='none' with this reader, or a reader with the model in this process (TransformersReader, LlamaCppReader)"
    else:
        reasons = " ".join(r for n, r in NEEDS.get(strategy, ()) if n in lacking)
        fix = (f"{reasons}; use strategy 'in-context', or a reader whose model returns them (TransformersReader, "
               "LlamaCppReader, or an OpenAI-compatible completions endpoint with top log-probabilities)")
    raise CapabilityError(f"reader {name!r} cannot run strategy {strategy!r}: it lacks {why}; {fix}")


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
    capabilities: Capabilities

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
