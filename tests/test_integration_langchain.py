"""The LangChain plug-in used as a LangChain user would: the defects found that way, fixed and pinned.

(The conformance suites of langchain-tests run in test_langchain_standard.py.)
"""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.embeddings import DeterministicFakeEmbedding  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_core.vectorstores import VectorStore  # noqa: E402

from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase  # noqa: E402
from rag_lfm.errors import ConfigError, EmbedderMismatchError, FilterError, IndexFormatError  # noqa: E402
from rag_lfm.integrations.langchain import (  # noqa: E402
    LangChainEmbedder,
    RagLfmEmbeddings,
    RagLfmRetriever,
    RagLfmVectorStore,
    translate_filter,
)


class Src:
    source_id, complete = "src", True

    def iter_documents(self):
        # The user's own metadata uses the very keys rag-lfm used to overwrite.
        yield Document("a", "red apples grow on trees", {"kind": "fruit", "score": "user", "doc_id": "A-1", "start": 5, "end": 9})
        yield Document("b", "blue sky and white clouds", {"kind": "weather", "year": 2001})
        yield Document("c", "green apples are sour", {"kind": "fruit", "year": 1999})


class CountingHash(HashEmbedder):
    """hash-64 that counts its encode passes (not texts)."""

    def __init__(self) -> None:
        super().__init__(64)
        self.passes = 0

    def encode(self, texts, **kw):
        self.passes += 1
        return super().encode(texts, **kw)


@pytest.fixture
def kb(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "i", embedder=HashEmbedder(64))
    kb.ingest(Src(), progress=False)
    yield kb
    kb.close()


# -- the retriever ------------------------------------------------------------------------------
def test_retriever_is_a_langchain_runnable_with_our_provenance_under_one_key(kb):
    r = RagLfmRetriever(kb=kb, k=2)
    assert isinstance(r, BaseRetriever)
    docs = r.invoke("apples")
    assert all(isinstance(d, LCDocument) for d in docs)
    assert {d.id for d in docs} == {"a", "c"}  # the id the document was given, not a chunk id
    a = next(d for d in docs if d.id == "a")
    # The user's keys survive untouched; ours live under metadata["rag_lfm"] only.
    assert {k: a.metadata[k] for k in ("score", "doc_id", "start", "end")} == {"score": "user", "doc_id": "A-1", "start": 5, "end": 9}
    ours = a.metadata["rag_lfm"]
    assert set(ours) == {"score", "chunk_id", "doc_id", "source_id", "start", "end"}
    assert ours["doc_id"] == "a" and ours["source_id"] == "src" and (ours["start"], ours["end"]) == (0, 24)
    assert kb.fetch([ours["chunk_id"]])[0].text == a.page_content  # the chunk is reachable from the Document
    assert docs[0].metadata["rag_lfm"]["score"] >= docs[1].metadata["rag_lfm"]["score"]
    assert "rag_lfm" not in RagLfmRetriever(kb=kb, k=1, provenance=False).invoke("apples")[0].metadata


def test_invoke_honours_k_and_filter_per_call(kb):
    r = RagLfmRetriever(kb=kb, k=3)
    assert len(r.invoke("apples", k=1)) == 1
    assert len(r.invoke("apples")) == 3
    assert [d.id for d in r.invoke("apples", filter={"kind": "weather"})] == ["b"]
    # A per-call filter narrows the constructor's (both apply).
    fruit = RagLfmRetriever(kb=kb, k=3, filter={"kind": "fruit"})
    assert [d.id for d in fruit.invoke("apples", filter={"year": {"$lt": 2000}})] == ["c"]
    assert fruit.invoke("apples", filter={"kind": "weather"}) == []
    # LangChain FAISS's plain forms: a list means $in, $neq means $ne.
    assert {d.id for d in r.invoke("x", filter={"kind": ["weather"]})} == {"b"}
    assert {d.id for d in r.invoke("x", filter={"kind": {"$neq": "fruit"}})} == {"b"}
    with pytest.raises(ConfigError, match="unknown argument.*top_k.*valid arguments: filter, k"):
        r.invoke("apples", top_k=1)


async def test_ainvoke_and_abatch_honour_kwargs(kb):
    r = RagLfmRetriever(kb=kb, k=3)
    one = await r.ainvoke("apples", k=1, filter={"kind": "fruit"})
    assert len(one) == 1 and one[0].metadata["kind"] == "fruit"
    many = await r.abatch(["sky clouds", "sour"], k=1)
    assert [[d.id for d in ds] for ds in many] == [["b"], ["c"]]


def test_batch_embeds_all_queries_in_one_pass_and_reports_a_run_per_query(kb):
    from langchain_core.callbacks import BaseCallbackHandler

    class Runs(BaseCallbackHandler):
        def __init__(self):
            self.starts, self.ends = [], []

        def on_retriever_start(self, serialized, query, **kw):
            self.starts.append(query)

        def on_retriever_end(self, documents, **kw):
            self.ends.append(len(documents))

    counting = CountingHash()
    kb.embedder = counting
    r = RagLfmRetriever(kb=kb, k=1)
    runs = Runs()
    out = r.batch(["sky clouds", "sour", "red trees"], config={"callbacks": [runs]})
    assert [[d.id for d in ds] for ds in out] == [["b"], ["c"], ["a"]]
    assert counting.passes == 1  # LangChain's default batch would have made 3
    assert sorted(runs.starts) == sorted(["sky clouds", "sour", "red trees"]) and runs.ends == [1, 1, 1]
    assert r.batch(["sour"], k=2)[0][0].id == "c"
    with pytest.raises(ConfigError, match="query 1 is int"):
        r.batch(["ok", 3])
    assert isinstance(r.batch(["ok", 3], return_exceptions=True)[1], ConfigError)


def test_retriever_defaults_to_the_index_retriever_like_kb_search(kb):
    """Without `method`, the chain retrieves what kb.search / `ask` retrieve (the index's recorded
    retriever, hybrid by default); an explicit method is built as asked."""
    default = RagLfmRetriever(kb=kb, k=3)
    assert default.retriever.to_config() == kb.retriever.to_config()
    for q in ("apples", "sour", "red trees"):
        assert [d.id for d in default.invoke(q)] == [h.doc_id for h in kb.search(q, k=3)]
    assert RagLfmRetriever(kb=kb, k=3, method="dense").retriever.method == "dense"
    assert RagLfmRetriever(kb=kb, k=3, mmr_lambda=0.5).retriever.mmr_lambda == 0.5  # on top of the index's


def test_retriever_options_pass_through(kb):
    dense = RagLfmRetriever(kb=kb, k=3, metric="cosine").invoke("apples")
    assert {d.id for d in dense[:2]} == {"a", "c"}
    bm25 = RagLfmRetriever(kb=kb, k=1, method="bm25").invoke("sour")
    assert [d.id for d in bm25] == ["c"]
    hybrid = RagLfmRetriever(kb=kb, k=2, method="hybrid", fusion="weighted", weights=[0.5, 0.5], mmr_lambda=0.5)
    assert len(hybrid.invoke("apples")) == 2
    assert hybrid.retriever.method == "hybrid" and hybrid.retriever.mmr_lambda == 0.5


def test_retriever_errors_are_ours_not_pydantic_traces(kb, tmp_path):
    with pytest.raises(IndexFormatError, match="not a directory"):
        RagLfmRetriever(kb=tmp_path / "missing")
    with pytest.raises(ConfigError, match="kb is required"):
        RagLfmRetriever()
    with pytest.raises(ConfigError, match="unknown argument.*top_k"):
        RagLfmRetriever(kb=kb, top_k=3)
    with pytest.raises(ConfigError, match="k=0 must be a positive int"):
        RagLfmRetriever(kb=kb, k=0)
    with pytest.raises(ConfigError, match="retrieval method 'sparse'"):
        RagLfmRetriever(kb=kb, method="sparse")
    with pytest.raises(FilterError, match="'colour' is not a metadata field.*known fields: .*kind"):
        RagLfmRetriever(kb=kb).invoke("apples", filter={"colour": "red"})
    with pytest.raises(ConfigError, match="callable"):
        RagLfmRetriever(kb=kb).invoke("apples", filter=lambda m: True)
    # An index path opens.
    assert RagLfmRetriever(kb=kb.path, k=1).invoke("sour")[0].id == "c"


def test_a_deleted_index_database_is_a_clear_error(kb):
    r = RagLfmRetriever(kb=kb, k=1)
    kb.close()
    os.remove(kb.path / "docstore.sqlite")
    with pytest.raises(IndexFormatError, match="cannot be read .*reopen it with KnowledgeBase.open"):
        r.invoke("apples")


def test_user_metadata_with_our_reserved_key_is_refused_clearly(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "i", embedder=HashEmbedder(64))
    kb.ingest(InMemory([Document("x", "apples", {"rag_lfm": 1})], name="s"), progress=False)
    with pytest.raises(ConfigError, match="reserves .*provenance=False"):
        RagLfmRetriever(kb=kb).invoke("apples")
    assert RagLfmRetriever(kb=kb, provenance=False).invoke("apples")[0].metadata == {"rag_lfm": 1}


# -- the vector store ---------------------------------------------------------------------------
def test_vector_store_upserts_deletes_and_keeps_metadata(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64")
    assert isinstance(store, VectorStore)
    ids = store.add_texts(["red apples", "blue sky"], [{"score": 1, "doc_id": "mine"}, {}], ids=["a", None])
    assert ids[0] == "a" and len(ids[1]) == 36  # a uuid where none was given
    top = store.similarity_search("apples", k=1)[0]
    assert top == LCDocument(page_content="red apples", metadata={"score": 1, "doc_id": "mine"}, id="a")
    store.add_texts(["green apples"], [{"score": 2}], ids=["a"])  # same id: replaced, not duplicated
    assert [d.page_content for d in store.similarity_search("apples", k=5)].count("green apples") == 1
    assert len(store.kb) == 2
    store.delete(["a", "never-there"])
    assert [d.id for d in store.similarity_search("apples", k=5)] == [ids[1]]
    store.delete()  # everything this store's source holds
    assert store.similarity_search("sky", k=5) == []


def test_vector_store_checks_every_input_before_writing(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64")
    with pytest.raises(ConfigError, match="metadata 1 .* not JSON-serialisable"):
        store.add_texts(["ok", "bad"], [{}, {"when": object()}])
    with pytest.raises(ConfigError, match="text 0 .* is empty"):
        store.add_texts(["  "])
    with pytest.raises(ConfigError, match="appears twice"):
        store.add_texts(["a", "b"], ids=["x", "x"])
    with pytest.raises(ConfigError, match="reserves"):
        store.add_texts(["a"], [{"rag_lfm": {}}])
    with pytest.raises(ConfigError, match="2 texts but 1 metadatas"):
        store.add_texts(["a", "b"], [{}])
    assert len(store.kb) == 0  # nothing half-written


def test_selective_filter_returns_k_where_a_post_filter_starves(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64")
    texts = [f"apple orchard number {i}" for i in range(300)]
    store.add_texts(texts, [{"bucket": i % 100} for i in range(300)])  # 3 documents per bucket
    hits = store.similarity_search("apple orchard", k=3, filter={"bucket": 7})
    assert len(hits) == 3 and {d.metadata["bucket"] for d in hits} == {7}
    # fetch_k (LangChain FAISS's post-filter window) is accepted and not needed.
    assert len(store.similarity_search("apple orchard", k=3, filter={"bucket": 7}, fetch_k=5)) == 3
    with pytest.raises(ConfigError, match="unknown argument.*where"):
        store.similarity_search("apple", where={"bucket": 7})


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_relevance_scores_are_in_0_1_and_mean_the_cosine(tmp_path, metric):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64", metric=metric)
    store.add_texts(["red apples grow", "blue sky", "apples and sky", "sour green apples"], ids=list("abcd"))
    q = HashEmbedder(64).encode(["red apples"])[0]
    got = store.similarity_search_with_relevance_scores("red apples", k=4)
    assert len(got) == 4 and all(0.0 <= r <= 1.0 for _, r in got)
    vecs = {d.id: HashEmbedder(64).encode([d.page_content])[0] for d, _ in got}
    for d, r in got:
        assert r == pytest.approx((1 + float(q @ vecs[d.id])) / 2, abs=1e-5)  # both metrics: (1 + cos) / 2
    assert [r for _, r in got] == sorted((r for _, r in got), reverse=True)
    thr = store.similarity_search_with_relevance_scores("red apples", k=4, score_threshold=0.75)
    assert all(r >= 0.75 for _, r in thr) and len(thr) < 4


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_relevance_for_unnormalised_embedders(tmp_path, metric):
    emb = HashEmbedder(64, normalize=False)
    store = RagLfmVectorStore.create(tmp_path / "s", embedding=emb, metric=metric)
    store.add_texts(["apples apples apples red", "blue sky", "apples sky"], ids=list("abc"))
    q = emb.encode(["red apples"])[0]
    got = dict((d.id, r) for d, r in store.similarity_search_with_relevance_scores("red apples", k=3))
    for i, text in zip("abc", ["apples apples apples red", "blue sky", "apples sky"]):
        v = emb.encode([text])[0]
        if metric == "ip":
            want = (1 + q @ v / (np.linalg.norm(q) * np.linalg.norm(v))) / 2
        else:
            want = 1 / (1 + np.linalg.norm(q - v))
        assert got[i] == pytest.approx(float(want), abs=1e-5)


def test_mmr_and_as_retriever(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64")
    store.add_texts(["apples apples", "apples apples", "apples and pears", "sky"], ids=list("abcd"))
    picked = store.max_marginal_relevance_search("apples", k=2, fetch_k=4, lambda_mult=0.1)
    assert len(picked) == 2 and {picked[0].page_content, picked[1].page_content} != {"apples apples"}
    by_vec = store.max_marginal_relevance_search_by_vector(HashEmbedder(64).encode(["apples"])[0].tolist(), k=2)
    assert len(by_vec) == 2
    r = store.as_retriever(search_kwargs={"k": 3})
    assert len(r.invoke("apples", k=1)) == 1  # LangChain's VectorStoreRetriever passes k through
    assert len(store.as_retriever(search_type="mmr", search_kwargs={"k": 2}).invoke("apples")) == 2
    thr = store.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.9, "k": 4})
    assert [d.id for d in thr.invoke("sky")] == ["d"]
    with pytest.raises(ConfigError, match="lambda_mult"):
        store.max_marginal_relevance_search("apples", lambda_mult=2)


def test_long_documents_are_chunked_and_get_by_ids_rebuilds_them(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64", chunk_size=8, chunk_overlap=2, provenance=True)
    long = " ".join(f"w{i}" for i in range(30))
    store.add_documents([LCDocument(page_content=long, metadata={"t": 1}, id="long")])
    hits = store.similarity_search("w3 w4 w25", k=10)
    assert len(hits) > 1 and {d.id for d in hits} == {"long"}
    assert len({d.metadata["rag_lfm"]["chunk_id"] for d in hits}) == len(hits)
    assert store.get_by_ids(["long", "none"]) == [LCDocument(page_content=long, metadata={"t": 1}, id="long")]


def test_from_texts_with_langchain_embeddings_and_reopen(tmp_path):
    fake = DeterministicFakeEmbedding(size=12)
    store = RagLfmVectorStore.from_texts(["alpha", "beta"], fake, ids=["1", "2"], path=tmp_path / "s")
    assert store.similarity_search("beta", k=1)[0].id == "2"
    assert store.embeddings is fake
    again = RagLfmVectorStore.open(tmp_path / "s", embedding=fake)
    assert again.similarity_search("alpha", k=1)[0].id == "1"
    with pytest.raises(EmbedderMismatchError, match="was built with embedder 'langchain:"):
        RagLfmVectorStore(again.kb, embedding="hash-64")
    assert isinstance(again.kb.embedder, LangChainEmbedder)
    docs = RagLfmVectorStore.from_documents([LCDocument("gamma", id="g")], RagLfmEmbeddings("hash-64"), path=tmp_path / "t")
    assert docs.get_by_ids(["g"])[0].page_content == "gamma" and docs.kb.manifest["embedder"]["name"] == "hash-64"


def test_store_over_an_existing_index_searches_every_source(kb):
    store = RagLfmVectorStore(kb)
    store.add_texts(["apples in a basket"], ids=["basket"])
    assert {d.id for d in store.similarity_search("apples", k=5)} >= {"a", "c", "basket"}
    assert [d.id for d in store.similarity_search("apples", k=5, filter={"_source": "langchain"})] == ["basket"]
    assert store.get_by_ids(["a", "basket"]) == [store.get_by_ids(["basket"])[0]]  # ids are of this store's source


async def test_async_variants_run_in_worker_threads_without_races(tmp_path):
    store = RagLfmVectorStore.create(tmp_path / "s", embedding="hash-64")
    await store.aadd_texts([f"doc {i} apples" for i in range(20)], ids=[str(i) for i in range(20)])
    searches = [store.asimilarity_search("apples", k=3) for _ in range(8)]
    writes = [store.aadd_texts([f"more {i} apples"], ids=[f"m{i}"]) for i in range(4)]
    results = await asyncio.gather(*searches, *writes)
    assert all(len(r) == 3 for r in results[:8])
    assert len(await store.aget_by_ids(["m0", "m3", "0"])) == 3
    await store.adelete(["m0"])
    assert await store.aget_by_ids(["m0"]) == []
    got = await store.amax_marginal_relevance_search("apples", k=2)
    assert len(got) == 2


# -- embeddings ---------------------------------------------------------------------------------
def test_embeddings_match_the_index_embedder(kb):
    emb = RagLfmEmbeddings(kb.embedder)
    assert np.allclose(emb.embed_documents(["red apples"])[0], kb.embedder.encode(["red apples"])[0])
    assert emb.embed_query("sky") == emb.embed_documents(["sky"])[0]
    assert emb.embed_documents([]) == []
    with pytest.raises(ConfigError, match="one str"):
        emb.embed_documents("not a list")
    with pytest.raises(ConfigError, match="backend 'tensorrt'"):
        RagLfmEmbeddings("all-MiniLM-L6-v2", backend="tensorrt")
    with pytest.raises(ConfigError, match="neither a model name"):
        RagLfmEmbeddings(3.5)


def test_translate_filter_keeps_our_language():
    flt = {"$or": [{"topic": ["A", "B"]}, {"year": {"$gte": 1900, "$neq": 1950}}], "lang": "en"}
    assert translate_filter(flt) == {"$or": [{"topic": {"$in": ["A", "B"]}}, {"year": {"$gte": 1900, "$ne": 1950}}], "lang": "en"}
    assert translate_filter({}) is None and translate_filter(None) is None


# -- the chat model, RagLfmQA and the README's chain (a tiny random Llama: the real decoding loop) ----
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from rag_lfm.readers.testing import save_tiny_llama

    # init_std 0.5: peaked distributions, so the random model writes varied text, not one repeated token
    return save_tiny_llama(tmp_path_factory.mktemp("tiny"), chat=True, init_std=0.5)


@pytest.fixture(scope="module")
def chat(tiny):
    from rag_lfm.integrations.langchain import RagLfmChatModel

    return RagLfmChatModel(model=tiny, device="cpu", max_tokens=12)


WIKI = [
    ("Claude Monet", "Claude Monet was a French painter and a founder of Impressionism.", {"title": "Claude Monet", "topic": "Arts"}),
    ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.", {"title": "Eiffel Tower", "topic": "Places"}),
    ("Mount Everest", "Mount Everest is Earth's highest mountain above sea level.", {"title": "Mount Everest", "topic": "Places"}),
    ("Nile", "The Nile is a major north-flowing river in northeastern Africa.", {"title": "Nile", "topic": "Places"}),
    ("Marie Curie", "Marie Curie was a physicist and chemist who studied radioactivity.", {"title": "Marie Curie", "topic": "Science"}),
]


@pytest.fixture(scope="module")
def wiki_kb(tmp_path_factory):
    kb = KnowledgeBase.create(tmp_path_factory.mktemp("wiki") / "kb", embedder=CountingHash())
    kb.ingest(InMemory([Document(i, t, m) for i, t, m in WIKI], name="wiki"), progress=False)
    yield kb
    kb.close()


def test_chat_model_streams_what_it_invokes_and_keeps_weights_frozen(chat):
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    class Tokens(BaseCallbackHandler):
        def __init__(self):
            self.pieces = []

        def on_llm_new_token(self, token, **kw):
            self.pieces.append(token)

    before = chat.get_reader().weights_fingerprint()
    msgs = [SystemMessage("Be brief."), HumanMessage("Which river is in Africa?")]
    full = chat.invoke(msgs)
    assert isinstance(full, AIMessage) and full.content
    assert full.usage_metadata["output_tokens"] == 12 and full.response_metadata["finish_reason"] == "length"
    assert full.usage_metadata["input_tokens"] == len(chat.get_reader()._completion_ids(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Which river is in Africa?"}], 12))
    tokens = Tokens()
    chunks = list(chat.stream(msgs, config={"callbacks": [tokens]}))
    assert "".join(c.content for c in chunks) == full.content == "".join(tokens.pieces)
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata["input_tokens"] == full.usage_metadata["input_tokens"]
    # The reader renders the same conversation through the chat template as complete() does.
    direct = chat.get_reader().complete([{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Which river is in Africa?"}], max_tokens=12)
    assert direct.text == full.content
    assert chat.invoke([HumanMessage("hi"), AIMessage("hello"), HumanMessage("more")]).content
    assert chat.get_reader().weights_fingerprint() == before


def test_chat_model_stop_and_max_tokens(chat, tiny):
    from rag_lfm.integrations.langchain import RagLfmChatModel

    text = chat.invoke("Hello").content
    stop = text[4:6]
    cut = text[: text.find(stop)]
    assert chat.invoke("Hello", stop=[stop]).content == cut
    assert RagLfmChatModel(model=tiny, device="cpu", max_tokens=12, stop=[stop]).invoke("Hello").content == cut
    assert "".join(c.content for c in chat.stream("Hello", stop=[stop])) == cut
    short = chat.invoke("Hello", max_tokens=3)
    assert short.usage_metadata["output_tokens"] == 3 and text.startswith(short.content)


def test_chat_model_errors_are_ours(chat, tiny):
    from langchain_core.messages import HumanMessage, ToolMessage

    from rag_lfm.integrations.langchain import RagLfmChatModel

    with pytest.raises(ConfigError, match="decodes greedily"):
        RagLfmChatModel(model=tiny, temperature=0.7)
    with pytest.raises(ConfigError, match="unknown argument.*max_new_tokens"):
        RagLfmChatModel(model=tiny, max_new_tokens=5)
    with pytest.raises(ConfigError, match="max_tokens=0"):
        RagLfmChatModel(model=tiny, max_tokens=0)
    with pytest.raises(ConfigError, match="'image' content block.*text only"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "look"}, {"type": "image", "url": "http://x/y.png"}])])
    with pytest.raises(ConfigError, match="ToolMessage.*no tool calling"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="t1")])
    with pytest.raises(ConfigError, match="one frozen model"):
        chat.invoke("hi", model="other")
    with pytest.raises(ConfigError, match="unknown argument.*top_p"):
        chat.invoke("hi", top_p=0.9)
    from rag_lfm.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError):
        RagLfmChatModel(model=str(tiny) + "-missing").invoke("hi")


def test_qa_keeps_the_readers_answering_and_cites_documents(wiki_kb, chat):
    from rag_lfm.integrations.langchain import RagLfmQA
    from rag_lfm.readers import ask

    reader = chat.get_reader()
    retriever = RagLfmRetriever(kb=wiki_kb, k=3)
    qa = RagLfmQA(retriever, reader=chat)
    q = "Which river is in northeastern Africa?"
    out = qa.invoke(q)
    assert set(out) == {"question", "answer", "citations", "strategy", "finish_reason"}
    # Exactly what rag-lfm's own ask() answers: copy-constrained decoding, titles scored as candidates.
    want = ask(retriever.retriever, q, reader=reader, k=3)
    assert out["answer"] == want.text and out["strategy"] == "in-context"
    passages = " ".join(d.page_content for d in out["citations"])
    titles = {d.metadata["rag_lfm"]["title"] for d in out["citations"]}
    assert out["answer"] in passages or out["answer"] in titles  # a span of the passages, or a scored title
    docs = retriever.invoke(q)
    assert [d.id for d in out["citations"]] == [d.id for d in docs][: len(out["citations"])]
    for n, d in enumerate(out["citations"], 1):
        prov = d.metadata["rag_lfm"]
        assert prov["number"] == n and wiki_kb.fetch([prov["chunk_id"]])[0].text.startswith(d.page_content.rstrip(" ."))
        assert d.metadata["topic"] in {"Arts", "Places", "Science"}  # the document's own metadata is kept
    assert qa.invoke({"question": q}, k=1)["citations"][0].id == docs[0].id
    assert qa.invoke(q, filter={"topic": "Science"})["citations"][0].id == "Marie Curie"
    assert qa.invoke(q, strategy="extractive")["answer"] == docs[0].id


def test_qa_batch_retrieves_in_one_pass(wiki_kb, chat):
    from rag_lfm.integrations.langchain import RagLfmQA

    qa = RagLfmQA(wiki_kb, reader=chat.get_reader(), k=2)
    qs = ["Who studied radioactivity?", "Which tower is in Paris?", "What is the highest mountain?"]
    wiki_kb.embedder.passes = 0
    many = qa.batch(qs)
    assert wiki_kb.embedder.passes == 1
    assert [m["answer"] for m in many] == [qa.invoke(q)["answer"] for q in qs]
    with pytest.raises(ConfigError, match="input 0 must be a non-empty question"):
        qa.invoke({"query": "x"})
    with pytest.raises(ConfigError, match="unknown reader strategy"):
        qa.invoke(qs[0], strategy="magic")


def test_readme_lcel_chain_answers_with_reachable_citations(wiki_kb, chat):
    """The README's chain, run as written (with the tiny model: the plumbing, not the answer's quality)."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnableParallel, RunnablePassthrough

    from rag_lfm.integrations.langchain import format_documents

    retriever = RagLfmRetriever(kb=wiki_kb, k=3)
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer from the numbered passages only, in one short sentence; cite the passage as [n]."),
        ("human", "{context}\n\nQuestion: {question}"),
    ])
    chain = {"context": retriever | format_documents, "question": RunnablePassthrough()} | prompt | chat | StrOutputParser()
    answer = chain.invoke("Which tower is in Paris?")
    assert isinstance(answer, str) and answer
    # The same chain keeping its sources: every [n] the answer cites is a retrieved Document,
    # and every retrieved Document leads back to its chunk in the index.
    with_sources = RunnableParallel(docs=retriever, question=RunnablePassthrough()).assign(
        answer=(lambda x: {"context": format_documents(x["docs"]), "question": x["question"]}) | prompt | chat | StrOutputParser()
    )
    out = with_sources.invoke("Which tower is in Paris?")
    assert out["answer"] == answer and out["docs"][0].id == "Eiffel Tower"
    assert check_citations(out["answer"], out["docs"], wiki_kb)


def check_citations(answer: str, docs: list, kb) -> bool:
    """Every ``[n]`` in ``answer`` names one of ``docs``, and every doc's chunk is in ``kb`` with its text."""
    import re

    cited = [int(n) for n in re.findall(r"\[(\d+)\]", answer)]
    assert all(1 <= n <= len(docs) for n in cited), (answer, len(docs))
    for d in docs:
        chunk = kb.fetch([d.metadata["rag_lfm"]["chunk_id"]])[0]
        assert chunk.text == d.page_content and chunk.doc_id == d.id
    return True


@pytest.mark.slow
def test_readme_chain_and_qa_with_smollm2(tmp_path):
    """The real packaged reader on a small index of wiki-vital leads: both ways answer, with sources."""
    pytest.importorskip("gguf")
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough

    from rag_lfm.connectors.wiki import load_wiki_vital
    from rag_lfm.integrations.langchain import RagLfmChatModel, RagLfmQA, format_documents

    titles = ["Vincent van Gogh", "Claude Monet", "Paul Cézanne", "Eiffel Tower", "Nile", "Marie Curie", "Rembrandt"]
    leads = {e["title"]: e for e in load_wiki_vital()}
    kb = KnowledgeBase.create(tmp_path / "kb", embedder="all-MiniLM-L6-v2", device="cpu")
    kb.ingest(InMemory([Document(t, leads[t]["extract"], {"title": t}) for t in titles], name="wiki"), progress=False)
    retriever = RagLfmRetriever(kb=kb, k=3)
    model = RagLfmChatModel(max_tokens=40, device="cpu")
    prompt = ChatPromptTemplate.from_messages([
        ("system", "Answer from the numbered passages only, in one short sentence; cite the passage as [n]."),
        ("human", "{context}\n\nQuestion: {question}"),
    ])
    chain = {"context": retriever | format_documents, "question": RunnablePassthrough()} | prompt | model | StrOutputParser()
    q = "Who discovered polonium and radium?"
    answer = chain.invoke(q)
    assert "Curie" in answer
    assert check_citations(answer, retriever.invoke(q), kb)
    out = RagLfmQA(retriever, reader=model).invoke("Which Dutch painter cut off part of his own ear?")
    assert out["answer"] == "Vincent van Gogh" and "Vincent van Gogh" in [d.id for d in out["citations"]]


def test_chat_model_over_llama_cpp_reader():
    """The same chat model over the llama.cpp reader (the packaged GGUF), where llama-cpp-python is installed."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (extra 'llamacpp')")
    from rag_lfm.integrations.langchain import RagLfmChatModel

    chat = RagLfmChatModel(reader="llamacpp", max_tokens=8)
    msg = chat.invoke("Name the capital of France.")
    assert msg.content and msg.usage_metadata["output_tokens"] <= 8
    streamed = list(chat.stream("Name the capital of France."))
    assert "".join(c.content for c in streamed) == msg.content and streamed[-1].usage_metadata["input_tokens"] > 0
    with pytest.raises(ConfigError, match="unknown reader 'vllm'"):
        RagLfmChatModel(reader="vllm")
