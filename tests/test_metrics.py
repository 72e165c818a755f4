"""Metric registry, built-ins, checks, metadata metrics and learned metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_lfm.connectors import InMemory
from rag_lfm import KnowledgeBase
from rag_lfm.errors import ConfigError
from rag_lfm.metrics import (
    BilinearMetric,
    MahalanobisMetric,
    MetricError,
    fit_bilinear,
    fit_mahalanobis,
    get_metric,
    load_learned_metric,
    metric_names,
    recency_decay,
    register_metric,
    score,
    source_weights,
    unregister_metric,
)
from rag_lfm.retrieval import Retriever
from rag_lfm.types import Document

FRUIT = [
    "red apple pie with cinnamon",
    "green apple and pear salad",
    "apple orchard harvest in autumn",
    "ripe banana bread recipe",
    "blue sky over the ocean",
    "stormy sea and dark clouds",
]




@pytest.fixture
def kb(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64")
    kb.ingest(InMemory([(f"d{i}", t, {"n": i}) for i, t in enumerate(FRUIT)]), progress=False)
    yield kb
    kb.close()


@pytest.fixture
def cleanup():
    names: list[str] = []
    yield names
    for n in names:
        if n in metric_names():
            unregister_metric(n)


def test_builtins_match_formulas():
    rng = np.random.default_rng(0)
    q, c = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(3, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(score("dot", q, c), np.einsum("bd,bnd->bn", q, c), rtol=1e-5)
    cos = np.einsum("bd,bnd->bn", q, c) / (np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(c, axis=2))
    np.testing.assert_allclose(score("cosine", q, c), cos, rtol=1e-5)
    np.testing.assert_allclose(score("l2", q, c), -np.linalg.norm(c - q[:, None], axis=2), rtol=1e-5)
    assert metric_names()[:3] == ["cosine", "dot", "l2"]


def test_custom_metric_in_three_lines_changes_ranking(kb, cleanup):
    plain = Retriever(kb).search("apple", k=len(FRUIT))
    dense = [h.doc_id for h in plain]
    sim = {h.doc_id: h.score for h in plain}
    # The three lines a user writes: a metric that ranks the *least* similar first.
    def far_first(q, c):
        return -np.einsum("bd,bnd->bn", q, c)
    register_metric("far_first", far_first); cleanup.append("far_first")
    hits = Retriever(kb, metric="far_first", pool=len(FRUIT)).search("apple", k=len(FRUIT))
    assert dense[0] in {"d0", "d1", "d2"}  # the apple documents lead the plain ranking...
    reordered = [sim[h.doc_id] for h in hits]  # ...and the custom metric reverses it (ties aside)
    assert reordered == sorted(reordered) and reordered[0] < reordered[-1]
    assert sim[hits[-1].doc_id] == pytest.approx(max(sim.values()))
    np.testing.assert_allclose([h.score for h in hits], [-sim[h.doc_id] for h in hits], atol=1e-5)


def test_custom_metric_equals_brute_force_when_pool_covers_collection(kb, cleanup):
    import torch

    def neg_l1(q, c):  # a torch metric, not expressible in FAISS
        return -(c - q[:, None, :]).abs().sum(-1)

    register_metric("neg_l1", neg_l1, backend="torch"); cleanup.append("neg_l1")
    queries = ["apple pie", "dark ocean clouds", "banana"]
    qv = kb.embedder.encode(queries, kind="query")
    all_ids = np.array([h.chunk_id for batch in kb.iter_chunks() for h in batch])
    allv = kb.vectors(all_ids)
    brute = -np.abs(allv[None, :, :] - qv[:, None, :]).sum(-1)
    r = Retriever(kb, metric="neg_l1", pool=len(all_ids))
    got = r.search_batch(queries, k=4)
    # Same top scores as scoring the whole collection; each hit carries its own brute-force score
    # (ids are compared through scores because equal scores may come in either order).
    np.testing.assert_allclose([[h.score for h in row] for row in got], -np.sort(-brute, axis=1)[:, :4], rtol=1e-5)
    col = {int(c): j for j, c in enumerate(all_ids)}
    for qi, row in enumerate(got):
        assert [h.score for h in row] == pytest.approx([brute[qi, col[h.chunk_id]] for h in row], rel=1e-5)
    assert len({h.chunk_id for h in got[0]}) == 4
    assert torch.is_tensor(neg_l1(torch.zeros(1, 2), torch.ones(1, 3, 2)))


def test_unknown_metric_lists_registered():
    with pytest.raises(ConfigError, match=r"unknown metric 'nope'.*cosine, dot, l2"):
        get_metric("nope")


def test_duplicate_and_builtin_names_rejected(cleanup):
    register_metric("twice", lambda q, c: np.zeros(c.shape[:2])); cleanup.append("twice")
    with pytest.raises(ConfigError, match="already registered"):
        register_metric("twice", lambda q, c: np.zeros(c.shape[:2]))
    with pytest.raises(ConfigError, match="built-in"):
        register_metric("cosine", lambda q, c: np.zeros(c.shape[:2]), replace=True)


def test_wrong_shape_and_nan_are_clear_errors(kb, cleanup):
    register_metric("flat", lambda q, c: np.zeros(c.shape[1])); cleanup.append("flat")
    register_metric("nanny", lambda q, c: np.full(c.shape[:2], np.nan)); cleanup.append("nanny")
    q, c = np.ones((2, 4), np.float32), np.ones((2, 3, 4), np.float32)
    with pytest.raises(MetricError, match=r"metric 'flat' returned scores of shape \(3,\); expected .* \(2, 3\)"):
        score("flat", q, c)
    with pytest.raises(MetricError, match=r"metric 'nanny' returned 6 NaN"):
        score("nanny", q, c)
    with pytest.raises(MetricError, match="nanny"):  # the same check guards the retriever path
        Retriever(kb, metric="nanny").search("apple", k=2)


def test_metadata_metrics_rerank_by_recency_and_source(tmp_path, cleanup):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="hash-64")
    same = "quarterly report on apple sales"
    kb.ingest(InMemory([("old", same, {"published": "2020-01-01"}), ("new", same, {"published": "2026-11-01"})],
                      name="news"), progress=False)
    kb.ingest(InMemory([("blog", same + " blog", {})], name="blog"), progress=False)
    now = 1_795_000_000.0  # 2026-11-17
    register_metric("fresh", recency_decay("published", half_life_days=30, weight=0.5, now=now)); cleanup.append("fresh")
    register_metric("trusted", source_weights({"blog": 0.1})); cleanup.append("trusted")
    fresh = [h.doc_id for h in Retriever(kb, metric="fresh").search("apple sales report", k=3)]
    assert fresh.index("new") < fresh.index("old")
    trusted = [h.doc_id for h in Retriever(kb, metric="trusted").search("apple sales report blog", k=3)]
    plain = [h.doc_id for h in Retriever(kb, metric="cosine").search("apple sales report blog", k=3)]
    assert plain[0] == "blog" and trusted[-1] == "blog"
    with pytest.raises(MetricError, match="uses metadata"):
        score("fresh", np.ones((1, 64), np.float32), np.ones((1, 2, 64), np.float32))
    kb.close()


def _synthetic_pairs(kind, n=600, d=16, seed=0):
    """Pairs the plain metric ranks badly but a learned one can fix.

    bilinear: queries live in a rotated, rescaled space. mahalanobis: half of the dimensions
    carry heavy noise that a learned L can down-weight.
    """
    rng = np.random.default_rng(seed)
    docs = rng.normal(size=(n, d)).astype(np.float32)
    if kind == "bilinear":
        mix = np.linalg.qr(rng.normal(size=(d, d)))[0] * rng.uniform(0.2, 2.0, size=d)
        queries = docs @ mix + 0.05 * rng.normal(size=(n, d))
    else:
        scale = np.where(np.arange(d) < d // 2, 0.1, 3.0)
        queries = docs + scale * rng.normal(size=(n, d))
    return queries.astype(np.float32), docs


def _recall_at_1(metric, queries, docs):
    s = metric(queries, np.broadcast_to(docs, (len(queries), *docs.shape)))
    return float((s.argmax(1) == np.arange(len(queries))).mean())


@pytest.mark.parametrize(("fit", "baseline"), [(fit_bilinear, "dot"), (fit_mahalanobis, "l2")])
def test_learned_metric_fits_pairs_and_round_trips(tmp_path, fit, baseline):
    q, d = _synthetic_pairs("bilinear" if fit is fit_bilinear else "mahalanobis")
    qtr, dtr, qte, dte = q[:400], d[:400], q[400:], d[400:]
    m = fit(qtr, dtr, epochs=40, lr=1e-2, reg=0.0, temperature=0.1)
    before = _recall_at_1(lambda a, b: score(baseline, a, b), qte, dte)
    after = _recall_at_1(m, qte, dte)
    assert after > before + 0.3, (before, after)  # held-out queries, not the fitted ones
    m.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "metric.json").read_text())["kind"] == m.kind
    loaded = load_learned_metric(tmp_path / "m")
    assert type(loaded) is type(m)
    np.testing.assert_array_equal(loaded.matrix, m.matrix)


def test_bilinear_query_transform_is_exact():
    rng = np.random.default_rng(1)
    m = BilinearMetric(rng.normal(size=(8, 8)))
    q, c = rng.normal(size=(2, 8)).astype(np.float32), rng.normal(size=(2, 5, 8)).astype(np.float32)
    np.testing.assert_allclose(m(q, c), np.einsum("bd,bnd->bn", m.query_transform(q), c), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="square"):
        MahalanobisMetric(np.ones((3, 4)))
    with pytest.raises(ConfigError, match="metric.json"):
        load_learned_metric("/nonexistent")


def test_learned_metric_in_retriever_finds_exact_top(kb, cleanup):
    rng = np.random.default_rng(2)
    m = BilinearMetric(np.eye(64) + 0.5 * rng.normal(size=(64, 64)))
    m.register("bilin"); cleanup.append("bilin")
    # A small pool is enough: the first stage searches with the transformed query.
    got = [h.doc_id for h in Retriever(kb, metric="bilin", pool=3).search("apple", k=3)]
    full = [h.doc_id for h in Retriever(kb, metric="bilin", pool=len(FRUIT)).search("apple", k=3)]
    assert got == full
