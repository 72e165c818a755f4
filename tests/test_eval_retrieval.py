"""Retrieval evaluation: IR metrics, BEIR loading, the wiki-vital task, `rag-lfm eval retrieval`."""

from __future__ import annotations

import json
import math

import pytest
import typer
from typer.testing import CliRunner

from rag_lfm.errors import ConfigError
from rag_lfm.eval.retrieval import (
    MethodResult,
    evaluate_run,
    format_table,
    hits_to_run,
    load_beir,
    wiki_vital_task,
)
from rag_lfm.types import Hit


def test_metrics_match_hand_computation():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": {"a": 3.0, "x": 2.0}, "q2": {"x": 3.0, "y": 2.0, "b": 1.0}}  # q3 has no results
    got = evaluate_run(qrels, run, ["recall@1", "recall@10", "ndcg@10", "mrr@10"])
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@10"] == pytest.approx(2 / 3)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 3) / 3)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_graded_and_uncut_metrics_match_hand_computation():
    qrels = {"q1": {"a": 2, "b": 1, "z": 0}, "q2": {"c": 1}}  # z: judged not relevant
    run = {"q1": {"b": 0.9, "x": 0.8, "a": 0.7, "z": 0.6}, "q2": {"y": 1.0}}
    got = evaluate_run(qrels, run, ["ndcg@2", "ndcg", "precision@2", "map", "hit_rate@1", "recall"])
    ideal = 2 + 1 / math.log2(3)
    assert got["ndcg@2"] == pytest.approx((1 / ideal) / 2)
    assert got["ndcg"] == pytest.approx(((1 + 2 / math.log2(4)) / ideal) / 2)
    assert got["precision@2"] == pytest.approx((1 / 2) / 2)
    assert got["map"] == pytest.approx(((1 + 2 / 3) / 2) / 2)
    assert got["hit_rate@1"] == pytest.approx(1 / 2)
    assert got["recall"] == pytest.approx(1 / 2)


@pytest.mark.parametrize("bad", ["ndcg@0", "ndcg@ten", "f1@10", ""])
def test_unknown_metric_names_the_input_and_the_choices(bad):
    with pytest.raises(ConfigError, match="is not one of ndcg, recall"):
        evaluate_run({"q": {"a": 1}}, {"q": {"a": 1.0}}, [bad])
    with pytest.raises(ConfigError, match="qrels is empty"):
        evaluate_run({}, {}, ["ndcg@10"])


def test_hits_to_run_is_document_level():
    hits = [[Hit(1, "a", 0.9, "t"), Hit(2, "a", 0.8, "t"), Hit(3, "b", -5.0, "t")]]
    assert hits_to_run(["q"], hits, depth=10) == {"q": {"a": 10.0, "b": 9.0}}


def _write_beir(folder, *, qrels_name="qrels/test.tsv"):
    folder.mkdir(parents=True, exist_ok=True)
    docs = {
        "d1": ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris."),
        "d2": ("Colosseum", "The Colosseum is an ancient amphitheatre in the centre of Rome."),
        "d3": ("Great Wall", "The Great Wall of China is a series of fortifications."),
        "d4": ("Big Ben", "Big Ben is the nickname for the Great Bell of the clock at Westminster in London."),
    }
    (folder / "corpus.jsonl").write_text(
        "\n".join(json.dumps({"_id": k, "title": t, "text": x}) for k, (t, x) in docs.items()))
    qs = {"q1": "iron tower in Paris", "q2": "amphitheatre Rome", "q3": "clock bell London", "q9": "unjudged"}
    (folder / "queries.jsonl").write_text("\n".join(json.dumps({"_id": k, "text": v}) for k, v in qs.items()))
    path = folder / qrels_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\nq3\td4\t1\n")
    return folder


def test_load_beir_and_errors(tmp_path):
    task = load_beir(_write_beir(tmp_path / "beir"))
    assert len(task.corpus) == 4 and set(task.queries) == {"q1", "q2", "q3"}
    assert task.qrels["q3"] == {"d4": 1} and task.corpus["d1"]["title"] == "Eiffel Tower"
    assert load_beir(_write_beir(tmp_path / "flat", qrels_name="qrels.tsv")).qrels == task.qrels
    (tmp_path / "beir" / "queries.jsonl").unlink()
    with pytest.raises(ConfigError, match="lacks queries.jsonl"):
        load_beir(tmp_path / "beir")
    bad = _write_beir(tmp_path / "bad")
    (bad / "qrels" / "test.tsv").write_text("q1\tnope\t1\n")
    with pytest.raises(ConfigError, match="corpus-id 'nope' is not in corpus.jsonl"):
        load_beir(bad)


def test_wiki_vital_task_counts():
    task = wiki_vital_task()
    assert len(task.corpus) == 10_033 and len(task.queries) == 9_469
    qid = next(iter(task.queries))
    assert task.qrels[qid] == {qid.removeprefix("q:"): 1}
    assert all(len(q.split()) >= 3 for q in task.queries.values())


def test_format_table():
    out = format_table([MethodResult("dense", {"ndcg@10": 0.5}, 3, 0.3, 100.0)], ["ndcg@10"])
    assert out.splitlines()[0].split() == ["method", "ndcg@10", "ms/query"]
    assert "0.5000" in out and "100.00" in out


def test_cli_eval_retrieval_on_beir_folder(tmp_path):
    from rag_lfm.retrieval.cli import register

    app, eval_app = typer.Typer(), typer.Typer()
    app.add_typer(eval_app, name="eval")
    register(app, eval_app)
    folder = _write_beir(tmp_path / "beir")
    res = CliRunner().invoke(app, ["eval", "retrieval", str(folder), "--embedder", "hash-256",
                                   "--methods", "dense,bm25,hybrid,hybrid-lead,metric:l2,mmr", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["n_queries"] == 3 and out["n_docs"] == 4
    by = {r["method"]: r for r in out["results"]}
    assert set(by) == {"dense", "bm25", "hybrid", "hybrid-lead", "metric:l2", "mmr"}
    assert by["bm25"]["recall@1"] == 1.0  # each query shares rare words with its document only
    assert all(0.0 <= r["ndcg@10"] <= 1.0 and r["ms_per_query"] > 0 for r in out["results"])
    res = CliRunner().invoke(app, ["eval", "retrieval", str(folder), "--embedder", "hash-256", "--methods", "bogus"])
    assert res.exit_code == 2 and "unknown method 'bogus'" in res.output
    table = CliRunner().invoke(app, ["eval", "retrieval", str(folder), "--embedder", "hash-256", "--methods", "bm25"])
    assert table.exit_code == 0 and "bm25" in table.stdout and "ndcg@10" in table.stdout
