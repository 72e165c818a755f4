"""Integration with the real packaged embedder on the real wiki-vital corpus (a small slice)."""

from __future__ import annotations

import subprocess
import sys

from rag_lfm import KnowledgeBase, WikiVital


def test_wiki_slice_end_to_end_with_minilm(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "wiki", embedder="all-MiniLM-L6-v2", embedder_backend="torch")
    report = kb.ingest(WikiVital(limit=200), progress=False)
    assert report.added == 200 and not report.failed
    info = kb.info()
    assert info["embedder"] == {"name": "all-MiniLM-L6-v2", "dim": 384, "normalize": True, "backend": "torch", "backend_spec": "torch", "type": "sentence-transformers"}
    assert info["index"]["factory"] == "IDMap2,Flat" and info["fields"] == {"description": "str", "title": "str", "topic": "str"}
    entries = [d for d in WikiVital(limit=200).iter_documents()]
    # descriptions find their own article far above chance (R@10 over 200 docs)
    queries = [d.metadata["description"] for d in entries if len(d.metadata.get("description", "").split()) >= 3]
    titles = [d.id for d in entries if len(d.metadata.get("description", "").split()) >= 3]
    results = kb.search_batch(queries, k=10)
    r10 = sum(t in {h.doc_id for h in hits} for t, hits in zip(titles, results)) / len(titles)
    assert r10 > 0.7, r10
    topic = entries[0].metadata["topic"]
    hits = kb.search("music", k=5, filter={"topic": topic})
    assert len(hits) == 5 and all(h.metadata["topic"] == topic for h in hits)
    reopened = KnowledgeBase.open(kb.path)
    assert [h.chunk_id for h in reopened.search("music", k=5)] == [h.chunk_id for h in kb.search("music", k=5)]


def test_demo_script_builds_searches_and_reuses(tmp_path):
    cmd = [sys.executable, "-m", "rag_lfm.demo", "--index", str(tmp_path / "demo"), "--limit", "60", "--no-reader"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "building" in first.stdout and "query: 'French Impressionist painter'" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0 and "reusing" in second.stdout
