"""Defects 9 and 10 of issue 10: metadata field names JSON paths cannot address, hostile filter sizes.

Each test runs on SQLite, PostgreSQL and MariaDB (RAG_LFM_REQUIRE_SERVICES=1 turns their skips into failures).
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase
from rag_lfm.cli import app
from rag_lfm.errors import FilterError

# Keys a JSON path must escape (all must filter exactly), and keys no path can address on every backend.
ESCAPED = ["a.b", "a'b", "a b", "ключ", "a\\b", "a[0]", "a$", "a*b", "tab\tkey", "x-y", "emoji😀"]
REFUSED = ['a"b', "-x", "$x"]


@pytest.fixture
def kb(tmp_path, docstore_url, unique_prefix):
    kb = KnowledgeBase.create(tmp_path / "idx", embedder=HashEmbedder(32), docstore=docstore_url, table_prefix=unique_prefix)
    docs = [Document(f"d{i}", f"document {i} about things w{i}", {key: f"v{i % 3}" for key in ESCAPED + REFUSED} | {"n": i})
            for i in range(30)]
    kb.ingest(InMemory(docs, name="s"), progress=False)
    yield kb
    if docstore_url:
        kb.docstore.drop_tables()
    kb.close()


def test_field_names_filter_exactly_or_are_refused_with_the_fix(kb):
    for key in ESCAPED:
        hits = kb.search("document", k=30, filter={key: "v1"})
        assert sorted(h.doc_id for h in hits) == sorted(f"d{i}" for i in range(30) if i % 3 == 1), key
        assert len(kb.search("document", k=30, filter={key: {"$ne": "v1"}})) == 20, key
    for key in REFUSED:
        with pytest.raises(FilterError, match=r"cannot be filtered|unknown filter operator '\$x'.*cannot be filtered"):
            kb.search("document", k=5, filter={key: "v1"})
    assert not set(REFUSED) & set(kb.info()["fields"])  # not listed as filterable ...
    assert kb.search("document 4", k=1)[0].metadata['a"b'] == "v1"  # ... but kept in the metadata


def test_hostile_filter_sizes_get_clear_errors_without_sql(kb):
    deep: dict = {"n": 1}
    for _ in range(5000):
        deep = {"$not": deep}
    cases = [
        (deep, "nested more than 32 levels"),
        ({"$or": [{"n": i} for i in range(5000)]}, "more than 256 field conditions"),
        ({"n": {"$in": list(range(50_000))}}, "more than 30000 values"),
    ]
    for flt, match in cases:
        with pytest.raises(FilterError, match=match) as err:
            kb.search("document", k=3, filter=flt)
        assert "SELECT" not in str(err.value) and "[SQL" not in str(err.value)
    # The largest filters the limits allow run on every backend.
    wide = {"$or": [{"n": i} for i in range(250)]}
    assert len(kb.search("document", k=30, filter=wide)) == 30
    many = {"n": {"$in": list(range(29_000))}}
    assert len(kb.search("document", k=30, filter=many)) == 30
    nested: dict = {"n": {"$lt": 10}}
    for _ in range(15):
        nested = {"$not": {"$not": nested}}
    assert len(kb.search("document", k=30, filter=nested)) == 10


def test_cli_filter_nested_past_the_json_parser(kb):
    text = '{"$not": ' * 100_000 + '{"n": 1}' + "}" * 100_000
    r = CliRunner().invoke(app, ["search", str(kb.path), "document", "--filter", text])
    assert r.exit_code == 2 and "nested too deeply" in r.output and "Traceback" not in r.output
