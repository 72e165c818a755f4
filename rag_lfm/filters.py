"""Metadata filters: a small JSON-style language compiled to parameterised SQL.

The language (the one Chroma, Pinecone and LangChain users know)::

    {"topic": "History"}                            # equality
    {"year": {"$gte": 1900, "$lt": 2000}}           # ranges: $gt $gte $lt $lte
    {"topic": {"$in": ["History", "Arts"]}}         # membership: $in $nin
    {"topic": {"$ne": "Arts"}}
    {"$or": [{"topic": "History"}, {"year": {"$lt": 1800}}]}
    {"$and": [...]}, {"$not": {...}}                # several keys at one level = $and

Fields are the documents' metadata keys, plus ``_source`` (the source id) and
``_doc_id``. Values are bound as SQL parameters, never spliced into the query text,
so user input cannot change the query. A filter names only known fields, with values
of the field's type (str, num, bool), or it is rejected with the known fields/types.

The matching chunk ids restrict the FAISS search itself (an IDSelector), so a
selective filter still yields k hits when k documents match.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, and_, false, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from rag_lfm.errors import FilterError

OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
RESERVED = {"_source": "str", "_doc_id": "str"}


def value_type(value: Any) -> str | None:
    """The filterable type of a metadata value: 'str', 'num', 'bool', or None (not filterable)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    return None


def compile_filter(flt: dict[str, Any], documents: Table, fields: dict[str, str]) -> ColumnElement[bool]:
    """Compile ``flt`` to a SQLAlchemy boolean clause over the ``documents`` table.

    ``fields`` maps each known metadata field to its type ('str', 'num', 'bool', or
    'mixed' when documents disagree).
    """
    if not isinstance(flt, dict):
        raise FilterError(f"a filter must be a dict like {{'topic': 'History'}}, got {type(flt).__name__}: {flt!r}")
    if not flt:
        return true()
    return and_(*[_clause(key, value, documents, fields) for key, value in flt.items()])


def _clause(key: str, value: Any, documents: Table, fields: dict[str, str]) -> ColumnElement[bool]:
    if key in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"{key} takes a non-empty list of filters, got {value!r}")
        parts = [compile_filter(v, documents, fields) for v in value]
        return and_(*parts) if key == "$and" else or_(*parts)
    if key == "$not":
        return not_(compile_filter(value, documents, fields))
    if key.startswith("$"):
        raise FilterError(f"unknown filter operator {key!r} at the top level; use $and, $or, $not or a field name")
    ftype = RESERVED.get(key) or fields.get(key)
    if ftype is None:
        known = ", ".join(sorted(fields)) or "(none yet)"
        raise FilterError(f"filter field {key!r} is not a metadata field of this index; known fields: {known}, _source, _doc_id")
    if ftype == "mixed":
        raise FilterError(f"filter field {key!r} holds values of different types across documents, so it cannot be filtered; make its type consistent at ingest")
    if not isinstance(value, dict):
        value = {"$eq": value}
    if not value:
        raise FilterError(f"filter on {key!r} has an empty condition {{}}; use e.g. {{'$eq': ...}}")
    column = _column(key, ftype, documents)
    parts = []
    for op, operand in value.items():
        if op not in OPS:
            raise FilterError(f"unknown operator {op!r} on field {key!r}; valid operators: {', '.join(OPS)}")
        if op in ("$in", "$nin"):
            if not isinstance(operand, (list, tuple)):
                raise FilterError(f"{op} on {key!r} takes a list, got {operand!r}")
            for item in operand:
                _check_type(key, ftype, op, item)
            if not operand:
                parts.append(false() if op == "$in" else true())
                continue
            clause = column.in_(list(operand))
            parts.append(clause if op == "$in" else or_(not_(clause), column.is_(None)))
            continue
        _check_type(key, ftype, op, operand)
        if op in ("$gt", "$gte", "$lt", "$lte") and ftype == "bool":
            raise FilterError(f"{op} on boolean field {key!r} makes no sense; use $eq")
        parts.append(
            {
                "$eq": lambda c, v: c == v,
                "$ne": lambda c, v: or_(c != v, c.is_(None)),
                "$gt": lambda c, v: c > v,
                "$gte": lambda c, v: c >= v,
                "$lt": lambda c, v: c < v,
                "$lte": lambda c, v: c <= v,
            }[op](column, operand)
        )
    return and_(*parts)


def _check_type(key: str, ftype: str, op: str, value: Any) -> None:
    got = value_type(value)
    if got != ftype:
        raise FilterError(
            f"filter {key!r} {op} {value!r}: the value is {type(value).__name__} but field {key!r} holds {ftype} values; pass a {ftype}"
        )


def _column(key: str, ftype: str, documents: Table) -> Any:
    if key == "_source":
        return documents.c.source_id
    if key == "_doc_id":
        return documents.c.doc_id
    element = documents.c.meta[key]
    if ftype == "num":
        return element.as_float()
    if ftype == "bool":
        return element.as_boolean()
    return element.as_string()
