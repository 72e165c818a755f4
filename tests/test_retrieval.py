"""Retriever: BM25 sidecar, fusion, hybrid vs dense, MMR, cross-encoder rerank, filters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_lfm.connectors import InMemory
from rag_lfm import KnowledgeBase
from rag_lfm.errors import ConfigError
from rag_lfm.retrieval import BM25Index, CrossEncoderReranker, Retriever, mmr, rrf, weighted
from rag_lfm.types import Document




TEXTS = {
    "cats": ("Cats are small domesticated carnivorous mammals kept as pets.", {"topic": "animals"}),
    "dogs": ("Dogs are loyal domesticated mammals descended from wolves.", {"topic": "animals"}),
    "paris": ("Paris is the capital and largest city of France.", {"topic": "places"}),
    "rome": ("Rome is the capital city of Italy, founded in antiquity.", {"topic": "places"}),
    "python": ("Python is a programming language with dynamic typing.", {"topic": "computing"}),
}


@pytest.fixture
def kb(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-128")
    kb.ingest(InMemory([(k, t, m) for k, (t, m) in TEXTS.items()]), progress=False)
    yield kb
    kb.close()


# ---------------------------------------------------------------- fusion and MMR on arrays


def test_rrf_scores_and_order():
    a = (np.array([[3.0, 2.0, 1.0]]), np.array([[10, 20, 30]]))
    b = (np.array([[9.0, 8.0, -1.0]]), np.array([[20, 40, -1]]))
    s, ids = rrf([a, b], k=4, rrf_k=60)
    assert ids.tolist() == [[20, 10, 40, 30]]
    assert s[0, 0] == pytest.approx(1 / 62 + 1 / 61)
    assert s[0, 1] == pytest.approx(1 / 61)
    s2, ids2 = rrf([a, b], k=2, weights=[0.0, 1.0])
    assert ids2.tolist() == [[20, 40]]


def test_weighted_fusion_minmax_and_errors():
    a = (np.array([[1.0, 0.5, 0.0]]), np.array([[1, 2, 3]]))
    b = (np.array([[10.0, 0.0, 0.0]]), np.array([[3, 2, -1]]))
    s, ids = weighted([a, b], k=3, weights=[1.0, 1.0])
    # minmax: a -> {1: 1, 2: .5, 3: 0}; b -> {3: 1, 2: 0}, doc 1 missing from b gets b's floor 0.
    assert dict(zip(ids[0].tolist(), s[0].tolist())) == pytest.approx({1: 1.0, 2: 0.5, 3: 1.0})
    with pytest.raises(ConfigError, match="one weight per list"):
        weighted([a, b], k=3, weights=[1.0])
    with pytest.raises(ConfigError, match="normalize"):
        weighted([a, b], k=3, normalize="softmax")


def test_mmr_skips_near_duplicates():
    v = np.array([[1, 0, 0], [0.99, 0.01, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    rel = np.array([1.0, 0.98, 0.6, 0.5])
    assert mmr(rel, v, k=3, lam=1.0).tolist() == [0, 1, 2]
    assert mmr(rel, v, k=3, lam=0.5).tolist() == [0, 2, 3]
    with pytest.raises(ConfigError, match="lambda"):
        mmr(rel, v, k=2, lam=1.5)


# ---------------------------------------------------------------- BM25 sidecar


def test_bm25_persisted_and_rebuilt_when_kb_changes(kb):
    r = Retriever(kb, method="bm25")
    assert [h.doc_id for h in r.search("capital of France", k=1)] == ["paris"]
    folder = kb.path / "bm25"
    meta = json.loads((folder / "rag_lfm_bm25.json").read_text())
    assert meta["generation"] == kb.generation and meta["n_chunks"] == 5
    stamp = (folder / "chunk_ids.npy").stat().st_mtime_ns
    again = BM25Index.for_kb(kb)  # up to date: loaded, not rebuilt
    assert (folder / "chunk_ids.npy").stat().st_mtime_ns == stamp
    assert again.search(["wolves"], k=1)[1][0, 0] == r.bm25.search(["wolves"], k=1)[1][0, 0]
    kb.ingest(InMemory([("zebra", "Zebras are striped African equines.", {"topic": "animals"})], name="more"), progress=False)
    assert [h.doc_id for h in r.search("striped equines", k=1)] == ["zebra"]  # the same Retriever resyncs
    assert json.loads((folder / "rag_lfm_bm25.json").read_text())["generation"] == kb.generation
    # A query sharing no term with any chunk returns nothing rather than zero-score noise.
    assert r.search("xylophone", k=3) == []


def test_bm25_settings_and_title_field(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-32")
    kb.ingest(InMemory([("a", "A painter from France.", {"title": "Claude Monet"}),
                    ("b", "A composer from Austria.", {"title": "Mozart"})]), progress=False)
    plain = Retriever(kb, method="bm25")
    titled = Retriever(kb, method="bm25", bm25_settings={"fields": ["title"]})
    assert plain.search("Monet", k=1) == []
    assert [h.doc_id for h in titled.search("Monet", k=1)] == ["a"]
    assert [h.doc_id for h in titled.search("painters", k=1)] == ["a"]  # stemmed: painters ~ painter
    with pytest.raises(ConfigError, match="unknown BM25 setting"):
        Retriever(kb, method="bm25", bm25_settings={"k3": 1})
    kb.close()


def test_filters_apply_to_both_sides_of_hybrid(kb):
    for method in ("bm25", "hybrid", "dense"):
        hits = Retriever(kb, method=method).search("domesticated capital city", k=5, filter={"topic": "places"})
        assert hits and {h.doc_id for h in hits} <= {"paris", "rome"}, method


def test_retriever_rejects_bad_options(kb):
    with pytest.raises(ConfigError, match="'dense', 'bm25', 'hybrid'"):
        Retriever(kb, method="sparse")
    with pytest.raises(ConfigError, match="pool 2 must be >= k"):
        Retriever(kb, metric="cosine", pool=2).search("cats", k=3)
    with pytest.raises(ConfigError, match="list of strings"):
        Retriever(kb).search_ids("cats", k=3)


def test_mmr_retriever_diversifies(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-128")
    kb.ingest(InMemory([("a1", "apple pie recipe with apples", {}), ("a2", "apple pie recipe with apples!", {}),
                    ("b", "apple cider vinegar", {}), ("c", "pear tart", {})]), progress=False)
    plain = [h.doc_id for h in Retriever(kb).search("apple pie recipe", k=2)]
    diverse = [h.doc_id for h in Retriever(kb, mmr_lambda=0.3).search("apple pie recipe", k=2)]
    assert sorted(plain) == ["a1", "a2"]
    assert diverse[0] in {"a1", "a2"} and diverse[1] not in {"a1", "a2"}
    kb.close()


# ---------------------------------------------------------------- hybrid beats dense where keywords matter


def test_hybrid_beats_dense_on_exact_keyword_corpus(tmp_path):
    """Part codes are exact keywords: a real dense embedder blurs them, BM25 does not."""
    rng = np.random.default_rng(0)
    events = ["was delayed by a snow storm in the mountains", "arrived early thanks to a new courier route",
              "was returned because the customer changed their mind", "contains fragile glassware packed in foam",
              "was split into two shipments from different warehouses", "needs a signature on delivery"]
    docs, queries = [], []
    for i in range(36):
        code = f"{''.join(rng.choice(list('BCDFGHJKLMNPQRSTVWXZ'), 2))}{rng.integers(1000, 9999)}"
        docs.append((f"o{i}", f"Order {code} {events[i % 6]}.", {}))
        queries.append((f"what happened to order {code}", f"o{i}"))
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="all-MiniLM-L6-v2")
    kb.ingest(InMemory(docs), progress=False)

    def mrr(retriever):
        got = retriever.search_batch([q for q, _ in queries], k=10)
        ranks = [next((r for r, h in enumerate(row, 1) if h.doc_id == want), None) for row, (_, want) in zip(got, queries)]
        return float(np.mean([1 / r if r else 0.0 for r in ranks])), float(np.mean([r == 1 for r in ranks]))

    dense_mrr, dense_r1 = mrr(Retriever(kb, method="dense"))
    hybrid_mrr, hybrid_r1 = mrr(Retriever(kb, method="hybrid"))
    weighted_mrr, _ = mrr(Retriever(kb, method="hybrid", fusion="weighted", weights=[1.0, 1.0]))
    assert hybrid_mrr > dense_mrr + 0.1, (dense_mrr, hybrid_mrr)
    assert hybrid_r1 > dense_r1 and weighted_mrr > dense_mrr + 0.1
    kb.close()


# ---------------------------------------------------------------- cross-encoder rerank (tiny random model)


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory, minilm_path):
    """A randomly initialised 2-layer BERT cross-encoder (no pretrained one ships offline)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-ce")
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_cross_encoder_scores_and_rerank(kb, tiny_cross_encoder):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rr = CrossEncoderReranker(str(tiny_cross_encoder), batch_size=2, device="cpu")
    texts = [t for t, _ in TEXTS.values()]
    got = rr.score("capital of France", texts)
    tok = AutoTokenizer.from_pretrained(str(tiny_cross_encoder))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_cross_encoder)).eval()
    with torch.inference_mode():
        want = model(**tok(["capital of France"] * 5, texts, padding=True, truncation=True, max_length=256,
                           return_tensors="pt")).logits[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

    first = Retriever(kb, method="hybrid").search("capital city", k=4)
    reranked = Retriever(kb, method="hybrid", reranker=rr, rerank_top=4).search("capital city", k=3)
    assert len(reranked) == 3 and {h.doc_id for h in reranked} <= {h.doc_id for h in first}
    scores = [h.score for h in reranked]
    assert scores == sorted(scores, reverse=True)
    expect = rr.score("capital city", [h.text for h in first])
    assert scores == pytest.approx(sorted(expect.tolist(), reverse=True)[:3], rel=1e-5)


def test_cross_encoder_bad_path_is_clear():
    from rag_lfm.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="not a local path"):
        CrossEncoderReranker("/no/such/cross-encoder").score("q", ["t"])


def test_vector_cache_modes_agree_and_follow_the_kb(kb):
    queries = ["domesticated mammals", "capital city"]
    ref = Retriever(kb, metric="l2", vector_cache="none").search_batch(queries, k=3)
    for mode in ("float32", "float16", "auto"):
        r = Retriever(kb, metric="l2", vector_cache=mode)
        got = r.search_batch(queries, k=3)
        assert [[h.doc_id for h in row] for row in got] == [[h.doc_id for h in row] for row in ref], mode
        np.testing.assert_allclose([[h.score for h in row] for row in got], [[h.score for h in row] for row in ref],
                                   atol=2e-3)
    assert r.cache.vectors.shape == (5, 128) and r.cache.vectors.dtype == np.float32
    kb.ingest(InMemory([("lion", "Lions are large domesticated mammals? No: wild cats.", {"topic": "animals"})], name="x"),
              progress=False)
    assert "lion" in [h.doc_id for h in r.search("lions wild cats", k=2)]
    assert r.cache.vectors.shape == (6, 128)
    with pytest.raises(ConfigError, match="vector_cache"):
        Retriever(kb, vector_cache="int8")


def test_multi_field_bm25_opening_sentence(kb):
    r = Retriever(kb, method="bm25", bm25_settings=[{"opening_sentences": 1}])
    assert [h.doc_id for h in r.search("largest France", k=2)] == ["paris"]
    lead = r.bm25_indexes[0]
    assert len(lead) == 5 and lead.settings["opening_sentences"] == 1
    two = "Rome is the capital. It has the Colosseum."
    kb.ingest(InMemory([("rome2", two, {"topic": "places"})], name="two"), progress=False)
    assert r.search("Colosseum", k=2) == []  # only the first sentence is in this field
    both = Retriever(kb, method="hybrid", fusion="weighted", normalize="zscore", weights=[1.0, 0.5, 0.5],
                     bm25_settings=[{}, {"opening_sentences": 1}])
    assert [h.doc_id for h in both.search("Colosseum", k=1)] == ["rome2"]
    assert len(both.bm25_indexes) == 2 and (kb.path / "bm25").is_dir()
    with pytest.raises(ConfigError, match="must have 3 numbers"):
        Retriever(kb, method="hybrid", weights=[1.0, 0.5], bm25_settings=[{}, {"opening_sentences": 1}])
