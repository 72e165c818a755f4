from __future__ import annotations

import json

import pytest

from rag_lfm.connectors.files import Files
from rag_lfm.errors import ConfigError
from rag_lfm.types import Document, Skipped


def _split(items):
    docs = [i for i in items if isinstance(i, Document)]
    skipped = [i for i in items if isinstance(i, Skipped)]
    return docs, skipped


def test_text_markdown_html(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# Title\n\nSome *markdown*.")
    (tmp_path / "c.html").write_text(
        "<html><head><title>Page</title><style>p{color:red}</style><script>var x=1;</script></head>"
        "<body><nav>menu</nav><p>Hello &amp; welcome</p><p>second paragraph</p></body></html>"
    )
    docs, skipped = _split(list(Files(str(tmp_path)).iter_documents()))
    assert not skipped
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {"a.txt", "sub/b.md", "c.html"}
    html = by_id["c.html"]
    assert html.text == "Hello & welcome\nsecond paragraph"  # scripts, styles, nav dropped; entities decoded
    assert html.metadata["title"] == "Page"


def test_records_json_jsonl_csv_with_field_mapping(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps([{"id": 1, "body": "first", "topic": "A"}, {"id": 2, "body": "second", "topic": "B"}]))
    (tmp_path / "r.jsonl").write_text('{"id": 3, "body": "third", "topic": "C"}\n{not json}\n{"id": 4, "topic": "D"}\n')
    (tmp_path / "r.csv").write_text('id,body,topic\n5,"fifth, with comma",E\n6,sixth,F,extra\n')
    conn = Files(str(tmp_path), text_field="body", id_field="id")
    docs, skipped = _split(list(conn.iter_documents()))
    assert {d.id: d.text for d in docs} == {"1": "first", "2": "second", "3": "third", "5": "fifth, with comma"}
    assert {d.id: d.metadata["topic"] for d in docs} == {"1": "A", "2": "B", "3": "C", "5": "E"}
    reasons = {s.ref: s.reason for s in skipped}
    assert "invalid JSON line" in reasons["r.jsonl:2"]
    assert "no text field 'body'" in reasons["r.jsonl:3"]
    assert "fields but the header has 3" in reasons["r.csv:3"]


def test_records_without_text_field_are_reported(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n")
    docs, skipped = _split(list(Files(str(tmp_path)).iter_documents()))
    assert not docs and "pass text_field=" in skipped[0].reason


def test_binary_undecodable_and_unsupported_files_are_skipped_with_reasons(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01binary")
    (tmp_path / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    docs, skipped = _split(list(Files(str(tmp_path), glob="*").iter_documents()))
    assert [d.id for d in docs] == ["ok.txt"]
    reasons = {s.ref: s.reason for s in skipped}
    assert "binary" in reasons["bin.txt"]
    assert "not valid utf-8" in reasons["latin.txt"]
    assert "unsupported file type '.png'" in reasons["img.png"]


def test_unreadable_file_is_skipped(tmp_path):
    import os

    f = tmp_path / "secret.txt"
    f.write_text("x")
    f.chmod(0)
    try:
        docs, skipped = _split(list(Files(str(tmp_path)).iter_documents()))
        if os.geteuid() == 0:  # root reads anything: nothing to skip
            assert [d.id for d in docs] == ["secret.txt"]
        else:
            assert "cannot read" in skipped[0].reason
    finally:
        f.chmod(0o644)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Files(str(tmp_path / "nope"))


def test_single_file_and_stable_ids(tmp_path):
    f = tmp_path / "one.md"
    f.write_text("hello")
    a = list(Files(str(f)).iter_documents())
    b = list(Files(str(f)).iter_documents())
    assert a == b and a[0].id == "one.md"
    assert a[0].content_hash == b[0].content_hash
    f.write_text("hello again")
    assert list(Files(str(f)).iter_documents())[0].content_hash != a[0].content_hash
