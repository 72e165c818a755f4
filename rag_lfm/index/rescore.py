"""Exact rescoring of a compressed index's candidates from float vectors kept on disk.

A compressed index (PQ, SQ4, binary codes) ranks well enough to find the true top-k among
its top ``k * k_factor`` candidates, but not well enough to order them. The rescoring
stage reads those candidates' float vectors and scores them exactly, so recall is near
that of the uncompressed vectors while RAM holds only the codes: the vectors stay on disk,
memory-mapped, and the OS pages in the few rows each query touches.

This is our own stage, not faiss' ``IndexRefine``/``RFlat``: those keep the float vectors in
RAM, cannot remove ids and do not accept a search-time ``IDSelector``, while here the
codes index keeps its selector and removal, and the float vectors cost disk, not memory.

Layout: sorted segments (ids ``[n]`` int64, vectors ``[n, d]``), each an ``.npy`` pair
memory-mapped read-only, plus pending additions in RAM (spilled to a scratch segment once
``buffer_rows`` accumulate, so a large build holds at most one buffer) and a per-segment
"removed" mask. ``save`` merges everything into one sorted pair, streaming.

Example:
    >>> store = RescoreStore(384)                                   # doctest: +SKIP
    >>> store.add(ids, vectors); store.save(Path("index-3.faiss"))  # doctest: +SKIP
    >>> vecs, found = store.gather(candidate_ids)                   # doctest: +SKIP
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import save_npy_blocks
from rag_lfm.errors import ConfigError, IndexFormatError

DTYPES = ("float32", "float16")
MERGE_BLOCK = 1 << 13  # rows per block when merging segments (12 MB of 384-d float32)


class _Segment:
    def __init__(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ids = ids  # sorted, unique
        self.vectors = vectors
        self.removed: np.ndarray | None = None  # bool [n], allocated on the first removal

    def positions(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each id, found mask) for an id array."""
        if len(self.ids) == 0:
            return np.zeros(len(flat), np.int64), np.zeros(len(flat), bool)
        pos = np.minimum(np.searchsorted(self.ids, flat), len(self.ids) - 1)
        found = self.ids[pos] == flat
        if self.removed is not None:
            found &= ~self.removed[pos]
        return pos, found

    @property
    def alive(self) -> int:
        return len(self.ids) - (int(self.removed.sum()) if self.removed is not None else 0)


class RescoreStore:
    """Float vectors by int64 id, on disk, for exact rescoring.

    Args:
        dim: vector dimension.
        dtype: ``"float32"`` (exact) or ``"float16"`` (half the disk; scores within ~1e-3).
        buffer_rows: pending rows kept in RAM before they spill to a scratch segment on disk.
    """

    def __init__(self, dim: int, dtype: str = "float32", *, buffer_rows: int = 1 << 14) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"rescore store dtype {dtype!r} must be one of {DTYPES}")
        self.dim, self.dtype, self.buffer_rows = dim, np.dtype(dtype), buffer_rows
        self.segments: list[_Segment] = []
        self._pending_ids: list[np.ndarray] = []
        self._pending_vecs: list[np.ndarray] = []
        self._scratch: Path | None = None

    def __del__(self) -> None:
        if getattr(self, "_scratch", None) is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)

    # -- contents ------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return sum(s.alive for s in self.segments) + sum(len(i) for i in self._pending_ids)

    @property
    def resident_bytes(self) -> int:
        """Heap bytes: pending rows and removal masks (the segments are memory-mapped)."""
        pend = sum(i.nbytes + v.nbytes for i, v in zip(self._pending_ids, self._pending_vecs))
        masks = sum(s.removed.nbytes for s in self.segments if s.removed is not None)
        return int(pend + masks)

    @property
    def disk_bytes(self) -> int:
        return int(sum(s.ids.nbytes + s.vectors.nbytes for s in self.segments))

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._pending_ids.append(np.asarray(ids, dtype=np.int64).copy())
        self._pending_vecs.append(np.asarray(vectors, dtype=self.dtype).copy())
        if sum(len(i) for i in self._pending_ids) >= self.buffer_rows:
            self._spill()

    def flush(self) -> None:
        """Move pending rows to a scratch segment on disk."""
        if self._pending_ids:
            self._spill()

    def compact(self) -> None:
        """Merge everything into one sorted segment in the scratch folder: the layout a saved index has
        (what the tuner measures), streamed like :meth:`save`."""
        if len(self.segments) == 1 and not self._pending_ids and self.segments[0].removed is None:
            return
        old_scratch, self._scratch = self._scratch, Path(tempfile.mkdtemp(prefix="rag-lfm-rescore-"))
        scratch = self._scratch
        self.save(scratch / "compact")  # maps the merged pair and removes the old scratch segments
        self._scratch = scratch  # keep the merged files until this store goes
        if old_scratch is not None:
            shutil.rmtree(old_scratch, ignore_errors=True)

    def _pending(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._pending_ids:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), self.dtype)
        ids, vecs = np.concatenate(self._pending_ids), np.concatenate(self._pending_vecs)
        order = np.argsort(ids, kind="stable")
        self._pending_ids, self._pending_vecs = [ids[order]], [vecs[order]]
        return self._pending_ids[0], self._pending_vecs[0]

    def _spill(self) -> None:
        ids, vecs = self._pending()
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="rag-lfm-rescore-"))
        n = len(self.segments)
        ids_path, vec_path = self._scratch / f"seg{n}.ids.npy", self._scratch / f"seg{n}.vectors.npy"
        np.save(ids_path, ids, allow_pickle=False)
        np.save(vec_path, vecs, allow_pickle=False)
        self.segments.append(_Segment(np.load(ids_path, mmap_mode="r"), np.load(vec_path, mmap_mode="r")))
        self._pending_ids, self._pending_vecs = [], []

    def remove(self, ids: np.ndarray) -> None:
        flat = np.asarray(ids, dtype=np.int64)
        if len(flat) == 0:
            return
        for seg in self.segments:
            pos, found = seg.positions(flat)
            if found.any():
                if seg.removed is None:
                    seg.removed = np.zeros(len(seg.ids), bool)
                seg.removed[pos[found]] = True
        if self._pending_ids:
            p_ids, p_vecs = self._pending()
            keep = ~np.isin(p_ids, flat)
            self._pending_ids, self._pending_vecs = [p_ids[keep]], [p_vecs[keep]]

    def gather(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors[..., d] float32, found[...] bool)`` for an id array of any shape (-1 = not found)."""
        flat = np.asarray(ids, dtype=np.int64).ravel()
        if len(self.segments) == 1 and not self._pending_ids:
            # the saved layout: one sorted segment, one searchsorted and one gather
            seg = self.segments[0]
            pos, found = seg.positions(flat)
            found &= flat >= 0
            out = np.asarray(seg.vectors[np.where(found, pos, 0)], dtype=np.float32)
            out[~found] = 0.0
            return out.reshape(*np.shape(ids), self.dim), found.reshape(np.shape(ids))
        out = np.zeros((len(flat), self.dim), np.float32)
        found = np.zeros(len(flat), bool)
        p_ids, p_vecs = self._pending()
        parts = list(self.segments) + ([_Segment(p_ids, p_vecs)] if len(p_ids) else [])
        for seg in parts:
            todo = np.flatnonzero(~found & (flat >= 0))
            if len(todo) == 0:
                break
            pos, hit = seg.positions(flat[todo])
            if hit.any():
                rows = pos[hit]
                order = np.argsort(rows, kind="stable")  # read the memory map front to back
                out[todo[hit][order]] = seg.vectors[rows[order]]
                found[todo[hit]] = True
        return out.reshape(*np.shape(ids), self.dim), found.reshape(np.shape(ids))

    def _plan(self) -> tuple[list[_Segment], np.ndarray, np.ndarray, np.ndarray]:
        """(parts, ids, segment, row) of every live row in id order: 20 bytes per row, no vectors."""
        p_ids, p_vecs = self._pending()
        parts = list(self.segments) + ([_Segment(p_ids, p_vecs)] if len(p_ids) else [])
        seg_of, row_of = [], []
        for s, seg in enumerate(parts):
            rows = np.arange(len(seg.ids)) if seg.removed is None else np.flatnonzero(~seg.removed)
            seg_of.append(np.full(len(rows), s, np.int32))
            row_of.append(rows)
        if not parts:
            return parts, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int64)
        ids_all = np.concatenate([np.asarray(parts[s].ids)[r] for s, r in enumerate(row_of)])
        # Ids are unique across segments (a re-added id was removed from its old segment first).
        order = np.argsort(ids_all, kind="stable")
        return parts, ids_all[order], np.concatenate(seg_of)[order], np.concatenate(row_of)[order]

    def iter_batches(self, batch_rows: int = MERGE_BLOCK) -> Any:
        """Every stored (ids, vectors float32), in id order, in blocks (a streaming merge of the segments)."""
        parts, ids, seg, row = self._plan()
        for a in range(0, len(ids), batch_rows):
            yield ids[a : a + batch_rows], self._rows(parts, seg[a : a + batch_rows], row[a : a + batch_rows])

    def _rows(self, parts: list[_Segment], seg: np.ndarray, row: np.ndarray) -> np.ndarray:
        vecs = np.empty((len(seg), self.dim), np.float32)
        for s in np.unique(seg):
            m = seg == s
            vecs[m] = parts[s].vectors[row[m]]
        return vecs

    # -- persistence ---------------------------------------------------------------------
    @staticmethod
    def files(path: Path) -> tuple[Path, Path]:
        return path.with_name(path.name + ".rescore-ids.npy"), path.with_name(path.name + ".rescore.npy")

    def save(self, path: Path) -> list[Path]:
        """Write one merged sorted segment beside ``path`` (streamed), then map it in place of the old ones."""
        ids_path, vec_path = self.files(path)
        parts, ids, seg, row = self._plan()
        blocks = (self._rows(parts, seg[a : a + MERGE_BLOCK], row[a : a + MERGE_BLOCK]) for a in range(0, len(ids), MERGE_BLOCK))
        save_npy_blocks(vec_path, (len(ids), self.dim), self.dtype, blocks)
        save_npy_blocks(ids_path, (len(ids),), np.int64, [ids])
        self._open(ids_path, vec_path)
        return [ids_path, vec_path]

    def _open(self, ids_path: Path, vec_path: Path) -> None:
        try:
            ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
            vecs = np.load(vec_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"could not read the rescoring vectors {vec_path} / {ids_path}: {exc}; rebuild the index") from exc
        if vecs.ndim != 2 or vecs.shape[1] != self.dim or len(vecs) != len(ids):
            raise IndexFormatError(f"{vec_path} holds vectors of shape {vecs.shape}, expected ({len(ids)}, {self.dim}); rebuild the index")
        self.segments = [_Segment(ids, vecs)] if len(ids) else []
        self._pending_ids, self._pending_vecs = [], []
        if self._scratch is not None and self._scratch not in vec_path.parents:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    @classmethod
    def load(cls, path: Path, dim: int) -> RescoreStore:
        ids_path, vec_path = cls.files(path)
        vecs = np.load(vec_path, mmap_mode="r", allow_pickle=False) if vec_path.exists() else None
        if vecs is None:
            raise IndexFormatError(f"{vec_path} is missing: the index's rescoring vectors are gone; restore the file or rebuild the index")
        self = cls(dim, str(vecs.dtype))
        self._open(ids_path, vec_path)
        return self


def exact_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """Scores ``[b, n]`` of queries ``[b, d]`` against their own candidates ``[b, n, d]`` (higher = better)."""
    s = np.matmul(vectors, queries[:, :, None])[..., 0]
    if metric == "l2":
        s = 2 * s - (vectors**2).sum(-1) - (queries**2).sum(-1, keepdims=True)
    return s.astype(np.float32)
