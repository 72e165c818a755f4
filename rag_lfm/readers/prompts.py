"""Prompt layout and the token budget rule for packing passages.

The token budget rule (in-context strategy)
-------------------------------------------
The prompt must leave room for the answer: ``budget = context_window - max_new_tokens``.
Passages arrive ranked by the retriever (best first) and are packed in that order:

1. every passage is first cut to at most ``max_passage_tokens`` tokens (its head is kept:
   leads and chunk starts carry the most, and a cut passage ends with `` ...``);
2. passages are then added whole, best first, while the prompt stays within budget;
3. the first passage that no longer fits whole is cut to the tokens left, if at least
   ``min_passage_tokens`` remain; otherwise it is dropped;
4. every lower-ranked passage is dropped (never a lower one in place of a higher one,
   so the prompt always holds a prefix of the ranking).

Dropped passages are counted in ``Answer.dropped`` and are not cited. If the
instructions and the question alone exceed the budget, :class:`PromptTooLongError` is
raised (cutting the question would silently change it).

Under REPLUG each passage gets its own prompt, so the rule applies per prompt with a
single passage (steps 1 and 3).

Layout: system instruction, worked examples, then ``Question: ... Passages: [1] title
text ... Question: ...`` and the model's turn opened with ``Answer:``. Everything up to
the question is the same for every prompt and is run once per batch.

Models without a chat template get a plain-text layout (``Passages: ... Question: ...
Answer:``) instead of the chat turns; ``Answer.prompt_format`` says which was used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rag_lfm.readers.base import PromptTooLongError
from rag_lfm.readers.types import Citation
from rag_lfm.types import Hit

SYSTEM_RAG = (
    "You answer questions from the numbered passages. Reply with the answer only: "
    "the exact name or short phrase from the passages, not a sentence."
)
SYSTEM_CLOSED = "Reply with the answer only: a name or short phrase, not a sentence."
# Worked examples before the real question: a 135M model copies the format of a
# shown answer far more reliably than it follows an instruction (measured on the dev split).
EXAMPLES_RAG: tuple[tuple[str, str], ...] = (
    (
        "Passages:\n[1] Mount Everest\nMount Everest is Earth's highest mountain above sea level.\n\n"
        "[2] Eiffel Tower\nThe Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France."
        "\n\nQuestion: Which landmark is a lattice tower in Paris?",
        "Eiffel Tower",
    ),
    (
        "Passages:\n[1] Nile\nThe Nile is a major north-flowing river in northeastern Africa. It flows into the "
        "Mediterranean Sea.\n\nQuestion: Into which sea does the Nile flow?",
        "Mediterranean Sea",
    ),
)
EXAMPLES_CLOSED: tuple[tuple[str, str], ...] = (("Question: What is the capital of France?", "Paris"),)
# Started in the model's turn, so the reply begins with the answer, not "The answer is".
ANSWER_PREFIX = "Answer:"


def passage_title(hit: Hit) -> str:
    """The heading shown for a passage: its ``title`` metadata, else its document id."""
    title = hit.metadata.get("title") if isinstance(hit.metadata, dict) else None
    return str(title) if title else str(hit.doc_id)


@dataclass
class PromptParts:
    """A rendered prompt: its token ids and the passages it holds."""

    ids: list[int]
    citations: list[Citation]
    dropped: int
    fmt: str
    context_ids: list[int] | None = None  # the passages' tokens, for copy-constrained decoding
    prefix_len: int = 0  # leading tokens shared by every prompt of this kind (run once per batch)


class PromptBuilder:
    """Renders prompts for one tokenizer, applying the token budget rule above.

    Example:
        >>> pb = PromptBuilder(tokenizer, budget=1000)  # doctest: +SKIP
        >>> parts = pb.build("Who painted Water Lilies?", hits)  # doctest: +SKIP
    """

    def __init__(
        self,
        tokenizer,
        *,
        budget: int,
        max_passage_tokens: int = 160,
        min_passage_tokens: int = 24,
        system_rag: str = SYSTEM_RAG,
        system_closed: str = SYSTEM_CLOSED,
        use_chat_template: bool | None = None,
        one_shot: bool = True,
        answer_prefix: str = ANSWER_PREFIX,
    ) -> None:
        self.tokenizer = tokenizer
        self.budget = budget
        self.max_passage_tokens = max_passage_tokens
        self.min_passage_tokens = min_passage_tokens
        self.system_rag = system_rag
        self.system_closed = system_closed
        self.one_shot = one_shot
        self.answer_prefix = answer_prefix
        self._prefixes: dict[str, tuple[str, list[int]]] = {}
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_template if use_chat_template is None else (use_chat_template and has_template)

    # -- rendering ---------------------------------------------------------------------
    def _render(self, question: str, blocks: list[str]) -> str:
        if blocks:
            # The question comes before the passages as well as after them: read with the
            # question in mind, a small model picks the right passage more often (dev split).
            user = f"Question: {question}\nPassages:\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"
            system, examples = self.system_rag, EXAMPLES_RAG
        else:
            user = f"Question: {question}"
            system, examples = self.system_closed, EXAMPLES_CLOSED
        prefix = self.answer_prefix
        if self.chat:
            messages = [{"role": "system", "content": system}]
            if self.one_shot:
                for q, a in examples:
                    messages += [{"role": "user", "content": q}, {"role": "assistant", "content": f"{prefix} {a}".strip()}]
            messages.append({"role": "user", "content": user})
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return text + prefix
        # No chat template: a plain completion layout that base models continue naturally.
        shot = "".join(f"{q}\n{prefix or 'Answer:'} {a}\n\n" for q, a in examples) if self.one_shot else ""
        return f"{system}\n\n{shot}{user}\n{prefix or 'Answer:'}"

    def _shared_prefix(self, rag: bool) -> tuple[str, list[int]]:
        """The text every prompt of one kind starts with (system, example, "Passages:"), and its ids.

        Prompts are tokenized as ``ids(prefix) + ids(rest)`` so that the reader can run
        the prefix once per batch and share its key/value cache across the rows.
        """
        key = "rag" if rag else "closed"
        if key not in self._prefixes:
            a = self._render("Q1?", ["[1] A\nx"] if rag else [])
            b = self._render("Q2!", ["[1] B\ny"] if rag else [])
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            cut = a.rfind("\n", 0, n) + 1  # end the prefix at a line break: a clean token boundary
            prefix = a[:cut]
            ids = list(self.tokenizer(prefix, add_special_tokens=not self.chat)["input_ids"]) if prefix else []
            self._prefixes[key] = (prefix, ids)
        return self._prefixes[key]

    def _encode(self, text: str, rag: bool = True) -> list[int]:
        # The chat template already holds the special tokens; a plain prompt gets the
        # tokenizer's usual ones (BOS for Llama-style models), once, on the prefix.
        prefix, ids = self._shared_prefix(rag)
        if prefix and text.startswith(prefix):
            return ids + list(self.tokenizer(text[len(prefix):], add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def prefix_len(self, rag: bool) -> int:
        """Tokens shared by every prompt of one kind (0 when nothing is shared)."""
        return len(self._shared_prefix(rag)[1])

    @staticmethod
    def _block(number: int, title: str, text: str) -> str:
        return f"[{number}] {title}\n{text}"

    def _cut(self, text: str, max_tokens: int) -> tuple[str, bool]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens:
            return text, False
        return self.tokenizer.decode(ids[:max_tokens]).rstrip() + " ...", True

    # -- public ---------------------------------------------------------------------------
    def build(self, question: str, passages: Sequence[Hit] = ()) -> PromptParts:
        """Render the prompt for ``question`` with as many of ``passages`` as the budget allows."""
        base_ids = self._encode(self._render(question, []), rag=False)
        if not passages:
            self._check_fits(question, len(base_ids))
            return PromptParts(base_ids, [], 0, self._fmt(), None, self.prefix_len(False))
        # Overhead of the RAG layout without passages (longer system text, "Passages:").
        empty_rag = self._encode(self._render(question, [""]))
        self._check_fits(question, len(empty_rag))
        left = self.budget - len(empty_rag)
        citations: list[Citation] = []
        blocks: list[str] = []
        for number, hit in enumerate(passages, start=1):
            title = passage_title(hit)
            text, truncated = self._cut(hit.text, self.max_passage_tokens)
            block = self._block(number, title, text)
            cost = len(self.tokenizer("\n\n" + block, add_special_tokens=False)["input_ids"])
            if cost > left:
                head = len(self.tokenizer("\n\n" + self._block(number, title, ""), add_special_tokens=False)["input_ids"])
                room = left - head - 2  # 2: the " ..." marker
                if room < self.min_passage_tokens:
                    break
                text, _ = self._cut(text, room)
                truncated = True
                block = self._block(number, title, text)
                cost = left
            blocks.append(block)
            left -= cost
            citations.append(_citation(number, hit, title, text, truncated))
            if left <= 0:
                break
        ids = self._encode(self._render(question, blocks))
        # Token counts of the parts can differ by a token or two from the whole at the
        # joins; if so, drop the last passage (the rule: only lowest-ranked ones go).
        while len(ids) > self.budget and blocks:
            blocks.pop()
            citations.pop()
            ids = self._encode(self._render(question, blocks))
        context = [t for b in blocks for t in self.tokenizer("\n" + b + "\n", add_special_tokens=False)["input_ids"]]
        return PromptParts(ids, citations, len(passages) - len(citations), self._fmt(), context, self.prefix_len(True))

    def _fmt(self) -> str:
        return "chat" if self.chat else "plain"

    def _check_fits(self, question: str, n_tokens: int) -> None:
        if n_tokens > self.budget:
            raise PromptTooLongError(
                f"the question ({len(question)} characters) makes a prompt of {n_tokens} tokens, over the "
                f"budget of {self.budget} tokens (context window minus max_new_tokens); shorten the question, "
                "lower max_new_tokens, or use a model with a longer context window"
            )


def _citation(number: int, hit: Hit, title: str, text: str, truncated: bool) -> Citation:
    return Citation(
        number=number,
        chunk_id=int(hit.chunk_id),
        doc_id=str(hit.doc_id),
        source_id=str(hit.source_id),
        score=float(hit.score),
        title=title,
        text=text,
        truncated=truncated,
        metadata=dict(hit.metadata or {}),
    )
