"""Retrieval: two-stage dense search with pluggable metrics, BM25, fusion, reranking, MMR.

Example:
    >>> from rag_lfm.retrieval import Retriever, rrf, mmr, BM25Index   # doctest: +SKIP
"""

from rag_lfm.retrieval.bm25 import BM25Index
from rag_lfm.retrieval.dense import VectorCache, two_stage_search
from rag_lfm.retrieval.fusion import fuse, rrf, weighted
from rag_lfm.retrieval.mmr import mmr
from rag_lfm.retrieval.rerank import CrossEncoderReranker
from rag_lfm.retrieval.retriever import METHODS, Retriever

__all__ = [
    "BM25Index",
    "CrossEncoderReranker",
    "METHODS",
    "Retriever",
    "VectorCache",
    "fuse",
    "mmr",
    "rrf",
    "two_stage_search",
    "weighted",
]
