"""``rag-lfm serve``: the index and the reader loaded once, answering over HTTP (FastAPI + uvicorn).

Endpoints:

- ``GET /health``: status, index size, reader and its capabilities;
- ``POST /search`` ``{"query": str | [str], "k": 5, "filter": {...}}``: hits per query;
- ``POST /ask`` ``{"question": str, "k": 3, "strategy": "in-context", "filter": {...}}``: an
  :class:`~rag_lfm.readers.Answer` with its citations;
- ``POST /v1/chat/completions`` (OpenAI-compatible): the last user message is the
  question; the reply is the retrieval-augmented answer, with ``citations`` beside
  ``choices`` (``stream: true`` streams it as server-sent events). With
  ``"retrieval": false`` it is a plain chat completion by the served model instead
  (its chat template, greedy; ``max_tokens`` and ``stop`` apply);
- ``POST /v1/completions`` (OpenAI-compatible): raw continuation of the prompt(s) by the
  reader's model, greedy, with ``logprobs`` (top-N per token): what
  :class:`~rag_lfm.readers.OpenAIReader` needs for REPLUG over HTTP;
- ``GET /v1/models``.

How it behaves under load: every model and index call runs on ONE worker thread, so
concurrent requests never share the model's state (a transformers cache, a llama.cpp
context) or the index handle; they queue. At most ``max_pending`` requests wait; beyond
that the server answers 429 with ``Retry-After`` (the OpenAI client retries those by
itself). Request bodies over ``max_body_bytes`` get 413; invalid fields 422; input the
library rejects (bad filter, unknown strategy, prompt too long, a capability the reader
lacks) 400; a question on an empty index or a filter that matches nothing 422. Every
error is JSON ``{"error": {"message", "type", "code"}}``. ``k`` is clamped to
``[1, min(max_k, chunks in the index)]``.

It listens on 127.0.0.1 by default. With ``api_key_env=NAME`` requests must carry
``Authorization: Bearer <value of $NAME>``; the value is never logged or stored. On
SIGINT/SIGTERM uvicorn stops accepting, lets running requests finish (up to
``graceful_s``), then the worker and the index are closed.

Example:
    >>> app = create_app(KnowledgeBase.open("indexes/wiki-vital"), TransformersReader())  # doctest: +SKIP
    >>> serve(app, port=8000)  # doctest: +SKIP
"""

# No `from __future__ import annotations`: FastAPI reads the request models from the
# route annotations at run time, and those models are local to create_app.
import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Optional, Union

from rag_lfm.errors import ConfigError, RagLfmError

log = logging.getLogger("rag_lfm.serve")
SERVE_PIP = 'pip install "rag-lfm[serve]"  (fastapi and uvicorn)'
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _deps():
    try:
        import fastapi
        import pydantic
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"rag-lfm serve needs fastapi and uvicorn: {SERVE_PIP}") from exc
    return fastapi, pydantic


class _BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413, whether it declares its length or streams.

    The body is read here (at most ``limit`` bytes are held) and handed on whole, so no
    route ever sees a partial one.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, 413, f"request body of {int(declared)} bytes is over the limit of "
                                     f"{self.limit} bytes (max_body_bytes)", "request_too_large")
        chunks, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left
                return
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await _send_error(send, 413, f"request body is over the limit of {self.limit} bytes "
                                         "(max_body_bytes)", "request_too_large")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would say

        await self.app(scope, replay, send)


def _error_body(status: int, message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status, "param": None}}


async def _send_error(send: Callable, status: int, message: str, kind: str, headers: list | None = None) -> None:
    body = json.dumps(_error_body(status, message, kind)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": body})


def _status_of(exc: RagLfmError) -> tuple[int, str]:
    from rag_lfm.readers.base import NoPassagesError

    if isinstance(exc, NoPassagesError):
        return 422, "no_passages"
    try:
        from rag_lfm.readers.openai_reader import EndpointError

        if isinstance(exc, EndpointError):
            return 502, "upstream_error"
    except ImportError:  # pragma: no cover - openai missing
        pass
    return 400, "invalid_request_error"


class _Worker:
    """One thread runs every model and index call; at most ``max_pending`` calls wait for it."""

    def __init__(self, max_pending: int) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-lfm-model")
        self.max_pending = max_pending
        self.pending = 0
        self.lock = threading.Lock()

    def admit(self) -> bool:
        with self.lock:
            if self.pending >= self.max_pending:
                return False
            self.pending += 1
            return True

    def release(self) -> None:
        with self.lock:
            self.pending -= 1

    async def run(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)


class _Overloaded(Exception):
    pass


def create_app(
    source: Any,
    reader: Any,
    *,
    strategy: str = "in-context",
    k: int = 3,
    max_k: int = 50,
    max_body_bytes: int = 1 << 20,
    max_pending: int = 64,
    max_tokens: int = 1024,
    max_logprobs: int = 20,
    max_batch: int = 32,
    batch_wait_ms: float = 20.0,
    api_key_env: str | None = None,
    index_path: str = "",
    on_shutdown: Callable[[], None] | None = None,
) -> Any:
    """The FastAPI app over ``source`` (a KnowledgeBase or Retriever) and ``reader``.

    Args:
        strategy, k: the defaults of ``/ask`` and ``/v1/chat/completions`` (a request may override them).
        max_k: the largest ``k`` a request gets (it is also clamped to the index's size).
        max_body_bytes: larger request bodies get 413.
        max_pending: requests waiting for the model at once; more get 429 with Retry-After.
        max_tokens: the most tokens a ``/v1/completions`` request may ask for.
        max_logprobs: the most top log-probabilities per token a request may ask for.
        max_batch: questions waiting together are answered as one batch of at most this many.
        batch_wait_ms: a batch that is not full starts once no question has arrived for this long
            (0: at once); while fewer wait than the last batch answered plus those queued behind it, it
            waits for them, up to a tenth of the last batch's time (at most 25 times this long). Clients
            whose answers arrive together come back one after another; without the wait the first of
            them ran alone and the rest queued behind it.
        api_key_env: NAME of an environment variable; when set, requests need ``Authorization: Bearer`` with its value.
        on_shutdown: called once when the server stops (after the running requests), e.g. to close the index.
    """
    fastapi, pydantic = _deps()
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from rag_lfm.readers.base import capabilities_of, check_reader, check_strategy

    strategy = check_strategy(strategy)
    check_reader(reader, strategy)
    if k < 1 or max_k < 1:
        raise ConfigError(f"k and max_k must be >= 1, got k={k}, max_k={max_k}")
    if max_batch < 1 or not batch_wait_ms >= 0:
        raise ConfigError(f"max_batch must be >= 1 and batch_wait_ms >= 0, got max_batch={max_batch!r}, "
                          f"batch_wait_ms={batch_wait_ms!r}")
    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"api_key_env names {api_key_env!r}, but that environment variable is unset or empty; "
                              "export it before starting the server")
    worker = _Worker(max_pending)
    model_name = getattr(reader, "name", type(reader).__name__)
    caps = capabilities_of(reader)
    kb = getattr(source, "kb", source)

    def size() -> int:
        try:
            return len(kb)
        except TypeError:
            return max_k

    def clamp_k(requested: int | None, default: int) -> int:
        return max(1, min(int(requested or default), max_k, max(size(), 1)))

    @asynccontextmanager
    async def lifespan(_app: Any):
        yield
        # uvicorn has let the running requests finish; the worker's queue is empty or finishing.
        worker.pool.shutdown(wait=True)
        if on_shutdown is not None:
            on_shutdown()

    app = FastAPI(title="rag-lfm", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(_BodyLimit, limit=int(max_body_bytes))  # outermost: runs before the body is parsed

    # -- request models ------------------------------------------------------------------------
    Text = Field(min_length=1, max_length=20_000)

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: Union[str, list[str]] = Field(description="a query or up to 64 queries")
        k: int = Field(5, ge=1, le=100_000)
        filter: Optional[dict[str, Any]] = None

    class AskRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        question: str = Text
        k: Optional[int] = Field(None, ge=1, le=100_000)
        strategy: Optional[str] = None
        filter: Optional[dict[str, Any]] = None

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: str
        content: Optional[Union[str, list[dict[str, Any]]]] = None

    class ChatRequest(BaseModel):
        # OpenAI clients send many optional fields (temperature, top_p, user ...): accepted;
        # decoding is greedy and the answer's length is the reader's.
        model_config = ConfigDict(extra="allow")
        model: Optional[str] = None
        messages: list[Message] = Field(min_length=1, max_length=256)
        stream: bool = False
        n: int = Field(1, ge=1, le=1)
        k: Optional[int] = Field(None, ge=1, le=100_000)
        strategy: Optional[str] = None
        filter: Optional[dict[str, Any]] = None
        # retrieval=false: a plain chat completion by the served model (its chat template,
        # greedy), for clients that bring their own context; max_tokens and stop then apply.
        retrieval: bool = True
        max_tokens: Optional[int] = Field(None, ge=1)
        stop: Optional[Union[str, list[str]]] = None

    class CompletionRequest(BaseModel):
        model_config = ConfigDict(extra="allow")
        model: Optional[str] = None
        prompt: Union[str, list[str]]
        max_tokens: int = Field(16, ge=1)
        stop: Optional[Union[str, list[str]]] = None
        logprobs: Optional[int] = Field(None, ge=0)
        echo: bool = False
        stream: bool = False
        n: int = Field(1, ge=1, le=1)

    # -- errors as JSON --------------------------------------------------------------------------
    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where or 'body'}: {e.get('msg')}")
        return JSONResponse(_error_body(422, "invalid request: " + "; ".join(parts), "invalid_request_error"), 422)

    @app.exception_handler(RagLfmError)
    async def _library(_req: Request, exc: RagLfmError) -> JSONResponse:
        status, kind = _status_of(exc)
        return JSONResponse(_error_body(status, str(exc), kind), status)

    @app.exception_handler(_Overloaded)
    async def _overloaded(_req: Request, _exc: _Overloaded) -> JSONResponse:
        return JSONResponse(_error_body(429, f"the server is busy ({max_pending} requests waiting for the model); "
                                        "retry after the delay in Retry-After", "rate_limit_exceeded"), 429,
                            headers={"Retry-After": "1"})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(_error_body(exc.status_code, str(exc.detail), "http_error"), exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(_error_body(500, f"internal error: {type(exc).__name__}", "server_error"), 500)

    @app.middleware("http")
    async def _auth(request: Request, call_next: Callable) -> Any:
        if key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), key.encode()):
                return JSONResponse(_error_body(401, f"missing or wrong API key: send 'Authorization: Bearer <key>' "
                                                f"(the server reads it from ${api_key_env})", "authentication_error"),
                                    401)
        return await call_next(request)

    async def call(fn: Callable[[], Any]) -> Any:
        if not worker.admit():
            raise _Overloaded()
        try:
            return await worker.run(fn)
        finally:
            worker.release()

    async def stream_response(make: Callable[[], Iterator[str]], frame: Callable[[str | None, str | None], dict],
                              prelude: list[dict] | None = None) -> StreamingResponse:
        """Server-sent events from ``make()``'s pieces, generated on the worker thread.

        The response starts once the first piece (or the end) is there, so an error before
        any text (no passages, a prompt too long) is still a JSON error with its status;
        a later one can only be an error event in the stream.
        """
        if not worker.admit():
            raise _Overloaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancelled = threading.Event()
        end = object()

        def job() -> None:
            it = None
            try:
                it = make()
                for piece in it:
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
                    if cancelled.is_set():
                        break
            except BaseException as exc:  # sent to the client as an error event
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                close = getattr(it, "close", None)
                if close is not None:
                    close()
                worker.release()  # here, not in the response: a client that left may never run its cleanup
                loop.call_soon_threadsafe(queue.put_nowait, end)

        worker.pool.submit(job)
        first = await queue.get()
        if isinstance(first, BaseException):
            cancelled.set()
            raise first

        async def events():
            try:
                for extra in prelude or []:
                    yield f"data: {json.dumps(extra)}\n\n"
                item = first
                while item is not end:
                    if isinstance(item, BaseException):  # after the first piece: an error event ends the stream
                        status, kind = _status_of(item) if isinstance(item, RagLfmError) else (500, "server_error")
                        yield f"data: {json.dumps(_error_body(status, str(item), kind))}\n\n"
                        yield "data: [DONE]\n\n"
                        return
                    yield f"data: {json.dumps(frame(item, None))}\n\n"
                    item = await queue.get()
                yield f"data: {json.dumps(frame(None, 'stop'))}\n\n"
                yield "data: [DONE]\n\n"
            finally:
                cancelled.set()  # a client that left stops the generation at its next token

        return StreamingResponse(events(), media_type="text/event-stream")

    def retrieve(question: str, kk: int, flt: dict | None) -> list:
        return source.search_batch([question], kk, filter=flt)[0] if flt else source.search_batch([question], kk)[0]

    # -- routes ------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "index": index_path, "chunks": size(), "reader": model_name,
                "capabilities": caps.to_dict() if caps else None, "strategy": strategy, "k": k,
                "pending": worker.pending, "answered": stats["answered"], "answer_batches": stats["batches"]}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "rag-lfm"}]}

    @app.post("/search")
    async def search(req: SearchRequest) -> dict[str, Any]:
        queries = [req.query] if isinstance(req.query, str) else list(req.query)
        if not queries or len(queries) > 64 or any(not q.strip() or len(q) > 20_000 for q in queries):
            raise ConfigError("query must be a non-empty string or a list of 1 to 64 non-empty strings (each at most "
                              "20,000 characters)")
        kk = clamp_k(req.k, req.k)
        results = await call(lambda: source.search_batch(queries, kk, filter=req.filter) if req.filter
                             else source.search_batch(queries, kk))
        return {"k": kk, "results": [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(queries, results)]}

    # Questions that arrive while the worker is busy are answered together, as one
    # retrieval batch and one reader batch (the reader's batches give the same answers as
    # one by one): under load the server answers more per second, and no answer changes.
    waiting: list[tuple[str, int, str, Any, asyncio.Future, asyncio.AbstractEventLoop]] = []
    waiting_lock = threading.Lock()
    stats = {"answered": 0, "batches": 0}
    flow = {"answered": 0, "queued": 0, "seconds": 0.0}  # the last batch: its size, who queued behind it, its time

    arrived = threading.Condition(waiting_lock)

    def drain() -> None:
        from rag_lfm.readers.pipeline import _check_not_empty

        with arrived:
            if waiting and len(waiting) < max_batch and batch_wait_ms > 0:
                # A short wait (a batch takes seconds) turns a ragged stream of questions into full
                # batches: the batch starts once no question has come for batch_wait_ms (clients
                # answered together come back one after another, a few ms apart). The clients of
                # the last batch are expected back too: while fewer questions wait than that batch
                # answered plus those that queued behind it, the batch waits for them, up to a tenth
                # of the last batch's time (at most 25 x batch_wait_ms). Without that, a client
                # answered alone came back just after the others had started, and stayed out of
                # step: batches of 1 and 7 for 8 clients. A drain that finds nothing returns at once.
                gap = batch_wait_ms / 1000
                now = time.monotonic()
                expected = min(max_batch, flow["answered"] + flow["queued"])
                cap = now + max(gap, min(25 * gap, 0.1 * flow["seconds"]))
                deadline, seen = now + gap, len(waiting)
                while len(waiting) < max_batch:
                    left = (deadline if len(waiting) >= expected else cap) - time.monotonic()
                    if left <= 0:
                        break
                    arrived.wait(left)
                    if len(waiting) > seen:
                        deadline, seen = min(time.monotonic() + gap, cap), len(waiting)
            jobs = waiting[:max_batch]
            del waiting[:max_batch]
        if not jobs:
            return
        started = time.monotonic()
        groups: dict[tuple, list] = {}
        for job in jobs:
            question, kk, strat, flt, fut, loop = job
            groups.setdefault((kk, strat, json.dumps(flt, sort_keys=True, default=str)), []).append(job)
        for (kk, strat, _), group in groups.items():
            stats["batches"] += 1
            stats["answered"] += len(group)
            flt = group[0][3]
            try:
                questions = [j[0] for j in group]
                if strat == "closed-book":
                    passages: list = [[] for _ in group]
                else:
                    _check_not_empty(source)
                    passages = (source.search_batch(questions, kk, filter=flt) if flt
                                else source.search_batch(questions, kk))
                answers = reader.generate_batch(questions, passages, strategy=strat)
                results: list[Any] = list(answers)
            except BaseException as exc:  # every request of the group gets the error
                results = [exc] * len(group)
            with arrived:  # what the next batch expects (see above)
                flow.update(answered=len(jobs), queued=len(waiting), seconds=time.monotonic() - started)
            for job, result in zip(group, results):
                fut, loop = job[4], job[5]
                if isinstance(result, BaseException):
                    loop.call_soon_threadsafe(_settle, fut, None, result)
                else:
                    loop.call_soon_threadsafe(_settle, fut, result, None)

    async def answer_question(question: str, kk: int, strat: str, flt: dict | None) -> Any:
        if not worker.admit():
            raise _Overloaded()
        try:
            loop = asyncio.get_running_loop()
            fut = loop.create_future()
            with arrived:
                waiting.append((question, kk, strat, flt, fut, loop))
                arrived.notify()
            worker.pool.submit(drain)  # a drain that finds its job taken by an earlier one returns at once
            return await fut
        finally:
            worker.release()

    @app.post("/ask")
    async def ask(req: AskRequest) -> dict[str, Any]:
        strat = check_strategy(req.strategy or strategy)
        check_reader(reader, strat)
        kk = clamp_k(req.k, k)
        answer = await answer_question(req.question, kk, strat, req.filter)
        return answer.to_dict() | {"k": kk}

    def _question(req: Any) -> str:
        for m in reversed(req.messages):
            if m.role == "user":
                content = m.content
                if isinstance(content, list):  # OpenAI content parts: keep the text ones
                    content = " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
                if content and str(content).strip():
                    return str(content)
        raise ConfigError("messages hold no user message with text; the last user message is the question")

    def check_completion(n_tokens: int, n_logprobs: int, stops: list[str]) -> None:
        if caps is not None and not caps.completion or not hasattr(reader, "complete"):
            raise ConfigError(f"reader {model_name!r} does not do raw completion; serve a TransformersReader or "
                              "LlamaCppReader for /v1/completions and chat without retrieval")
        if n_tokens > max_tokens:
            raise ConfigError(f"max_tokens={n_tokens} is over this server's limit of {max_tokens}")
        if n_logprobs > max_logprobs:
            raise ConfigError(f"logprobs={n_logprobs} is over this server's limit of {max_logprobs}")
        if len(stops) > 4:
            raise ConfigError(f"at most 4 stop strings, got {len(stops)}")

    async def plain_chat(req: Any) -> Any:
        """/v1/chat/completions with retrieval=false: the messages, continued by the model."""
        messages = [{"role": m.role, "content": m.content if isinstance(m.content, str) else
                     " ".join(str(p.get("text", "")) for p in (m.content or []) if p.get("type") == "text")}
                    for m in req.messages]
        n_tokens = int(req.max_tokens or 256)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        check_completion(n_tokens, 0, stops)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            def frame(piece: str | None, finish: str | None) -> dict:
                delta = {"content": piece} if piece is not None else {}
                return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

            first = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            return await stream_response(lambda: reader.stream_complete(messages, max_tokens=n_tokens, stop=stops),
                                         frame, prelude=[first])
        c = await call(lambda: reader.complete(messages, max_tokens=n_tokens, stop=stops))
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                             "finish_reason": c.finish_reason}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens}}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest) -> Any:
        if not req.retrieval:
            return await plain_chat(req)
        question = _question(req)
        strat = check_strategy(req.strategy or strategy)
        check_reader(reader, strat)
        kk = clamp_k(req.k, k)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            hits_box: list = []

            def make() -> Iterator[str]:
                from rag_lfm.readers.pipeline import _check_not_empty

                if strat != "closed-book":
                    _check_not_empty(source)
                    hits_box.extend(retrieve(question, kk, req.filter))
                return reader.stream(question, hits_box, strategy=strat)

            def frame(piece: str | None, finish: str | None) -> dict:
                delta = {"content": piece} if piece is not None else {}
                out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                if finish is not None:
                    out["citations"] = [_hit_citation(n, h) for n, h in enumerate(hits_box, start=1)]
                return out

            first = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            return await stream_response(make, frame, prelude=[first])
        answer = await answer_question(question, kk, strat, req.filter)
        return {
            "id": cid, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.generated_tokens,
                      "total_tokens": answer.prompt_tokens + answer.generated_tokens},
            "citations": [c.to_dict() for c in answer.citations],
            "strategy": strat,
        }

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> Any:
        if req.echo:
            raise ConfigError("echo=true is not supported; the prompt is not returned")
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) > 64:
            raise ConfigError(f"prompt must be a string or a list of 1 to 64 strings, got {len(prompts)}")
        n_lp = int(req.logprobs or 0)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        check_completion(req.max_tokens, n_lp, stops)
        cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            if len(prompts) != 1:
                raise ConfigError("stream=true takes one prompt")

            def frame(piece: str | None, finish: str | None) -> dict:
                return {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                        "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}]}

            return await stream_response(
                lambda: reader.stream_complete(prompts[0], max_tokens=req.max_tokens, stop=stops), frame)

        def job() -> list:
            batch = getattr(reader, "complete_batch", None)
            if batch is not None:
                return batch(prompts, max_tokens=req.max_tokens, stop=stops, top_logprobs=n_lp)
            return [reader.complete(p, max_tokens=req.max_tokens, stop=stops, top_logprobs=n_lp) for p in prompts]

        done = await call(job)
        choices = []
        for i, c in enumerate(done):
            lp = None
            if n_lp:
                offsets, pos = [], 0
                for t in c.tokens or []:
                    offsets.append(pos)
                    pos += len(t)
                lp = {"tokens": c.tokens, "token_logprobs": c.token_logprobs, "top_logprobs": c.top_logprobs,
                      "text_offset": offsets}
            choices.append({"index": i, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason})
        usage_p = sum(c.prompt_tokens for c in done)
        usage_c = sum(c.completion_tokens for c in done)
        return {"id": cid, "object": "text_completion", "created": created, "model": model_name, "choices": choices,
                "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c}}

    app.state.worker = worker
    return app


def _settle(fut: Any, result: Any, exc: BaseException | None) -> None:
    if fut.done():  # the request was cancelled (its client left)
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def _hit_citation(number: int, hit: Any) -> dict[str, Any]:
    from rag_lfm.readers.prompts import passage_title

    return {"number": number, "chunk_id": int(hit.chunk_id), "doc_id": str(hit.doc_id), "source_id": str(hit.source_id),
            "score": float(hit.score), "title": passage_title(hit)}


def serve(app: Any, *, host: str = "127.0.0.1", port: int = 8000, graceful_s: float = 10.0,
          log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until SIGINT/SIGTERM (then running requests get ``graceful_s`` to finish)."""
    _deps()
    import uvicorn

    if host not in LOOPBACK:
        log.warning("listening on %s: reachable from other machines; consider --api-key-env", host)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=graceful_s,
                            access_log=True)
    uvicorn.Server(config).run()
