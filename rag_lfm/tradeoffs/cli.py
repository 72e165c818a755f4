"""CLI: ``rag-lfm index tune`` (measure families, rebuild with the best for a budget) and ``rag-lfm index families``.

Registered into the main app by ``rag_lfm.cli`` through :func:`register`.

Example (shell)::

    rag-lfm index tune indexes/wiki-vital --max-memory 200MB --min-recall 0.95 --plot pareto.png
    rag-lfm index tune indexes/wiki-vital --max-memory 5MB --min-recall 0.9 --max-p50-ms 2 --dry-run --json
    rag-lfm index families
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from rag_lfm.errors import ConfigError, RagLfmError


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _read_queries(path: Path) -> list[str]:
    """One query per line (.txt) or a JSONL file of {"query": ...} / {"text": ...} objects."""
    if not path.exists():
        raise ConfigError(f"--queries file {path} does not exist; pass a text file with one query per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(lines, 1):
            obj = json.loads(line)
            q = obj.get("query") or obj.get("text") if isinstance(obj, dict) else None
            if not isinstance(q, str):
                raise ConfigError(f"{path}:{i} has no 'query' or 'text' string; each line must be {{\"query\": \"...\"}}")
            out.append(q)
        return out
    return lines


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add the ``index`` command group (``tune``, ``families``) to ``app``."""
    index_app = typer.Typer(help="Index memory / speed trade-offs: tune an index for a budget, list the families.",
                            no_args_is_help=True)
    app.add_typer(index_app, name="index")

    @index_app.command("tune")
    def tune_cmd(
        index: Path = typer.Argument(..., help="index directory"),
        max_memory: str = typer.Option(..., "--max-memory", help="resident memory the index may take, e.g. 200MB, 1.5GiB"),
        min_recall: float = typer.Option(0.95, "--min-recall", help="recall@10 against exact search the choice must reach"),
        max_p50_ms: float = typer.Option(None, "--max-p50-ms", help="optional bound on the median latency of one query (ms)"),
        plot: Path = typer.Option(None, "--plot", help="write the memory-vs-recall and latency-vs-recall Pareto plots (PNG)"),
        queries: Path = typer.Option(None, "--queries", help="a query log: one query per line (.txt) or JSONL with 'query'; "
                                     "default: stored vectors of held-out chunks"),
        n_queries: int = typer.Option(200, "--n-queries", help="held-out queries to sample (without --queries)"),
        families: str = typer.Option(None, "--families", help="comma-separated family names (default: all; see `rag-lfm index families`)"),
        factory: list[str] = typer.Option(None, "--factory", help="also try this FAISS factory string (repeatable), e.g. 'IVF1024,PQ32x8,Rescore'"),
        objective: str = typer.Option("latency", help="among settings that meet the budget: latency, memory or recall"),
        dry_run: bool = typer.Option(False, "--dry-run", help="measure and report, but do not rebuild the index"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> None:
        """Measure index families on this index's vectors and rebuild it with the best one for the budget."""
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            from rag_lfm.tradeoffs.tuner import DEFAULT_FAMILIES

            fams: list[str] | None = [f.strip() for f in families.split(",") if f.strip()] if families else None
            if factory:
                fams = (fams or list(DEFAULT_FAMILIES)) + list(factory)
            qs = _read_queries(queries) if queries is not None else None
            kb = KnowledgeBase.open(index)
            try:
                result = kb.tune(max_memory, min_recall, max_p50_ms, qs, families=fams, n_queries=n_queries, objective=objective,
                                 progress=not as_json, apply=not dry_run, plot=str(plot) if plot else None)
            finally:
                kb.close()
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(result.to_dict() | {"plot": str(plot) if plot else None}, default=str))
        else:
            typer.echo(result.table())
            typer.echo(result.summary())
            if plot:
                typer.echo(f"Pareto plots: {plot}")
        if result.choice is None:
            raise typer.Exit(1)

    @index_app.command("families")
    def families_cmd(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
        """The index families by name, with their factory strings for 1M x 384-d vectors and estimated bytes/vector."""
        from rag_lfm.index.families import estimate_bytes
        from rag_lfm.index.families import families as all_families

        rows: list[dict[str, Any]] = []
        for f in all_families():
            factory = f.factory(1_000_000, 384)
            rows.append({"name": f.name, "factory_1M_384": factory, "bytes_per_vector_est": estimate_bytes(factory, 384, 1_000_000) / 1e6,
                         "removes_ids": f.removes, "search_params": sorted({k for p in f.grid(1_000_000, 384) for k in p}),
                         "description": f.description})
        if as_json:
            typer.echo(json.dumps(rows))
            return
        for r in rows:
            typer.echo(f"{r['name']:<20}{r['factory_1M_384']:<30}{r['bytes_per_vector_est']:>8.0f} B/vec  "
                       f"{'removes' if r['removes_ids'] else 'masks  '}  {','.join(r['search_params']) or '-':<18} {r['description']}")
