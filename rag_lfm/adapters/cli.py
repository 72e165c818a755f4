"""``rag-lfm tune query-adapter|reader`` and ``rag-lfm adapters list|activate|remove``: thin layers over the API.

Example (shell)::

    rag-lfm tune query-adapter indexes/wiki-vital                       # pairs derived from the corpus
    rag-lfm tune query-adapter indexes/notes --pairs train.jsonl --kind linear --name mine
    rag-lfm adapters list indexes/wiki-vital
    rag-lfm adapters remove indexes/wiki-vital mine
    rag-lfm tune reader indexes/wiki-vital --method lora --name lora-wiki --n 200
    rag-lfm ask indexes/wiki-vital "Which article is described as: ...?" --adapter lora-wiki
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from rag_lfm.errors import ConfigError, RagLfmError


def _fail(exc: BaseException) -> None:
    from rag_lfm.redaction import redact

    typer.echo(f"error: {redact(str(exc))}", err=True)
    raise typer.Exit(2)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} {text!r} must be a comma list of ints, e.g. 1,2,3,4,5") from None


def _line(name: str, s: dict) -> str:
    """One adapter as a line of ``adapters list`` and ``info`` (``*`` marks the active one)."""
    rank = f" rank {s['rank']}" if s.get("rank") else ""
    return (f"{'*' if s.get('active') else ' '} {name}: {s.get('kind')}{rank}, {s.get('n_params', 0):,} parameters, "
            f"embedder {s.get('embedder')}, held-out R@1 {s.get('valid_r1_before')} -> {s.get('valid_r1_best')}")


def register(app: typer.Typer, eval_app: typer.Typer) -> None:  # noqa: ARG001 - the plug-in signature
    """Add ``tune`` and ``adapters`` to ``app``."""
    tune_app = typer.Typer(help="Train adapters around the frozen models (query adapter, reader LoRA / prompt tuning).",
                           no_args_is_help=True)
    adapters_app = typer.Typer(help="List, activate and remove an index's query adapters.", no_args_is_help=True)
    app.add_typer(tune_app, name="tune")
    app.add_typer(adapters_app, name="adapters")

    @tune_app.command("query-adapter")
    def tune_query(
        index: Annotated[str, typer.Argument(help="Index directory.")],
        pairs: Annotated[Optional[str], typer.Option(help="JSONL of {\"query\", \"doc_id\"} lines (default: derived from the corpus).")] = None,
        forms: Annotated[str, typer.Option(help="Without --pairs: query forms to derive: auto (descriptions if the documents have them, else lead fragments), or a comma list of description, lead.")] = "auto",
        name: Annotated[str, typer.Option(help="Adapter name inside the index.")] = "default",
        kind: Annotated[str, typer.Option(help="linear (W near the identity) or mlp (residual low-rank MLP).")] = "mlp",
        rank: Annotated[int, typer.Option(help="mlp: hidden rank (1..dim).")] = 64,
        epochs: Annotated[int, typer.Option(help="Most epochs (early stopping on held-out documents).")] = 30,
        lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
        hard_negatives: Annotated[int, typer.Option(help="Mined hard negatives per query.")] = 8,
        valid_fraction: Annotated[float, typer.Option(help="Share of documents held out for early stopping.")] = 0.1,
        seed: Annotated[int, typer.Option(help="Seed (held-out split, initialisation, batches).")] = 0,
        activate: Annotated[bool, typer.Option("--activate/--no-activate", help="Make it the adapter searches apply.")] = True,
        replace: Annotated[bool, typer.Option("--replace", help="Overwrite an adapter of the same name.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Train a query adapter on INDEX's stored vectors (nothing re-embedded) and save it inside the index."""
        from rag_lfm.adapters.tuning import load_pairs, tune_query_adapter
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            kb = KnowledgeBase.open(index)
            given = load_pairs(pairs) if pairs else None
            a = tune_query_adapter(kb, given, name=name, kind=kind, rank=rank, forms=None if forms == "auto" else [f.strip() for f in forms.split(",") if f.strip()],
                                   epochs=epochs, lr=lr, hard_negatives=hard_negatives, valid_fraction=valid_fraction,
                                   seed=seed, activate=activate, replace=replace, progress=not as_json)
        except RagLfmError as exc:
            _fail(exc)
        info = {k: v for k, v in a.info.items() if k != "history"}
        out = {"index": index, "name": name, "kind": a.kind, "rank": a.rank, "n_params": a.n_params, "active": activate, **info}
        text = (f"query adapter {name!r} ({a.kind}{f', rank {a.rank}' if a.rank else ''}, {a.n_params:,} parameters) saved in {index}"
                f"{' and active' if activate else ''}\n  pairs {info.get('pairs')} {info.get('forms')}, held-out documents' "
                f"recall@1 {info.get('valid_r1_before', float('nan')):.4f} -> {info.get('valid_r1_best', float('nan')):.4f} "
                f"(best epoch {info.get('best_epoch')}), {info.get('total_seconds')} s")
        typer.echo(json.dumps(out, default=str) if as_json else text)

    @tune_app.command("reader")
    def tune_reader(
        index: Annotated[str, typer.Argument(help="Index directory (retrieves the training passages).")],
        method: Annotated[str, typer.Option(help="lora or prompt (prompt tuning).")] = "lora",
        qa: Annotated[Optional[str], typer.Option(help="JSONL of question/answers lines (default: wiki-vital train documents).")] = None,
        name: Annotated[Optional[str], typer.Option(help="Adapter name (saved under the cache dir) or a folder; default reader-<method>.")] = None,
        model: Annotated[Optional[str], typer.Option(help="Reader model (default SmolLM2-135M-Instruct).")] = None,
        n: Annotated[int, typer.Option(help="Training examples.")] = 200,
        n_valid: Annotated[int, typer.Option(help="Held-out examples (other documents) for early stopping.")] = 16,
        ks: Annotated[str, typer.Option("--k", help="Passage counts drawn per example.")] = "1,2,3,4,5",
        forms: Annotated[str, typer.Option(help="wiki-vital question forms: title, cloze.")] = "title,cloze",
        epochs: Annotated[int, typer.Option(help="Passes over the examples.")] = 1,
        max_steps: Annotated[Optional[int], typer.Option(help="Cap on optimizer steps.")] = None,
        grad_accum: Annotated[int, typer.Option(help="Examples per optimizer step.")] = 4,
        rank: Annotated[int, typer.Option(help="lora: rank (1..256).")] = 8,
        targets: Annotated[str, typer.Option(help="lora: comma list of the modules it wraps.")] = "q_proj,v_proj",
        top_layers: Annotated[Optional[int], typer.Option(help="lora: wrap the last N layers only (default: all).")] = None,
        choice_weight: Annotated[float, typer.Option(help="lora: weight of the loss on choosing the gold answer among the passages' titles (0 = off).")] = 0.0,
        anchors: Annotated[int, typer.Option(help="Closed-book anchors: this many training questions without passages, the target the frozen reader's own answer (holds closed-book behaviour).")] = 0,
        virtual_tokens: Annotated[int, typer.Option(help="prompt: virtual tokens (1..512).")] = 16,
        lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 2e-4 lora, 3e-2 prompt).")] = None,
        max_passage_tokens: Annotated[Optional[int], typer.Option(help="Reader option: tokens per passage.")] = None,
        seed: Annotated[int, typer.Option(help="Seed.")] = 0,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the adapter's checkpoint.")] = False,
        threads: Annotated[Optional[int], typer.Option(help="torch threads.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Train a LoRA or prompt-tuning adapter of the frozen reader on passages retrieved from INDEX."""
        from rag_lfm.adapters.reader import ReaderExample, train_reader_adapter, wiki_reader_examples
        from rag_lfm.knowledge_base import KnowledgeBase
        from rag_lfm.readers import TransformersReader

        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            kb = KnowledgeBase.open(index)
            k_list = _ints(ks, "--k")
            opts = {"max_passage_tokens": max_passage_tokens} if max_passage_tokens else {}
            reader = TransformersReader(model or "SmolLM2-135M-Instruct", **opts)
            if qa:
                import random

                from rag_lfm.eval.qa import load_qa_jsonl

                ex = load_qa_jsonl(qa)
                hits = kb.search_batch([e.query for e in ex], max(k_list))
                rng = random.Random(seed)
                all_ex = [ReaderExample(e.question, list(h[: rng.choice(k_list)]), e.answers[0], "user") for e, h in zip(ex, hits)]
                cut = max(len(all_ex) - n_valid, 1)
                train, valid = all_ex[:cut][:n], all_ex[cut:]
            else:
                fl = [f.strip() for f in forms.split(",") if f.strip()]
                train = wiki_reader_examples(kb, split="train", n=n, forms=fl, ks=k_list, seed=seed)
                valid = wiki_reader_examples(kb, split="dev", n=n_valid, forms=fl, ks=k_list, seed=seed + 1)
            if anchors < 0:
                raise ConfigError(f"--anchors {anchors} is out of range; use 0 (none) or a positive number of questions")
            if anchors:
                from rag_lfm.adapters.reader import closed_book_anchors

                reader.warm_up()
                n_va = round(anchors * len(valid) / max(len(train), 1))
                train = train + closed_book_anchors(reader, [e.question for e in train][:anchors], seed=seed)
                valid = valid + closed_book_anchors(reader, [e.question for e in valid][:n_va], seed=seed + 1)
            mods = [m.strip() for m in targets.split(",") if m.strip()]
            rep = train_reader_adapter(reader, train, valid, method=method, out=name or f"reader-{method}", epochs=epochs,
                                       max_steps=max_steps, grad_accum=grad_accum, rank=rank, virtual_tokens=virtual_tokens,
                                       target_modules=mods, top_layers=top_layers, choice_weight=choice_weight,
                                       lr=lr, seed=seed, resume=resume, progress=not as_json)
        except RagLfmError as exc:
            _fail(exc)
        d = rep.to_dict()
        text = (f"reader adapter ({rep.method}) saved in {rep.out}: {rep.trainable_params:,} trainable parameters "
                f"({100 * rep.trainable_share:.3f}% of {rep.frozen_params:,} frozen), {rep.steps} steps, best held-out "
                f"loss {rep.best_valid_loss}, {rep.seconds:.0f} s\n  use it: rag-lfm ask {index} \"...\" --adapter {rep.out}")
        typer.echo(json.dumps(d, default=str) if as_json else text)

    @adapters_app.command("list")
    def list_cmd(index: Annotated[str, typer.Argument(help="Index directory.")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False) -> None:
        """The index's query adapters (the active one is marked)."""
        from rag_lfm.adapters.store import list_query_adapters
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            items = list_query_adapters(KnowledgeBase.open(index))
        except RagLfmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(items, default=str))
            return
        if not items:
            typer.echo("(no query adapters)")
        for n_, s in items.items():
            typer.echo(_line(n_, s))

    @adapters_app.command("activate")
    def activate_cmd(index: Annotated[str, typer.Argument(help="Index directory.")],
                     name: Annotated[str, typer.Argument(help="Adapter name, or 'none' to search without one.")]) -> None:
        """Make NAME the query adapter every search of INDEX applies ('none': plain embeddings)."""
        from rag_lfm.adapters.store import activate_query_adapter
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            activate_query_adapter(KnowledgeBase.open(index), None if name == "none" else name)
        except RagLfmError as exc:
            _fail(exc)
        typer.echo(f"active query adapter: {name}")

    @adapters_app.command("remove")
    def remove_cmd(index: Annotated[str, typer.Argument(help="Index directory.")],
                   name: Annotated[str, typer.Argument(help="Adapter name.")]) -> None:
        """Delete query adapter NAME (files and record) from INDEX."""
        from rag_lfm.adapters.store import remove_query_adapter
        from rag_lfm.knowledge_base import KnowledgeBase

        try:
            remove_query_adapter(KnowledgeBase.open(index), name)
        except RagLfmError as exc:
            _fail(exc)
        typer.echo(f"removed query adapter {name!r} from {index}")
