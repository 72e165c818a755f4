"""Memory vs recall vs latency: measure index families on your collection and pick one for a budget.

Example:
    >>> result = kb.tune(max_memory="200MB", min_recall=0.95)      # doctest: +SKIP
    >>> print(result.table()); result.plot("pareto.png")          # doctest: +SKIP
"""

from rag_lfm.tradeoffs.memory import memory_report, parse_bytes
from rag_lfm.tradeoffs.sources import ArraySource, KBSource, SyntheticClustered, VectorSource, exact_topk
from rag_lfm.tradeoffs.tuner import DEFAULT_FAMILIES, Trial, TuneResult, choose, tune, tune_kb

__all__ = [
    "tune", "tune_kb", "choose", "Trial", "TuneResult", "DEFAULT_FAMILIES", "memory_report", "parse_bytes",
    "VectorSource", "KBSource", "ArraySource", "SyntheticClustered", "exact_topk",
]
