"""The in-memory connector: documents you already hold in Python.

Example:
    >>> from rag_lfm.connectors import InMemory
    >>> src = InMemory([("a", "Paris is in France.", {"lang": "en"}), ("b", "Rome is in Italy.")], name="cities")
    >>> [d.id for d in src.iter_documents()]
    ['a', 'b']
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from rag_lfm.connectors.base import register_connector
from rag_lfm.types import Document, Skipped


class InMemory:
    """Documents from a list: ``Document`` objects or ``(id, text[, metadata])`` tuples.

    Args:
        items: the documents (the list is the whole source: a sync deletes what it no longer holds,
            unless ``complete=False``).
        name: the source id.
        complete: False when ``items`` is only part of the source (no deletions inferred on sync).
    """

    def __init__(self, items: Iterable[Any] = (), *, name: str = "memory", complete: bool = True) -> None:
        self.items = list(items)
        self.source_id = name
        self.complete = complete

    def __len__(self) -> int:
        return len(self.items)

    def iter_documents(self) -> Iterator[Document | Skipped]:
        for i, item in enumerate(self.items):
            if isinstance(item, (Document, Skipped)):
                yield item
            elif isinstance(item, tuple) and len(item) in (2, 3):
                yield Document(item[0], item[1], dict(item[2]) if len(item) == 3 and item[2] else {})
            else:
                yield Skipped(f"item {i}", f"expected a Document or an (id, text[, metadata]) tuple, got {type(item).__name__}")


register_connector("memory", InMemory)
