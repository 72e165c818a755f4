"""The IndexBackend protocol and the automatic choice of a FAISS index for a collection size.

The automatic rule (``index="auto"``), re-applied at every commit so an index grows
into the right structure:

* fewer than ``EXACT_LIMIT`` (100,000) vectors: ``IDMap2,Flat`` -- exact search; at
  this size a flat scan takes ~1-10 ms per query on 2 cores, so approximation buys
  little and costs recall;
* from 100,000 vectors: ``IVF{nlist},Flat`` with ``nlist`` = 4*sqrt(n) rounded to a
  power of two and ``nprobe`` = nlist/8, at least 8 (recall@10 >= 0.99 of exact on our
  measurements), trained on the stored vectors. IVF supports removal, so syncs stay
  cheap;
* from 2,000,000 vectors: ``IVF{nlist},SQ8`` (4x less memory, recall kept by the
  re-ranking against stored vectors in the retriever).

Any FAISS ``index_factory`` string can be given instead, e.g. ``"HNSW32,Flat"``;
types that cannot remove ids (HNSW) get deletions masked at search time and a
compaction (rebuild from the stored vectors) once the masked share passes 20%.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

EXACT_LIMIT = 100_000
SQ8_LIMIT = 2_000_000


def auto_factory(n: int) -> str:
    """The FAISS factory string the automatic rule picks for ``n`` vectors."""
    if n < EXACT_LIMIT:
        return "IDMap2,Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    return f"IVF{nlist},{'SQ8' if n >= SQ8_LIMIT else 'Flat'}"


@runtime_checkable
class IndexBackend(Protocol):
    """Vector search over int64 ids.

    ``search`` returns ``(scores, ids)`` of shape ``[b, k]``, higher score = better
    (inner product; for L2 indexes the negated squared distance), id ``-1`` where fewer
    than k vectors qualify. ``allowed`` restricts the search to those ids (a metadata
    filter) inside the index itself, so a selective filter still returns k hits when k
    exist.

    Optional, where a backend has them: ``is_trained`` / ``train(sample)`` (indexes with
    codebooks), ``set_params(nprobe=, efSearch=, k_factor=)`` (search parameters),
    ``memory_report()`` (resident / mapped / disk bytes), ``supports_remove`` and
    ``masked_share`` (deletions masked until compaction). The families and their
    capabilities: :mod:`rag_lfm.index.families`.
    """

    factory: str

    @property
    def ntotal(self) -> int: ...

    @property
    def memory_bytes(self) -> int: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def save(self, path: Path) -> list[Path]: ...
