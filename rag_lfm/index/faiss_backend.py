"""FAISS backends: any ``index_factory`` string (float) or binary codes, 64-bit ids, filters, removal.

``FaissBackend`` takes any float factory string, optionally ending in our own rescoring
stage ``",Rescore"`` (or ``",Rescore(fp16)"``): the index returns ``k * k_factor``
candidates, rescored exactly from float vectors kept on disk (:mod:`rag_lfm.index.rescore`).
``BinaryBackend`` (``"BFlat"``, ``"BIVF1024"``, ``"BHNSW32"``, usually ``",Rescore"``)
sign-quantises vectors against per-dimension medians learned on a training sample and
searches by Hamming distance.

What each FAISS type can do, and what we do where it cannot (checked for every family by
``tests/test_index_families.py``):

* remove ids: Flat, SQ, PQ, IVF*, BFlat, BIVF can; HNSW, BHNSW and faiss' Refine/RFlat
  cannot: a deleted id's *position* in the ``IDMap`` wrapper is masked (left out of every
  search through an ``IDSelectorNot`` on the wrapped index, or the over-fetch below), so an
  id deleted and added again is found once, with its new vector; the knowledge base
  compacts the index (rebuilds it from the stored vectors) once more than 20% is masked.
* a search-time ``IDSelector`` (metadata filters, masking): Flat, SQ, IVF*, HNSW, BFlat
  can; PQ/OPQ without IVF, fast-scan PQ, Refine/RFlat, BIVF, BHNSW cannot: there the
  search *over-fetches* (k grows 4x per round until k allowed ids are found or the index is
  exhausted), which is exact for the exhaustive ones (PQ, BFlat); for the others the
  knowledge base scores small filters exactly from stored vectors before the index is asked.

Search parameters (``params``): ``nprobe`` (IVF cells visited), ``efSearch`` (HNSW beam),
``k_factor`` (rescoring depth), recorded in the manifest by the tuner.

GPU: with a GPU build of faiss (``pip install rag-lfm[gpu]``) a float index is copied to
every visible GPU for unfiltered search (``index_cpu_to_all_gpus``) and always saved from
its CPU copy, so files are portable. Without one, see :mod:`rag_lfm.index.torch_backend`.

Larger than RAM: ``load(..., mmap=True)`` maps the inverted lists and flat code arrays from
the file (``IO_FLAG_MMAP_IFC``) instead of reading them: the process' heap holds only the
quantizers, ids of IDMap wrappers and HNSW graphs, so an index larger than the memory the
process may use is searchable (read-only).
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.atomic import save_npy, write_with
from rag_lfm.errors import ConfigError, IndexFormatError
from rag_lfm.index.rescore import RescoreStore, exact_scores

IDMAP2_REV_BYTES = 44  # heap bytes per id of IDMap2's reverse map (an unordered_map), measured with RSS; not serialised


def _faiss() -> Any:
    import faiss  # imported lazily: heavy, and the torch backend does without it

    return faiss


# Multiply-adds (queries x vectors x dim) under which a search runs on one thread.
SMALL_SEARCH_WORK = 8_000_000
RESCORE_RE = re.compile(r"^(?P<base>.+?),\s*Rescore(?:\((?P<dtype>fp16|fp32)\))?$")
PARAM_NAMES = ("nprobe", "efSearch", "k_factor")
DEFAULT_K_FACTOR = 10
HNSW_EF_SEARCH = 16  # faiss' default beam width, restored when efSearch is reset
RESCORE_BLOCK_BYTES = 32 << 20
ADD_TABLE_BYTES = 32 << 20  # PQ encoding tables held at once while adding  # gathered candidate vectors held at once while rescoring a batch


def faiss_gpu_count() -> int:
    """GPUs this faiss build can use; 0 for a CPU build, and 0 when faiss is not installed at all
    (so ``backend="auto"`` still picks the torch backend on a GPU machine without faiss)."""
    try:
        faiss = _faiss()
    except ImportError:
        return 0
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def split_rescore(factory: str) -> tuple[str, str | None]:
    """``("IVF256,PQ32", "float32")`` for ``"IVF256,PQ32,Rescore"``; ``(factory, None)`` without the stage."""
    m = RESCORE_RE.match(factory.strip())
    if not m:
        return factory, None
    return m.group("base"), "float16" if m.group("dtype") == "fp16" else "float32"


def check_params(params: dict[str, Any] | None) -> dict[str, int]:
    """Validated search parameters: only ``nprobe``, ``efSearch``, ``k_factor``, positive ints."""
    out: dict[str, int] = {}
    for name, value in (params or {}).items():
        if name not in PARAM_NAMES:
            raise ConfigError(f"unknown index search parameter {name!r}; valid: {', '.join(PARAM_NAMES)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"index search parameter {name}={value!r} must be a positive int")
        out[name] = int(value)
    return out


def _walk(index: Any) -> list[Any]:
    """The chain of wrapped indexes, outermost first (IDMap, PreTransform, Refine -> base)."""
    faiss = _faiss()
    chain = []
    while index is not None:
        index = faiss.downcast_index(index) if not isinstance(index, faiss.IndexBinary) else faiss.downcast_IndexBinary(index)
        chain.append(index)
        if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform, faiss.IndexBinaryIDMap, faiss.IndexBinaryIDMap2)):
            index = index.index
        elif isinstance(index, faiss.IndexRefine):
            index = index.base_index
        else:
            index = None
    return chain


def _can_remove(index: Any) -> bool:
    """Whether ``remove_ids`` works on this index (by type; an unknown type is probed while empty)."""
    faiss = _faiss()
    for part in _walk(index):
        if isinstance(part, (faiss.IndexHNSW, faiss.IndexNSG, faiss.IndexRefine, faiss.IndexBinaryHNSW)):
            return False
        if isinstance(part, (faiss.IndexIVF, faiss.IndexFlatCodes, faiss.IndexFastScan, faiss.IndexBinaryFlat, faiss.IndexBinaryIVF)):
            return True
    if index.ntotal == 0:
        try:
            index.remove_ids(faiss.IDSelectorBatch(np.zeros(0, np.int64)))
            return True
        except RuntimeError:
            return False
    return False


def _mapped_bytes(index: Any) -> int:
    """Bytes of an ``IO_FLAG_MMAP_IFC``-loaded index that live in the file mapping, not the heap."""
    faiss = _faiss()
    for part in _walk(index):
        if isinstance(part, (faiss.IndexIVF, faiss.IndexBinaryIVF)):
            inv = part.invlists
            n = sum(inv.list_size(i) for i in range(part.nlist))
            return int(n * (part.code_size + 8))
        if isinstance(part, faiss.IndexFlatCodes):
            return int(part.ntotal * part.code_size)
        if isinstance(part, faiss.IndexBinaryFlat):
            return int(part.ntotal * part.code_size)
        if isinstance(part, (faiss.IndexHNSW, faiss.IndexBinaryHNSW)):
            return _mapped_bytes(part.storage)
    return 0


class _CodesBackend:
    """What the float and binary FAISS backends share: masking, filters, rescoring, persistence."""

    factory: str
    index: Any
    metric: str
    dim: int

    def _setup(self, rescore: str | None, params: dict[str, Any] | None, use_gpu: bool | str, *, read_only: bool = False) -> None:
        self.params = check_params(params)
        self.rescore = RescoreStore(self.dim, rescore) if rescore else None
        self.supports_remove = _can_remove(self.index)
        self.masked = np.zeros(0, dtype=np.int64)  # IDMap positions deleted but not removable (HNSW, Refine)
        self._idmap: np.ndarray | None = None  # cached copy of the IDMap's ids (for masking by position)
        self.read_only = read_only
        self.mmap = read_only
        self._selector_ok: bool | None = None  # learnt on the first filtered search
        self.use_gpu = (faiss_gpu_count() > 0 if use_gpu == "auto" else bool(use_gpu)) and not self._binary
        self._gpu_index: Any = None
        self._apply_params()

    _binary = False

    # -- parameters ----------------------------------------------------------------------
    def _apply_params(self) -> None:
        faiss = _faiss()
        for part in _walk(self.index):
            if isinstance(part, (faiss.IndexIVF, faiss.IndexBinaryIVF)):
                # Default: an eighth of the lists (all of them for tiny indexes): recall@10 >= 0.99 of exact on our data.
                part.nprobe = self.params.get("nprobe") or max(min(part.nlist, 8), part.nlist // 8)
                part.nprobe = min(part.nprobe, part.nlist)
            if isinstance(part, (faiss.IndexHNSW, faiss.IndexBinaryHNSW)):
                part.hnsw.efSearch = self.params.get("efSearch", HNSW_EF_SEARCH)
        self._gpu_index = None

    def set_params(self, **params: Any) -> None:
        """Change search parameters in place (``nprobe``, ``efSearch``, ``k_factor``); None resets one."""
        merged = {**self.params, **params}
        self.params = check_params({k: v for k, v in merged.items() if v is not None})
        self._apply_params()

    @property
    def ivf(self) -> Any:
        faiss = _faiss()
        return next((p for p in _walk(self.index) if isinstance(p, (faiss.IndexIVF, faiss.IndexBinaryIVF))), None)

    @property
    def hnsw(self) -> Any:
        faiss = _faiss()
        return next((p for p in _walk(self.index) if isinstance(p, (faiss.IndexHNSW, faiss.IndexBinaryHNSW))), None)

    @property
    def k_factor(self) -> int:
        return self.params.get("k_factor", DEFAULT_K_FACTOR) if self.rescore is not None else 1

    # -- contents ------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal) - len(self.masked)

    @property
    def masked_share(self) -> float:
        return len(self.masked) / max(1, int(self.index.ntotal))

    def _index_bytes(self) -> int:
        """Serialised size of the FAISS index, counted through a callback writer (no copy in memory).

        Memory-mapped: the file's size (counting through the writer would page the whole file in).
        """
        path = getattr(self, "_path", None)
        if self.mmap and path is not None and path.exists():
            return int(path.stat().st_size)
        faiss = _faiss()
        total = [0]

        def count(buf: bytes) -> int:
            total[0] += len(buf)
            return len(buf)

        writer = faiss.PyCallbackIOWriter(count)
        (faiss.write_index_binary if self._binary else faiss.write_index)(self.index, writer)
        del writer
        return total[0]

    @property
    def memory_bytes(self) -> int:
        """Bytes in RAM when the index is loaded normally: the FAISS structures, masks, pending rescoring rows."""
        extra = self.masked.nbytes + (self.rescore.resident_bytes if self.rescore is not None else 0) + self._side_bytes()
        return int(self._index_bytes() + extra)

    def _side_bytes(self) -> int:
        return 0

    def memory_report(self) -> dict[str, int]:
        """``resident`` (heap), ``mapped`` (file-backed, paged in on demand) and ``disk`` bytes of this index."""
        index_bytes = self._index_bytes()
        mapped = _mapped_bytes(self.index) if self.mmap else 0
        heap = index_bytes - mapped + self.masked.nbytes + self._side_bytes()
        rescore_disk = self.rescore.disk_bytes if self.rescore is not None else 0
        if self.rescore is not None:
            heap += self.rescore.resident_bytes
        return {"resident": int(heap), "mapped": int(mapped + rescore_disk), "disk": int(index_bytes + rescore_disk)}

    def reserve(self, n: int) -> None:
        """Allocate room for ``n`` vectors in flat code arrays and IDMap ids before adding them.

        faiss grows these std::vectors geometrically while adding, which held ~35% more than the
        final size at the peak (measured: 212 MB for a 157 MB flat index) and leaves the slack
        allocated; sized up front, the peak is the final size. (IVF lists grow one by one and
        are left as they are.)
        """
        faiss = _faiss()
        for part in _walk(self.index):
            vec, width = None, 0
            if isinstance(part, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexBinaryIDMap)):
                vec, width = part.id_map, 1
            elif isinstance(part, faiss.IndexFlatCodes):
                vec, width = part.codes, part.code_size
            elif isinstance(part, faiss.IndexBinaryFlat):
                vec, width = part.xb, part.code_size
            elif isinstance(part, (faiss.IndexHNSW, faiss.IndexBinaryHNSW)):
                storage = faiss.downcast_index(part.storage) if isinstance(part, faiss.IndexHNSW) else faiss.downcast_IndexBinary(part.storage)
                vec, width = (storage.codes, storage.code_size) if isinstance(storage, faiss.IndexFlatCodes) else (None, 0)
            if vec is not None and vec.size() == 0:  # only an empty array: never touch stored codes
                vec.resize(int(n) * width)  # allocates exactly, then keeps the capacity:
                vec.resize(0)  # std::vector never shrinks its capacity on resize

    def _check_writable(self, what: str) -> None:
        if self.read_only:
            raise ConfigError(f"cannot {what}: this index was opened with mmap=True (read-only, larger than RAM); "
                              "open it without mmap to change it")

    def _to_codes(self, vectors: np.ndarray) -> np.ndarray:
        return vectors

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._check_writable("add vectors")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ConfigError(f"vectors of shape {vectors.shape} do not match the index dimension {self.dim}")
        if not self.is_trained:
            raise ConfigError(f"index {self.factory!r} must be trained before add(); call train(vectors)")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        step = self._add_rows()
        for a in range(0, len(ids), step):
            self.index.add_with_ids(self._to_codes(vectors[a : a + step]), ids[a : a + step])
        if self.rescore is not None:
            self.rescore.add(ids, vectors)
        self._gpu_index = None
        self._idmap = None

    def _add_rows(self) -> int:
        """Rows per faiss add call. A PQ with sub-vectors of 16+ dimensions encodes through a
        distance table of rows x M x 256 floats (402 MB for 16,384 rows of PQ24 on 384-d,
        measured): adding in slices bounds it at ADD_TABLE_BYTES."""
        rows = 1 << 30
        for part in _walk(self.index):
            pq = getattr(part, "pq", None)
            if pq is not None and pq.dsub >= 16:
                rows = min(rows, max(256, ADD_TABLE_BYTES // (pq.M * pq.ksub * 4)))
        return rows

    def remove(self, ids: np.ndarray) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self._check_writable("remove ids")
        if self.supports_remove:
            self.index.remove_ids(_faiss().IDSelectorBatch(ids))
            self._idmap = None
        else:
            self.masked = np.union1d(self.masked, np.flatnonzero(np.isin(self._id_map(), ids)))
        if self.rescore is not None:
            self.rescore.remove(ids)
        self._gpu_index = None

    def _id_map(self) -> np.ndarray:
        """The ids of the IDMap wrapper, by position (cached until the next add)."""
        if self._idmap is None:
            self._idmap = _faiss().vector_to_array(self.index.id_map).astype(np.int64)
        return self._idmap

    # -- search --------------------------------------------------------------------------
    def _search_params(self, sel: Any) -> Any:
        faiss = _faiss()
        ivf, hnsw = self.ivf, self.hnsw
        if ivf is not None:
            return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
        if hnsw is not None and not self._binary:
            return faiss.SearchParametersHNSW(sel=sel, efSearch=hnsw.hnsw.efSearch)
        return faiss.SearchParameters(sel=sel)

    def _raw(self, index: Any, q: np.ndarray, k: int, sel: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of ``index`` on encoded queries: (scores, higher = better; labels)."""
        if sel is None:
            scores, labels = (self._search_index() if index is self.index else index).search(q, k)
        else:
            # Selectors run on the CPU index: the GPU indexes accept only a subset of them.
            scores, labels = index.search(q, k, params=self._search_params(sel))
        return self._as_scores(scores), labels

    def _as_scores(self, scores: np.ndarray) -> np.ndarray:
        return -scores if self.metric == "l2" else scores

    def _search_index(self) -> Any:
        return self.index

    def _candidates(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The index's own top ``k`` among ``allowed`` (None: all), never a masked copy."""
        faiss = _faiss()
        if not len(self.masked):
            if allowed is None:
                return self._raw(self.index, q, k)
            return self._filtered(self.index, q, k, faiss.IDSelectorBatch(allowed), lambda lab: np.isin(lab, allowed), len(allowed))
        # Masked positions: search the wrapped index, whose labels are IDMap positions.
        idm, masked = self._id_map(), self.masked
        not_masked = faiss.IDSelectorNot(faiss.IDSelectorBatch(masked))
        if allowed is None:
            sel, share = not_masked, len(idm) - len(masked)
            keep = lambda pos: ~np.isin(pos, masked)  # noqa: E731
        else:
            by_id = faiss.IDSelectorTranslated(self.index.id_map, faiss.IDSelectorBatch(allowed))
            sel, share = faiss.IDSelectorAnd(by_id, not_masked), len(allowed)
            keep = lambda pos: ~np.isin(pos, masked) & np.isin(idm[np.maximum(pos, 0)], allowed)  # noqa: E731
        scores, pos = self._filtered(self.index.index, q, k, sel, keep, share)
        return scores, np.where(pos >= 0, idm[np.maximum(pos, 0)], -1)

    def _filtered(self, index: Any, q: np.ndarray, k: int, sel: Any, keep: Any, n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """Search with a selector where the index takes one, else by over-fetching and keeping ``keep(labels)``."""
        if self._selector_ok is not False:
            try:
                out = self._raw(index, q, k, sel)
                self._selector_ok = True
                return out
            except RuntimeError:
                if self._selector_ok:
                    raise  # selectors worked before: a real failure
                # This index type takes no search-time selector ("invalid search params", "not supported"):
                # over-fetch from now on. Any other error comes back from the plain search below.
                self._selector_ok = False
        return self._overfetch(index, q, k, keep, n_allowed)

    def _overfetch(self, index: Any, q: np.ndarray, k: int, keep: Any, n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` labels passing ``keep`` by searching deeper (4x per round) until k pass or the index is exhausted."""
        raw_total = int(index.ntotal)
        kk = min(raw_total, max(4 * k, int(math.ceil(2 * k * raw_total / max(n_allowed, 1)))))
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        todo = np.arange(len(q))
        while len(todo) and kk > 0:
            s, lab = self._raw(index, q[todo], kk)
            ok = (lab >= 0) & keep(lab)
            done = []
            for row, qi in enumerate(todo):
                hit = np.flatnonzero(ok[row])[:k]
                exhausted = kk >= raw_total or bool((lab[row] < 0).any())  # the index has nothing more to give
                if len(hit) == k or exhausted:
                    out_s[qi, : len(hit)] = s[row, hit]
                    out_i[qi, : len(hit)] = lab[row, hit]
                    done.append(row)
            todo = np.delete(todo, done)
            kk = min(raw_total, kk * 4)
        return out_s, out_i

    def _encode_queries(self, q: np.ndarray) -> np.ndarray:
        return q

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        depth = k * self.k_factor
        # A small search (one query on a small index) runs faster on one thread: OpenMP's
        # start-up costs more than it saves, and its threads spin afterwards, taking the
        # cores from the embedder of the next query (measured on 2 cores: -0.4 ms at 10k
        # vectors). omp_set_num_threads applies to the calling thread only.
        small = not self.use_gpu and len(queries) * self.index.ntotal * self.dim <= SMALL_SEARCH_WORK
        threads = faiss.omp_get_max_threads()
        if small:
            faiss.omp_set_num_threads(1)
        try:
            scores, ids = self._candidates(self._encode_queries(queries), depth, allowed)
        finally:
            if small:
                faiss.omp_set_num_threads(threads)
        if self.rescore is not None:
            scores, ids = self._rescore(queries, ids, k)
        elif scores.shape[1] > k:
            scores, ids = scores[:, :k], ids[:, :k]
        scores = np.ascontiguousarray(scores, dtype=np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _rescore(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_s = np.full((len(queries), k), -np.inf, np.float32)
        out_i = np.full((len(queries), k), -1, np.int64)
        # Gathered candidates take queries x depth x dim floats: score them a slice of queries at a time.
        step = max(1, RESCORE_BLOCK_BYTES // max(1, cand.shape[1] * self.dim * 4))
        for a in range(0, len(queries), step):
            c = cand[a : a + step]
            vecs, found = self.rescore.gather(c)
            s = exact_scores(queries[a : a + step], vecs, self.metric)
            s[~found] = -np.inf
            kk = min(k, s.shape[1])
            part = np.argpartition(-s, kk - 1, axis=1)[:, :kk] if kk < s.shape[1] else np.argsort(-s, axis=1)
            order = np.take_along_axis(part, np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable"), 1)
            top_s = np.take_along_axis(s, order, 1)
            out_s[a : a + step, :kk] = top_s
            out_i[a : a + step, :kk] = np.where(np.isfinite(top_s), np.take_along_axis(c, order, 1), -1)
        return out_s, out_i

    # -- persistence ---------------------------------------------------------------------
    def _write_index(self, path: Path) -> None:
        faiss = _faiss()
        write_with(path, lambda tmp: (faiss.write_index_binary if self._binary else faiss.write_index)(self.index, str(tmp)))

    def save(self, path: Path) -> list[Path]:
        """Write ``path`` (streamed to disk, atomically) + ``.masked-pos.npy`` when ids are masked + rescoring vectors."""
        path = Path(path)
        files = [path]
        self._write_index(path)
        if len(self.masked):
            masked = path.with_name(path.name + ".masked-pos.npy")
            save_npy(masked, self.masked)
            files.append(masked)
        files += self._save_side(path)
        if self.rescore is not None:
            files += self.rescore.save(path)
        return files

    def _save_side(self, path: Path) -> list[Path]:
        return []

    def _load_common(self, path: Path) -> None:
        self._path = path
        masked = path.with_name(path.name + ".masked-pos.npy")
        legacy = path.with_name(path.name + ".masked.npy")  # before positions: masked ids
        if masked.exists():
            self.masked = np.load(masked, allow_pickle=False)
        elif legacy.exists():
            self.masked = np.flatnonzero(np.isin(self._id_map(), np.load(legacy, allow_pickle=False))).astype(np.int64)
        if self.rescore is not None:
            self.rescore = RescoreStore.load(path, self.dim)


@contextlib.contextmanager
def _training(factory: str, n: int) -> Iterator[None]:
    """FAISS training errors (e.g. fewer points than PQ centroids) as a ConfigError naming the fix."""
    try:
        yield
    except RuntimeError as exc:
        raise ConfigError(f"index {factory!r} could not be trained on {n} vectors: {str(exc).splitlines()[-1]}; "
                          "train it on more vectors (a larger first batch: commit_every), or use a smaller index "
                          "(fewer IVF lists, or a family name such as 'ivf-pq', sized to the collection)") from exc


def _read(path: Path, mmap: bool, binary: bool) -> Any:
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return (faiss.read_index_binary if binary else faiss.read_index)(str(path), flags)
    except RuntimeError as exc:
        raise IndexFormatError(f"FAISS could not read {path}: {str(exc).splitlines()[-1]}; the file is damaged, rebuild the index") from exc


class FaissBackend(_CodesBackend):
    """A FAISS float index with int64 ids.

    Args:
        dim: vector dimension.
        factory: an ``index_factory`` string, optionally ending in ``",Rescore"`` (exact
            rescoring of ``k * k_factor`` candidates from float vectors on disk) or
            ``",Rescore(fp16)"``; an index without its own ids (Flat, HNSW, PQ) is wrapped
            in ``IDMap2``.
        metric: ``"ip"`` (inner product; cosine for normalised vectors) or ``"l2"``.
        nprobe: IVF cells visited per query (None: nlist/8, at least 8); same as ``params={"nprobe": n}``.
        params: search parameters ``nprobe``, ``efSearch``, ``k_factor``.
        use_gpu: ``"auto"`` (when faiss sees a GPU), True or False.

    Example:
        >>> be = FaissBackend(384, "IVF1024,PQ48x4fs,Rescore", params={"nprobe": 32, "k_factor": 8})  # doctest: +SKIP
        >>> be.train(sample); be.add(ids, vectors); scores, ids = be.search(queries, 10)            # doctest: +SKIP
    """

    def __init__(self, dim: int, factory: str = "IDMap2,Flat", *, metric: str = "ip", nprobe: int | None = None,
                 params: dict[str, Any] | None = None, use_gpu: bool | str = "auto") -> None:
        faiss = _faiss()
        if metric not in ("ip", "l2"):
            raise ConfigError(f"index metric {metric!r} must be 'ip' or 'l2'")
        self.dim, self.metric, self.factory = dim, metric, factory
        base, rescore = split_rescore(factory)
        faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
        try:
            index = faiss.index_factory(dim, base, faiss_metric)
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build index factory {base!r}: {str(exc).splitlines()[-1]}; see the faiss wiki 'The index factory'") from exc
        for part in _walk(index):
            if hasattr(part, "do_polysemous_training"):
                # Polysemous training (annealing of code ids for Hamming pre-filtering) takes 10x the
                # k-means time and we never search polysemously.
                part.do_polysemous_training = False
            if isinstance(part, faiss.IndexPreTransform):
                for i in range(part.chain.size()):
                    vt = faiss.downcast_VectorTransform(part.chain.at(i))
                    if isinstance(vt, faiss.OPQMatrix):
                        # 25 iterations instead of 50: the same recall@10 (0.6165 vs 0.616, OPQ48 on 30k
                        # synthetic 384-d vectors) in 58% of the training time.
                        vt.niter = 25
        self.index = _with_ids(index, base)
        self._setup(rescore, {**({"nprobe": nprobe} if nprobe else {}), **(params or {})}, use_gpu)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            with _training(self.factory, len(vectors)):
                self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def _side_bytes(self) -> int:
        # IDMap2's reverse map (id -> position) lives on the heap and is not serialised.
        return IDMAP2_REV_BYTES * int(self.index.ntotal) if isinstance(self.index, _faiss().IndexIDMap2) else 0

    def _search_index(self) -> Any:
        if not self.use_gpu:
            return self.index
        if self._gpu_index is None:
            try:
                self._gpu_index = _faiss().index_cpu_to_all_gpus(self.index)
            except RuntimeError:
                # a type faiss' GPU code does not hold (HNSW, some SQ / fast-scan codes, Refine): search on the CPU
                self.use_gpu = False
                return self.index
        return self._gpu_index

    @classmethod
    def load(cls, path: Path, *, factory: str, metric: str, mmap: bool = False, nprobe: int | None = None,
             params: dict[str, Any] | None = None, use_gpu: bool | str = "auto") -> FaissBackend:
        path = Path(path)
        self = cls.__new__(cls)
        index = _read(path, mmap, binary=False)
        self.dim, self.metric, self.factory = index.d, metric, factory
        self.index = _with_ids(index, split_rescore(factory)[0])
        self._setup(split_rescore(factory)[1], {**({"nprobe": nprobe} if nprobe else {}), **(params or {})}, use_gpu, read_only=mmap)
        self._load_common(path)
        return self


def _with_ids(index: Any, factory: str) -> Any:
    """Wrap an index that cannot store ids itself (Flat, HNSW, PQ, Refine) in IDMap2."""
    faiss = _faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) or "IDMap" in factory:
        return index
    ivf = faiss.try_extract_index_ivf(index)
    refine = any(isinstance(p, faiss.IndexRefine) for p in _walk(index))
    if ivf is not None and not refine:
        return index
    return faiss.IndexIDMap2(index)


class BinaryBackend(_CodesBackend):
    """Sign-quantised binary codes (1 bit per dimension), Hamming search, optional exact float rescoring.

    Each dimension is thresholded at its median over the training sample (so every bit
    splits the collection in half: the most informative split), packed 8 per byte:
    384-d vectors take 48 bytes. ``factory`` is a faiss binary factory string (``"BFlat"``,
    ``"BIVF1024"``, ``"BHNSW32"``) optionally ending in ``",Rescore"`` / ``",Rescore(fp16)"``;
    without rescoring the score is minus the Hamming distance.

    Example:
        >>> be = BinaryBackend(384, "BFlat,Rescore", params={"k_factor": 10})   # doctest: +SKIP
    """

    _binary = True

    def __init__(self, dim: int, factory: str = "BFlat,Rescore", *, metric: str = "ip", params: dict[str, Any] | None = None,
                 use_gpu: bool | str = False) -> None:
        faiss = _faiss()
        if metric not in ("ip", "l2"):
            raise ConfigError(f"index metric {metric!r} must be 'ip' or 'l2'")
        if dim % 8:
            raise ConfigError(f"binary codes need a dimension divisible by 8, got {dim}; use a float index (e.g. 'SQ4')")
        self.dim, self.metric, self.factory = dim, metric, factory
        base, rescore = split_rescore(factory)
        try:
            index = faiss.index_binary_factory(dim, base)
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build binary index {base!r}: {str(exc).splitlines()[-1]}; use BFlat, BIVF<nlist> or BHNSW<M>") from exc
        self.index = _binary_with_ids(index)
        self.thresholds: np.ndarray | None = None
        self._setup(rescore, params, False)

    @property
    def is_trained(self) -> bool:
        return self.thresholds is not None and bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.thresholds is None:
            self.thresholds = np.median(vectors, axis=0).astype(np.float32)
        if not self.index.is_trained:
            with _training(self.factory, len(vectors)):
                self.index.train(self._to_codes(vectors))

    def _to_codes(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits(vectors > self.thresholds, axis=1)

    def _encode_queries(self, q: np.ndarray) -> np.ndarray:
        return self._to_codes(q)

    def _as_scores(self, scores: np.ndarray) -> np.ndarray:
        return -scores.astype(np.float32)  # Hamming distance: smaller is better

    def _side_bytes(self) -> int:
        return int(self.thresholds.nbytes) if self.thresholds is not None else 0

    def _save_side(self, path: Path) -> list[Path]:
        f = path.with_name(path.name + ".thresholds.npy")
        save_npy(f, self.thresholds if self.thresholds is not None else np.zeros(0, np.float32))
        return [f]

    @classmethod
    def load(cls, path: Path, *, factory: str, metric: str, mmap: bool = False, params: dict[str, Any] | None = None, **_: Any) -> BinaryBackend:
        faiss = _faiss()
        path = Path(path)
        self = cls.__new__(cls)
        index = _read(path, mmap, binary=True)
        self.dim, self.metric, self.factory = index.d, metric, factory
        self.index = _binary_with_ids(index)
        thr = np.load(path.with_name(path.name + ".thresholds.npy"), allow_pickle=False)
        self.thresholds = thr if len(thr) else None
        self._setup(split_rescore(factory)[1], params, False, read_only=mmap)
        self._load_common(path)
        return self


def _binary_with_ids(index: Any) -> Any:
    """Wrap a binary index that cannot store ids (BFlat, BHNSW) in IndexBinaryIDMap; BIVF keeps its own."""
    faiss = _faiss()
    # Keep the original proxy (it owns the C++ object; a downcast one does not).
    if isinstance(faiss.downcast_IndexBinary(index), (faiss.IndexBinaryIDMap, faiss.IndexBinaryIVF)):
        return index
    return faiss.IndexBinaryIDMap(index)
