"""What a reader returns: an :class:`Answer` that cites the passages it was given.

Example:
    >>> c = Citation(number=1, chunk_id=7, doc_id="Claude Monet", source_id="wiki", score=0.71,
    ...              title="Claude Monet", text="Oscar-Claude Monet was a French painter.")
    >>> Answer(text="Claude Monet", question="Which painter ...?", strategy="in-context",
    ...        citations=[c]).to_dict()["citations"][0]["doc_id"]
    'Claude Monet'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Citation:
    """One passage handed to the model, numbered as the prompt numbers it (``[1]``, ``[2]`` ...).

    ``text`` is exactly the text the model saw (after the token budget cut it, when
    ``truncated``); ``weight`` is the passage's mixture weight under REPLUG (1.0 otherwise).
    """

    number: int
    chunk_id: int
    doc_id: str
    source_id: str
    score: float
    title: str
    text: str
    truncated: bool = False
    weight: float = 1.0
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    """A generated answer with the passages it was conditioned on.

    Attributes:
        text: the answer (first line of the generation, stripped).
        citations: the passages actually placed in the prompt (the token budget may
            drop low-ranked ones: see :mod:`rag_lfm.readers.prompts`).
        dropped: how many retrieved passages the token budget left out.
        finish_reason: ``"stop"`` (end of turn or newline) or ``"length"`` (max_new_tokens).
        prompt_format: ``"chat"`` when the model's chat template was used, ``"plain"`` otherwise.
        candidates: the answers that competed when the reader rescored (its decoded answer
            and the passages' titles), each ``{"text", "source", "score"}`` with the model's
            mean log-probability per token as score; empty when nothing was rescored.
    """

    text: str
    question: str
    strategy: str
    citations: list[Citation] = field(default_factory=list)
    dropped: int = 0
    model: str = ""
    prompt_tokens: int = 0
    generated_tokens: int = 0
    finish_reason: str = "stop"
    prompt_format: str = "chat"
    latency_s: float = 0.0
    candidates: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["citations"] = [c.to_dict() for c in self.citations]
        return out

    def __str__(self) -> str:
        refs = ", ".join(f"[{c.number}] {c.title}" for c in self.citations)
        return f"{self.text}\n  sources: {refs}" if refs else self.text


@dataclass
class Completion:
    """A raw continuation of a prompt by the reader's model (no retrieval, no answer clean-up).

    Attributes:
        text: the generated text, cut before the first stop string when one appeared.
        finish_reason: ``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (``max_tokens``).
        prompt_tokens / completion_tokens: token counts of the prompt and of the generation.
        top_logprobs: when asked, one ``{token_text: logprob}`` per generated token: the model's
            most likely next tokens at that step (natural log, full-vocabulary softmax).
        tokens / token_logprobs: when asked, each generated token's text and its log-probability.

    Example:
        >>> Completion(text=" Paris", finish_reason="stop", prompt_tokens=7, completion_tokens=1).text
        ' Paris'
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    top_logprobs: list[dict[str, float]] | None = None
    tokens: list[str] | None = None
    token_logprobs: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
