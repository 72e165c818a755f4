"""Training data for query adapters and the end-to-end ``tune`` over an index.

Pairs are ``(query, doc id)``: a JSONL file of the user's own, one per line::

    {"query": "French Impressionist painter", "doc_id": "Claude Monet"}     # optional "source_id"

or derived from the index itself without any model writing text (:func:`derive_pairs`):

- ``description``: a document's ``description`` metadata ("French Impressionist painter"), the
  short query form of the built-in wiki-vital task;
- ``lead``: the predicate of the document's first sentence, after its subject and verb
  ("Claude Monet was a French painter and founder of impressionist painting, ..." ->
  "a French painter and founder of impressionist painting"): a description-like query that
  every encyclopaedic lead has.

:func:`tune_query_adapter` encodes the queries, takes each pair's positive as the best-matching
chunk of its document among the index's STORED vectors (nothing is re-embedded), holds out a
fraction of the documents for early stopping, trains, and saves the adapter into the index.

Example:
    >>> fragment_of("Claude Monet was a French painter and founder of impressionist painting, who ...", "Claude Monet")
    'a French painter and founder of impressionist painting'
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.adapters.query import KINDS, QueryAdapter, check_kind, check_rank, fit_query_adapter, split_by_document
from rag_lfm.errors import ConfigError

__all__ = ["Pair", "load_pairs", "derive_pairs", "fragment_of", "tune_query_adapter", "FORMS", "IndexVectors"]

FORMS = ("description", "lead")
_VERB = re.compile(r"\b(?:is|was|are|were|has been|had been|refers to|became)\s+", re.IGNORECASE)
_SENT = re.compile(r"(?<=[a-z0-9\)\]][.!?])\s+(?=[A-Z])")
_PAREN = re.compile(r"\s*\([^()]*\)")


@dataclass(frozen=True)
class Pair:
    """One training pair: a query and the id of its relevant document (``source_id`` optional)."""

    query: str
    doc_id: str
    source_id: str | None = None
    form: str = "user"


def load_pairs(path: str | Path) -> list[Pair]:
    """Read ``{"query", "doc_id"[, "source_id"]}`` lines (``"question"`` is accepted for ``"query"``).

    Raises:
        ConfigError: a missing or empty file, a bad line (named by number).
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"pairs file {str(p)!r} does not exist; pass a JSONL file of {{\"query\": ..., \"doc_id\": ...}} lines")
    out: list[Pair] = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}:{n} is not valid JSON ({exc.msg})") from None
        q = row.get("query", row.get("question")) if isinstance(row, dict) else None
        d = row.get("doc_id") if isinstance(row, dict) else None
        if not isinstance(q, str) or not q.strip() or not isinstance(d, (str, int)) or not str(d):
            raise ConfigError(f"{p}:{n} needs a non-empty 'query' string and a 'doc_id'; got {line[:120]!r}")
        sid = row.get("source_id")
        out.append(Pair(q.strip(), str(d), str(sid) if sid is not None else None))
    if not out:
        raise ConfigError(f"pairs file {str(p)!r} is empty; it needs at least 2 lines of {{\"query\": ..., \"doc_id\": ...}}")
    return out


def first_sentence(text: str) -> str:
    """The first sentence of ``text`` (split at ``. `` before a capital letter)."""
    text = " ".join(str(text).split())
    return _SENT.split(text, maxsplit=1)[0] if text else ""


def fragment_of(text: str, title: str = "", *, max_words: int = 12) -> str:
    """The description-like predicate of a lead's first sentence, or "" when it has none.

    Parentheses (dates, pronunciations) go; then the words after the first "is/was/are/were"
    up to the first comma or semicolon, at most ``max_words`` words, without a trailing
    period. A fragment that still names the title is dropped (the query would give it away).
    """
    s = _PAREN.sub("", first_sentence(text))
    m = _VERB.search(s)
    if m is None or m.start() > 160:
        return ""
    frag = re.split(r"[,;:]| which | who | that ", s[m.end():], maxsplit=1)[0].strip().rstrip(".").strip()
    words = frag.split()[:max_words]
    frag = " ".join(words)
    if len(words) < 3:
        return ""
    if title and title.lower() in frag.lower():
        return ""
    return frag


def derive_pairs(
    kb: Any, forms: Sequence[str] = FORMS, *, docs: Iterable[str] | None = None, min_words: int = 3
) -> list[Pair]:
    """Pairs derived from the index's own documents (see the module docstring), no model involved.

    Args:
        forms: any of ``"description"`` (metadata) and ``"lead"`` (first-sentence predicate).
        docs: only these document ids (e.g. the training split); None: every document.
        min_words: shortest query kept.
    """
    bad = [f for f in forms if f not in FORMS]
    if bad or not forms:
        raise ConfigError(f"query forms {list(forms)!r} are not valid; use any of {', '.join(FORMS)}")
    keep = set(docs) if docs is not None else None
    seen: set[tuple[str, str]] = set()
    out: list[Pair] = []
    for batch in kb.iter_chunks(5000):
        for h in sorted(batch, key=lambda x: (x.source_id, x.doc_id, x.start)):
            key = (h.source_id, h.doc_id)
            if key in seen or (keep is not None and h.doc_id not in keep):
                continue
            seen.add(key)  # the first chunk (lowest start) holds the lead
            meta = h.metadata or {}
            title = str(meta.get("title") or h.doc_id)
            if "description" in forms:
                desc = " ".join(str(meta.get("description") or "").split())
                if len(desc.split()) >= min_words and title.lower() not in desc.lower():
                    out.append(Pair(desc, h.doc_id, h.source_id, "description"))
            if "lead" in forms and h.start == 0:
                frag = fragment_of(h.text, title)
                if len(frag.split()) >= min_words:
                    out.append(Pair(frag, h.doc_id, h.source_id, "lead"))
    return out


class IndexVectors:
    """An index's stored vectors with each row's document: the frozen side of adapter training.

    Attributes:
        ids: chunk ids (int64), ``vectors``: float32 ``[N, d]``, ``doc``: document number per row,
        ``keys``: ``(source_id, doc_id)`` per document number.
    """

    def __init__(self, kb: Any) -> None:
        from rag_lfm.retrieval.dense import VectorCache

        cache = VectorCache.from_kb(kb, dtype="float32")
        self.ids, self.vectors = cache.ids, np.ascontiguousarray(cache.vectors, dtype=np.float32)
        row_of = {int(c): i for i, c in enumerate(self.ids.tolist())}
        self.keys: list[tuple[str, str]] = []
        number: dict[tuple[str, str], int] = {}
        self.doc = np.full(len(self.ids), -1, dtype=np.int64)
        for batch in kb.iter_chunks(5000):
            for h in batch:
                key = (h.source_id, h.doc_id)
                if key not in number:
                    number[key] = len(self.keys)
                    self.keys.append(key)
                r = row_of.get(int(h.chunk_id))
                if r is not None:
                    self.doc[r] = number[key]
        self.by_id: dict[str, list[int]] = {}
        for i, (_, d) in enumerate(self.keys):
            self.by_id.setdefault(d, []).append(i)
        self.number = number

    def doc_numbers(self, pairs: Sequence[Pair]) -> np.ndarray:
        """The document number of each pair; unknown or ambiguous documents raise, naming them."""
        out = np.empty(len(pairs), dtype=np.int64)
        unknown: list[str] = []
        for i, p in enumerate(pairs):
            if p.source_id is not None:
                n = self.number.get((p.source_id, p.doc_id))
                cands = [] if n is None else [n]
            else:
                cands = self.by_id.get(p.doc_id, [])
            if len(cands) != 1:
                if len(cands) > 1:
                    raise ConfigError(f"pair {i + 1}: doc_id {p.doc_id!r} exists in several sources "
                                      f"({', '.join(self.keys[c][0] for c in cands)}); add \"source_id\" to the pair")
                unknown.append(p.doc_id)
                out[i] = -1
            else:
                out[i] = cands[0]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise ConfigError(f"{len(unknown)} pair(s) name documents the index does not hold: {shown}"
                              f"{' ...' if len(unknown) > 5 else ''}; use the doc ids shown by `rag-lfm search` "
                              f"(the index holds {len(self.keys)} documents)")
        return out

    def best_rows(self, qvecs: np.ndarray, docs: np.ndarray) -> np.ndarray:
        """Per query, the row of its document that scores highest (a long document's best chunk)."""
        rows_of: dict[int, list[int]] = {}
        for r, d in enumerate(self.doc.tolist()):
            rows_of.setdefault(d, []).append(r)
        out = np.empty(len(docs), dtype=np.int64)
        for i, d in enumerate(docs.tolist()):
            rows = rows_of[d]
            out[i] = rows[0] if len(rows) == 1 else rows[int(np.argmax(self.vectors[rows] @ qvecs[i]))]
        return out


def tune_query_adapter(
    kb: Any,
    pairs: Sequence[Pair] | None = None,
    *,
    name: str | None = "default",
    kind: str = "mlp",
    rank: int = 64,
    forms: Sequence[str] | None = None,
    valid_fraction: float = 0.1,
    valid_pairs: Sequence[Pair] | None = None,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 1e-3,
    reg: float = 1e-3,
    temperature: float = 0.05,
    hard_negatives: int = 8,
    hard_skip: int = 0,
    remine_every: int = 0,
    patience: int = 3,
    seed: int = 0,
    activate: bool = True,
    replace: bool = False,
    progress: bool = True,
    vectors: IndexVectors | None = None,
    query_vectors: np.ndarray | None = None,
) -> QueryAdapter:
    """Train a query adapter for ``kb`` and (with ``name``) save it into the index, active.

    Args:
        pairs: training pairs (None: :func:`derive_pairs` with ``forms``; ``forms=None``: the documents'
            descriptions when the corpus has them, else lead fragments -- on wiki-vital adding lead fragments
            to the descriptions lowered dev R@1, benchmarks/RESULTS.md).
        valid_fraction: documents held out for early stopping (by a hash of the doc id), unless
            ``valid_pairs`` are given.
        vectors / query_vectors: precomputed :class:`IndexVectors` and query embeddings (benchmarks
            that train several adapters encode once).
        Others: see :func:`rag_lfm.adapters.query.fit_query_adapter`.

    Raises:
        ConfigError: no or too few pairs, unknown doc ids, a rank out of range, a bad kind.
    """
    from rag_lfm.embedders import embedder_config

    check_kind(kind)
    if kind == "mlp":
        check_rank(rank, kb.dim)
    if len(kb) == 0:
        raise ConfigError(f"index {kb.path} is empty: ingest documents before tuning a query adapter")
    t0 = time.perf_counter()
    if pairs is None:
        if forms is None:
            pairs = derive_pairs(kb, ("description",)) or derive_pairs(kb, ("lead",))
            forms = FORMS
        else:
            pairs = derive_pairs(kb, forms)
        if not pairs:
            raise ConfigError(f"index {kb.path} yields no training pairs of forms {list(forms)} (no 'description' "
                              "metadata and no first sentence of the form 'X is ...'); pass your own with --pairs FILE")
    pairs = list(pairs)
    iv = vectors or IndexVectors(kb)
    docs = iv.doc_numbers(pairs)
    if query_vectors is None:
        query_vectors = kb.embedder.encode([p.query for p in pairs], kind="query")
    qv = np.ascontiguousarray(query_vectors, dtype=np.float32)
    if valid_pairs is not None:
        vdocs = iv.doc_numbers(list(valid_pairs))
        vq = np.ascontiguousarray(kb.embedder.encode([p.query for p in valid_pairs], kind="query"), dtype=np.float32)
        tr = np.ones(len(pairs), dtype=bool)
    else:
        held = split_by_document([p.doc_id for p in pairs], valid_fraction, seed=seed)
        if held.all() or not held.any():
            held = np.zeros(len(pairs), dtype=bool)
        tr = ~held
        vq, vdocs = qv[held], docs[held]
    if tr.sum() < 2:
        raise ConfigError(f"{int(tr.sum())} training pair(s) left after holding out documents for early stopping; "
                          "pass at least a few dozen pairs")
    emb = embedder_config(kb.embedder)
    adapter = fit_query_adapter(
        qv[tr], iv.vectors, iv.best_rows(qv[tr], docs[tr]), query_docs=docs[tr], corpus_docs=iv.doc, kind=kind, rank=rank,
        normalize=bool(emb["normalize"]), embedder={k: emb[k] for k in ("name", "dim", "normalize")},
        valid=(vq, vdocs) if len(vq) else None, reg=reg, epochs=epochs, batch_size=batch_size, lr=lr,
        temperature=temperature, hard_negatives=hard_negatives, hard_skip=hard_skip, remine_every=remine_every,
        patience=patience, seed=seed, progress=progress,
    )
    forms_used: dict[str, int] = {}
    for p, t in zip(pairs, tr):
        if t:
            forms_used[p.form] = forms_used.get(p.form, 0) + 1
    adapter.info["forms"] = forms_used
    adapter.info["total_seconds"] = round(time.perf_counter() - t0, 3)
    if name is not None:
        from rag_lfm.adapters.store import save_query_adapter

        save_query_adapter(kb, adapter, name, activate=activate, replace=replace)
    return adapter


KINDS_HELP = ", ".join(KINDS)
