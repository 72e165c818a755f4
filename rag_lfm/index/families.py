"""Index families by short name, each a FAISS factory string sized for the collection, and the
search parameters worth sweeping for it.

A family is what a user picks by name (``index="ivf-pq"``) or what the tuner sweeps; any
FAISS factory string works as well, with our rescoring stage as an optional
``",Rescore"`` suffix (:mod:`rag_lfm.index.faiss_backend`). Sizes follow the collection
(``n`` vectors of dimension ``d``): ``nlist`` = 4*sqrt(n) rounded to a power of two (at
most n/39, FAISS' minimum of training points per list); PQ's ``M`` is a divisor of d.

=================  ==============================  ========  ==============================
family             factory (d=384, n=1M)           B/vector  removes ids / searched with
=================  ==============================  ========  ==============================
flat               IDMap,Flat                      1544      yes / exact
flat-fp16          IDMap,SQfp16                    776       yes / exact on fp16
sq8 / sq4          IDMap,SQ8 / IDMap,SQ4           392 / 200 yes
sq4-rescore        IDMap,SQ4,Rescore               200       yes / k_factor
pq / pq-rescore    IDMap,PQ48x8 (,Rescore)         56        yes / (k_factor)
opq-pq(-rescore)   IDMap,OPQ48,PQ48x8 (,Rescore)   57        yes / (k_factor)
ivf-flat           IVF4096,Flat                    1550      yes / nprobe
ivf-sq8            IVF4096,SQ8                     398       yes / nprobe
ivf-pq(-rescore)   IVF4096,PQ48x8 (,Rescore)       63        yes / nprobe (, k_factor)
ivf-pq4-rescore    IVF4096,PQ96x8,Rescore          111       yes / nprobe, k_factor
ivf-pq12-rescore   IVF4096,PQ32x8,Rescore          47        yes / nprobe, k_factor
ivf-pq16-rescore   IVF4096,PQ24x8,Rescore          39        yes / nprobe, k_factor
ivf-pq-fs-rescore  IVF4096,PQ96x4fs,Rescore        63        yes / nprobe, k_factor
hnsw / hnsw-sq8    IDMap,HNSW32,Flat / ...,SQ8     1816/664  masked / efSearch
binary             BFlat,Rescore                   56        yes / k_factor
binary-ivf         BIVF4096,Rescore                56        yes / nprobe, k_factor
=================  ==============================  ========  ==============================

(Estimated resident bytes, :func:`estimate_bytes`; ``,Rescore`` adds 4*d bytes per vector on disk, none in RAM.)

Example:
    >>> resolve_factory("ivf-pq-rescore", n=1_000_000, dim=384)
    'IVF4096,PQ48x8,Rescore'
    >>> [f.name for f in families()][:3]
    ['flat', 'flat-fp16', 'sq8']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rag_lfm.errors import ConfigError

BINARY_RE = re.compile(r"^B(Flat|IVF\d+|HNSW\d+)\b")
TORCH_RE = re.compile(r"^torch-exact(?:\((?P<dtype>fp16|fp32|int8)\))?$")


def ivf_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: 4*sqrt(n) as a power of two, at least 1 and at most n/39."""
    want = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(max(n, 1)))))
    cap = max(1, n // 39)
    return int(max(1, min(want, 2 ** int(math.log2(cap)))))


def pq_m(dim: int, bytes_per_dim: float) -> int:
    """The largest divisor of ``dim`` at most ``dim * bytes_per_dim`` (PQ sub-quantizers of 8 bits)."""
    target = max(1, int(dim * bytes_per_dim))
    return max(m for m in range(1, target + 1) if dim % m == 0)


def nprobe_grid(nlist: int) -> list[dict[str, int]]:
    return [{"nprobe": p} for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= nlist]


@dataclass(frozen=True)
class Family:
    """A named index family.

    ``factory(n, dim)`` gives its FAISS factory string for a collection; ``grid(n, dim)`` the
    search settings the tuner sweeps (each a ``params`` dict); ``removes``: whether ids are
    really removed (else masked until compaction); ``min_n``: below this many vectors a
    knowledge base that names the family searches exactly (``IDMap,Flat``) instead: PQ
    codebooks need ~10k training points (256 centroids x 39), and exact search is fast there.
    """

    name: str
    description: str
    factory: Callable[[int, int], str]
    grid: Callable[[int, int], list[dict[str, int]]] = field(default=lambda n, d: [{}])
    removes: bool = True
    min_n: int = 0


PQ_MIN_N = 256 * 39  # faiss' minimum of training points for 256 centroids
_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> None:
    """Add a family to the registry (its name must be new)."""
    if family.name in _FAMILIES:
        raise ConfigError(f"index family {family.name!r} is already registered; choose another name")
    _FAMILIES[family.name] = family


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def get_family(name: str) -> Family:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(f"unknown index family {name!r}; known: {', '.join(_FAMILIES)} (or pass a FAISS factory string)") from None


def _k(*ks: int) -> Callable[[int, int], list[dict[str, int]]]:
    return lambda n, d: [{"k_factor": k} for k in ks]


def _ivf_k(*ks: int) -> Callable[[int, int], list[dict[str, int]]]:
    return lambda n, d: [{**p, "k_factor": k} for p in nprobe_grid(ivf_nlist(n)) for k in ks]


def _ef(n: int, d: int) -> list[dict[str, int]]:
    return [{"efSearch": e} for e in (16, 32, 64, 128, 256)]


for _fam in [
    Family("flat", "exact search on float32 vectors", lambda n, d: "IDMap,Flat"),
    Family("flat-fp16", "exact search on float16 vectors (half the memory)", lambda n, d: "IDMap,SQfp16"),
    Family("sq8", "8-bit scalar quantisation (a quarter of float32)", lambda n, d: "IDMap,SQ8"),
    Family("sq4", "4-bit scalar quantisation (an eighth of float32)", lambda n, d: "IDMap,SQ4"),
    Family("sq4-rescore", "4-bit codes, top k*k_factor rescored from float32 vectors on disk", lambda n, d: "IDMap,SQ4,Rescore", _k(2, 4, 8)),
    Family("pq", "product quantisation, d/8 bytes per vector", lambda n, d: f"IDMap,PQ{pq_m(d, 1 / 8)}x8", min_n=PQ_MIN_N),
    Family("pq-rescore", "PQ codes, rescored from float32 vectors on disk", lambda n, d: f"IDMap,PQ{pq_m(d, 1 / 8)}x8,Rescore", _k(4, 10, 20), min_n=PQ_MIN_N),
    Family("opq-pq", "a learnt rotation (OPQ) before PQ", lambda n, d: f"IDMap,OPQ{pq_m(d, 1 / 8)},PQ{pq_m(d, 1 / 8)}x8", min_n=PQ_MIN_N),
    Family("opq-pq-rescore", "OPQ+PQ codes, rescored from float32 vectors on disk",
           lambda n, d: f"IDMap,OPQ{pq_m(d, 1 / 8)},PQ{pq_m(d, 1 / 8)}x8,Rescore", _k(4, 10, 20), min_n=PQ_MIN_N),
    Family("ivf-flat", "inverted lists of float32 vectors", lambda n, d: f"IVF{ivf_nlist(n)},Flat", lambda n, d: nprobe_grid(ivf_nlist(n))),
    Family("ivf-sq8", "inverted lists of 8-bit codes", lambda n, d: f"IVF{ivf_nlist(n)},SQ8", lambda n, d: nprobe_grid(ivf_nlist(n))),
    Family("ivf-pq", "inverted lists of PQ codes (d/8 bytes)", lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 8)}x8",
           lambda n, d: nprobe_grid(ivf_nlist(n)), min_n=PQ_MIN_N),
    Family("ivf-pq-rescore", "IVF-PQ (d/8 bytes), rescored from float32 vectors on disk",
           lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 8)}x8,Rescore", _ivf_k(4, 10, 20), min_n=PQ_MIN_N),
    Family("ivf-pq16-rescore", "IVF-PQ (d/16 bytes), rescored from float32 vectors on disk",
           lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 16)}x8,Rescore", _ivf_k(10, 20, 40), min_n=PQ_MIN_N),
    Family("ivf-pq12-rescore", "IVF-PQ (d/12 bytes), rescored from float32 vectors on disk",
           lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 12)}x8,Rescore", _ivf_k(10, 20, 40), min_n=PQ_MIN_N),
    Family("ivf-pq4-rescore", "IVF-PQ (d/4 bytes), rescored from float32 vectors on disk",
           lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 4)}x8,Rescore", _ivf_k(2, 4), min_n=PQ_MIN_N),
    Family("ivf-pq-fs-rescore", "IVF with 4-bit fast-scan PQ (d/8 bytes), rescored from float32 vectors on disk",
           lambda n, d: f"IVF{ivf_nlist(n)},PQ{pq_m(d, 1 / 4)}x4fs,Rescore", _ivf_k(4, 10, 20), min_n=PQ_MIN_N),
    Family("hnsw", "HNSW graph over float32 vectors (ids masked on delete)", lambda n, d: "IDMap,HNSW32,Flat", _ef, removes=False),
    Family("hnsw-sq8", "HNSW graph over 8-bit codes (ids masked on delete)", lambda n, d: "IDMap,HNSW32,SQ8", _ef, removes=False),
    Family("binary", "1 bit per dimension (sign against the median), Hamming search, rescored from float32 on disk",
           lambda n, d: "BFlat,Rescore", _k(4, 10, 20, 40)),
    Family("binary-ivf", "binary codes in inverted lists, rescored from float32 on disk",
           lambda n, d: f"BIVF{ivf_nlist(n)},Rescore", _ivf_k(10, 20, 40)),
]:
    register_family(_fam)


def resolve_factory(spec: str, n: int, dim: int) -> str:
    """The factory string for ``spec``: ``"auto"``, a family name (exact ``IDMap,Flat`` below its ``min_n``),
    or a factory string (returned as given)."""
    from rag_lfm.index.base import auto_factory

    if spec == "auto":
        return auto_factory(n)
    if spec in _FAMILIES:
        fam = _FAMILIES[spec]
        return "IDMap,Flat" if n < fam.min_n else fam.factory(n, dim)
    return spec


def backend_kind(factory: str) -> str:
    """``"binary"``, ``"torch"`` or ``"faiss"`` for a factory string."""
    if BINARY_RE.match(factory):
        return "binary"
    if TORCH_RE.match(factory):
        return "torch"
    return "faiss"


def make_backend(dim: int, factory: str, *, metric: str = "ip", params: dict[str, Any] | None = None, device: str = "auto",
                 use_gpu: bool | str = "auto") -> Any:
    """A new empty backend for a factory string (float FAISS, binary FAISS, or ``torch-exact[(fp16|fp32|int8)]``)."""
    from rag_lfm.index.faiss_backend import BinaryBackend, FaissBackend
    from rag_lfm.index.torch_backend import TorchExactBackend

    kind = backend_kind(factory)
    if kind == "binary":
        return BinaryBackend(dim, factory, metric=metric, params=params)
    if kind == "torch":
        be = TorchExactBackend(dim, metric=metric, device=device, dtype=_torch_dtype(factory))
        be.factory = factory
        return be
    return FaissBackend(dim, factory, metric=metric, params=params, use_gpu=use_gpu)


def load_backend(path: str | Path, factory: str, *, metric: str = "ip", params: dict[str, Any] | None = None, mmap: bool = False,
                 device: str = "auto") -> Any:
    """Load what :func:`make_backend` built and ``save(path)`` wrote."""
    path = Path(path)
    from rag_lfm.index.faiss_backend import BinaryBackend, FaissBackend
    from rag_lfm.index.torch_backend import TorchExactBackend

    kind = backend_kind(factory)
    if kind == "binary":
        return BinaryBackend.load(path, factory=factory, metric=metric, mmap=mmap, params=params)
    if kind == "torch":
        be = TorchExactBackend.load(path, metric=metric, device=device, dtype=_torch_dtype(factory))
        be.factory = factory
        return be
    return FaissBackend.load(path, factory=factory, metric=metric, mmap=mmap, params=params)


def _torch_dtype(factory: str) -> str | None:
    m = TORCH_RE.match(factory)
    code = m.group("dtype") if m else None
    return {"fp16": "float16", "fp32": "float32", "int8": "int8", None: None}[code]


def estimate_bytes(factory: str, dim: int, n: int) -> int:
    """Resident bytes a ``factory`` index of ``n`` vectors will take, from its code size and structure (no training).

    Used to skip candidates far over a memory budget before building them; the tuner then
    measures the real size of those it builds.
    """
    import faiss

    from rag_lfm.index.faiss_backend import IDMAP2_REV_BYTES, split_rescore

    base, _ = split_rescore(factory)
    kind = backend_kind(base)
    if kind == "torch":
        dtype = _torch_dtype(base) or "float32"
        return int(n * (dim * {"float32": 4, "float16": 2, "int8": 1}[dtype] + 8 + (4 if dtype == "int8" else 0)))
    if kind == "binary":
        code, m = dim // 8, re.match(r"^B(Flat|IVF(\d+)|HNSW(\d+))", base)
        if m and m.group(2):
            return int(n * (code + 8) + int(m.group(2)) * code)
        links = 4 * (2 * int(m.group(3)) + 2) if m and m.group(3) else 0
        return int(n * (code + 8 + links))
    index = faiss.index_factory(dim, base)
    fixed, per = 0, 8 if "IDMap" not in base and faiss.try_extract_index_ivf(index) is None else 0
    part: Any = index
    while part is not None:
        part = faiss.downcast_index(part)
        pq = getattr(part, "pq", None)
        if pq is not None:
            fixed += pq.M * pq.ksub * pq.dsub * 4  # codebooks
        if isinstance(part, faiss.IndexIDMap2):
            per += 8 + IDMAP2_REV_BYTES
            part = part.index
        elif isinstance(part, faiss.IndexIDMap):
            per += 8
            part = part.index
        elif isinstance(part, faiss.IndexPreTransform):
            fixed += sum(faiss.downcast_VectorTransform(part.chain.at(i)).d_in * dim * 4 for i in range(part.chain.size()))
            part = part.index
        elif isinstance(part, faiss.IndexIVF):
            per += part.code_size + 8
            fixed += part.nlist * (dim * 4 + 48)  # coarse centroids + per-list vectors
            part = None
        elif isinstance(part, faiss.IndexHNSW):
            m = part.hnsw.nb_neighbors(1)
            # level 0 holds 2M links, upper levels M each for 1/M of the points; + levels/offsets
            per += faiss.downcast_index(part.storage).code_size + 4 * (2 * m + m / max(m - 1, 1)) + 12
            part = None
        elif hasattr(part, "code_size"):
            per += part.code_size
            part = None
        else:
            per += dim * 4
            part = None
    return int(fixed + per * n)
