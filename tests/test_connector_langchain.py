"""LangChainConnector over real langchain_community loaders (TextLoader, CSVLoader, DirectoryLoader)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("langchain_community", reason="LangChain is an optional extra: pip install 'rag-lfm[langchain]'")

from langchain_community.document_loaders import CSVLoader, DirectoryLoader, TextLoader  # noqa: E402
from langchain_core.document_loaders import BaseLoader  # noqa: E402
from langchain_core.documents import Document as LCDocument  # noqa: E402

from rag_lfm.connectors.base import make_connector  # noqa: E402
from rag_lfm.connectors.langchain import LangChainConnector  # noqa: E402
from rag_lfm.errors import ConfigError, SourceError  # noqa: E402
from rag_lfm.types import Document, Skipped  # noqa: E402


def test_text_loader_instance(tmp_path: Path):
    f = tmp_path / "notes.txt"
    f.write_text("Paris is the capital of France. 😀 It's \"quoted\".", encoding="utf-8")
    conn = LangChainConnector(loader=TextLoader(str(f), encoding="utf-8"), name="notes")
    docs = list(conn.iter_documents())
    assert conn.source_id == "notes" and conn.complete
    assert docs == [Document(id=f"source={f}", text=f.read_text("utf-8"), metadata={"source": str(f)})]


def test_csv_loader_from_import_path_gives_stable_row_ids(tmp_path: Path):
    f = tmp_path / "faq.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question", "answer"])
        w.writerow(["Where is Paris?", "In France, on the Seine."])
        w.writerow(["O'Reilly?", "A publisher; x' OR '1'='1"])
        w.writerow(["Emoji?", "🚀"])
    spec = {"loader": "langchain_community.document_loaders.CSVLoader",
            "loader_kwargs": {"file_path": str(f), "encoding": "utf-8"}}
    conn = make_connector("langchain", **spec)
    docs = list(conn.iter_documents())
    assert [d.id for d in docs] == [f"source={f}|row={i}" for i in range(3)]
    assert docs[1].text == "question: O'Reilly?\nanswer: A publisher; x' OR '1'='1"
    assert docs[2].metadata == {"source": str(f), "row": 2}
    # the default source id is derived from the loader's settings: same file -> same id
    again = make_connector("langchain", **spec)
    assert again.source_id == conn.source_id and conn.source_id.startswith("langchain:CSVLoader-")
    other = LangChainConnector(loader=CSVLoader(str(tmp_path / "other.csv")))
    assert other.source_id != conn.source_id


def test_directory_loader_and_duplicate_ids(tmp_path: Path):
    (tmp_path / "d").mkdir()
    for name in ["a", "b", "c"]:
        (tmp_path / "d" / f"{name}.txt").write_text(f"document {name}", encoding="utf-8")
    (tmp_path / "d" / "empty.txt").write_text("   ", encoding="utf-8")
    loader = DirectoryLoader(str(tmp_path / "d"), glob="*.txt", loader_cls=TextLoader)
    items = list(LangChainConnector(loader=loader, name="dir").iter_documents())
    docs = sorted(d.id.rsplit("/", 1)[1] for d in items if isinstance(d, Document))
    assert docs == ["a.txt", "b.txt", "c.txt"]
    assert [s.ref.rsplit("/", 1)[1] for s in items if isinstance(s, Skipped)] == ["empty.txt"]

    class Dups(BaseLoader):
        def lazy_load(self):
            yield LCDocument(page_content="one", metadata={"source": "same"})
            yield LCDocument(page_content="two", metadata={"source": "same"})
            yield LCDocument(page_content="three", metadata={"when": object()})
            yield LCDocument(page_content="four", id="explicit-id")

    out = list(LangChainConnector(loader=Dups(), name="dups", id_keys=["source"]).iter_documents())
    assert [d.id for d in out] == ["source=same", "source=same#2", "3", "explicit-id"]
    assert isinstance(out[2].metadata["when"], str)  # non-JSON metadata made printable


def test_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="not a langchain_core BaseLoader"):
        LangChainConnector(loader=object(), name="x")
    with pytest.raises(ConfigError, match="has no 'NoSuchLoader'"):
        LangChainConnector(loader="langchain_community.document_loaders.NoSuchLoader")
    with pytest.raises(ConfigError, match="not a langchain_core BaseLoader subclass"):
        LangChainConnector(loader="pathlib.Path")
    with pytest.raises(ConfigError, match="don't fit TextLoader"):
        LangChainConnector(loader="langchain_community.document_loaders.TextLoader", loader_kwargs={"nope": 1})
    missing = LangChainConnector(loader=TextLoader(str(tmp_path / "missing.txt")), name="m")
    with pytest.raises(SourceError, match="TextLoader of source 'm' failed after 0 documents"):
        list(missing.iter_documents())


def test_describe_rebuilds_an_import_path_loader(tmp_path: Path):
    from rag_lfm.connectors.spec import connector_from_source

    f = tmp_path / "n.txt"
    f.write_text("hello", encoding="utf-8")
    c = LangChainConnector(loader="langchain_community.document_loaders.TextLoader",
                           loader_kwargs={"file_path": str(f)}, name="n")
    again = connector_from_source(c.describe())
    assert again.source_id == "n" and [d.text for d in again.iter_documents()] == ["hello"]
    assert LangChainConnector(loader=TextLoader(str(f))).describe() is None
