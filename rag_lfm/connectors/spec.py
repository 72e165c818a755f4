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

Recorded specs and trust. An ingest records its source's spec in the index, so that
`rag-lfm sync` can rebuild the connector; but anyone who can write the index directory
can edit that record, and a spec decides what the syncing user's process reads and
runs. So a spec read back from an index (:func:`connector_from_recorded`) runs only if

* its connector type is in :data:`TRUSTED_TYPES` (built-in connectors whose options are
  data: paths, URLs, table names) or the user allowed it (``rag-lfm sync --allow NAME``,
  or ``allow = ["NAME"]`` in ``<config dir>/trust.toml``); a LangChain loader, which
  imports a module named in the spec, is allowed one import path at a time
  (``langchain:package.module.Loader``), never by a name read from the index alone; and
* it carries a valid signature: an HMAC-SHA256 of the spec under a key kept in the
  user's config directory (``$RAG_LFM_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/rag-lfm``,
  else ``~/.config/rag-lfm``), never in the index. A spec recorded by another user or
  machine, or edited since, is refused until the user accepts it
  (``rag-lfm sync --trust-specs``, which re-signs it with the user's key).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import os
import secrets
import tomllib
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Union

from rag_lfm.connectors.base import _REGISTRY, Connector, connector_names, make_connector
from rag_lfm.errors import ConfigError, TrustError
from rag_lfm.redaction import redact

INDEX_KEYS = {"path": str, "embedder": str, "index": str, "chunk_size": int, "chunk_overlap": int, "embedder_backend": str, "backend": str, "docstore": str}
INDEX_MINIMUM = {"chunk_size": 1, "chunk_overlap": 0}
# Built-in connectors whose options are data (paths, URLs, table names), never code to import.
TRUSTED_TYPES = ("files", "pdf", "web", "sql", "wiki-vital")
CONFIG_DIR_ENV = "RAG_LFM_CONFIG_DIR"
KEY_FILE = "spec-key"
TRUST_FILE = "trust.toml"


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
        if key in INDEX_MINIMUM and value < INDEX_MINIMUM[key]:
            raise ConfigError(f"{p}: [index].{key} = {value!r} must be >= {INDEX_MINIMUM[key]} (leave chunk_size out for the embedder's default)")
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


def config_dir() -> Path:
    """The user's rag-lfm config folder: ``$RAG_LFM_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/rag-lfm``, else ``~/.config/rag-lfm``."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "rag-lfm"


def _key(*, create: bool) -> bytes | None:
    f = config_dir() / KEY_FILE
    try:
        return bytes.fromhex(f.read_text().strip())
    except FileNotFoundError:
        if not create:
            return None
    except (OSError, ValueError):
        return None
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: two processes creating the key at once keep the first one.
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    except FileExistsError:
        pass
    except OSError:
        return None  # no writable config dir: specs are recorded unsigned (sync then asks to confirm them)
    return _key(create=False)


def _canonical(spec: dict[str, Any]) -> bytes:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str).encode()


def sign_spec(spec: dict[str, Any]) -> str | None:
    """HMAC-SHA256 of ``spec`` under the user's key (created on first use), or None without a writable config dir."""
    key = _key(create=True)
    return None if key is None else "hmac-sha256:" + hmac.new(key, _canonical(spec), hashlib.sha256).hexdigest()


def spec_signed(spec: dict[str, Any], signature: Any) -> bool:
    """True when ``signature`` is this user's signature of ``spec``."""
    key = _key(create=False)
    if key is None or not isinstance(signature, str):
        return False
    want = "hmac-sha256:" + hmac.new(key, _canonical(spec), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, signature)


def trust_name(spec: dict[str, Any]) -> str:
    """The name a user allows to run ``spec``: its type, or ``langchain:<loader import path>``."""
    kind = str(spec.get("type"))
    if kind == "langchain":
        return f"langchain:{spec.get('loader')}"
    return kind


def user_allowed() -> set[str]:
    """Names allowed in ``<config dir>/trust.toml`` (``allow = ["langchain:pkg.Loader", "my-type"]``)."""
    f = config_dir() / TRUST_FILE
    if not f.exists():
        return set()
    try:
        data = tomllib.loads(f.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{f} is not valid TOML ({exc}); it should hold allow = [\"langchain:package.module.Loader\", ...]") from exc
    allow = data.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ConfigError(f"{f}: allow = {allow!r} must be a list of str, e.g. allow = [\"langchain:package.module.Loader\"]")
    return set(allow)


def connector_from_recorded(source_id: str, info: dict[str, Any], *, allow: Iterable[str] = (), trust_unsigned: bool = False) -> Connector:
    """Rebuild the connector of a source recorded in an index, if the user trusts its spec.

    Args:
        source_id: the source's id (for messages).
        info: its record (``kb.docstore.source_infos()[source_id]``).
        allow: connector names allowed beyond :data:`TRUSTED_TYPES` (see :func:`trust_name`).
        trust_unsigned: run a spec that is not signed by this user's key (after checking it).

    Raises:
        TrustError: the spec is not allowed or not signed; the message says how to allow it.
    """
    spec = info.get("spec")
    if info.get("spec_redacted"):
        raise TrustError(
            f"source {source_id!r}: its spec held a secret, so it was recorded masked ({spec}) and cannot be re-run; "
            "ingest it again from a spec that names the secret through an environment variable (e.g. url_env)"
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise TrustError(f"source {source_id!r}: its recorded spec {redact(spec)!r} has no connector type; ingest it again")
    name = trust_name(spec)
    allowed = set(allow) | user_allowed()
    if spec["type"] not in TRUSTED_TYPES and name not in allowed:
        raise TrustError(
            f"source {source_id!r}: its recorded spec uses connector {name!r}, which can run code named by the index "
            f"(only {', '.join(TRUSTED_TYPES)} run from a recorded spec by default). If you recorded it yourself, allow it: "
            f"`rag-lfm sync INDEX --allow {name}`, or add allow = [\"{name}\"] to {config_dir() / TRUST_FILE}"
        )
    if not trust_unsigned and not spec_signed(spec, info.get("spec_signature")):
        raise TrustError(
            f"source {source_id!r}: its recorded spec {json.dumps(redact(spec), sort_keys=True)} is not signed by your key "
            f"({config_dir() / KEY_FILE}): it was recorded by another user or machine, or edited since. Check it; if it is "
            "what you want to run, `rag-lfm sync INDEX --trust-specs` runs it and signs it with your key"
        )
    return connector_from_source(spec)


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
