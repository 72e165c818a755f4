from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import Document as LCDocument  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402

from rag_lfm import Document, HashEmbedder, KnowledgeBase  # noqa: E402
from rag_lfm.integrations.langchain import RagLfmRetriever  # noqa: E402


class Src:
    source_id, complete = "src", True

    def iter_documents(self):
        yield Document("a", "red apples grow on trees", {"kind": "fruit"})
        yield Document("b", "blue sky and white clouds", {"kind": "weather"})
        yield Document("c", "green apples are sour", {"kind": "fruit"})


def test_retriever_is_a_langchain_runnable(tmp_path):
    kb = KnowledgeBase.create(tmp_path / "i", embedder=HashEmbedder(64))
    kb.ingest(Src(), progress=False)
    r = RagLfmRetriever(kb=kb, k=2)
    assert isinstance(r, BaseRetriever)
    docs = r.invoke("apples")
    assert all(isinstance(d, LCDocument) for d in docs)
    assert {d.metadata["doc_id"] for d in docs} == {"a", "c"}
    assert docs[0].metadata["score"] >= docs[1].metadata["score"]
    weather = RagLfmRetriever(kb=kb, k=3, filter={"kind": "weather"}).invoke("apples")
    assert [d.metadata["doc_id"] for d in weather] == ["b"]
    assert [[d.metadata["doc_id"] for d in ds][:1] for ds in r.batch_search(["sky clouds", "sour"])] == [["b"], ["c"]]
