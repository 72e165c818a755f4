"""Every index family behind the backend protocol: add, remove, search, filter, save, load (also memory-mapped).

Small clustered synthetic data (the shape real embeddings have), so approximate families
find the true neighbours often enough for their recall to be checked, and fast builds.
Plus the pieces the families share: the rescoring store, the over-fetch path for indexes
without a search-time selector, position masking for indexes that cannot remove ids, and
the tiled top-k of the torch backend.
"""

from __future__ import annotations

import numpy as np
import pytest

from rag_lfm.errors import ConfigError
from rag_lfm.index import FaissBackend, RescoreStore, TorchExactBackend, families, get_family, load_backend, make_backend, resolve_factory
from rag_lfm.index.topk import TopK, torch_merge, torch_topk_tile
from rag_lfm.tradeoffs import SyntheticClustered

D, N, K = 32, 1500, 10
EXACT = {"flat"}  # must equal brute force exactly
# recall@10 floors on this data (measured: every family is well above its floor)
FLOOR = {"flat-fp16": 0.95, "sq8": 0.9, "sq4": 0.5, "pq": 0.3, "opq-pq": 0.3, "ivf-pq": 0.3, "ivf-flat": 0.9, "ivf-sq8": 0.85,
         "hnsw": 0.9, "hnsw-sq8": 0.85}
EXHAUSTIVE = {"flat", "flat-fp16", "sq8", "sq4", "pq", "opq-pq"}  # scan every code: a filtered search is exact on their scores


@pytest.fixture(scope="module")
def data():
    src = SyntheticClustered(N, D, clusters=40, spread=0.5, seed=3)
    ids_seq, x = next(iter(src.iter_batches(N)))
    rng = np.random.default_rng(0)
    ids = rng.choice(2**62, size=N, replace=False).astype(np.int64)  # sparse 63-bit ids, as chunk ids are
    q = src.queries(40, seed=5)
    return ids, x, q


def _exact(q, x, ids, k=K):
    return ids[np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]]


def _recall(got, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth)]))


def _best_params(name):
    # the most accurate setting of the family's sweep: enough probes / beam / rescoring depth
    return get_family(name).grid(N, D)[-1]


@pytest.mark.parametrize("name", [f.name for f in families()])
def test_family_conformance(name, data, tmp_path):
    ids, x, q = data
    factory = get_family(name).factory(N, D)  # the family's own structure, even below its min_n
    be = make_backend(D, factory, params=_best_params(name), use_gpu=False)
    if not be.is_trained:
        be.train(x[:800])  # a training sample, as the knowledge base and the tuner train
    be.add(ids[:1000], x[:1000])
    be.add(ids[1000:], x[1000:])  # streaming adds
    assert be.ntotal == N
    truth = _exact(q, x, ids)
    s, got = be.search(q, K)
    assert got.shape == (len(q), K) and (got >= 0).all()
    assert (np.diff(s, axis=1) <= 1e-6).all(), "scores must come best first"
    rec = _recall(got, truth)
    if name in EXACT:
        np.testing.assert_array_equal(got, truth)
    else:
        assert rec >= FLOOR.get(name, 0.9), f"{name}: recall@10 {rec:.3f}"

    # a filter restricts the search itself: k hits, all allowed
    allowed = ids[::7]
    sf, gf = be.search(q, K, allowed=allowed)
    assert (gf >= 0).all() and np.isin(gf, allowed).all()
    if name in EXHAUSTIVE:
        # exactly the first k allowed ids of the unfiltered ranking (the over-fetch path must not miss any)
        full_s, full = be.search(q, N)
        for row in range(len(q)):
            want = [i for i in full[row] if i in set(allowed.tolist())][:K]
            assert list(gf[row]) == want
    # fewer allowed ids than k: the rest is -1 / -inf. (A graph search with a 3-id selector may not
    # reach them: the knowledge base scores filters that small exactly from stored vectors.)
    s2, g2 = be.search(q[:1], K, allowed=ids[5:8])
    if not name.startswith("hnsw"):
        assert set(g2[0, :3]) == set(ids[5:8])
    assert (g2[0, 3:] == -1).all() and np.isinf(s2[0, 3:]).all()

    # removal (or masking, for families that cannot remove): removed ids never come back
    gone = ids[: N // 10]
    be.remove(gone)
    assert be.ntotal == N - len(gone)
    assert be.supports_remove == get_family(name).removes
    if not be.supports_remove:
        assert be.masked_share > 0
    _, after = be.search(x[: len(gone) // 4], K)
    assert not np.isin(after, gone).any()
    _, after_f = be.search(q, K, allowed=np.concatenate([gone, ids[::5]]))
    assert not np.isin(after_f, gone).any()
    # an id deleted and added again is found once, with its new vector
    back_vec = x[N - 1 : N] * -1.0  # a different vector under an old id
    be.add(gone[:1], back_vec)
    assert be.ntotal == N - len(gone) + 1
    _, again = be.search(back_vec, K)
    assert again[0, 0] == gone[0] and list(again[0]).count(gone[0]) == 1

    # save / load / load memory-mapped: the same answers
    path = tmp_path / "index-7.faiss"
    files = be.save(path)
    assert all(f.exists() for f in files) and files[0] == path
    for mmap in (False, True):
        lb = load_backend(path, factory, params=_best_params(name), mmap=mmap)
        assert lb.ntotal == be.ntotal
        np.testing.assert_array_equal(lb.search(q, K)[1], be.search(q, K)[1])
        np.testing.assert_array_equal(lb.search(q, K, allowed=ids[::7])[1], be.search(q, K, allowed=ids[::7])[1])
        rep = lb.memory_report()
        assert rep["disk"] > 0 and rep["resident"] > 0
        if mmap:
            assert rep["mapped"] > 0 and rep["resident"] < be.memory_bytes
            with pytest.raises(ConfigError, match="mmap=True"):
                lb.add(ids[:1], x[:1])
    assert be.memory_bytes > 0


def test_family_registry_and_factories():
    from rag_lfm.index import register_family
    from rag_lfm.index.families import Family, estimate_bytes, ivf_nlist, pq_m

    assert resolve_factory("ivf-pq-rescore", 1_000_000, 384) == "IVF4096,PQ48x8,Rescore"
    assert resolve_factory("auto", 10, 384) == "IDMap2,Flat" and resolve_factory("IVF8,Flat", 10, 4) == "IVF8,Flat"
    assert resolve_factory("ivf-pq-rescore", 5000, 384) == "IDMap,Flat"  # too few vectors to train PQ codebooks: exact
    assert ivf_nlist(2000) == 32 and ivf_nlist(1) == 1 and pq_m(384, 1 / 8) == 48 and pq_m(100, 1 / 8) == 10
    with pytest.raises(ConfigError, match="already registered"):
        register_family(Family("flat", "dup", lambda n, d: "IDMap,Flat"))
    with pytest.raises(ConfigError, match="unknown index family 'nope'; known: flat"):
        get_family("nope")
    # estimates are close to the measured size (they decide what the tuner builds)
    ids, x = np.arange(4000), np.random.default_rng(0).standard_normal((4000, 64)).astype(np.float32)
    for name in ("flat", "sq8", "ivf-flat", "binary", "hnsw"):
        factory = get_family(name).factory(4000, 64)
        be = make_backend(64, factory, use_gpu=False)
        be.train(x)
        be.add(ids, x)
        if be.rescore is not None:
            be.rescore.flush()  # pending rescoring rows go to disk, as a saved index has them
        assert abs(estimate_bytes(factory, 64, 4000) / be.memory_bytes - 1) < 0.15, name


def test_bad_params_and_factories_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown index search parameter 'nprob'; valid: nprobe, efSearch, k_factor"):
        make_backend(8, "IVF4,Flat", params={"nprob": 3})
    with pytest.raises(ConfigError, match="must be a positive int"):
        make_backend(8, "IVF4,Flat", params={"nprobe": 0})
    with pytest.raises(ConfigError, match="cannot build index factory .BNope."):
        make_backend(8, "BNope,Rescore")
    with pytest.raises(ConfigError, match="divisible by 8"):
        make_backend(12, "BFlat")
    with pytest.raises(ConfigError, match="must be trained before add"):
        make_backend(8, "IVF4,Flat").add(np.arange(2), np.zeros((2, 8), np.float32))


def test_search_params_change_in_place(data):
    ids, x, q = data
    be = FaissBackend(D, "IVF32,Flat,Rescore", params={"nprobe": 1, "k_factor": 1}, use_gpu=False)
    be.train(x)
    be.add(ids, x)
    truth = _exact(q, x, ids)
    low = _recall(be.search(q, K)[1], truth)
    be.set_params(nprobe=32, k_factor=4)
    assert be.ivf.nprobe == 32 and be.k_factor == 4
    assert _recall(be.search(q, K)[1], truth) == 1.0 > low  # all lists + exact rescoring = exact


def test_rescore_store_spills_removes_merges_and_maps(tmp_path, data):
    ids, x, _ = data
    store = RescoreStore(D, buffer_rows=300)  # spills to scratch segments every 300 rows
    for a in range(0, N, 250):
        store.add(ids[a : a + 250], x[a : a + 250])
    assert len(store.segments) == 3 and store.ntotal == N
    store.remove(ids[:50])
    store.add(ids[:1], x[:1] * 2)  # re-added under the same id, new vector
    vecs, found = store.gather(np.array([[ids[0], ids[1], ids[60], -1]]))
    assert found.tolist() == [[True, False, True, False]]
    np.testing.assert_allclose(vecs[0, 0], x[0] * 2)
    np.testing.assert_allclose(vecs[0, 2], x[60])
    files = store.save(tmp_path / "index-1.faiss")
    assert len(store.segments) == 1 and store.resident_bytes == 0 and store.ntotal == N - 49
    on_disk = np.load(files[0])
    assert (np.diff(on_disk) > 0).all()  # one sorted segment
    loaded = RescoreStore.load(tmp_path / "index-1.faiss", D)
    v2, f2 = loaded.gather(np.array([ids[0], ids[60], ids[2]]))
    assert f2.tolist() == [True, True, False]
    np.testing.assert_allclose(v2[1], x[60])
    got = np.concatenate([i for i, _ in loaded.iter_batches(batch_rows=100)])
    np.testing.assert_array_equal(got, np.sort(np.concatenate([ids[:1], ids[50:]])))


def test_masked_positions_survive_save_and_compaction_share(tmp_path, data):
    ids, x, q = data
    be = make_backend(D, "IDMap,HNSW16,Flat", use_gpu=False)
    be.add(ids, x)
    be.remove(ids[:300])
    assert be.masked_share == pytest.approx(0.2)
    be.save(tmp_path / "index-1.faiss")
    lb = load_backend(tmp_path / "index-1.faiss", "IDMap,HNSW16,Flat")
    assert lb.masked_share == pytest.approx(0.2) and lb.ntotal == N - 300
    assert not np.isin(lb.search(x[:300], K)[1], ids[:300]).any()


def test_topk_accumulator_equals_one_topk():
    rng = np.random.default_rng(1)
    s = rng.standard_normal((7, 1000)).astype(np.float32)
    ids = rng.choice(10**9, 1000, replace=False)
    acc = TopK(7, 10)
    for a in range(0, 1000, 137):  # uneven tiles
        acc.add(s[:, a : a + 137], ids[a : a + 137])
    got_s, got_i = acc.result()
    order = np.argsort(-s, axis=1)[:, :10]
    np.testing.assert_array_equal(got_i, ids[order])
    np.testing.assert_allclose(got_s, np.take_along_axis(s, order, 1))
    small = TopK(1, 5)
    small.add(np.array([[0.3, 0.1]]), np.array([4, 5]))
    assert small.result()[1].tolist() == [[4, 5, -1, -1, -1]]


def test_torch_tiled_topk_merge_equals_full_topk():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 8192, generator=g)
    full_v, full_i = torch.topk(s, 10, dim=1)
    for group in (0, 256, 1024):
        v, i = torch_topk_tile(s, 10, group)
        assert torch.equal(i, full_i) and torch.equal(v, full_v)
    best = None
    for a in range(0, 8192, 3000):  # running merge over tiles
        v, i = torch_topk_tile(s[:, a : a + 3000], 10, 0)
        best = torch_merge(best, v, i + a, 10)
    assert torch.equal(best[1], full_i)


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_torch_backend_tiles_segments_and_storage(dtype, data):
    pytest.importorskip("torch")
    ids, x, q = data
    truth = _exact(q, x, ids)
    ref = None
    for tile, seg, int_mm in [(1 << 25, 1 << 20, False), (len(q) * 64, 400, False), (len(q) * 64, 400, True)]:
        be = TorchExactBackend(D, device="cpu", dtype=dtype, tile_scores=tile, segment_rows=seg, topk_group=16, int_mm=int_mm)
        be.add(ids[:700], x[:700])
        be.add(ids[700:], x[700:])
        assert be.ntotal == N
        s, got = be.search(q, K)
        if dtype == "float32":
            np.testing.assert_array_equal(got, truth)
        else:
            assert _recall(got, truth) >= (0.97 if dtype == "float16" else 0.9)
        if ref is None:
            ref = got
        elif not int_mm:
            np.testing.assert_array_equal(got, ref)  # tiling and segmenting change nothing
        gf = be.search(q, K, allowed=ids[::9])[1]
        assert np.isin(gf, ids[::9]).all()
        be.remove(ids[:100])
        assert be.ntotal == N - 100 and not np.isin(be.search(q, K)[1], ids[:100]).any()
    per_vec = {"float32": 4 * D, "float16": 2 * D, "int8": D + 4}[dtype] + 8
    assert be.memory_bytes == (N - 100) * per_vec


def test_torch_int8_scores_are_exact_for_the_stored_codes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    q = rng.standard_normal((3, 16)).astype(np.float32)
    be = TorchExactBackend(16, device="cpu", dtype="int8", int_mm=False)
    be.add(np.arange(64), x)
    dec = (be._vecs[0].float() * be._scales[0][:, None]).numpy()
    assert np.abs(dec - x).max() <= np.abs(x).max(axis=1).max() / 127 / 2 + 1e-6  # half a quantisation step
    s, i = be.search(q, 5)
    want = q @ dec.T
    np.testing.assert_allclose(s, np.sort(want, axis=1)[:, ::-1][:, :5], rtol=1e-5, atol=1e-5)
    assert torch.is_tensor(be._vecs[0]) and be._vecs[0].dtype == torch.int8


def test_torch_int8_dequantises_in_bounded_slices(monkeypatch, data):
    pytest.importorskip("torch")
    import rag_lfm.index.torch_backend as tb

    ids, x, q = data
    be = TorchExactBackend(D, device="cpu", dtype="int8", int_mm=False)
    be.add(ids, x)
    whole = be.search(q, K)
    monkeypatch.setattr(tb, "DEQUANT_BYTES", 64 * D * 2)  # 64 rows at a time
    sliced = be.search(q, K)
    np.testing.assert_array_equal(sliced[1], whole[1])
    np.testing.assert_allclose(sliced[0], whole[0], rtol=1e-6)


def test_rescore_store_compacts_to_one_segment_and_cleans_its_scratch(data):
    ids, x, _ = data
    store = RescoreStore(D, buffer_rows=300)
    store.add(ids, x)
    store.remove(ids[:10])
    before = store.gather(ids[[5, 20, 700]])
    spilled = store._scratch
    store.compact()
    assert len(store.segments) == 1 and store.ntotal == N - 10 and store.resident_bytes == 0
    assert not spilled.exists() and store._scratch.exists()
    after = store.gather(ids[[5, 20, 700]])
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0])
    scratch = store._scratch
    del store
    import gc

    gc.collect()
    assert not scratch.exists()  # the merged scratch files go with the store
