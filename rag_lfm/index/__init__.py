"""Vector indexes behind one protocol: FAISS (CPU, or GPU with a GPU faiss build) and exact torch search."""

from rag_lfm.index.base import EXACT_LIMIT, IndexBackend, auto_factory
from rag_lfm.index.faiss_backend import FaissBackend, faiss_gpu_count
from rag_lfm.index.torch_backend import TorchExactBackend

__all__ = ["IndexBackend", "FaissBackend", "TorchExactBackend", "auto_factory", "faiss_gpu_count", "EXACT_LIMIT"]
