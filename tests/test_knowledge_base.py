"""KnowledgeBase: ingest, search, filters, persistence, bad input and crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase, Skipped
from rag_lfm.errors import ConfigError, EmbedderMismatchError, FilterError, IndexFormatError

TOPICS = ["History", "Arts", "Science", "Geography"]




def corpus(n=200, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    return [
        Document(f"doc{i}", " ".join(rng.choice(words, 30)) + f" unique{i}", {"topic": TOPICS[i % 4], "year": 1800 + i, "even": i % 2 == 0})
        for i in range(n)
    ]


@pytest.fixture
def kb(tmp_path, docstore_url, unique_prefix):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64), docstore=docstore_url, table_prefix=unique_prefix)
    yield kb
    if docstore_url:
        kb.docstore.drop_tables()
    kb.close()


def test_ingest_search_and_reopen(kb):
    report = kb.ingest(InMemory(corpus()), progress=False, commit_every=64)
    assert (report.added, report.updated, report.unchanged, report.failed) == (200, 0, 0, [])
    assert report.commits == 4
    hits = kb.search("unique17", k=3)
    assert hits[0].doc_id == "doc17" and hits[0].metadata["topic"] == "Arts"
    assert hits[0].score >= hits[1].score >= hits[2].score
    again = KnowledgeBase.open(kb.path)
    assert [h.chunk_id for h in again.search("unique17", k=3)] == [h.chunk_id for h in hits]
    assert again.info()["counts"] == {"documents": 200, "chunks": 200}


def test_reingest_skips_unchanged_and_reuses_embeddings(kb):
    docs = corpus(50)
    kb.ingest(InMemory(docs), progress=False)
    calls = kb.embedder.calls
    edited = docs[:]
    edited[3] = Document("doc3", docs[3].text + " appended words", docs[3].metadata)
    edited[4] = Document("doc4", docs[4].text, {**docs[4].metadata, "topic": "Changed"})  # metadata only
    report = kb.ingest(InMemory(edited), progress=False)
    assert (report.added, report.updated, report.unchanged) == (0, 2, 48)
    assert report.chunks_embedded == 1 and report.chunks_reused == 0  # doc4's chunk id is unchanged: nothing to embed
    assert kb.embedder.calls - calls == 1
    assert kb.search("unique4", k=1, filter={"topic": "Changed"})[0].doc_id == "doc4"


def test_sync_deletes_only_its_own_source(kb):
    kb.ingest(InMemory(corpus(20), name="a"), progress=False)
    kb.ingest(InMemory([Document("x", "other source text unique99")], name="b"), progress=False)
    report = kb.sync(InMemory(corpus(20)[:15], name="a"), progress=False)
    assert report.deleted == 5
    assert kb.info()["counts"] == {"documents": 16, "chunks": 16}
    assert kb.index.ntotal == 16
    assert kb.search("unique99", k=1)[0].doc_id == "x"
    assert all(h.doc_id != "doc17" for h in kb.search("unique17", k=16))


def test_selective_filter_still_returns_k_hits(kb):
    kb.ingest(InMemory(corpus(400)), progress=False)
    # 4 documents match: a post-filter over the global top-k would starve; the selector inside FAISS does not.
    hits = kb.search("w1 w2 w3", k=4, filter={"year": {"$gte": 1800, "$lt": 1816}, "topic": "History"})
    assert sorted(h.doc_id for h in hits) == ["doc0", "doc12", "doc4", "doc8"]
    hits = kb.search("w1", k=10, filter={"$or": [{"topic": "Arts"}, {"even": True}], "year": {"$lt": 1810}})
    assert sorted(h.doc_id for h in hits) == sorted(f"doc{i}" for i in range(10) if i % 4 == 1 or i % 2 == 0)
    assert kb.search("w1", k=5, filter={"topic": {"$in": []}}) == []
    assert {h.doc_id for h in kb.search("w1", k=400, filter={"topic": {"$nin": ["History", "Arts", "Science"]}})} == {f"doc{i}" for i in range(3, 400, 4)}


def test_filter_values_are_parameterised(kb):
    kb.ingest(InMemory(corpus(8)), progress=False)
    assert kb.search("w1", k=8, filter={"topic": "x' OR '1'='1"}) == []
    assert kb.search("w1", k=8, filter={"_doc_id": "doc1' --"}) == []


@pytest.mark.parametrize(
    "flt,match",
    [
        ({"colour": "red"}, "not a metadata field.*known fields: even, topic, year"),
        ({"year": "1900"}, "holds num values"),
        ({"topic": {"$regex": "x"}}, "unknown operator"),
        ({"even": {"$gt": True}}, "makes no sense"),
        ({"$xor": []}, "unknown filter operator"),
        ({"topic": {"$in": "History"}}, "takes a list"),
    ],
)
def test_bad_filters_name_the_field_and_the_fix(kb, flt, match):
    kb.ingest(InMemory(corpus(8)), progress=False)
    with pytest.raises(FilterError, match=match):
        kb.search("w1", filter=flt)


def test_bad_documents_are_reported_and_the_rest_ingests(kb):
    items = [Document("ok1", "good text"), Document("empty", "   "), Skipped("broken.json", "invalid JSON"), Document("ok1", "dup"), Document("ok2", "more text")]
    report = kb.ingest(InMemory(items), progress=False)
    assert report.added == 2
    reasons = {s.ref: s.reason for s in report.failed}
    assert reasons == {"empty": "empty document (no text)", "broken.json": "invalid JSON", "ok1": "duplicate document id in this source (the first one was kept)"}


def test_delete_by_id_and_source(kb):
    kb.ingest(InMemory(corpus(10), name="a"), progress=False)
    kb.ingest(InMemory(corpus(5), name="b"), progress=False)
    assert kb.delete(["doc1", "doc2"], source="a") == 2
    assert kb.delete(["doc3"]) == 2  # in both sources
    assert kb.delete(source="b") == 4
    assert kb.info()["counts"]["documents"] == 7 and kb.index.ntotal == 7
    with pytest.raises(ConfigError, match="sources: a"):
        kb.delete(["x"], source="nope")


def test_open_errors(tmp_path):
    with pytest.raises(IndexFormatError, match="is not a directory"):
        KnowledgeBase.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(IndexFormatError, match="no manifest.json"):
        KnowledgeBase.open(tmp_path / "plain")
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    with pytest.raises(ConfigError, match="already holds an index"):
        KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    with pytest.raises(EmbedderMismatchError, match="built with embedder 'hash-32'"):
        KnowledgeBase.open(kb.path, embedder=HashEmbedder(16))
    m = json.loads((kb.path / "manifest.json").read_text())
    m["format_version"] = 99
    (kb.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="format version 99"):
        KnowledgeBase.open(kb.path)
    (kb.path / "manifest.json").write_text("{trunc")
    with pytest.raises(IndexFormatError, match="not valid JSON"):
        KnowledgeBase.open(kb.path)


def test_tampered_or_truncated_index_file_fails_its_checksum(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    kb.ingest(InMemory(corpus(30)), progress=False)
    [name] = kb.manifest["files"]
    f = kb.path / name
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexFormatError, match=f"{name} fails its sha256 check"):
        KnowledgeBase.open(kb.path)
    f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(IndexFormatError, match="sha256"):
        KnowledgeBase.open(kb.path)
    f.write_bytes(data)
    assert len(KnowledgeBase.open(kb.path).search("w1", k=3)) == 3


def test_bad_search_arguments(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    assert kb.search("anything") == []  # empty index: no hits, no error
    with pytest.raises(ConfigError, match="k=0"):
        kb.search("q", k=0)
    with pytest.raises(ConfigError, match="search_batch"):
        kb.search(["q"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="wrap it in a list"):
        kb.search_batch("q")  # type: ignore[arg-type]


def test_wrong_docstore_url_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a valid SQLAlchemy URL"):
        KnowledgeBase.create(tmp_path / "a", embedder=HashEmbedder(8), docstore="notadb://x")
    with pytest.raises(ConfigError, match="cannot reach the doc store"):
        KnowledgeBase.create(tmp_path / "b", embedder=HashEmbedder(8), docstore="postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_approximate_and_masked_indexes(tmp_path):
    # IVF (supports removal) and HNSW (deletions masked, then compacted) give the exact answer on easy queries.
    for factory in ["IVF4,Flat", "HNSW16,Flat"]:
        kb = KnowledgeBase.create(tmp_path / factory, embedder=HashEmbedder(64), index=factory)
        docs = corpus(300)
        kb.ingest(InMemory(docs), progress=False, commit_every=300)
        assert kb.search(docs[42].text, k=1)[0].doc_id == "doc42"
        kb.sync(InMemory(corpus(300)[:200]), progress=False)
        assert kb.index.ntotal == 200
        assert all(h.doc_id not in {f"doc{i}" for i in range(200, 300)} for h in kb.search(docs[250].text, k=20))
        # a selective filter on an approximate index is scored exactly from stored vectors
        assert len(kb.search("w1", k=5, filter={"topic": "Arts", "year": {"$lt": 1830}})) == 5
        if factory.startswith("HNSW"):
            assert kb.index.masked_share == 0  # 1/3 masked > 20%: compacted on commit
        reopened = KnowledgeBase.open(kb.path)
        assert reopened.search(docs[42].text, k=1)[0].doc_id == "doc42"


def test_auto_index_rule():
    from rag_lfm.index import auto_factory

    assert auto_factory(10) == "IDMap2,Flat"
    assert auto_factory(99_999) == "IDMap2,Flat"
    assert auto_factory(100_000) == "IVF1024,Flat"
    assert auto_factory(5_000_000).endswith(",SQ8")


def test_crash_between_docstore_commit_and_manifest_rolls_forward(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32))
    kb.ingest(InMemory(corpus(10)), progress=False)
    old_manifest = (kb.path / "manifest.json").read_text()
    kb.ingest(InMemory(corpus(20)), progress=False)
    # Simulate the crash window: doc store committed generation g+1, manifest still says g.
    (kb.path / "manifest.json").write_text(old_manifest)
    again = KnowledgeBase.open(kb.path)
    assert again.info()["counts"]["documents"] == 20
    assert again.search(corpus(20)[15].text, k=1)[0].doc_id == "doc15"


CRASH_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from rag_lfm import KnowledgeBase, HashEmbedder, Document
    class Slow:
        source_id, complete = "slow", True
        def iter_documents(self):
            for i in range(6000):
                if i % 50 == 0:
                    time.sleep(0.01)
                yield Document(f"d{i}", f"document number {i} words w{i % 97} x{i % 13}", {"n": i})
    kb = KnowledgeBase.open_or_create(sys.argv[1], embedder=HashEmbedder(32))
    kb.ingest(Slow(), commit_every=300, progress=False)
    print("done", flush=True)
    """
)


def test_sigkill_mid_ingest_keeps_last_commit_and_rerun_completes(tmp_path):
    script = tmp_path / "ingest.py"
    script.write_text(CRASH_SCRIPT)
    path = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        m = path / "manifest.json"
        if m.exists() and json.loads(m.read_text())["counts"]["documents"] >= 1200:
            break
        time.sleep(0.05)
    time.sleep(0.13)  # land somewhere inside a batch or a commit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kb = KnowledgeBase.open(path)  # opens, checksums pass
    n = kb.info()["counts"]["documents"]
    assert n % 300 == 0 and 1200 <= n < 6000  # exactly the last committed batch boundary
    assert kb.index.ntotal == kb.info()["counts"]["chunks"] == n
    ids = kb.docstore.filter_ids({"n": {"$gte": 0}})
    assert len(ids) == n
    # re-run: completes the work, skipping what was committed
    out = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    kb = KnowledgeBase.open(path)
    assert kb.info()["counts"]["documents"] == 6000 == kb.index.ntotal


def test_recorded_specs_never_keep_a_password(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16))
    src = InMemory([Document("a", "text")], name="db")
    src.spec = {"type": "sql", "url": "postgresql+psycopg://user:s3cret@host/db", "table": "t"}
    kb.ingest(src, progress=False)
    spec = kb.docstore.source_infos()["db"]["spec"]
    assert spec["url"] == "postgresql+psycopg://user:***@host/db" and spec["name"] == "db"


def test_prefix_filter_selects_a_folder_exactly(tmp_path, docstore_url, unique_prefix):
    """{"path": {"$prefix": ...}} keeps documents under a folder, case-sensitively, with no wildcard surprises."""
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32), docstore=docstore_url, table_prefix=unique_prefix)
    try:
        docs = [Document(p, f"notes about {p}", {"path": p}) for p in
                ["docs/api/a.md", "docs/api/b.md", "docs/apix.md", "Docs/api/c.md", "docs/a%i/d.md", "src/x.py"]]
        kb.ingest(InMemory(docs), progress=False)
        got = {h.doc_id for h in kb.search("notes", k=10, filter={"path": {"$prefix": "docs/api/"}})}
        assert got == {"docs/api/a.md", "docs/api/b.md"}
        assert {h.doc_id for h in kb.search("notes", k=10, filter={"path": {"$prefix": "docs/a%"}})} == {"docs/a%i/d.md"}
        with pytest.raises(FilterError, match=r"\$prefix on 'path' takes a non-empty str"):
            kb.search("notes", filter={"path": {"$prefix": ""}})
    finally:
        if docstore_url:
            kb.docstore.drop_tables()
        kb.close()
