"""Exact search with torch (matmul + top-k), for a GPU when faiss has no GPU support.

PyPI's faiss GPU wheels need CUDA 12's cuBLAS; where they cannot run but torch sees a
GPU, this backend keeps the vectors on the device (fp16 by default on CUDA, halving
memory and bandwidth; scores are accumulated in fp32 by the matmul) and searches them
exactly. On a CPU it works too (that is how the tests exercise it without a GPU).
Files: ``<name>.vectors.npy`` and ``<name>.ids.npy`` (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import save_npy
from rag_lfm.errors import ConfigError, IndexFormatError


class TorchExactBackend:
    """Brute-force inner-product (or L2) search on a torch device.

    Args:
        dim: vector dimension.
        metric: ``"ip"`` or ``"l2"``.
        device: ``"auto"`` (CUDA when present), ``"cuda"``, ``"cpu"``.
        dtype: ``"float16"`` or ``"float32"``; ``None`` = fp16 on CUDA, fp32 on CPU.
        query_batch: queries per matmul, bounding the ``[b, n]`` score matrix in memory.
    """

    factory = "torch-exact"
    supports_remove = True
    masked_share = 0.0

    def __init__(self, dim: int, *, metric: str = "ip", device: str = "auto", dtype: str | None = None, query_batch: int = 256) -> None:
        import torch

        if metric not in ("ip", "l2"):
            raise ConfigError(f"index metric {metric!r} must be 'ip' or 'l2'")
        self.dim, self.metric, self.query_batch = dim, metric, query_batch
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
        if dtype is None:
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float16", "float32"):
            raise ConfigError(f"dtype {dtype!r} must be 'float16' or 'float32'")
        self.dtype = getattr(torch, dtype)
        self.vectors = torch.zeros((0, dim), dtype=self.dtype, device=self.device)
        self.ids = torch.zeros(0, dtype=torch.int64, device=self.device)

    @property
    def ntotal(self) -> int:
        return int(self.ids.shape[0])

    @property
    def memory_bytes(self) -> int:
        return int(self.vectors.element_size() * self.vectors.nelement() + 8 * self.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import torch

        if len(ids) == 0:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"vectors of shape {vectors.shape} do not match the index dimension {self.dim}")
        self.vectors = torch.cat([self.vectors, torch.from_numpy(vectors).to(self.device, self.dtype)])
        self.ids = torch.cat([self.ids, torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device)])

    def remove(self, ids: np.ndarray) -> None:
        import torch

        if len(ids) == 0:
            return
        gone = torch.isin(self.ids, torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(self.device))
        keep = ~gone
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q_all = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, self.dtype)
        db, db_ids = self.vectors, self.ids
        if allowed is not None:
            mask = torch.isin(db_ids, torch.from_numpy(np.asarray(allowed, dtype=np.int64)).to(self.device))
            db, db_ids = db[mask], db_ids[mask]
        kk = min(k, int(db_ids.shape[0]))
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        if kk == 0:
            return out_s, out_i
        sq_norms = (db.float() ** 2).sum(1) if self.metric == "l2" else None
        with torch.inference_mode():
            for s in range(0, len(queries), self.query_batch):
                q = q_all[s : s + self.query_batch]
                # top-k runs on the scores in the storage dtype: converting the whole
                # (queries x n) matrix to float32 first doubled the search time on a GPU.
                scores = q @ db.T
                if sq_norms is not None:
                    # -||q - x||^2 = 2 q.x - ||x||^2 - ||q||^2
                    scores = 2 * scores.float() - sq_norms[None, :] - (q.float() ** 2).sum(1, keepdim=True)
                top_s, top_i = torch.topk(scores, kk, dim=1)
                out_s[s : s + len(q), :kk] = top_s.float().cpu().numpy()
                out_i[s : s + len(q), :kk] = db_ids[top_i].cpu().numpy()
        return out_s, out_i

    def save(self, path: Path) -> list[Path]:
        vec_path = path.with_name(path.name + ".vectors.npy")
        ids_path = path.with_name(path.name + ".ids.npy")
        save_npy(vec_path, self.vectors.float().cpu().numpy())
        save_npy(ids_path, self.ids.cpu().numpy())
        return [vec_path, ids_path]

    @classmethod
    def load(cls, path: Path, *, metric: str = "ip", device: str = "auto", dtype: str | None = None, **_: Any) -> TorchExactBackend:
        vec_path = path.with_name(path.name + ".vectors.npy")
        ids_path = path.with_name(path.name + ".ids.npy")
        try:
            vectors = np.load(vec_path, allow_pickle=False)
            ids = np.load(ids_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFormatError(f"could not read torch index files {vec_path} / {ids_path}: {exc}; rebuild the index") from exc
        self = cls(vectors.shape[1], metric=metric, device=device, dtype=dtype)
        self.add(ids, vectors)
        return self
