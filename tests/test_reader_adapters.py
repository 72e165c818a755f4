"""Reader adapters through PEFT (LoRA, prompt tuning) on a tiny random Llama: training, loading, frozen base."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from rag_lfm.adapters.reader import (  # noqa: E402
    ReaderExample,
    base_fingerprint,
    cloze_of,
    resolve_reader_adapter,
    train_reader_adapter,
)
from rag_lfm.errors import ConfigError, ModelNotFoundError  # noqa: E402
from rag_lfm.readers import TransformersReader  # noqa: E402
from rag_lfm.readers.testing import save_tiny_llama  # noqa: E402
from rag_lfm.types import Hit  # noqa: E402

CORPUS = [
    "Claude Monet was a French painter and a founder of Impressionism.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Mount Everest is Earth's highest mountain above sea level.",
    "The Nile is a major north-flowing river in northeastern Africa.",
    "Marie Curie was a physicist and chemist who studied radioactivity.",
    "Question: Which landmark? Answer: Passages: [1] [2] [3]",
]
TITLES = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]


def _hits(order):
    return [Hit(i, TITLES[i], 1.0 - 0.1 * r, CORPUS[i], {"title": TITLES[i]}) for r, i in enumerate(order)]


def _examples(n=8):
    out = []
    for j in range(n):
        gold = j % 5
        order = [gold] + [(gold + d) % 5 for d in (1, 2)][: j % 3]
        out.append(ReaderExample(f"Which article is about {CORPUS[gold].split()[-1]}?", _hits(order), TITLES[gold], "title"))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), chat=True, corpus=CORPUS, seed=0)


def _reader(path, **kw):
    return TransformersReader(path, device="cpu", max_new_tokens=4, max_passage_tokens=24, batch_size=4, **kw)


@pytest.mark.parametrize("method", ["lora", "prompt"])
def test_adapter_trains_loss_falls_and_base_weights_unchanged(tiny, tmp_path, method):
    reader = _reader(tiny).warm_up()
    before = reader.weights_fingerprint()
    train, valid = _examples(8), _examples(4)
    rep = train_reader_adapter(reader, train, valid, method=method, out=tmp_path / method, epochs=4, grad_accum=2,
                               lr=5e-2 if method == "prompt" else 1e-2, rank=4, virtual_tokens=4, eval_every=4,
                               patience=10, progress=False, seed=0)
    losses = [h["valid_loss"] for h in rep.history]
    assert rep.steps == 16 and min(losses[1:]) < losses[0]  # the held-out loss falls
    assert 0 < rep.trainable_params < 0.2 * rep.frozen_params
    assert reader.weights_fingerprint() == before  # the reader's own model was never touched
    meta = json.loads((tmp_path / method / "rag_lfm_reader_adapter.json").read_text())
    assert meta["method"] == method and meta["forms"] == {"title": 8} and meta["trainable_params"] == rep.trainable_params
    assert (tmp_path / method / "adapter_model.safetensors").is_file()
    # loaded by path: the base weights' hash is unchanged, the answers keep every decoding option
    adapted = _reader(tiny, adapter=str(tmp_path / method)).warm_up()
    assert adapted.base_weights_fingerprint() == reader.base_weights_fingerprint()
    assert adapted.adapter_info["method"] == method
    q, hits = train[0].question, train[0].passages
    a1 = adapted.generate(q, hits)
    assert a1.text  # copy-constrained, title candidates, alternative starts: all on the adapted model
    closed = adapted.generate(q, [], strategy="closed-book")
    assert isinstance(closed.text, str)
    # reloading gives bit-identical logits
    again = _reader(tiny, adapter=str(tmp_path / method)).warm_up()
    ids = torch.tensor([adapted.prompts.build(q, hits).ids])
    with torch.no_grad():
        l1 = adapted.model(input_ids=ids).logits
        l2 = again.model(input_ids=ids).logits
    assert torch.equal(l1, l2)
    with torch.no_grad():
        l0 = reader.model(input_ids=torch.tensor([reader.prompts.build(q, hits).ids])).logits
    assert l0.shape[-1] == l1.shape[-1] and not torch.equal(l0[:, -1], l1[:, -1])  # the adapter does change the answer's logits


def test_resume_from_checkpoint_matches_one_run(tiny, tmp_path):
    reader = _reader(tiny).warm_up()
    kw = dict(method="lora", epochs=1, grad_accum=2, lr=1e-2, rank=4, eval_every=2, patience=99, progress=False, seed=3)
    full = train_reader_adapter(reader, _examples(8), _examples(2), out=tmp_path / "full", **kw)
    train_reader_adapter(reader, _examples(8), _examples(2), out=tmp_path / "part", max_steps=2, **kw)
    resumed = train_reader_adapter(reader, _examples(8), _examples(2), out=tmp_path / "part", resume=True, **kw)
    assert resumed.steps == full.steps == 4
    assert [round(h["valid_loss"], 5) for h in resumed.history] == [round(h["valid_loss"], 5) for h in full.history]


def test_bad_input_and_other_base_model(tiny, tmp_path, tmp_path_factory):
    reader = _reader(tiny).warm_up()
    with pytest.raises(ConfigError, match="method 'bitfit' is not supported; use one of lora, prompt"):
        train_reader_adapter(reader, _examples(2), method="bitfit", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="LoRA rank 0 is out of range; use an int from 1 to 256"):
        train_reader_adapter(reader, _examples(2), rank=0, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="virtual_tokens 1000 is out of range"):
        train_reader_adapter(reader, _examples(2), method="prompt", virtual_tokens=1000, out=tmp_path / "x")
    with pytest.raises(ConfigError, match="no training examples"):
        train_reader_adapter(reader, [], out=tmp_path / "x")
    with pytest.raises(ModelNotFoundError, match="reader adapter 'nope' is neither a folder"):
        resolve_reader_adapter("nope")
    train_reader_adapter(reader, _examples(2), method="lora", rank=2, epochs=1, grad_accum=1, out=tmp_path / "l",
                         progress=False)
    other = save_tiny_llama(tmp_path_factory.mktemp("other"), chat=True, corpus=CORPUS, hidden_size=48)
    with pytest.raises(ConfigError, match="was trained for another base model"):
        _reader(other, adapter=str(tmp_path / "l")).warm_up()


def test_base_fingerprint_ignores_adapter_weights(tiny, tmp_path):
    reader = _reader(tiny).warm_up()
    fp = base_fingerprint(reader.model)
    train_reader_adapter(reader, _examples(2), method="lora", rank=2, epochs=1, grad_accum=1, out=tmp_path / "l",
                         progress=False)
    assert base_fingerprint(_reader(tiny, adapter=str(tmp_path / "l")).warm_up().model) == fp


def test_cloze_questions_answer_with_a_span_that_is_not_the_title():
    q, a = cloze_of("Claude Monet was a French painter and a founder of Impressionism in 1874.", "Claude Monet")
    assert a in ("French", "Impressionism", "1874") and "___" in q and a not in q
    assert cloze_of("Paris is big.", "Paris") is None


def test_wiki_reader_examples_split_by_document_with_passages_in_retriever_order(tmp_path):
    from rag_lfm import KnowledgeBase
    from rag_lfm.adapters.reader import wiki_reader_examples
    from rag_lfm.connectors import InMemory
    from rag_lfm.eval.splits import document_split

    entries = [{"title": f"Place {c}{c}", "description": f"river town number {i} of the north",
                "extract": f"Place {c}{c} is a river town in Norland founded in {1700 + i}. It lies on the Orrin river."}
               for i, c in enumerate("abcdefghijklmnopqrstuvwx")]
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64", retriever="dense")
    kb.ingest(InMemory([(e["title"], e["extract"], {"title": e["title"], "description": e["description"]}) for e in entries]),
              progress=False)
    ex = wiki_reader_examples(kb, split="train", n=10, cloze_share=0.5, ks=(2, 3), entries=entries, seed=0)
    train_titles = {e["title"] for e in entries if document_split(e["title"]) == "train"}
    assert ex and {e.form for e in ex} <= {"title", "cloze"}
    for e in ex:
        assert 2 <= len(e.passages) <= 3
        scores = [h.score for h in e.passages]
        assert scores == sorted(scores, reverse=True)  # the retriever's order
        assert any(e.answer in f"{h.metadata['title']} {h.text}" for h in e.passages)  # answer in context
        if e.form == "title":
            assert e.answer in train_titles
        else:
            assert e.answer not in e.question and "___" in e.question
    with pytest.raises(ConfigError, match="use any of title, cloze"):
        wiki_reader_examples(kb, forms=("essay",), entries=entries)
    with pytest.raises(ConfigError, match="ks=\\[0\\] must be ints from 1 to 16"):
        wiki_reader_examples(kb, ks=(0,), entries=entries)
    kb.close()


def test_choice_loss_scores_candidates_as_the_reader_does_and_teaches_the_choice(tiny, tmp_path):
    """The passage-choice loss: its token part equals the plain loss; its candidates are the passages'
    titles and the gold; training with it makes the gold win over the other titles more often."""
    from rag_lfm.adapters.reader import _choices, _encode_example, _loss

    reader = _reader(tiny).warm_up()
    ex = _examples(3)[2]  # three passages, the gold first
    prompt, target = _encode_example(reader, ex, max_len=512)
    cands, gold = _choices(reader, ex, target)
    assert gold == 0 and cands[0] == target and len(cands) == 3  # the gold, then the two other titles
    assert _choices(reader, ReaderExample(ex.question, [], ex.answer), target) is None  # closed-book: nothing to choose
    with torch.no_grad():
        plain = float(_loss(reader.model, prompt, target, "cpu"))
        tiny_w = float(_loss(reader.model, prompt, target, "cpu", (cands, gold), 1e-9))
        ce = float(_loss(reader.model, prompt, target, "cpu", (cands, gold), 1.0))
    assert abs(plain - tiny_w) < 1e-4  # the cached-prompt path computes the same token loss
    assert ce > plain  # plus a positive choice term
    with pytest.raises(ConfigError, match="choice_weight"):
        train_reader_adapter(reader, _examples(2), method="prompt", out=tmp_path / "p", choice_weight=1.0, progress=False)
    with pytest.raises(ConfigError, match="choice_weight"):
        train_reader_adapter(reader, _examples(2), method="lora", out=tmp_path / "p", choice_weight=-1.0, progress=False)
    rep = train_reader_adapter(reader, _examples(8), _examples(4), method="lora", out=tmp_path / "c", epochs=4, grad_accum=2,
                               lr=1e-2, rank=4, eval_every=4, patience=10, progress=False, seed=0, choice_weight=1.0)
    losses = [h["valid_loss"] for h in rep.history]
    assert min(losses[1:]) < losses[0]
    assert json.loads((tmp_path / "c" / "rag_lfm_reader_adapter.json").read_text())["choice_weight"] == 1.0


def test_closed_book_anchors_hold_the_frozen_reader_answers(tiny):
    from rag_lfm.adapters.reader import closed_book_anchors

    reader = _reader(tiny).warm_up()
    qs = [e.question for e in _examples(5)]
    anchors = closed_book_anchors(reader, qs + qs[:2], seed=0)  # repeats are dropped
    assert 1 <= len(anchors) <= 5 and all(a.passages == [] and a.form == "keep" for a in anchors)
    frozen = {q: reader.generate(q, [], strategy="closed-book").text.strip() for q in qs}
    assert all(a.answer == frozen[a.question] for a in anchors)


def test_unknown_lora_target_module_is_refused_with_the_valid_names(tiny, tmp_path):
    reader = _reader(tiny).warm_up()
    with pytest.raises(ConfigError, match=r"qproj.*q_proj"):
        train_reader_adapter(reader, _examples(2), method="lora", out=tmp_path / "x", target_modules=["qproj"], progress=False)


def test_cli_tune_reader_with_anchors_and_choice_loss(tiny, tmp_path):
    from typer.testing import CliRunner

    from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase
    from rag_lfm.cli import app

    kb = KnowledgeBase.create(tmp_path / "kb", embedder=HashEmbedder(64))
    kb.ingest(InMemory([Document(t, c, {"title": t}) for t, c in zip(TITLES, CORPUS)]), progress=False)
    kb.close()
    qa = tmp_path / "qa.jsonl"
    qa.write_text("\n".join(json.dumps({"question": f"Which article is about {c.split()[-1]}?", "answers": [t]})
                            for t, c in zip(TITLES, CORPUS)))
    run = CliRunner().invoke
    common = ["tune", "reader", str(tmp_path / "kb"), "--qa", str(qa), "--model", str(tiny), "--n", "4", "--n-valid", "1",
              "--k", "1,2", "--grad-accum", "1", "--rank", "2", "--max-passage-tokens", "24"]
    r = run(app, common + ["--max-steps", "2", "--anchors", "2", "--choice-weight", "1", "--targets", "q_proj,v_proj",
                           "--name", str(tmp_path / "ad"), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["steps"] == 2 and out["method"] == "lora"
    meta = json.loads((tmp_path / "ad" / "rag_lfm_reader_adapter.json").read_text())
    assert meta["choice_weight"] == 1.0 and meta["forms"]["keep"] >= 1  # the anchors were trained on
    r = run(app, common + ["--targets", "qproj", "--name", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "'qproj'" in r.output and "q_proj" in r.output
    r = run(app, common + ["--anchors", "-1", "--name", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "--anchors -1" in r.output
