"""An index larger than the memory a process may use is still searchable (memory-mapped), with the same answers.

The index (IVF256,Flat over 1,000,000 x 64-d vectors: a 264 MB file) is built and searched
in RAM here; a subprocess then opens it under ``RLIMIT_DATA`` = its own data segment after
imports + 24 MB (about 230 MB in all, less than the file). RLIMIT_DATA bounds the heap and
every private writable mapping (glibc, numpy and FAISS allocations), not read-only file
mappings, which is exactly the line between "in RAM" and "paged from disk". The child shows
that the limit bites (reading the index into memory fails), then answers the same queries,
plain and filtered, from the memory-mapped file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

resource = pytest.importorskip("resource")  # POSIX only

from rag_lfm.index import make_backend  # noqa: E402

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import faiss
    from rag_lfm.errors import IndexFormatError
    from rag_lfm.index.families import load_backend

    def vmdata():
        for line in open("/proc/self/status"):
            if line.startswith("VmData"):
                return int(line.split()[1]) * 1024

    path, factory, qpath, outdir, headroom = sys.argv[1:6]
    queries = np.load(qpath)
    allowed = np.arange(0, 1_000_000, 3, dtype=np.int64)
    limit = vmdata() + int(headroom) + allowed.nbytes
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        load_backend(path, factory, params={"nprobe": 16}, mmap=False)
        bites = False
    except (MemoryError, IndexFormatError, RuntimeError):
        bites = True
    be = load_backend(path, factory, params={"nprobe": 16}, mmap=True)
    s, i = be.search(queries, 10)
    sf, jf = be.search(queries, 10, allowed=allowed)
    np.save(outdir + "/ids.npy", i); np.save(outdir + "/scores.npy", s); np.save(outdir + "/ids_f.npy", jf)
    print(json.dumps({"limit": limit, "bites": bites, "vmdata_end": vmdata(), "report": be.memory_report()}))
    """
)


def test_index_larger_than_the_process_memory_limit_answers_like_in_ram(tmp_path):
    n, d, factory = 1_000_000, 64, "IVF256,Flat"
    rng = np.random.default_rng(0)
    be = make_backend(d, factory, params={"nprobe": 16}, use_gpu=False)
    be.train(rng.standard_normal((20_000, d)).astype(np.float32))
    for a in range(0, n, 100_000):  # streamed adds
        be.add(np.arange(a, a + 100_000, dtype=np.int64), rng.standard_normal((100_000, d)).astype(np.float32))
    queries = rng.standard_normal((20, d)).astype(np.float32)
    want_s, want_i = be.search(queries, 10)
    want_f = be.search(queries, 10, allowed=np.arange(0, n, 3, dtype=np.int64))[1]
    path = tmp_path / "index-1.faiss"
    be.save(path)
    del be
    np.save(tmp_path / "q.npy", queries)
    size = path.stat().st_size

    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), factory, str(tmp_path / "q.npy"), str(tmp_path), str(24 << 20)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"index file {size / 2**20:.0f} MiB; child RLIMIT_DATA {info['limit'] / 2**20:.0f} MiB; {info}")
    assert size > info["limit"], f"the index ({size / 2**20:.0f} MiB) must be larger than the child's memory limit ({info['limit'] / 2**20:.0f} MiB)"
    assert info["bites"], "reading the index into memory should fail under the limit"
    assert info["report"]["mapped"] > 0.9 * size and info["report"]["resident"] < 24 << 20
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), want_i)
    np.testing.assert_allclose(np.load(tmp_path / "scores.npy"), want_s, rtol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "ids_f.npy"), want_f)
