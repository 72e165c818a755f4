"""Vector indexes behind one protocol: FAISS float and binary codes (CPU, or GPU with a GPU faiss
build), exact torch search, index families by name, exact rescoring from vectors on disk."""

from rag_lfm.index.base import EXACT_LIMIT, IndexBackend, auto_factory
from rag_lfm.index.faiss_backend import BinaryBackend, FaissBackend, faiss_gpu_count
from rag_lfm.index.families import Family, families, get_family, load_backend, make_backend, register_family, resolve_factory
from rag_lfm.index.rescore import RescoreStore
from rag_lfm.index.torch_backend import TorchExactBackend

__all__ = [
    "IndexBackend", "FaissBackend", "BinaryBackend", "TorchExactBackend", "RescoreStore", "auto_factory", "faiss_gpu_count",
    "EXACT_LIMIT", "Family", "families", "get_family", "register_family", "resolve_factory", "make_backend", "load_backend",
]
