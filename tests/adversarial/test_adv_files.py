"""Defect 10 of issue 10 (files): symbolic links inside an ingested folder are not followed by default."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rag_lfm import Files
from rag_lfm.cli import app
from rag_lfm.types import Document, Skipped


def make_tree(tmp_path):
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "passwd").write_text("root:x:0:0:private")
    (outside / "deep" / "d.md").write_text("a private note")
    root = tmp_path / "notes"
    (root / "sub").mkdir(parents=True)
    (root / "a.md").write_text("a real note")
    (root / "passwd.txt").symlink_to(outside / "passwd")
    (root / "sub" / "linked").symlink_to(outside, target_is_directory=True)
    return root


def test_symlinks_are_reported_not_followed(tmp_path):
    root = make_tree(tmp_path)
    out = list(Files(str(root)).iter_documents())
    assert [d.id for d in out if isinstance(d, Document)] == ["a.md"]
    skipped = {s.ref: s.reason for s in out if isinstance(s, Skipped)}
    assert set(skipped) == {"passwd.txt", "sub/linked"}
    assert all("symbolic link to" in r and "follow_symlinks=True" in r for r in skipped.values())
    for pattern in ("**/*.txt", "sub/linked/**/*.md", "*"):  # an explicit pattern through a link is no way round
        docs = [d for d in Files(str(root), glob=pattern).iter_documents() if isinstance(d, Document)]
        assert all("private" not in d.text for d in docs), pattern
    followed = [d.id for d in Files(str(root), follow_symlinks=True).iter_documents() if isinstance(d, Document)]
    assert "passwd.txt" in followed


def test_cli_ingest_reports_the_links(tmp_path):
    root = make_tree(tmp_path)
    r = CliRunner().invoke(app, ["ingest", str(root), "--index", str(tmp_path / "idx"), "--embedder", "hash-16", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["added"] == 1 and {f["ref"] for f in report["failed"]} == {"passwd.txt", "sub/linked"}
