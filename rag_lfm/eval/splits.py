"""Document-level splits of a corpus: one rule for every benchmark, tuner and trainer.

Anything trained (query adapters, reader adapters, distilled students) learns from ``train``
documents, chooses its hyper-parameters on ``dev`` documents and is reported on ``test``
documents. Splitting by document (its title or id), not by question, keeps a test
document's text, title and questions out of training.

Rule: ``blake2b(key) % 5 == 0`` -> ``dev`` (20%, the split the built-in QA task always
used for tuning); of the remaining 80%, a second, independent hash sends half to
``train`` and half to ``test`` (40% each).

Example:
    >>> document_split("Vincent van Gogh") in SPLITS
    True
    >>> document_split("Vincent van Gogh") == document_split("Vincent van Gogh")
    True
"""

from __future__ import annotations

import hashlib

from rag_lfm.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "dev", "test")


def _bucket(key: str, salt: bytes, mod: int) -> int:
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=4, salt=salt).digest()
    return int.from_bytes(digest, "big") % mod


def document_split(key: str) -> str:
    """``"train"``, ``"dev"`` or ``"test"`` for a document key (a title or document id)."""
    if _bucket(key, b"", 5) == 0:
        return "dev"
    return "train" if _bucket(key, b"train/test", 2) == 0 else "test"


def check_split(split: str) -> str:
    """Return ``split`` or raise listing the valid names."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not valid; use one of {', '.join(SPLITS)}")
    return split
