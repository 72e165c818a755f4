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


# -- Chat model -----------------------------------------------------------------------------------
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402

from rag_lfm.integrations.langchain import RagLfmChatModel  # noqa: E402

_TINY: dict[str, str] = {}


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A randomly initialised 2-layer Llama with a chat template, saved once for the chat-model suites."""
    from rag_lfm.readers.testing import save_tiny_llama

    _TINY["path"] = save_tiny_llama(tmp_path_factory.mktemp("tiny-chat"), chat=True)
    yield _TINY["path"]


class _ChatSuite:
    """What both chat-model suites share: the model, and the features a 135M local model has not."""

    @pytest.fixture(autouse=True)
    def _tiny(self, tiny_chat_model):
        pass  # the suites read the folder through chat_model_params

    @property
    def chat_model_class(self):
        return RagLfmChatModel

    @property
    def chat_model_params(self) -> dict:
        return {"model": _TINY["path"], "device": "cpu"}

    @property
    def has_tool_calling(self) -> bool:
        return False  # no tool-call format, no tool-trained weights: a 135M reader model cannot call tools

    @property
    def has_tool_choice(self) -> bool:
        return False  # follows from no tool calling

    @property
    def has_structured_output(self) -> bool:
        return False  # no JSON mode or schema-constrained decoding in the reader (greedy text only)

    @property
    def supports_json_mode(self) -> bool:
        return False  # as above: nothing constrains the output to JSON

    @property
    def supports_image_inputs(self) -> bool:
        return False  # a text-only language model: image blocks are refused with a clear error

    @property
    def supports_image_urls(self) -> bool:
        return False  # text-only, and offline: nothing to fetch a URL with

    @property
    def supports_pdf_inputs(self) -> bool:
        return False  # text-only (rag-lfm reads PDFs through PdfConnector into an index instead)

    @property
    def supports_audio_inputs(self) -> bool:
        return False  # text-only

    @property
    def supports_video_inputs(self) -> bool:
        return False  # text-only

    @property
    def supports_image_tool_message(self) -> bool:
        return False  # no tools, no images

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False  # no tools, no PDFs

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False  # Anthropic-format content blocks (tool_use, images) are not text

    @property
    def supports_model_override(self) -> bool:
        return False  # one instance holds one frozen model; a per-call model= is refused with a clear error

    @property
    def returns_usage_metadata(self) -> bool:
        return True  # prompt and completion token counts come from the reader

    @property
    def enable_vcr_tests(self) -> bool:
        return False  # VCR records HTTP calls; a local model makes none


class TestRagLfmChatModelUnit(_ChatSuite, ChatModelUnitTests):
    pass


class TestRagLfmChatModelIntegration(_ChatSuite, ChatModelIntegrationTests):
    @property
    def standard_chat_model_params(self) -> dict:
        # Short replies keep the suite fast on CPU (random weights say nothing worth 256 tokens);
        # the tests that build the model from chat_model_params alone still run the default.
        return {"max_tokens": 16}
