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

Every reader builds its prompts here, so they all cite the same way: the token
counts come from the model's own tokenizer where the reader has one (transformers,
llama.cpp), else from :class:`ApproxTokenizer` (an HTTP endpoint's tokenizer is not
visible). :meth:`PromptBuilder.build` returns the prompt as token ids, as text, and as
chat messages (for chat APIs, which open the assistant's turn themselves).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rag_lfm.readers.base import NoPassagesError, PromptTooLongError
from rag_lfm.readers.types import Answer, Citation
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
    text: str = ""  # the prompt as text (what ``ids`` encode)
    messages: list[dict[str, str]] = field(default_factory=list)  # the same as chat turns, for chat APIs


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
        # Token ids put before every prompt: a prompt-tuning adapter's virtual tokens (ids past the
        # vocabulary, embedded by the adapter; see rag_lfm.adapters.reader). Empty otherwise.
        self.virtual_ids: list[int] = []
        has_template = bool(getattr(tokenizer, "chat_template", None))
        self.chat = has_template if use_chat_template is None else (use_chat_template and has_template)

    # -- rendering ---------------------------------------------------------------------
    def _turns(self, question: str, blocks: list[str]) -> tuple[str, tuple[tuple[str, str], ...], str]:
        """The system text, the worked examples and the user's turn."""
        if blocks:
            # The question comes before the passages as well as after them: read with the
            # question in mind, a small model picks the right passage more often (dev split).
            user = f"Question: {question}\nPassages:\n" + "\n\n".join(blocks) + f"\n\nQuestion: {question}"
            return self.system_rag, EXAMPLES_RAG, user
        return self.system_closed, EXAMPLES_CLOSED, f"Question: {question}"

    def _messages(self, question: str, blocks: list[str], prefix: str) -> list[dict[str, str]]:
        system, examples, user = self._turns(question, blocks)
        messages = [{"role": "system", "content": system}]
        if self.one_shot:
            for q, a in examples:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": f"{prefix} {a}".strip()}]
        messages.append({"role": "user", "content": user})
        return messages

    def _render(self, question: str, blocks: list[str]) -> str:
        system, examples, user = self._turns(question, blocks)
        prefix = self.answer_prefix
        if self.chat:
            messages = self._messages(question, blocks, prefix)
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
            self._prefixes[key] = (prefix, list(self.virtual_ids) + ids)
        return self._prefixes[key]

    def _encode(self, text: str, rag: bool = True) -> list[int]:
        # The chat template already holds the special tokens; a plain prompt gets the
        # tokenizer's usual ones (BOS for Llama-style models), once, on the prefix.
        prefix, ids = self._shared_prefix(rag)
        if prefix and text.startswith(prefix):
            return ids + list(self.tokenizer(text[len(prefix):], add_special_tokens=False)["input_ids"])
        return list(self.virtual_ids) + list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

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
        base_text = self._render(question, [])
        base_ids = self._encode(base_text, rag=False)
        if not passages:
            self._check_fits(question, len(base_ids))
            return PromptParts(base_ids, [], 0, self._fmt(), None, self.prefix_len(False), base_text,
                               self._messages(question, [], ""))
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
        text = self._render(question, blocks)
        ids = self._encode(text)
        # Token counts of the parts can differ by a token or two from the whole at the
        # joins; if so, drop the last passage (the rule: only lowest-ranked ones go).
        while len(ids) > self.budget and blocks:
            blocks.pop()
            citations.pop()
            text = self._render(question, blocks)
            ids = self._encode(text)
        context = [t for b in blocks for t in self.tokenizer("\n" + b + "\n", add_special_tokens=False)["input_ids"]]
        # Chat APIs open the assistant's turn themselves (no "Answer:" can be put in it),
        # so their worked examples answer bare, and the reply is the answer alone.
        return PromptParts(ids, citations, len(passages) - len(citations), self._fmt(), context, self.prefix_len(True),
                           text, self._messages(question, blocks, ""))

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


# -- shared by every reader: the prompts of a strategy, the answer, the extractive floor ----------------
def replug_weights(scores: Sequence[float], temperature: float) -> list[float]:
    """REPLUG's mixture weights: ``softmax(score / temperature)`` over the passages' retrieval scores.

    Example:
        >>> [round(w, 3) for w in replug_weights([0.9, 0.8], 0.05)]
        [0.881, 0.119]
    """
    z = [float(x) / temperature for x in scores]
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def plan_prompts(
    builder: PromptBuilder, question: str, passages: Sequence[Hit], strategy: str, temperature: float
) -> tuple[list[PromptParts], list[float] | None]:
    """The prompts for one question (one per passage under REPLUG) and their mixture weights.

    Under REPLUG each prompt holds one passage, cited with its rank as number and its
    weight; other strategies have one prompt and no weights.
    """
    if strategy == "closed-book":
        return [builder.build(question, [])], None
    if not passages:
        raise NoPassagesError(
            f"strategy {strategy!r} got no passages for question {question[:80]!r}: the index is empty or "
            "the filter matched nothing; ingest documents first (`rag-lfm ingest`), loosen the filter, "
            "or use strategy 'closed-book'"
        )
    if strategy == "in-context":
        return [builder.build(question, passages)], None
    parts = [builder.build(question, [hit]) for hit in passages]
    weights = replug_weights([float(h.score) for h in passages], temperature)
    for number, (p, w) in enumerate(zip(parts, weights), start=1):
        for c in p.citations:
            c.number, c.weight = number, float(w)
    return parts, weights


def clean_answer(text: str, prefix: str = ANSWER_PREFIX) -> str:
    """The answer in a generation: its first line, without a leading ``Answer:`` a chat model may repeat.

    Example:
        >>> clean_answer(" Answer: Eiffel Tower\\nIt is in Paris.")
        'Eiffel Tower'
    """
    line = text.strip().split("\n", 1)[0].strip()
    if prefix and line.lower().startswith(prefix.lower()):
        line = line[len(prefix):].strip()
    return line


def make_answer(
    question: str,
    strategy: str,
    parts: Sequence[PromptParts],
    text: str,
    *,
    model: str,
    generated_tokens: int,
    finish_reason: str,
    latency_s: float,
    prompt_tokens: int | None = None,
) -> Answer:
    """An :class:`Answer` citing the passages of ``parts`` (the prompts the model saw)."""
    return Answer(
        text=text,
        question=question,
        strategy=strategy,
        citations=[c for p in parts for c in p.citations],
        dropped=parts[0].dropped if strategy == "in-context" else 0,
        model=model,
        prompt_tokens=sum(len(p.ids) for p in parts) if prompt_tokens is None else prompt_tokens,
        generated_tokens=generated_tokens,
        finish_reason=finish_reason,
        prompt_format=parts[0].fmt,
        latency_s=latency_s,
    )


def extractive_answer(question: str, passages: Sequence[Hit]) -> Answer:
    """No model call: the top passage's title, else its first sentence (a fallback, and a floor)."""
    if not passages:
        raise NoPassagesError(
            f"strategy 'extractive' got no passages for question {question[:80]!r}: the index is empty or "
            "the filter matched nothing; ingest documents first, loosen the filter, or use strategy 'closed-book'"
        )
    start = time.perf_counter()
    top = passages[0]
    title = top.metadata.get("title") if isinstance(top.metadata, dict) else None
    text = str(title) if title else top.text.strip().split(". ", 1)[0]
    cite = _citation(1, top, passage_title(top), top.text, False)
    return Answer(
        text=text, question=question, strategy="extractive", citations=[cite], dropped=len(passages) - 1,
        model="", prompt_format="none", latency_s=time.perf_counter() - start,
    )


class ApproxTokenizer:
    """Counts tokens without the model's tokenizer (an HTTP endpoint does not expose it).

    A "token" is a run of letters, one digit, one other character, or a run of spaces,
    each with its leading space: for English this counts close to, and a little under,
    a BPE tokenizer's count, so budgets built on it should keep some margin (the
    :class:`~rag_lfm.readers.openai_reader.OpenAIReader` leaves a quarter of the window).
    It has the small slice of the transformers tokenizer API that :class:`PromptBuilder`
    uses; ids index the pieces seen so far, so ``decode`` gives the text back exactly.

    Example:
        >>> tok = ApproxTokenizer()
        >>> ids = tok("Claude Monet, 1840")["input_ids"]
        >>> len(ids), tok.decode(ids[:2])
        (7, 'Claude Monet')
    """

    chat_template = None
    eos_token_id = None
    pad_token_id = None
    _PIECE = re.compile(r"\s*[^\W\d_]+|\s*\d|\s*[^\s]|\s+")

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        ids = []
        for piece in self._PIECE.findall(text):
            i = self._ids.get(piece)
            if i is None:
                with self._lock:
                    i = self._ids.setdefault(piece, len(self._pieces))
                    if i == len(self._pieces):
                        self._pieces.append(piece)
            ids.append(i)
        return {"input_ids": ids}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(self._pieces[i] for i in ids)

    def __len__(self) -> int:
        return len(self._pieces)



# Among alternative answers, one of more words than this is a copied sentence, not a name or phrase.
MAX_ANSWER_WORDS = 8


def keep_candidates(texts: Sequence[str], question: str | None, demoted: set[int] | frozenset[int] = frozenset()) -> list[int]:
    """Which candidate answers compete: the indices of ``texts`` kept, in order (the rule every local reader uses).

    Empty texts and repeats (after SQuAD normalisation) are dropped. A candidate that only repeats
    words of ``question`` ("John Lennon" to "Who was John Lennon's songwriting partner?"), or is in
    ``demoted`` (e.g. it ran to the token limit without ending), or holds more than
    ``MAX_ANSWER_WORDS`` words among several candidates (a copied sentence) competes only when
    nothing else is left.

    Example:
        >>> keep_candidates(["John Lennon", "Paul McCartney", "paul mccartney"], "Who was John Lennon's partner?")
        [1]
    """
    from rag_lfm.eval.qa import normalize_answer

    echo = f" {normalize_answer(question)} " if question else None
    seen: set[str] = set()
    kept, last_resort = [], []
    for i, text in enumerate(texts):
        key = normalize_answer(text)
        if not key or key in seen:
            continue
        seen.add(key)
        weak = (echo is not None and f" {key} " in echo) or i in demoted or (len(texts) > 1 and len(key.split()) > MAX_ANSWER_WORDS)
        (last_resort if weak else kept).append(i)
    return kept or last_resort
