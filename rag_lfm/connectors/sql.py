"""SQL connector: one table (or one query) of any SQLAlchemy database becomes a source.

Each row is a Document: its id is the ``id_column`` value, its text the ``text_columns``
joined (or rendered through ``text_template``), its metadata the ``metadata_columns``.
Rows are streamed in batches of ``batch_size`` through a server-side cursor
(``stream_results=True``: a named cursor on PostgreSQL, ``SSCursor`` on MySQL/MariaDB),
so a table of any size is read in constant memory.

Identifiers (table and column names) come from the spec, never from end users, and are
still checked against the reflected table; every *value* (``where`` filters, the
``since`` watermark, ``params`` of a query) is a bound parameter, so a filter value of
``x' OR '1'='1`` is compared as that literal string.

Incremental pulls: with ``updated_at_column`` and ``since`` only rows changed after
``since`` are read; such a connector is not ``complete`` (deletions can't be inferred
from a partial pull) and exposes the newest value it saw as ``watermark`` for the next
pull.

Example:
    >>> conn = SqlConnector(url="sqlite:///shop.db", table="products", id_column="sku",
    ...                     text_columns=["name", "description"],
    ...                     metadata_columns=["category"])          # doctest: +SKIP
    >>> for doc in conn.iter_documents(): ...                       # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import decimal
import hashlib
import os
import string
import uuid
from collections.abc import Iterator
from typing import Any

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.redaction import redact
from rag_lfm.types import Document, Skipped


def _json_safe(value: Any) -> Any:
    """Turn a driver value into something JSON (and so the doc store and filters) can hold."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        # integral decimals (NUMERIC ids, counts) stay exact as int; others become float
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw.hex()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


class SqlConnector:
    """Rows of a SQL table or query as Documents, streamed with a server-side cursor.

    Args:
        url: SQLAlchemy database URL, e.g. ``"postgresql+psycopg://postgres@127.0.0.1:5432/test"``,
            ``"mysql+pymysql://root@127.0.0.1:3306/test?charset=utf8mb4"``, ``"sqlite:///data.db"``.
        url_env: instead of ``url``, the name of an environment variable holding it, so a
            password never sits in a spec file (nor in the index's record of its sources).
        table: the table to read (``schema.table`` allowed). Exactly one of ``table``/``query``.
        query: a SELECT whose result is read like a table (its columns are the names below).
        id_column: column whose value is the document id (unique per row).
        text_columns: columns whose values make the text, joined by ``text_separator``.
        text_template: optional ``str.format`` template over ``text_columns`` and
            ``metadata_columns``, e.g. ``"{title}\\n\\n{body}"``; replaces the plain join.
        text_separator: separator of the plain join (default a blank line).
        metadata_columns: columns copied into ``Document.metadata`` (filterable at search time).
        updated_at_column: a timestamp/number column that grows when a row changes; with
            ``since`` only rows with a larger value are read.
        since: the watermark of the previous pull (ISO timestamp or number as text); needs
            ``updated_at_column``. Makes the pull incremental (``complete`` is then False).
        where: equality filters ``{column: value}`` ANDed together; values are bound
            parameters (never spliced into SQL). A list value means ``IN``.
        params: bound parameters of ``query`` (``:name`` placeholders).
        batch_size: rows fetched per round trip of the server-side cursor.
        name: the source id; default ``"sql:<database>/<table>"``.
        engine_options: extra keyword arguments of ``sqlalchemy.create_engine``.

    Attributes:
        source_id: stable id of this source in an index.
        complete: True unless ``since`` is set.
        watermark: after a full iteration with ``updated_at_column``, the largest value seen
            (as text), to pass as ``since`` next time; None before.
        rows_read: rows read by the last iteration.
    """

    def __init__(
        self,
        *,
        id_column: str,
        text_columns: list[str],
        url: str | None = None,
        url_env: str | None = None,
        table: str | None = None,
        query: str | None = None,
        text_template: str | None = None,
        text_separator: str = "\n\n",
        metadata_columns: list[str] | None = None,
        updated_at_column: str | None = None,
        since: str | None = None,
        where: dict[str, Any] | None = None,
        params: dict[str, Any] | None = None,
        batch_size: int = 1000,
        name: str | None = None,
        engine_options: dict[str, Any] | None = None,
    ) -> None:
        # what describe() returns: the options as given (url_env stays an env var name)
        self._options = {k: v for k, v in {
            "url": url, "url_env": url_env, "table": table, "query": query, "id_column": id_column,
            "text_columns": list(text_columns or []), "text_template": text_template,
            "text_separator": text_separator if text_separator != "\n\n" else None,
            "metadata_columns": metadata_columns, "updated_at_column": updated_at_column, "since": since,
            "where": where, "params": params, "batch_size": batch_size if batch_size != 1000 else None,
        }.items() if v is not None}
        if (url is None) == (url_env is None):
            raise ConfigError(
                f"SqlConnector needs exactly one of url= or url_env= (got url={redact(url)!r}, url_env={url_env!r})"
            )
        if url_env is not None:
            url = os.environ.get(url_env)
            if not url:
                raise ConfigError(
                    f"SqlConnector url_env={url_env!r}: the environment variable is not set; "
                    f"export {url_env}=postgresql+psycopg://user:password@host:5432/db"
                )
        if (table is None) == (query is None):
            raise ConfigError(
                f"SqlConnector needs exactly one of table= or query= (got table={table!r}, "
                f"query={query!r}); e.g. table=\"articles\" or query=\"SELECT id, body FROM articles\""
            )
        if not text_columns:
            raise ConfigError("SqlConnector text_columns=[] is empty; name at least one column, e.g. [\"body\"]")
        if batch_size < 1:
            raise ConfigError(f"SqlConnector batch_size={batch_size!r} must be >= 1, e.g. 1000")
        if since is not None and updated_at_column is None:
            raise ConfigError(
                f"SqlConnector since={since!r} needs updated_at_column= (the column the watermark is compared to)"
            )
        if params and query is None:
            raise ConfigError(f"SqlConnector params={params!r} only apply to query=; use where= to filter a table")
        self.url = url
        self.table = table
        self.query = query
        self.id_column = id_column
        self.text_columns = list(text_columns)
        self.text_template = text_template
        self.text_separator = text_separator
        self.metadata_columns = list(metadata_columns or [])
        self.updated_at_column = updated_at_column
        self.since = since
        self.where = dict(where or {})
        self.params = dict(params or {})
        self.batch_size = batch_size
        self.engine_options = dict(engine_options or {})
        if text_template is not None:
            allowed = set(self.text_columns) | set(self.metadata_columns)
            fields = {f for _, f, _, _ in string.Formatter().parse(text_template) if f}
            unknown = sorted(fields - allowed)
            if unknown:
                raise ConfigError(
                    f"SqlConnector text_template={text_template!r} uses {unknown}, which are not in "
                    f"text_columns or metadata_columns; valid fields: {sorted(allowed)}"
                )
        self.complete = since is None
        self.watermark: str | None = None
        self.rows_read = 0
        self._engine = None
        if name is not None:
            self.source_id = name
        else:
            what = table if table is not None else "query-" + hashlib.sha256(query.encode()).hexdigest()[:10]
            self.source_id = f"sql:{self._database_label()}/{what}"

    def describe(self) -> dict[str, Any] | None:
        """The spec that rebuilds this connector (what `rag-lfm sync` re-runs), or None when
        ``url`` holds a password: a password is never recorded; use ``url_env`` instead."""
        from sqlalchemy.engine import make_url

        if "url" in self._options and make_url(self._options["url"]).password:
            return None
        return {"type": "sql", **self._options, "name": self.source_id}

    def __repr__(self) -> str:
        return f"SqlConnector(source_id={self.source_id!r}, complete={self.complete})"

    # -- internals -------------------------------------------------------------------
    def _database_label(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            u = make_url(self.url)
        except Exception as exc:  # noqa: BLE001 - sqlalchemy raises ArgumentError/ValueError
            raise ConfigError(
                f"SqlConnector url={redact(self.url)!r} is not a SQLAlchemy URL ({redact(str(exc))}); "
                "e.g. postgresql+psycopg://user@host:5432/db or sqlite:///file.db"
            ) from None
        # driver and password are left out: they can change without the data changing
        host = f"{u.host}:{u.port}" if u.port else (u.host or "")
        return f"{u.get_backend_name()}://{host}/{u.database or ''}"

    def engine(self):
        """The SQLAlchemy engine (created on first use, so constructing a connector is cheap)."""
        if self._engine is None:
            from sqlalchemy import create_engine

            try:
                self._engine = create_engine(self.url, **self.engine_options)
            except ImportError as exc:
                raise SourceError(
                    f"SqlConnector url={redact(self.url)!r} needs a database driver that is not installed ({exc}); "
                    "install it, e.g. pip install 'rag-lfm[postgres]' (psycopg) or 'rag-lfm[mysql]' (pymysql)"
                ) from exc
            except Exception as exc:  # noqa: BLE001 - bad URL parts surface here as various types
                raise ConfigError(f"SqlConnector url={redact(self.url)!r} could not be used: {redact(str(exc))}") from None
        return self._engine

    def close(self) -> None:
        """Release the connection pool."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def _needed_columns(self) -> list[str]:
        cols = [self.id_column, *self.text_columns, *self.metadata_columns]
        if self.updated_at_column:
            cols.append(self.updated_at_column)
        seen: dict[str, None] = {}
        for c in cols:
            seen.setdefault(c, None)
        return list(seen)

    def _statement(self, conn):
        """Build the SELECT: identifiers checked against the source, values bound."""
        from sqlalchemy import MetaData, Table, bindparam, column, select, text

        needed = self._needed_columns()
        filter_cols = list(self.where)
        if self.table is not None:
            schema, _, tname = self.table.rpartition(".")
            try:
                tbl = Table(tname, MetaData(), schema=schema or None, autoload_with=conn)
            except Exception as exc:  # noqa: BLE001 - NoSuchTableError or a driver error
                raise SourceError(
                    f"SqlConnector table={self.table!r} could not be read from {self._database_label()}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            src = tbl
            available = [c.name for c in tbl.columns]
        else:
            # The query's result columns are declared so it can be filtered as a subquery.
            all_cols = list(dict.fromkeys([*needed, *filter_cols]))
            src = text(self.query).bindparams(**self.params).columns(*[column(c) for c in all_cols]).subquery("q")
            available = all_cols
        missing = [c for c in [*needed, *filter_cols] if c not in available]
        if missing:
            raise ConfigError(
                f"SqlConnector columns {missing} are not in table={self.table!r}; "
                f"its columns are: {', '.join(available)}"
            )
        stmt = select(*[src.c[c] for c in needed])
        for i, (col, value) in enumerate(self.where.items()):
            if isinstance(value, list):
                stmt = stmt.where(src.c[col].in_(bindparam(f"w{i}", value, expanding=True)))
            else:
                stmt = stmt.where(src.c[col] == bindparam(f"w{i}", value))
        if self.since is not None:
            wcol = src.c[self.updated_at_column]
            since: Any = self.since
            if self.table is not None:
                # compare in the column's own type, so '2024-01-02' works against a TIMESTAMP
                since = bindparam("since", self.since, type_=wcol.type)
                try:
                    py = wcol.type.python_type
                except NotImplementedError:
                    py = None
                if py is _dt.datetime and isinstance(self.since, str):
                    since = bindparam("since", _dt.datetime.fromisoformat(self.since), type_=wcol.type)
                elif py in (int, float) and isinstance(self.since, str):
                    since = bindparam("since", py(self.since), type_=wcol.type)
            stmt = stmt.where(wcol > since)
        # a stable order makes runs reproducible; the id column is normally indexed
        stmt = stmt.order_by(src.c[self.id_column])
        return stmt

    def _row_to_document(self, row: dict[str, Any]) -> Document | Skipped:
        raw_id = row[self.id_column]
        if raw_id is None:
            return Skipped(ref=f"{self.source_id}:<NULL id>", reason=f"id column {self.id_column!r} is NULL")
        doc_id = _as_text(raw_id)
        if self.text_template is not None:
            values = {c: _as_text(row[c]) for c in [*self.text_columns, *self.metadata_columns]}
            text = self.text_template.format_map(values)
        else:
            text = self.text_separator.join(t for t in (_as_text(row[c]) for c in self.text_columns) if t)
        if not text.strip():
            return Skipped(
                ref=doc_id,
                reason=f"row {self.id_column}={doc_id!r} has no text in columns {self.text_columns}",
            )
        metadata = {c: _json_safe(row[c]) for c in self.metadata_columns}
        return Document(id=doc_id, text=text, metadata=metadata)

    # -- the protocol ----------------------------------------------------------------
    def iter_documents(self) -> Iterator[Document | Skipped]:
        """Yield one Document per row (Skipped for rows with a NULL id or no text).

        Raises:
            SourceError: the database can't be reached, the table is missing, or the
                connection drops midway (the message names the last id read).
        """
        from sqlalchemy.exc import SQLAlchemyError

        self.rows_read = 0
        newest: Any = None
        last_id: str | None = None
        try:
            with self.engine().connect() as conn:
                stmt = self._statement(conn)
                # stream_results -> server-side cursor; yield_per -> fetch in batches of that size
                result = conn.execution_options(stream_results=True, yield_per=self.batch_size).execute(stmt)
                for part in result.mappings().partitions():
                    for row in part:
                        self.rows_read += 1
                        item = self._row_to_document(row)
                        if isinstance(item, Document):
                            last_id = item.id
                        if self.updated_at_column is not None:
                            val = row[self.updated_at_column]
                            if val is not None and (newest is None or val > newest):
                                newest = val
                        yield item
        except SQLAlchemyError as exc:
            where = f" after id {last_id!r} ({self.rows_read} rows read)" if last_id is not None else ""
            raise SourceError(
                f"SQL source {self.source_id!r} failed{where}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else exc!r}"
            ) from exc
        if self.updated_at_column is not None:
            self.watermark = _json_safe(newest) if newest is not None else self.since
            if self.watermark is not None:
                self.watermark = str(self.watermark)


register_connector("sql", SqlConnector)
