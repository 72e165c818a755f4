from rag_lfm import Document, InMemory, Skipped
from rag_lfm.connectors import make_connector


def test_in_memory_takes_documents_and_tuples_and_reports_bad_items():
    src = InMemory([Document("a", "x", {"k": 1}), ("b", "y"), ("c", "z", {"k": 2}), 42], name="mem")
    items = list(src.iter_documents())
    assert [i.id for i in items[:3]] == ["a", "b", "c"]
    assert items[1].metadata == {} and items[2].metadata == {"k": 2}
    assert isinstance(items[3], Skipped) and "got int" in items[3].reason
    assert (src.source_id, src.complete, len(src)) == ("mem", True, 4)
    assert make_connector("memory", items=[("d", "w")], name="m").source_id == "m"
