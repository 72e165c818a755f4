"""Embeddings both ways: rag-lfm's embedder as LangChain ``Embeddings``, and back.

* :class:`RagLfmEmbeddings` puts any rag-lfm embedder (a sentence-transformers model on
  the torch, onnx, onnx-int8, openvino or openvino-int8 backend, or ``hash-<dim>``) behind
  LangChain's ``Embeddings`` interface.
* :class:`LangChainEmbedder` does the reverse: any LangChain ``Embeddings`` becomes a
  rag-lfm embedder, so ``RagLfmVectorStore.from_texts(texts, OpenAIEmbeddings())`` and the
  like work. Its vectors are L2-normalised by default (then the index's inner product is
  the cosine, and relevance scores mean what :mod:`.vectorstore` says).

Example:
    >>> emb = RagLfmEmbeddings("hash-64")
    >>> len(emb.embed_query("red apple")), len(emb.embed_documents(["a", "b"]))
    (64, 2)
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from rag_lfm.embedders import BACKENDS, Embedder, make_embedder
from rag_lfm.errors import ConfigError


class RagLfmEmbeddings(Embeddings):
    """A rag-lfm embedder as LangChain ``Embeddings``.

    Args:
        model: a model name or folder (``"all-MiniLM-L6-v2"``), ``"hash-<dim>"``, or a rag-lfm
            embedder object (e.g. ``kb.embedder``, to embed exactly as an index does).
        backend: ``"torch"``, ``"onnx"``, ``"onnx-int8"``, ``"openvino"`` or ``"openvino-int8"``
            (sentence-transformers models; see :mod:`rag_lfm.embedders`).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``... (torch backend).
        batch_size: texts per forward pass (default: the embedder's).

    The model loads on first use; the async methods (LangChain's defaults) run the
    embedding in a worker thread, where torch, ONNX Runtime and OpenVINO release the GIL.

    Example:
        >>> RagLfmEmbeddings("hash-64").embed_query("Paris")[:2]   # doctest: +SKIP
        [0.0, 0.7071067690849304]
    """

    def __init__(
        self,
        model: str | Embedder = "all-MiniLM-L6-v2",
        *,
        backend: str = "torch",
        device: str = "auto",
        batch_size: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"embedder backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"batch_size={batch_size!r} must be a positive int")
        if isinstance(model, str):
            self.embedder = make_embedder(model, backend=backend, device=device)
        else:
            self.embedder = make_embedder(model)  # raises ConfigError for an object that is no embedder
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        """The embedder's name, as an index manifest records it."""
        return str(self.embedder.name)

    def _encode(self, texts: list[str], kind: str) -> list[list[float]]:
        if isinstance(texts, str):
            raise ConfigError("embed_documents() takes a list of texts, got one str; use embed_query() or wrap it in a list")
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise ConfigError(f"texts must be str; item {bad[0]} is {type(texts[bad[0]]).__name__}: {texts[bad[0]]!r}")
        if not texts:
            return []
        vecs = self.embedder.encode(list(texts), kind=kind, batch_size=self.batch_size)
        return np.asarray(vecs, dtype=np.float32).astype(float).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text (a list of floats each), in one batched pass."""
        return self._encode(texts, "document")

    def embed_query(self, text: str) -> list[float]:
        """The vector of one query."""
        if not isinstance(text, str):
            raise ConfigError(f"embed_query() takes one str, got {type(text).__name__}: {text!r}")
        return self._encode([text], "query")[0]


class LangChainEmbedder:
    """Any LangChain ``Embeddings`` as a rag-lfm embedder (the reverse of :class:`RagLfmEmbeddings`).

    Args:
        embeddings: the LangChain embeddings object.
        name: what the index manifest records; default ``langchain:<module>.<class>[:<model>]``.
            Reopen such an index with ``KnowledgeBase.open(path, embedder=LangChainEmbedder(...))``.
        normalize: L2-normalise the vectors (default True: the index's inner product is then
            the cosine, whatever scale the embeddings come in).

    Chunks are counted in words (LangChain embeddings expose no tokenizer); the dimension
    is learnt by embedding one short text on first use.

    Example:
        >>> from langchain_core.embeddings import DeterministicFakeEmbedding
        >>> LangChainEmbedder(DeterministicFakeEmbedding(size=6)).dim
        6
    """

    def __init__(self, embeddings: Embeddings, *, name: str | None = None, normalize: bool = True) -> None:
        if not isinstance(embeddings, Embeddings):
            raise ConfigError(f"expected a LangChain Embeddings object, got {type(embeddings).__name__}: {embeddings!r}")
        self.embeddings = embeddings
        if name is None:
            cls = type(embeddings)
            model = getattr(embeddings, "model", None) or getattr(embeddings, "model_name", None)
            name = f"langchain:{cls.__module__}.{cls.__qualname__}" + (f":{model}" if isinstance(model, str) else "")
        self.name = name
        self.normalize = normalize
        self.backend = None
        self._dim: int | None = None
        self.calls = 0

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = len(self.embeddings.embed_query("dimension"))
        return self._dim

    @property
    def max_tokens(self) -> int:
        return 512  # words, since no tokenizer is known: the chunker cuts at 256 of them

    @property
    def tokenizer(self) -> Any:
        return None

    def encode(self, texts: list[str], *, kind: str = "document", batch_size: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            raise ConfigError("encode() takes a list of texts, got one str; wrap it: encode([text])")
        texts = list(texts)
        self.calls += len(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if kind == "query":
            rows = [self.embeddings.embed_query(t) for t in texts]
        else:
            rows = self.embeddings.embed_documents(texts)
        out = np.asarray(rows, dtype=np.float32)
        if out.ndim != 2 or len(out) != len(texts):
            raise ConfigError(f"{type(self.embeddings).__name__} returned {out.shape} for {len(texts)} texts; expected one vector per text")
        self._dim = out.shape[1]
        if self.normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(out, dtype=np.float32)


def as_embedder(embedding: Any) -> Any:
    """A rag-lfm embedder from what LangChain code passes as ``embedding``.

    A :class:`RagLfmEmbeddings` gives back its own embedder (so the index records the real
    model and reopens without help); any other LangChain ``Embeddings`` is wrapped in a
    :class:`LangChainEmbedder`; a str or a rag-lfm embedder goes through ``make_embedder``.
    """
    if isinstance(embedding, RagLfmEmbeddings):
        return embedding.embedder
    if isinstance(embedding, Embeddings):
        return LangChainEmbedder(embedding)
    return make_embedder(embedding)
