"""Offline model resolution and the real packaged embedder (torch and ONNX int8 backends)."""

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


def test_real_minilm_torch_and_onnx_int8_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_LFM_HOME", str(tmp_path))  # a fresh ONNX export, in the test's own folder
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
