"""rag-lfm's :class:`~rag_lfm.retrieval.Retriever` as a LangChain retriever.

Everything the rag-lfm retriever does is an argument here: dense, BM25 or hybrid
retrieval, a rescoring metric, RRF or weighted fusion, a cross-encoder reranker, MMR and
a metadata filter. Per call, ``invoke(query, k=..., filter=...)`` overrides ``k`` and
narrows the filter. ``batch`` (and ``abatch``) embeds all queries in one pass and
searches them as one batch (LangChain's default ``batch`` calls ``invoke`` once per
query), with one callback run per query as ``invoke`` would report.

Each Document is a chunk: ``page_content`` its text, ``id`` the id its document was
ingested with, ``metadata`` the document's own metadata untouched plus rag-lfm's facts
under the one reserved key ``metadata["rag_lfm"]`` = ``{score, chunk_id, doc_id,
source_id, start, end}`` (``provenance=False`` leaves it out).

Example:
    >>> from rag_lfm import KnowledgeBase
    >>> retriever = RagLfmRetriever(kb=KnowledgeBase.open("indexes/wiki-vital"), k=4, method="hybrid")  # doctest: +SKIP
    >>> docs = retriever.invoke("French Impressionist painter", k=2, filter={"topic": "Arts"})      # doctest: +SKIP
    >>> docs[0].id, docs[0].metadata["rag_lfm"]["score"]                                              # doctest: +SKIP
    ('Claude Monet', 0.0325)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForRetrieverRun,
        CallbackManager,
        CallbackManagerForRetrieverRun,
    )
    from langchain_core.documents import Document as LCDocument
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableConfig
    from langchain_core.runnables.config import get_config_list, run_in_executor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the LangChain plug-in needs langchain-core: pip install 'rag-lfm[langchain]'") from exc

from pydantic import ConfigDict, PrivateAttr

from rag_lfm.errors import ConfigError
from rag_lfm.integrations.langchain._common import (
    as_kb,
    check_k,
    check_unknown,
    hit_to_document,
    readable_errors,
    translate_filter,
)
from rag_lfm.retrieval import Retriever

_CALL_KWARGS = ("k", "filter")
# Keys of the rag-lfm Retriever that pass straight through (validated by it).
_RETRIEVER_KEYS = (
    "method", "metric", "pool", "pool_factor", "fusion", "weights", "rrf_k", "normalize", "depth",
    "bm25_settings", "reranker", "rerank_top", "mmr_lambda", "mmr_pool", "vector_cache",
)


class RagLfmRetriever(BaseRetriever):
    """Retrieve from a :class:`~rag_lfm.KnowledgeBase` inside a LangChain chain.

    Args:
        kb: an open KnowledgeBase, or an index path (opened here).
        k: Documents per query (``invoke(q, k=...)`` overrides it for one call).
        filter: a metadata filter applied to every query (rag-lfm's language, plus LangChain
            FAISS's plain lists and ``$neq``); a filter given to ``invoke`` applies as well (AND).
        method: None (default): the index's own retriever, as ``kb.search`` runs it (the recorded
            hybrid dense + BM25 unless the index was built dense), the other options below given
            explicitly applying on top of it; or ``"dense"``, ``"bm25"`` or ``"hybrid"``, built
            from the options below with their defaults.
        metric, pool, pool_factor, fusion, weights, rrf_k, normalize, depth, bm25_settings,
        reranker, rerank_top, mmr_lambda, mmr_pool, vector_cache: as in
            :class:`rag_lfm.retrieval.Retriever`.
        provenance: add ``metadata["rag_lfm"]`` (score, chunk id, doc id, source, offsets).

    Bad arguments (an unknown one, a wrong type, a path that holds no index) raise rag-lfm
    errors naming the argument and the fix, not a pydantic validation trace.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kb: Any
    k: int = 4
    filter: dict[str, Any] | None = None
    method: str | None = None
    metric: Any = None
    pool: int | None = None
    pool_factor: int = 10
    fusion: str = "rrf"
    weights: list[float] | None = None
    rrf_k: float = 60.0
    normalize: str = "minmax"
    depth: int | None = None
    bm25_settings: Any = None
    reranker: Any = None
    rerank_top: int = 20
    mmr_lambda: float | None = None
    mmr_pool: int = 20
    vector_cache: str = "auto"
    provenance: bool = True

    _inner: Retriever = PrivateAttr()

    def __init__(self, kb: Any = None, **data: Any) -> None:
        # Checked here, before pydantic, so a mistake reads as a rag-lfm error that names it.
        valid = set(type(self).model_fields) - {"kb"}
        check_unknown(data, valid, "RagLfmRetriever")
        kb = as_kb(kb)
        check_k(data.get("k", 4))
        if data.get("filter") is not None:
            data["filter"] = translate_filter(data["filter"])
        if "weights" in data and data["weights"] is not None:
            data["weights"] = [float(w) for w in data["weights"]]
        for name in ("method", "fusion", "normalize", "vector_cache"):
            if name in data and not isinstance(data[name], str) and not (name == "method" and data[name] is None):
                raise ConfigError(f"{name}={data[name]!r} must be a str")
        given = {key: data[key] for key in _RETRIEVER_KEYS if key in data and key != "method"}
        super().__init__(kb=kb, **data)
        if self.method is None:
            # What kb.search, `rag-lfm search` and `ask` run: the index's recorded retriever (issue 9).
            self._inner = Retriever.from_config(kb, kb.manifest.get("retriever"), **given)
        else:
            self._inner = Retriever(kb, **{key: getattr(self, key) for key in _RETRIEVER_KEYS})

    @property
    def retriever(self) -> Retriever:
        """The rag-lfm Retriever underneath (what :class:`RagLfmQA` retrieves with)."""
        return self._inner

    # -- one query ------------------------------------------------------------------------
    def _call_options(self, kwargs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
        kwargs = {key: v for key, v in kwargs.items() if key != "verbose"}  # LangChain passes it along
        check_unknown(kwargs, _CALL_KWARGS, "RagLfmRetriever.invoke()")
        k = check_k(kwargs.get("k", self.k))
        extra = translate_filter(kwargs.get("filter"))
        if extra and self.filter:
            flt: dict[str, Any] | None = {"$and": [self.filter, extra]}
        else:
            flt = extra or self.filter
        return k, flt

    def _search(self, queries: list[str], kwargs: dict[str, Any]) -> list[list[LCDocument]]:
        k, flt = self._call_options(kwargs)
        for i, q in enumerate(queries):
            if not isinstance(q, str):
                raise ConfigError(f"query {i} is {type(q).__name__}, not str: {q!r}")
        with readable_errors(self.kb):
            results = self._inner.search_batch(list(queries), k, filter=flt)
        return [[hit_to_document(h, with_provenance=self.provenance) for h in hits] for hits in results]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        return self._search([query], kwargs)[0]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[LCDocument]:
        # A worker thread: embedding, FAISS and SQL release the GIL; the event loop stays free.
        return (await run_in_executor(None, self._search, [query], kwargs))[0]

    # -- many queries -----------------------------------------------------------------------
    def batch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[list[LCDocument]] | list[Any]:
        """All queries in one embedding pass and one index search; one retriever run per query."""
        if not inputs:
            return []
        configs = get_config_list(config, len(inputs))
        runs = []
        for query, cfg in zip(inputs, configs):
            manager = CallbackManager.configure(
                cfg.get("callbacks"),
                None,
                verbose=bool(kwargs.get("verbose", False)),
                inheritable_tags=cfg.get("tags"),
                local_tags=self.tags,
                inheritable_metadata={**(cfg.get("metadata") or {}), **self._get_ls_params(**kwargs)},
                local_metadata=self.metadata,
            )
            runs.append(manager.on_retriever_start(None, query, name=cfg.get("run_name") or self.get_name(), run_id=cfg.pop("run_id", None)))
        try:
            results = self._search(list(inputs), kwargs)
        except Exception as exc:
            for run in runs:
                run.on_retriever_error(exc)
            if return_exceptions:
                return [exc for _ in inputs]
            raise
        for run, docs in zip(runs, results):
            run.on_retriever_end(docs)
        return results

    async def abatch(
        self,
        inputs: list[str],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[list[LCDocument]] | list[Any]:
        """:meth:`batch` in a worker thread (one embedding pass for all queries)."""
        return await run_in_executor(None, self.batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def batch_search(self, queries: Sequence[str], **kwargs: Any) -> list[list[LCDocument]]:
        """Many queries in one pass, without callbacks (what :meth:`batch` runs)."""
        return self._search(list(queries), kwargs)
