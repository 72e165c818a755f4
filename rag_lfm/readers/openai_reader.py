"""Any OpenAI-compatible endpoint as the reader: vLLM, llama.cpp's server, Ollama, hosted APIs, ``rag-lfm serve``.

The model is a black box behind HTTP; the reader sees text and, where the endpoint
returns them, the top log-probabilities of each next token. So:

- ``in-context`` and ``closed-book`` ask the chat API (``api="chat"``, the default: the
  prompt's worked examples become chat turns) or the completions API
  (``api="completions"``: the same prompt text a local reader would see);
- ``replug`` runs REPLUG as Shi et al. designed it for black-box models: one prompt per
  passage, and for each answer token one completions call per prompt with
  ``max_tokens=1`` and ``logprobs=N`` (one request holding the k prompts, as the API
  allows); the k top-N distributions are mixed with the retrieval weights
  (``p(t) = sum_r w_r p_r(t)``, a token missing from a row's top N counts 0 there) and
  the argmax is appended to every prompt. It needs an endpoint whose completions API
  returns top log-probabilities (vLLM, llama.cpp's server, ``rag-lfm serve``; most
  hosted chat-only APIs do not);
- copy-constrained decoding and candidate rescoring need the model's logits: this
  reader refuses ``constrain="copy"`` with a :class:`~rag_lfm.readers.base.CapabilityError`.

The API key is read from an environment variable whose NAME is given
(``api_key_env``, default ``OPENAI_API_KEY``) when the client is made; the value is never
stored on the reader, written anywhere or printed. Timeouts, retries with exponential
backoff and rate limits (HTTP 429, honouring ``Retry-After``) are the official ``openai``
client's own (``timeout``, ``max_retries``).

Prompts come from :mod:`rag_lfm.readers.prompts`, as for the local readers; their token
budget is counted with the model's tokenizer when ``tokenizer=`` names a local one, else
approximately (:class:`~rag_lfm.readers.prompts.ApproxTokenizer`, leaving a quarter of
``context_window`` as margin).

Example:
    >>> reader = OpenAIReader("qwen2.5-7b-instruct", base_url="http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> reader.generate("Who painted Water Lilies?", hits).text  # doctest: +SKIP
    'Claude Monet'
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rag_lfm.errors import ConfigError, RagLfmError
from rag_lfm.readers.base import Capabilities, CapabilityError, check_reader, check_strategy
from rag_lfm.readers.prompts import (
    ApproxTokenizer,
    PromptBuilder,
    PromptParts,
    clean_answer,
    extractive_answer,
    make_answer,
    plan_prompts,
)
from rag_lfm.readers.types import Answer, Completion
from rag_lfm.types import Hit

OPENAI_PIP = 'pip install "rag-lfm[openai]"  (or: pip install openai)'
# Texts of end-of-turn tokens as endpoints report them in log-probabilities: a REPLUG
# mixture whose best token is one of these (or empty, or holding a newline) ends the answer.
END_TOKENS: tuple[str, ...] = (
    "<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>",
    "<|eom_id|>", "<eos>",
)


class EndpointError(RagLfmError, ConnectionError):
    """The endpoint could not be reached, refused the request, or answered without what was asked."""


def _openai():
    try:
        import openai
    except ImportError as exc:
        raise ConfigError(f"OpenAIReader needs the openai client: {OPENAI_PIP}") from exc
    return openai


class OpenAIReader:
    """A reader over an OpenAI-compatible HTTP endpoint.

    Args:
        model: the model name the endpoint serves (``rag-lfm serve`` accepts any).
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``; default the ``OPENAI_BASE_URL``
            environment variable, else OpenAI's.
        api_key_env: NAME of the environment variable holding the key (read when the first
            request is made; unset means no key, which local servers accept).
        api: ``"chat"`` (chat completions) or ``"completions"`` for in-context and closed-book.
        tokenizer: a local tokenizer (folder or known model name) for exact token budgets and,
            with ``api="completions"``, the model's chat template; default: approximate counts.
        context_window: the endpoint model's context, in tokens.
        timeout: seconds per HTTP request; max_retries: retries of a failed request
            (connection errors, 408, 409, 429, 5xx), with exponential backoff or ``Retry-After``.
        top_logprobs: how many next-token log-probabilities REPLUG asks for (OpenAI's limit is 20,
            or 5 on its legacy completions; vLLM's default limit 20).
        logprobs: whether the endpoint returns them (False: REPLUG is refused up front).
        batch_prompts: send REPLUG's k prompts in one completions request (the API allows a list);
            False sends k requests (llama-cpp-python's server takes one prompt per request).
        concurrency: requests in flight at once in ``generate_batch``.
        max_new_tokens, max_passage_tokens, min_passage_tokens, replug_temperature, one_shot:
            as for :class:`~rag_lfm.readers.TransformersReader`.
        constrain: only ``"none"``: copy-constrained decoding needs logits an endpoint does not return.
        end_tokens: texts of the model's end-of-turn tokens (see ``END_TOKENS``).
        extra_body: extra JSON fields sent with every request (server-specific options, e.g. vLLM's
            ``repetition_penalty``, or ``{"retrieval": False}`` for a plain chat on ``rag-lfm serve``).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api: str = "chat",
        tokenizer: str | os.PathLike[str] | None = None,
        context_window: int = 4096,
        timeout: float = 60.0,
        max_retries: int = 4,
        top_logprobs: int = 20,
        logprobs: bool = True,
        batch_prompts: bool = True,
        concurrency: int = 4,
        max_new_tokens: int = 24,
        max_passage_tokens: int = 160,
        min_passage_tokens: int = 24,
        replug_temperature: float = 0.05,
        one_shot: bool = True,
        constrain: str = "none",
        end_tokens: Sequence[str] = END_TOKENS,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not model:
            raise ConfigError("model is empty; pass the name of the model the endpoint serves")
        if api not in ("chat", "completions"):
            raise ConfigError(f"api {api!r} is not valid; use 'chat' or 'completions'")
        if constrain != "none":
            raise CapabilityError(
                f"constrain={constrain!r} is not possible over an HTTP endpoint: copy-constrained decoding needs the "
                "model's logits at every step, and an endpoint returns at most its top log-probabilities; use "
                "constrain='none', or a reader with the model in this process (TransformersReader, LlamaCppReader)"
            )
        for label, value in [("max_new_tokens", max_new_tokens), ("max_passage_tokens", max_passage_tokens),
                             ("concurrency", concurrency), ("top_logprobs", top_logprobs)]:
            if int(value) < 1:
                raise ConfigError(f"{label} must be >= 1, got {value!r}")
        if timeout <= 0 or max_retries < 0:
            raise ConfigError(f"timeout must be > 0 and max_retries >= 0, got timeout={timeout!r}, max_retries={max_retries!r}")
        if replug_temperature <= 0:
            raise ConfigError(f"replug_temperature must be > 0, got {replug_temperature!r}")
        if not api_key_env or not str(api_key_env).replace("_", "").isalnum():
            raise ConfigError(
                f"api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), got a value of "
                f"{len(str(api_key_env))} characters; never pass the key itself"
            )
        self.model = str(model)
        self.name = f"openai:{self.model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self.api_key_env = str(api_key_env)
        self.api = api
        self.tokenizer_ref = None if tokenizer is None else str(tokenizer)
        self.context_window = int(context_window)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.top_logprobs = int(top_logprobs)
        self.batch_prompts = batch_prompts
        self.concurrency = int(concurrency)
        self.max_new_tokens = int(max_new_tokens)
        self.max_passage_tokens = int(max_passage_tokens)
        self.min_passage_tokens = int(min_passage_tokens)
        self.replug_temperature = float(replug_temperature)
        self.one_shot = one_shot
        self.constrain = "none"
        self.end_tokens = frozenset(end_tokens)
        self.extra_body = dict(extra_body or {})
        self.capabilities = Capabilities(logprobs=bool(logprobs), logits=False, batching=True, streaming=True,
                                         completion=True)
        self._client: Any = None
        self._prompts: PromptBuilder | None = None

    def __repr__(self) -> str:  # the key is never an attribute; say where the reader points
        return f"OpenAIReader(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    # -- set-up ----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        """The ``openai.OpenAI`` client (made on first use; it holds the key, the reader does not)."""
        if self._client is None:
            openai = _openai()
            self._client = openai.OpenAI(
                base_url=self.base_url,
                # No key: local servers accept any; one that needs a key answers 401, reported below.
                api_key=os.environ.get(self.api_key_env) or "no-key",
                timeout=self.timeout,
                max_retries=self.max_retries,
            )
        return self._client

    @property
    def prompts(self) -> PromptBuilder:
        if self._prompts is None:
            if self.tokenizer_ref is not None:
                from transformers import AutoTokenizer

                from rag_lfm.models import resolve_model

                tok = AutoTokenizer.from_pretrained(resolve_model(self.tokenizer_ref))
                budget = self.context_window - self.max_new_tokens
                chat = None  # the tokenizer's chat template, if any, renders completions prompts
            else:
                tok = ApproxTokenizer()
                budget = int(self.context_window * 0.75) - self.max_new_tokens  # approximate counts: a margin
                chat = False
            if budget < 64:
                raise ConfigError(f"context_window {self.context_window} leaves no room for prompts; raise it")
            self._prompts = PromptBuilder(tok, budget=budget, max_passage_tokens=self.max_passage_tokens,
                                          min_passage_tokens=self.min_passage_tokens, use_chat_template=chat,
                                          one_shot=self.one_shot)
        return self._prompts

    def warm_up(self) -> OpenAIReader:
        """Build the client and the prompt builder (no request is made)."""
        _ = self.client, self.prompts
        return self

    def _call(self, fn, **kwargs) -> Any:
        """One API call; the client's failures become :class:`EndpointError` naming the endpoint and the fix."""
        openai = _openai()
        where = self.base_url or "the OpenAI API"
        if self.extra_body:
            kwargs["extra_body"] = {**self.extra_body, **kwargs.get("extra_body", {})}
        try:
            return fn(model=self.model, **kwargs)
        except openai.AuthenticationError as exc:
            raise EndpointError(
                f"{where} refused the API key (HTTP 401): set the environment variable {self.api_key_env} "
                "to a valid key (api_key_env names the variable)"
            ) from exc
        except openai.RateLimitError as exc:
            raise EndpointError(
                f"{where} kept answering 429 (rate limited) after {self.max_retries} retries; retry later, "
                "lower concurrency, or raise max_retries"
            ) from exc
        except openai.APITimeoutError as exc:
            raise EndpointError(f"{where} did not answer within {self.timeout} s ({self.max_retries} retries); "
                                "raise timeout, or check that the server is up") from exc
        except openai.APIConnectionError as exc:
            raise EndpointError(f"could not connect to {where}: {exc}; check base_url and that the server runs") from exc
        except openai.APIStatusError as exc:
            raise EndpointError(
                f"{where} answered HTTP {exc.status_code} for model {self.model!r}: {_message(exc)}"
            ) from exc

    # -- in-context / closed-book ---------------------------------------------------------------
    def _ask(self, parts: list[PromptParts], stream: bool = False) -> Any:
        common = {"max_tokens": self.max_new_tokens, "temperature": 0.0, "stream": stream}
        if self.api == "chat":
            # No stop at a newline here: a chat reply may open with one; the answer is its
            # first non-empty line (clean_answer), and max_new_tokens bounds the rest.
            return self._call(self.client.chat.completions.create, messages=parts[0].messages, **common)
        # The completions prompt ends with "Answer:", so the answer is the rest of that line.
        return self._call(self.client.completions.create, prompt=parts[0].text, stop=["\n"], **common)

    def _answer_one(self, question: str, strategy: str, plan: tuple[list[PromptParts], list[float] | None]) -> Answer:
        start = time.perf_counter()
        parts, weights = plan
        if strategy == "replug":
            assert weights is not None
            raw, reason, n = self._replug(parts, weights)
            usage = None
        else:
            resp = self._ask(parts)
            choice = resp.choices[0]
            raw = (choice.message.content if self.api == "chat" else choice.text) or ""
            reason = "length" if choice.finish_reason == "length" else "stop"
            usage = resp.usage
            n = usage.completion_tokens if usage else 0
        answer = make_answer(question, strategy, parts, clean_answer(raw), model=self.name, generated_tokens=n,
                             finish_reason=reason, latency_s=time.perf_counter() - start,
                             prompt_tokens=usage.prompt_tokens if usage else None)
        return answer

    # -- REPLUG over the API ----------------------------------------------------------------------
    def _next_token_dists(self, prompts: list[str]) -> list[dict[str, float]]:
        """Each prompt's top next-token log-probabilities (one completions call with max_tokens=1)."""
        def one(batch: list[str]) -> list[dict[str, float]]:
            resp = self._call(self.client.completions.create, prompt=batch if len(batch) > 1 else batch[0],
                              max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
            choices = sorted(resp.choices, key=lambda c: c.index)
            if len(choices) != len(batch):
                raise EndpointError(
                    f"{self.base_url} returned {len(choices)} choices for {len(batch)} prompts; it may take one prompt "
                    "per request: use batch_prompts=False"
                )
            out = []
            for c in choices:
                lp = getattr(c, "logprobs", None)
                tops = getattr(lp, "top_logprobs", None) if lp is not None else None
                if not tops or tops[0] is None:
                    raise EndpointError(
                        f"{self.base_url or 'the endpoint'} returned no log-probabilities for model {self.model!r}; "
                        "REPLUG over an API needs a completions endpoint that returns top log-probabilities "
                        "(vLLM, llama.cpp's server, rag-lfm serve); use strategy 'in-context', or logprobs=False "
                        "to say so up front"
                    )
                out.append({str(k): float(v) for k, v in dict(tops[0]).items()})
            return out

        if self.batch_prompts:
            return one(prompts)
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return [d for ds in pool.map(lambda p: one([p]), prompts) for d in ds]

    def _is_end(self, token: str) -> bool:
        return not token or "\n" in token or token in self.end_tokens

    def _replug_tokens(self, parts: list[PromptParts], weights: list[float]) -> Iterator[str]:
        """Greedy REPLUG decoding through the completions API: yields each answer token as it is chosen."""
        prompts = [p.text for p in parts]
        generated = ""
        for _ in range(self.max_new_tokens):
            dists = self._next_token_dists([p + generated for p in prompts])
            mixed: dict[str, float] = {}
            for w, dist in zip(weights, dists):
                for token, lp in dist.items():
                    mixed[token] = mixed.get(token, 0.0) + w * math.exp(lp)
            token = max(mixed, key=mixed.__getitem__)
            if self._is_end(token):
                return
            generated += token
            yield token

    def _replug(self, parts: list[PromptParts], weights: list[float]) -> tuple[str, str, int]:
        tokens = list(self._replug_tokens(parts, weights))
        return "".join(tokens), "length" if len(tokens) == self.max_new_tokens else "stop", len(tokens)

    # -- public API -------------------------------------------------------------------------------
    def generate(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Answer:
        """Answer ``question`` from ``passages`` (best first) with ``strategy``."""
        return self.generate_batch([question], [passages], strategy=strategy)[0]

    def generate_batch(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[Hit]] | None = None,
        *,
        strategy: str = "in-context",
        progress: bool = False,
    ) -> list[Answer]:
        """Answer many questions, ``concurrency`` requests in flight at once (answers in order)."""
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        if passages is None:
            passages = [[] for _ in questions]
        if len(passages) != len(questions):
            raise ConfigError(f"got {len(questions)} questions but {len(passages)} passage lists; pass one list per question")
        self.warm_up()
        if strategy == "extractive":
            return [extractive_answer(q, list(p)) for q, p in zip(questions, passages)]
        # Prompts are built here, in one thread (tokenizers are not made to be shared by threads);
        # only the HTTP requests run concurrently.
        jobs = [(q, plan_prompts(self.prompts, q, list(p), strategy, self.replug_temperature))
                for q, p in zip(questions, passages)]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), desc=f"answering ({strategy})", unit="q")
        with ThreadPoolExecutor(max_workers=max(1, min(self.concurrency, len(jobs)))) as pool:
            answers = []
            for a in pool.map(lambda job: self._answer_one(job[0], strategy, job[1]), jobs):
                answers.append(a)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        return answers

    def stream(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Iterator[str]:
        """Yield the answer piece by piece as the endpoint streams it (REPLUG: token by token)."""
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        passages = list(passages)
        if strategy == "extractive":
            return iter([extractive_answer(question, passages).text])
        parts, weights = plan_prompts(self.prompts, question, passages, strategy, self.replug_temperature)
        if strategy == "replug":
            assert weights is not None
            return self._replug_tokens(parts, weights)
        resp = self._ask(parts, stream=True)
        return _answer_stream(self._deltas(resp))

    def _deltas(self, resp: Any) -> Iterator[str]:
        for chunk in resp:
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            piece = (c.delta.content if self.api == "chat" else c.text) or ""
            if piece:
                yield piece

    # -- raw completion ---------------------------------------------------------------------------
    def complete(self, prompt: str | Sequence[dict[str, str]], *, max_tokens: int = 256, stop: Sequence[str] = (),
                 top_logprobs: int = 0) -> Completion:
        """Continue ``prompt`` on the endpoint (a str: completions API; messages: chat API), greedily."""
        if int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens!r}")
        common: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": 0.0}
        if stop:
            common["stop"] = list(stop)
        if isinstance(prompt, str):
            if top_logprobs:
                common["logprobs"] = int(top_logprobs)
            resp = self._call(self.client.completions.create, prompt=prompt, **common)
            c = resp.choices[0]
            out = Completion(text=c.text or "", finish_reason="length" if c.finish_reason == "length" else "stop",
                             prompt_tokens=resp.usage.prompt_tokens if resp.usage else 0,
                             completion_tokens=resp.usage.completion_tokens if resp.usage else 0)
            if top_logprobs and c.logprobs is not None:
                out.top_logprobs = [dict(d or {}) for d in (c.logprobs.top_logprobs or [])]
                out.tokens = list(c.logprobs.tokens or [])
                out.token_logprobs = [float(x) for x in (c.logprobs.token_logprobs or [])]
            return out
        if top_logprobs:
            common.update(logprobs=True, top_logprobs=int(top_logprobs))
        resp = self._call(self.client.chat.completions.create, messages=[dict(m) for m in prompt], **common)
        c = resp.choices[0]
        out = Completion(text=c.message.content or "", finish_reason="length" if c.finish_reason == "length" else "stop",
                         prompt_tokens=resp.usage.prompt_tokens if resp.usage else 0,
                         completion_tokens=resp.usage.completion_tokens if resp.usage else 0)
        if top_logprobs and c.logprobs is not None and c.logprobs.content:
            out.top_logprobs = [{t.token: t.logprob for t in item.top_logprobs} for item in c.logprobs.content]
            out.tokens = [item.token for item in c.logprobs.content]
            out.token_logprobs = [item.logprob for item in c.logprobs.content]
        return out

    def stream_complete(self, prompt: str | Sequence[dict[str, str]], *, max_tokens: int = 256,
                        stop: Sequence[str] = ()) -> Iterator[str]:
        """Yield the endpoint's continuation of ``prompt`` as it streams."""
        if int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens!r}")
        common: dict[str, Any] = {"max_tokens": int(max_tokens), "temperature": 0.0, "stream": True}
        if stop:
            common["stop"] = list(stop)
        if isinstance(prompt, str):
            resp = self._call(self.client.completions.create, prompt=prompt, **common)
            return (c.choices[0].text for c in resp if c.choices and c.choices[0].text)
        resp = self._call(self.client.chat.completions.create, messages=[dict(m) for m in prompt], **common)
        return (c.choices[0].delta.content for c in resp if c.choices and c.choices[0].delta.content)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


def _answer_stream(pieces: Iterator[str], prefix: str = "Answer:") -> Iterator[str]:
    """The streamed answer as :func:`clean_answer` cuts it: leading blank lines and an ``Answer:``
    a chat model may repeat from the worked examples dropped, and nothing after the first line.

    ``"".join(_answer_stream(p)).strip() == clean_answer("".join(p))``.
    """
    head = ""
    it = iter(pieces)
    for piece in it:  # until what comes first is known not to be (the rest of) the prefix
        head += piece
        stripped = head.lstrip()
        if not stripped or (len(stripped) < len(prefix) and prefix.lower().startswith(stripped.lower())):
            continue
        head = stripped[len(prefix):].lstrip(" \t") if stripped.lower().startswith(prefix.lower()) else stripped
        break
    else:  # the stream ended inside what might have been the prefix: it is the whole reply
        if clean_answer(head, prefix):
            yield clean_answer(head, prefix)
        return
    for piece in [head] if head else []:
        if "\n" in piece:
            yield piece.split("\n", 1)[0]
            return
        yield piece
    for piece in it:
        if "\n" in piece:
            yield piece.split("\n", 1)[0]
            return
        yield piece
