"""The tuner: measurements, the choice for a budget, the rebuild of a knowledge base, the CLI, memory reports.

A tuned index must stay a full citizen of the knowledge base: filters, sync, delete, reopen.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.errors import ConfigError
from rag_lfm.index.build import build_backend, sample_stream
from rag_lfm.tradeoffs import ArraySource, SyntheticClustered, Trial, choose, exact_topk, parse_bytes, tune

TOPICS = ["History", "Arts", "Science"]


def corpus(n, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    return [Document(f"doc{i}", " ".join(rng.choice(words, 30)) + f" unique{i}", {"topic": TOPICS[i % 3], "n": i}) for i in range(n)]


def test_parse_bytes():
    assert parse_bytes("200MB") == 200_000_000 and parse_bytes("1.5GiB") == int(1.5 * 2**30)
    assert parse_bytes("800k") == 800_000 and parse_bytes(1234) == 1234 and parse_bytes("64 MiB") == 64 << 20
    for bad in ("lots", "-5MB", 0, True):
        with pytest.raises(ConfigError, match="memory size"):
            parse_bytes(bad)


def test_choose_meets_objective_and_closest():
    t = [Trial("a", "A", {}, n=1000, resident_bytes=100_000, recall=0.99, p50_ms=5.0),
         Trial("b", "B", {}, n=1000, resident_bytes=40_000, recall=0.96, p50_ms=1.0),
         Trial("c", "C", {}, n=1000, resident_bytes=20_000, recall=0.95, p50_ms=2.0),
         Trial("d", "D", {}, status="skipped: too big", n=1000)]
    assert choose(t, 150_000, 0.95, None, "latency")[0].family == "b"
    assert choose(t, 150_000, 0.95, None, "memory")[0].family == "c"
    assert choose(t, 150_000, 0.95, None, "recall")[0].family == "a"
    assert choose(t, 150_000, 0.95, 1.5, "memory")[0].family == "b"  # c is too slow
    assert [x.meets for x in t] == [False, True, False, False]  # a is too slow too
    choice, closest = choose(t, 30_000, 0.97, None, "latency")  # nothing: c is small but inaccurate, a/b too big
    assert choice is None and closest.family == "c"  # 2% short of recall beats b (33% over memory) and a (233%)
    with pytest.raises(ConfigError, match="objective 'speed' is not one of"):
        choose(t, 1, 0.9, None, "speed")


def test_exact_topk_and_stream_sampling_match_brute_force():
    src = SyntheticClustered(3000, 16, clusters=20, seed=1)
    _, x = next(iter(src.iter_batches(3000)))
    q = src.queries(5)
    s, i = exact_topk(src, q, 7, batch_size=700)  # five batches, merged
    np.testing.assert_array_equal(i, np.argsort(-(q @ x.T), axis=1)[:, :7])
    excl = i[:, 0]
    _, i2 = exact_topk(src, q, 7, exclude=excl, batch_size=700)
    assert not np.isin(i2, excl).any()
    sample = sample_stream(src.iter_batches(500), 400, n=3000, seed=0, exclude=np.arange(100))
    assert 350 < len(sample) <= 400 and not any((sample == x[j]).all(1).any() for j in range(100))
    reservoir = sample_stream(src.iter_batches(500), 400, seed=0)
    assert reservoir.shape == (400, 16) and all((x == r).all(1).any() for r in reservoir[:20])
    # a streamed build equals one from the array when both train on the same sample
    a = build_backend("IVF16,Flat", 16, lambda: src.iter_batches(500), n=3000, params={"nprobe": 4})
    b = build_backend("IVF16,Flat", 16, lambda: ArraySource(x).iter_batches(3000), n=3000, params={"nprobe": 4})
    np.testing.assert_array_equal(a.search(q, 5)[1], b.search(q, 5)[1])


def test_tune_synthetic_choice_table_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    src = SyntheticClustered(12_000, 32, clusters=60, seed=2)
    res = tune(src, max_memory="250KB", min_recall=0.9, families=["flat", "sq8", "ivf-flat", "ivf-pq-rescore", "binary"],
               n_queries=60, progress=False)
    assert res.queries == "held-out" and res.n == 12_000 - 60 and res.n_queries == 60
    by = {t.family: t for t in res.trials}
    assert by["flat"].status.startswith("skipped: estimated")  # 12k x (128 + 8) B > 250 KB: never built
    assert res.choice is not None and res.choice.meets and res.choice.status == "ok"
    assert res.choice.resident_bytes <= 250_000 and res.choice.recall >= 0.9
    ok = [t for t in res.trials if t.status == "ok"]
    assert {t.family for t in ok} >= {"ivf-pq-rescore", "binary"}
    assert all(0 <= t.recall <= 1 and t.p50_ms > 0 and t.build_s >= 0 for t in ok)
    # recall is measured: more probes and deeper rescoring never lose recall on these queries
    ivf = [t for t in ok if t.family == "ivf-pq-rescore" and t.params["k_factor"] == 10]
    assert ivf[-1].recall >= ivf[0].recall and ivf[-1].recall >= 0.95
    assert max(t.recall for t in ok if t.family == "binary") >= 0.9
    table = res.table()
    assert "family[setting]" in table and "ivf-pq-rescore[nprobe=1,k_factor=4]" in table and "skipped" in table
    assert json.loads(json.dumps(res.to_dict()))["choice"]["factory"] == res.choice.factory
    png = res.plot(str(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.endswith("pareto.png")

    none = tune(src, max_memory="150KB", min_recall=0.999, families=["ivf-pq-rescore"], n_queries=30, progress=False,
                queries=src.queries(30))
    assert none.choice is None and none.closest is not None and none.queries == "given"
    assert "nothing meets the budget" in none.summary() and none.closest.factory in none.summary()
    tiny = tune(src, max_memory="1KB", min_recall=0.9, families=["sq8", "binary"], n_queries=30, progress=False)
    assert tiny.choice is None and tiny.closest.family == "binary" and "not built: estimated size only" in tiny.summary()


def _kb_with(tmp_path, name, n=1200):
    kb = KnowledgeBase.create(tmp_path / name, embedder=HashEmbedder(64))
    kb.ingest(InMemory(corpus(n)), progress=False, commit_every=600)
    return kb


@pytest.mark.parametrize("family", ["ivf-pq-rescore", "hnsw-sq8", "binary"])
def test_tuned_index_keeps_filters_sync_and_delete(family, tmp_path, monkeypatch):
    import rag_lfm.knowledge_base as kbmod

    docs = corpus(1200)
    kb = _kb_with(tmp_path, "kb")
    ref = _kb_with(tmp_path, "ref")  # exact (flat) reference
    gen = kb.generation
    res = kb.tune("10MB", 0.5, families=[family], n_queries=60, objective="recall", progress=False)
    assert res.choice is not None and res.applied and kb.generation == gen + 1
    assert kb.manifest["index"]["spec"] == kb.manifest["index"]["factory"] == kb.index.factory == res.choice.factory
    assert kb.manifest["index"]["params"] == res.choice.params and kb.index.params == res.choice.params
    assert kb.index.ntotal == len(kb) == 1200
    mem = kb.info()["memory"]
    assert set(mem) == {"index", "stored_vectors", "docstore", "bm25"} and mem["index"]["resident"] > 0

    def own_top1(k, ds):
        hits = k.search_batch([d.text for d in ds], k=1)
        return np.mean([h and h[0].doc_id == d.id for h, d in zip(hits, ds)])

    assert own_top1(kb, docs[::40]) >= 0.9
    # filters: a small match set is scored exactly (same answer as the exact reference) ...
    flt = {"topic": "Arts", "n": {"$lt": 300}}
    q = docs[7].text + " " + docs[400].text
    assert [h.chunk_id for h in kb.search(q, k=8, filter=flt)] == [h.chunk_id for h in ref.search(q, k=8, filter=flt)]
    # ... and a large one goes through the index's own selector / over-fetch: k hits, all matching
    monkeypatch.setattr(kbmod, "EXACT_FILTER_LIMIT", 50)
    hits = kb.search(q, k=10, filter={"topic": "Science"})
    assert len(hits) == 10 and all(h.metadata["topic"] == "Science" for h in hits)
    monkeypatch.undo()

    # sync: 10% of the documents disappear from the source, one changes
    keep = docs[120:]
    keep[0] = Document(keep[0].id, keep[0].text + " edited tail words", keep[0].metadata)
    report = kb.sync(InMemory(keep), progress=False)
    assert (report.deleted, report.updated) == (120, 1)
    assert kb.index.ntotal == len(kb) == 1080 and kb.index.factory == res.choice.factory  # the tuned factory is kept
    gone = {d.id for d in docs[:120]}
    found = kb.search_batch([d.text for d in docs[:120:6]], k=10)
    assert not gone & {h.doc_id for hs in found for h in hs}
    if family.startswith("hnsw"):
        assert kb.index.masked_share > 0  # deletions masked until compaction
    # delete, then add back: found again
    assert kb.delete(["doc500", "doc501"]) == 2
    assert "doc500" not in {h.doc_id for h in kb.search(docs[500].text, k=10)}
    kb.ingest(InMemory(docs[:120] + [docs[500]]), progress=False)
    assert kb.index.ntotal == len(kb) == 1080 - 2 + 121
    assert own_top1(kb, [docs[500]] + docs[:120:20]) >= 0.8

    again = KnowledgeBase.open(kb.path)
    assert again.index.factory == res.choice.factory and again.index.params == res.choice.params
    assert [h.chunk_id for h in again.search(q, k=5)] == [h.chunk_id for h in kb.search(q, k=5)]
    mapped = KnowledgeBase.open(kb.path, mmap=True)
    assert [h.chunk_id for h in mapped.search(q, k=5)] == [h.chunk_id for h in kb.search(q, k=5)]
    with pytest.raises(ConfigError, match="mmap=True"):
        mapped.delete(["doc600"])
    assert [h.doc_id for h in KnowledgeBase.open(kb.path).search(docs[600].text, k=1)] == ["doc600"]  # nothing was deleted


def test_tune_with_query_log_and_nothing_fits_leaves_index(tmp_path):
    kb = _kb_with(tmp_path, "kb", n=600)
    before = (kb.generation, kb.index.factory)
    res = kb.tune("1KB", 0.99, queries=[d.text[:60] for d in corpus(30, seed=9)], families=["sq8", "ivf-flat"], progress=False,
                  measure_all=True)
    assert res.choice is None and not res.applied and res.queries == "given" and res.n_queries == 30
    assert (kb.generation, kb.index.factory) == before
    with pytest.raises(ConfigError, match="not one str"):
        kb.tune("1MB", 0.9, queries="one query")


def test_family_names_as_index_spec_grow_with_the_collection(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "kb", embedder=HashEmbedder(64), index="ivf-flat")
    kb.ingest(InMemory(corpus(200)), progress=False)
    assert kb.index.factory == "IVF4,Flat"  # sized for 200 vectors
    kb.ingest(InMemory(corpus(2000)), progress=False)
    assert kb.index.factory == "IVF32,Flat" and kb.manifest["index"]["spec"] == "ivf-flat"
    assert kb.search(corpus(2000)[1500].text, k=1)[0].doc_id == "doc1500"
    pq = KnowledgeBase.create(tmp_path / "pq", embedder=HashEmbedder(64), index="ivf-pq-rescore")
    pq.ingest(InMemory(corpus(100)), progress=False)  # 100 vectors cannot train 256-centroid codebooks: exact until 9,984
    assert pq.index.factory == "IDMap,Flat" and pq.search(corpus(100)[7].text, k=1)[0].doc_id == "doc7"


def test_cli_index_tune_families_and_info(tmp_path):
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    kb = _kb_with(tmp_path, "kb", n=600)
    kb.close()
    runner = CliRunner()
    out = runner.invoke(app, ["index", "families", "--json"])
    assert out.exit_code == 0 and {r["name"] for r in json.loads(out.stdout)} >= {"flat", "ivf-pq-rescore", "binary", "hnsw"}
    plot = tmp_path / "p.png"
    args = ["index", "tune", str(tmp_path / "kb"), "--max-memory", "100KB", "--min-recall", "0.8", "--families", "sq8,sq4-rescore",
            "--n-queries", "40", "--plot", str(plot)]
    out = runner.invoke(app, args + ["--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout.strip().splitlines()[-1])
    assert data["choice"] is not None and not data["applied"] and plot.exists()
    assert KnowledgeBase.open(tmp_path / "kb").index.factory == "IDMap2,Flat"  # dry run: unchanged
    out = runner.invoke(app, args)
    assert out.exit_code == 0 and "chose" in out.stdout and "rebuilt" in out.stdout
    assert KnowledgeBase.open(tmp_path / "kb").index.factory == data["choice"]["factory"]
    out = runner.invoke(app, ["index", "tune", str(tmp_path / "kb"), "--max-memory", "1KB", "--families", "sq8"])
    assert out.exit_code == 1 and "nothing meets the budget" in out.stdout
    out = runner.invoke(app, ["index", "tune", str(tmp_path / "kb"), "--max-memory", "1MB", "--families", "sq8", "--factory", "IDMap,SQ4",
                              "--dry-run", "--json", "--n-queries", "20"])
    assert out.exit_code == 0 and {t["factory"] for t in json.loads(out.stdout.strip().splitlines()[-1])["trials"]} == {"IDMap,SQ8", "IDMap,SQ4"}
    out = runner.invoke(app, ["index", "tune", str(tmp_path / "kb"), "--max-memory", "lots"])
    assert out.exit_code == 2 and "memory size 'lots'" in out.output
    out = runner.invoke(app, ["info", str(tmp_path / "kb"), "--json"])
    assert json.loads(out.stdout)["memory"]["index"]["disk"] > 0
    out = runner.invoke(app, ["info", str(tmp_path / "kb")])
    assert "resident" in out.stdout
