"""What every part of the LangChain plug-in shares: Documents out of Hits, filters, errors.

Provenance: rag-lfm's own facts about a retrieved chunk (score, chunk id, document id,
character offsets, source) go under ONE reserved metadata key, ``metadata["rag_lfm"]``,
so a user's own keys (``score``, ``doc_id``, ``start``...) are never overwritten.
``Document.id`` is the id the user gave the document (several chunks of a long
document share it; ``metadata["rag_lfm"]["chunk_id"]`` tells them apart).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    from langchain_core.documents import Document as LCDocument
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from rag_lfm.errors import ConfigError, IndexFormatError, RagLfmError
from rag_lfm.types import Hit

PROVENANCE_KEY = "rag_lfm"


def provenance(hit: Hit) -> dict[str, Any]:
    """rag-lfm's facts about a hit, as stored under ``metadata["rag_lfm"]``."""
    return {
        "score": float(hit.score),
        "chunk_id": int(hit.chunk_id),
        "doc_id": hit.doc_id,
        "source_id": hit.source_id,
        "start": int(hit.start),
        "end": int(hit.end),
    }


def hit_to_document(hit: Hit, *, with_provenance: bool = True) -> LCDocument:
    """A LangChain Document for a hit: the user's metadata untouched, ours under ``"rag_lfm"``.

    Example:
        >>> from rag_lfm.types import Hit
        >>> d = hit_to_document(Hit(7, "a.md", 0.9, "Paris is in France.", {"score": "user's"}, "notes", 0, 19))
        >>> d.id, d.metadata["score"], d.metadata["rag_lfm"]["chunk_id"]
        ('a.md', "user's", 7)
    """
    meta = dict(hit.metadata or {})
    if with_provenance:
        if PROVENANCE_KEY in meta:
            raise ConfigError(
                f"document {hit.doc_id!r} (source {hit.source_id!r}) has its own metadata key {PROVENANCE_KEY!r}, "
                f"which rag-lfm reserves for retrieval provenance; rename that key at ingest, or pass "
                f"provenance=False to leave the metadata as stored"
            )
        meta[PROVENANCE_KEY] = provenance(hit)
    return LCDocument(page_content=hit.text, metadata=meta, id=str(hit.doc_id))


def translate_filter(flt: Any) -> dict[str, Any] | None:
    """A LangChain-style filter as a rag-lfm filter.

    rag-lfm's filter language (``{"topic": {"$in": [...]}}``, ``$and``/``$or``/``$not``) passes
    through unchanged. What LangChain's FAISS store also accepts is mapped: a plain list
    value means membership (``{"topic": ["Arts", "History"]}`` -> ``$in``) and ``$neq`` is
    ``$ne``. A callable filter cannot run inside the SQL doc store: it is refused.

    Example:
        >>> translate_filter({"topic": ["Arts", "History"], "year": {"$neq": 1900}})
        {'topic': {'$in': ['Arts', 'History']}, 'year': {'$ne': 1900}}
    """
    if flt is None or flt == {}:
        return None
    if callable(flt):
        raise ConfigError(
            "filter is a callable; rag-lfm evaluates filters in its SQL doc store, so it takes a dict like "
            "{'topic': 'Arts'} or {'year': {'$gte': 1900}} (operators $eq $ne $gt $gte $lt $lte $in $nin $and $or $not)"
        )
    if not isinstance(flt, dict):
        raise ConfigError(f"filter must be a dict like {{'topic': 'Arts'}}, got {type(flt).__name__}: {flt!r}")
    out: dict[str, Any] = {}
    for key, value in flt.items():
        if key in ("$and", "$or") and isinstance(value, (list, tuple)):
            out[key] = [translate_filter(v) or {} for v in value]
        elif key == "$not" and isinstance(value, dict):
            out[key] = translate_filter(value) or {}
        elif key.startswith("$"):
            out[key] = value  # rag-lfm's own check names the valid operators
        elif isinstance(value, (list, tuple)):
            out[key] = {"$in": list(value)}
        elif isinstance(value, dict):
            out[key] = {("$ne" if op == "$neq" else op): v for op, v in value.items()}
        else:
            out[key] = value
    return out


@contextlib.contextmanager
def readable_errors(kb: Any) -> Iterator[None]:
    """Turn a database failure under an index into a rag-lfm error that names the index.

    rag-lfm's own errors (bad filter, bad k, embedder mismatch) pass through as they are.
    """
    try:
        yield
    except RagLfmError:
        raise
    except Exception as exc:
        try:
            from sqlalchemy.exc import SQLAlchemyError
        except ImportError:  # pragma: no cover - sqlalchemy is a core dependency
            raise exc from None
        if not isinstance(exc, SQLAlchemyError):
            raise
        where = getattr(kb, "path", "?")
        first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise IndexFormatError(
            f"the index at {str(where)!r} cannot be read ({type(exc).__name__}: {first}); it was deleted, moved "
            f"or its database is unreachable: reopen it with KnowledgeBase.open({str(where)!r})"
        ) from exc


def as_kb(kb: Any) -> Any:
    """An open KnowledgeBase from a KnowledgeBase or an index path; a clear error otherwise."""
    from rag_lfm.knowledge_base import KnowledgeBase

    if isinstance(kb, KnowledgeBase):
        return kb
    if isinstance(kb, (str, os.PathLike)):
        return KnowledgeBase.open(Path(kb))  # raises IndexFormatError naming the path
    if kb is None:
        raise ConfigError("kb is required: pass an open rag_lfm.KnowledgeBase or the path of an index directory")
    if hasattr(kb, "search_vectors") and hasattr(kb, "docstore"):
        return kb  # a KnowledgeBase look-alike (a subclass from another module, a test double)
    raise ConfigError(
        f"kb must be a rag_lfm.KnowledgeBase or an index path, got {type(kb).__name__}: {kb!r}; "
        "open one with KnowledgeBase.open('indexes/name')"
    )


def check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"{name}={k!r} must be a positive int")
    return int(k)


def check_unknown(given: dict[str, Any], valid: Any, what: str) -> None:
    """Refuse keyword arguments that would otherwise be silently ignored."""
    unknown = sorted(set(given) - set(valid))
    if unknown:
        raise ConfigError(f"{what} got unknown argument(s) {', '.join(unknown)}; valid arguments: {', '.join(sorted(valid))}")


def format_documents(docs: list[LCDocument]) -> str:
    """Retrieved Documents as numbered passages for a prompt: ``[n] title`` then the text.

    The numbers are the Documents' positions (1-based), so ``[n]`` in an answer points back
    to ``docs[n - 1]`` and, through ``metadata["rag_lfm"]["chunk_id"]``, to the chunk in the index.

    Example:
        >>> print(format_documents([LCDocument("Paris is in France.", metadata={"title": "Paris"}, id="p")]))
        [1] Paris
        Paris is in France.
    """
    blocks = []
    for i, d in enumerate(docs, 1):
        title = d.metadata.get("title") if isinstance(d.metadata, dict) else None
        blocks.append(f"[{i}] {title or d.id or ''}".rstrip() + f"\n{d.page_content}")
    return "\n\n".join(blocks)
