"""Every reader backend: transformers, llama.cpp (the packaged SmolLM2 GGUF), an OpenAI-compatible endpoint.

- each answers from passages and cites them (one conformance test over the three);
- REPLUG through OpenAIReader against a real `rag-lfm serve` process (started here on a
  free loopback port) gives the same answers as in-process REPLUG with the same model: a
  tiny random Llama with a one-character-per-token vocabulary, so that the text the
  endpoint returns re-tokenizes to exactly the ids the local reader decoded;
- no secret (the API key's value) appears in the server's output, the client's logs or
  any file of the index;
- capabilities: what a reader lacks is a clear error, before any work;
- llama.cpp decodes as llama.cpp itself does (its own greedy completion), and its KV-cache
  prefix reuse changes no logits.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rag_lfm.connectors import InMemory  # noqa: E402
from rag_lfm.errors import ConfigError, ModelNotFoundError  # noqa: E402
from rag_lfm.readers import CapabilityError, TransformersReader, ask_batch, make_reader  # noqa: E402
from rag_lfm.readers.testing import CORPUS, save_tiny_llama  # noqa: E402
from rag_lfm.types import Document, Hit  # noqa: E402

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama_cpp is not importable: pip install \"rag-lfm[llamacpp]\" "
                                 "(or --find-links ../shared/wheels llama-cpp-python==0.3.36)")
TITLES = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
QUESTIONS = ["Which landmark is in Paris?", "Who founded Impressionism?", "Which river is in Africa?",
             "What is the highest mountain?", "Who studied radioactivity?"]
SECRET = "sk-test-5e1f0c-never-print-me"
ROOT = Path(__file__).resolve().parents[1]


def hits(n: int = 3) -> list[Hit]:
    return [Hit(chunk_id=100 + i, doc_id=TITLES[i], score=0.9 - 0.1 * i, text=CORPUS[i],
                metadata={"title": TITLES[i]}, source_id="test") for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chars_model(tmp_path_factory) -> str:
    # peaked distributions (init_std 0.5): greedy steps are rarely near-ties, as with a trained model
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-chars"), chat=True, vocab="chars", init_std=0.5)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path_factory.mktemp("backends-kb") / "kb", embedder="hash-64")
    kb.ingest(InMemory(name="toy", items=[Document(t, CORPUS[i], {"title": t}) for i, t in enumerate(TITLES)]),
              progress=False)
    return kb


@pytest.fixture(scope="module")
def serve_process(kb, chars_model):
    """`rag-lfm serve` as its own process, with an API key from the environment; yields (url, output-reader)."""
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    port = free_port()
    env = dict(os.environ, RAG_LFM_TEST_KEY=SECRET, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "rag_lfm.cli", "serve", str(kb.path), "--model", chars_model, "--device", "cpu",
           "--port", str(port), "--api-key-env", "RAG_LFM_TEST_KEY", "--max-new-tokens", "8", "--log-level", "debug"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    pump.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.time() + 240  # imports and model load on a busy 2-core machine
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail("rag-lfm serve did not start:\n" + "".join(lines[-40:]))
        time.sleep(0.2)
    yield url, proc, lines
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def openai_reader(url: str, chars_model: str, **kw):
    pytest.importorskip("openai")
    from rag_lfm.readers.openai_reader import OpenAIReader

    opts = dict(base_url=url + "/v1", api_key_env="RAG_LFM_TEST_KEY", tokenizer=chars_model, api="completions",
                max_new_tokens=8, context_window=2048, max_retries=2)
    opts.update(kw)
    return OpenAIReader("tiny", **opts)


# -- every reader answers from passages and cites them ------------------------------------------------
def _check_answer(answer, passages, strategy):
    assert isinstance(answer.text, str) and answer.strategy == strategy
    assert [c.doc_id for c in answer.citations] == [h.doc_id for h in passages]
    assert [c.number for c in answer.citations] == list(range(1, len(passages) + 1))
    assert all(c.source_id == "test" and c.text for c in answer.citations)
    if strategy == "replug":
        assert sum(c.weight for c in answer.citations) == pytest.approx(1.0)


@pytest.fixture(params=["transformers", "llamacpp", "openai"])
def any_reader(request, chars_model, monkeypatch):
    if request.param == "transformers":
        return TransformersReader(chars_model, device="cpu", max_new_tokens=6)
    if request.param == "llamacpp":
        if not HAS_LLAMA:
            pytest.skip("llama_cpp is not importable")
        return make_reader("llamacpp", "SmolLM2-135M-Instruct", max_new_tokens=8, n_threads=1)
    url, _, _ = request.getfixturevalue("serve_process")
    monkeypatch.setenv("RAG_LFM_TEST_KEY", SECRET)
    return openai_reader(url, chars_model, one_shot=False)  # shorter prompts: one token per character here


@pytest.mark.parametrize("strategy", ["in-context", "replug"])
def test_each_reader_answers_from_passages_and_cites_them(any_reader, strategy):
    passages = hits(3)
    answers = any_reader.generate_batch(QUESTIONS[:2], [passages, passages[:2]], strategy=strategy)
    _check_answer(answers[0], passages, strategy)
    _check_answer(answers[1], passages[:2], strategy)
    assert answers[0].text == any_reader.generate(QUESTIONS[0], passages, strategy=strategy).text
    assert any_reader.capabilities.streaming and "".join(any_reader.stream(QUESTIONS[0], passages, strategy=strategy))


# -- REPLUG over HTTP equals REPLUG in process ----------------------------------------------------------
def test_replug_through_rag_lfm_serve_equals_in_process(serve_process, chars_model, kb, monkeypatch):
    url, _, _ = serve_process
    monkeypatch.setenv("RAG_LFM_TEST_KEY", SECRET)
    # one_shot=False: shorter prompts (one token per character here), the same on both sides
    remote = openai_reader(url, chars_model, one_shot=False)
    # the same model, decoding freely (no copy constraint, no rescoring: an endpoint cannot do those)
    local = TransformersReader(chars_model, device="cpu", max_new_tokens=8, constrain="none", candidates="none",
                               one_shot=False, answer_starts=1, drop_echoes=False)
    questions = QUESTIONS[:3]
    passages = kb.search_batch(questions, 3)
    for strategy in ("replug", "in-context"):
        want = local.generate_batch(questions, passages, strategy=strategy)
        got = remote.generate_batch(questions, passages, strategy=strategy)
        assert [a.text for a in got] == [a.text for a in want], strategy
        assert all(len(a.text) > 0 for a in got)
        assert [[c.weight for c in a.citations] for a in got] == [[c.weight for c in a.citations] for a in want]
    streamed = "".join(remote.stream(QUESTIONS[0], passages[0], strategy="replug"))
    assert streamed == local.generate(QUESTIONS[0], passages[0], strategy="replug").text
    # one request per prompt (for servers that take one prompt per request) gives the same
    one_by_one = openai_reader(url, chars_model, one_shot=False, batch_prompts=False)
    assert one_by_one.generate(QUESTIONS[0], passages[0], strategy="replug").text == streamed
    # and through the pipeline, against the same index
    assert [a.text for a in ask_batch(kb, QUESTIONS[:2], reader=remote, strategy="replug", k=3)] == \
        [a.text for a in ask_batch(kb, QUESTIONS[:2], reader=local, strategy="replug", k=3)]


# -- capabilities -------------------------------------------------------------------------------------------
def test_capabilities_are_checked_with_clear_errors(kb):
    pytest.importorskip("openai")
    from rag_lfm.readers.openai_reader import OpenAIReader

    with pytest.raises(CapabilityError, match="logits"):
        OpenAIReader("m", base_url="http://127.0.0.1:9/v1", constrain="copy")
    blind = OpenAIReader("m", base_url="http://127.0.0.1:9/v1", logprobs=False)
    with pytest.raises(CapabilityError, match="log-probabilities") as err:
        blind.generate("q", hits(2), strategy="replug")
    assert "in-context" in str(err.value) and "openai:m" in str(err.value)
    with pytest.raises(CapabilityError):  # the pipeline refuses before retrieving
        ask_batch(kb, ["q"], reader=blind, strategy="replug")
    for caps in (TransformersReader.capabilities,):
        assert caps.missing("replug", constrain="copy") == []


def test_an_endpoint_without_logprobs_is_named(tmp_path):
    """A real HTTP endpoint (a minimal FastAPI app) that answers completions without log-probabilities."""
    pytest.importorskip("openai")
    fastapi = pytest.importorskip("fastapi")
    uvicorn = pytest.importorskip("uvicorn")
    from rag_lfm.readers.openai_reader import EndpointError, OpenAIReader

    app = fastapi.FastAPI()

    @app.post("/v1/completions")
    def completions(body: dict) -> dict:
        n = len(body["prompt"]) if isinstance(body["prompt"], list) else 1
        return {"id": "x", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": i, "text": " a", "logprobs": None, "finish_reason": "length"} for i in range(n)]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        time.sleep(0.02)
    try:
        reader = OpenAIReader("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        with pytest.raises(EndpointError, match="no log-probabilities"):
            reader.generate("q", hits(2), strategy="replug")
    finally:
        server.should_exit = True
        t.join(timeout=10)
    down = OpenAIReader("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(EndpointError, match="could not connect"):
        down.generate("q", hits(1))


def test_registry_names_the_valid_choices():
    with pytest.raises(ConfigError, match="transformers, llamacpp, openai"):
        make_reader("vllm")
    with pytest.raises(ConfigError, match="does not take device"):
        make_reader("openai", "m", device="cpu")
    with pytest.raises(ConfigError, match="--model"):
        make_reader("openai")
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        make_reader("openai", "m", api_key_env="sk-live-abc123-looks-like-a-key")


def test_openai_reader_against_llama_cpps_own_server():
    """llama-cpp-python's OpenAI-compatible server, where its `server` extra is installed."""
    for mod in ("llama_cpp", "llama_cpp.server.app", "openai"):
        try:
            importlib.import_module(mod)
        except ImportError as exc:
            pytest.skip(f"{mod} is not importable ({exc}): pip install \"llama-cpp-python[server]\" openai")
    import httpx

    from rag_lfm.readers.convert import smollm2_gguf
    from rag_lfm.readers.openai_reader import OpenAIReader

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--port",
                             str(port), "--host", "127.0.0.1", "--logits_all", "true", "--n_threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail("llama_cpp.server did not start")
            time.sleep(0.3)
        reader = OpenAIReader("smollm2", base_url=f"http://127.0.0.1:{port}/v1", api="completions",
                              batch_prompts=False, top_logprobs=5, max_new_tokens=8, max_retries=0)
        passage = Hit(1, "Claude Monet", 0.8, "Oscar-Claude Monet was a French painter and founder of "
                      "Impressionism.", {"title": "Claude Monet"}, "wiki")
        for strategy in ("in-context", "replug"):
            a = reader.generate("Which French painter founded Impressionism?", [passage], strategy=strategy)
            assert "Monet" in a.text and a.citations[0].doc_id == "Claude Monet", (strategy, a.text)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def test_cli_reader_options(kb, chars_model):
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    runner = CliRunner()
    wrong = runner.invoke(app, ["ask", str(kb.path), "q", "--model", chars_model, "--base-url", "http://x/v1"])
    assert wrong.exit_code == 2 and "--reader openai only" in wrong.output
    unknown = runner.invoke(app, ["ask", str(kb.path), "q", "--reader", "vllm"])
    assert unknown.exit_code == 2 and "valid readers" in unknown.output
    copy = runner.invoke(app, ["ask", str(kb.path), "q", "--reader", "openai", "--model", "m", "--constrain", "copy"])
    assert copy.exit_code == 2 and "logits" in copy.output


@needs_llama
def test_cli_ask_with_the_llamacpp_reader(kb):
    import json

    from typer.testing import CliRunner

    from rag_lfm.cli import app

    res = CliRunner().invoke(app, ["ask", str(kb.path), "Which lattice tower is in Paris?", "-k", "2", "--reader",
                                   "llamacpp", "--max-new-tokens", "6", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["model"].startswith("SmolLM2") and data["citations"][0]["doc_id"] == "Eiffel Tower"
    assert "Eiffel" in data["text"]


# -- llama.cpp ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    if not HAS_LLAMA:
        pytest.skip("llama_cpp is not importable")
    from rag_lfm.readers.llamacpp_reader import LlamaCppReader

    return LlamaCppReader("SmolLM2-135M-Instruct", max_new_tokens=8, n_threads=1).warm_up()


@needs_llama
def test_llamacpp_answers_from_a_passage(llama):
    passage = Hit(1, "Claude Monet", 0.8, "Oscar-Claude Monet was a French painter and founder of Impressionism.",
                  {"title": "Claude Monet"}, "wiki")
    other = Hit(2, "Eiffel Tower", 0.7, CORPUS[1], {"title": "Eiffel Tower"}, "wiki")
    before = llama.weights_fingerprint()
    for strategy in ("in-context", "replug"):
        a = llama.generate("Which French painter founded Impressionism?", [passage, other], strategy=strategy)
        assert "Monet" in a.text and a.citations[0].doc_id == "Claude Monet", (strategy, a.text)
        assert a.prompt_format == "chat" and a.candidates  # the titles competed with the decoded answer
    assert llama.weights_fingerprint() == before


@needs_llama
def test_llamacpp_greedy_equals_llama_cpps_own(llama):
    prompt = "The Eiffel Tower is located in"
    mine = llama.complete(prompt, max_tokens=12, top_logprobs=3)
    theirs = llama._llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1, repeat_penalty=1.0)
    assert mine.text == theirs["choices"][0]["text"]
    assert "".join(llama.stream_complete(prompt, max_tokens=12)) == mine.text
    assert len(mine.top_logprobs) == mine.completion_tokens and max(mine.top_logprobs[0].values()) == \
        pytest.approx(mine.token_logprobs[0])
    chat = llama.complete([{"role": "user", "content": "Name the capital of France."}], max_tokens=6, stop=["."])
    assert chat.prompt_tokens > 5 and "." not in chat.text


@needs_llama
def test_llamacpp_cache_reuse_changes_no_logits(llama):
    import numpy as np

    tok = llama.tokenizer
    a = tok("The Nile is a river in")["input_ids"]
    b = tok("The Nile is the longest")["input_ids"]
    first = llama._next_logits(a)
    llama._next_logits(b)  # shares a prefix with a: only the rest is evaluated
    again = llama._next_logits(a)
    llama._llm.reset()
    fresh = llama._next_logits(a)
    assert np.allclose(first, again, atol=1e-3) and np.allclose(again, fresh, atol=1e-3)


@needs_llama
def test_llamacpp_copy_constraint_and_streaming(llama):
    passages = [Hit(1, "Nile", 0.9, CORPUS[3], {"title": "Nile"}, "wiki"),
                Hit(2, "Mount Everest", 0.5, CORPUS[2], {"title": "Mount Everest"}, "wiki")]
    try:
        llama.candidates = "none"
        a = llama.generate("Which river flows north in Africa?", passages)
        context = " ".join(f"[{c.number}] {c.title}\n{c.text}" for c in a.citations)
        assert a.text and " ".join(a.text.split()) in " ".join(context.split())
        assert "".join(llama.stream("Which river flows north in Africa?", passages)).strip() == a.text
    finally:
        llama.candidates = "titles"


@needs_llama
def test_llamacpp_bad_model_paths(tmp_path):
    from rag_lfm.readers.llamacpp_reader import LlamaCppReader

    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="not a .gguf"):
        LlamaCppReader(tmp_path / "notes.txt").warm_up()
    with pytest.raises(ModelNotFoundError, match="0 .gguf files"):
        LlamaCppReader(tmp_path).warm_up()
    with pytest.raises(ModelNotFoundError, match="neither"):
        LlamaCppReader(tmp_path / "missing.gguf").warm_up()


# Last in the module: it stops the shared `rag-lfm serve` process to read its whole output.
def test_no_secret_in_logs_or_index_files(serve_process, chars_model, kb, monkeypatch, caplog, capsys):
    import httpx

    url, proc, lines = serve_process
    monkeypatch.setenv("RAG_LFM_TEST_KEY", SECRET)
    caplog.set_level(logging.DEBUG)  # the openai client and httpx log requests at DEBUG
    reader = openai_reader(url, chars_model)
    assert SECRET not in repr(reader) and SECRET not in str(vars(reader))
    reader.generate(QUESTIONS[0], hits(2), strategy="replug")
    assert httpx.post(url + "/ask", json={"question": "q"}).status_code == 401  # the server checks the key
    wrong = openai_reader(url, chars_model, api_key_env="RAG_LFM_NO_SUCH_VARIABLE", max_retries=0)
    from rag_lfm.readers.openai_reader import EndpointError

    with pytest.raises(EndpointError, match="RAG_LFM_NO_SUCH_VARIABLE"):
        wrong.generate(QUESTIONS[0], hits(1))
    proc.send_signal(signal.SIGINT)  # graceful stop: the server's whole output is in `lines`
    # uvicorn shuts down, then re-raises the signal: the conventional exit status of SIGINT (130)
    assert proc.wait(timeout=60) in (0, 130, -signal.SIGINT)
    time.sleep(0.2)
    out = "".join(lines)
    assert "Application shutdown complete" in out
    assert "POST /v1/completions" in out and "401" in out  # its logs were captured ...
    assert SECRET not in out  # ... and hold no key
    captured = capsys.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    for f in Path(kb.path).rglob("*"):
        if f.is_file():
            assert SECRET.encode() not in f.read_bytes(), f
