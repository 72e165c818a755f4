"""The Connector protocol and the registry that maps names (used in TOML specs) to connectors.

A connector reads one source and yields :class:`~rag_lfm.types.Document` objects; a
record it cannot read is yielded as :class:`~rag_lfm.types.Skipped` (with the record
and the reason) so the ingest reports it and goes on with the rest. An error that
makes the whole source unreadable (a wrong path, a refused connection) is raised as
:class:`~rag_lfm.errors.SourceError` and the index keeps its last committed state.

Sync relies on two promises: ``source_id`` is stable for the same source, and a
complete iteration yields every document the source currently holds (documents it
no longer yields are deleted from the index, for that source only). A connector that
can only yield part of its source (an incremental pull) sets ``complete = False``
and deletions are then not inferred.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

from rag_lfm.errors import ConfigError
from rag_lfm.types import Document, Skipped


@runtime_checkable
class Connector(Protocol):
    """Reads one source.

    Attributes:
        source_id: stable name of the source within an index, e.g. ``"files:notes"``.
        complete: True when ``iter_documents`` yields the whole source (so absent
            documents can be deleted on sync); False for incremental pulls.
    """

    source_id: str
    complete: bool

    def iter_documents(self) -> Iterator[Document | Skipped]:
        """Yield every document of the source, and a Skipped for each bad record."""
        ...


_REGISTRY: dict[str, Callable[..., Connector]] = {}


def register_connector(name: str, factory: Callable[..., Connector]) -> None:
    """Register ``factory`` (a class or function taking keyword options) under ``name``.

    Example:
        >>> from rag_lfm.connectors import register_connector
        >>> register_connector("my-api", MyApiConnector)  # doctest: +SKIP
    """
    if name in _REGISTRY:
        raise ConfigError(
            f"connector name {name!r} is already registered (by {_REGISTRY[name]!r}); "
            "choose another name"
        )
    _REGISTRY[name] = factory


def connector_names() -> list[str]:
    return sorted(_REGISTRY)


def make_connector(kind: str, /, **options: Any) -> Connector:
    """Build the connector registered as ``kind`` with ``options`` (which may include ``name``, the source id)."""
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise ConfigError(
            f"unknown connector type {kind!r}; registered types: {', '.join(connector_names())}"
        ) from None
    return factory(**options)
