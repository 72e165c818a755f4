from __future__ import annotations

import pytest

from rag_lfm.chunking import Chunker
from rag_lfm.errors import ConfigError


def test_short_document_is_one_chunk_with_offsets():
    ch = Chunker(None, size=10, overlap=2)
    text = "  Paris is the capital of France.  "
    [c] = ch.split("s", "d", text)
    assert c.text == "Paris is the capital of France."
    assert text[c.start : c.end] == c.text


def test_windows_overlap_and_offsets_round_trip():
    ch = Chunker(None, size=5, overlap=2)
    text = " ".join(f"w{i}" for i in range(23))
    chunks = ch.split("s", "d", text)
    assert len(chunks) > 4
    for a, b in zip(chunks, chunks[1:]):
        assert set(a.text.split()[-2:]) <= set(b.text.split())  # 2 tokens of overlap
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert len(c.text.split()) <= 5
    assert chunks[-1].text.endswith("w22")


def test_chunk_ids_are_deterministic_and_content_addressed():
    ch = Chunker(None, size=4, overlap=1)
    a = [c.id for c in ch.split("s", "d", "one two three four five six seven")]
    b = [c.id for c in ch.split("s", "d", "one two three four five six seven")]
    c = [c.id for c in ch.split("s", "d", "one two three four five six EIGHT")]
    assert a == b
    assert a[0] == c[0] and a[1] != c[1]
    assert all(0 <= i < 2**63 for i in a)


def test_real_tokenizer_counts_tokens(minilm_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    ch = Chunker(tok, size=16, overlap=4)
    text = "Impressionism is a 19th-century art movement. It is characterized by small brush strokes. " * 5
    chunks = ch.split("s", "d", text)
    assert len(chunks) > 2
    for c in chunks:
        assert text[c.start : c.end] == c.text
        assert len(tok(c.text, add_special_tokens=False)["input_ids"]) <= 16


@pytest.mark.parametrize("size,overlap", [(0, 0), (10, 10), (10, -1)])
def test_bad_sizes_are_rejected(size, overlap):
    with pytest.raises(ConfigError, match="chunk"):
        Chunker(None, size=size, overlap=overlap)
