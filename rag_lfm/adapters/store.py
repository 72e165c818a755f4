"""Query adapters inside an index directory: saved, listed, activated, removed, loaded verified.

Layout and record::

    <index>/adapters/<name>/adapter.safetensors     side files of the commit record
    <index>/adapters/<name>/adapter.json            (sha256-bound, like the BM25 sidecar)
    manifest["query_adapters"] = {"active": "<name>" | None, "items": {"<name>": {kind, rank, dim, ...}}}

Each change is one commit (:meth:`KnowledgeBase.commit_side_files` under the write lock), so a
reader sees the adapter files and the manifest entry appear and disappear together. The active
adapter is what :meth:`KnowledgeBase.search` and every :class:`~rag_lfm.retrieval.Retriever`
(``adapter="auto"``, the default) apply to query vectors.

Example:
    >>> save_query_adapter(kb, adapter, "wiki")            # doctest: +SKIP
    >>> list_query_adapters(kb)                            # doctest: +SKIP
    {'wiki': {'kind': 'mlp', 'rank': 64, 'active': True, ...}}
    >>> remove_query_adapter(kb, "wiki")                   # doctest: +SKIP
"""

from __future__ import annotations

import re
import shutil
from typing import Any

from rag_lfm.adapters.query import META_FILE, WEIGHTS_FILE, QueryAdapter
from rag_lfm.commit import digest_files
from rag_lfm.errors import ConfigError

__all__ = ["save_query_adapter", "list_query_adapters", "load_query_adapter", "remove_query_adapter",
           "activate_query_adapter", "active_query_adapter", "resolve_adapter", "MANIFEST_KEY"]

MANIFEST_KEY = "query_adapters"
FOLDER = "adapters"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> str:
    """A valid adapter name (letters, digits, ``_ . -``, at most 64, not starting with a dot)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(f"adapter name {name!r} is not valid; use 1-64 letters, digits, '_', '.', '-' "
                          "starting with a letter or digit, e.g. 'wiki-mlp'")
    return name


def _record(kb: Any) -> dict[str, Any]:
    rec = kb.manifest.get(MANIFEST_KEY) or {}
    return {"active": rec.get("active"), "items": dict(rec.get("items") or {})}


def list_query_adapters(kb: Any) -> dict[str, dict[str, Any]]:
    """``{name: summary}`` of the index's query adapters; ``summary["active"]`` marks the one in use."""
    rec = _record(kb)
    return {n: {**s, "active": n == rec["active"]} for n, s in sorted(rec["items"].items())}


def _unknown(kb: Any, name: str) -> ConfigError:
    names = ", ".join(sorted(_record(kb)["items"])) or "(none)"
    return ConfigError(f"index {kb.path} has no query adapter {name!r}; its adapters: {names}. "
                       "Train one with `rag-lfm tune query-adapter INDEX --name NAME`")


def save_query_adapter(kb: Any, adapter: QueryAdapter, name: str, *, activate: bool = True, replace: bool = False) -> None:
    """Write ``adapter`` into ``kb`` as ``adapters/<name>/`` and record it (one commit).

    Raises:
        EmbedderMismatchError: the adapter was trained for another embedder than the index's.
        ConfigError: a bad name, or ``name`` exists and ``replace`` is False.
    """
    check_name(name)
    adapter.check_embedder(kb.manifest["embedder"], where=f"index {kb.path}")
    rel = f"{FOLDER}/{name}"
    with kb.write_lock():
        rec = _record(kb)
        if name in rec["items"] and not replace:
            raise ConfigError(f"index {kb.path} already has a query adapter {name!r}; pass replace=True "
                              "(--replace) or pick another name")
        folder = kb.path / rel
        if folder.exists() and name not in rec["items"]:
            shutil.rmtree(folder)  # left by a crashed save: never committed
        adapter.save(folder)
        old = {r: None for r in kb.side_files if r.startswith(rel + "/")}
        files = digest_files(kb.path, rel)
        rec["items"][name] = {"kind": adapter.kind, "rank": adapter.rank, "dim": adapter.dim, "n_params": adapter.n_params,
                              "normalize": adapter.normalize, "embedder": (adapter.embedder or {}).get("name"),
                              "valid_r1_before": adapter.info.get("valid_r1_before"),
                              "valid_r1_best": adapter.info.get("valid_r1_best"), "pairs": adapter.info.get("pairs")}
        if activate:
            rec["active"] = name
        kb.commit_side_files({**old, **files}, config={MANIFEST_KEY: rec})


def load_query_adapter(kb: Any, name: str) -> QueryAdapter:
    """The adapter ``name`` of ``kb``, its files checked against the commit record and its embedder against the index's."""
    rec = _record(kb)
    if name not in rec["items"]:
        raise _unknown(kb, name)
    rel = f"{FOLDER}/{name}"
    adapter = QueryAdapter.from_bytes(kb.read_side_file(f"{rel}/{META_FILE}"), kb.read_side_file(f"{rel}/{WEIGHTS_FILE}"),
                                      where=f"{kb.path}/{rel}")
    adapter.check_embedder(kb.manifest["embedder"], where=f"index {kb.path}")
    return adapter


def activate_query_adapter(kb: Any, name: str | None) -> None:
    """Make ``name`` the adapter searches apply (None: search with the plain embeddings)."""
    with kb.write_lock():
        rec = _record(kb)
        if name is not None and name not in rec["items"]:
            raise _unknown(kb, name)
        rec["active"] = name
        kb.commit_side_files({}, config={MANIFEST_KEY: rec})


def remove_query_adapter(kb: Any, name: str) -> None:
    """Delete adapter ``name`` (its files and its record; searches stop applying it if it was active)."""
    with kb.write_lock():
        rec = _record(kb)
        if name not in rec["items"]:
            raise _unknown(kb, name)
        del rec["items"][name]
        if rec["active"] == name:
            rec["active"] = None
        rel = f"{FOLDER}/{name}/"
        gone = {r: None for r in kb.side_files if r.startswith(rel)}
        kb.commit_side_files(gone, config={MANIFEST_KEY: rec if rec["items"] else None})
        shutil.rmtree(kb.path / FOLDER / name, ignore_errors=True)


def adapter_key(kb: Any, name: str) -> tuple[str, str | None]:
    """What identifies a loaded adapter: its name and the committed sha256 of its weights (a replaced
    adapter keeps its name but not its digest; side-file commits do not change the generation)."""
    return name, kb.side_files.get(f"{FOLDER}/{name}/{WEIGHTS_FILE}")


def active_query_adapter(kb: Any) -> QueryAdapter | None:
    """The adapter ``kb``'s searches apply, or None; loaded once per committed version of its files."""
    kb._refresh()
    name = _record(kb)["active"]
    if name is None:
        return None
    key = adapter_key(kb, name)
    cached = getattr(kb, "_query_adapter_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    adapter = load_query_adapter(kb, name)
    kb._query_adapter_cache = (key, adapter)
    return adapter


def resolve_adapter(kb: Any, spec: Any) -> QueryAdapter | None:
    """What a Retriever's ``adapter=`` means: ``"auto"`` (the index's active one), ``"none"``/None,
    a name of one of the index's adapters, or a :class:`QueryAdapter` (checked against the embedder)."""
    if spec is None or spec == "none":
        return None
    if spec == "auto":
        return active_query_adapter(kb)
    if isinstance(spec, QueryAdapter):
        spec.check_embedder(kb.manifest["embedder"], where=f"index {kb.path}")
        return spec
    if isinstance(spec, str):
        return load_query_adapter(kb, spec)
    raise ConfigError(f"adapter={spec!r} must be 'auto', 'none', the name of one of the index's adapters, or a QueryAdapter")
