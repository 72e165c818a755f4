"""`rag-lfm serve`: a real uvicorn server on 127.0.0.1 (a free port), a tiny random Llama, the hash embedder.

Clients are the real ones: httpx and the official openai client. Covered: every route,
errors as JSON with the right status, k clamped, bounded body, 429 when the queue is
full (and the openai client's retries getting through), 50 concurrent clients with no
request lost and every answer equal to the sequential one, API-key auth, graceful shutdown.
"""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
fastapi = pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from rag_lfm.connectors import InMemory  # noqa: E402
from rag_lfm.errors import ConfigError  # noqa: E402
from rag_lfm.readers import TransformersReader  # noqa: E402
from rag_lfm.readers.testing import CORPUS, save_tiny_llama  # noqa: E402
from rag_lfm.serve import create_app  # noqa: E402
from rag_lfm.types import Document  # noqa: E402

TITLES = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
QUESTIONS = ["Which landmark is in Paris?", "Who founded Impressionism?", "Which river is in Africa?",
             "What is the highest mountain?", "Who studied radioactivity?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, on a free loopback port."""

    def __init__(self, app, **config) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", **config)
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-serve"), chat=True)


@pytest.fixture(scope="module")
def reader(tiny) -> TransformersReader:
    return TransformersReader(tiny, device="cpu", max_new_tokens=5, max_passage_tokens=40, batch_size=4).warm_up()


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path_factory.mktemp("serve-kb") / "kb", embedder="hash-64")
    kb.ingest(InMemory(name="toy", items=[Document(t, CORPUS[i], {"title": t, "topic": "x" if i % 2 else "y"})
                                          for i, t in enumerate(TITLES)]), progress=False)
    return kb


@pytest.fixture(scope="module")
def server(kb, reader):
    with Server(create_app(kb, reader, k=2, max_body_bytes=64_000, index_path=str(kb.path))) as s:
        yield s


def _error(resp, status: int) -> str:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["error"]["code"] == status and body["error"]["message"]
    return body["error"]["message"]


# -- routes ------------------------------------------------------------------------------------
def test_health_and_models(server, reader):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["chunks"] == 5 and h["reader"] == reader.name
    assert h["capabilities"]["logprobs"] is True
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == reader.name


def test_search_clamps_k_to_the_collection(server, kb):
    r = httpx.post(server.url + "/search", json={"query": ["lattice tower Paris", "river Africa"], "k": 1000}).json()
    assert r["k"] == 5 and [len(x["hits"]) for x in r["results"]] == [5, 5]
    assert r["results"][0]["hits"][0]["doc_id"] == kb.search("lattice tower Paris", k=1)[0].doc_id
    filtered = httpx.post(server.url + "/search", json={"query": "tower", "k": 5, "filter": {"topic": "x"}}).json()
    assert {h["metadata"]["topic"] for h in filtered["results"][0]["hits"]} == {"x"}


def test_ask_answers_and_cites_like_the_library(server, kb, reader):
    from rag_lfm.readers import ask

    got = httpx.post(server.url + "/ask", json={"question": QUESTIONS[0], "k": 2}).json()
    expected = ask(kb, QUESTIONS[0], reader=reader, k=2)
    assert got["text"] == expected.text and got["k"] == 2
    assert [c["doc_id"] for c in got["citations"]] == [c.doc_id for c in expected.citations]
    replug = httpx.post(server.url + "/ask", json={"question": QUESTIONS[1], "strategy": "replug", "k": 3}).json()
    assert replug["strategy"] == "replug" and len(replug["citations"]) == 3
    assert replug["text"] == ask(kb, QUESTIONS[1], reader=reader, k=3, strategy="replug").text


def test_openai_chat_completions_is_retrieval_augmented(server, kb, reader):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    resp = client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTIONS[2]}])
    hits = kb.search(QUESTIONS[2], k=2)
    assert resp.choices[0].message.content == reader.generate(QUESTIONS[2], hits).text
    extra = resp.model_extra or {}
    assert [c["doc_id"] for c in extra["citations"]] == [h.doc_id for h in hits]
    stream = client.chat.completions.create(model="any", messages=[{"role": "user", "content": QUESTIONS[2]}],
                                            stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    try:
        reader.candidates = "none"  # streaming yields the decoded answer, as the reader's stream() does
        assert "".join(pieces) == "".join(reader.stream(QUESTIONS[2], hits))
    finally:
        reader.candidates = "titles"


def test_openai_completions_are_the_readers_completions(server, reader):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    resp = client.completions.create(model="any", prompt=["The Nile is", "Marie Curie"], max_tokens=4, logprobs=3,
                                     stop=["\n"])
    for choice, prompt in zip(resp.choices, ["The Nile is", "Marie Curie"]):
        local = reader.complete(prompt, max_tokens=4, stop=["\n"], top_logprobs=3)
        assert choice.text == local.text and choice.logprobs.tokens == local.tokens
        assert choice.logprobs.top_logprobs[0] == pytest.approx(local.top_logprobs[0], abs=1e-4)
    streamed = client.completions.create(model="any", prompt="The Nile is", max_tokens=6, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reader.complete("The Nile is", max_tokens=6).text


def test_openai_reader_chat_api_against_a_plain_chat(kb, tmp_path):
    """OpenAIReader's chat path (messages, the reply cleaned, streaming) on the served model's plain chat."""
    pytest.importorskip("openai")
    # peaked weights: the default tiny model mostly repeats the turn's opening newline (an empty answer)
    reader = TransformersReader(save_tiny_llama(tmp_path / "m", chat=True, vocab="chars", init_std=0.5),
                                device="cpu").warm_up()
    with Server(create_app(kb, reader)) as server:
        _check_chat_path(server, kb, reader)


def _check_chat_path(server, kb, reader) -> None:
    from rag_lfm.readers.openai_reader import OpenAIReader
    from rag_lfm.readers.prompts import clean_answer, plan_prompts

    remote = OpenAIReader("any", base_url=server.url + "/v1", api="chat", extra_body={"retrieval": False},
                          max_new_tokens=5, max_retries=0)
    answered = 0
    for q in QUESTIONS:
        passages = kb.search(q, k=2)
        parts, _ = plan_prompts(remote.prompts, q, passages, "in-context", 0.05)
        assert parts[0].messages[-1]["role"] == "user" and "Passages:" in parts[0].messages[-1]["content"]
        local = reader.complete(parts[0].messages, max_tokens=5)  # a chat reply: its first non-empty line
        a = remote.generate(q, passages)
        assert a.text == clean_answer(local.text)
        assert [c.doc_id for c in a.citations] == [h.doc_id for h in passages]
        assert a.prompt_tokens == local.prompt_tokens  # the endpoint's own count
        assert "".join(remote.stream(q, passages)).strip() == a.text
        answered += bool(a.text)
    assert answered  # (a random model often starts with a newline: an empty one-line answer)


# -- errors are JSON with the right status ----------------------------------------------------------
def test_errors_are_json_with_the_right_status(server):
    url = server.url
    assert "question" in _error(httpx.post(url + "/ask", json={}), 422)
    assert "json" in _error(httpx.post(url + "/ask", content=b"{not json", headers={"content-type": "application/json"}),
                            422).lower()
    assert "valid strategies" in _error(httpx.post(url + "/ask", json={"question": "q", "strategy": "nope"}), 400)
    assert "filter" in _error(httpx.post(url + "/search", json={"query": "q", "filter": {"nofield": 1}}), 400).lower()
    assert "over the limit" in _error(httpx.post(url + "/search", content=b"x" * 70_000), 413)
    # a body that does not declare its length (chunked) is bounded too
    assert "over the limit" in _error(httpx.post(url + "/search", content=iter([b"x" * 40_000, b"y" * 40_000])), 413)
    _error(httpx.get(url + "/nothing-here"), 404)
    _error(httpx.get(url + "/ask"), 405)
    assert "max_tokens" in _error(httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 10**6}), 400)
    assert "logprobs" in _error(httpx.post(url + "/v1/completions", json={"prompt": "a", "logprobs": 50}), 400)
    assert "context window" in _error(httpx.post(url + "/v1/completions", json={"prompt": "tower " * 600}), 400)
    assert "context window" in _error(httpx.post(url + "/v1/completions",
                                                 json={"prompt": "tower " * 600, "stream": True}), 400)
    assert "user message" in _error(httpx.post(url + "/v1/chat/completions",
                                               json={"messages": [{"role": "system", "content": "x"}]}), 400)
    # the server still answers after all of them
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_empty_index_is_422(tmp_path, reader):
    from rag_lfm.knowledge_base import KnowledgeBase

    empty = KnowledgeBase.create(tmp_path / "empty", embedder="hash-64")
    with Server(create_app(empty, reader)) as s:
        assert "holds no documents" in _error(httpx.post(s.url + "/ask", json={"question": "anything?"}), 422)
        # streamed too: the error comes before any text, so it is still a JSON error with its status
        chat = {"stream": True, "messages": [{"role": "user", "content": "anything?"}]}
        assert "holds no documents" in _error(httpx.post(s.url + "/v1/chat/completions", json=chat), 422)
        assert httpx.get(s.url + "/health").json()["pending"] == 0
        ok = httpx.post(s.url + "/ask", json={"question": "anything?", "strategy": "closed-book"})
        assert ok.status_code == 200 and ok.json()["citations"] == []


def test_openai_client_sees_the_error_message(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model="any", prompt="tower " * 600, max_tokens=5)


# -- load: 50 concurrent clients, a full queue, state never shared ------------------------------------
def test_fifty_concurrent_clients_lose_no_request(server, kb, reader):
    from rag_lfm.readers import ask_batch

    questions = [f"{QUESTIONS[i % 5]} ({i})" for i in range(50)]
    expected = [a.text for a in ask_batch(kb, questions, reader=reader, k=2)]

    def one(i: int) -> tuple[int, str]:
        if i % 5 == 4:  # raw completions interleaved with answers: neither disturbs the other
            r = httpx.post(server.url + "/v1/completions", json={"prompt": questions[i], "max_tokens": 3}, timeout=120)
            return r.status_code, r.json()["choices"][0]["text"]
        r = httpx.post(server.url + "/ask", json={"question": questions[i], "k": 2}, timeout=120)
        return r.status_code, r.json()["text"]

    before = httpx.get(server.url + "/health").json()
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert [s for s, _ in results] == [200] * 50
    after = httpx.get(server.url + "/health").json()
    assert after["answered"] - before["answered"] == 40
    # questions that waited together were answered as one batch (and the answers did not change)
    assert after["answer_batches"] - before["answer_batches"] < 40
    for i, (_, text) in enumerate(results):
        want = reader.complete(questions[i], max_tokens=3).text if i % 5 == 4 else expected[i]
        assert text == want, i


def test_questions_arriving_a_few_ms_apart_are_answered_as_one_batch(kb, reader):
    """The batch window: a drain that finds a question waits for the ones right behind it."""
    from rag_lfm.readers import ask_batch

    questions = [f"{QUESTIONS[i % 5]} [{i}]" for i in range(6)]
    expected = [a.text for a in ask_batch(kb, questions, reader=reader, k=2)]
    with Server(create_app(kb, reader, k=2, batch_wait_ms=2000)) as s:
        def one(i: int) -> str:
            time.sleep(0.05 * i)  # a ragged stream: 6 questions over 250 ms, well inside the 2 s window
            r = httpx.post(s.url + "/ask", json={"question": questions[i]}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["text"]

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(one, range(6)))
        health = httpx.get(s.url + "/health").json()
    assert answers == expected
    assert (health["answered"], health["answer_batches"]) == (6, 1)


class _SlowReader:
    """The real reader, each batch taking 2 s longer: the time a batch of a real model takes."""

    def __init__(self, reader) -> None:
        self._reader = reader

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def generate_batch(self, *args, **kwargs):
        time.sleep(2.0)
        return self._reader.generate_batch(*args, **kwargs)


def test_a_client_answered_alone_is_waited_for_and_joins_the_next_batch(kb, reader):
    """Client 0 is answered alone while three others queue; it comes back 60 ms after its answer,
    past the 20 ms gap. The next batch expects it (the last batch's client plus those queued; it waits
    up to a tenth of the last batch's time, 0.2 s here) and takes all four, instead of three now and client 0 alone after: clients stay in step."""
    questions = [f"{QUESTIONS[i % 5]} [{i}]" for i in range(5)]
    with Server(create_app(kb, _SlowReader(reader), k=2, batch_wait_ms=20)) as s:
        def post(q: str) -> str:
            r = httpx.post(s.url + "/ask", json={"question": q}, timeout=120)
            assert r.status_code == 200, r.text
            return r.json()["text"]

        def client0() -> None:
            post(questions[0])
            time.sleep(0.06)
            post(questions[4])

        def queued(i: int) -> None:
            time.sleep(0.3)  # while client 0's batch runs
            post(questions[i])

        with ThreadPoolExecutor(max_workers=4) as pool:
            for f in [pool.submit(client0)] + [pool.submit(queued, i) for i in (1, 2, 3)]:
                f.result()
        health = httpx.get(s.url + "/health").json()
    assert (health["answered"], health["answer_batches"]) == (5, 2)


def test_batch_settings_are_checked(kb, reader):
    with pytest.raises(ConfigError, match="batch_wait_ms"):
        create_app(kb, reader, batch_wait_ms=-1)
    with pytest.raises(ConfigError, match="max_batch"):
        create_app(kb, reader, max_batch=0)


def test_a_full_queue_answers_429_and_the_openai_client_retries(kb, reader):
    openai = pytest.importorskip("openai")
    with Server(create_app(kb, reader, max_pending=2)) as s:
        def raw(i: int):
            return httpx.post(s.url + "/v1/completions", json={"prompt": f"The Nile {i}", "max_tokens": 20}, timeout=120)

        with ThreadPoolExecutor(max_workers=12) as pool:
            plain = list(pool.map(raw, range(12)))
        refused = [r for r in plain if r.status_code == 429]
        assert refused and all(r.status_code in (200, 429) for r in plain)
        assert refused[0].headers["retry-after"] == "1" and "busy" in refused[0].json()["error"]["message"]

        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=30, timeout=120)

        def with_retries(i: int) -> str:
            return client.completions.create(model="any", prompt=f"The Nile {i}", max_tokens=20).choices[0].text

        with ThreadPoolExecutor(max_workers=12) as pool:
            texts = list(pool.map(with_retries, range(12)))
        assert texts == [reader.complete(f"The Nile {i}", max_tokens=20).text for i in range(12)]


def test_openai_reader_rides_out_429_and_reports_timeouts(server, kb, reader):
    pytest.importorskip("openai")
    from rag_lfm.readers.openai_reader import EndpointError, OpenAIReader

    passages = kb.search_batch(QUESTIONS, 2)
    calm = OpenAIReader("any", base_url=server.url + "/v1", api="completions", max_new_tokens=5, max_retries=0)
    expected = [a.text for a in calm.generate_batch(QUESTIONS, passages)]
    with Server(create_app(kb, reader, max_pending=1)) as busy:
        pressed = OpenAIReader("any", base_url=busy.url + "/v1", api="completions", max_new_tokens=5,
                               concurrency=5, max_retries=40)
        assert [a.text for a in pressed.generate_batch(QUESTIONS, passages)] == expected
        refused = OpenAIReader("any", base_url=busy.url + "/v1", api="completions", max_new_tokens=5,
                               concurrency=5, max_retries=0)
        with pytest.raises(EndpointError, match="429"):
            for _ in range(3):
                refused.generate_batch(QUESTIONS * 2, passages * 2)
    hasty = OpenAIReader("any", base_url=server.url + "/v1", timeout=0.05, max_retries=0)
    with pytest.raises(EndpointError, match="did not answer within 0.05 s"):
        hasty.complete("The Nile is", max_tokens=400)


def test_api_key_is_required_when_configured(kb, reader, monkeypatch, caplog):
    monkeypatch.setenv("RAG_LFM_SERVE_TEST_KEY", "sk-serve-secret-7f3a")
    with Server(create_app(kb, reader, api_key_env="RAG_LFM_SERVE_TEST_KEY")) as s:
        assert httpx.get(s.url + "/health").status_code == 200  # health stays open for probes
        msg = _error(httpx.post(s.url + "/ask", json={"question": "q"}), 401)
        assert "RAG_LFM_SERVE_TEST_KEY" in msg and "sk-serve-secret" not in msg
        _error(httpx.post(s.url + "/ask", json={"question": "q"}, headers={"Authorization": "Bearer wrong"}), 401)
        ok = httpx.post(s.url + "/ask", json={"question": QUESTIONS[0]},
                        headers={"Authorization": "Bearer sk-serve-secret-7f3a"})
        assert ok.status_code == 200 and ok.json()["citations"]
    assert "sk-serve-secret" not in caplog.text


def test_graceful_shutdown_finishes_the_running_request(kb, reader):
    app = create_app(kb, reader)
    s = Server(app, timeout_graceful_shutdown=30)
    box: dict = {}
    with s:
        def slow() -> None:
            box["r"] = httpx.post(s.url + "/v1/completions", json={"prompt": "The Nile is", "max_tokens": 400},
                                  timeout=120)

        t = threading.Thread(target=slow)
        t.start()
        deadline = time.time() + 30
        while app.state.worker.pending == 0 and time.time() < deadline:
            time.sleep(0.005)
        assert app.state.worker.pending == 1  # the request is running on the worker as shutdown begins
    # __exit__ asked uvicorn to stop and waited for it: the running request was answered first
    t.join(timeout=60)
    assert box["r"].status_code == 200
    assert box["r"].json()["choices"][0]["text"] == reader.complete("The Nile is", max_tokens=400).text
    with pytest.raises(httpx.ConnectError):
        httpx.get(s.url + "/health", timeout=2)


def test_create_app_refuses_a_reader_that_cannot_run_its_default_strategy(kb):
    from rag_lfm.readers import CapabilityError
    from rag_lfm.readers.openai_reader import OpenAIReader

    no_logprobs = OpenAIReader("m", base_url="http://127.0.0.1:9/v1", logprobs=False)
    with pytest.raises(CapabilityError, match="log-probabilities"):
        create_app(kb, no_logprobs, strategy="replug")


def test_serve_cli_is_registered():
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    out = CliRunner().invoke(app, ["serve", "--help"])
    assert out.exit_code == 0 and "--reader" in out.output and "127.0.0.1" in out.output
    bad = CliRunner().invoke(app, ["serve", "/nonexistent/index", "--reader", "nope"])
    assert bad.exit_code == 2 and "valid readers" in bad.output
