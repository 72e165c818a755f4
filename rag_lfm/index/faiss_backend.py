"""FAISS backend: any index_factory string, 64-bit ids, on the GPU(s) when faiss has GPU support.

GPU: with a GPU build of faiss (``pip install rag-lfm[gpu]``) the index is copied to
every visible GPU for search (``index_cpu_to_all_gpus``) and always saved from its CPU
copy, so files are portable. Without one, see :mod:`rag_lfm.index.torch_backend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import save_npy, write_bytes
from rag_lfm.errors import ConfigError, IndexFormatError


def _faiss() -> Any:
    import faiss  # imported lazily: heavy, and the torch backend does without it

    return faiss


# Multiply-adds (queries x vectors x dim) under which a search runs on one thread.
SMALL_SEARCH_WORK = 8_000_000


def faiss_gpu_count() -> int:
    """GPUs this faiss build can use; 0 for a CPU build, and 0 when faiss is not installed at all
    (so ``backend="auto"`` still picks the torch backend on a GPU machine without faiss)."""
    try:
        faiss = _faiss()
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


class FaissBackend:
    """A FAISS index with int64 ids.

    Args:
        dim: vector dimension.
        factory: an ``index_factory`` string; an index without its own ids (Flat,
            HNSW, PQ) is wrapped in ``IDMap2``.
        metric: ``"ip"`` (inner product; cosine for normalised vectors) or ``"l2"``.
        nprobe: IVF cells visited per query (None: nlist/8, at least 8).
        use_gpu: ``"auto"`` (when faiss sees a GPU), True or False.
    """

    def __init__(self, dim: int, factory: str = "IDMap2,Flat", *, metric: str = "ip", nprobe: int | None = None, use_gpu: bool | str = "auto") -> None:
        faiss = _faiss()
        if metric not in ("ip", "l2"):
            raise ConfigError(f"index metric {metric!r} must be 'ip' or 'l2'")
        self.dim, self.metric, self.factory = dim, metric, factory
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(dim, factory, faiss_metric)
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build index factory {factory!r}: {str(exc).splitlines()[-1]}; see the faiss wiki 'The index factory'") from exc
        self._init(index, nprobe, use_gpu)

    def _init(self, index: Any, nprobe: int | None, use_gpu: bool | str) -> None:
        faiss = _faiss()
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) and "IDMap" not in self.factory:
            index = faiss.IndexIDMap2(index)
        self.index = index
        self.ivf = ivf
        if ivf is not None:
            # Visit an eighth of the lists (all of them for tiny indexes): recall@10 >= 0.99 of exact in our measurements.
            ivf.nprobe = nprobe or max(min(ivf.nlist, 8), ivf.nlist // 8)
        self.supports_remove = ivf is not None or not isinstance(faiss.downcast_index(_inner(index)), faiss.IndexHNSW)
        self.masked = np.zeros(0, dtype=np.int64)  # ids deleted but not removable (HNSW)
        self.use_gpu = faiss_gpu_count() > 0 if use_gpu == "auto" else bool(use_gpu)
        self._gpu_index: Any = None

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.masked)

    @property
    def memory_bytes(self) -> int:
        faiss = _faiss()
        return int(faiss.serialize_index(self.index).nbytes)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"vectors of shape {vectors.shape} do not match the index dimension {self.dim}")
        if not self.index.is_trained:
            raise ConfigError(f"index {self.factory!r} must be trained before add(); call train(vectors)")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
        self._gpu_index = None

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        if self.supports_remove:
            self.index.remove_ids(_faiss().IDSelectorBatch(ids))
        else:
            self.masked = np.union1d(self.masked, ids)
        self._gpu_index = None

    @property
    def masked_share(self) -> float:
        return len(self.masked) / max(1, int(self.index.ntotal))

    def _search_index(self) -> Any:
        if not self.use_gpu:
            return self.index
        if self._gpu_index is None:
            self._gpu_index = _faiss().index_cpu_to_all_gpus(self.index)
        return self._gpu_index

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        sel = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if len(self.masked):
                allowed = np.setdiff1d(allowed, self.masked)
            sel = faiss.IDSelectorBatch(allowed)
        elif len(self.masked):
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.masked))
        index = self._search_index()
        # A small search (one query on a small index) runs faster on one thread: OpenMP's
        # start-up costs more than it saves, and its threads spin afterwards, taking the
        # cores from the embedder of the next query (measured on 2 cores: -0.4 ms at 10k
        # vectors). omp_set_num_threads applies to the calling thread only.
        small = not self.use_gpu and len(queries) * self.index.ntotal * self.dim <= SMALL_SEARCH_WORK
        threads = faiss.omp_get_max_threads()
        if small:
            faiss.omp_set_num_threads(1)
        try:
            if sel is None:
                scores, ids = index.search(queries, k)
            else:
                # Selectors run on the CPU index: the GPU indexes accept only a subset of them.
                if self.ivf is not None:
                    params = faiss.SearchParametersIVF(sel=sel, nprobe=self.ivf.nprobe)
                else:
                    params = faiss.SearchParameters(sel=sel)
                scores, ids = self.index.search(queries, k, params=params)
        finally:
            if small:
                faiss.omp_set_num_threads(threads)
        if self.metric == "l2":
            scores = -scores
        scores[ids < 0] = -np.inf
        return scores, ids

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: Path) -> list[Path]:
        """Write ``path`` (+ ``path.masked.npy`` when ids are masked); each file is written atomically."""
        faiss = _faiss()
        files = [path]
        write_bytes(path, faiss.serialize_index(self.index).tobytes())
        if len(self.masked):
            masked = path.with_name(path.name + ".masked.npy")
            save_npy(masked, self.masked)
            files.append(masked)
        return files

    @classmethod
    def load(cls, path: Path, *, factory: str, metric: str, mmap: bool = False, nprobe: int | None = None, use_gpu: bool | str = "auto") -> FaissBackend:
        faiss = _faiss()
        try:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) if mmap else faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexFormatError(f"FAISS could not read {path}: {str(exc).splitlines()[-1]}; the file is damaged, rebuild the index") from exc
        self = cls.__new__(cls)
        self.dim, self.metric, self.factory = index.d, metric, factory
        self._init(index, nprobe, use_gpu)
        masked = path.with_name(path.name + ".masked.npy")
        if masked.exists():
            self.masked = np.load(masked, allow_pickle=False)
        return self


def _inner(index: Any) -> Any:
    faiss = _faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return index.index
    return index
