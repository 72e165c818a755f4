"""CLI: ``rag-lfm eval retrieval`` (per-method IR metrics on a task) and ``rag-lfm retrieve``.

Registered into the main app by ``rag_lfm.cli`` through :func:`register`.

Example (shell)::

    rag-lfm eval retrieval wiki-vital --index indexes/wiki-vital --methods dense,bm25,hybrid --json
    rag-lfm eval retrieval path/to/beir-folder --embedder all-MiniLM-L6-v2
    rag-lfm retrieve indexes/wiki-vital "French Impressionist painter" --method hybrid -k 5
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import typer

from rag_lfm.errors import ConfigError, RagLfmError

METHOD_HELP = (
    "comma-separated methods: dense, bm25, hybrid (RRF), hybrid-weighted, hybrid-lead (dense + BM25 on the text "
    "+ BM25 on each document's first sentence, z-score fusion 1/0.5/0.5), mmr (dense + MMR, lambda 0.7), "
    "metric:<name> (dense rescored by a registered metric, e.g. metric:l2), learned (needs --learned)"
)


def build_retriever(kb: Any, spec: str, *, learned: str | None = None, bm25_fields: list[str] | None = None) -> Any:
    """A :class:`~rag_lfm.retrieval.Retriever` for a method name used by the CLI and benchmarks."""
    from rag_lfm.retrieval import Retriever

    bm25 = {"bm25_settings": {"fields": bm25_fields or []}}
    if spec == "dense":
        return Retriever(kb, method="dense")
    if spec == "bm25":
        return Retriever(kb, method="bm25", **bm25)
    if spec == "hybrid":
        return Retriever(kb, method="hybrid", fusion="rrf", **bm25)
    if spec == "hybrid-weighted":
        return Retriever(kb, method="hybrid", fusion="weighted", **bm25)
    if spec == "hybrid-lead":
        return Retriever(kb, method="hybrid", fusion="weighted", normalize="zscore", weights=[1.0, 0.5, 0.5],
                         bm25_settings=[{"fields": bm25_fields or []}, {"opening_sentences": 1}])
    if spec == "mmr":
        return Retriever(kb, method="dense", mmr_lambda=0.7, mmr_pool=20)
    if spec.startswith("metric:"):
        return Retriever(kb, method="dense", metric=spec.split(":", 1)[1])
    if spec == "learned":
        if not learned:
            raise ConfigError("method 'learned' needs --learned FOLDER (a metric saved by BilinearMetric.save)")
        from rag_lfm.metrics import load_learned_metric

        return Retriever(kb, method="dense", metric=load_learned_metric(learned))
    raise ConfigError(f"unknown method {spec!r}; {METHOD_HELP}")


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add ``eval retrieval`` to ``eval_app`` and ``retrieve`` to ``app``."""

    @eval_app.command("retrieval")
    def eval_retrieval(
        task: str = typer.Argument(..., help="'wiki-vital' or a BEIR folder (corpus.jsonl, queries.jsonl, qrels)"),
        index: Path = typer.Option(None, "--index", help="an existing KB built from the task's corpus"),
        embedder: str = typer.Option("all-MiniLM-L6-v2", help="embedder for a KB built on the fly (no --index)"),
        build: Path = typer.Option(None, "--build", help="keep the KB built on the fly here (default: a temp dir)"),
        methods: str = typer.Option("dense,bm25,hybrid", help=METHOD_HELP),
        learned: Path = typer.Option(None, help="folder of a learned metric (for the 'learned' method)"),
        bm25_title: bool = typer.Option(False, "--bm25-title", help="index the title metadata in BM25 too"),
        queries: int = typer.Option(None, "--queries", help="evaluate a random sample of this many queries"),
        depth: int = typer.Option(100, help="documents retrieved per query"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Recall@k, nDCG@10 and MRR per method, on a BEIR folder or the wiki-vital task."""
        from rag_lfm.eval.retrieval import evaluate_search, format_table, load_task
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            t = load_task(task)
            if queries:
                t = t.subset(queries)
            tmp = None
            if index is not None:
                kb = KnowledgeBase.open(index)
            else:
                if build is None:
                    tmp = Path(tempfile.mkdtemp(prefix="rag-lfm-eval-"))
                    build = tmp / "kb"
                kb = KnowledgeBase.open_or_create(build, embedder=embedder)
                if len(kb) == 0:
                    kb.ingest(t.connector(), progress=not as_json)
            try:
                results = []
                for spec in [m.strip() for m in methods.split(",") if m.strip()]:
                    r = build_retriever(kb, spec, learned=str(learned) if learned else None,
                                        bm25_fields=["title"] if bm25_title else None)
                    if r.method != "dense":
                        _ = r.bm25_indexes  # build/load BM25 outside the timed loop
                    results.append(evaluate_search(spec, lambda qs, r=r: r.search_batch(qs, k=depth), t,
                                                   depth=depth, progress=not as_json))
            finally:
                kb.close()
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps({"task": t.name, "n_queries": len(t.queries), "n_docs": len(t.corpus),
                                   "results": [r.to_dict() for r in results]}))
        else:
            typer.echo(f"task {t.name}: {len(t.queries)} queries, {len(t.corpus)} documents")
            typer.echo(format_table(results))

    @app.command("retrieve")
    def retrieve(
        index: Path = typer.Argument(..., help="index directory"),
        query: str = typer.Argument(..., help="the query"),
        k: int = typer.Option(5, "-k", "--k", help="results"),
        method: str = typer.Option("default", help="default (the index's own retriever), dense, bm25, hybrid, "
                                   "hybrid-weighted, hybrid-lead, mmr, metric:<name>, learned"),
        learned: Path = typer.Option(None, help="learned metric folder (method 'learned')"),
        filter: str = typer.Option(None, help='metadata filter as JSON, e.g. \'{"topic": "History"}\''),
        group_by_doc: bool = typer.Option(False, "--group-by-doc", help="one hit per document"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
    ) -> None:
        """Search an index with a retrieval method (hybrid, a custom metric, MMR...)."""
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.retrieval.retriever import Retriever

        try:
            flt = None
            if filter:
                try:
                    flt = json.loads(filter)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"--filter {filter!r} is not valid JSON ({exc.msg}); e.g. --filter '{{\"topic\": \"History\"}}'") from None
            kb = KnowledgeBase.open(index)
            try:
                if method == "default":
                    r = Retriever.from_config(kb, kb.manifest.get("retriever"), group_by="doc" if group_by_doc else None)
                else:
                    r = build_retriever(kb, method, learned=str(learned) if learned else None)
                    r.group_by = "doc" if group_by_doc else None
                hits = r.search(query, k=k, filter=flt)
            finally:
                kb.close()
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps([h.to_dict() for h in hits], ensure_ascii=False))
            return
        for rank, h in enumerate(hits, start=1):
            typer.echo(f"{rank:>2}. {h.score:8.4f}  {h.doc_id}  {h.text[:100]!r}")
