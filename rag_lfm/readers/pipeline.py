"""Retrieve, then read: the functions behind ``rag-lfm ask``.

``source`` is anything with ``search_batch(queries, k, filter=...) -> list[list[Hit]]``:
a :class:`~rag_lfm.knowledge_base.KnowledgeBase` (dense search) or a
:class:`~rag_lfm.retrieval.Retriever` (hybrid, reranked ...).

Example:
    >>> from rag_lfm import KnowledgeBase
    >>> from rag_lfm.readers import TransformersReader, ask
    >>> kb = KnowledgeBase.open("indexes/wiki-vital")  # doctest: +SKIP
    >>> answer = ask(kb, "Which painter founded Impressionism?", reader=TransformersReader(), k=3)  # doctest: +SKIP
    >>> answer.text, [c.doc_id for c in answer.citations]  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rag_lfm.errors import ConfigError
from rag_lfm.readers.base import DEFAULT_K, DEFAULT_STRATEGY, NoPassagesError, check_reader, check_strategy
from rag_lfm.readers.types import Answer


def _check_not_empty(source: Any) -> None:
    kb = getattr(source, "kb", source)
    try:
        size = len(kb)
    except TypeError:
        return  # a retriever without a size: an empty result is caught per question
    if size == 0:
        where = getattr(kb, "path", "")
        raise NoPassagesError(
            f"the index {str(where)!r} holds no documents, so there is nothing to retrieve; ingest documents "
            "first (`rag-lfm ingest`), or answer without retrieval with strategy 'closed-book'"
        )


def ask_batch(
    source: Any,
    questions: Sequence[str],
    *,
    reader: Any = None,
    strategy: str = DEFAULT_STRATEGY,
    k: int = DEFAULT_K,
    filter: dict[str, Any] | None = None,
    progress: bool = False,
) -> list[Answer]:
    """Retrieve ``k`` passages per question (one batched search) and answer them in batches.

    Each answer's ``latency_s`` includes its share of the retrieval time.
    """
    strategy = check_strategy(strategy)
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if isinstance(questions, str):
        raise ConfigError("ask_batch() takes a list of questions, got one str; use ask()")
    if reader is None:
        from rag_lfm.readers.transformers_reader import TransformersReader

        reader = TransformersReader()
    check_reader(reader, strategy)  # before retrieving: a reader that cannot run the strategy says so first
    start = time.perf_counter()
    if strategy == "closed-book" or source is None:
        if strategy != "closed-book":
            raise ConfigError(f"strategy {strategy!r} needs an index to retrieve from; pass one or use 'closed-book'")
        passages: list[list[Any]] = [[] for _ in questions]
    else:
        _check_not_empty(source)
        passages = source.search_batch(list(questions), k, filter=filter) if filter else source.search_batch(list(questions), k)
    retrieval_s = (time.perf_counter() - start) / max(1, len(questions))
    answers = reader.generate_batch(list(questions), passages, strategy=strategy, progress=progress)
    for a in answers:
        a.latency_s += retrieval_s
    return answers


def ask(
    source: Any,
    question: str,
    *,
    reader: Any = None,
    strategy: str = DEFAULT_STRATEGY,
    k: int = DEFAULT_K,
    filter: dict[str, Any] | None = None,
) -> Answer:
    """Answer one question from ``source`` (a KnowledgeBase or Retriever) with citations."""
    if not isinstance(question, str) or not question.strip():
        raise ConfigError(f"question must be a non-empty str, got {question!r}")
    return ask_batch(source, [question], reader=reader, strategy=strategy, k=k, filter=filter)[0]
