"""A retrieval-augmented answer as one LangChain Runnable: question -> answer with citations.

:class:`RagLfmQA` keeps what the reader does that a plain prompt through a chat model
loses: the answer is copied from the passages (copy-constrained decoding), the decoded
answer competes with the passages' titles, each scored whole by the frozen model, and
the passages the model saw come back numbered as citations. Through
``retriever | prompt | model`` a 135M model answers in a free sentence, often cut off;
through ``RagLfmQA`` it answers with the name or phrase, as ``rag-lfm ask`` does.

Input: a question (str) or ``{"question": str}``. Output: ``{"question", "answer",
"citations", "strategy", "finish_reason"}`` where ``citations`` are LangChain Documents:
``page_content`` the passage text the model saw, ``id`` its document's id, metadata the
document's own plus ``metadata["rag_lfm"] = {number, chunk_id, doc_id, source_id, score,
title, truncated, weight}``. Per call: ``invoke(q, k=..., filter=..., strategy=...)``.
``batch`` retrieves all questions in one search and answers them in batches.
``stream`` yields the one final output (the answer is chosen after decoding, by scoring
candidates, so there is no token stream of it; stream a chat model for that).

Example:
    >>> qa = RagLfmQA(RagLfmRetriever(kb="indexes/wiki-vital", k=3))                   # doctest: +SKIP
    >>> out = qa.invoke("Which article is described as: Dutch post-impressionist painter?")  # doctest: +SKIP
    >>> out["answer"], [d.id for d in out["citations"]]                                # doctest: +SKIP
    ('Vincent van Gogh', ['Vincent van Gogh', 'Paul Gauguin', 'Paul Cézanne'])
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.documents import Document as LCDocument
    from langchain_core.runnables import Runnable, RunnableConfig
    from langchain_core.runnables.config import run_in_executor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from rag_lfm.errors import ConfigError
from rag_lfm.integrations.langchain._common import PROVENANCE_KEY, as_kb, check_k, check_unknown, translate_filter
from rag_lfm.integrations.langchain.retriever import RagLfmRetriever
from rag_lfm.readers import ask_batch, check_strategy
from rag_lfm.readers.types import Answer, Citation

_CALL_KWARGS = ("k", "filter", "strategy")


class RagLfmQA(Runnable[Any, dict[str, Any]]):
    """Question -> answer with citations, by retrieval and the frozen reader (see the module docstring).

    Args:
        retriever: a :class:`RagLfmRetriever` (its method, metric, reranker, filter and k
            apply), a rag-lfm ``Retriever``, a KnowledgeBase or an index path (dense search).
        reader: a ``TransformersReader``, a :class:`RagLfmChatModel` (its reader is shared), or
            None for the default reader (SmolLM2-135M-Instruct).
        k: passages per question (default: the RagLfmRetriever's k, else 3).
        strategy: ``"in-context"``, ``"replug"``, ``"extractive"`` or ``"closed-book"``.
        filter: a metadata filter (ANDed with a RagLfmRetriever's own).
    """

    def __init__(
        self,
        retriever: Any,
        *,
        reader: Any = None,
        k: int | None = None,
        strategy: str = "in-context",
        filter: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(retriever, RagLfmRetriever):
            self.retriever: RagLfmRetriever | None = retriever
            self.source: Any = retriever.retriever
            default_k = retriever.k
        elif hasattr(retriever, "search_batch") and hasattr(retriever, "kb"):
            self.retriever, self.source, default_k = None, retriever, 3  # a rag-lfm Retriever
        else:
            self.retriever, self.source, default_k = None, as_kb(retriever), 3
        self.k = check_k(k if k is not None else default_k)
        self.strategy = check_strategy(strategy)
        self.filter = translate_filter(filter)
        if reader is not None and hasattr(reader, "get_reader") and not hasattr(reader, "generate_batch"):
            self._chat = reader  # a RagLfmChatModel: its reader loads on first use
            self._reader = None
        else:
            if reader is not None and not hasattr(reader, "generate_batch"):
                raise ConfigError(
                    f"reader={reader!r} is neither a rag-lfm reader (TransformersReader) nor a RagLfmChatModel"
                )
            self._chat, self._reader = None, reader

    @property
    def reader(self) -> Any:
        """The reader (created on first use: the default is SmolLM2-135M-Instruct)."""
        if self._reader is None:
            if self._chat is not None:
                self._reader = self._chat.get_reader()
            else:
                from rag_lfm.readers import TransformersReader

                self._reader = TransformersReader()
        return self._reader

    # -- the work -------------------------------------------------------------------------------
    def _options(self, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any] | None, str]:
        check_unknown(kwargs, _CALL_KWARGS, "RagLfmQA call")
        k = check_k(kwargs.get("k", self.k))
        strategy = check_strategy(kwargs.get("strategy", self.strategy))
        parts = [f for f in (self.retriever.filter if self.retriever else None, self.filter,
                             translate_filter(kwargs.get("filter"))) if f]
        flt = None if not parts else parts[0] if len(parts) == 1 else {"$and": parts}
        return k, flt, strategy

    def _answer_many(self, inputs: list[Any], **kwargs: Any) -> list[dict[str, Any]]:
        k, flt, strategy = self._options(kwargs)
        questions = [_question(x, i) for i, x in enumerate(inputs)]
        answers = ask_batch(self.source, questions, reader=self.reader, strategy=strategy, k=k, filter=flt)
        return [_output(a) for a in answers]

    def _answer_one(self, input: Any, **kwargs: Any) -> dict[str, Any]:
        return self._answer_many([input], **kwargs)[0]

    # -- Runnable -------------------------------------------------------------------------------
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """Answer one question: ``{"question", "answer", "citations", "strategy", "finish_reason"}``."""
        return self._call_with_config(self._answer_one, input, config, run_type="chain", **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> dict[str, Any]:
        """:meth:`invoke` in a worker thread (the model and the search release the GIL)."""
        return await run_in_executor(config, self.invoke, input, config, **kwargs)

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Many questions: one batched search, then the reader's batched generation."""
        return self._batch_with_config(self._answer_many, inputs, config, return_exceptions=return_exceptions,
                                       run_type="chain", **kwargs)

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """:meth:`batch` in a worker thread."""
        return await run_in_executor(None, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)


def _question(x: Any, i: int) -> str:
    q = x.get("question") if isinstance(x, dict) else x
    if not isinstance(q, str) or not q.strip():
        raise ConfigError(f"input {i} must be a non-empty question str or {{'question': str}}, got {x!r}")
    return q


def citation_document(c: Citation) -> LCDocument:
    """A reader citation as a LangChain Document (the passage the model saw, numbered as in its prompt)."""
    meta = dict(c.metadata or {})
    if PROVENANCE_KEY in meta:
        raise ConfigError(
            f"document {c.doc_id!r} has its own metadata key {PROVENANCE_KEY!r}, which rag-lfm reserves for "
            "provenance; rename that key at ingest"
        )
    meta[PROVENANCE_KEY] = {
        "number": c.number, "chunk_id": int(c.chunk_id), "doc_id": c.doc_id, "source_id": c.source_id,
        "score": float(c.score), "title": c.title, "truncated": bool(c.truncated), "weight": float(c.weight),
    }
    return LCDocument(page_content=c.text, metadata=meta, id=str(c.doc_id))


def _output(a: Answer) -> dict[str, Any]:
    return {
        "question": a.question,
        "answer": a.text,
        "citations": [citation_document(c) for c in a.citations],
        "strategy": a.strategy,
        "finish_reason": a.finish_reason,
    }
