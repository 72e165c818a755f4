"""Connectors: sources -> Documents. Each module registers its connector name for TOML specs."""

from rag_lfm.connectors.base import Connector, connector_names, make_connector, register_connector
from rag_lfm.connectors.files import Files
from rag_lfm.connectors.wiki import WikiVital, load_wiki_vital

__all__ = ["Connector", "register_connector", "make_connector", "connector_names", "Files", "WikiVital", "load_wiki_vital"]
