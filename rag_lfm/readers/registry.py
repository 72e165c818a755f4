"""Readers by name: ``transformers``, ``llamacpp``, ``openai`` (what ``--reader`` takes on the CLI).

Example:
    >>> make_reader("llamacpp", "SmolLM2-135M-Instruct", max_new_tokens=16)  # doctest: +SKIP
    >>> make_reader("openai", "qwen2.5", base_url="http://127.0.0.1:8000/v1", api="completions")  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from rag_lfm.errors import ConfigError


def _transformers(model: str | None, **options: Any) -> Any:
    from rag_lfm.readers.transformers_reader import TransformersReader

    return TransformersReader(model or "SmolLM2-135M-Instruct", **options)


def _llamacpp(model: str | None, **options: Any) -> Any:
    from rag_lfm.readers.llamacpp_reader import LlamaCppReader

    return LlamaCppReader(model or "SmolLM2-135M-Instruct", **options)


def _openai(model: str | None, **options: Any) -> Any:
    from rag_lfm.readers.openai_reader import OpenAIReader

    if not model:
        raise ConfigError("reader 'openai' needs --model NAME (the model the endpoint serves) and usually --base-url URL")
    return OpenAIReader(model, **options)


def _classes() -> dict[str, str]:
    return {
        "transformers": "rag_lfm.readers.transformers_reader:TransformersReader",
        "llamacpp": "rag_lfm.readers.llamacpp_reader:LlamaCppReader",
        "openai": "rag_lfm.readers.openai_reader:OpenAIReader",
    }


READERS: dict[str, Callable[..., Any]] = {"transformers": _transformers, "llamacpp": _llamacpp, "openai": _openai}


def reader_options(kind: str) -> list[str]:
    """The keyword options a reader kind accepts (its constructor's, minus the model)."""
    import importlib

    module, cls = _classes()[kind].split(":")
    params = inspect.signature(getattr(importlib.import_module(module), cls).__init__).parameters
    return [p for p in params if p not in ("self", "model")]


def make_reader(kind: str, model: str | None = None, **options: Any) -> Any:
    """A reader of ``kind`` for ``model``; options that are None are left to the reader's defaults.

    Raises:
        ConfigError: an unknown kind (the valid ones are listed), or an option the kind does not take.
    """
    name = kind.strip().lower().replace("-", "").replace("_", "")
    aliases = {"llama.cpp": "llamacpp", "gguf": "llamacpp", "hf": "transformers", "openaicompatible": "openai"}
    name = aliases.get(name, name)
    if name not in READERS:
        raise ConfigError(f"unknown reader {kind!r}; valid readers: {', '.join(READERS)}")
    given = {k: v for k, v in options.items() if v is not None}
    valid = reader_options(name)
    wrong = sorted(set(given) - set(valid))
    if wrong:
        raise ConfigError(f"reader {name!r} does not take {', '.join(wrong)}; it takes: {', '.join(valid)}")
    return READERS[name](model, **given)
