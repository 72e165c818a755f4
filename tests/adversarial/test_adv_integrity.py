"""Defect 5 of issue 10: everything loaded is bound to the commit record; read-only commands never write."""

from __future__ import annotations

import hashlib
import json

import pytest
from typer.testing import CliRunner

import _scenarios as sc
from rag_lfm import HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.cli import app
from rag_lfm.errors import ConfigError, IndexFormatError

runner = CliRunner()


@pytest.fixture
def kb(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(64))
    kb.ingest(InMemory(sc.docs(40), name="s"), progress=False)
    return kb


def snapshot(path):
    """Every file of a directory tree: name -> (size, mtime_ns, sha256)."""
    out = {}
    for f in sorted(path.rglob("*")):
        if f.is_file():
            st = f.stat()
            out[str(f.relative_to(path))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
    return out


def test_cli_search_refuses_a_same_size_modification_of_the_index(kb):
    [name] = kb.manifest["files"]
    f = kb.path / name
    data = bytearray(f.read_bytes())
    data[-200] ^= 0x40  # one bit of one stored vector: same size, still a valid FAISS file
    f.write_bytes(bytes(data))
    r = runner.invoke(app, ["search", str(kb.path), "w1 w2", "-k", "3"])
    assert r.exit_code == 2 and "fails its sha256 check" in r.output, r.output


def test_manifest_edits_cannot_change_what_is_loaded(kb):
    want = [(h.chunk_id, round(h.score, 5)) for h in kb.search("w1 w2 w3", k=5)]
    m = json.loads((kb.path / "manifest.json").read_text())
    m["metric"] = "l2"
    m["chunking"]["size"] = 3
    m["embedder"]["normalize"] = False
    m["index"]["factory"] = "HNSW32,Flat"
    (kb.path / "manifest.json").write_text(json.dumps(m))
    again = KnowledgeBase.open(kb.path)
    assert (again.manifest["metric"], again.manifest["chunking"]["size"], again.manifest["embedder"]["normalize"]) == ("ip", 256, True)
    assert [(h.chunk_id, round(h.score, 5)) for h in again.search("w1 w2 w3", k=5)] == want


def test_a_manifest_ahead_of_the_doc_store_is_refused(kb):
    m = json.loads((kb.path / "manifest.json").read_text())
    m["generation"] += 5
    (kb.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexFormatError, match="restored from an older backup"):
        KnowledgeBase.open(kb.path)


def test_read_only_commands_never_write_even_when_rolling_forward(kb):
    old_manifest = (kb.path / "manifest.json").read_text()
    kb.ingest(InMemory(sc.docs(50), name="s"), progress=False)
    # The crash window: the doc store committed, manifest.json still names the previous generation.
    (kb.path / "manifest.json").write_text(old_manifest)
    before = snapshot(kb.path)
    r = runner.invoke(app, ["search", str(kb.path), sc.docs(50)[45].text, "-k", "1", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["results"][0]["hits"][0]["doc_id"] == "d45"  # rolled forward, in memory
    assert runner.invoke(app, ["info", str(kb.path), "--json"]).exit_code == 0
    reader = KnowledgeBase.open(kb.path)
    assert len(reader) == 50 and reader.search("w3", k=2)
    assert snapshot(kb.path) == before  # nothing written, renamed or removed
    kb.ingest(InMemory(sc.docs(51), name="s"), progress=False)  # the next writer rolls manifest.json forward
    assert json.loads((kb.path / "manifest.json").read_text())["counts"]["documents"] == 51


# -- side files: the mechanism the BM25 sidecar and adapters plug into --------------------
def test_side_files_are_bound_verified_replaced_and_removed(kb):
    from rag_lfm.commit import digest_files

    folder = kb.path / "adapters" / "q"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\x01" * 64)
    (folder / "config.json").write_text('{"rank": 4}')
    with pytest.raises(ConfigError, match="inside `with kb.write_lock"):
        kb.commit_side_files(digest_files(kb.path, "adapters/q"))
    gen = kb.generation
    with kb.write_lock():
        with pytest.raises(ConfigError, match="has sha256"):
            kb.commit_side_files({"adapters/q/config.json": "0" * 64})
        kb.commit_side_files(digest_files(kb.path, "adapters/q"), config={"adapter": {"name": "q", "rank": 4}})
    assert kb.generation == gen  # a side-file commit leaves the vector index (and derived data keyed on it) valid
    reader = KnowledgeBase.open(kb.path)
    assert reader.manifest["adapter"] == {"name": "q", "rank": 4}
    assert reader.read_side_file("adapters/q/config.json") == b'{"rank": 4}'
    assert reader.side_folder("adapters/q") == folder
    # tampering is detected, whoever loads the file
    (folder / "weights.bin").write_bytes(b"\x02" * 64)
    with pytest.raises(IndexFormatError, match="weights.bin fails its sha256 check"):
        reader.side_folder("adapters/q")
    # a manifest edit of a bound key is not what readers get
    m = json.loads((kb.path / "manifest.json").read_text())
    m["adapter"]["rank"] = 64
    (kb.path / "manifest.json").write_text(json.dumps(m))
    assert KnowledgeBase.open(kb.path).manifest["adapter"]["rank"] == 4
    # replace one file, remove another (its file is deleted after the commit point)
    (folder / "weights.bin").write_bytes(b"\x03" * 64)
    with kb.write_lock():
        kb.commit_side_files(digest_files(kb.path, "adapters/q/weights.bin") | {"adapters/q/config.json": None}, config={"adapter": None})
    assert not (folder / "config.json").exists()
    assert reader.read_side_file("adapters/q/weights.bin") == b"\x03" * 64  # the long-lived reader rolled forward
    adapters = sorted(f for f in reader.side_files if not f.startswith("bm25"))  # the BM25 sidecar is one too
    assert adapters == ["adapters/q/weights.bin"] and "adapter" not in reader.manifest
    with pytest.raises(IndexFormatError, match="not a committed side file"):
        reader.read_side_file("adapters/q/config.json")
    # the index's own keys cannot be rewritten through a side-file commit
    with kb.write_lock(), pytest.raises(ConfigError, match="belongs to the index itself"):
        kb.commit_side_files({}, config={"metric": "l2"})
    # side files survive later vector commits
    kb.ingest(InMemory(sc.docs(45), name="s"), progress=False)
    assert KnowledgeBase.open(kb.path).read_side_file("adapters/q/weights.bin") == b"\x03" * 64
