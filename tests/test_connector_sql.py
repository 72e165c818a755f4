"""SqlConnector against the real PostgreSQL and MariaDB on 127.0.0.1 and against SQLite.

Every test creates its own uniquely named table and drops it. A server that can't be
reached skips its tests with the reason, unless RAG_LFM_REQUIRE_SERVICES=1 (CI with the
services up), where it fails.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from rag_lfm.connectors.base import make_connector
from rag_lfm.connectors.sql import SqlConnector
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.types import Document, Skipped

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MY_URL = "mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"


def _engine_or_skip(url: str) -> sa.Engine:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any driver/connection error means "service down"
        engine.dispose()
        msg = f"{url} unreachable: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        if os.environ.get("RAG_LFM_REQUIRE_SERVICES") == "1":
            pytest.fail(msg + " (RAG_LFM_REQUIRE_SERVICES=1)")
        pytest.skip(msg)
    return engine


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def db(request, tmp_path):
    """(url, engine, dialect) of one backend; PostgreSQL and MariaDB are marked services."""
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'src.db'}"
        engine = sa.create_engine(url)
    else:
        request.applymarker(pytest.mark.services)
        engine = _engine_or_skip(PG_URL if kind == "postgresql" else MY_URL)
        url = PG_URL if kind == "postgresql" else MY_URL
    yield url, engine, kind
    engine.dispose()


@pytest.fixture
def table_name(db):
    name = f"rl_{uuid.uuid4().hex[:10]}"
    yield name
    with db[1].begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


def _make_table(engine: sa.Engine, name: str) -> sa.Table:
    md = sa.MetaData()
    long_text = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
    table = sa.Table(
        name,
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("title", sa.String(200)),
        sa.Column("body", long_text),
        sa.Column("topic", sa.String(100)),
        sa.Column("score", sa.Float),
        sa.Column("updated_at", sa.DateTime),
        mysql_charset="utf8mb4",
    )
    md.create_all(engine)
    return table


def _insert(engine: sa.Engine, table: sa.Table, rows: list[dict]) -> None:
    """executemany needs the same keys in every row: absent columns are NULL."""
    cols = [c.name for c in table.columns]
    with engine.begin() as conn:
        conn.execute(table.insert(), [{c: r.get(c) for c in cols} for r in rows])


NASTY = [
    ("quotes", "It's a \"quoted\" `thing`; DROP TABLE x; --", "O'Reilly"),
    ("emoji", "Café 😀 naïve 中文 🚀 — done", "日本語 🎌"),
    ("backslash", "C:\\path\\n not a newline \\x00 literal", "tab\there"),
    ("injection", "x' OR '1'='1", "x' OR '1'='1"),
]


def test_round_trip_of_quotes_nul_emoji_and_long_values(db, table_name):
    url, engine, kind = db
    table = _make_table(engine, table_name)
    t0 = dt.datetime(2024, 5, 6, 7, 8, 9)
    long_body = ("0123456789abcdef😀" * 70_000)[:1_000_000]  # 1M characters, 4-byte chars inside
    rows = [
        {"id": i, "title": f"t-{name}", "body": body, "topic": topic, "score": 0.5 + i, "updated_at": t0}
        for i, (name, body, topic) in enumerate(NASTY, start=1)
    ]
    rows.append({"id": 10, "title": "long", "body": long_body, "topic": "long", "score": None, "updated_at": None})
    # PostgreSQL text can't hold NUL bytes (the server refuses them); SQLite and MariaDB can.
    nul_body = "before\x00after\x00"
    if kind != "postgresql":
        rows.append({"id": 11, "title": "nul", "body": nul_body, "topic": "a\x00b", "score": 1.0, "updated_at": t0})
    _insert(engine, table, rows)

    conn_ = SqlConnector(
        url=url, table=table_name, id_column="id", text_columns=["title", "body"],
        metadata_columns=["topic", "score", "updated_at"], batch_size=2,
    )
    docs = list(conn_.iter_documents())
    assert all(isinstance(d, Document) for d in docs)
    by_id = {d.id: d for d in docs}
    assert sorted(by_id) == sorted(str(r["id"]) for r in rows)
    for r in rows:
        d = by_id[str(r["id"])]
        assert d.text == f"{r['title']}\n\n{r['body']}"
        assert d.metadata["topic"] == r["topic"]
        assert d.metadata["score"] == r["score"]
        assert d.metadata["updated_at"] == (r["updated_at"].isoformat() if r["updated_at"] else None)
    assert len(by_id["10"].text) == len("long\n\n") + 1_000_000
    if kind != "postgresql":
        assert by_id["11"].text.endswith(nul_body) and by_id["11"].metadata["topic"] == "a\x00b"
    else:
        with pytest.raises(sa.exc.DataError, match="NUL|0x00"), engine.begin() as conn:
            conn.execute(table.insert(), [{"id": 11, "title": "nul", "body": nul_body}])


def test_filter_values_are_bound_parameters(db, table_name):
    url, engine, _ = db
    table = _make_table(engine, table_name)
    _insert(engine, table, [
            {"id": 1, "title": "a", "body": "alpha", "topic": "x"},
            {"id": 2, "title": "b", "body": "beta", "topic": "x' OR '1'='1"},
            {"id": 3, "title": "c", "body": "gamma", "topic": "y"},
        ])
    evil = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                        where={"topic": "x' OR '1'='1"})
    assert [d.id for d in evil.iter_documents()] == ["2"]  # the literal value, not a tautology
    nothing = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                           where={"topic": "' OR 1=1 --"})
    assert list(nothing.iter_documents()) == []
    many = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                        where={"topic": ["x", "y", "z' OR 'a'='a"]})
    assert [d.id for d in many.iter_documents()] == ["1", "3"]
    # identifiers are checked against the table: a filter on an unknown column is refused
    with pytest.raises(ConfigError, match=r"not in table.*its columns are: id, title, body"):
        list(SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                          where={"topic = topic OR 1": 1}).iter_documents())


def test_template_metadata_and_skipped_rows(db, table_name):
    url, engine, _ = db
    table = _make_table(engine, table_name)
    _insert(engine, table, [
            {"id": 1, "title": "Paris", "body": "Capital of France.", "topic": "geo", "score": 2.5},
            {"id": 2, "title": None, "body": None, "topic": "empty"},
            {"id": 3, "title": "Rome", "body": None, "topic": "geo"},
        ])
    c = make_connector("sql", url=url, table=table_name, id_column="id", text_columns=["title", "body"],
                       text_template="# {title} ({topic})\n{body}", metadata_columns=["topic"])
    items = {(i.id if isinstance(i, Document) else i.ref): i for i in c.iter_documents()}
    assert items["1"].text == "# Paris (geo)\nCapital of France."
    assert items["3"].text == "# Rome (geo)\n"
    # a template always renders something, so an all-NULL row is only skipped with the plain join
    plain = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["title", "body"])
    out = list(plain.iter_documents())
    skipped = [i for i in out if isinstance(i, Skipped)]
    assert [s.ref for s in skipped] == ["2"] and "no text" in skipped[0].reason
    assert [d.text for d in out if isinstance(d, Document)] == ["Paris\n\nCapital of France.", "Rome"]


def test_query_with_params_and_incremental_watermark(db, table_name):
    url, engine, _ = db
    table = _make_table(engine, table_name)
    base = dt.datetime(2024, 1, 1)
    _insert(engine, table, [
            {"id": i, "title": f"t{i}", "body": f"body {i}", "topic": "even" if i % 2 == 0 else "odd",
             "updated_at": base + dt.timedelta(days=i)}
            for i in range(1, 11)
        ])
    q = SqlConnector(url=url, query=f"SELECT id, body, topic FROM {table_name} WHERE topic = :t",
                     params={"t": "even"}, id_column="id", text_columns=["body"], metadata_columns=["topic"],
                     where={"id": [2, 4, 5]})
    assert [d.id for d in q.iter_documents()] == ["2", "4"]
    assert q.source_id.startswith("sql:") and q.complete

    full = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                        updated_at_column="updated_at", name="shop")
    assert full.source_id == "shop" and full.complete
    assert len(list(full.iter_documents())) == 10
    assert full.watermark == (base + dt.timedelta(days=10)).isoformat()

    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == 3).values(body="edited", updated_at=base + dt.timedelta(days=30)))
    inc = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                       updated_at_column="updated_at", since=full.watermark)
    assert inc.complete is False  # a partial pull: deletions must not be inferred from it
    assert [(d.id, d.text) for d in inc.iter_documents()] == [("3", "edited")]
    assert inc.watermark == (base + dt.timedelta(days=30)).isoformat()
    again = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"],
                         updated_at_column="updated_at", since=inc.watermark)
    assert list(again.iter_documents()) == [] and again.watermark == inc.watermark


def test_streams_ten_thousand_rows_in_batches(db, table_name):
    url, engine, kind = db
    table = _make_table(engine, table_name)
    n = 12_000
    _insert(engine, table, [{"id": i, "title": f"title {i}", "body": f"row {i} 😀 it's"} for i in range(n)])
    opts = {"connect_args": {"application_name": table_name}} if kind == "postgresql" else None
    c = SqlConnector(url=url, table=table_name, id_column="id", text_columns=["body"], batch_size=500,
                     engine_options=opts)
    it = c.iter_documents()
    try:
        first = next(it)
        assert first.id == "0"
        if kind == "postgresql":
            # stream_results must have opened a server-side (named) cursor, not fetched the table
            with engine.connect() as probe:
                last = probe.execute(sa.text(
                    "SELECT query FROM pg_stat_activity WHERE application_name = :a"), {"a": table_name}).scalars().all()
            assert last and last[0].startswith(("DECLARE", "FETCH FORWARD 499")), last
        rest = list(it)
    finally:
        it.close()  # an open cursor would hold a lock that blocks the table's DROP
    ids = [first.id] + [d.id for d in rest]
    assert len(ids) == n and len(set(ids)) == n
    assert ids == sorted(ids, key=int)  # ordered by the id column
    assert c.rows_read == n


def test_errors_name_the_input(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    with pytest.raises(ConfigError, match="exactly one of table= or query="):
        SqlConnector(url=url, id_column="id", text_columns=["b"])
    with pytest.raises(ConfigError, match="exactly one of table= or query="):
        SqlConnector(url=url, table="t", query="SELECT 1", id_column="id", text_columns=["b"])
    with pytest.raises(ConfigError, match=r"uses \['nope'\].*valid fields: \['b'\]"):
        SqlConnector(url=url, table="t", id_column="id", text_columns=["b"], text_template="{nope}")
    with pytest.raises(ConfigError, match="since=.*needs updated_at_column"):
        SqlConnector(url=url, table="t", id_column="id", text_columns=["b"], since="2024-01-01")
    with pytest.raises(SourceError, match="table='missing' could not be read"):
        list(SqlConnector(url=url, table="missing", id_column="id", text_columns=["b"]).iter_documents())
    with pytest.raises(ConfigError, match="is not a SQLAlchemy URL"):
        SqlConnector(url="not a url", table="t", id_column="id", text_columns=["b"])


@pytest.mark.services
def test_connection_dropped_midway_raises_source_error_naming_progress():
    engine = _engine_or_skip(PG_URL)
    name = f"rl_{uuid.uuid4().hex[:10]}"
    try:
        table = _make_table(engine, name)
        with engine.begin() as conn:
            conn.execute(table.insert(), [{"id": i, "body": f"row {i}"} for i in range(3000)])
        c = SqlConnector(url=PG_URL, table=name, id_column="id", text_columns=["body"], batch_size=100,
                         engine_options={"connect_args": {"application_name": name}})
        it = c.iter_documents()
        got = [next(it) for _ in range(50)]
        with engine.begin() as admin:
            pids = admin.execute(sa.text(
                "SELECT pid FROM pg_stat_activity WHERE application_name = :a"), {"a": name}).scalars().all()
            assert pids
            for pid in pids:
                admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        time.sleep(0.2)
        with pytest.raises(SourceError, match=r"failed after id '\d+' \(\d+ rows read\)"):
            for d in it:
                got.append(d)
        assert 50 <= len(got) < 3000
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


def test_unreachable_server_is_a_source_error():
    # port 9 (discard) on loopback: nothing listens there, the connection is refused at once
    c = SqlConnector(url="postgresql+psycopg://postgres@127.0.0.1:9/test", table="t", id_column="id",
                     text_columns=["b"], engine_options={"connect_args": {"connect_timeout": 2}})
    with pytest.raises(SourceError, match="could not be read|failed"):
        list(c.iter_documents())



def test_url_env_keeps_passwords_out_of_specs(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'e.db'}"
    engine = sa.create_engine(url)
    _insert(engine, _make_table(engine, "t"), [{"id": 1, "body": "hello"}])
    monkeypatch.setenv("RL_TEST_DB_URL", url)
    c = SqlConnector(url_env="RL_TEST_DB_URL", table="t", id_column="id", text_columns=["body"])
    assert [d.text for d in c.iter_documents()] == ["hello"]
    with pytest.raises(ConfigError, match="RL_UNSET_URL.*not set"):
        SqlConnector(url_env="RL_UNSET_URL", table="t", id_column="id", text_columns=["body"])
    with pytest.raises(ConfigError, match="exactly one of url= or url_env="):
        SqlConnector(url=url, url_env="RL_TEST_DB_URL", table="t", id_column="id", text_columns=["body"])
    engine.dispose()


def test_example_specs_validate_and_reject_bad_keys(tmp_path):
    from pathlib import Path

    import rag_lfm.connectors.pdf  # noqa: F401 - registers "pdf" (also done by rag_lfm.connectors)
    import rag_lfm.connectors.web  # noqa: F401 - registers "web"
    from rag_lfm.connectors.spec import load_spec

    root = Path(__file__).resolve().parents[1] / "connectors"
    for name, kind in [("postgres-example.toml", "sql"), ("sitemap-example.toml", "web"), ("pdf-folder.toml", "pdf")]:
        assert load_spec(root / name)["source"]["type"] == kind
    bad = tmp_path / "bad.toml"
    base = 'type = "sql"\nurl = "sqlite://"\nid_column = "id"\ntext_columns = ["b"]\n'
    bad.write_text('[source]\n' + base + 'tabel = "x"\n')
    with pytest.raises(ConfigError, match="unknown key 'tabel'.*valid keys: .*table"):
        load_spec(bad)
    bad.write_text('[source]\n' + base + 'batch_size = "big"\n')
    with pytest.raises(ConfigError, match="'batch_size' = 'big'.*expected int"):
        load_spec(bad)
    bad.write_text('[source]\ntype = "sql"\nurl = "sqlite://"\ntext_columns = ["b"]\n')
    with pytest.raises(ConfigError, match="needs key 'id_column'"):
        load_spec(bad)


@pytest.mark.services
def test_postgres_example_spec_through_the_cli(tmp_path):
    """`rag-lfm ingest connectors/postgres-example.toml` then `rag-lfm sync` after row deletes."""
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from rag_lfm.cli import app

    engine = _engine_or_skip(PG_URL)
    name = "rag_lfm_example_articles"  # the table the example spec names
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(sa.text(f"CREATE TABLE {name} (id serial PRIMARY KEY, title text, body text, topic text, "
                             "updated_at timestamptz DEFAULT now())"))
        conn.execute(sa.text(f"INSERT INTO {name} (title, body, topic) VALUES (:t, :b, :c)"),
                     [{"t": f"Title {i}", "b": f"Body {i} about item{i}, it's here 😀", "c": "A" if i % 2 else "B"}
                      for i in range(30)])
    try:
        spec = Path(__file__).resolve().parents[1] / "connectors" / "postgres-example.toml"
        idx = str(tmp_path / "pg")
        runner = CliRunner()
        res = runner.invoke(app, ["ingest", str(spec), "--index", idx, "--embedder", "hash-64", "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.output.strip().splitlines()[-1])["added"] == 30
        with engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {name} WHERE id <= 5"))
            conn.execute(sa.text(f"UPDATE {name} SET body = 'changed' WHERE id = 10"))
        res = runner.invoke(app, ["sync", idx, "--json"])
        assert res.exit_code == 0, res.output
        (rep,) = json.loads(res.output.strip().splitlines()[-1])["sources"]
        assert (rep["source_id"], rep["deleted"], rep["updated"], rep["unchanged"]) == ("pg-articles", 5, 1, 24)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


def test_describe_rebuilds_the_connector_and_never_records_a_password(tmp_path):
    from rag_lfm.connectors.spec import connector_from_source

    url = f"sqlite:///{tmp_path / 'e.db'}"
    c = SqlConnector(url=url, table="t", id_column="id", text_columns=["body"], where={"topic": "x"}, batch_size=7)
    again = connector_from_source(c.describe())
    assert (again.source_id, again.where, again.batch_size, again.url) == (c.source_id, {"topic": "x"}, 7, url)
    secret = SqlConnector(url="postgresql+psycopg://u:hunter2@127.0.0.1/db", table="t", id_column="id",
                          text_columns=["b"])
    assert secret.describe() is None
