"""The frozen reader model as a LangChain chat model.

:class:`RagLfmChatModel` is a ``BaseChatModel`` (not an ``LLM``): the reader models are
instruction-tuned chat models with a chat template, and LangChain's prompts, agents and
``StrOutputParser`` all speak messages. Messages are rendered with the model's own chat
template and continued greedily by :meth:`TransformersReader.complete` on the reader's
decoding loop; ``stop`` strings and ``max_tokens`` apply; ``stream`` yields the text as
it is generated (through LangChain's callbacks too, ``on_llm_new_token``). The weights
never change (the reader freezes them).

It is a plain chat model: the prompt decides what it does. For a retrieval-augmented
answer in the reader's own way (answers copied from the passages, candidates scored by
the model, citations), use :class:`~rag_lfm.integrations.langchain.RagLfmQA` instead; see
the README for which to use when.

What a 135M local model does not have is declared off, not faked: no tool calling, no
structured output, no image/audio/PDF input (a message holding such content is an error
naming it), greedy decoding only (``temperature`` 0 or None).

Example:
    >>> from langchain_core.prompts import ChatPromptTemplate                     # doctest: +SKIP
    >>> model = RagLfmChatModel(max_tokens=32)  # SmolLM2-135M-Instruct          # doctest: +SKIP
    >>> (ChatPromptTemplate.from_messages([("human", "{q}")]) | model).invoke({"q": "Hi"}).content  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

try:
    from langchain_core.callbacks import CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LangSmithParams
    from langchain_core.messages import (
        AIMessage,
        AIMessageChunk,
        BaseMessage,
        ChatMessage,
        HumanMessage,
        SystemMessage,
    )
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from pydantic import ConfigDict, PrivateAttr, SecretStr

from rag_lfm.errors import ConfigError
from rag_lfm.integrations.langchain._common import check_k, check_unknown

_CALL_KWARGS = ("max_tokens",)


class RagLfmChatModel(BaseChatModel):
    """A frozen local causal LM (``TransformersReader``) as a LangChain chat model.

    Args:
        model: a model folder or a known short name (default ``"SmolLM2-135M-Instruct"``,
            converted once from its packaged GGUF).
        reader: which reader runs the model: ``"transformers"`` (default), ``"llamacpp"`` (a GGUF
            through llama.cpp, several times faster on a CPU) or ``"openai"`` (an OpenAI-compatible
            server), as in :func:`rag_lfm.readers.registry.make_reader`; or a reader object to share
            (its model loads once for the chat model and :class:`RagLfmQA`), ``model`` is then its name.
        max_tokens: the longest reply, in tokens (``invoke(..., max_tokens=n)`` per call).
        stop: strings that end the reply (cut from it); a call's ``stop`` adds to these.
        temperature: 0 or None: the reader decodes greedily (sampling is not offered).
        device, dtype, context_window: as in ``TransformersReader`` (passed to another reader
            kind only where it takes them).
        streaming: make ``invoke`` stream internally (callbacks get every token).
        timeout, max_retries, api_key: accepted so code written for hosted chat models runs
            unchanged; unused (the model is local: nothing to wait for, retry or authorise).

    Example:
        >>> RagLfmChatModel(max_tokens=16).invoke("Name a French painter.").content  # doctest: +SKIP
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = "SmolLM2-135M-Instruct"
    reader: Any = None
    max_tokens: int = 256
    stop: list[str] | None = None
    temperature: float | None = None
    device: str = "auto"
    dtype: str = "auto"
    context_window: int | None = None
    streaming: bool = False
    timeout: float | None = None
    max_retries: int | None = None
    api_key: SecretStr | None = None

    _reader: Any = PrivateAttr(default=None)
    _load_lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, **data: Any) -> None:
        # Checked before pydantic, so a mistake reads as a rag-lfm error naming the argument.
        check_unknown(data, set(type(self).model_fields), "RagLfmChatModel")
        check_k(data.get("max_tokens", 256), "max_tokens")
        temperature = data.get("temperature")
        if temperature not in (None, 0, 0.0):
            raise ConfigError(
                f"temperature={temperature!r}: the frozen reader decodes greedily (temperature 0); "
                "pass temperature=0 or leave it out"
            )
        data["stop"] = _check_stop(data.get("stop"), "stop")
        reader = data.get("reader")
        if isinstance(reader, str):
            from rag_lfm.readers.registry import READERS

            kind = reader.strip().lower()
            if kind.replace("-", "").replace("_", "").replace(".", "") not in (*READERS, "gguf", "hf"):
                raise ConfigError(f"unknown reader {reader!r}; valid readers: {', '.join(READERS)} (or a reader object)")
        elif reader is not None:
            if not (hasattr(reader, "complete") and hasattr(reader, "stream_complete")):
                raise ConfigError(
                    f"reader={reader!r} has no complete()/stream_complete(); pass a rag_lfm.readers.TransformersReader"
                )
            data.setdefault("model", str(getattr(reader, "model_ref", None) or getattr(reader, "name", "reader")))
        if not isinstance(data.get("model", "x"), (str, Path)):
            raise ConfigError(f"model={data['model']!r} must be a model folder or a known name (a str)")
        if "model" in data:
            data["model"] = str(data["model"])
        super().__init__(**data)
        self._reader = None if isinstance(reader, str) else reader

    # -- the reader ---------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model's name as reported in responses and traces (its folder name)."""
        return Path(self.model).name or self.model

    def get_reader(self) -> Any:
        """The TransformersReader (created and loaded on first use, once)."""
        with self._load_lock:
            if self._reader is None:
                from rag_lfm.readers.registry import make_reader, reader_options

                kind = self.reader if isinstance(self.reader, str) else "transformers"
                kind = {"gguf": "llamacpp", "hf": "transformers", "llama.cpp": "llamacpp"}.get(kind.lower(), kind.lower())
                wanted = {"device": self.device, "dtype": self.dtype, "context_window": self.context_window}
                takes = set(reader_options(kind))
                self._reader = make_reader(kind, self.model, **{k: v for k, v in wanted.items() if k in takes})
            warm = getattr(self._reader, "warm_up", None)
            if callable(warm):
                warm()  # load now, under the lock: concurrent first calls load the model once
            return self._reader

    # -- LangChain's interface -----------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "rag-lfm-reader"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.max_tokens, "stop": self.stop}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        model = kwargs.get("model")
        params = LangSmithParams(
            ls_provider="rag-lfm",
            ls_model_name=model if isinstance(model, str) else self.model_name,
            ls_model_type="chat",
            ls_temperature=0.0,
            ls_max_tokens=int(kwargs.get("max_tokens") or self.max_tokens),
        )
        stops = list(self.stop or []) + list(stop or [])
        if stops:
            params["ls_stop"] = stops
        return params

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> tuple[int, list[str]]:
        if "model" in kwargs:
            raise ConfigError(
                f"model={kwargs['model']!r} per call is not supported: one RagLfmChatModel holds one frozen model; "
                "create another RagLfmChatModel(model=...) for another model"
            )
        check_unknown(kwargs, _CALL_KWARGS, "RagLfmChatModel call")
        max_tokens = check_k(kwargs.get("max_tokens", self.max_tokens), "max_tokens")
        stops = list(self.stop or []) + _check_stop(stop, "stop")
        return max_tokens, list(dict.fromkeys(stops))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        max_tokens, stops = self._options(stop, kwargs)
        chat = to_chat_messages(messages)
        c = self.get_reader().complete(chat, max_tokens=max_tokens, stop=stops)
        usage = {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens,
                 "total_tokens": c.prompt_tokens + c.completion_tokens}
        meta = {"model_name": self.model_name, "finish_reason": c.finish_reason}
        message = AIMessage(content=c.text, usage_metadata=usage, response_metadata=meta)
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish_reason": c.finish_reason})],
                          llm_output={"model_name": self.model_name, "token_usage": usage})

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        max_tokens, stops = self._options(stop, kwargs)
        chat = to_chat_messages(messages)
        reader = self.get_reader()
        pieces: list[str] = []
        for piece in reader.stream_complete(chat, max_tokens=max_tokens, stop=stops):
            pieces.append(piece)
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager is not None:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        # The stream reports text, not tokens: the prompt is counted exactly (the same
        # rendering complete() uses), the reply by re-tokenizing its text; a reader without a
        # local tokenizer (an OpenAI-compatible server) reports no usage in a stream.
        text = "".join(pieces)
        usage, finish = None, None
        render, tok = getattr(reader, "_completion_ids", None), getattr(reader, "tokenizer", None)
        if callable(render) and callable(tok):
            prompt_tokens = len(render(chat, max_tokens))
            out_tokens = len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0
            usage = {"input_tokens": prompt_tokens, "output_tokens": out_tokens, "total_tokens": prompt_tokens + out_tokens}
            finish = "length" if out_tokens >= max_tokens else "stop"
        meta = {"model_name": self.model_name} | ({"finish_reason": finish} if finish else {})
        yield ChatGenerationChunk(
            message=AIMessageChunk(content="", chunk_position="last", usage_metadata=usage, response_metadata=meta),
            generation_info={"finish_reason": finish} if finish else None,
        )


def _check_stop(stop: Any, name: str) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise ConfigError(f"{name}={stop!r} must be a list of strings")
    return [s for s in stop if s]


def _text_of(message: BaseMessage, i: int) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise ConfigError(
                f"message {i} holds a {kind!r} content block; RagLfmChatModel reads text only "
                "(the reader is a text-only language model): pass the content as text"
            )
    return "".join(parts)


def to_chat_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the ``{"role", "content"}`` dicts a chat template takes.

    System, human and AI messages map to ``system``, ``user`` and ``assistant``; a
    ``ChatMessage`` keeps its role. Tool calls and tool results are refused (the reader
    has no tool calling), and so is non-text content.

    Example:
        >>> to_chat_messages([SystemMessage("Be brief."), HumanMessage("Hi", name="ann")])
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    out = []
    for i, m in enumerate(messages):
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, AIMessage):
            if m.tool_calls:
                raise ConfigError(f"message {i} is an AI message with tool calls; RagLfmChatModel has no tool calling")
            role = "assistant"
        elif isinstance(m, ChatMessage):
            role = m.role
        else:
            raise ConfigError(
                f"message {i} is a {type(m).__name__}; RagLfmChatModel takes system, human, AI and chat messages "
                "(no tool calling: tool messages have nowhere to go)"
            )
        out.append({"role": role, "content": _text_of(m, i)})
    if not out:
        raise ConfigError("no messages to answer; pass a str or at least one message")
    return out
