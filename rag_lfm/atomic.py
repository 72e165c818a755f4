"""Crash-safe file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))


def save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_npy_blocks(path: Path, shape: tuple[int, ...], dtype: Any, blocks: Any) -> None:
    """Write an ``.npy`` file of ``shape`` from consecutive row ``blocks``, atomically, holding one block in memory.

    ``save_npy`` builds the whole file in memory first; this streams it (large indexes).
    """
    dtype = np.dtype(dtype)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    rows = 0
    with open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            rows += len(block)
            fh.write(block.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    if rows != (shape[0] if shape else 1):
        tmp.unlink(missing_ok=True)
        raise ValueError(f"save_npy_blocks({path}): blocks held {rows} rows, the header says {shape[0]}")
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_with(path: Path, write: Any) -> None:
    """Atomically create ``path`` by calling ``write(tmp_path)`` (e.g. ``faiss.write_index``), then fsync and rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
