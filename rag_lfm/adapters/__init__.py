"""Adapters around frozen models: the foundation models stay as they are, small maps learn the task.

- :mod:`rag_lfm.adapters.query`: a query adapter over the frozen embedder (linear near the identity,
  or a residual low-rank MLP), trained against the index's stored vectors (never re-embedded).
- :mod:`rag_lfm.adapters.store`: adapters saved inside an index directory (side files bound to the
  commit record), listed, activated, removed; applied by ``KnowledgeBase.search`` and every Retriever.
- :mod:`rag_lfm.adapters.tuning`: (query, doc id) pairs from a JSONL file or derived from the corpus,
  and :func:`tune_query_adapter`, what ``rag-lfm tune query-adapter`` runs.
- :mod:`rag_lfm.adapters.reader`: LoRA and prompt tuning of the frozen reader through PEFT
  (``pip install "rag-lfm[adapters]"``), what ``rag-lfm tune reader`` runs.

Example:
    >>> from rag_lfm.adapters import tune_query_adapter                  # doctest: +SKIP
    >>> tune_query_adapter(kb, name="wiki", kind="mlp", rank=64)         # doctest: +SKIP
    >>> kb.search("French Impressionist painter")                        # the adapter applied  # doctest: +SKIP
"""

from rag_lfm.adapters.query import KINDS, QueryAdapter, fit_query_adapter, train_contrastive
from rag_lfm.adapters.store import (
    activate_query_adapter,
    list_query_adapters,
    load_query_adapter,
    remove_query_adapter,
    save_query_adapter,
)
from rag_lfm.adapters.tuning import Pair, derive_pairs, load_pairs, tune_query_adapter

__all__ = [
    "KINDS",
    "QueryAdapter",
    "fit_query_adapter",
    "train_contrastive",
    "save_query_adapter",
    "load_query_adapter",
    "list_query_adapters",
    "remove_query_adapter",
    "activate_query_adapter",
    "Pair",
    "load_pairs",
    "derive_pairs",
    "tune_query_adapter",
]
