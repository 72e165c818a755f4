"""The SQL doc store: documents, chunks (text, offsets, stored vector), metadata fields, commits.

SQLAlchemy 2 Core on any URL: a SQLite file inside the index directory by default,
PostgreSQL (``postgresql+psycopg://...``) or MySQL/MariaDB (``mysql+pymysql://...``)
when it grows. Tables carry a prefix so several indexes can share one database.

The ``commit`` row of the ``meta`` table is the commit point of the whole index: a
write changes the doc store and records the new index generation (with the sha256 of
its FAISS files) in one transaction, so the doc store and the vector index never
disagree about what is committed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from rag_lfm.errors import ConcurrentWriteError, ConfigError, FilterError, IndexFormatError
from rag_lfm.filters import compile_filter, field_name_problem, value_type
from rag_lfm.redaction import redact

# MySQL's TEXT / BLOB stop at 64 KiB; long chunks and vectors need the LONG variants there.
LongText = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
LongBlob = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
_IN_BATCH = 5000  # ids per IN (...) clause: stays under every driver's parameter limit
NO_CHECK = object()  # DocStore.apply(expect=NO_CHECK): no compare-and-set


def doc_key(source_id: str, doc_id: str) -> str:
    import hashlib

    return hashlib.sha1(f"{source_id}\x1f{doc_id}".encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class ChangeSet:
    """What one ingest batch changes, applied in one transaction."""

    upsert_docs: list[dict[str, Any]] = field(default_factory=list)
    delete_doc_keys: list[str] = field(default_factory=list)
    add_chunks: list[dict[str, Any]] = field(default_factory=list)
    delete_chunk_ids: list[int] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    delete_sources: list[str] = field(default_factory=list)


class DocStore:
    """Documents and chunks in SQL.

    Args:
        url: a SQLAlchemy URL, e.g. ``sqlite:///indexes/x/docstore.sqlite`` or
            ``postgresql+psycopg://postgres@127.0.0.1/test``.
        prefix: table-name prefix, so several indexes can share one database.
    """

    def __init__(self, url: str, *, prefix: str = "rag_") -> None:
        self.url = url
        self.prefix = prefix
        try:
            self.engine: Engine = create_engine(url, future=True, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise ConfigError(
                f"doc store URL {redact(url)!r} is not a valid SQLAlchemy URL ({redact(str(exc))}); "
                "use e.g. sqlite:///path/docstore.sqlite or postgresql+psycopg://user@host/db "
                "(PostgreSQL needs `pip install rag-lfm[postgres]`)"
            ) from exc
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        md = MetaData()
        p = prefix
        self.documents = Table(
            f"{p}documents", md,
            Column("doc_key", String(40), primary_key=True),
            Column("source_id", String(255), nullable=False, index=True),
            Column("doc_id", LongText, nullable=False),
            Column("content_hash", String(64), nullable=False),
            Column("meta", JSON, nullable=False),
            Column("n_chunks", Integer, nullable=False),
            Column("updated_at", Float, nullable=False),
        )
        self.chunks = Table(
            f"{p}chunks", md,
            Column("id", BigInteger, primary_key=True, autoincrement=False),
            Column("doc_key", String(40), nullable=False, index=True),
            Column("ordinal", Integer, nullable=False),
            Column("start", Integer, nullable=False),
            Column("end", Integer, nullable=False),
            Column("text", LongText, nullable=False),
            Column("content_hash", String(64), nullable=False, index=True),
            Column("vector", LongBlob, nullable=False),
        )
        self.fields_table = Table(
            f"{p}fields", md,
            Column("name", String(255), primary_key=True),
            Column("type", String(16), nullable=False),
        )
        self.sources = Table(
            f"{p}sources", md,
            Column("source_id", String(255), primary_key=True),
            Column("info", JSON, nullable=False),
        )
        self.meta = Table(
            f"{p}meta", md,
            Column("key", String(64), primary_key=True),
            Column("value", LongText, nullable=False),
        )
        self.metadata = md

    # -- lifecycle -----------------------------------------------------------------------
    def create_tables(self) -> None:
        try:
            self.metadata.create_all(self.engine)
        except OperationalError as exc:
            raise ConfigError(f"cannot reach the doc store at {self.safe_url}: {redact(str(exc.orig))}; check the URL, the server and its credentials") from None

    def drop_tables(self) -> None:
        self.metadata.drop_all(self.engine)

    def check_tables(self) -> None:
        from sqlalchemy import inspect

        try:
            names = set(inspect(self.engine).get_table_names())
        except OperationalError as exc:
            raise ConfigError(f"cannot reach the doc store at {self.safe_url}: {redact(str(exc.orig))}; check the URL and the server") from None
        missing = [t.name for t in self.metadata.sorted_tables if t.name not in names]
        if missing:
            raise IndexFormatError(f"doc store {self.safe_url} lacks tables {missing}; it is not this index's doc store (prefix {self.prefix!r})")

    def dispose(self) -> None:
        self.engine.dispose()

    @property
    def safe_url(self) -> str:
        """The URL with its password and secret query parameters masked (for messages and manifests)."""
        return redact(self.engine.url.render_as_string(hide_password=True))

    def __repr__(self) -> str:
        return f"DocStore({self.safe_url!r}, prefix={self.prefix!r})"

    # -- commit record -------------------------------------------------------------------
    def get_commit(self) -> dict[str, Any] | None:
        raw = self.get_commit_raw()
        return json.loads(raw) if raw is not None else None

    def get_commit_raw(self) -> str | None:
        """The commit record as stored (the JSON text a compare-and-set compares), or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(self.meta.c.value).where(self.meta.c.key == "commit")).first()
        return row[0] if row else None

    @staticmethod
    def encode_commit(commit: dict[str, Any]) -> str:
        """The stored form of a commit record (deterministic, so a writer knows the value it committed)."""
        return json.dumps(commit, sort_keys=True)

    def apply(self, changes: ChangeSet, commit: dict[str, Any], *, expect: str | None | object = NO_CHECK) -> dict[str, int]:
        """Apply ``changes`` and record ``commit`` in one transaction (all or nothing).

        ``commit["counts"]`` is set to the document and chunk counts after the changes.
        ``expect`` makes the transaction a compare-and-set: the stored record must still be
        exactly ``expect`` (None: no record yet), else nothing is applied and
        :class:`~rag_lfm.errors.ConcurrentWriteError` is raised. The record row is replaced
        first, so concurrent committers queue on its row lock.
        """
        try:
            with self.engine.begin() as conn:
                if expect is not NO_CHECK:
                    self._compare_and_lock(conn, expect, commit)
                self._apply_changes(conn, changes)
                docs = conn.execute(select(func.count()).select_from(self.documents)).scalar_one()
                chunks = conn.execute(select(func.count()).select_from(self.chunks)).scalar_one()
                commit["counts"] = {"documents": int(docs), "chunks": int(chunks)}
                value = self.encode_commit(commit)
                if conn.execute(update(self.meta).where(self.meta.c.key == "commit").values(value=value)).rowcount == 0:
                    conn.execute(insert(self.meta).values(key="commit", value=value))
        except IntegrityError as exc:
            if expect is None and self.get_commit_raw() is not None:
                raise ConcurrentWriteError(f"doc store {self.safe_url} (prefix {self.prefix!r}) was committed by another writer meanwhile") from exc
            raise
        return commit["counts"]

    def _compare_and_lock(self, conn: Any, expect: Any, commit: dict[str, Any]) -> None:
        if expect is None:
            if conn.execute(select(self.meta.c.key).where(self.meta.c.key == "commit")).first() is not None:
                raise ConcurrentWriteError(f"doc store {self.safe_url} (prefix {self.prefix!r}) already holds a committed index")
            return
        # The provisional value differs from ``expect`` (a new generation or time), so rowcount
        # counts a real change on every dialect.
        provisional = self.encode_commit(commit | {"counts": commit.get("counts") or {}, "provisional": True})
        q = update(self.meta).where(self.meta.c.key == "commit", self.meta.c.value == expect).values(value=provisional)
        if conn.execute(q).rowcount != 1:
            raise ConcurrentWriteError(f"the commit record of doc store {self.safe_url} changed since it was read")

    def _apply_changes(self, conn: Any, changes: ChangeSet) -> None:
        for ids in _batches(changes.delete_chunk_ids):
            conn.execute(delete(self.chunks).where(self.chunks.c.id.in_(ids)))
        for keys in _batches(changes.delete_doc_keys):
            conn.execute(delete(self.documents).where(self.documents.c.doc_key.in_(keys)))
        if changes.upsert_docs:
            keys = [d["doc_key"] for d in changes.upsert_docs]
            for part in _batches(keys):
                conn.execute(delete(self.documents).where(self.documents.c.doc_key.in_(part)))
            conn.execute(insert(self.documents), changes.upsert_docs)
        if changes.add_chunks:
            conn.execute(insert(self.chunks), changes.add_chunks)
        if changes.fields:
            known = dict(conn.execute(select(self.fields_table.c.name, self.fields_table.c.type)).all())
            for name, ftype in changes.fields.items():
                if name not in known:
                    conn.execute(insert(self.fields_table).values(name=name, type=ftype))
                elif known[name] != ftype and known[name] != "mixed":
                    conn.execute(update(self.fields_table).where(self.fields_table.c.name == name).values(type="mixed"))
        for source_id in changes.delete_sources:
            conn.execute(delete(self.sources).where(self.sources.c.source_id == source_id))
        for source_id, info in changes.sources.items():
            conn.execute(delete(self.sources).where(self.sources.c.source_id == source_id))
            conn.execute(insert(self.sources).values(source_id=source_id, info=info))

    # -- reads ---------------------------------------------------------------------------
    def counts(self) -> tuple[int, int]:
        with self.engine.connect() as conn:
            docs = conn.execute(select(func.count()).select_from(self.documents)).scalar_one()
            chunks = conn.execute(select(func.count()).select_from(self.chunks)).scalar_one()
        return int(docs), int(chunks)

    def fields(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(select(self.fields_table.c.name, self.fields_table.c.type)).all())

    def source_infos(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {r.source_id: r.info for r in conn.execute(select(self.sources))}

    def source_counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.documents.c.source_id, func.count()).group_by(self.documents.c.source_id)).all()
        return {r[0]: int(r[1]) for r in rows}

    def doc_states(self, keys: list[str]) -> dict[str, tuple[str, list[int]]]:
        """doc_key -> (content_hash, its chunk ids) for the keys that exist."""
        out: dict[str, tuple[str, list[int]]] = {}
        with self.engine.connect() as conn:
            for part in _batches(keys):
                for r in conn.execute(select(self.documents.c.doc_key, self.documents.c.content_hash).where(self.documents.c.doc_key.in_(part))):
                    out[r.doc_key] = (r.content_hash, [])
                for r in conn.execute(select(self.chunks.c.doc_key, self.chunks.c.id).where(self.chunks.c.doc_key.in_(part))):
                    out[r.doc_key][1].append(int(r.id))
        return out

    def doc_keys_of_source(self, source_id: str) -> dict[str, str]:
        """doc_key -> doc_id for every document of ``source_id``."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(self.documents.c.doc_key, self.documents.c.doc_id).where(self.documents.c.source_id == source_id))
            return {r.doc_key: r.doc_id for r in rows}

    def chunk_ids_of_docs(self, keys: list[str]) -> list[int]:
        out: list[int] = []
        with self.engine.connect() as conn:
            for part in _batches(keys):
                out.extend(int(r[0]) for r in conn.execute(select(self.chunks.c.id).where(self.chunks.c.doc_key.in_(part))))
        return out

    def vectors_by_hash(self, hashes: Iterable[str], dim: int) -> dict[str, np.ndarray]:
        """content_hash -> stored vector, for chunks whose text is already embedded (the embedding cache)."""
        out: dict[str, np.ndarray] = {}
        with self.engine.connect() as conn:
            for part in _batches(list(set(hashes))):
                for r in conn.execute(select(self.chunks.c.content_hash, self.chunks.c.vector).where(self.chunks.c.content_hash.in_(part))):
                    out[r.content_hash] = np.frombuffer(r.vector, dtype=np.float32, count=dim)
        return out

    def vectors(self, ids: np.ndarray, dim: int) -> np.ndarray:
        ids = [int(i) for i in ids]
        found: dict[int, bytes] = {}
        with self.engine.connect() as conn:
            for part in _batches(ids):
                found.update({int(r.id): r.vector for r in conn.execute(select(self.chunks.c.id, self.chunks.c.vector).where(self.chunks.c.id.in_(part)))})
        missing = [i for i in ids if i not in found]
        if missing:
            raise KeyError(f"chunk ids not in the doc store: {missing[:10]}")
        out = np.empty((len(ids), dim), dtype=np.float32)
        for row, i in enumerate(ids):
            out[row] = np.frombuffer(found[i], dtype=np.float32, count=dim)
        return out

    def iter_vectors(self, batch_size: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of every chunk, in id order and batches (to rebuild or retrain an index)."""
        last = None
        while True:
            q = select(self.chunks.c.id, self.chunks.c.vector).order_by(self.chunks.c.id).limit(batch_size)
            if last is not None:
                q = q.where(self.chunks.c.id > last)
            with self.engine.connect() as conn:
                rows = conn.execute(q).all()
            if not rows:
                return
            last = rows[-1].id
            ids = np.array([r.id for r in rows], dtype=np.int64)
            yield ids, np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows])

    def fetch(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """chunk id -> row (text, offsets, doc id, source, metadata)."""
        ids = [int(i) for i in ids]
        c, d = self.chunks, self.documents
        out: dict[int, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for part in _batches(ids):
                q = (
                    select(c.c.id, c.c.text, c.c.start, c.c.end, d.c.doc_id, d.c.source_id, d.c.meta)
                    .join(d, d.c.doc_key == c.c.doc_key)
                    .where(c.c.id.in_(part))
                )
                for r in conn.execute(q):
                    out[int(r.id)] = r._asdict()
        return out

    def iter_chunk_rows(self, batch_size: int = 1000) -> Iterator[list[dict[str, Any]]]:
        c, d = self.chunks, self.documents
        last = None
        while True:
            q = (
                select(c.c.id, c.c.text, c.c.start, c.c.end, d.c.doc_id, d.c.source_id, d.c.meta)
                .join(d, d.c.doc_key == c.c.doc_key)
                .order_by(c.c.id)
                .limit(batch_size)
            )
            if last is not None:
                q = q.where(c.c.id > last)
            with self.engine.connect() as conn:
                rows = [r._asdict() for r in conn.execute(q)]
            if not rows:
                return
            last = rows[-1]["id"]
            yield rows

    def filter_ids(self, flt: dict[str, Any]) -> np.ndarray:
        """Ids of the chunks whose document matches the filter (parameterised SQL)."""
        clause = compile_filter(flt, self.documents, self.fields(), dialect=self.engine.dialect.name)
        q = select(self.chunks.c.id).join(self.documents, self.documents.c.doc_key == self.chunks.c.doc_key).where(clause)
        try:
            with self.engine.connect() as conn:
                return np.fromiter((r[0] for r in conn.execute(q)), dtype=np.int64)
        except DBAPIError as exc:
            # The driver's own words, without the SQL text SQLAlchemy appends (it is ours, not the user's).
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
            raise FilterError(
                f"the doc store ({self.engine.dialect.name}) could not run this filter: {redact(reason)}; "
                "make it smaller (fewer conditions or $in values) or split it into several searches"
            ) from None


def metadata_fields(meta: dict[str, Any]) -> dict[str, str]:
    """The filterable fields of one document's metadata and their types.

    Keys no SQL backend can address the same way (see :func:`~rag_lfm.filters.field_name_problem`)
    stay in the metadata but are not filterable.
    """
    out = {}
    for key, value in meta.items():
        vt = value_type(value)
        if vt is not None and isinstance(key, str) and field_name_problem(key) is None:
            out[key] = vt
    return out


def _batches(items: list[Any], size: int = _IN_BATCH) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # DELETE journal + FULL sync: a committed transaction survives a crash (SIGKILL or power loss).
    cur.execute("PRAGMA journal_mode=DELETE")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def now() -> float:
    return time.time()
