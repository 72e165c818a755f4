"""Where a knowledge base's bytes are: resident (heap), memory-mapped, and on disk, per component.

Components: the vector ``index`` (its FAISS structures; with ``mmap=True`` the inverted lists
and code arrays are mapped from the file, not resident; a ``,Rescore`` stage keeps its float
vectors on disk, mapped), the ``stored_vectors`` (float32 embeddings inside the doc store, read
for rebuilds, exact filters and rescoring metrics), the ``docstore`` (the SQLite file, or a
server: not measurable from here), and the ``bm25`` sidecars (loaded whole by a Retriever on
first use, so their resident size is their disk size once loaded).

Example:
    >>> memory_report(kb)["index"]                       # doctest: +SKIP
    {'resident': 1327104, 'mapped': 0, 'disk': 1327491}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def parse_bytes(value: int | float | str) -> int:
    """Bytes from ``200MB``, ``1.5GiB``, ``512k``, ``1e9`` or a number (SI units: 1 MB = 10^6 B; MiB = 2^20)."""
    import re

    from rag_lfm.errors import ConfigError

    if isinstance(value, bool):
        raise ConfigError(f"memory size {value!r} must be a number of bytes or a string like '200MB'")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ConfigError(f"memory size {value!r} must be positive")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]?)(i?)b?\s*", str(value), flags=re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"memory size {value!r} is not a size; write e.g. '200MB', '1.5GiB', '800k' or a number of bytes")
    power = " kmgt".index(m.group(2).lower() or " ")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**power)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return 0


def memory_report(kb: Any) -> dict[str, dict[str, int | None]]:
    """``{component: {"resident", "mapped", "disk"}}`` bytes for an open knowledge base (None: not measurable)."""
    root = Path(kb.path)
    index_disk = sum(_size(root / name) for name in kb.manifest.get("files", {}))
    report_fn = getattr(kb.index, "memory_report", None)
    if report_fn is not None:
        idx = dict(report_fn())
        idx["disk"] = index_disk
    else:
        idx = {"resident": int(kb.index.memory_bytes), "mapped": 0, "disk": index_disk}
    n_chunks = int(kb.manifest["counts"]["chunks"])
    local = kb.manifest["docstore"]["url"] is None
    db = root / "docstore.sqlite"
    db_disk = sum(_size(p) for p in (db, db.with_name(db.name + "-wal"))) if local else None
    bm25 = [p for p in root.glob("bm25*") if p.is_dir()]
    return {
        "index": idx,
        "stored_vectors": {"resident": 0, "mapped": 0, "disk": n_chunks * int(kb.dim) * 4},  # inside the doc store
        "docstore": {"resident": 0, "mapped": 0, "disk": db_disk},
        "bm25": {"resident": 0, "mapped": 0, "disk": sum(_size(p) for p in bm25)},
    }
