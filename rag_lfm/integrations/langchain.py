"""LangChain plug-in: a rag-lfm index as a LangChain retriever.

Needs only ``langchain-core`` (``pip install 'rag-lfm[langchain]'``).

Example:
    >>> from rag_lfm import KnowledgeBase
    >>> from rag_lfm.integrations.langchain import RagLfmRetriever
    >>> retriever = RagLfmRetriever(kb=KnowledgeBase.open("indexes/wiki-vital"), k=4)   # doctest: +SKIP
    >>> retriever.invoke("French Impressionist painter")[0].metadata["doc_id"]          # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForRetrieverRun
    from langchain_core.documents import Document as LCDocument
    from langchain_core.retrievers import BaseRetriever
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from pydantic import ConfigDict

from rag_lfm.types import Hit


def hit_to_document(hit: Hit) -> LCDocument:
    """A LangChain Document for a hit; ids, score and offsets go into the metadata."""
    meta = dict(hit.metadata)
    meta.update({"doc_id": hit.doc_id, "chunk_id": hit.chunk_id, "source_id": hit.source_id, "score": hit.score, "start": hit.start, "end": hit.end})
    return LCDocument(page_content=hit.text, metadata=meta, id=str(hit.chunk_id))


class RagLfmRetriever(BaseRetriever):
    """Retrieve from a :class:`~rag_lfm.KnowledgeBase` inside a LangChain chain.

    Args:
        kb: an open KnowledgeBase.
        k: passages per query.
        filter: a rag-lfm metadata filter applied to every query.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: Any
    k: int = 4
    filter: dict[str, Any] | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[LCDocument]:
        return [hit_to_document(h) for h in self.kb.search(query, k=self.k, filter=self.filter)]

    def batch_search(self, queries: list[str]) -> list[list[LCDocument]]:
        """Many queries in one embedding pass (LangChain's ``batch`` runs them one by one)."""
        return [[hit_to_document(h) for h in hits] for hits in self.kb.search_batch(queries, k=self.k, filter=self.filter)]
