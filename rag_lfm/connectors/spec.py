"""Declarative source specs (TOML) for the CLI: ``rag-lfm ingest connectors/x.toml --index indexes/x``.

A spec has a ``[source]`` table -- ``type`` (a registered connector name), an optional
``name`` (the source id) and the connector's keyword options -- and an optional
``[index]`` table with the defaults for building an index (``path``, ``embedder``,
``index``, ``chunk_size``, ``chunk_overlap``, ``embedder_backend``)::

    [source]
    type = "files"
    path = "docs/"
    glob = "**/*.md"

    [index]
    path = "indexes/docs"
    embedder = "all-MiniLM-L6-v2"

Options are checked against the connector's signature and type hints: an unknown
key, a missing required key or a wrong type is rejected with the key, the value and
the valid options. Relative paths are relative to the current directory.
"""

from __future__ import annotations

import inspect
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Union

from rag_lfm.connectors.base import _REGISTRY, Connector, connector_names, make_connector
from rag_lfm.errors import ConfigError

INDEX_KEYS = {"path": str, "embedder": str, "index": str, "chunk_size": int, "chunk_overlap": int, "embedder_backend": str, "backend": str, "docstore": str}


def load_spec(path: str | Path) -> dict[str, Any]:
    """Parse and validate a spec file; returns ``{"source": {...}, "index": {...}}``."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"source spec {str(p)!r} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"source spec {str(p)!r} is not valid TOML: {exc}") from exc
    extra = set(data) - {"source", "index"}
    if extra:
        raise ConfigError(f"{p}: unknown table(s) {sorted(extra)}; a spec has [source] and optionally [index]")
    if "source" not in data or not isinstance(data["source"], dict):
        raise ConfigError(f"{p}: missing the [source] table (with type = one of {', '.join(connector_names())})")
    index = data.get("index", {})
    for key, value in index.items():
        if key not in INDEX_KEYS:
            raise ConfigError(f"{p}: unknown key [index].{key} = {value!r}; valid keys: {', '.join(sorted(INDEX_KEYS))}")
        if not isinstance(value, INDEX_KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"{p}: [index].{key} = {value!r} must be a {INDEX_KEYS[key].__name__}")
    validate_source(data["source"], where=str(p))
    return {"source": data["source"], "index": index}


def validate_source(source: dict[str, Any], *, where: str = "spec") -> None:
    kind = source.get("type")
    if kind is None:
        raise ConfigError(f"{where}: [source] needs type = one of {', '.join(connector_names())}")
    if kind not in _REGISTRY:
        raise ConfigError(f"{where}: unknown source type {kind!r}; registered types: {', '.join(connector_names())}")
    factory = _REGISTRY[kind]
    sig = inspect.signature(factory)
    try:
        hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    except Exception:  # noqa: BLE001 - unresolvable annotations only disable type checks
        hints = {}
    params = {n: p for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
    options = {k: v for k, v in source.items() if k != "type"}
    for key, value in options.items():
        if key not in params:
            raise ConfigError(f"{where}: unknown key {key!r} = {value!r} for source type {kind!r}; valid keys: {', '.join(sorted(params))}")
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ConfigError(f"{where}: key {key!r} = {value!r} has type {type(value).__name__}, expected {_type_name(hint)}")
    for n, p in params.items():
        if p.default is inspect.Parameter.empty and n not in options:
            raise ConfigError(f"{where}: source type {kind!r} needs key {n!r}; valid keys: {', '.join(sorted(params))}")


def connector_from_source(source: dict[str, Any]) -> Connector:
    """Build the connector a validated ``[source]`` table describes; it remembers its spec for `rag-lfm sync`."""
    validate_source(source)
    options = {k: v for k, v in source.items() if k != "type"}
    conn = make_connector(source["type"], **options)
    conn.spec = dict(source)  # type: ignore[attr-defined]
    return conn


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict)
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__
