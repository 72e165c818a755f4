"""Connectors: sources -> Documents. Each module registers its connector name for TOML specs.

Registered names: ``files``, ``memory``, ``wiki-vital``, ``sql``, ``web``, ``pdf``, ``langchain``. Their
heavy dependencies (httpx, trafilatura, pypdf, langchain) are imported when a connector runs.
"""

from rag_lfm.connectors.base import Connector, connector_names, make_connector, register_connector
from rag_lfm.connectors.files import Files
from rag_lfm.connectors.langchain import LangChainConnector
from rag_lfm.connectors.memory import InMemory
from rag_lfm.connectors.pdf import PdfConnector
from rag_lfm.connectors.sql import SqlConnector
from rag_lfm.connectors.web import WebConnector
from rag_lfm.connectors.wiki import WikiVital, load_wiki_vital

__all__ = [
    "Connector", "register_connector", "make_connector", "connector_names",
    "Files", "InMemory", "WikiVital", "load_wiki_vital", "SqlConnector", "WebConnector", "PdfConnector", "LangChainConnector",
]
