"""`rag-lfm`: the index-building CLI, a thin layer over the Python API.

    rag-lfm ingest SOURCE --index PATH     # a file, a folder, or a TOML spec from connectors/
    rag-lfm sync PATH                      # re-run every source recorded in the index
    rag-lfm search PATH "query" -k 5 --filter '{"topic": "History"}'
    rag-lfm info PATH
    rag-lfm delete PATH DOC_ID ... [--source S]

Every command takes ``--json`` for scripts; errors print one line naming the input and
the fix, and exit with status 2. Printed errors pass through
:func:`rag_lfm.redaction.redact`: a password or token never reaches the terminal or a log.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from rag_lfm.errors import RagLfmError
from rag_lfm.redaction import redact

app = typer.Typer(help="rag-lfm: build, sync and search retrieval indexes for a frozen foundation model.", no_args_is_help=True, add_completion=False)
eval_app = typer.Typer(help="Evaluate retrieval and question answering.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


def _fail(exc: BaseException) -> None:
    typer.echo(f"error: {redact(str(exc))}", err=True)
    raise typer.Exit(2)


def _parse_filter(text: str | None) -> Any:
    """The --filter option as JSON, with a one-line error for bad or absurdly nested JSON."""
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RagLfmError(f"--filter {text[:200]!r} is not valid JSON ({exc.msg}); e.g. --filter '{{\"topic\": \"History\"}}'") from None
    except RecursionError:
        raise RagLfmError("--filter is nested too deeply to parse; flatten it (several keys at one level are ANDed)") from None


def _emit(obj: Any, as_json: bool, text: str) -> None:
    typer.echo(json.dumps(obj, default=str, ensure_ascii=False) if as_json else text)


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="A file, a folder, or a TOML source spec (see connectors/).")],
    index: Annotated[Optional[str], typer.Option("--index", "-i", help="Index directory (default: the spec's [index].path).")] = None,
    embedder: Annotated[Optional[str], typer.Option(help="Embedder for a new index (default all-MiniLM-L6-v2).")] = None,
    index_type: Annotated[Optional[str], typer.Option("--index-type", help="'auto' or a FAISS factory string, for a new index.")] = None,
    embedder_backend: Annotated[Optional[str], typer.Option(help="auto (default: the fastest measured on this machine), torch, onnx, onnx-int8, openvino or openvino-int8, for a new index.")] = None,
    chunk_size: Annotated[Optional[int], typer.Option(help="Tokens per chunk, for a new index.")] = None,
    glob: Annotated[Optional[str], typer.Option(help="For a folder: which files (e.g. '**/*.md').")] = None,
    text_field: Annotated[Optional[str], typer.Option("--text-field", help="For JSON/JSONL/CSV files: the text field.")] = None,
    id_field: Annotated[Optional[str], typer.Option("--id-field", help="For JSON/JSONL/CSV files: the id field.")] = None,
    follow_symlinks: Annotated[bool, typer.Option("--follow-symlinks", help="For a folder: read what symbolic links inside it point to (default: report them as skipped).")] = False,
    commit_every: Annotated[int, typer.Option(help="Commit every N documents...")] = 1000,
    commit_seconds: Annotated[float, typer.Option(help="...or every S seconds of work, whichever comes first.")] = 30.0,
    sync: Annotated[bool, typer.Option("--sync", help="Also delete documents the source no longer has.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a source into an index (created if needed); unchanged documents are skipped."""
    from rag_lfm.connectors.files import Files
    from rag_lfm.connectors.spec import connector_from_source, load_spec
    from rag_lfm.knowledge_base import KnowledgeBase

    try:
        defaults: dict[str, Any] = {}
        if source.endswith(".toml"):
            spec = load_spec(source)
            connector = connector_from_source(spec["source"])
            defaults = dict(spec["index"])
        else:
            opts = {k: v for k, v in {"glob": glob, "text_field": text_field, "id_field": id_field}.items() if v is not None}
            if follow_symlinks:
                opts["follow_symlinks"] = True
            connector = Files(source, **opts)
        preflight = getattr(connector, "preflight", None)
        if callable(preflight):
            preflight()  # e.g. a misspelt --text-field: fail before an index is created
        path = index or defaults.pop("path", None)
        defaults.pop("path", None)
        if path is None:
            raise typer.BadParameter("pass --index PATH (or set [index].path in the spec)")
        given = {"embedder": embedder, "index": index_type, "embedder_backend": embedder_backend, "chunk_size": chunk_size}
        create = {**defaults, **{k: v for k, v in given.items() if v is not None}}
        kb = KnowledgeBase.open_or_create(path, **create)
        report = kb.ingest(connector, commit_every=commit_every, commit_seconds=commit_seconds, progress=not as_json, delete_missing=sync)
    except RagLfmError as exc:
        _fail(exc)
    _emit(report.to_dict() | {"index": str(path)}, as_json, report.summary())
    if report.failed and not as_json:
        typer.echo(f"{len(report.failed)} record(s) failed and were skipped (listed above); the rest is committed.", err=True)


@app.command("sync")
def sync_cmd(
    index: Annotated[str, typer.Argument(help="Index directory.")],
    allow: Annotated[Optional[list[str]], typer.Option("--allow", help="Run recorded specs of this connector beyond the built-in ones (e.g. 'langchain:package.module.Loader'); repeatable.")] = None,
    trust_specs: Annotated[bool, typer.Option("--trust-specs", help="Run recorded specs not signed by your key (recorded elsewhere or edited), after you checked them; they are signed at this sync.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-run every source recorded in the index: add new, update changed, delete gone documents.

    A recorded spec runs only when it is signed by your key and its connector type is
    built in or allowed (see SECURITY.md); otherwise nothing runs and the error says how to allow it.
    """
    from rag_lfm.connectors.spec import connector_from_recorded
    from rag_lfm.knowledge_base import KnowledgeBase

    reports = []
    try:
        kb = KnowledgeBase.open(index)
        infos = kb.docstore.source_infos()
        if not infos:
            raise RagLfmError(f"{index} records no sources; ingest one first (`rag-lfm ingest SPEC --index {index}`)")
        runnable = []
        for source_id, info in sorted(infos.items()):
            if not info.get("spec"):
                typer.echo(f"skipping source {source_id!r}: it was ingested from Python without a spec", err=True)
                continue
            if info.get("spec_redacted"):
                typer.echo(f"skipping source {source_id!r}: its spec held a secret, which is never recorded; "
                           "name the secret through an environment variable (e.g. url_env) and ingest it again", err=True)
                continue
            # Every spec is checked before any runs: a refused one leaves the index untouched.
            runnable.append(connector_from_recorded(source_id, info, allow=allow or (), trust_unsigned=trust_specs))
        for connector in runnable:
            reports.append(kb.sync(connector, progress=not as_json))
    except RagLfmError as exc:
        _fail(exc)
    _emit({"index": index, "sources": [r.to_dict() for r in reports]}, as_json, "\n".join(r.summary() for r in reports))


@app.command()
def search(
    index: Annotated[str, typer.Argument(help="Index directory.")],
    query: Annotated[list[str], typer.Argument(help="One or more queries.")],
    k: Annotated[int, typer.Option("-k", help="Hits per query.")] = 5,
    filter: Annotated[Optional[str], typer.Option(help='Metadata filter as JSON, e.g. \'{"topic": "History"}\'.')] = None,
    method: Annotated[Optional[str], typer.Option(help="None: the index's own retriever (hybrid by default); 'dense': embeddings only.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search an index; several queries are embedded and searched as one batch."""
    from rag_lfm.knowledge_base import KnowledgeBase

    try:
        flt = _parse_filter(filter)
        kb = KnowledgeBase.open(index)  # sha256-checked, like every command: a modified file is never searched
        results = kb.search_batch(query, k=k, filter=flt, method=method)
    except RagLfmError as exc:
        _fail(exc)
    if as_json:
        _emit({"results": [{"query": q, "hits": [h.to_dict() for h in hits]} for q, hits in zip(query, results)]}, True, "")
        return
    for q, hits in zip(query, results):
        typer.echo(f"query: {q}")
        for rank, h in enumerate(hits, 1):
            title = h.metadata.get("title") or h.metadata.get("path") or ""
            snippet = " ".join(h.text.split())[:100]
            typer.echo(f"  {rank:>2}. {h.score:7.4f}  {h.doc_id}  {title if title != h.doc_id else ''}\n      {snippet}")
        if not hits:
            typer.echo("  (no hits)")


@app.command()
def info(index: Annotated[str, typer.Argument(help="Index directory.")], as_json: JsonOpt = False) -> None:
    """Counts, embedder, index type, memory, files and sources of an index."""
    from rag_lfm.knowledge_base import KnowledgeBase

    try:
        data = KnowledgeBase.open(index).info()
    except RagLfmError as exc:
        _fail(exc)
    if as_json:
        _emit(data, True, "")
        return
    e, ix = data["embedder"], data["index"]
    lines = [
        f"index       {data['path']} (format v{data['format_version']}, generation {data['generation']})",
        f"documents   {data['counts']['documents']}",
        f"chunks      {data['counts']['chunks']}",
        f"embedder    {e['name']} (dim {e['dim']}, normalize={e['normalize']}, backend {e.get('backend')})",
        f"index type  {ix['factory']} (spec {ix['spec']}, {ix['backend']}), metric {data['metric']}, {ix['memory_bytes'] / 2**20:.1f} MiB",
        f"doc store   {data['docstore']}",
        f"fields      {', '.join(f'{k}:{v}' for k, v in data['fields'].items()) or '(none)'}",
        "sources:",
    ]
    import datetime as dt

    for sid, s in data["sources"].items():
        when = dt.datetime.fromtimestamp(s["last_sync"], dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if s["last_sync"] else "never"
        lines.append(f"  {sid}: {s['documents']} documents, last sync {when}")
    mib = lambda b: "n/a" if b is None else f"{b / 2**20:.2f} MiB"  # noqa: E731
    lines.append("memory:     resident / memory-mapped / on disk")
    for comp, m in data.get("memory", {}).items():
        lines.append(f"  {comp:<15}{mib(m['resident']):>12} {mib(m['mapped']):>12} {mib(m['disk']):>12}")
    if data.get("query_adapters"):
        from rag_lfm.adapters.cli import _line

        lines.append("query adapters (* = applied by searches):")
        lines += [f"  {_line(n, s)}" for n, s in data["query_adapters"].items()]
    lines.append("files:")
    lines += [f"  {name}  {size / 2**20:.2f} MiB" for name, size in data["files"].items()]
    typer.echo("\n".join(lines))


@app.command()
def calibrate(
    model: Annotated[str, typer.Option(help="Embedding model (a name from the model registry or a local folder).")] = "all-MiniLM-L6-v2",
    refresh: Annotated[bool, typer.Option("--refresh", help="Measure again even if this machine has a recorded choice.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show (or measure) which embedder backend ``auto`` picks on this machine, and why.

    The measurement runs once per machine and model and is cached; ``--refresh`` repeats it,
    e.g. after a first measurement taken while the machine was busy. Indexes record the backend
    they were built with, so re-measuring never changes an existing index.
    """
    from rag_lfm.embedders import backend_choice_record, choose_backend

    try:
        choice = choose_backend(model, refresh=refresh, device="cpu")
        data = backend_choice_record(model) or {"choice": choice, "results": {}}
    except RagLfmError as exc:
        _fail(exc)
    lines = [f"embedder backend 'auto' on this machine: {data['choice']} ({model})",
             f"{'backend':<16}{'texts/s':>9}{'probe R@10':>12}{'lost/gained':>13}{'cosine':>9}  qualifies"]
    for name, r in data.get("results", {}).items():
        lg = "/".join(str(x) for x in r.get("probe_queries_lost_gained", [])) or "-"
        lines.append(f"{name:<16}{r['texts_per_s']:>9.1f}{r['probe_recall_at_10']:>12.3f}{lg:>13}{r['mean_cosine_to_torch']:>9.4f}  {r['qualifies']}")
    _emit(data, as_json, "\n".join(lines))


@app.command()
def delete(
    index: Annotated[str, typer.Argument(help="Index directory.")],
    doc_ids: Annotated[Optional[list[str]], typer.Argument(help="Document ids to delete.")] = None,
    source: Annotated[Optional[str], typer.Option(help="Only in this source; alone: delete the whole source.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete documents (and their chunks and vectors) by id, or a whole source."""
    from rag_lfm.knowledge_base import KnowledgeBase

    try:
        n = KnowledgeBase.open(index).delete(doc_ids or [], source=source)
    except RagLfmError as exc:
        _fail(exc)
    _emit({"deleted": n}, as_json, f"deleted {n} document(s)")


# Commands contributed by the companion modules: each exposes register(app, eval_app).
PLUGIN_MODULES = ["rag_lfm.retrieval.cli", "rag_lfm.readers.cli", "rag_lfm.tradeoffs.cli", "rag_lfm.adapters.cli",
                  "rag_lfm.distill.cli"]
for _name in PLUGIN_MODULES:
    if importlib.util.find_spec(_name) is not None:
        importlib.import_module(_name).register(app, eval_app)


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
