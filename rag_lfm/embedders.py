"""Embedders: text -> float32 vectors, with sentence-transformers underneath.

Backends (the ``backend`` argument), all for the same sentence-transformers model:

* ``"torch"``: ``SentenceTransformer.encode`` (the reference; CUDA when present).
* ``"onnx"`` / ``"onnx-int8"``: the transformer exported once to ONNX (pooling included)
  and run with onnxruntime; ``onnx-int8`` adds dynamic per-channel int8 quantisation of
  the MatMul weights (mean cosine ~0.995 to the torch embeddings).
* ``"openvino"`` / ``"openvino-int8"`` (``pip install 'rag-lfm[openvino]'``): the same ONNX
  export run by OpenVINO; ``openvino-int8`` is static int8 quantisation by NNCF (weights
  and activations, SmoothQuant), calibrated once on the English texts shipped in
  ``rag_lfm/data/calibration_en.txt``, so the quantised model depends on nothing but the
  model. It is the fastest CPU path measured here and closer to the torch embeddings than
  onnx-int8 (mean cosine ~0.997); see benchmarks/RESULTS.md.

Exports and quantised models are cached under ``rag_lfm.models.cache_dir()/onnx``.

Texts are encoded longest-first in batches, so a batch holds texts of similar length
and little padding is computed.

Example:
    >>> emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2")          # doctest: +SKIP
    >>> emb.encode(["Paris is the capital of France."]).shape             # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.models import cache_dir, canonical_name, resolve_model

Kind = Literal["query", "document"]
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors.

    ``name`` is what the index manifest records (an index refuses to open with an
    embedder of another name or dimension); ``normalize`` says whether vectors are
    L2-normalised (then inner product is cosine). ``tokenizer`` is a Hugging Face
    fast tokenizer (used by the chunker to count tokens) or None.
    """

    name: str
    normalize: bool

    @property
    def dim(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def tokenizer(self) -> Any: ...

    def encode(self, texts: list[str], *, kind: Kind = "document", batch_size: int | None = None) -> np.ndarray: ...


def _normalize(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    return (x / norms).astype(np.float32, copy=False)


def auto_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerEmbedder:
    """A sentence-transformers model, loaded on first use (cheap constructor).

    Args:
        model: a known short name (see ``rag_lfm.models.KNOWN_MODELS``) or a local folder.
        backend: ``"torch"``, ``"onnx"``, ``"onnx-int8"``, ``"openvino"`` or ``"openvino-int8"``
            (see the module docstring).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``; torch backend only.
        batch_size: texts per forward pass; default 16 on a CPU (small batches of length-sorted
            texts measured 10-20% faster there than 64) and 128 on a GPU.
        normalize: L2-normalise vectors (cosine = inner product).
        show_progress: tqdm bar while encoding large lists.
    """

    def __init__(
        self,
        model: str = "all-MiniLM-L6-v2",
        *,
        backend: str = "torch",
        device: str = "auto",
        batch_size: int | None = None,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"embedder backend {backend!r} is not one of {', '.join(BACKENDS)}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be >= 1")
        self.model_ref = model
        self.name = canonical_name(model)
        self.backend = backend
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self.show_progress = show_progress
        self.calls = 0  # number of texts encoded: lets tests and reports prove what was (not) re-embedded
        self._st: Any = None
        self._run: Any = None  # feeds -> embeddings, for the exported backends
        self._path: Path | str | None = None

    # -- loading -------------------------------------------------------------------------
    @property
    def path(self) -> Path | str:
        if self._path is None:
            self._path = resolve_model(self.model_ref)
        return self._path

    @property
    def st(self) -> Any:
        """The underlying ``SentenceTransformer`` (loaded on first use)."""
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            device = auto_device() if self.device == "auto" else self.device
            try:
                self._st = SentenceTransformer(str(self.path), device=device)
            except OSError as exc:
                raise ModelNotFoundError(
                    f"could not load embedder {self.model_ref!r} from {self.path}: {exc}. "
                    "Pass a folder saved by sentence-transformers or a known name"
                ) from exc
        return self._st

    def warm_up(self) -> None:
        """Load the model now (and export the ONNX file if needed) instead of on first encode."""
        self.st  # noqa: B018 - the tokenizer and config come from it in every backend
        if self.backend != "torch":
            self._runner()

    @property
    def dim(self) -> int:
        getter = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        return int(getter())

    @property
    def max_tokens(self) -> int:
        return int(self.st.max_seq_length)

    @property
    def tokenizer(self) -> Any:
        return self.st.tokenizer

    # -- encoding ------------------------------------------------------------------------
    def encode(self, texts: list[str], *, kind: Kind = "document", batch_size: int | None = None) -> np.ndarray:
        """Encode ``texts`` to a float32 array ``[len(texts), dim]``.

        ``kind`` is accepted for models with separate query/document prompts; the
        packaged models use none.
        """
        if isinstance(texts, str):
            raise ConfigError("encode() takes a list of texts, got one str; wrap it: encode([text])")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.calls += len(texts)
        bs = batch_size or self.batch_size or (128 if self.backend == "torch" and str(self.st.device).startswith("cuda") else 16)
        if self.backend == "torch":
            out = self.st.encode(
                texts,
                batch_size=bs,
                normalize_embeddings=self.normalize,
                convert_to_numpy=True,
                show_progress_bar=self.show_progress and len(texts) > bs,
            )
            return np.ascontiguousarray(out, dtype=np.float32)
        return self._encode_exported(texts, bs)

    def _encode_exported(self, texts: list[str], bs: int) -> np.ndarray:
        """Encode with the exported model (onnx / openvino backends)."""
        run = self._runner()
        tok = self.tokenizer
        # Longest first: each batch holds texts of similar length, so padding stays small.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = range(0, len(texts), bs)
        if self.show_progress and len(texts) > bs:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch")
        for start in batches:
            idx = order[start : start + bs]
            enc = tok(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=self.max_tokens,
                return_tensors="np",
            )
            feeds = {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}
            out[idx] = run(feeds)
        return _normalize(out) if self.normalize else out

    def _runner(self) -> Any:
        """A function ``feeds -> pooled embeddings`` for the exported backends (built once)."""
        if self._run is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            if self.backend.startswith("openvino"):
                ov = _import_openvino(self.backend)
                compiled = ov.Core().compile_model(
                    self._openvino_model(), "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
                )
                request, output = compiled.create_infer_request(), compiled.output(0)
                self._run = lambda feeds: request.infer(feeds)[output]
            else:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                opts.intra_op_num_threads = threads
                session = ort.InferenceSession(str(self._onnx_file()), opts, providers=["CPUExecutionProvider"])
                self._run = lambda feeds: session.run(None, feeds)[0]
        return self._run

    def _openvino_model(self) -> Any:
        """The OpenVINO model: the ONNX export as is, or quantised to int8 by NNCF once and cached."""
        ov = _import_openvino(self.backend)
        fp32 = self._onnx_file("onnx")
        if self.backend == "openvino":
            return ov.Core().read_model(str(fp32))
        folder = fp32.parent / "openvino-int8"
        xml = folder / "model.xml"
        if not xml.exists():
            import nncf

            tok = self.tokenizer

            def feeds(text: str) -> dict[str, np.ndarray]:
                enc = tok([text], truncation=True, max_length=self.max_tokens, return_tensors="np")
                return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}

            texts = calibration_texts()
            quantized = nncf.quantize(
                ov.Core().read_model(str(fp32)),
                nncf.Dataset(texts, feeds),
                model_type=nncf.ModelType.TRANSFORMER,
                subset_size=len(texts),
            )
            # Written to a temporary folder, then renamed into place: a crash leaves no half model.
            with tempfile.TemporaryDirectory(dir=fp32.parent) as tmp:
                ov.save_model(quantized, str(Path(tmp) / "model.xml"))
                try:
                    os.replace(tmp, folder)
                except OSError:  # another process got there first: use its copy
                    pass
                else:
                    os.makedirs(tmp)  # TemporaryDirectory removes what it created
        return ov.Core().read_model(str(xml))

    def _onnx_file(self, backend: str | None = None) -> Path:
        """Export the model (transformer + pooling) to ONNX once; quantise for onnx-int8."""
        backend = backend or self.backend
        src = Path(str(self.path))
        key = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:16]
        folder = cache_dir() / "onnx" / f"{src.name}-{key}"
        fp32, int8 = folder / "model.onnx", folder / "model_int8.onnx"
        target = int8 if backend == "onnx-int8" else fp32
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        if not fp32.exists():
            _export_onnx(self.st, fp32)
        if backend == "onnx-int8" and not int8.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                tmp_file = Path(tmp) / "model_int8.onnx"
                # Per-channel int8 on MatMul weights only: ~1.3-1.5x faster on CPU, mean
                # cosine ~0.994 to fp32; quantising every op loses far more (~0.96).
                quantize_dynamic(fp32, tmp_file, per_channel=True, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
                os.replace(tmp_file, int8)
        return target


def calibration_texts() -> list[str]:
    """The English texts that int8 quantisation is calibrated on (shipped with the package)."""
    from importlib.resources import files

    text = files("rag_lfm").joinpath("data/calibration_en.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _import_openvino(backend: str) -> Any:
    try:
        import openvino as ov

        if backend == "openvino-int8":
            import nncf  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"embedder backend {backend!r} needs the openvino and nncf packages ({exc}); "
            "install them with: pip install 'rag-lfm[openvino]', or use backend='onnx-int8'"
        ) from exc
    return ov


def _pooling_mode(st: Any) -> str:
    for module in st:
        cfg = getattr(module, "get_config_dict", None)
        if cfg is not None and "pooling_mode_mean_tokens" in cfg():
            c = cfg()
            if c.get("pooling_mode_mean_tokens"):
                return "mean"
            if c.get("pooling_mode_cls_token"):
                return "cls"
            raise ConfigError(f"pooling {c} is not supported by the onnx backends; use backend='torch'")
    return "mean"


def _export_onnx(st: Any, target: Path) -> None:
    import torch

    transformer = st[0].auto_model.cpu().eval()
    mode = _pooling_mode(st)

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = transformer

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if mode == "cls":
                return hidden[:, 0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    enc = st.tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp_file = Path(tmp) / target.name
        torch.onnx.export(
            Pooled(),
            (enc["input_ids"], enc["attention_mask"]),
            str(tmp_file),
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        os.replace(tmp_file, target)


_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder:
    """A deterministic bag-of-words hashing embedder: no model, instant, for tests and examples.

    Each lower-cased word is hashed into one of ``dim`` signed buckets; texts that
    share words get similar vectors, so retrieval behaves sensibly on toy data.

    Example:
        >>> emb = HashEmbedder(dim=64)
        >>> v = emb.encode(["red apple", "red apple", "blue sky"])
        >>> bool((v[0] @ v[1]) > (v[0] @ v[2]))
        True
    """

    def __init__(self, dim: int = 64, *, normalize: bool = True) -> None:
        self.dim_ = dim
        self.name = f"hash-{dim}"
        self.normalize = normalize
        self.calls = 0

    @property
    def dim(self) -> int:
        return self.dim_

    @property
    def max_tokens(self) -> int:
        return 512

    @property
    def tokenizer(self) -> Any:
        return None

    def encode(self, texts: list[str], *, kind: Kind = "document", batch_size: int | None = None) -> np.ndarray:
        if isinstance(texts, str):
            raise ConfigError("encode() takes a list of texts, got one str; wrap it: encode([text])")
        self.calls += len(texts)
        out = np.zeros((len(texts), self.dim_), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim_] += 1.0 if (h >> 32) & 1 else -1.0
        return _normalize(out) if self.normalize else out


def embedder_config(embedder: Any) -> dict[str, Any]:
    """What an index manifest records about its embedder."""
    return {
        "name": embedder.name,
        "dim": int(embedder.dim),
        "normalize": bool(embedder.normalize),
        "backend": getattr(embedder, "backend", None),
        "type": "hash" if isinstance(embedder, HashEmbedder) else "sentence-transformers",
    }


def embedder_from_config(cfg: dict[str, Any], *, device: str = "auto", backend: str | None = None) -> Any:
    """Rebuild the embedder an index was built with (the inverse of :func:`embedder_config`)."""
    if cfg.get("type") == "hash":
        return HashEmbedder(int(cfg["dim"]), normalize=bool(cfg["normalize"]))
    return SentenceTransformerEmbedder(
        cfg["name"], backend=backend or cfg.get("backend") or "torch", device=device, normalize=bool(cfg["normalize"])
    )


def make_embedder(spec: Any, **kwargs: Any) -> Any:
    """An embedder from a name/path (sentence-transformers), ``"hash-<dim>"``, or an Embedder object."""
    if isinstance(spec, str):
        if re.fullmatch(r"hash-\d+", spec):
            return HashEmbedder(int(spec.split("-")[1]))
        return SentenceTransformerEmbedder(spec, **kwargs)
    if not isinstance(spec, Embedder):
        raise ConfigError(
            f"embedder={spec!r} is neither a model name/path nor an object with name, dim, normalize and encode()"
        )
    return spec


__all__ = ["Embedder", "SentenceTransformerEmbedder", "HashEmbedder", "make_embedder", "embedder_config", "embedder_from_config", "auto_device"]
