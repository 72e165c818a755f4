"""rag-lfm: reuse a frozen foundation model and bring it knowledge through retrieval.

Example:
    >>> import rag_lfm
    >>> kb = rag_lfm.KnowledgeBase.create("indexes/notes")          # doctest: +SKIP
    >>> kb.ingest(rag_lfm.Files("notes/"))                            # doctest: +SKIP
    >>> kb.search("what is the capital of France?", k=5)               # doctest: +SKIP
"""

from rag_lfm.connectors import Connector, Files, InMemory, WikiVital, register_connector
from rag_lfm.embedders import HashEmbedder, SentenceTransformerEmbedder
from rag_lfm.errors import RagLfmError
from rag_lfm.knowledge_base import IngestReport, KnowledgeBase
from rag_lfm.types import Chunk, Document, Hit, Skipped

__version__ = "0.1.0"
__all__ = [
    "KnowledgeBase", "IngestReport", "Files", "InMemory", "WikiVital", "Connector", "register_connector",
    "SentenceTransformerEmbedder", "HashEmbedder", "Document", "Chunk", "Hit", "Skipped", "RagLfmError",
]
