"""Defects 1-3 of issue 10 (concurrent writers, readers racing commits, SIGKILL), with real processes.

Every test here failed on the code before the commit protocol moved to rag_lfm.commit, and
checks that nothing is lost: FAISS and the doc store agree, every document is findable.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

import _scenarios as sc
from rag_lfm import HashEmbedder, InMemory, KnowledgeBase
from rag_lfm import errors
from rag_lfm.errors import IndexFormatError

# getattr: the suite also runs against the code before the fix, to show each probe failing there.
ConcurrentWriteError = getattr(errors, "ConcurrentWriteError", errors.ConfigError)

DATA = Path(__file__).resolve().parents[1] / "data"


def assert_consistent(kb: KnowledgeBase) -> None:
    """FAISS, the doc store and the manifest agree, and every stored chunk is found by its own vector."""
    n_docs, n_chunks = kb.docstore.counts()
    assert kb.index.ntotal == n_chunks == kb.manifest["counts"]["chunks"] == len(kb)
    assert kb.manifest["counts"]["documents"] == n_docs
    for ids, vecs in kb.docstore.iter_vectors():
        _, got = kb.search_vectors(vecs, 1)
        found = set(got[:, 0].tolist())
        assert set(ids.tolist()) <= found | {-1} and len(found - {-1}) == len(set(ids.tolist())), "a stored chunk is missing from FAISS"


def texts(kb: KnowledgeBase) -> dict[str, str]:
    out = {}
    for batch in kb.iter_chunks():
        for h in batch:
            out[h.doc_id] = h.text
    return out


# -- defect 1: a stale handle loses vectors ------------------------------------------------
def test_stale_handle_keeps_both_writers_documents(tmp_path, docstore_url, unique_prefix):
    """The issue's repro: open twice, 50 documents through kb2, then 30 through kb1: 80 chunks everywhere."""
    kb1 = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64), docstore=docstore_url, table_prefix=unique_prefix)
    try:
        kb2 = KnowledgeBase.open(kb1.path)
        kb2.ingest(InMemory(sc.docs(50, source_tag="b"), name="b"), progress=False)
        kb1.ingest(InMemory(sc.docs(30, source_tag="a"), name="a"), progress=False)
        fresh = KnowledgeBase.open(kb1.path)
        assert fresh.info()["counts"] == {"documents": 80, "chunks": 80}
        assert fresh.index.ntotal == 80
        assert fresh.generation == kb1.generation > kb2.generation
        assert_consistent(fresh)
        # a later sync has nothing to repair, and the old handle searches the new state
        assert kb2.sync(InMemory(sc.docs(50, source_tag="b"), name="b"), progress=False).unchanged == 50
        assert kb2.search(sc.docs(30, source_tag="a")[7].text, k=1)[0].doc_id == "ad7"
        fresh.close()
        kb2.close()
    finally:
        if docstore_url:
            kb1.docstore.drop_tables()
        kb1.close()


def test_two_writer_processes_both_commit(tmp_path, procs):
    """Two processes open the index, then ingest at the same time: the second waits for the lock, rolls forward."""
    path = tmp_path / "idx"
    KnowledgeBase.create(path, embedder=HashEmbedder(sc.DIM)).close()
    ctx = procs
    q = ctx.Queue()
    ps = [ctx.Process(target=sc.writer, args=(str(path), None, "rag_", s, 120, 20, q)) for s in ("a", "b")]
    for p in ps:
        p.start()
    for p in ps:
        p.join(60)
    msgs = [q.get(timeout=5) for _ in range(4)]
    assert sorted(m for m in msgs if m[0] != "opened") == [("done", "a", 120), ("done", "b", 120)], msgs
    kb = KnowledgeBase.open(path)
    assert kb.info()["counts"] == {"documents": 240, "chunks": 240}
    assert_consistent(kb)


def test_commit_from_a_stale_record_is_refused_even_without_the_lock(tmp_path, docstore_url, unique_prefix):
    """The compare-and-set at the commit point: a writer that bypassed the lock (e.g. NFS) cannot commit."""
    from rag_lfm.docstore import ChangeSet

    kb1 = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16), docstore=docstore_url, table_prefix=unique_prefix)
    try:
        kb2 = KnowledgeBase.open(kb1.path)
        kb2.ingest(InMemory(sc.docs(10), name="s"), progress=False)
        before = kb1.docstore.get_commit_raw()
        with kb1._dir.write_lock():  # the lock, but not the roll-forward: what a lock that does not reach us amounts to
            with pytest.raises(ConcurrentWriteError, match="another writer committed"):
                kb1._dir.commit(ChangeSet(delete_sources=["s"]), config={}, index=kb1.index)
        assert kb1.docstore.get_commit_raw() == before  # nothing applied
        assert kb1.docstore.counts() == (10, 10) and kb1.docstore.source_infos().keys() == {"s"}
        kb2.close()
    finally:
        if docstore_url:
            kb1.docstore.drop_tables()
        kb1.close()


def test_a_busy_lock_waits_then_names_the_fix(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16))
    other = KnowledgeBase.open(kb.path)
    other.lock_timeout_s = 0.2
    with kb.write_lock():
        t = time.perf_counter()
        with pytest.raises(ConcurrentWriteError, match="being written by another process.*lock_timeout_s"):
            other.ingest(InMemory(sc.docs(3), name="s"), progress=False)
        assert time.perf_counter() - t >= 0.2
    assert other.ingest(InMemory(sc.docs(3), name="s"), progress=False).added == 3


# -- defect 2: readers racing a committer -------------------------------------------------
def test_openers_and_long_lived_readers_during_commits(tmp_path, procs):
    """While a process rewrites 60 documents 25 times (each commit deletes every chunk a reader
    loaded), openers never hear "damaged" and a long-lived reader always gets k hits."""
    path = tmp_path / "idx"
    kb = KnowledgeBase.create(path, embedder=HashEmbedder(sc.DIM))
    kb.ingest(InMemory(sc.docs(60), name="s"), progress=False)
    reader = KnowledgeBase.open(path)
    ctx = procs
    q = ctx.Queue()
    w = ctx.Process(target=sc.updater, args=(str(path), 25, 60, q))
    w.start()
    assert q.get(timeout=30) == ("started",)
    opens = searches = 0
    errors: list[str] = []
    short: list[int] = []
    while w.is_alive():
        try:
            KnowledgeBase.open(path).close()
            opens += 1
        except IndexFormatError as exc:
            errors.append(str(exc))
        hits = reader.search("w1 w2 w3 w4 w5", k=10)
        searches += 1
        if len(hits) != 10:
            short.append(len(hits))
    w.join()
    assert q.get(timeout=5) == ("done", 25)
    assert errors == [], errors[:3]
    assert short == [], f"{len(short)} of {searches} searches got fewer than 10 hits"
    assert opens >= 3 and searches >= 3
    final = KnowledgeBase.open(path)
    assert all(t.endswith("round25") for t in texts(final).values())
    assert all(h.text.endswith("round25") for h in reader.search("w1 w2 w3", k=5))  # rolled forward in memory
    assert_consistent(final)


def test_opener_retries_when_a_commit_removes_its_generation_mid_open(tmp_path, procs, monkeypatch):
    """Deterministic form of the race: the opener has read the commit record (and checked the files);
    just before it loads the index file, another process commits and removes that file."""
    from rag_lfm.index import FaissBackend

    path = tmp_path / "idx"
    KnowledgeBase.create(path, embedder=HashEmbedder(sc.DIM)).ingest(InMemory(sc.docs(20), name="s"), progress=False)
    real_load = FaissBackend.load.__func__
    raced = []

    def load_after_a_commit(cls, f, **kw):
        if not raced:
            raced.append(f.name)
            assert sc.run(procs, sc.updater, str(path), 1, 20)[0] == 0  # another process commits generation g+1
            assert not f.exists()  # ... and removed the file this opener was about to load
        return real_load(cls, f, **kw)

    monkeypatch.setattr(FaissBackend, "load", classmethod(load_after_a_commit))
    kb = KnowledgeBase.open(path)  # not "the file is damaged, rebuild the index": it retries with the new record
    assert raced and all(t.endswith("round1") for t in texts(kb).values())
    assert_consistent(kb)


# -- defect 3: SIGKILL at every durable step ---------------------------------------------
def _kill_matrix(tmp_path, procs, url, prefix_base, stop_after=None):
    k, tried = 1, 0
    while True:
        path, prefix = tmp_path / f"k{k}", f"{prefix_base}{k}_"
        code, msgs = sc.run(procs, sc.crash_workload, str(path), url, prefix, k, "before")
        if code == 0:
            break  # the workload finished before step k: every step was tried
        assert code == -9, (k, code, msgs)
        tried += 1
        # Recovery: the directory opens (or, if the create never committed, is created again) without error ...
        kb = sc.open_or_create(str(path), url, prefix)
        assert_consistent(kb)
        assert kb.info()["counts"]["documents"] in (0, 10, 20, 25, 22), (k, kb.info()["counts"])
        # ... and re-running the workload completes it: nothing lost, nothing half-done.
        sc.run_workload(kb)
        assert texts(kb) == sc.final_texts(), k
        assert_consistent(kb)
        if url:
            kb.docstore.drop_tables()
        kb.close()
        k += 1
        if stop_after and k > stop_after:
            break
    return tried


def test_sigkill_at_every_durable_step_of_create_ingest_update_delete(tmp_path, procs):
    tried = _kill_matrix(tmp_path, procs, None, "rag")
    assert tried >= 20  # create, 4 ingest commits, source records, a delete: every rename, removal and SQL commit


def test_sigkill_inside_create_on_each_doc_store(tmp_path, procs, docstore_url, unique_prefix):
    """Defect 3 on every doc store (on a server too): a create killed at any step is created again, never 'already holds'."""
    assert _kill_matrix(tmp_path, procs, docstore_url, unique_prefix.rstrip("_"), stop_after=4) == 4


def test_a_directory_an_older_create_left_without_manifest_is_created_again(tmp_path):
    """What a SIGKILL inside create left with rag-lfm format 1: a committed, empty doc store and no manifest.json."""
    path = tmp_path / "idx"
    KnowledgeBase.create(path, embedder=HashEmbedder(16)).close()
    (path / "manifest.json").unlink()
    with pytest.raises(IndexFormatError, match="creation was interrupted; create it again"):
        KnowledgeBase.open(path)
    kb = KnowledgeBase.open_or_create(path, embedder=HashEmbedder(16))
    assert kb.ingest(InMemory(sc.docs(5), name="s"), progress=False).added == 5
    assert_consistent(KnowledgeBase.open(path))


# -- format version 1 (today's main) ------------------------------------------------------
def test_a_format_1_index_opens_and_migrates_at_its_first_write(tmp_path):
    path = tmp_path / "v1"
    shutil.copytree(DATA / "index-v1", path)
    kb = KnowledgeBase.open(path)
    assert kb.manifest["format_version"] == 1 and kb.info()["counts"] == {"documents": 11, "chunks": 11}
    assert kb.search("document number 4", k=1)[0].doc_id == "d4"
    assert json.loads((path / "manifest.json").read_text())["format_version"] == 1  # reading never writes
    kb.ingest(InMemory(sc.docs(3, start=100), name="new"), progress=False)
    m = json.loads((path / "manifest.json").read_text())
    assert m["format_version"] == 2 and kb.docstore.get_commit()["format_version"] == 2
    assert kb.docstore.get_commit()["config"]["embedder"]["name"] == "hash-16"
    again = KnowledgeBase.open(path)
    assert again.info()["counts"] == {"documents": 14, "chunks": 14}
    assert_consistent(again)
    assert sorted(p.name for p in path.glob("index-*")) == sorted(again.manifest["files"])  # the v1 file was removed
