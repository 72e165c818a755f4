"""Readers: a frozen foundation model answers from retrieved passages, with citations.

Example:
    >>> from rag_lfm.readers import TransformersReader, ask
    >>> reader = TransformersReader("SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> ask(kb, "Who painted Water Lilies?", reader=reader, k=3).text  # doctest: +SKIP
"""

from rag_lfm.readers.base import STRATEGIES, NoPassagesError, PromptTooLongError, Reader, check_strategy
from rag_lfm.readers.pipeline import ask, ask_batch
from rag_lfm.readers.transformers_reader import TransformersReader
from rag_lfm.readers.types import Answer, Citation, Completion

__all__ = [
    "STRATEGIES",
    "Answer",
    "Citation",
    "Completion",
    "NoPassagesError",
    "PromptTooLongError",
    "Reader",
    "TransformersReader",
    "ask",
    "ask_batch",
    "check_strategy",
]
