"""LangChain plug-in: rag-lfm as a vector store, a retriever, embeddings and a chat model.

Needs only ``langchain-core`` (``pip install 'rag-lfm[langchain]'``). Which class when:

* :class:`RagLfmVectorStore` (``langchain_core.vectorstores.VectorStore``): LangChain code
  that adds and searches documents (``add_documents``, ``similarity_search``, ``as_retriever``),
  over a rag-lfm index, so chunking, atomic commits and the SQL doc store apply.
* :class:`RagLfmRetriever` (``BaseRetriever``): the chain's retriever, with everything
  rag-lfm retrieval does (dense / BM25 / hybrid, metrics, fusion, reranker, MMR, filters).
* :class:`RagLfmEmbeddings` (``Embeddings``): rag-lfm's embedders (torch, onnx-int8,
  openvino-int8 backends) for any LangChain component.
* :class:`RagLfmChatModel` (``BaseChatModel``): the frozen reader model as a chat model.
* :class:`RagLfmQA` (a ``Runnable``): question -> answer with citations, with the reader's
  copy-constrained, candidate-scored answering (what a plain prompt loses).

Example:
    >>> from rag_lfm.integrations.langchain import RagLfmRetriever
    >>> retriever = RagLfmRetriever(kb="indexes/wiki-vital", k=4)             # doctest: +SKIP
    >>> retriever.invoke("French Impressionist painter")[0].id                # doctest: +SKIP
    'Claude Monet'
"""

from __future__ import annotations

from typing import Any

from rag_lfm.integrations.langchain._common import PROVENANCE_KEY, format_documents, hit_to_document, translate_filter
from rag_lfm.integrations.langchain.embeddings import LangChainEmbedder, RagLfmEmbeddings
from rag_lfm.integrations.langchain.retriever import RagLfmRetriever
from rag_lfm.integrations.langchain.vectorstore import RagLfmVectorStore

_LAZY = {
    "RagLfmChatModel": "rag_lfm.integrations.langchain.chat_model",
    "RagLfmQA": "rag_lfm.integrations.langchain.qa",
}


def __getattr__(name: str) -> Any:
    # The chat model and the QA runnable load the reader stack (torch, transformers) only when asked for.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PROVENANCE_KEY",
    "LangChainEmbedder",
    "RagLfmChatModel",
    "RagLfmEmbeddings",
    "RagLfmQA",
    "RagLfmRetriever",
    "RagLfmVectorStore",
    "format_documents",
    "hit_to_document",
    "translate_filter",
]
