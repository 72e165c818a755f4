"""PdfConnector on PDFs the test writes itself: text pages, an empty page, encrypted, broken."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

import pypdf
import pytest

from rag_lfm.connectors.base import make_connector
from rag_lfm.connectors.pdf import PdfConnector
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.types import Document, Skipped


def minimal_pdf(pages: list[str], title: str = "") -> bytes:
    """A valid PDF, one page per string (empty string -> a page without text), Helvetica text."""
    objs: list[bytes] = []
    n = len(pages)
    # 1: catalog, 2: pages, 3: font, then per page: page object + content stream, last: info
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objs.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objs.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    objs.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    for i, text in enumerate(pages):
        lines = [ln.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for ln in text.split("\n")]
        ops = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({ln}) '" for ln in lines if ln) + " ET" if text else ""
        stream = ops.encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    objs.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num, body in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, len(objs), xref)
    return bytes(out)


def encrypt(data: bytes, user_password: str, path: Path) -> None:
    import io

    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(data)))
    # RC4-128 needs no optional crypto package (AES would need `cryptography`)
    writer.encrypt(user_password=user_password, owner_password="owner-" + user_password, algorithm="RC4-128")
    with open(path, "wb") as fh:
        writer.write(fh)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "pdfs"
    (root / "sub").mkdir(parents=True)
    (root / "report.pdf").write_bytes(minimal_pdf(
        ["Paris is the capital of France.\nIt lies on the Seine.", "", "Page three speaks of Lyon (and Rhone)."],
        title="Annual report"))
    (root / "sub" / "notes.pdf").write_bytes(minimal_pdf(["Only one page here."]))
    encrypt(minimal_pdf(["Secret plans of the heist."]), "", root / "open-encrypted.pdf")
    encrypt(minimal_pdf(["Locked text."]), "hunter2", root / "locked.pdf")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\ngarbage")
    (root / "truncated.pdf").write_bytes(minimal_pdf(["cut here"])[:60])
    (root / "readme.txt").write_text("not a pdf")
    return root


def split(items):
    return [i for i in items if isinstance(i, Document)], [i for i in items if isinstance(i, Skipped)]


def test_pages_with_page_numbers_and_failures_reported(folder: Path):
    conn = PdfConnector(path=str(folder))
    docs, skipped = split(list(conn.iter_documents()))
    by_id = {d.id: d for d in docs}
    assert sorted(by_id) == ["open-encrypted.pdf#page=1", "report.pdf#page=1", "report.pdf#page=3",
                             "sub/notes.pdf#page=1"]
    p1 = by_id["report.pdf#page=1"]
    assert "Paris is the capital of France." in p1.text and "Seine" in p1.text
    assert p1.metadata == {"path": "report.pdf", "page": 1, "pages": 3, "title": "Annual report"}
    assert "Lyon (and Rhone)" in by_id["report.pdf#page=3"].text
    assert "Secret plans" in by_id["open-encrypted.pdf#page=1"].text  # empty user password opens it
    reasons = {s.ref: s.reason for s in skipped}
    assert set(reasons) == {"report.pdf#page=2", "locked.pdf", "broken.pdf", "truncated.pdf"}
    assert "no extractable text" in reasons["report.pdf#page=2"]
    assert "encrypted" in reasons["locked.pdf"] and "password=" in reasons["locked.pdf"]
    assert "not a readable PDF" in reasons["broken.pdf"] and "not a readable PDF" in reasons["truncated.pdf"]


def test_password_and_per_file_mode(folder: Path):
    conn = make_connector("pdf", path=str(folder), per="file", password="hunter2", pattern="*.pdf")
    docs, skipped = split(list(conn.iter_documents()))
    by_id = {d.id: d for d in docs}
    assert sorted(by_id) == ["locked.pdf", "open-encrypted.pdf", "report.pdf"]  # pattern is not recursive
    assert "Locked text." in by_id["locked.pdf"].text
    rep = by_id["report.pdf"]
    starts = rep.metadata["page_starts"]
    assert rep.metadata["pages"] == 3 and len(starts) == 3
    # page_starts maps a character offset back to its page
    assert bisect_right(starts, rep.text.index("Lyon")) == 3
    assert bisect_right(starts, rep.text.index("Paris")) == 1
    assert {s.ref for s in skipped} == {"broken.pdf", "truncated.pdf"}


def test_single_file_and_errors(folder: Path, tmp_path: Path):
    one = PdfConnector(path=str(folder / "sub" / "notes.pdf"), name="notes")
    assert one.source_id == "notes"
    assert [d.id for d in one.iter_documents()] == ["notes.pdf#page=1"]
    with pytest.raises(ConfigError, match="per='chapter' is not valid; valid options: 'page', 'file'"):
        PdfConnector(path=str(folder), per="chapter")
    with pytest.raises(SourceError, match="does not exist"):
        list(PdfConnector(path=str(tmp_path / "nowhere")).iter_documents())


def test_describe_rebuilds_the_connector(folder: Path):
    from rag_lfm.connectors.spec import connector_from_source

    c = PdfConnector(path=str(folder), per="file", password="hunter2")
    again = connector_from_source(c.describe())
    assert (again.source_id, again.per, again.password) == (c.source_id, "file", None)  # passwords are not recorded
