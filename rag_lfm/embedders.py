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

* ``"auto"`` (the default for new indexes): the fastest of the installed CPU backends
  (torch, onnx-int8, openvino-int8) on this machine whose embeddings keep the model's own
  retrieval quality, measured once per machine and model (:func:`choose_backend`); torch on
  a GPU. No fixed order serves every CPU: with AVX-512 VNNI openvino-int8 was fastest, on an
  AVX2-only EPYC onnx-int8 (benchmarks/RESULTS.md).

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
import json
import math
import logging
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.models import cache_dir, canonical_name, resolve_model

Kind = Literal["query", "document"]
BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
# What ``backend="auto"`` chooses among on a CPU. The fp32 exports are left out: each was
# measured slower than its int8 sibling at no gain the quality gate can see.
AUTO_CANDIDATES = ("torch", "onnx-int8", "openvino-int8")
# The quality gate of ``auto``: a backend qualifies when, on the calibration probe, it loses no
# more than 0.5 point of the torch model's recall@10 net of the queries it gains, counted in whole
# queries (so at least one query: on a 140-query probe one query is 0.7 point, and a gate finer
# than one query would reject backends for a single tie), and its embeddings keep a mean cosine
# >= 0.99 to the torch ones (a broken quantisation, e.g. every op in int8, falls to ~0.96). Measured
# on the wiki task (benchmarks/RESULTS.md), the int8 backends stay within 0.5 point of R@10 on both
# machines seen (2,000 leads): onnx-int8 -0.16 and openvino-int8 -0.43 point on an AVX2 EPYC;
# openvino-int8 +0.3 point on an AVX-512 VNNI EPYC.
AUTO_MAX_RECALL_LOSS = 0.005
AUTO_MIN_COSINE = 0.99
log = logging.getLogger("rag_lfm")


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
        backend: ``"auto"``, ``"torch"``, ``"onnx"``, ``"onnx-int8"``, ``"openvino"`` or
            ``"openvino-int8"`` (see the module docstring); ``"auto"`` is resolved on first use.
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
        if backend != "auto" and backend not in BACKENDS:
            raise ConfigError(f"embedder backend {backend!r} is not one of auto, {', '.join(BACKENDS)}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size={batch_size!r} must be >= 1")
        self.model_ref = model
        self.name = canonical_name(model)
        self._backend = backend
        self._backend_spec = backend
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
    def backend(self) -> str:
        """The backend in use; ``"auto"`` is resolved (and measured once per machine) on first access."""
        if self._backend == "auto":
            self._backend = choose_backend(self.model_ref, device=self.device)
        return self._backend

    @property
    def backend_spec(self) -> str:
        """The backend as asked for, without resolving ``"auto"``."""
        return self._backend_spec

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
                config: dict[str, Any] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
                if self.backend == "openvino":
                    # OpenVINO runs float graphs in bfloat16 on CPUs with native bf16 (AVX-512 BF16, AMX);
                    # the "openvino" backend promises the model's own float32 results. openvino-int8 keeps
                    # the runtime's choice: its quality is measured as it runs (mean cosine 0.9975 either way).
                    config["INFERENCE_PRECISION_HINT"] = "f32"
                compiled = ov.Core().compile_model(self._openvino_model(), "CPU", config)
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
        folder = model_cache_folder(self.path)
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


def model_cache_folder(model_path: Path | str) -> Path:
    """Where a model's exports, quantised copies and backend measurements are cached."""
    src = Path(str(model_path))
    key = hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "onnx" / f"{src.name}-{key}"


def machine_fingerprint() -> str:
    """What a backend's speed depends on: CPU model and vector extensions, cores, runtime versions."""
    from importlib import metadata

    cpu = platform.processor()
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "fma")
                flags = ",".join(f for f in line.split(":", 1)[1].split() if f in wanted)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    versions = []
    for pkg in ("torch", "onnxruntime", "openvino", "nncf"):
        try:
            versions.append(f"{pkg}={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{pkg}=-")
    text = "|".join([platform.machine(), cpu, flags, str(cores), *versions])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _probe(texts: list[str]) -> tuple[list[str], list[str]]:
    """A small retrieval probe from the calibration texts: each text's first sentence is the query
    for the rest of that text (texts of a single sentence are left out)."""
    queries, docs = [], []
    for t in texts:
        parts = re.split(r"(?<=[.!?])\s+", t.strip(), maxsplit=1)
        if len(parts) == 2 and len(parts[1].split()) >= 8:
            queries.append(parts[0])
            docs.append(parts[1])
    return queries, docs


def calibrate_backends(
    model: str = "all-MiniLM-L6-v2", *, candidates: tuple[str, ...] | None = None, rounds: int = 2, progress: bool = True
) -> dict[str, Any]:
    """Measure each installed candidate backend on the shipped calibration texts and pick one.

    Speed: texts/s encoding the probe documents (batch 16, best of ``rounds``
    interleaved rounds, after a warm-up). Quality: recall@10 on a probe (each paragraph's
    first sentence retrieves the rest of it among all of them) and mean cosine to the torch
    embeddings. The choice is the fastest backend passing the quality gate (``AUTO_MAX_RECALL_LOSS``
    net of gained queries, at least one query; ``AUTO_MIN_COSINE``); torch always passes (it is the
    reference). ``rag-lfm calibrate --refresh`` measures again (say, after a first measurement
    taken while the machine was busy).

    Returns the measurements and the ``"choice"`` (what :func:`choose_backend` caches).
    """
    texts = calibration_texts()
    queries, docs = _probe(texts)
    embedders: dict[str, SentenceTransformerEmbedder] = {}
    skipped: dict[str, str] = {}
    from tqdm.auto import tqdm

    for name in tqdm(candidates or AUTO_CANDIDATES, desc="embedder backends: preparing", disable=not progress, unit="backend"):
        if not backend_installed(name):
            skipped[name] = "not installed"
            continue
        emb = SentenceTransformerEmbedder(model, backend=name, device="cpu")
        try:
            emb.warm_up()  # export / quantise once (cached), outside the timed runs
            emb.encode(texts[:32])
        except (ConfigError, ImportError, OSError, RuntimeError) as exc:
            skipped[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        embedders[name] = emb
    if "torch" not in embedders:
        raise ConfigError(f"the torch backend of {model!r} could not run ({skipped.get('torch')}); it is the reference for 'auto'")
    best: dict[str, float] = {name: float("inf") for name in embedders}
    vectors: dict[str, np.ndarray] = {}
    # The timed texts are the probe's documents, so the quality check reuses the timed vectors
    # instead of embedding everything a second time (calibration is on the first user's clock).
    for _ in tqdm(range(rounds), desc="embedder backends: timing", disable=not progress, unit="round"):
        for name, emb in embedders.items():  # interleaved, so a load spike hits every backend alike
            t0 = time.perf_counter()
            vectors[name] = emb.encode(docs, batch_size=16)
            best[name] = min(best[name], time.perf_counter() - t0)
    ref = vectors["torch"]
    results: dict[str, dict[str, Any]] = {}
    hits: dict[str, np.ndarray] = {}
    for name, emb in embedders.items():
        q = emb.encode(queries, kind="query")
        top = np.argsort(-(q @ vectors[name].T), axis=1)[:, :10]
        hits[name] = np.array([i in row for i, row in enumerate(top)])
        results[name] = {
            "texts_per_s": round(len(docs) / best[name], 2),
            "probe_recall_at_10": round(float(hits[name].mean()), 4),
            "mean_cosine_to_torch": round(float((vectors[name] * ref).sum(1).mean()), 5),
        }
    allowed = max(1, math.floor(AUTO_MAX_RECALL_LOSS * len(queries) + 1e-9))
    for name, r in results.items():
        lost = int((hits["torch"] & ~hits[name]).sum())
        gained = int((hits[name] & ~hits["torch"]).sum())
        r["probe_queries_lost_gained"] = [lost, gained]
        r["qualifies"] = bool(lost - gained <= allowed and r["mean_cosine_to_torch"] >= AUTO_MIN_COSINE)
    choice = max((n for n, r in results.items() if r["qualifies"]), key=lambda n: results[n]["texts_per_s"])
    return {
        "model": model, "choice": choice, "results": results, "skipped": skipped,
        "n_texts": len(docs), "n_probe_queries": len(queries), "machine": machine_fingerprint(),
        "measured_at": time.time(), "gate": {"max_recall_loss": AUTO_MAX_RECALL_LOSS, "max_net_queries_lost": allowed, "min_cosine": AUTO_MIN_COSINE},
    }


def choose_backend(model: str = "all-MiniLM-L6-v2", *, device: str = "auto", refresh: bool = False, progress: bool = True) -> str:
    """The backend ``"auto"`` means for ``model`` on this machine.

    On a GPU: torch. On a CPU: :func:`calibrate_backends` runs once per machine and model
    (about half a minute, most of it the one-off export and int8 quantisation that the chosen
    backend needs anyway) and its result is cached beside the model's exports
    (``backend-choice-<machine>.json``); later calls read the cache. The choice is logged in one line.

    Example:
        >>> choose_backend("all-MiniLM-L6-v2")        # doctest: +SKIP
        'openvino-int8'
    """
    dev = auto_device() if device == "auto" else device
    if str(dev).startswith("cuda"):
        return "torch"
    from rag_lfm.atomic import write_json

    folder = model_cache_folder(resolve_model(model))
    record = folder / f"backend-choice-{machine_fingerprint()}.json"
    if record.exists() and not refresh:
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            if data.get("choice") in BACKENDS:
                return str(data["choice"])
        except (OSError, ValueError):
            pass  # a damaged record is measured again and rewritten
    data = calibrate_backends(model, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(record, data)
    speeds = ", ".join(f"{n} {r['texts_per_s']:.0f}/s{'' if r['qualifies'] else ' (fails quality gate)'}" for n, r in data["results"].items())
    log.warning("rag-lfm: embedder backend 'auto' -> %s for %s on this machine (%s); measured once, cached in %s",
                data["choice"], model, speeds, record)
    return str(data["choice"])


def backend_choice_record(model: str = "all-MiniLM-L6-v2") -> dict[str, Any] | None:
    """The cached measurement behind ``auto`` for ``model`` on this machine, or None if never measured."""
    record = model_cache_folder(resolve_model(model)) / f"backend-choice-{machine_fingerprint()}.json"
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
        # "auto" when the backend was chosen by measurement: reopened elsewhere without that
        # backend installed, the index measures again instead of failing.
        "backend_spec": getattr(embedder, "backend_spec", None),
        "type": "hash" if isinstance(embedder, HashEmbedder) else "sentence-transformers",
    }


def backend_installed(backend: str) -> bool:
    """Whether the packages a backend needs are importable (without importing them)."""
    import importlib.util

    needs = {"torch": ["torch"], "onnx": ["onnxruntime"], "onnx-int8": ["onnxruntime"],
             "openvino": ["openvino"], "openvino-int8": ["openvino", "nncf"]}.get(backend, [])
    return bool(needs) and all(importlib.util.find_spec(m) is not None for m in needs)


def embedder_from_config(cfg: dict[str, Any], *, device: str = "auto", backend: str | None = None) -> Any:
    """Rebuild the embedder an index was built with (the inverse of :func:`embedder_config`)."""
    if cfg.get("type") == "hash":
        return HashEmbedder(int(cfg["dim"]), normalize=bool(cfg["normalize"]))
    recorded = cfg.get("backend") or "torch"
    if backend is None and cfg.get("backend_spec") == "auto" and (
        not backend_installed(recorded) or (recorded != "torch" and auto_device() != "cpu" and device != "cpu")
    ):
        backend = "auto"  # chosen by measurement where it was built; measure again here
    return SentenceTransformerEmbedder(
        cfg["name"], backend=backend or recorded, device=device, normalize=bool(cfg["normalize"])
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
