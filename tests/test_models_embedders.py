"""Offline model resolution and the real packaged embedder (torch, ONNX and OpenVINO backends)."""

from __future__ import annotations

import numpy as np
import pytest

from rag_lfm.embedders import HashEmbedder, SentenceTransformerEmbedder, make_embedder
from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.models import canonical_name, resolve_model


def test_known_short_names_resolve_to_packaged_folders():
    p = resolve_model("all-MiniLM-L6-v2")
    assert (p / "config.json").exists()
    assert resolve_model("sentence-transformers/all-MiniLM-L6-v2") == p
    assert canonical_name("sentence-transformers/all-minilm-l6-v2") == "all-MiniLM-L6-v2"


def test_missing_model_offline_names_the_model_and_the_options(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"'org/not-a-model' is not a local path.*all-MiniLM-L6-v2"):
        resolve_model("org/not-a-model")
    with pytest.raises(ModelNotFoundError, match="not a local path"):
        resolve_model(str(tmp_path / "no" / "such" / "dir"))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelNotFoundError, match="is a file, not a model folder"):
        resolve_model(str(f))
    emb = SentenceTransformerEmbedder("org/not-a-model")
    with pytest.raises(ModelNotFoundError):
        emb.encode(["x"])


def test_bad_embedder_arguments():
    with pytest.raises(ConfigError, match="backend 'tf'"):
        SentenceTransformerEmbedder(backend="tf")
    with pytest.raises(ConfigError, match="neither a model name"):
        make_embedder(42)
    with pytest.raises(ConfigError, match="wrap it"):
        HashEmbedder().encode("one string")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def fresh_home(tmp_path_factory):
    """One empty model cache for this module: exports and quantisations happen once, here, not in ~/.cache."""
    home = tmp_path_factory.mktemp("rag-lfm-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAG_LFM_HOME", str(home))
        yield home


def test_real_minilm_torch_and_onnx_int8_agree(fresh_home):
    tmp_path = fresh_home
    texts = ["Claude Monet was a French Impressionist painter.", "Jupiter is the largest planet.", "Python is a programming language."]
    torch_emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", device="cpu")
    a = torch_emb.encode(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    q = torch_emb.encode(["impressionist painting"], kind="query")
    assert int(np.argmax(a @ q[0])) == 0
    onnx = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="onnx-int8")
    b = onnx.encode(texts)
    cos = (a * b).sum(1)
    assert cos.min() > 0.97, cos  # int8 costs a little precision, never the meaning
    assert (tmp_path / "onnx").exists()


def test_real_minilm_openvino_backends_agree_and_cache_the_int8_model(fresh_home):
    pytest.importorskip("openvino", reason="the openvino backends need `pip install 'rag-lfm[openvino]'`")
    pytest.importorskip("nncf", reason="openvino-int8 needs nncf (`pip install 'rag-lfm[openvino]'`)")
    from rag_lfm.embedders import calibration_texts

    tmp_path = fresh_home
    texts = ["Claude Monet was a French Impressionist painter.", "Jupiter is the largest planet.",
             "Python is a programming language.", "A short one."]
    ref = SentenceTransformerEmbedder("all-MiniLM-L6-v2", device="cpu").encode(texts)
    fp32 = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="openvino").encode(texts)
    np.testing.assert_allclose(fp32, ref, atol=2e-4)  # the same graph, another runtime
    assert len(calibration_texts()) >= 200
    int8 = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="openvino-int8")
    b = int8.encode(texts)
    assert b.shape == (4, 384) and b.dtype == np.float32
    assert (ref * b).sum(1).min() > 0.98
    xml = next(tmp_path.glob("onnx/*/openvino-int8/model.xml"))
    stamp = xml.stat().st_mtime_ns
    again = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="openvino-int8").encode(texts)
    np.testing.assert_array_equal(again, b)  # loaded from the cache, not quantised again
    assert xml.stat().st_mtime_ns == stamp


def test_openvino_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", backend="openvino-int8")
    with pytest.raises(ConfigError, match=r"pip install 'rag-lfm\[openvino\]'"):
        emb.encode(["x"])


def test_auto_backend_is_measured_once_per_machine_and_recorded(fresh_home, tmp_path, monkeypatch, caplog):
    """``auto`` picks the fastest backend passing the quality gate, caches the measurement, logs it in one
    line, records the resolved backend in the manifest, and re-chooses where the recorded one is missing."""
    import json

    from rag_lfm import KnowledgeBase
    from rag_lfm import embedders as E

    caplog.set_level("WARNING", logger="rag_lfm")
    choice = E.choose_backend("all-MiniLM-L6-v2", device="cpu", progress=False)
    records = list(fresh_home.glob("onnx/*/backend-choice-*.json"))
    assert len(records) == 1
    data = json.loads(records[0].read_text())
    res = data["results"]
    assert data["choice"] == choice and "torch" in res and res["torch"]["qualifies"]
    qualified = {n: r for n, r in res.items() if r["qualifies"]}
    assert choice == max(qualified, key=lambda n: qualified[n]["texts_per_s"])  # the fastest that qualifies
    for r in qualified.values():
        assert r["mean_cosine_to_torch"] >= E.AUTO_MIN_COSINE
        lost, gained = r["probe_queries_lost_gained"]
        assert lost - gained <= data["gate"]["max_net_queries_lost"]  # the recall gate, in whole probe queries
    assert data["gate"]["max_net_queries_lost"] == max(1, int(E.AUTO_MAX_RECALL_LOSS * data["n_probe_queries"]))
    assert sum("embedder backend 'auto' ->" in m for m in caplog.messages) == 1
    stamp = records[0].stat().st_mtime_ns
    assert E.choose_backend("all-MiniLM-L6-v2", device="cpu", progress=False) == choice
    assert records[0].stat().st_mtime_ns == stamp  # read from the cache, not measured again
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    out = CliRunner().invoke(app, ["calibrate", "--json"])  # shows the recorded measurement, measures nothing
    assert out.exit_code == 0 and json.loads(out.stdout)["choice"] == choice
    assert records[0].stat().st_mtime_ns == stamp

    kb = KnowledgeBase.create(tmp_path / "kb", embedder="all-MiniLM-L6-v2", device="cpu")  # default: auto
    assert kb.manifest["embedder"]["backend"] == choice and kb.manifest["embedder"]["backend_spec"] == "auto"
    assert KnowledgeBase.open(tmp_path / "kb", device="cpu").embedder.backend == choice  # stable on reopen
    # Reopened where the recorded backend is not installed: measured again among what is.
    monkeypatch.setattr(E, "backend_installed", lambda b: b == "torch")
    monkeypatch.setattr(E, "AUTO_CANDIDATES", ("torch",))
    monkeypatch.setattr(E, "machine_fingerprint", lambda: "another-machine")
    if choice != "torch":
        assert KnowledgeBase.open(tmp_path / "kb", device="cpu").embedder.backend == "torch"
