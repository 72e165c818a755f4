"""LangChain connector: any LangChain ``BaseLoader`` becomes a rag-lfm source.

So the hundreds of document loaders of the LangChain ecosystem (``langchain_community``
and the partner packages) feed a rag-lfm index. LangChain is an optional extra: it is
imported only when this connector is used (``pip install 'rag-lfm[langchain]'``).

Document ids: LangChain documents rarely carry a stable id, so the id is the document's
own ``id`` when set, else built from the metadata keys in ``id_keys`` (by default
``source``, ``row`` and ``page``: a file path plus a CSV row or a PDF page), else the
position in the loader's output. Two documents that would get the same id are told apart
by ``#<n>`` in order of appearance, which is stable as long as the loader's order is.

Example:
    >>> from langchain_community.document_loaders import TextLoader     # doctest: +SKIP
    >>> conn = LangChainConnector(loader=TextLoader("notes.txt"), name="notes")  # doctest: +SKIP
    >>> kb.sync(conn)                                                  # doctest: +SKIP

In a TOML spec the loader is named by its import path::

    [source]
    type = "langchain"
    name = "faq"
    loader = "langchain_community.document_loaders.CSVLoader"
    loader_kwargs = { file_path = "data/faq.csv" }
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from typing import Any

from rag_lfm.connectors.base import register_connector
from rag_lfm.errors import ConfigError, SourceError
from rag_lfm.types import Document, Skipped

_INSTALL = "pip install 'rag-lfm[langchain]' (langchain-core; most loaders also need langchain-community)"


def _base_loader_class():
    try:
        from langchain_core.document_loaders import BaseLoader
    except ImportError as exc:
        raise ImportError(f"the langchain connector needs langchain-core; run: {_INSTALL}") from exc
    return BaseLoader


def _json_safe(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _import_loader(path: str):
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise ConfigError(
            f"LangChainConnector loader={path!r} is not an import path; "
            "e.g. 'langchain_community.document_loaders.TextLoader'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"LangChainConnector loader={path!r}: module {module_name!r} can't be imported ({exc}); {_INSTALL}"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(
            f"LangChainConnector loader={path!r}: {module_name!r} has no {attr!r}; check the class name"
        ) from None


class LangChainConnector:
    """Documents of a LangChain ``BaseLoader`` as rag-lfm Documents.

    Args:
        loader: a ``BaseLoader`` instance, or the import path of a loader class
            (then built with ``loader_kwargs``), e.g. ``"langchain_community.document_loaders.CSVLoader"``.
        loader_kwargs: keyword arguments of the loader class (only with an import path).
        name: the source id. Default: ``"langchain:<loader class>-<digest>"``, the digest
            taken over the loader's simple attributes (file path, URL...), so it is stable.
        id_keys: metadata keys joined into the document id when the loader sets no id.
        complete: whether the loader yields the whole source each time (True for file,
            CSV, directory loaders); set False for loaders that return only recent items,
            so a sync does not delete the rest.

    Attributes:
        source_id, complete, loader (the BaseLoader).
    """

    def __init__(
        self,
        *,
        loader: Any,
        loader_kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        id_keys: list[str] | None = None,
        complete: bool = True,
    ) -> None:
        base = _base_loader_class()
        self._loader_path = loader if isinstance(loader, str) else None
        self._loader_kwargs = dict(loader_kwargs or {})
        if isinstance(loader, str):
            cls = _import_loader(loader)
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ConfigError(
                    f"LangChainConnector loader={loader!r} is not a langchain_core BaseLoader subclass"
                )
            try:
                loader = cls(**(loader_kwargs or {}))
            except TypeError as exc:
                raise ConfigError(f"LangChainConnector loader_kwargs={loader_kwargs!r} don't fit {cls.__name__}: {exc}") from exc
        elif loader_kwargs:
            raise ConfigError(
                f"LangChainConnector loader_kwargs={loader_kwargs!r} only apply when loader= is an import path"
            )
        if not isinstance(loader, base):
            raise ConfigError(
                f"LangChainConnector loader={loader!r} is a {type(loader).__name__}, not a langchain_core "
                "BaseLoader; pass a loader instance or its import path"
            )
        self.loader = loader
        self.id_keys = list(id_keys) if id_keys is not None else ["source", "row", "page"]
        self.complete = complete
        if name is None:
            simple = {
                k: str(v) for k, v in sorted(vars(loader).items())
                if not k.startswith("_") and (isinstance(v, (str, int, float, bool)) or hasattr(v, "__fspath__"))
            }
            digest = hashlib.sha256(json.dumps(simple, sort_keys=True).encode()).hexdigest()[:10]
            name = f"langchain:{type(loader).__name__}-{digest}"
        self.source_id = name

    def describe(self) -> dict[str, Any] | None:
        """The spec that rebuilds this connector, when the loader was given by import path
        (a loader object can't be written to a spec: `rag-lfm sync` then skips this source)."""
        if self._loader_path is None:
            return None
        return {"type": "langchain", "loader": self._loader_path, "loader_kwargs": _json_safe(self._loader_kwargs),
                "name": self.source_id, "id_keys": self.id_keys, "complete": self.complete}

    def __repr__(self) -> str:
        return f"LangChainConnector(source_id={self.source_id!r}, loader={type(self.loader).__name__})"

    def _doc_id(self, lc_doc: Any, ordinal: int) -> str:
        if getattr(lc_doc, "id", None):
            return str(lc_doc.id)
        parts = [f"{k}={lc_doc.metadata[k]}" for k in self.id_keys if k in (lc_doc.metadata or {})]
        return "|".join(parts) if parts else str(ordinal)

    def iter_documents(self) -> Iterator[Document | Skipped]:
        """Yield the loader's documents (lazily when the loader supports ``lazy_load``).

        Raises:
            SourceError: the loader itself failed (missing file, unreachable service);
                the message names the loader and the original error.
        """
        counts: dict[str, int] = {}
        ordinal = 0
        try:
            for lc_doc in self.loader.lazy_load():
                ordinal += 1
                base_id = self._doc_id(lc_doc, ordinal)
                n = counts.get(base_id, 0)
                counts[base_id] = n + 1
                doc_id = base_id if n == 0 else f"{base_id}#{n + 1}"
                text = lc_doc.page_content or ""
                if not text.strip():
                    yield Skipped(doc_id, "the loader returned a document with empty page_content")
                    continue
                yield Document(id=doc_id, text=text, metadata=_json_safe(dict(lc_doc.metadata or {})))
        except (ConfigError, SourceError):
            raise
        except Exception as exc:  # noqa: BLE001 - loaders raise anything (RuntimeError, OSError, HTTP errors...)
            raise SourceError(
                f"LangChain loader {type(self.loader).__name__} of source {self.source_id!r} failed after "
                f"{ordinal} documents: {type(exc).__name__}: {exc}"
            ) from exc


register_connector("langchain", LangChainConnector)
