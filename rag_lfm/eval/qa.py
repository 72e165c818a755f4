"""Answer quality: exact match and token F1 (SQuAD normalisation), answer-in-context rate, latency.

Data: a JSONL file, one question per line::

    {"id": "q1", "question": "Who painted Water Lilies?", "answers": ["Claude Monet", "Monet"]}

(``"answer": "..."`` is accepted for a single gold answer; an optional ``"query"`` is
the retrieval query when it should differ from the question shown to the reader.)

Built-in task (:func:`wiki_vital_task`): "Which article/entity is described as:
<description>?" over the wiki-vital corpus, gold answer = the article title. It keeps
descriptions of >= 3 words that are unique in the corpus (so one article fits) and do
not contain the title, and it splits articles by a hash of the title
(:mod:`rag_lfm.eval.splits`) into ``train`` (40%, for anything trained), ``dev`` (20%, for
tuning prompts and settings) and ``test`` (40%, held out); a sample is drawn from one split
with a fixed seed.

Example:
    >>> exact_match("The Eiffel Tower.", ["Eiffel tower"]), round(token_f1("Claude Monet", ["Monet"]), 2)
    (1.0, 0.67)
"""

from __future__ import annotations

import json
import random
import re
import string
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag_lfm.errors import ConfigError
from rag_lfm.eval.splits import check_split, document_split

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in golds))


def _f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1, the best over the gold answers."""
    return max((_f1(prediction, g) for g in golds), default=0.0)


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a normalised gold answer occurs, on word boundaries, in the normalised prediction
    (a looser match than EM: "the Seine river" contains "Seine")."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in pred for g in golds))


def answer_in_context(golds: Sequence[str], passages: Iterable[str]) -> bool:
    """Whether any normalised gold answer occurs, on word boundaries, in the normalised passages."""
    context = " " + " ".join(normalize_answer(p) for p in passages) + " "
    return any(normalize_answer(g) and f" {normalize_answer(g)} " in context for g in golds)


@dataclass
class QAExample:
    """One question with its gold answers (``query`` defaults to the question)."""

    question: str
    answers: list[str]
    id: str = ""
    query: str = ""

    def __post_init__(self) -> None:
        if not self.query:
            self.query = self.question


def load_qa_jsonl(path: str | Path) -> list[QAExample]:
    """Read a QA JSONL file; a bad line raises ConfigError naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"QA file {str(p)!r} does not exist; pass a JSONL file with question/answers lines")
    out: list[QAExample] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{n} is not valid JSON ({exc.msg})") from exc
        answers = row.get("answers", row.get("answer"))
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(row, dict) or not isinstance(row.get("question"), str) or not answers:
            raise ConfigError(
                f"{p}:{n} needs a 'question' string and 'answers' (a list of strings) or 'answer'; got {line[:120]!r}"
            )
        out.append(QAExample(row["question"], [str(a) for a in answers], str(row.get("id", n)), str(row.get("query", ""))))
    if not out:
        raise ConfigError(f"QA file {str(p)!r} holds no questions")
    return out




QUESTION_TEMPLATE = "Which article/entity is described as: {description}?"


def wiki_vital_task(
    n: int = 300,
    *,
    seed: int = 0,
    split: str = "test",
    query: str = "question",
    entries: Sequence[dict[str, Any]] | None = None,
) -> list[QAExample]:
    """The built-in QA task over wiki-vital (see the module docstring).

    Args:
        n: questions to draw (all of the split when larger).
        seed: the sample's seed (fixed by default, so every run scores the same questions).
        split: ``"test"`` (held out), ``"dev"`` (for tuning prompts and settings) or ``"train"``
            (for anything trained): documents split by :func:`rag_lfm.eval.splits.document_split`.
        query: the retrieval query: ``"question"`` (the full question) or ``"description"``.
        entries: the raw ``{title, extract, description}`` entries to draw from (default: all of
            :func:`~rag_lfm.connectors.wiki.load_wiki_vital`; e.g. a JSONL export where the package is absent).

    Gold answers are the title and, for a title with a parenthetical qualifier
    ("Mercury (planet)"), the title without it.
    """
    check_split(split)
    if query not in ("question", "description"):
        raise ConfigError(f"query {query!r} is not valid; use 'question' or 'description'")
    if entries is None:
        from rag_lfm.connectors.wiki import load_wiki_vital

        entries = load_wiki_vital()
    counts = Counter(normalize_answer(e.get("description") or "") for e in entries)
    pool: list[QAExample] = []
    for e in entries:
        title, desc = (e.get("title") or "").strip(), (e.get("description") or "").strip()
        if not title or len(desc.split()) < 3 or counts[normalize_answer(desc)] != 1:
            continue
        if normalize_answer(title) in normalize_answer(desc) or document_split(title) != split:
            continue
        golds = [title]
        bare = re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()
        if bare and bare != title:
            golds.append(bare)
        pool.append(QAExample(QUESTION_TEMPLATE.format(description=desc), golds, title, desc if query == "description" else ""))
    random.Random(seed).shuffle(pool)
    return pool[:n]


@dataclass
class QAReport:
    """Scores of one strategy on a QA set; ``records`` holds one dict per question."""

    strategy: str
    k: int
    n: int
    exact_match: float
    f1: float
    answer_in_context: float | None
    seconds_per_question: float
    latency_p50_s: float
    latency_p95_s: float
    retrieval_s_per_question: float
    records: list[dict[str, Any]] = field(default_factory=list)
    contains: float = 0.0  # share of predictions that contain a gold answer (see contains_answer)

    def to_dict(self, *, records: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not records:
            out.pop("records")
        return out

    def row(self) -> str:
        aic = "   -  " if self.answer_in_context is None else f"{self.answer_in_context:6.3f}"
        return (f"{self.strategy:<12} k={self.k:<2} n={self.n:<4} EM {self.exact_match:6.3f}  contains {self.contains:6.3f}  "
                f"F1 {self.f1:6.3f}  in-context {aic}  {self.seconds_per_question:6.3f} s/q")


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def evaluate_qa(
    source: Any,
    reader: Any,
    examples: Sequence[QAExample],
    *,
    strategy: str = "in-context",
    k: int = 5,
    filter: dict[str, Any] | None = None,
    progress: bool = True,
) -> QAReport:
    """Retrieve (batched), answer (batched) and score ``examples``.

    ``seconds_per_question`` is the whole wall time (retrieval + reading) over n;
    the answer-in-context rate is None for closed-book (no context is handed over).

    Example:
        >>> report = evaluate_qa(kb, TransformersReader(), wiki_vital_task(50), k=3)  # doctest: +SKIP
        >>> print(report.row())  # doctest: +SKIP
    """
    from rag_lfm.readers.base import check_strategy
    from rag_lfm.readers.pipeline import _check_not_empty

    strategy = check_strategy(strategy)
    if not examples:
        raise ConfigError("evaluate_qa() got no examples")
    start = time.perf_counter()
    if strategy == "closed-book":
        passages: list[list[Any]] = [[] for _ in examples]
    else:
        _check_not_empty(source)
        queries = [e.query for e in examples]
        passages = source.search_batch(queries, k, filter=filter) if filter else source.search_batch(queries, k)
    retrieval_s = time.perf_counter() - start
    answers = reader.generate_batch([e.question for e in examples], passages, strategy=strategy, progress=progress)
    total = time.perf_counter() - start
    records = []
    for e, a in zip(examples, answers):
        in_ctx = None
        if strategy != "closed-book":
            in_ctx = answer_in_context(e.answers, [f"{c.title} {c.text}" for c in a.citations])
        records.append({
            "id": e.id, "question": e.question, "answers": e.answers, "prediction": a.text,
            "em": exact_match(a.text, e.answers), "contains": contains_answer(a.text, e.answers),
            "f1": token_f1(a.text, e.answers), "in_context": in_ctx,
            "cited": [c.doc_id for c in a.citations], "latency_s": a.latency_s,
            "prompt_tokens": a.prompt_tokens, "generated_tokens": a.generated_tokens,
        })
    n = len(records)
    ctx = [r["in_context"] for r in records if r["in_context"] is not None]
    latencies = [a.latency_s + retrieval_s / n for a in answers]
    return QAReport(
        strategy=strategy, k=0 if strategy == "closed-book" else k, n=n,
        exact_match=sum(r["em"] for r in records) / n, f1=sum(r["f1"] for r in records) / n,
        contains=sum(r["contains"] for r in records) / n,
        answer_in_context=(sum(ctx) / len(ctx)) if ctx else None,
        seconds_per_question=total / n, latency_p50_s=_quantile(latencies, 0.5), latency_p95_s=_quantile(latencies, 0.95),
        retrieval_s_per_question=retrieval_s / n, records=records,
    )
