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
    assert not docs and "--text-field" in skipped[0].reason and "text_field=" in skipped[0].reason


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


def test_mixed_folder_ingests_every_known_type_with_titles_and_file_metadata(tmp_path):
    from tests.test_connector_pdf import minimal_pdf

    (tmp_path / "guide").mkdir()
    (tmp_path / "guide" / "install.md").write_text("Intro line\n\n## Installing the tool\n\nRun pip.")
    (tmp_path / "notes.txt").write_text("plain notes")
    (tmp_path / "page.html").write_text("<html><body><h1>Release notes</h1><p>v2 is out</p></body></html>")
    (tmp_path / "paper.pdf").write_bytes(minimal_pdf(["Page one text", "Page two text"]))
    (tmp_path / "rows.csv").write_text("id,body\n1,a row\n")
    docs, skipped = _split(list(Files(str(tmp_path), text_field="body", id_field="id").iter_documents()))
    assert not skipped
    by_id = {d.id: d for d in docs}
    assert set(by_id) == {"guide/install.md", "notes.txt", "page.html", "paper.pdf", "1"}
    assert by_id["guide/install.md"].metadata["title"] == "Installing the tool"  # the first Markdown heading
    assert by_id["notes.txt"].metadata["title"] == "notes"  # else the file name, never the path
    assert by_id["page.html"].metadata["title"] == "Release notes"  # no <title>: the first <h1>
    pdf = by_id["paper.pdf"]
    assert "Page one text" in pdf.text and "Page two text" in pdf.text and pdf.metadata["title"] == "paper"
    assert pdf.metadata["pages"] == 2 and pdf.metadata["type"] == "pdf"
    md = by_id["guide/install.md"].metadata
    assert md["folder"] == "guide" and md["path"] == "guide/install.md" and md["type"] == "md"
    assert md["size"] == (tmp_path / "guide" / "install.md").stat().st_size and md["mtime"] > 1.6e9
    assert by_id["notes.txt"].metadata["folder"] == "" and by_id["1"].metadata["path"] == "rows.csv"


def test_a_misspelt_text_field_is_caught_before_anything_is_ingested(tmp_path):
    (tmp_path / "a.csv").write_text("sku,description\n1,blue shirt\n2,red hat\n")
    (tmp_path / "b.jsonl").write_text('{"sku": 3, "description": "green scarf"}\n')
    conn = Files(str(tmp_path), text_field="descripton", id_field="sku")
    with pytest.raises(ConfigError, match=r"text field 'descripton' is in none of the 2 record file\(s\).*'description'.*--text-field"):
        conn.preflight()
    Files(str(tmp_path), text_field="description", id_field="sku").preflight()  # the right name passes
    with pytest.raises(ConfigError, match="id field 'id'"):
        Files(str(tmp_path), text_field="description", id_field="id").preflight()
    # During ingest a CSV without the field is reported once for the file, not once per row.
    skipped = [i for i in Files(str(tmp_path / "a.csv"), text_field="body").iter_documents() if isinstance(i, Skipped)]
    assert len(skipped) == 1 and "header has no text field 'body'" in skipped[0].reason
