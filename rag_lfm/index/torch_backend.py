"""Exact search with torch (matmul + top-k), for a GPU when faiss has no GPU support.

PyPI's faiss GPU wheels need CUDA 12's cuBLAS; where they cannot run but torch sees a
GPU, this backend keeps the vectors on the device and searches them exactly.

* Storage: ``float16`` (default on CUDA: half the memory and bandwidth of fp32; the
  matmul accumulates in fp32), ``float32`` (default on CPU), or ``int8`` (a quarter of
  fp32: each vector scaled by its largest component, ``x ~ scale * code``; scores are
  exact for the stored codes, computed with ``torch._int_mm`` where the device supports
  it, else by dequantising one tile at a time).
* Vectors live in segments of at most ``segment_rows`` rows, so an add copies at most one
  segment (no O(n) concatenation per commit) and memory is exactly what is stored.
* Search never materialises the full ``[queries, n]`` score matrix: the database is
  scored in tiles of at most ``tile_scores`` scores, each tile's top-k (optionally in two
  exact levels, ``topk_group``) is merged into a running top-k (:mod:`rag_lfm.index.topk`).
  One query scores a whole segment per matmul: one pass over the vectors, bound by memory
  bandwidth.

On a CPU it works too (that is how the tests exercise it without a GPU).
Files: ``<name>.vectors.npy`` (float32) and ``<name>.ids.npy`` (no pickle).

Example:
    >>> be = TorchExactBackend(384, device="cuda", dtype="int8")       # doctest: +SKIP
    >>> be.add(ids, vectors); scores, ids = be.search(queries, 10)     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import save_npy_blocks
from rag_lfm.errors import ConfigError, IndexFormatError
from rag_lfm.index.topk import torch_merge, torch_topk_tile

DTYPES = ("float16", "float32", "int8")
DEQUANT_BYTES = 64 << 20  # int8 rows dequantised at once where torch._int_mm cannot run


class TorchExactBackend:
    """Brute-force inner-product (or L2) search on a torch device.

    Args:
        dim: vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        device: ``"auto"`` (CUDA when present), ``"cuda"``, ``"cpu"``.
        dtype: ``"float16"``, ``"float32"`` or ``"int8"``; ``None`` = fp16 on CUDA, fp32 on CPU.
        query_batch: queries per pass over the database.
        tile_scores: at most this many scores (queries x rows) exist at once per pass; one
            query scores a whole segment at once.
        topk_group: two-level top-k with groups of this many scores per row (0: one level).
        segment_rows: rows per storage segment (None: 8M on CUDA, where one query then scans up to 8M
            rows in one matmul, and an add copies a segment at device speed; 1M on a CPU).
        int_mm: score int8 storage with ``torch._int_mm`` (None: on CUDA only; it falls back to
            dequantising when the device or shape is not supported).
    """

    factory = "torch-exact"
    supports_remove = True
    masked_share = 0.0

    def __init__(self, dim: int, *, metric: str = "ip", device: str = "auto", dtype: str | None = None, query_batch: int = 256,
                 tile_scores: int = 1 << 25, topk_group: int = 1024, segment_rows: int | None = None,
                 int_mm: bool | None = None) -> None:
        import torch

        if metric not in ("ip", "l2"):
            raise ConfigError(f"index metric {metric!r} must be 'ip' or 'l2'")
        self.dim, self.metric, self.query_batch = dim, metric, max(1, int(query_batch))
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        if segment_rows is None:
            segment_rows = 1 << 23 if self.device.type == "cuda" else 1 << 20
        self.tile_scores, self.topk_group, self.segment_rows = int(tile_scores), int(topk_group), int(segment_rows)
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in DTYPES:
            raise ConfigError(f"dtype {dtype!r} must be one of {DTYPES}")
        self.dtype_name = dtype
        self.dtype = getattr(torch, dtype)
        # fp16 storage scores in fp16 (tensor cores); int8 dequantises to fp16 on CUDA, fp32 on a CPU
        self.compute_dtype = torch.float32 if dtype == "float32" or self.device.type == "cpu" else torch.float16
        self._vecs: list[Any] = []  # [rows, dim] in self.dtype
        self._ids: list[Any] = []  # [rows] int64
        self._scales: list[Any] = []  # int8 only: [rows] float32
        self._norms: list[Any] = []  # l2 only: [rows] float32, squared norms of the stored vectors
        self._int_mm = self.device.type == "cuda" if int_mm is None else bool(int_mm)  # switched off on the first failure (shape or device limits)

    # -- contents ------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(sum(int(i.shape[0]) for i in self._ids))

    @property
    def memory_bytes(self) -> int:
        """Bytes on the device: vectors, ids, and int8 scales / l2 norms where kept."""
        total = 0
        for part in (self._vecs, self._ids, self._scales, self._norms):
            total += sum(int(t.element_size() * t.nelement()) for t in part)
        return total

    def _encode(self, x: Any) -> tuple[Any, Any | None]:
        """Device storage of float32 rows ``x``: (codes, per-row scales or None)."""
        import torch

        if self.dtype_name != "int8":
            return x.to(self.dtype), None
        scale = x.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        codes = torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return codes, scale

    def _decoded(self, codes: Any, scale: Any | None) -> Any:
        return codes.float() * scale[:, None] if scale is not None else codes.float()

    def add(self, ids: np.ndarray | Any, vectors: np.ndarray | Any) -> None:
        """Append vectors (numpy arrays or torch tensors, on any device) under int64 ``ids``."""
        import torch

        if len(ids) == 0:
            return
        if not isinstance(vectors, torch.Tensor):
            arr = np.ascontiguousarray(vectors, dtype=np.float32)
            vectors = torch.from_numpy(arr if arr.flags.writeable else arr.copy())  # a read-only memory map: copy one block
        x = vectors
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ConfigError(f"vectors of shape {tuple(x.shape)} do not match the index dimension {self.dim}")
        i = ids if isinstance(ids, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64))
        i = i.to(self.device, torch.int64)
        for s in range(0, x.shape[0], self.segment_rows):
            xs = x[s : s + self.segment_rows].to(self.device, torch.float32)
            codes, scale = self._encode(xs)
            norms = (self._decoded(codes, scale) ** 2).sum(1) if self.metric == "l2" else None
            self._append(codes, i[s : s + self.segment_rows], scale, norms)

    def _append(self, codes: Any, ids: Any, scale: Any | None, norms: Any | None) -> None:
        import torch

        # Grow the last segment while it has room: each add copies at most one segment.
        if self._vecs and self._vecs[-1].shape[0] + codes.shape[0] <= self.segment_rows:
            self._vecs[-1] = torch.cat([self._vecs[-1], codes])
            self._ids[-1] = torch.cat([self._ids[-1], ids])
            if scale is not None:
                self._scales[-1] = torch.cat([self._scales[-1], scale])
            if norms is not None:
                self._norms[-1] = torch.cat([self._norms[-1], norms])
            return
        self._vecs.append(codes)
        self._ids.append(ids)
        if scale is not None:
            self._scales.append(scale)
        if norms is not None:
            self._norms.append(norms)

    def remove(self, ids: np.ndarray) -> None:
        import torch

        if len(ids) == 0 or not self._ids:
            return
        gone_ids = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)
        for s in range(len(self._ids)):
            keep = ~torch.isin(self._ids[s], gone_ids)
            if bool(keep.all()):
                continue
            self._vecs[s], self._ids[s] = self._vecs[s][keep], self._ids[s][keep]
            if self._scales:
                self._scales[s] = self._scales[s][keep]
            if self._norms:
                self._norms[s] = self._norms[s][keep]
        empty = [s for s in range(len(self._ids)) if self._ids[s].shape[0] == 0]
        for s in reversed(empty):
            for part in (self._vecs, self._ids, self._scales, self._norms):
                if part:
                    del part[s]

    # -- search --------------------------------------------------------------------------
    def _tile_scores(self, q: Any, q_int8: tuple[Any, Any] | None, s: int, a: int, b: int) -> Any:
        """Scores ``[len(q), b - a]`` of queries against rows a:b of segment s (inner product)."""
        import torch

        codes = self._vecs[s][a:b]
        if self.dtype_name != "int8":
            return q @ (codes if codes.dtype == q.dtype else codes.to(q.dtype)).T
        scale = self._scales[s][a:b]
        if q_int8 is not None and self._int_mm and codes.shape[0] % 8 == 0:
            try:
                qi, qs = q_int8
                raw = torch._int_mm(qi, codes.T)[: q.shape[0]]
                return raw.float() * qs[: q.shape[0], None] * scale[None, :]
            except RuntimeError:
                self._int_mm = False  # this device / shape has no int8 matmul: dequantise from now on
        # Dequantise a bounded slice at a time: a whole tile in fp16 could take gigabytes.
        out = torch.empty((q.shape[0], codes.shape[0]), dtype=torch.float32, device=q.device)
        step = max(8, DEQUANT_BYTES // (codes.shape[1] * 2))
        for a in range(0, codes.shape[0], step):
            out[:, a : a + step] = (q @ codes[a : a + step].to(q.dtype).T).float() * scale[None, a : a + step]
        return out

    def _quantize_queries(self, q: Any) -> tuple[Any, Any] | None:
        """int8 queries for ``torch._int_mm`` (padded to > 16 rows as cuBLAS requires); None if not usable."""
        import torch

        if self.dtype_name != "int8" or not self._int_mm or self.dim % 8:
            return None
        qs = q.float().abs().amax(dim=1).clamp_min(1e-12) / 127.0
        qi = torch.round(q.float() / qs[:, None]).clamp_(-127, 127).to(torch.int8)
        if qi.shape[0] <= 16:
            pad = 17 - qi.shape[0]
            qi = torch.cat([qi, torch.zeros((pad, self.dim), dtype=torch.int8, device=qi.device)])
            qs = torch.cat([qs, torch.ones(pad, device=qs.device)])
        return qi, qs

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        nq = len(queries)
        out_s = np.full((nq, k), -np.inf, dtype=np.float32)
        out_i = np.full((nq, k), -1, dtype=np.int64)
        if nq == 0 or not self._ids:
            return out_s, out_i
        q_all = queries if isinstance(queries, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        q_all = q_all.to(self.device, torch.float32)
        allowed_t = torch.from_numpy(np.asarray(allowed, dtype=np.int64)).to(self.device) if allowed is not None else None
        masks = [torch.isin(i, allowed_t) for i in self._ids] if allowed_t is not None else None
        with torch.inference_mode():
            for start in range(0, nq, self.query_batch):
                qf = q_all[start : start + self.query_batch]
                q = qf.to(self.compute_dtype)
                q_int8 = self._quantize_queries(qf)
                q_norms = (qf**2).sum(1, keepdim=True) if self.metric == "l2" else None
                rows = max(8, (self.tile_scores // len(q)) // 8 * 8)
                best = None
                for s in range(len(self._ids)):
                    seg_ids = self._ids[s]
                    mask = masks[s] if masks is not None else None
                    if mask is not None and not bool(mask.any()):
                        continue
                    n = int(seg_ids.shape[0])
                    for a in range(0, n, rows):
                        b = min(n, a + rows)
                        sc = self._tile_scores(q, q_int8, s, a, b)
                        if q_norms is not None:
                            # -||q - x||^2 = 2 q.x - ||x||^2 - ||q||^2
                            sc = 2 * sc.float() - self._norms[s][a:b][None, :] - q_norms
                        if mask is not None:
                            sc = sc.masked_fill(~mask[a:b][None, :], float("-inf"))
                        # top-k in the score dtype: converting a whole tile to fp32 first doubled the GPU time
                        v, pos = torch_topk_tile(sc, k, self.topk_group)
                        best = torch_merge(best, v.float(), seg_ids[a:b][pos], k)
                if best is None:
                    continue
                vals, ids = best[0].cpu().numpy(), best[1].cpu().numpy()
                kk = vals.shape[1]
                out_s[start : start + len(q), :kk] = vals
                out_i[start : start + len(q), :kk] = np.where(np.isfinite(vals), ids, -1)
        out_s[out_i < 0] = -np.inf
        return out_s, out_i

    # -- persistence ---------------------------------------------------------------------
    def _files(self, path: Path) -> tuple[Path, Path]:
        return path.with_name(path.name + ".vectors.npy"), path.with_name(path.name + ".ids.npy")

    def save(self, path: Path) -> list[Path]:
        """Write the stored vectors (as float32) and ids, a segment at a time (host memory: one segment)."""
        vec_path, ids_path = self._files(path)
        n = self.ntotal
        blocks = (self._decoded(c, self._scales[s] if self._scales else None).cpu().numpy() for s, c in enumerate(self._vecs))
        save_npy_blocks(vec_path, (n, self.dim), np.float32, blocks)
        save_npy_blocks(ids_path, (n,), np.int64, (i.cpu().numpy() for i in self._ids))
        return [vec_path, ids_path]

    @classmethod
    def load(cls, path: Path, *, metric: str = "ip", device: str = "auto", dtype: str | None = None, **options: Any) -> TorchExactBackend:
        vec_path, ids_path = path.with_name(path.name + ".vectors.npy"), path.with_name(path.name + ".ids.npy")
        try:
            vectors = np.load(vec_path, mmap_mode="r", allow_pickle=False)
            ids = np.load(ids_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"could not read torch index files {vec_path} / {ids_path}: {exc}; rebuild the index") from exc
        known = {k: v for k, v in options.items() if k in ("query_batch", "tile_scores", "topk_group", "segment_rows", "int_mm")}
        self = cls(vectors.shape[1], metric=metric, device=device, dtype=dtype, **known)
        step = self.segment_rows
        for s in range(0, len(ids), step):  # memory-mapped: host memory holds one segment at a time
            self.add(ids[s : s + step], np.asarray(vectors[s : s + step]))
        return self
