"""What a user gets without options (issue 9): the index's recorded retriever, the BM25 sidecar built at
ingest, commits by time, lazy model loading, whole-word copied answers, alternative answer starts."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.knowledge_base import EMBED_BATCH_DOCS
from rag_lfm.errors import ConfigError
from rag_lfm.readers.transformers_reader import _CopyConstraint, word_edges
from rag_lfm.retrieval import Retriever
from rag_lfm.retrieval.retriever import DEFAULT_CONFIG

WORDS = ["apple", "river", "mountain", "violin", "planet", "engine", "garden", "castle", "ocean", "forest"]


def docs(n: int = 60) -> list[Document]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        words = rng.choice(WORDS, size=12).tolist()
        out.append(Document(f"d{i}", f"Document {i} is about {words[0]}. " + " ".join(words), {"n": i}))
    return out


def test_search_runs_the_recorded_hybrid_retriever_and_the_writer_builds_its_bm25_sidecar(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64))
    assert kb.manifest["retriever"] == DEFAULT_CONFIG
    kb.ingest(InMemory(docs()), progress=False)
    # The sidecar was built at ingest, by the writer, and bound to the commit record.
    side = sorted(kb.side_files)
    assert any(f.startswith("bm25/") for f in side) and any(f.startswith("bm25-") for f in side)
    reader = KnowledgeBase.open(kb.path)
    before = {p: p.stat().st_mtime_ns for p in kb.path.rglob("*") if p.is_file() and p.name != ".lock"}
    t = time.perf_counter()
    hits = reader.search("castle ocean", k=5)
    assert time.perf_counter() - t < 5 and len(hits) == 5
    expected = Retriever.from_config(reader, DEFAULT_CONFIG).search("castle ocean", k=5)
    assert [h.chunk_id for h in hits] == [h.chunk_id for h in expected]
    dense = reader.search("castle ocean", k=5, method="dense")
    assert len(dense) == 5 and all(h.score <= 1.0 + 1e-6 for h in dense)  # cosine scores, not fused ones
    after = {p: p.stat().st_mtime_ns for p in kb.path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before  # a reader never writes, the sidecar was already there
    with pytest.raises(ConfigError, match="method 'bm25' is not valid here"):
        reader.search("x", method="bm25")
    # An index made dense-only stays dense-only, and builds no sidecar.
    d = KnowledgeBase.create(tmp_path / "dense", embedder=HashEmbedder(64), retriever="dense")
    d.ingest(InMemory(docs(10)), progress=False)
    assert d.manifest["retriever"] == {"method": "dense"} and not d.side_files
    with pytest.raises(ConfigError, match="retriever configuration keys \\['bogus'\\] are unknown"):
        KnowledgeBase.create(tmp_path / "bad", embedder=HashEmbedder(64), retriever={"bogus": 1})


def test_the_sidecar_follows_deletes_and_a_tampered_sidecar_is_rebuilt_not_trusted(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64))
    kb.ingest(InMemory(docs(), name="s"), progress=False)
    kb.delete(["d3"], source="s")
    reader = KnowledgeBase.open(kb.path)
    assert all(h.doc_id != "d3" for h in reader.search("Document 3 is about", k=60))
    ids = kb.path / "bm25" / "chunk_ids.npy"
    ids.write_bytes(ids.read_bytes()[:-8] + b"\x00" * 8)  # same size, other bytes
    fresh = KnowledgeBase.open(kb.path)
    assert len(fresh.search("castle", k=5)) == 5  # rebuilt in memory, results still right


def test_group_by_doc_gives_k_documents(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64), chunk_size=8, chunk_overlap=0)
    kb.ingest(InMemory(docs(20)), progress=False)
    hits = Retriever(kb, method="hybrid", group_by="doc").search("castle ocean garden", k=5)
    assert len(hits) == 5 and len({h.doc_id for h in hits}) == 5
    plain = Retriever(kb, method="hybrid").search("castle ocean garden", k=20)
    assert len({h.doc_id for h in plain}) < 20  # passages of one document repeat without grouping
    with pytest.raises(ConfigError, match="group_by 'page'"):
        Retriever(kb, group_by="page")


def test_ingest_commits_by_time_and_progress_counts_embedded_documents(tmp_path, monkeypatch):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    clock = iter(range(0, 10_000, 20))  # every flush looks 20 s after the previous one
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    n = 3 * EMBED_BATCH_DOCS  # three embedding batches, each flushed 20 s after the last
    report = kb.ingest(InMemory(docs(n)), commit_every=10 * n, commit_seconds=30, progress=False)
    assert report.added == n and report.commits >= 2  # by time, though n < commit_every
    assert kb.info()["counts"]["documents"] == n
    monkeypatch.undo()
    report = KnowledgeBase.create(tmp_path / "idx2", embedder=HashEmbedder(32)).ingest(InMemory(docs(200)), progress=False)
    assert report.commits == 1  # a small corpus on a fast machine: one commit
    with pytest.raises(ConfigError, match="commit_seconds=0"):
        kb.ingest(InMemory(docs(1)), commit_seconds=0)


def test_info_and_filters_do_not_load_the_embedding_model(tmp_path, minilm_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=str(minilm_path), embedder_backend="torch")
    kb.ingest(InMemory(docs(5)), progress=False)
    again = KnowledgeBase.open(kb.path)
    info = again.info()
    assert info["counts"]["documents"] == 5 and again.docstore.filter_ids({"n": {"$lt": 3}}).size == 3
    assert again.embedder._st is None  # nothing needed the model
    assert len(again.search("castle", k=2)) == 2  # a query loads it


def test_copy_constraint_spans_are_whole_words():
    # tokens: " John" " L" "ennon" " wrote" " " "1" "9" "6" "9"
    pieces = [" John", " L", "ennon", " wrote", " ", "1", "9", "6", "9"]
    edges = word_edges(pieces)
    toks = list(range(len(pieces)))
    c = _CopyConstraint(toks, edges)
    assert 2 not in c.allowed() and 6 not in c.allowed()  # never start inside "Lennon" or "1969"
    c.advance(0)
    c.advance(1)
    assert not c.can_end()  # "John L" ends inside a word
    c.advance(2)
    assert c.can_end()  # "John Lennon"
    y = _CopyConstraint(toks, edges)
    for t in (4, 5):
        y.advance(t)
    assert not y.can_end()  # " 1" out of " 1969"
    for t in (6, 7, 8):
        y.advance(t)
    assert y.can_end()
    free = _CopyConstraint(toks)  # without word edges: any span, as before
    free.advance(4)
    free.advance(5)
    assert free.can_end()


@pytest.mark.slow
def test_default_reader_answers_with_another_entity_than_the_question_names():
    """The frozen SmolLM2, defaults only: alternative starts let "Paul McCartney" win over the echo "John Lennon"."""
    from rag_lfm.readers import TransformersReader
    from rag_lfm.types import Hit

    text = ("John Lennon was an English singer, songwriter and musician. He gained worldwide fame as the founder, "
            "co-songwriter, co-lead vocalist and rhythm guitarist of the Beatles. His songwriting partnership with "
            "Paul McCartney remains the most successful in history.")
    hit = Hit(1, "John Lennon", 1.0, text, {"title": "John Lennon"}, "wiki", 0, len(text))
    reader = TransformersReader()
    answer = reader.generate("Who was John Lennon's songwriting partner?", [hit])
    assert "McCartney" in answer.text, answer.candidates


def test_demo_held_out_questions_follow_their_rule():
    """The demo's questions after its first three are the first question of each form of the held-out set, as written."""
    import json
    from pathlib import Path

    from rag_lfm.demo import HELD_OUT_IDS, QUESTIONS

    first: dict[str, dict] = {}
    for line in (Path(__file__).resolve().parents[1] / "benchmarks/data/general_test.jsonl").read_text().splitlines():
        row = json.loads(line)
        first.setdefault(row["form"], row)
    assert tuple(r["id"] for r in first.values()) == HELD_OUT_IDS
    assert QUESTIONS[3:] == [(r["question"], tuple(r["answers"])) for r in first.values()]
