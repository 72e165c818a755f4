"""The records that flow through the pipeline: Document -> Chunk -> Hit.

They are plain dataclasses with no behaviour beyond derived hashes, so every stage
(connectors, chunker, index, retriever, reader) can be tested alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` encoded as UTF-8 (the content hash used everywhere)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def stable_int64(key: str) -> int:
    """A deterministic positive 63-bit integer for ``key`` (FAISS ids are int64)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Document:
    """One document from a source.

    ``id`` is stable across runs for the same source record (a relative path, a
    primary key, a canonical URL); ``content_hash`` changes whenever the text or
    the metadata changes, which is how a sync tells changed documents from
    unchanged ones.

    Example:
        >>> Document(id="notes/a.md", text="Paris is in France.", metadata={"lang": "en"}).id
        'notes/a.md'
    """

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        meta = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False, default=str)
        return sha256_text(self.text + "\x00" + meta)


@dataclass(frozen=True)
class Skipped:
    """A record a connector could not turn into a Document: reported, never silently dropped.

    ``ref`` names the input (a file path, a row id, a URL) and ``reason`` says what
    was wrong with it and, where there is one, the fix.
    """

    ref: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """A span of a document, the unit that is embedded and retrieved.

    ``start``/``end`` are character offsets into the document text, so
    ``doc.text[chunk.start:chunk.end] == chunk.text``.
    """

    id: int
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int

    @property
    def content_hash(self) -> str:
        return sha256_text(self.text)


@dataclass
class Hit:
    """One retrieved chunk with its score (higher is better) and its document's metadata."""

    chunk_id: int
    doc_id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source_id: str = ""
    start: int = 0
    end: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "chunk_id": self.chunk_id,
            "doc_id": self.doc_id,
            "source_id": self.source_id,
            "score": self.score,
            "text": self.text,
            "metadata": self.metadata,
            "start": self.start,
            "end": self.end,
        }
