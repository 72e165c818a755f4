"""Defects 4 and 10 of issue 10: unbounded k, bad queries, chunk_size = 0.

The k tests run in child processes under an address-space limit, so that the code before
the fix fails with a MemoryError there instead of taking this machine's memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

import _scenarios as sc
from rag_lfm import HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.cli import app
from rag_lfm.connectors.spec import load_spec
from rag_lfm.errors import ConfigError

runner = CliRunner()
HUGE_K = 1_000_000_000
LIMIT = 3 << 30  # bytes of address space a child may add: ample for a 300-chunk index, far below 1e9 results


@pytest.fixture(scope="module")
def kb300(tmp_path_factory):
    kb = KnowledgeBase.create(tmp_path_factory.mktemp("k") / "idx", embedder=HashEmbedder(32))
    kb.ingest(InMemory(sc.docs(300), name="s"), progress=False)
    return kb


def test_k_is_clamped_to_the_collection_everywhere(kb300, procs):
    code, msgs = sc.run(procs, sc.huge_k_searches, str(kb300.path), HUGE_K, LIMIT, timeout=120)
    assert code == 0 and msgs, f"exit {code}: the search allocated for 1e9 results"
    got = msgs[0]
    assert got["search"] == got["retriever_dense"] == got["retriever_metric"] == 300
    assert got["search_filter"] == 100 and got["search_vectors"] == 300
    assert 0 < got["retriever_bm25"] <= 300 and got["retriever_hybrid"] == 300


def test_cli_search_with_an_absurd_k_answers_within_bounded_memory(kb300):
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({LIMIT + (1 << 30)}, {LIMIT + (1 << 30)}))
        from rag_lfm.cli import app
        sys.argv = ["rag-lfm", "search", {str(kb300.path)!r}, "w1 w2", "-k", "{HUGE_K}", "--json"]
        app()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-1500:]
    assert len(json.loads(r.stdout)["results"][0]["hits"]) == 300


@pytest.mark.parametrize("bad", ["", "   ", "\n\t"])
def test_empty_queries_are_refused_everywhere(kb300, bad):
    from rag_lfm.retrieval import Retriever

    with pytest.raises(ConfigError, match="empty or blank"):
        kb300.search(bad)
    with pytest.raises(ConfigError, match="query 1 is empty or blank"):
        kb300.search_batch(["fine", bad])
    with pytest.raises(ConfigError, match="empty or blank"):
        Retriever(kb300, method="hybrid").search(bad)
    r = runner.invoke(app, ["search", str(kb300.path), bad])
    assert r.exit_code == 2 and "empty or blank" in r.output


def test_non_str_queries_name_the_item(kb300):
    with pytest.raises(ConfigError, match=r"query 0 is a int \(1\), not a str"):
        kb300.search_batch([1, 2])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="query 1 is a NoneType"):
        kb300.search_batch(["a", None])  # type: ignore[list-item]


def test_chunk_size_zero_is_refused(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(f'[source]\ntype = "files"\npath = "{tmp_path}"\n[index]\nchunk_size = 0\n')
    with pytest.raises(ConfigError, match=r"chunk_size = 0 must be >= 1"):
        load_spec(spec)
    with pytest.raises(ConfigError, match="chunk_size=0 must be a positive number"):
        KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(8), chunk_size=0)
    (tmp_path / "a.txt").write_text("hello")
    r = runner.invoke(app, ["ingest", str(tmp_path / "a.txt"), "--index", str(tmp_path / "i2"), "--embedder", "hash-8", "--chunk-size", "0"])
    assert r.exit_code == 2 and "chunk_size=0" in r.output
    assert not (tmp_path / "idx").exists() or not (tmp_path / "idx" / "manifest.json").exists()
