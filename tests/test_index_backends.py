"""Both IndexBackend implementations answer the same (a conformance check), and the GPU paths."""

from __future__ import annotations

import numpy as np
import pytest

from rag_lfm.index import FaissBackend, TorchExactBackend


def _data(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    return ids, x


def _exact(q, x, ids, k):
    s = q @ x.T
    top = np.argsort(-s, axis=1)[:, :k]
    return ids[top]


def _backends(d, metric="ip"):
    return {
        "faiss-flat": FaissBackend(d, "IDMap2,Flat", metric=metric, use_gpu=False),
        "torch-cpu": TorchExactBackend(d, metric=metric, device="cpu"),
    }


@pytest.mark.parametrize("name", ["faiss-flat", "torch-cpu"])
def test_search_matches_brute_force_with_selector_and_removal(name, tmp_path):
    ids, x = _data()
    q = x[:7] + 0.01
    be = _backends(32)[name]
    be.add(ids, x)
    assert be.ntotal == 500
    np.testing.assert_array_equal(be.search(q, 5)[1], _exact(q, x, ids, 5))
    allowed = ids[::10]
    got = be.search(q, 5, allowed=allowed)[1]
    np.testing.assert_array_equal(got, _exact(q, x[::10], allowed, 5))
    be.remove(ids[:100])
    assert be.ntotal == 400
    np.testing.assert_array_equal(be.search(q, 5)[1], _exact(q, x[100:], ids[100:], 5))
    # fewer allowed ids than k: the rest is -1
    s, i = be.search(q[:1], 5, allowed=ids[200:202])
    assert set(i[0, :2]) == set(ids[200:202]) and (i[0, 2:] == -1).all() and np.isinf(s[0, 2:]).all()
    files = be.save(tmp_path / "index-1.faiss")
    assert all(f.exists() for f in files)
    loaded = (FaissBackend.load(tmp_path / "index-1.faiss", factory="IDMap2,Flat", metric="ip", use_gpu=False) if name.startswith("faiss")
              else TorchExactBackend.load(tmp_path / "index-1.faiss", device="cpu"))
    np.testing.assert_array_equal(loaded.search(q, 5)[1], be.search(q, 5)[1])


def test_l2_metric_agrees_between_backends():
    ids, x = _data(200, 16)
    x *= np.arange(1, 201, dtype=np.float32)[:, None] / 50  # unnormalised
    q = x[:3] * 0.9
    a = FaissBackend(16, "IDMap2,Flat", metric="l2", use_gpu=False)
    b = TorchExactBackend(16, metric="l2", device="cpu")
    for be in (a, b):
        be.add(ids, x)
    sa, ia = a.search(q, 4)
    sb, ib = b.search(q, 4)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-3)


def test_hnsw_masks_deletions():
    ids, x = _data(300)
    be = FaissBackend(32, "HNSW16,Flat", use_gpu=False)
    be.add(ids, x)
    assert not be.supports_remove
    be.remove(ids[:30])
    assert be.ntotal == 270 and abs(be.masked_share - 0.1) < 1e-9
    got = be.search(x[:30], 1)[1]
    assert not set(got.ravel()) & set(ids[:30])


def test_bad_factory_is_a_clear_error():
    from rag_lfm.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot build index factory 'NotAnIndex'"):
        FaissBackend(8, "NotAnIndex")


def test_faiss_gpu_count_is_zero_without_faiss(monkeypatch):
    """backend="auto" asks faiss for GPUs; a GPU machine without faiss at all must still get the torch backend."""
    import sys

    from rag_lfm.index import faiss_gpu_count

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    assert faiss_gpu_count() == 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_backend_on_gpu_matches_cpu():
    ids, x = _data(5000, 64)
    q = x[:50]
    cpu = TorchExactBackend(64, device="cpu")
    gpu = TorchExactBackend(64, device="cuda", dtype="float32")
    for be in (cpu, gpu):
        be.add(ids, x)
    np.testing.assert_array_equal(cpu.search(q, 10)[1], gpu.search(q, 10)[1])


@pytest.mark.gpu
def test_faiss_gpu_index_when_faiss_has_gpus():
    from rag_lfm.index import faiss_gpu_count

    if faiss_gpu_count() == 0:
        pytest.skip("this faiss build has no GPU support (pip install 'rag-lfm[gpu]' on a CUDA 12 machine)")
    ids, x = _data(2000, 64)
    be = FaissBackend(64, "IDMap2,Flat", use_gpu=True)
    be.add(ids, x)
    np.testing.assert_array_equal(be.search(x[:20], 5)[1], _exact(x[:20], x, ids, 5))


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
def test_torch_backend_gpu_tiles_and_int8_match_cpu():
    """On the device: tiling, two-level top-k and int8 storage (torch._int_mm where cuBLAS takes it) give the CPU's answers."""
    ids, x = _data(30000, 96)
    q = x[:64] + 0.01
    cpu = TorchExactBackend(96, device="cpu", dtype="float32")
    cpu.add(ids, x)
    want = cpu.search(q, 10)[1]
    one = TorchExactBackend(96, device="cuda", dtype="float32", tile_scores=1 << 30)
    tiled = TorchExactBackend(96, device="cuda", dtype="float32", tile_scores=64 * 1024, topk_group=256, segment_rows=7000)
    for be in (one, tiled):
        be.add(ids, x)
        np.testing.assert_array_equal(be.search(q, 10)[1], want)
    q8 = TorchExactBackend(96, device="cuda", dtype="int8")
    deq = TorchExactBackend(96, device="cuda", dtype="int8", int_mm=False)
    for be in (q8, deq):
        be.add(ids, x)
        got = be.search(q, 10)[1]
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]) >= 0.95
    assert q8.memory_bytes == 30000 * (96 + 4 + 8)
