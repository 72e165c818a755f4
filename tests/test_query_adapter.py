"""Query adapters: training against frozen stored vectors, saved in the index, applied by every search path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_lfm import KnowledgeBase
from rag_lfm.adapters import (
    QueryAdapter,
    activate_query_adapter,
    derive_pairs,
    fit_query_adapter,
    list_query_adapters,
    load_pairs,
    load_query_adapter,
    remove_query_adapter,
    save_query_adapter,
    tune_query_adapter,
)
from rag_lfm.adapters.tuning import Pair, fragment_of
from rag_lfm.connectors import InMemory
from rag_lfm.embedders import HashEmbedder
from rag_lfm.errors import ConfigError, EmbedderMismatchError
from rag_lfm.metrics import BilinearMetric, fit_bilinear
from rag_lfm.retrieval import Retriever

WORDS = [f"w{i}" for i in range(40)]
SYN = {w: f"s{w[1:]}x" for w in WORDS}  # the query vocabulary: a "synonym" of every document word


def _corpus(n: int = 240, seed: int = 0):
    """Documents of 4 words; each query names 3 of them by their synonyms (no word in common).

    The plain hash embedder cannot match a query to its document; a map from synonym buckets to
    word buckets, learned on some documents, carries over to unseen ones.
    """
    rng = np.random.default_rng(seed)
    docs, pairs = [], []
    for i in range(n):
        ws = list(rng.choice(WORDS, size=4, replace=False))
        docs.append((f"d{i}", " ".join(ws), {"description": " ".join(SYN[w] for w in ws[:3])}))
        pairs.append(Pair(" ".join(SYN[w] for w in ws[:3]), f"d{i}"))
    return docs, pairs


@pytest.fixture
def synkb(tmp_path):
    docs, pairs = _corpus()
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64", retriever="dense")
    kb.ingest(InMemory(docs), progress=False)
    yield kb, pairs
    kb.close()


def _r1(kb, pairs, **search):
    hits = kb.search_batch([p.query for p in pairs], k=1, **search)
    return float(np.mean([h[0].doc_id == p.doc_id for h, p in zip(hits, pairs)]))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_fit_loss_falls_and_held_out_recall_rises(kind):
    rng = np.random.default_rng(0)
    d, n = 16, 400
    corpus = rng.normal(size=(n, d)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    mix = np.linalg.qr(rng.normal(size=(d, d)))[0]
    queries = corpus @ mix + 0.05 * rng.normal(size=(n, d)).astype(np.float32)
    tr, va = np.arange(300), np.arange(300, 400)
    a = fit_query_adapter(queries[tr], corpus, tr, kind=kind, rank=16, valid=(queries[va], va), epochs=25, lr=1e-2,
                          reg=0.0, temperature=0.1, hard_negatives=4, patience=25, seed=0)
    hist = a.info["history"]
    assert hist[-1]["loss"] < hist[1]["loss"]  # the loss falls
    assert a.info["valid_r1_best"] > a.info["valid_r1_before"] + 0.3, a.info  # on held-out documents
    r1 = np.mean(np.argmax(a.apply(queries[va]) @ corpus.T, 1) == va)
    assert r1 == pytest.approx(a.info["valid_r1_best"])  # the best epoch is the one kept


def test_identity_start_and_reload_bit_identical(tmp_path):
    q = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    for kind in ("linear", "mlp"):
        a = QueryAdapter.identity(kind, 8, rank=4, normalize=False)
        np.testing.assert_allclose(a.apply(q), q, atol=1e-6)
    a = fit_query_adapter(q, q, np.arange(5), kind="mlp", rank=4, epochs=3, lr=1e-2, hard_negatives=2)
    a.save(tmp_path / "a")
    b = QueryAdapter.load(tmp_path / "a")
    assert b.kind == "mlp" and b.rank == 4 and b.info == json.loads(json.dumps(a.info))
    for k in a.weights:
        assert a.weights[k].tobytes() == b.weights[k].tobytes()
    assert a.apply(q).tobytes() == b.apply(q).tobytes()
    assert not (tmp_path / "a" / "adapter.pkl").exists() and (tmp_path / "a" / "adapter.safetensors").is_file()


def test_bilinear_metric_is_a_linear_query_adapter():
    rng = np.random.default_rng(2)
    q = rng.normal(size=(64, 8)).astype(np.float32)
    m = fit_bilinear(q, q + 0.1, epochs=2)
    assert isinstance(m, BilinearMetric) and m.as_adapter().kind == "linear"
    assert m.query_transform(q).tobytes() == m.as_adapter().apply(q).tobytes()
    np.testing.assert_array_equal(m.as_adapter().weights["matrix"], m.matrix)


def test_tune_saves_into_index_and_every_search_applies_it(synkb):
    kb, pairs = synkb
    train, test = pairs[:200], pairs[200:]
    plain = _r1(kb, test)
    a = tune_query_adapter(kb, train, name="syn", kind="linear", epochs=20, lr=3e-2, batch_size=32, reg=0.0,
                           temperature=0.1, hard_negatives=4, patience=20, progress=False)
    assert a.info["valid_pairs"] > 0 and a.info["best_epoch"] > 0
    # side files bound to the commit record, recorded in the manifest, listed by info()
    assert {"adapters/syn/adapter.safetensors", "adapters/syn/adapter.json"} <= set(kb.side_files)
    assert kb.manifest["query_adapters"]["active"] == "syn"
    assert kb.info()["query_adapters"]["syn"]["active"] is True
    adapted = _r1(kb, test)  # KnowledgeBase.search applies the active adapter
    assert adapted > plain + 0.3, (plain, adapted)
    # a reopened index applies it too, and the stored adapter is bit-identical
    kb2 = KnowledgeBase.open(kb.path)
    assert _r1(kb2, test) == adapted
    assert load_query_adapter(kb2, "syn").weights["matrix"].tobytes() == a.weights["matrix"].tobytes()
    # every Retriever method: dense, hybrid (its dense list), a metric's two stages; "none" turns it off
    qs = [p.query for p in test]
    qv = kb.embedder.encode(qs, kind="query")
    want = kb.search_vectors(a.apply(qv), 1)[1][:, 0]
    for r in (Retriever(kb), Retriever(kb, metric="dot"), Retriever(kb, adapter="syn")):
        assert r.search_ids(qs, 1)[1][:, 0].tolist() == want.tolist()
    assert Retriever(kb, adapter="none").search_ids(qs, 1)[1][:, 0].tolist() == kb.search_vectors(qv, 1)[1][:, 0].tolist()
    hybrid = Retriever(kb, method="hybrid", fusion="weighted", weights=[1.0, 0.0])  # BM25 weighted out: dense order
    assert [h[0].doc_id for h in hybrid.search_batch(qs, 1)] == [h[0].doc_id for h in kb.search_batch(qs, 1)]
    # deactivate, reactivate, remove
    activate_query_adapter(kb, None)
    assert _r1(kb, test) == plain
    activate_query_adapter(kb, "syn")
    assert _r1(kb, test) == adapted
    remove_query_adapter(kb, "syn")
    assert not any(r.startswith("adapters/") for r in kb.side_files)
    assert not (kb.path / "adapters" / "syn").exists() and "query_adapters" not in kb.manifest
    assert _r1(kb, test) == plain and list_query_adapters(kb) == {}


def test_adapter_refuses_another_embedder(synkb, tmp_path):
    kb, pairs = synkb
    a = tune_query_adapter(kb, pairs[:100], name=None, kind="mlp", rank=8, epochs=2, progress=False)
    assert a.embedder == {"name": "hash-64", "dim": 64, "normalize": True}
    docs, _ = _corpus(20)
    for emb in ("hash-32", HashEmbedder(64, normalize=False)):
        other = KnowledgeBase.create(tmp_path / f"other-{getattr(emb, 'name', emb)}-{id(emb)}", embedder=emb, retriever="dense")
        other.ingest(InMemory(docs), progress=False)
        with pytest.raises(EmbedderMismatchError, match="trained for embedder 'hash-64'"):
            save_query_adapter(other, a, "x")
        with pytest.raises(EmbedderMismatchError, match="tune query-adapter"):
            Retriever(other, adapter=a)
        other.close()


def test_bad_input_errors(synkb, tmp_path):
    kb, pairs = synkb
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        load_pairs(empty)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pairs(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "doc_id": "d1"}\n{"query": "", "doc_id": "d2"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2 needs a non-empty 'query'"):
        load_pairs(bad)
    ok = tmp_path / "ok.jsonl"
    ok.write_text("\n".join(json.dumps({"query": p.query, "doc_id": p.doc_id}) for p in pairs[:10])
                  + '\n{"query": "x y z", "doc_id": "no-such-doc"}\n')
    with pytest.raises(ConfigError, match="1 pair\\(s\\) name documents the index does not hold: 'no-such-doc'"):
        tune_query_adapter(kb, load_pairs(ok), progress=False)
    with pytest.raises(ConfigError, match="rank 0 is out of range; use an int from 1 to 64"):
        tune_query_adapter(kb, pairs, rank=0, progress=False)
    with pytest.raises(ConfigError, match="rank 65 is out of range"):
        QueryAdapter.identity("mlp", 64, rank=65)
    with pytest.raises(ConfigError, match="kind 'deep' is not supported; use one of linear, mlp"):
        tune_query_adapter(kb, pairs, kind="deep", progress=False)
    with pytest.raises(ConfigError, match="at least 2"):
        fit_query_adapter(np.ones((1, 4), np.float32), np.ones((3, 4), np.float32), np.array([0]), kind="linear")
    with pytest.raises(ConfigError, match="adapter name '../x' is not valid"):
        save_query_adapter(kb, QueryAdapter.identity("linear", 64), "../x")
    with pytest.raises(ConfigError, match="has no query adapter 'ghost'; its adapters: \\(none\\)"):
        Retriever(kb, adapter="ghost").search("s1x s2x", k=1)
    save_query_adapter(kb, QueryAdapter.identity("linear", 64, embedder={"name": "hash-64", "dim": 64, "normalize": True}), "i")
    with pytest.raises(ConfigError, match="already has a query adapter 'i'"):
        save_query_adapter(kb, QueryAdapter.identity("linear", 64), "i")


def test_derived_pairs_forms():
    assert fragment_of("Claude Monet (1840-1926) was a French painter and founder of impressionism, who ...",
                       "Claude Monet") == "a French painter and founder of impressionism"
    assert fragment_of("Paris is the capital of France.", "Paris") == "the capital of France"
    assert fragment_of("No verb here at all.", "X") == ""
    assert fragment_of("Rome is Rome in Italy.", "Rome") == ""  # names its own title: dropped
    kb = KnowledgeBase.create(__import__("tempfile").mkdtemp() + "/kb", embedder="hash-64")
    kb.ingest(InMemory([("Paris", "Paris is the capital and largest city of France. It has ...",
                         {"title": "Paris", "description": "capital city of France"}),
                        ("Rome", "Rome is an ancient city in Italy.", {"title": "Rome"})]), progress=False)
    got = {(p.form, p.doc_id, p.query) for p in derive_pairs(kb)}
    assert got == {("description", "Paris", "capital city of France"),
                   ("lead", "Paris", "the capital and largest city of France"),
                   ("lead", "Rome", "an ancient city in Italy")}
    assert {p.doc_id for p in derive_pairs(kb, ["lead"], docs=["Rome"])} == {"Rome"}
    with pytest.raises(ConfigError, match="use any of description, lead"):
        derive_pairs(kb, ["title"])
    kb.close()


def test_cli_tune_list_info_remove(synkb, tmp_path):
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    kb, pairs = synkb
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"query": p.query, "doc_id": p.doc_id}) for p in pairs[:120]))
    run = CliRunner().invoke
    r = run(app, ["tune", "query-adapter", str(kb.path), "--pairs", str(f), "--kind", "linear", "--name", "cli",
                  "--epochs", "3", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output.strip().splitlines()[-1])
    assert out["name"] == "cli" and out["kind"] == "linear" and out["pairs"] > 0
    r = run(app, ["info", str(kb.path)])
    assert r.exit_code == 0 and "* cli: linear" in r.output, r.output
    r = run(app, ["adapters", "list", str(kb.path), "--json"])
    assert json.loads(r.output)["cli"]["active"] is True
    r = run(app, ["search", str(kb.path), pairs[0].query, "-k", "1", "--json"])
    assert r.exit_code == 0, r.output
    r = run(app, ["tune", "query-adapter", str(kb.path), "--pairs", str(f), "--rank", "0"])
    assert r.exit_code == 2 and "rank 0 is out of range" in r.output
    r = run(app, ["adapters", "remove", str(kb.path), "cli"])
    assert r.exit_code == 0, r.output
    r = run(app, ["adapters", "remove", str(kb.path), "cli"])
    assert r.exit_code == 2 and "has no query adapter 'cli'" in r.output
