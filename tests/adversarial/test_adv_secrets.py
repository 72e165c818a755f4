"""Defect 6 of issue 10: secrets are never written to an index directory, a doc store record, a doc id, or printed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import _scenarios as sc
from rag_lfm import HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.cli import app
from rag_lfm.errors import ConfigError, SourceError

SECRET = "s3cret-Pw"
runner = CliRunner()


def files_text(path) -> str:
    return "\n".join(f.read_bytes().decode("utf-8", "replace") for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("raw,leak", [
    (f"postgresql+psycopg://app:{SECRET}@db:5432/rag", SECRET),
    (f"postgresql://:{SECRET}@db/rag", SECRET),  # no user name
    (f"mysql+pymysql://root@db/rag?password={SECRET}&charset=utf8mb4", SECRET),
    (f"https://api.example.org/v1?api_key={SECRET}&q=1", SECRET),
    (f"https://user:{SECRET}@example.org/private", SECRET),
    (f"could not parse URL 'notadb://user:{SECRET}@host/db'", SECRET),
    (f"https://ghp_{SECRET}{SECRET}abc@github.com/o/r.git", SECRET),
])
def test_redact_masks_every_form(raw, leak):
    from rag_lfm.redaction import redact

    out = redact(raw)
    assert leak not in out and "***" in out


def test_redact_masks_secret_keys_at_any_depth():
    from rag_lfm.redaction import redact

    spec = {"type": "sql", "url_env": "DB_URL", "engine_options": {"connect_args": {"password": SECRET, "sslmode": "require"}},
            "headers": [{"Authorization": f"Bearer {SECRET}"}], "token": SECRET}
    out = redact(spec)
    assert SECRET not in json.dumps(out)
    assert out["url_env"] == "DB_URL" and out["engine_options"]["connect_args"]["sslmode"] == "require"


def test_a_doc_store_password_is_used_never_stored(tmp_path, monkeypatch):
    from conftest import PG_URL, reachable_or_skip  # noqa: PLC0415 - the shared fixtures' module

    url = reachable_or_skip(PG_URL).replace("postgres@", f"postgres:{SECRET}@")  # trust auth: any password works
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16), docstore=url, table_prefix="tsecret_")
    try:
        kb.ingest(InMemory(sc.docs(5), name="s"), progress=False)
        assert SECRET not in files_text(kb.path)
        assert SECRET not in json.dumps(kb.info()) and SECRET not in repr(kb.docstore)
        assert json.loads((kb.path / "manifest.json").read_text())["docstore"]["url"].startswith("postgresql+psycopg://postgres:***@")
        monkeypatch.delenv("RAG_LFM_DOCSTORE_PASSWORD", raising=False)
        with pytest.raises(ConfigError, match="needs a password, which is never stored.*RAG_LFM_DOCSTORE_PASSWORD") as err:
            KnowledgeBase.open(kb.path)
        assert SECRET not in str(err.value)
        assert len(KnowledgeBase.open(kb.path, docstore=url)) == 5
        monkeypatch.setenv("RAG_LFM_DOCSTORE_PASSWORD", SECRET)
        assert len(KnowledgeBase.open(kb.path)) == 5
        r = runner.invoke(app, ["info", str(kb.path), "--json"])
        assert r.exit_code == 0 and SECRET not in r.output
    finally:
        kb.docstore.drop_tables()
        kb.close()


def test_errors_never_print_the_password(tmp_path):
    for url in (f"notadb://user:{SECRET}@host/db", f"postgresql+psycopg://user:{SECRET}@127.0.0.1:1/none"):
        with pytest.raises(ConfigError) as err:
            KnowledgeBase.create(tmp_path / "a", embedder=HashEmbedder(8), docstore=url)
        assert SECRET not in str(err.value), str(err.value)
    spec = tmp_path / "db.toml"
    spec.write_text(f'[source]\ntype = "sql"\nurl = "postgresql+psycopg://u:{SECRET}@127.0.0.1:1/x"\ntable = "t"\n'
                    'id_column = "id"\ntext_columns = ["body"]\n')
    r = runner.invoke(app, ["ingest", str(spec), "--index", str(tmp_path / "i"), "--embedder", "hash-8"])
    assert r.exit_code == 2 and SECRET not in r.output, r.output

    class Failing:
        source_id, complete = "broken", True

        def iter_documents(self):
            yield from sc.docs(2)
            raise RuntimeError(f"lost the connection to postgresql://app:{SECRET}@db/rag")

    kb = KnowledgeBase.create(tmp_path / "b", embedder=HashEmbedder(8))
    with pytest.raises(SourceError) as err:
        kb.ingest(Failing(), progress=False)
    assert SECRET not in str(err.value) and "app:***@db" in str(err.value)


def test_recorded_specs_with_secrets_are_masked_and_not_rerun(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16))
    src = InMemory(sc.docs(3), name="db")
    src.spec = {"type": "sql", "url": f"postgresql://:{SECRET}@h/db?sslpassword={SECRET}", "table": "t", "id_column": "id",
                "text_columns": ["b"], "engine_options": {"connect_args": {"password": SECRET}}}
    kb.ingest(src, progress=False)
    assert SECRET not in files_text(kb.path)
    r = runner.invoke(app, ["sync", str(kb.path)])
    assert r.exit_code == 0 and "its spec held a secret" in r.output and SECRET not in r.output


def test_web_credentials_are_used_but_never_kept(tmp_path):
    site = sc.Server({"/page": (200, {}, sc.page("River", "The Seine is a long river in northern France flowing through Paris to the sea. " * 3))})
    try:
        url = site.base.replace("http://", f"http://reader:{SECRET}@") + f"/page?token={SECRET}&lang=en"
        from rag_lfm.connectors.web import WebConnector

        web = WebConnector(urls=[url], allow_hosts=["127.0.0.1"], cache_path=str(tmp_path / "idx" / "web-cache.json"), timeout_s=3)
        kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(16))
        report = kb.ingest(web, progress=False)
        assert report.added == 1 and site.auth[0] and site.auth[0].startswith("Basic ")  # the credentials were sent
        hit = kb.search("Seine river Paris", k=1)[0]
        assert SECRET not in hit.doc_id and SECRET not in json.dumps(hit.metadata) and "reader" not in hit.doc_id
        assert SECRET not in files_text(kb.path)  # manifest, doc store (ids, metadata, spec), cache file
        r = runner.invoke(app, ["search", str(kb.path), "Seine", "--json"])
        assert r.exit_code == 0 and SECRET not in r.output
    finally:
        site.close()
