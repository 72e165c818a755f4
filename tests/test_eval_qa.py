"""QA evaluation: SQuAD normalisation, EM/F1, answer-in-context, the JSONL loader, the built-in task."""

from __future__ import annotations

import json

import pytest

from rag_lfm.connectors import InMemory
from rag_lfm.errors import ConfigError
from rag_lfm.eval.qa import (
    QAExample,
    answer_in_context,
    evaluate_qa,
    exact_match,
    load_qa_jsonl,
    normalize_answer,
    token_f1,
    wiki_vital_task,
)


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear") == "apple pear"
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert token_f1("Claude Monet", ["Monet"]) == pytest.approx(2 / 3)
    assert token_f1("Monet", ["Renoir", "Claude Monet"]) == pytest.approx(2 / 3)  # best gold counts
    assert token_f1("", ["Monet"]) == 0.0 and token_f1("the", ["a"]) == 1.0  # both normalise to empty


def test_answer_in_context_matches_whole_words():
    assert answer_in_context(["Nile"], ["The Nile flows north."])
    assert not answer_in_context(["Nile"], ["Senile decay"])  # not inside another word
    assert answer_in_context(["Mercury (planet)", "Mercury"], ["Mercury is the closest planet."])
    assert not answer_in_context(["Paris"], [])


def test_load_qa_jsonl(tmp_path):
    f = tmp_path / "qa.jsonl"
    f.write_text(json.dumps({"id": "a", "question": "Q1?", "answers": ["x", "y"]}) + "\n\n"
                 + json.dumps({"question": "Q2?", "answer": "z", "query": "q2"}) + "\n")
    rows = load_qa_jsonl(f)
    assert [r.answers for r in rows] == [["x", "y"], ["z"]] and rows[1].query == "q2" and rows[0].query == "Q1?"
    f.write_text('{"question": "no answers"}\n')
    with pytest.raises(ConfigError, match=r"qa.jsonl:1 needs"):
        load_qa_jsonl(f)
    f.write_text("not json\n")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_qa_jsonl(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_qa_jsonl(tmp_path / "missing.jsonl")


def test_builtin_task_is_fixed_held_out_and_well_formed():
    pytest.importorskip("rag_lfm.connectors.wiki")
    try:
        test = wiki_vital_task(300, seed=0)
    except Exception as exc:  # noqa: BLE001 - the data package is an optional extra
        pytest.skip(f"wiki-vital data not installed: {exc}")
    assert len(test) == 300 and test == wiki_vital_task(300, seed=0)  # fixed seed: same sample
    assert test != wiki_vital_task(300, seed=1)
    dev_titles = {e.id for e in wiki_vital_task(10**6, split="dev")}
    train_titles = {e.id for e in wiki_vital_task(10**6, split="train")}
    assert dev_titles and not dev_titles & {e.id for e in test}  # held out from the tuning split
    assert train_titles and not train_titles & {e.id for e in test} and not train_titles & dev_titles
    for e in test:
        assert e.question.startswith("Which article/entity is described as: ") and e.answers[0] == e.id
        assert normalize_answer(e.id) not in normalize_answer(e.question)
    by_desc = wiki_vital_task(5, query="description")
    assert all(e.query != e.question and e.query in e.question for e in by_desc)
    with pytest.raises(ConfigError, match="split"):
        wiki_vital_task(5, split="validation")




def test_evaluate_qa_end_to_end(tmp_path):
    from rag_lfm.knowledge_base import KnowledgeBase
    from rag_lfm.readers import TransformersReader
    from rag_lfm.types import Document
    from tests.test_readers import CORPUS, _save_tiny

    titles = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64")
    kb.ingest(InMemory(name="toy", items=[Document(t, CORPUS[i], {"title": t}) for i, t in enumerate(titles)]), progress=False)
    examples = [QAExample("Which lattice tower is in Paris?", ["Eiffel Tower"], "1"),
                QAExample("Which river flows north in Africa?", ["Nile"], "2"),
                QAExample("Who studied radioactivity?", ["Marie Curie"], "3")]
    # extractive: the top title; the hash embedder ranks the right document first here
    reader = TransformersReader(_save_tiny(tmp_path / "m", chat=True), device="cpu", max_new_tokens=4)
    ext = evaluate_qa(kb, reader, examples, strategy="extractive", k=2, progress=False)
    assert ext.exact_match == 1.0 and ext.f1 == 1.0 and ext.answer_in_context == 1.0 and ext.n == 3
    gen = evaluate_qa(kb, reader, examples, strategy="in-context", k=2, progress=False)
    assert 0.0 <= gen.exact_match <= gen.f1 <= 1.0 and gen.answer_in_context == 1.0
    assert gen.seconds_per_question > 0 and gen.latency_p95_s >= gen.latency_p50_s > 0
    assert [r["id"] for r in gen.records] == ["1", "2", "3"] and gen.records[0]["cited"][0] == "Eiffel Tower"
    closed = evaluate_qa(kb, reader, examples, strategy="closed-book", progress=False)
    assert closed.answer_in_context is None and closed.k == 0
    assert set(gen.to_dict()) >= {"exact_match", "f1", "answer_in_context", "seconds_per_question"}
    assert "records" not in gen.to_dict()


def test_cli_eval_qa(tmp_path):
    from typer.testing import CliRunner

    from rag_lfm.cli import app
    from rag_lfm.knowledge_base import KnowledgeBase
    from rag_lfm.types import Document
    from tests.test_readers import CORPUS, _save_tiny

    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64")
    kb.ingest(InMemory(name="toy", items=[Document("Nile", CORPUS[3], {"title": "Nile"})]), progress=False)
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"question": "Which river?", "answers": ["Nile"]}) + "\n")
    model = _save_tiny(tmp_path / "m", chat=True)
    res = CliRunner().invoke(app, ["eval", "qa", str(kb.path), "--data", str(data), "--model", model,
                                   "--strategy", "extractive", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["exact_match"] == 1.0 and out["n"] == 1
    res = CliRunner().invoke(app, ["eval", "qa", str(kb.path), "--model", model])
    assert res.exit_code == 2 and "exactly one of --data" in res.output
