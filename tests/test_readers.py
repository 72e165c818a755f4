"""The reader: prompts and the token budget rule, strategies, batching, streaming, frozen weights, bad input.

Unit tests use a tiny randomly initialised Llama built here (byte-level BPE trained on
a few sentences): the real decoding loop, cache and masks run, only the weights are
random. One integration test runs the real SmolLM2 (slow: it converts the GGUF once).
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rag_lfm.connectors import InMemory
from rag_lfm.errors import ConfigError, ModelNotFoundError  # noqa: E402
from rag_lfm.eval.qa import normalize_answer  # noqa: E402
from rag_lfm.readers.prompts import MAX_ANSWER_WORDS  # noqa: E402
from rag_lfm.readers.transformers_reader import _holds_span, _length_passes  # noqa: E402
from rag_lfm.readers import (  # noqa: E402
    STRATEGIES,
    Answer,
    NoPassagesError,
    PromptTooLongError,
    TransformersReader,
    ask,
    ask_batch,
)
from rag_lfm.types import Document, Hit  # noqa: E402

CORPUS = [
    "Claude Monet was a French painter and a founder of Impressionism.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Mount Everest is Earth's highest mountain above sea level.",
    "The Nile is a major north-flowing river in northeastern Africa.",
    "Marie Curie was a physicist and chemist who studied radioactivity.",
    "Question: Which landmark? Answer: Passages: [1] [2] [3]",
]


def _save_tiny(folder, *, chat: bool, seed: int = 0) -> str:
    from rag_lfm.readers.testing import save_tiny_llama

    return save_tiny_llama(folder, chat=chat, seed=seed, corpus=CORPUS)


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory) -> str:
    return _save_tiny(tmp_path_factory.mktemp("tiny-chat"), chat=True)


@pytest.fixture(scope="session")
def tiny_plain(tmp_path_factory) -> str:
    return _save_tiny(tmp_path_factory.mktemp("tiny-plain"), chat=False)


@pytest.fixture(scope="session")
def reader(tiny_chat) -> TransformersReader:
    return TransformersReader(tiny_chat, device="cpu", max_new_tokens=6, max_passage_tokens=40, batch_size=4).warm_up()


def hits(n: int = 3) -> list[Hit]:
    titles = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
    return [Hit(chunk_id=100 + i, doc_id=titles[i], score=0.9 - 0.1 * i, text=CORPUS[i],
                metadata={"title": titles[i]}, source_id="test") for i in range(n)]


QUESTIONS = ["Which landmark is in Paris?", "Who founded Impressionism?", "Which river is in Africa?",
             "What is the highest mountain?", "Who studied radioactivity?"]


# -- prompts and the token budget rule ----------------------------------------------------
def test_budget_rule_keeps_a_ranked_prefix_and_cuts_passages(reader):
    pb = reader.prompts
    long = [Hit(i, f"doc{i}", 1.0 - i / 10, " ".join(["Paris tower river"] * 60), {"title": f"D{i}"}) for i in range(6)]
    full = pb.build("Which tower?", long)
    # every passage is cut to max_passage_tokens, so each one is marked truncated
    assert all(c.truncated and c.text.endswith("...") for c in full.citations)
    old = pb.budget
    try:
        pb.budget = len(full.ids) - 30  # force the budget to bite
        cut = pb.build("Which tower?", long)
    finally:
        pb.budget = old
    assert len(cut.ids) <= len(full.ids) - 30
    # a prefix of the ranking: numbers 1..m, the dropped ones are the lowest ranked
    assert [c.number for c in cut.citations] == list(range(1, len(cut.citations) + 1))
    assert [c.doc_id for c in cut.citations] == [h.doc_id for h in long[: len(cut.citations)]]
    assert cut.dropped == len(long) - len(cut.citations) >= 1


def test_prompt_holds_titles_and_question(reader):
    parts = reader.prompts.build("Which landmark is in Paris?", hits(2))
    text = reader.tokenizer.decode(parts.ids)
    assert "[1] Claude Monet" in text and "[2] Eiffel Tower" in text and "Which landmark is in Paris?" in text
    assert parts.fmt == "chat" and "<|im_start|>assistant" in text
    # the shared prefix (system + examples) is the same tokens in every prompt of this kind
    other = reader.prompts.build("Who founded Impressionism?", hits(1))
    assert parts.prefix_len > 10 and parts.ids[: parts.prefix_len] == other.ids[: other.prefix_len]


def test_question_longer_than_the_context_window_raises(reader):
    question = "Which tower " * 400
    with pytest.raises(PromptTooLongError, match="over the budget"):
        reader.generate(question, hits(1))
    with pytest.raises(PromptTooLongError):
        reader.generate(question, [], strategy="closed-book")


# -- strategies ----------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["closed-book", "in-context", "replug"])
def test_batched_answers_equal_one_by_one(reader, strategy):
    passages = [[] if strategy == "closed-book" else hits(3)[i % 3:] + hits(1) for i in range(5)]
    batched = reader.generate_batch(QUESTIONS, passages, strategy=strategy)
    single = [reader.generate(q, p, strategy=strategy) for q, p in zip(QUESTIONS, passages)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert all(isinstance(a, Answer) and a.strategy == strategy for a in batched)


def test_shared_prefix_cache_changes_nothing(reader):
    passages = [hits(3)] * 5
    try:
        reader.share_prefix = False
        plain = reader.generate_batch(QUESTIONS, passages, strategy="replug")
    finally:
        reader.share_prefix = True
    shared = reader.generate_batch(QUESTIONS, passages, strategy="replug")
    assert [a.text for a in plain] == [a.text for a in shared]


def test_prompt_head_cache_is_kept_across_calls_and_never_grows(tiny_chat):
    """The shared prompt head's cache is computed once and reused by later calls; decoding works on
    a copy, so the kept one still holds the head alone, and answers match a reader that recomputes it."""
    r = TransformersReader(tiny_chat, device="cpu", max_new_tokens=12, max_passage_tokens=40).warm_up()
    passages = [hits(3)] * 5
    first = r.generate_batch(QUESTIONS, passages, strategy="replug")
    assert len(r._prefix_kv) == 1
    (key, kept), = r._prefix_kv.items()
    calls = []
    forward = r._forward
    r._forward = lambda ids, *a: calls.append(ids.shape) or forward(ids, *a)
    again = r.generate_batch(QUESTIONS, passages, strategy="replug")
    assert kept.get_seq_length() == len(key[1])  # decoding did not grow the kept head
    assert all(shape[0] > 1 for shape in calls)  # no batch-1 pass over the head this time
    fresh = TransformersReader(tiny_chat, device="cpu", max_new_tokens=12, max_passage_tokens=40).warm_up()
    fresh.share_prefix = False
    plain = fresh.generate_batch(QUESTIONS, passages, strategy="replug")
    assert [a.text for a in first] == [a.text for a in again] == [a.text for a in plain]


@pytest.mark.parametrize("strategy", ["in-context", "replug"])
def test_dropping_ended_rows_changes_nothing(tiny_chat, monkeypatch, strategy):
    """Rows leave the batch as their answers end, and candidates are scored in passes of similar
    lengths; the reference path (every row decoded to the end, one scoring pass) must agree."""
    import rag_lfm.readers.transformers_reader as tr

    r = TransformersReader(tiny_chat, device="cpu", max_new_tokens=30, max_passage_tokens=40, batch_size=8).warm_up()
    passages = [hits(3)[i % 3:] + hits(1) for i in range(5)]
    fast = r.generate_batch(QUESTIONS, passages, strategy=strategy)
    monkeypatch.setattr(tr, "_kv_snapshot", lambda cache: None)
    slow = r.generate_batch(QUESTIONS, passages, strategy=strategy)
    assert [a.text for a in fast] == [a.text for a in slow]
    for a, b in zip(fast, slow):
        assert [c["text"] for c in a.candidates] == [c["text"] for c in b.candidates]
        assert [c["score"] for c in a.candidates] == pytest.approx([c["score"] for c in b.candidates], abs=1e-4)
        for c in a.candidates:  # an answer past the word limit stops two words beyond it
            if c["source"] != "title":
                assert len(normalize_answer(c["text"]).split()) <= MAX_ANSWER_WORDS + 2


def test_length_passes_split_where_padding_costs_more_than_a_pass():
    assert _length_passes([]) == []
    assert _length_passes([5] * 10) == [list(range(10))]
    assert _length_passes([3, 19, 2, 4, 3]) == [[2, 0, 4, 3], [1]]
    lengths = [1, 40, 2, 40, 1, 3]
    passes = _length_passes(lengths, overhead=32)
    assert sorted(i for p in passes for i in p) == list(range(6))
    assert [sorted(lengths[i] for i in p) for p in passes] == [[1, 1, 2, 3], [40, 40]]
    assert _length_passes(lengths, overhead=10_000) == [[0, 4, 2, 5, 1, 3]]  # a pass dearer than any padding


def test_copy_constraint_answers_are_spans_of_the_passages(reader):
    for q in QUESTIONS:
        a = reader.generate(q, hits(2))
        assert a.text, "an empty answer is not allowed under the copy constraint"
        context = " ".join(f"[{c.number}] {c.title}\n{c.text}" for c in a.citations)
        assert " ".join(a.text.split()) in " ".join(context.split())


def test_replug_weights_follow_scores_and_k1_equals_in_context(reader):
    a = reader.generate(QUESTIONS[0], hits(3), strategy="replug")
    weights = [c.weight for c in a.citations]
    assert abs(sum(weights) - 1.0) < 1e-5 and weights == sorted(weights, reverse=True)
    assert [c.number for c in a.citations] == [1, 2, 3]
    one = hits(1)
    assert reader.generate(QUESTIONS[0], one, strategy="replug").text == reader.generate(QUESTIONS[0], one).text


def test_replug_with_one_dominant_passage_follows_it(reader):
    dominant = hits(2)
    dominant[0].score, dominant[1].score = 10.0, -10.0  # weight ~1 and ~0
    mixed = reader.generate(QUESTIONS[1], dominant, strategy="replug")
    assert mixed.citations[0].weight > 0.999
    assert mixed.text == reader.generate(QUESTIONS[1], dominant[:1], strategy="replug").text


def test_extractive_answers_with_the_top_title(reader):
    a = reader.generate("anything", hits(3), strategy="extractive")
    assert a.text == "Claude Monet" and a.citations[0].doc_id == "Claude Monet"


def test_citations_carry_ids_sources_scores(reader):
    a = reader.generate(QUESTIONS[0], hits(2))
    c = a.citations[0]
    assert (c.chunk_id, c.doc_id, c.source_id, c.score) == (100, "Claude Monet", "test", pytest.approx(0.9))
    d = json.loads(json.dumps(a.to_dict()))
    assert d["citations"][1]["title"] == "Eiffel Tower" and d["prompt_tokens"] > 0


def test_streaming_yields_the_answer(reader):
    # Streaming yields the greedy decoded answer as it comes (no candidates scored whole).
    try:
        reader.candidates, reader.answer_starts, reader.drop_echoes = "none", 1, False
        pieces = list(reader.stream(QUESTIONS[2], hits(3)))
        assert "".join(pieces).strip().split("\n")[0].strip() == reader.generate(QUESTIONS[2], hits(3)).text
        rp = "".join(reader.stream(QUESTIONS[2], hits(3), strategy="replug")).strip()
        assert rp == reader.generate(QUESTIONS[2], hits(3), strategy="replug").text
    finally:
        reader.candidates, reader.answer_starts, reader.drop_echoes = "titles", 4, True


def _full_forward_score(reader, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer tokens, then any stop token | prompt), from one uncached forward pass."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.inference_mode():
        lp = torch.log_softmax(reader.model(ids).logits[0].float(), -1)
    n, start = len(answer_ids), len(prompt_ids) - 1
    total = sum(float(lp[start + j, t]) for j, t in enumerate(answer_ids))
    stops = reader._stop_ids[: lp.shape[-1]]
    return total + float(torch.logsumexp(lp[start + n][stops], 0))


@pytest.mark.parametrize("strategy", ["in-context", "replug"])
def test_rescored_candidates_match_an_uncached_forward_pass(reader, strategy):
    """The candidates are scored on the prompt's cropped cache; a plain forward pass must agree."""
    passages = hits(3)
    answers = reader.generate_batch(QUESTIONS[:3], [passages] * 3, strategy=strategy)
    titles = {h.metadata["title"] for h in passages}
    for q, a in zip(QUESTIONS[:3], answers):
        assert a.candidates, "titles compete with the decoded answer"
        assert a.text == max(a.candidates, key=lambda c: c["score"])["text"]
        parts, weights = reader._plan(q, passages, strategy)
        for cand in a.candidates:
            if cand["source"] != "title":
                continue
            assert cand["text"] in titles
            ids = reader.tokenizer(" " + cand["text"], add_special_tokens=False)["input_ids"]
            if weights is None:
                expected = _full_forward_score(reader, parts[0].ids, ids)
            else:  # REPLUG under the copy constraint: the rows whose passage holds the title
                held = [i for i, p in enumerate(parts) if _holds_span(p.context_ids, ids)] or range(len(parts))
                rows = torch.tensor([_full_forward_score(reader, parts[i].ids, ids) for i in held])
                expected = float(torch.logsumexp(rows + torch.log(weights[list(held)]), 0))
            assert cand["score"] == pytest.approx(expected / (len(ids) + 1), abs=1e-4)


def test_candidates_none_keeps_the_decoded_answer(tiny_chat):
    plain = TransformersReader(tiny_chat, device="cpu", max_new_tokens=6, max_passage_tokens=40, candidates="none",
                               answer_starts=1, drop_echoes=False)
    a = plain.generate(QUESTIONS[0], hits(3))
    assert a.candidates == [] and a.text
    starts = TransformersReader(tiny_chat, device="cpu", max_new_tokens=6, max_passage_tokens=40, candidates="none")
    b = starts.generate(QUESTIONS[0], hits(3))  # the default: 4 alternative starts compete
    assert {c["source"] for c in b.candidates} <= {"decoded", "start"} and b.text in {c["text"] for c in b.candidates} | {a.text}
    with pytest.raises(ConfigError, match="answer_starts must be an int from 1 to 16"):
        TransformersReader(tiny_chat, answer_starts=0)
    with pytest.raises(ConfigError, match="candidates"):
        TransformersReader(tiny_chat, candidates="everything")


def test_weights_are_frozen(reader):
    before = reader.weights_fingerprint()
    for strategy in ("closed-book", "in-context", "replug"):
        reader.generate_batch(QUESTIONS[:2], [[] if strategy == "closed-book" else hits(2)] * 2, strategy=strategy)
    list(reader.stream(QUESTIONS[0], hits(1)))
    assert reader.weights_fingerprint() == before
    assert not reader.model.training
    assert not any(p.requires_grad for p in reader.model.parameters())


# -- bad input -------------------------------------------------------------------------------
def test_unknown_strategy_lists_the_valid_ones(reader):
    with pytest.raises(ConfigError, match="closed-book, in-context, replug, extractive"):
        reader.generate("q", hits(1), strategy="map-reduce")
    assert STRATEGIES == ("closed-book", "in-context", "replug", "extractive")


def test_no_passages_is_a_clear_error(reader):
    for strategy in ("in-context", "replug", "extractive"):
        with pytest.raises(NoPassagesError, match="closed-book"):
            reader.generate("q", [], strategy=strategy)


def test_model_path_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        TransformersReader(tmp_path).warm_up()
    with pytest.raises(ModelNotFoundError, match="is a file"):
        TransformersReader(tmp_path / "notes.txt").warm_up()
    with pytest.raises(ModelNotFoundError, match="not a local path"):
        TransformersReader(tmp_path / "missing").warm_up()
    with pytest.raises(ConfigError, match="dtype"):
        TransformersReader(tmp_path, dtype="int3")


def test_model_without_chat_template_uses_the_plain_layout(tiny_plain):
    r = TransformersReader(tiny_plain, device="cpu", max_new_tokens=4, max_passage_tokens=30)
    a = r.generate(QUESTIONS[0], hits(2))
    assert a.prompt_format == "plain" and a.text
    text = r.tokenizer.decode(r.prompts.build(QUESTIONS[0], hits(1)).ids)
    assert text.rstrip().endswith("Answer:") and "<|im_start|>assistant" not in text
    assert r.generate(QUESTIONS[0], [], strategy="closed-book").prompt_format == "plain"


def test_seq2seq_reader(tiny_plain, tmp_path):
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tiny_plain)
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "t5")
    tok.save_pretrained(tmp_path / "t5")
    r = TransformersReader(tmp_path / "t5", device="cpu", max_new_tokens=4, max_passage_tokens=30)
    answers = r.generate_batch(QUESTIONS[:2], [hits(2), hits(1)])
    assert r.is_seq2seq and len(answers) == 2 and all(a.generated_tokens <= 4 for a in answers)
    with pytest.raises(ConfigError, match="seq2seq"):
        r.generate(QUESTIONS[0], hits(2), strategy="replug")


# -- with a knowledge base -------------------------------------------------------------------


@pytest.fixture
def toy_kb(tmp_path):
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64")
    titles = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
    kb.ingest(InMemory(name="toy", items=[Document(t, CORPUS[i], {"title": t}) for i, t in enumerate(titles)]), progress=False)
    return kb


def test_ask_retrieves_and_cites(reader, toy_kb):
    a = ask(toy_kb, "Which lattice tower is in Paris?", reader=reader, k=2)
    assert a.citations[0].doc_id == "Eiffel Tower" and a.citations[0].source_id == "toy"
    assert a.latency_s > 0
    many = ask_batch(toy_kb, QUESTIONS, reader=reader, k=2, strategy="replug")
    assert len(many) == 5 and all(len(x.citations) == 2 for x in many)


def test_ask_on_an_empty_index_is_a_clear_error(reader, tmp_path):
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path / "empty", embedder="hash-64")
    with pytest.raises(NoPassagesError, match="holds no documents"):
        ask(kb, "anything?", reader=reader)
    # closed-book needs no index content
    assert ask(kb, "anything?", reader=reader, strategy="closed-book").citations == []


def test_cli_ask_json(tiny_chat, toy_kb):
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    res = CliRunner().invoke(app, ["ask", str(toy_kb.path), "Which lattice tower is in Paris?", "-k", "2",
                                   "--model", tiny_chat, "--max-new-tokens", "4", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output.strip().splitlines()[-1])
    assert data["citations"][0]["doc_id"] == "Eiffel Tower" and data["strategy"] == "in-context"
    bad = CliRunner().invoke(app, ["ask", str(toy_kb.path), "q", "--strategy", "nope", "--model", tiny_chat])
    assert bad.exit_code == 2 and "valid strategies" in bad.output


# -- the real packaged model ---------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_answers_from_a_passage():
    pytest.importorskip("gguf")
    from rag_lfm.models import resolve_model

    path = resolve_model("SmolLM2-135M-Instruct")
    assert (path / "config.json").exists() and any(path.glob("*.safetensors"))
    r = TransformersReader(path, max_new_tokens=8, max_passage_tokens=64)
    passage = Hit(1, "Claude Monet", 0.8, "Oscar-Claude Monet was a French painter and founder of Impressionism.",
                  {"title": "Claude Monet"}, "wiki")
    before = r.weights_fingerprint()
    a = r.generate("Which French painter founded Impressionism?", [passage])
    assert "Monet" in a.text and a.prompt_format == "chat"
    assert r.weights_fingerprint() == before
