"""The GPU paths on a real CUDA device: knowledge base, embedder, reader (skipped without a GPU).

Everything runs with tiny randomly initialised models built here (no weights travel to a
GPU machine): a 2-layer BERT sentence-transformers folder and the tiny Llama of
``test_readers``. Each GPU result is checked against the same computation on the CPU.

Run: ``pytest -m gpu tests/test_gpu.py`` (``benchmarks/gpu_suite.sh`` on the lent GPU).
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from test_readers import QUESTIONS, _save_tiny, hits  # noqa: E402  (the tiny Llama and its fixtures' data)

from rag_lfm.connectors import InMemory  # noqa: E402
from rag_lfm.types import Document  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "si", "ta", "vo", "ze", "pu"]
_ENDINGS = ["ran", "tel", "mos", "dix", "vul", "gan", "pho", "rik", "sen", "tob"]
WORDS = [a + b for a in _SYLLABLES for b in _ENDINGS]  # 100 made-up words
TOPICS = ["arts", "science", "history"]
# fp16 index storage: each score carries up to ~1.3e-3 of rounding (query, vectors, score
# each rounded to fp16); two items closer than that may swap ranks against fp32.
FP16_TOL = 4e-3


def _docs(n: int = 240, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    return [Document(f"doc-{i:03d}", " ".join(rng.choices(WORDS, k=rng.randint(8, 40))),
                     {"topic": TOPICS[i % 3], "n": i}) for i in range(n)]


def _queries(n: int = 24, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=rng.randint(2, 6))) for _ in range(n)]


@pytest.fixture(scope="module")
def tiny_st(tmp_path_factory) -> str:
    """A randomly initialised 2-layer BERT saved as a sentence-transformers folder (mean pooling + normalize).

    Written file by file in the on-disk format the packaged all-MiniLM-L6-v2 uses, so it
    loads the same way through ``SentenceTransformer(folder)`` in any sentence-transformers version.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-st")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([d.text for d in _docs()] + _queries(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(fast), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=128, pad_token_id=fast.pad_token_id)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
    }))
    return str(folder)


def _assert_same_ranking(ref_kb, queries, ref_hits, got_hits, tol: float = FP16_TOL) -> None:
    """``got_hits`` is a correct top-k within ``tol``: at every rank, its hit scores (exactly, in fp32,
    from the reference's stored vectors) what the reference's hit at that rank scores."""
    qvecs = ref_kb.embedder.encode(queries, kind="query")
    for q, ref, got in zip(qvecs, ref_hits, got_hits):
        assert len(got) == len(ref) > 0
        exact = ref_kb.vectors([h.chunk_id for h in got]) @ q
        np.testing.assert_allclose(exact, [h.score for h in ref], atol=tol)
        np.testing.assert_allclose([h.score for h in got], [h.score for h in ref], atol=tol)


# -- knowledge base: backend="auto" on a GPU machine ------------------------------------------------
@pytest.mark.parametrize("embedder", ["hash-64", "tiny-st"])
def test_kb_auto_backend_on_gpu_matches_cpu_and_reopens(embedder, request, tmp_path):
    pytest.importorskip("faiss")  # the CPU reference is the default FAISS flat index
    from rag_lfm.index import TorchExactBackend, faiss_gpu_count
    from rag_lfm.knowledge_base import KnowledgeBase

    emb = embedder if embedder == "hash-64" else request.getfixturevalue("tiny_st")
    docs, queries = _docs(), _queries()
    gpu = KnowledgeBase.create(tmp_path / "gpu", embedder=emb, backend="auto", device="auto")
    cpu = KnowledgeBase.create(tmp_path / "cpu", embedder=emb, backend="faiss", device="cpu")
    if faiss_gpu_count() > 0:
        pytest.skip("this faiss build has GPUs, so backend='auto' picks FAISS; this test covers the torch path")
    # faiss here has no GPU: auto must pick exact torch search, on the GPU, in fp16
    assert gpu.manifest["index"]["backend"] == "torch"
    assert isinstance(gpu.index, TorchExactBackend) and gpu.index.device.type == "cuda"
    assert gpu.index.dtype == torch.float16
    if embedder == "tiny-st":
        assert gpu.embedder.st.device.type == "cuda" and cpu.embedder.st.device.type == "cpu"
    for kb in (gpu, cpu):
        report = kb.ingest(InMemory(docs, name="synthetic"), commit_every=100, progress=False)
        assert report.ok and report.added == len(docs) and report.commits >= 3
    assert len(gpu) == len(cpu) and gpu.index.ntotal == cpu.index.ntotal == len(docs)

    got, ref = gpu.search_batch(queries, k=10), cpu.search_batch(queries, k=10)
    _assert_same_ranking(cpu, queries, ref, got)
    flt = {"topic": "science", "n": {"$gte": 30}}
    got_f, ref_f = gpu.search_batch(queries, k=10, filter=flt), cpu.search_batch(queries, k=10, filter=flt)
    _assert_same_ranking(cpu, queries, ref_f, got_f)
    assert all(h.metadata["topic"] == "science" and h.metadata["n"] >= 30 for row in got_f for h in row)

    gpu.close()
    again = KnowledgeBase.open(tmp_path / "gpu")
    try:
        assert isinstance(again.index, TorchExactBackend) and again.index.device.type == "cuda"
        assert again.index.dtype == torch.float16 and again.index.ntotal == len(docs)
        for before, after in [(got, again.search_batch(queries, k=10)), (got_f, again.search_batch(queries, k=10, filter=flt))]:
            assert [[h.chunk_id for h in row] for row in after] == [[h.chunk_id for h in row] for row in before]
            np.testing.assert_allclose([[h.score for h in row] for row in after],
                                       [[h.score for h in row] for row in before], atol=1e-5)
        # removal on the device: a deleted document is gone from the results, unchanged documents are skipped
        top = again.search(queries[0], k=1)[0].doc_id
        assert again.delete([top], source="synthetic") == 1
        assert top not in {h.doc_id for h in again.search(queries[0], k=10)}
        assert again.ingest(InMemory([d for d in docs if d.id != top], name="synthetic"), progress=False).unchanged == len(docs) - 1
    finally:
        again.close()
        cpu.close()


def test_torch_backend_fp16_default_on_gpu_recall_filter_l2():
    from rag_lfm.index import TorchExactBackend

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 96)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = rng.choice(2**62, size=len(x), replace=False).astype(np.int64)
    q = x[:64] + 0.05 * rng.standard_normal((64, 96)).astype(np.float32)
    be = TorchExactBackend(96, device="cuda", query_batch=16)  # 4 matmul batches
    be.add(ids, x)
    assert be.dtype == torch.float16 and be.memory_bytes == 20000 * 96 * 2 + 8 * 20000  # half the bytes of fp32
    exact = ids[np.argsort(-(q @ x.T), axis=1)[:, :10]]
    got = be.search(q, 10)[1]
    assert got[:, 0].tolist() == ids[:64].tolist()  # the perturbed vector's source is always first
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert recall >= 0.97, recall
    allowed = ids[1::7]
    got_f = be.search(q, 10, allowed=allowed)[1]
    assert np.isin(got_f, allowed).all()
    be.remove(ids[:32])
    assert be.ntotal == 20000 - 32 and not np.isin(be.search(q[:32], 10)[1], ids[:32]).any()
    l2 = TorchExactBackend(96, metric="l2", device="cuda", dtype="float32")
    l2.add(ids, x * 3)
    np.testing.assert_array_equal(l2.search(q * 3, 5)[1][:, 0], ids[:64])


# -- embedder on CUDA ----------------------------------------------------------------------------------
def test_st_embedder_on_cuda_matches_cpu(tiny_st):
    from rag_lfm.embedders import SentenceTransformerEmbedder

    texts = [d.text for d in _docs(150)] + ["", "ka", "LOTEL mira!"]
    cpu = SentenceTransformerEmbedder(tiny_st, device="cpu").encode(texts)
    emb = SentenceTransformerEmbedder(tiny_st, device="cuda")
    gpu = emb.encode(texts)  # default batch size on CUDA: 128, so two batches here
    assert str(emb.st.device).startswith("cuda")
    assert gpu.dtype == np.float32 and gpu.shape == cpu.shape == (len(texts), 64) and gpu.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(gpu, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)  # fp32 on both sides
    # the same model in fp16 on the GPU: still float32 out, close to the fp32 vectors
    emb.st.half()
    half = emb.encode(texts)
    assert half.dtype == np.float32
    assert float((half * cpu).sum(1).min()) > 0.999
    np.testing.assert_allclose(half, cpu, atol=2e-2)


# -- reader on CUDA ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> str:
    return _save_tiny(tmp_path_factory.mktemp("tiny-chat-gpu"), chat=True)


@pytest.fixture(scope="module")
def cuda_reader(tiny_llama):
    from rag_lfm.readers import TransformersReader

    return TransformersReader(tiny_llama, device="cuda", max_new_tokens=6, max_passage_tokens=40, batch_size=4).warm_up()


def _passages(strategy: str) -> list[list]:
    return [[] if strategy == "closed-book" else hits(3)[i % 3:] + hits(1) for i in range(len(QUESTIONS))]


def test_reader_on_cuda_is_bf16_and_frozen(cuda_reader):
    assert cuda_reader.device == "cuda" and cuda_reader.dtype == "bfloat16"
    p = next(cuda_reader.model.parameters())
    assert p.device.type == "cuda" and p.dtype == torch.bfloat16
    assert cuda_reader._stop_ids.device.type == "cuda"


@pytest.mark.parametrize("strategy", ["closed-book", "in-context", "replug"])
def test_reader_on_cuda_batched_equals_one_by_one(cuda_reader, strategy):
    passages = _passages(strategy)
    # 5 questions at batch_size 4: two batches, left padding, the shared-prefix cache
    batched = cuda_reader.generate_batch(QUESTIONS, passages, strategy=strategy)
    single = [cuda_reader.generate(q, p, strategy=strategy) for q, p in zip(QUESTIONS, passages)]
    assert [a.text for a in batched] == [a.text for a in single]
    assert all(a.strategy == strategy and a.generated_tokens <= 6 for a in batched)


def test_reader_on_cuda_replug_stream_and_weights_unchanged(cuda_reader):
    before = cuda_reader.weights_fingerprint()
    a = cuda_reader.generate(QUESTIONS[0], hits(3), strategy="replug")
    weights = [c.weight for c in a.citations]
    assert abs(sum(weights) - 1.0) < 1e-5 and weights == sorted(weights, reverse=True)
    one = hits(1)
    assert cuda_reader.generate(QUESTIONS[0], one, strategy="replug").text == cuda_reader.generate(QUESTIONS[0], one).text
    many = cuda_reader.generate_batch(QUESTIONS, [hits(3)] * len(QUESTIONS), strategy="replug")
    assert len(many) == len(QUESTIONS) and all(len(x.citations) == 3 for x in many)
    for strategy in ("in-context", "replug"):
        streamed = "".join(cuda_reader.stream(QUESTIONS[2], hits(3), strategy=strategy)).strip()
        assert streamed.split("\n")[0].strip() == cuda_reader.generate(QUESTIONS[2], hits(3), strategy=strategy).text
    assert cuda_reader.weights_fingerprint() == before
    assert not cuda_reader.model.training and not any(p.requires_grad for p in cuda_reader.model.parameters())


def test_reader_on_cuda_fp32_answers_like_cpu(tiny_llama):
    from rag_lfm.readers import TransformersReader

    kw = {"max_new_tokens": 6, "max_passage_tokens": 40, "batch_size": 4}
    gpu = TransformersReader(tiny_llama, device="cuda", dtype="float32", **kw)
    cpu = TransformersReader(tiny_llama, device="cpu", **kw)
    for strategy in ("closed-book", "in-context", "replug"):
        passages = _passages(strategy)
        assert ([a.text for a in gpu.generate_batch(QUESTIONS, passages, strategy=strategy)]
                == [a.text for a in cpu.generate_batch(QUESTIONS, passages, strategy=strategy)])
    assert gpu.weights_fingerprint() == cpu.weights_fingerprint()
