"""Defect 7 of issue 10: a source spec read back from an index is not trusted code.

The attacker can write the index directory (here: edit the doc store's sources table) but
not the user's config directory, where the key that signs recorded specs lives.
"""

from __future__ import annotations

import json
import sys

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from rag_lfm import KnowledgeBase
from rag_lfm.cli import app

runner = CliRunner()

EVIL = '''
import pathlib
from langchain_core.document_loaders import BaseLoader
from langchain_core.documents import Document
pathlib.Path(__file__).with_name("IMPORTED").write_text("the index made sync import me")
class Loader(BaseLoader):
    def __init__(self, path):
        self.path = path
    def lazy_load(self):
        yield Document(page_content=open(self.path).read(), metadata={"source": self.path})
'''


@pytest.fixture
def victim(tmp_path):
    """An index of 50 notes, built by the user from the CLI (so its spec is recorded and signed)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i in range(50):
        (notes / f"n{i}.md").write_text(f"note number {i} about topic {i % 5}")
    idx = tmp_path / "idx"
    r = runner.invoke(app, ["ingest", str(notes), "--index", str(idx), "--embedder", "hash-32"])
    assert r.exit_code == 0, r.output
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "passwd.txt").write_text("root:x:0:0:the victim's private file")
    return idx, notes, secret


def edit_spec(idx, source_id, spec):
    """What anyone who can write the index directory can do: rewrite a recorded spec."""
    engine = sa.create_engine(f"sqlite:///{idx / 'docstore.sqlite'}")
    with engine.begin() as conn:
        info = json.loads(conn.execute(sa.text("SELECT info FROM rag_sources WHERE source_id = :s"), {"s": source_id}).scalar_one())
        info["spec"] = spec | {"name": source_id}
        conn.execute(sa.text("UPDATE rag_sources SET info = :i WHERE source_id = :s"), {"i": json.dumps(info), "s": source_id})
    engine.dispose()


def test_an_edited_spec_is_not_run(victim):
    idx, notes, secret = victim
    [source_id] = KnowledgeBase.open(idx).docstore.source_infos()
    edit_spec(idx, source_id, {"type": "files", "path": str(secret)})
    r = runner.invoke(app, ["sync", str(idx)])
    assert r.exit_code == 2 and "is not signed by your key" in r.output and "--trust-specs" in r.output, r.output
    kb = KnowledgeBase.open(idx)
    assert kb.info()["counts"]["documents"] == 50  # nothing deleted ...
    assert not any("private" in h.text for h in kb.search("root victim private file", k=5))  # ... nothing read


def test_a_spec_naming_a_module_is_never_imported_without_the_users_consent(victim, tmp_path, monkeypatch):
    idx, _, secret = victim
    plugin_dir = tmp_path / "plugins"
    plugin_dir.mkdir()
    (plugin_dir / "evil_plugin.py").write_text(EVIL)
    monkeypatch.syspath_prepend(str(plugin_dir))
    monkeypatch.delitem(sys.modules, "evil_plugin", raising=False)
    [source_id] = KnowledgeBase.open(idx).docstore.source_infos()
    edit_spec(idx, source_id, {"type": "langchain", "loader": "evil_plugin.Loader", "loader_kwargs": {"path": str(secret / "passwd.txt")}})
    r = runner.invoke(app, ["sync", str(idx)])
    assert r.exit_code == 2 and "--allow langchain:evil_plugin.Loader" in r.output and "trust.toml" in r.output, r.output
    assert not (plugin_dir / "IMPORTED").exists()
    # the signature is still required once the type is allowed ...
    r = runner.invoke(app, ["sync", str(idx), "--allow", "langchain:evil_plugin.Loader"])
    assert r.exit_code == 2 and "not signed by your key" in r.output
    assert not (plugin_dir / "IMPORTED").exists() and KnowledgeBase.open(idx).info()["counts"]["documents"] == 50
    # ... and a user who checked the spec can run it, which signs it for next time
    r = runner.invoke(app, ["sync", str(idx), "--allow", "langchain:evil_plugin.Loader", "--trust-specs"])
    assert r.exit_code == 0, r.output
    assert (plugin_dir / "IMPORTED").exists() and KnowledgeBase.open(idx).info()["counts"]["documents"] == 1
    from rag_lfm.connectors.spec import config_dir

    (config_dir() / "trust.toml").write_text('allow = ["langchain:evil_plugin.Loader"]\n')
    try:
        assert runner.invoke(app, ["sync", str(idx)]).exit_code == 0  # allowed by the user's config, signed at the last sync
    finally:
        (config_dir() / "trust.toml").unlink()


def test_specs_signed_by_another_key_need_confirmation(victim, tmp_path, monkeypatch):
    idx, notes, _ = victim
    assert runner.invoke(app, ["sync", str(idx)]).exit_code == 0  # the user's own spec runs
    monkeypatch.setenv("RAG_LFM_CONFIG_DIR", str(tmp_path / "another-user"))
    (notes / "n50.md").write_text("a new note")
    r = runner.invoke(app, ["sync", str(idx)])
    assert r.exit_code == 2 and "recorded by another user or machine" in r.output
    assert runner.invoke(app, ["sync", str(idx), "--trust-specs"]).exit_code == 0
    assert runner.invoke(app, ["sync", str(idx)]).exit_code == 0  # now signed with this user's key
    assert KnowledgeBase.open(idx).info()["counts"]["documents"] == 51
