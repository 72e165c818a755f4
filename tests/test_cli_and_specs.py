"""The `rag-lfm` CLI end to end (ingest, search, info, delete, sync) and TOML spec validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag_lfm.cli import app
from rag_lfm.connectors.spec import load_spec
from rag_lfm.errors import ConfigError

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def notes(tmp_path):
    d = tmp_path / "notes"
    d.mkdir()
    (d / "monet.md").write_text("Claude Monet painted water lilies in Giverny.")
    (d / "jupiter.txt").write_text("Jupiter is the largest planet of the solar system.")
    (d / "broken.txt").write_bytes(b"\x00\x01binary")
    return d


def test_ingest_search_info_delete_sync(tmp_path, notes):
    idx = str(tmp_path / "idx")
    r = _run("ingest", str(notes), "--index", idx, "--embedder", "hash-64", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    assert rep["added"] == 2 and rep["failed"][0]["ref"] == "broken.txt"

    r = _run("search", idx, "water lilies Monet", "largest planet", "-k", "1", "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)["results"]
    assert [x["hits"][0]["doc_id"] for x in res] == ["monet.md", "jupiter.txt"]

    r = _run("search", idx, "planet", "--filter", '{"type": "txt"}')
    assert r.exit_code == 0 and "jupiter.txt" in r.stdout and "monet.md" not in r.stdout

    r = _run("info", idx)
    assert r.exit_code == 0 and "documents   2" in r.stdout and "hash-64" in r.stdout

    (notes / "jupiter.txt").unlink()
    (notes / "new.md").write_text("A new note about Saturn's rings.")
    r = _run("sync", idx, "--json")
    assert r.exit_code == 0, r.output
    [s] = json.loads(r.stdout.strip().splitlines()[-1])["sources"]
    assert (s["added"], s["deleted"], s["unchanged"]) == (1, 1, 1)

    r = _run("delete", idx, "monet.md", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout) == {"deleted": 1}
    info = json.loads(_run("info", idx, "--json").stdout)
    assert info["counts"]["documents"] == 1


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    r = _run("search", str(tmp_path / "nope"), "q")
    assert r.exit_code == 2 and "is not a directory" in r.output
    r = _run("ingest", str(tmp_path / "missing"), "--index", str(tmp_path / "i"))
    assert r.exit_code == 2 and "does not exist" in r.output
    (tmp_path / "a.txt").write_text("x")
    _run("ingest", str(tmp_path / "a.txt"), "--index", str(tmp_path / "i"), "--embedder", "hash-8")
    r = _run("search", str(tmp_path / "i"), "q", "--filter", "{bad json")
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = _run("search", str(tmp_path / "i"), "q", "--filter", '{"nofield": 1}')
    assert r.exit_code == 2 and "known fields" in r.output


def test_help_everywhere():
    for cmd in ([], ["ingest"], ["search"], ["info"], ["delete"], ["sync"], ["eval"]):
        r = _run(*cmd, "--help")
        assert r.exit_code == 0 and "Usage" in r.output


def test_shipped_specs_are_valid():
    for spec in sorted((REPO / "connectors").glob("*.toml")):
        load_spec(spec)


@pytest.mark.parametrize(
    "body,match",
    [
        ('[source]\ntype = "files"\npath = "."\ncolour = "red"\n', r"unknown key 'colour' = 'red'.*valid keys: encoding, follow_symlinks, glob"),
        ('[source]\ntype = "files"\n', r"needs key 'path'"),
        ('[source]\ntype = "files"\npath = 3\n', r"key 'path' = 3 has type int, expected str"),
        ('[source]\ntype = "nosuch"\n', r"unknown source type 'nosuch'; registered types: .*files"),
        ('[source]\ntype = "wiki-vital"\nlimit = "ten"\n', r"'limit' = 'ten'"),
        ('[index]\npath = "x"\n', r"missing the \[source\] table"),
        ('[source]\ntype = "files"\npath = "."\n[index]\nembeder = "x"\n', r"unknown key \[index\].embeder"),
        ('[source\n', r"not valid TOML"),
    ],
)
def test_bad_specs_name_key_value_and_options(tmp_path, body, match):
    f = tmp_path / "s.toml"
    f.write_text(body)
    with pytest.raises(ConfigError, match=match):
        load_spec(f)
