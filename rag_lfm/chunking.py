"""Token-aware chunking with character offsets back into the document.

A document that fits in ``size`` tokens is one chunk (the whole text). A longer one
is cut into windows of ``size`` tokens that overlap by ``overlap`` tokens; a window
ends at the last sentence end (``.``, ``!``, ``?`` or a newline) in its final quarter
when there is one, so chunks rarely stop mid-sentence. Tokens are counted with the
embedder's own tokenizer (so a chunk never exceeds what the embedder reads); without
one (the hash embedder) words are the tokens.

Chunk ids are a deterministic function of (source, document id, ordinal, chunk text),
so the same content always gets the same ids: a sync and a fresh build agree, and an
unchanged chunk keeps its id (and its stored vector) when its document changes elsewhere.

Example:
    >>> from rag_lfm.chunking import Chunker
    >>> ch = Chunker(tokenizer=None, size=4, overlap=1)
    >>> [c.text for c in ch.split("src", "d1", "one two three four five six seven")]
    ['one two three four', 'four five six seven']
"""

from __future__ import annotations

import re
from typing import Any

from rag_lfm.errors import ConfigError
from rag_lfm.types import Chunk, sha256_text, stable_int64

_WORDS = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"[.!?。]['\")\]]?$|\n")


def chunk_id(source_id: str, doc_id: str, ordinal: int, text: str) -> int:
    return stable_int64(f"{source_id}\x1f{doc_id}\x1f{ordinal}\x1f{sha256_text(text)}")


class Chunker:
    """Split documents into token windows.

    Args:
        tokenizer: a Hugging Face fast tokenizer (offsets needed) or None for words.
        size: tokens per chunk (special tokens excluded).
        overlap: tokens shared by consecutive chunks; must be < size.
    """

    def __init__(self, tokenizer: Any = None, *, size: int = 200, overlap: int = 40) -> None:
        if size < 1:
            raise ConfigError(f"chunk size={size!r} must be >= 1 token")
        if not 0 <= overlap < size:
            raise ConfigError(f"chunk overlap={overlap!r} must be >= 0 and < size ({size})")
        if tokenizer is not None and not getattr(tokenizer, "is_fast", False):
            raise ConfigError("the chunker needs a fast tokenizer (offset mapping); this one is slow")
        self.tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def _spans(self, text: str) -> list[tuple[int, int]]:
        """Character span of each token."""
        if self.tokenizer is None:
            return [m.span() for m in _WORDS.finditer(text)]
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return [(s, e) for s, e in enc["offset_mapping"] if e > s]

    def split(self, source_id: str, doc_id: str, text: str) -> list[Chunk]:
        spans = self._spans(text)
        if not spans:
            return []
        if len(spans) <= self.size:
            windows = [(0, len(spans))]
        else:
            windows = []
            start = 0
            while start < len(spans):
                end = min(start + self.size, len(spans))
                if end < len(spans):
                    end = self._sentence_cut(text, spans, start, end)
                windows.append((start, end))
                if end >= len(spans):
                    break
                start = max(end - self.overlap, start + 1)
        chunks = []
        for ordinal, (a, b) in enumerate(windows):
            cs, ce = spans[a][0], spans[b - 1][1]
            piece = text[cs:ce]
            chunks.append(Chunk(chunk_id(source_id, doc_id, ordinal, piece), doc_id, ordinal, piece, cs, ce))
        return chunks

    def _sentence_cut(self, text: str, spans: list[tuple[int, int]], start: int, end: int) -> int:
        """Move ``end`` back to just after a sentence end in the window's last quarter, if any."""
        floor = start + max(1, (3 * (end - start)) // 4)
        for i in range(end - 1, floor - 1, -1):
            s, e = spans[i]
            nxt = spans[i + 1][0] if i + 1 < len(spans) else len(text)
            if _SENTENCE_END.search(text[s:e]) or "\n" in text[e:nxt]:
                return i + 1
        return end
