"""Metadata filters: a small JSON-style language compiled to parameterised SQL.

The language (the one Chroma, Pinecone and LangChain users know)::

    {"topic": "History"}                            # equality
    {"year": {"$gte": 1900, "$lt": 2000}}           # ranges: $gt $gte $lt $lte
    {"topic": {"$in": ["History", "Arts"]}}         # membership: $in $nin
    {"topic": {"$ne": "Arts"}}
    {"path": {"$prefix": "docs/api/"}}              # a string field starting with (exact, case-sensitive)
    {"$or": [{"topic": "History"}, {"year": {"$lt": 1800}}]}
    {"$and": [...]}, {"$not": {...}}                # several keys at one level = $and

Fields are the documents' metadata keys, plus ``_source`` (the source id) and
``_doc_id``. Values are bound as SQL parameters, never spliced into the query text,
so user input cannot change the query. A filter names only known fields, with values
of the field's type (str, num, bool), or it is rejected with the known fields/types.

The matching chunk ids restrict the FAISS search itself (an IDSelector), so a
selective filter still yields k hits when k documents match.

Limits, so that a hostile or generated filter gets a clear error rather than a
RecursionError or a driver error: at most ``MAX_DEPTH`` levels of nesting,
``MAX_CONDITIONS`` field conditions and ``MAX_VALUES`` values in all. A field name
holding a double quote or starting with ``-`` cannot be addressed by the JSON paths of
every SQL backend (SQLite, MariaDB), and one starting with ``$`` reads as an operator, so
these are refused on every backend, with the fix;
other names (dots, spaces, quotes, non-ASCII) are escaped and work everywhere.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Table, and_, false, func, not_, or_, true
from sqlalchemy.sql.elements import ColumnElement

from rag_lfm.errors import FilterError

OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$prefix")
RESERVED = {"_source": "str", "_doc_id": "str"}
MAX_DEPTH = 32  # nesting levels of $and / $or / $not and field conditions
MAX_CONDITIONS = 256  # field comparisons in one filter (SQLite parses a long OR chain as a deep tree)
MAX_VALUES = 30_000  # values bound in one filter, under every driver's parameter limit (SQLite: 32,766)
MAX_FIELD_LENGTH = 255  # the fields table's name column


def field_name_problem(name: str) -> str | None:
    """Why metadata key ``name`` cannot be a filter field on every backend, or None when it can.

    Example:
        >>> field_name_problem("year") is None, field_name_problem('a"b') is not None
        (True, True)
    """
    if '"' in name:
        return "it holds a double quote, which SQLite's JSON paths cannot address"
    if name.startswith("-"):
        return "it starts with '-', which MariaDB's JSON paths cannot address"
    if name.startswith("$"):
        return "it starts with '$', which marks operators in filters"
    if len(name) > MAX_FIELD_LENGTH:
        return f"it is longer than {MAX_FIELD_LENGTH} characters"
    return None


def value_type(value: Any) -> str | None:
    """The filterable type of a metadata value: 'str', 'num', 'bool', or None (not filterable)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    return None


def check_size(flt: Any) -> None:
    """Reject a filter deeper than MAX_DEPTH or with more than MAX_CONDITIONS / MAX_VALUES (iteratively: no recursion)."""
    conditions = values = 0
    stack: list[tuple[Any, int]] = [(flt, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FilterError(f"filter is nested more than {MAX_DEPTH} levels deep; flatten it (several keys at one level are ANDed, $in replaces long $or chains)")
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(key, str) and key in ("$and", "$or", "$not"):
                    stack.extend((v, depth + 1) for v in (value if isinstance(value, list) else [value]))
                elif isinstance(key, str) and not key.startswith("$"):
                    conditions += 1
                    if isinstance(value, dict):
                        stack.append((value, depth + 1))
                    else:
                        values += 1
                else:
                    values += len(value) if isinstance(value, (list, tuple)) else 1
        elif isinstance(node, (list, tuple)):
            values += len(node)
        if conditions > MAX_CONDITIONS:
            raise FilterError(f"filter has more than {MAX_CONDITIONS} field conditions; use $in with a list of values instead of long $or chains, or split the search")
        if values > MAX_VALUES:
            raise FilterError(f"filter holds more than {MAX_VALUES} values; split it into several searches")


def compile_filter(flt: dict[str, Any], documents: Table, fields: dict[str, str], *, dialect: str = "sqlite") -> ColumnElement[bool]:
    """Compile ``flt`` to a SQLAlchemy boolean clause over the ``documents`` table.

    ``fields`` maps each known metadata field to its type ('str', 'num', 'bool', or
    'mixed' when documents disagree); ``dialect`` is the SQL backend's name (JSON paths
    are escaped for it).
    """
    if not isinstance(flt, dict):
        raise FilterError(f"a filter must be a dict like {{'topic': 'History'}}, got {type(flt).__name__}: {flt!r}")
    check_size(flt)
    return _compile(flt, documents, fields, dialect)


def _compile(flt: Any, documents: Table, fields: dict[str, str], dialect: str) -> ColumnElement[bool]:
    if not isinstance(flt, dict):
        raise FilterError(f"a filter must be a dict like {{'topic': 'History'}}, got {type(flt).__name__}: {flt!r}")
    if not flt:
        return true()
    return and_(*[_clause(key, value, documents, fields, dialect) for key, value in flt.items()])


def _clause(key: str, value: Any, documents: Table, fields: dict[str, str], dialect: str) -> ColumnElement[bool]:
    if not isinstance(key, str):
        raise FilterError(f"filter keys must be field names or operators (str), got {type(key).__name__}: {key!r}")
    if key in ("$and", "$or"):
        if not isinstance(value, list) or not value:
            raise FilterError(f"{key} takes a non-empty list of filters, got {value!r}")
        parts = [_compile(v, documents, fields, dialect) for v in value]
        return and_(*parts) if key == "$and" else or_(*parts)
    if key == "$not":
        return not_(_compile(value, documents, fields, dialect))
    if key.startswith("$"):
        raise FilterError(f"unknown filter operator {key!r} at the top level; use $and, $or, $not or a field name (metadata keys starting with '$' cannot be filtered)")
    problem = field_name_problem(key) if key not in RESERVED else None
    if problem is not None:
        raise FilterError(
            f"filter field {key!r} cannot be filtered: {problem}; rename the metadata key at ingest "
            "(e.g. replace the quote by '_'), so that it filters the same on every SQL backend"
        )
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
    column = _column(key, ftype, documents, dialect)
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
        if op == "$prefix":
            if ftype != "str" or not operand:
                raise FilterError(f"$prefix on {key!r} takes a non-empty str and a field of str values (e.g. 'path'), got {operand!r}")
            # substr, not LIKE: LIKE is case-insensitive on SQLite and treats % and _ as wildcards.
            parts.append(func.substr(column, 1, len(operand)) == operand)
            continue
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


def _column(key: str, ftype: str, documents: Table, dialect: str) -> Any:
    if key == "_source":
        return documents.c.source_id
    if key == "_doc_id":
        return documents.c.doc_id
    # SQLite and MySQL/MariaDB address a key through a JSON path ('$."key"') matched against the
    # stored JSON text, where json.dumps escaped it (quotes, backslashes, non-ASCII): escape the
    # same way. PostgreSQL takes the key itself as an operand.
    element = documents.c.meta[key if dialect == "postgresql" else json.dumps(key)[1:-1]]
    if ftype == "num":
        return element.as_float()
    if ftype == "bool":
        return element.as_boolean()
    return element.as_string()
