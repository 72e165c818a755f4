"""Readers: a frozen foundation model answers from retrieved passages, with citations.

Three backends share prompts, citations and strategies: :class:`TransformersReader`
(a local transformers model), :class:`LlamaCppReader` (a GGUF file through llama.cpp,
extra ``llamacpp``) and :class:`OpenAIReader` (any OpenAI-compatible endpoint, extra
``openai``); :func:`make_reader` builds one by name. The last two import their client
library only when used.

Example:
    >>> from rag_lfm.readers import TransformersReader, ask
    >>> reader = TransformersReader("SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> ask(kb, "Who painted Water Lilies?", reader=reader, k=3).text  # doctest: +SKIP
"""

from typing import Any

from rag_lfm.readers.base import (
    STRATEGIES,
    Capabilities,
    CapabilityError,
    NoPassagesError,
    PromptTooLongError,
    Reader,
    check_reader,
    check_strategy,
)
from rag_lfm.readers.pipeline import ask, ask_batch
from rag_lfm.readers.registry import READERS, make_reader
from rag_lfm.readers.transformers_reader import TransformersReader
from rag_lfm.readers.types import Answer, Citation, Completion


def __getattr__(name: str) -> Any:
    # Imported on first use: `import rag_lfm.readers` stays as light as it was, and the
    # llama.cpp and OpenAI client libraries are only imported when those readers are made.
    if name == "LlamaCppReader":
        from rag_lfm.readers.llamacpp_reader import LlamaCppReader

        return LlamaCppReader
    if name == "OpenAIReader":
        from rag_lfm.readers.openai_reader import OpenAIReader

        return OpenAIReader
    raise AttributeError(f"module 'rag_lfm.readers' has no attribute {name!r}")


__all__ = [
    "READERS",
    "STRATEGIES",
    "Answer",
    "Capabilities",
    "CapabilityError",
    "Citation",
    "Completion",
    "LlamaCppReader",
    "NoPassagesError",
    "OpenAIReader",
    "PromptTooLongError",
    "Reader",
    "TransformersReader",
    "ask",
    "ask_batch",
    "check_reader",
    "check_strategy",
    "make_reader",
]
