"""Reader adapters through PEFT: LoRA (adapter-based) and prompt tuning (prompt-based) on a frozen reader.

The base model's weights never change: LoRA adds low-rank matrices beside the attention
projections (not merged), prompt tuning learns ``n`` virtual token embeddings put before the
prompt. Both are trained on the prompts the reader itself builds: ``(question, passages in the
order the retriever gave them, answer)`` with ``k`` passages drawn from 1..5, the loss on the
answer tokens only. ``TransformersReader(adapter=NAME_OR_PATH)`` loads one: LoRA through
``PeftModel.from_pretrained`` (the layers wrap the frozen ones), prompt tuning as ``n`` extra token
ids whose embeddings come from the PEFT file, so the reader's own decoding (shared prefix cache,
copy constraint, answer starts, title candidates) runs unchanged.

Files (``save_pretrained`` of PEFT, safetensors + JSON, no pickle) plus ``rag_lfm_reader_adapter.json``
(method, the base model's signature, trainable/frozen parameters, the training record). Named
adapters live in ``<cache_dir>/reader-adapters/<name>/`` (:func:`rag_lfm.models.cache_dir`).

Checkpoints (resumable): ``<out>/checkpoint/`` holds the adapter, the optimizer state as
safetensors and ``state.json`` (examples consumed, best validation loss, history); a run with
``resume=True`` continues from it with the same data order (fixed by the seed).

Example:
    >>> reader = TransformersReader()                                        # doctest: +SKIP
    >>> train, valid = wiki_reader_examples(kb, n_train=200, n_valid=16)     # doctest: +SKIP
    >>> train_reader_adapter(reader, train, valid, method="lora", out="lora-wiki")  # doctest: +SKIP
    >>> TransformersReader(adapter="lora-wiki").generate(question, hits).text       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.types import Hit

__all__ = ["METHODS", "ReaderExample", "train_reader_adapter", "load_reader_adapter", "resolve_reader_adapter",
           "reader_adapter_home", "cloze_of", "wiki_reader_examples", "base_fingerprint", "TrainReport"]

METHODS = ("lora", "prompt")
META_FILE = "rag_lfm_reader_adapter.json"
PEFT_HINT = 'PEFT is needed for reader adapters: pip install "rag-lfm[adapters]" (or pip install "peft>=0.11")'


def _peft():
    try:
        import peft
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelNotFoundError(PEFT_HINT) from exc
    return peft


def reader_adapter_home() -> Path:
    """Where named reader adapters live: ``<cache_dir>/reader-adapters``."""
    from rag_lfm.models import cache_dir

    return cache_dir() / "reader-adapters"


def resolve_reader_adapter(spec: str | Path) -> Path:
    """A reader adapter folder from a path or a name (``<cache_dir>/reader-adapters/<name>``).

    Raises:
        ModelNotFoundError: neither exists; the message lists the named adapters.
    """
    p = Path(spec).expanduser()
    if p.is_dir() and (p / "adapter_config.json").is_file():
        return p
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", str(spec)) and ".." not in str(spec):
        named = reader_adapter_home() / str(spec)
        if (named / "adapter_config.json").is_file():
            return named
    home = reader_adapter_home()
    names = sorted(d.name for d in home.iterdir() if (d / "adapter_config.json").is_file()) if home.is_dir() else []
    raise ModelNotFoundError(
        f"reader adapter {str(spec)!r} is neither a folder holding adapter_config.json nor a named adapter in {home} "
        f"(named adapters: {', '.join(names) or 'none'}); train one with `rag-lfm tune reader INDEX --method lora`"
    )


def model_signature(model: Any) -> dict[str, Any]:
    """What an adapter must match in its base model: architecture and shapes."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    keys = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "vocab_size")
    return {k: getattr(cfg, k, None) for k in keys}


def base_fingerprint(model: Any) -> str:
    """sha256 over the BASE model's parameters and buffers (adapter weights left out, wrapped names
    mapped back): equal before training, after training and after loading an adapter."""
    import torch

    h = hashlib.sha256()
    items = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or name.endswith(".virtual") or "prompt_encoder" in name or name.startswith("word_embeddings."):
            continue
        name = name.replace(".base_layer.", ".").replace("embed_tokens.base.", "embed_tokens.")
        items[name] = tensor
    for name in sorted(items):
        h.update(name.encode())
        h.update(items[name].detach().to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- loading into a reader


class VirtualTokenEmbedding:  # a torch.nn.Module, built lazily so this module imports without torch
    """Input embeddings that map ids ``>= offset`` to learned virtual token embeddings (prompt tuning)."""

    def __new__(cls, base: Any, virtual: Any, offset: int) -> Any:
        import torch

        class _Virtual(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.base = base
                self.virtual = torch.nn.Parameter(virtual.detach().clone(), requires_grad=False)
                self.offset = int(offset)

            @property
            def weight(self) -> Any:  # code that reads embed_tokens.weight (dtype, device, tying) sees the base's
                return self.base.weight

            def forward(self, ids: Any) -> Any:
                is_v = ids >= self.offset
                out = self.base(ids.clamp(max=self.base.num_embeddings - 1))
                if bool(is_v.any()):
                    v = self.virtual[(ids - self.offset).clamp(min=0, max=self.virtual.shape[0] - 1)].to(out.dtype)
                    out = torch.where(is_v[..., None], v, out)
                return out

        return _Virtual()


def load_reader_adapter(reader: Any, spec: str | Path) -> dict[str, Any]:
    """Apply the adapter ``spec`` to a warmed-up :class:`TransformersReader`'s model (called by ``warm_up``).

    Returns the adapter's recorded metadata. The base weights stay as they are (LoRA layers wrap
    them; prompt tuning adds embeddings for new ids only).

    Raises:
        ConfigError: the adapter was made for another base model (its signature differs).
    """
    peft = _peft()
    folder = resolve_reader_adapter(spec)
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    model = reader._model
    want, have = meta.get("base_signature"), model_signature(model)
    if want is not None and want != have:
        diff = {k: (want.get(k), have.get(k)) for k in set(want) | set(have) if want.get(k) != have.get(k)}
        raise ConfigError(
            f"reader adapter {str(folder)!r} was trained for another base model ({meta.get('base_model')!r}); "
            f"it does not fit {reader.model_ref!r}: (adapter's, reader's) {diff}. Use the reader model it was trained "
            "for, or train one for this model (`rag-lfm tune reader INDEX --model ...`)"
        )
    config = peft.PeftConfig.from_pretrained(str(folder))
    kind = str(getattr(config, "peft_type", "")).split(".")[-1].upper()
    if kind == "LORA":
        pm = peft.PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        model = pm.base_model.model  # the base model object, its projections now wrapped by LoRA layers
        method = "lora"
    elif kind == "PROMPT_TUNING":
        from safetensors.torch import load_file

        weights = load_file(str(folder / "adapter_model.safetensors"))
        virtual = weights.get("prompt_embeddings")
        if virtual is None:
            raise ConfigError(f"{folder}: adapter_model.safetensors holds no prompt_embeddings")
        emb = model.get_input_embeddings()
        offset = max(int(emb.num_embeddings), len(reader._tokenizer))
        model.set_input_embeddings(VirtualTokenEmbedding(emb, virtual.to(emb.weight.device), offset))
        reader._prompts.virtual_ids = list(range(offset, offset + int(virtual.shape[0])))
        reader._prompts._prefixes.clear()
        method = "prompt"
    else:
        raise ConfigError(f"{folder}: PEFT method {kind!r} is not supported by the reader; use one of {', '.join(METHODS)}")
    model.eval()
    model.requires_grad_(False)
    reader._model = model
    return {"method": method, "path": str(folder), **{k: v for k, v in meta.items() if k in ("trainable_params", "frozen_params", "forms")}}


# --------------------------------------------------------------------------- training data


@dataclass
class ReaderExample:
    """A question, its passages in retriever order, the gold answer (a span of the passages), the form."""

    question: str
    passages: list[Hit]
    answer: str
    form: str = "user"


_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_CAPS = re.compile(r"\b([A-Z][a-zA-Z\u00C0-\u024F'-]+(?:\s+(?:of\s+|de\s+|the\s+)?[A-Z][a-zA-Z\u00C0-\u024F'-]+)*)")


def cloze_of(text: str, title: str, *, seed: int = 0) -> tuple[str, str] | None:
    """A fill-in-the-blank question from a lead's first sentences, answered by a span that is NOT the title.

    The blank is a year or a capitalised name inside the first two sentences (never the sentence's
    first word, never a word of the title). Returns ``(question, answer)`` or None.

    Example:
        >>> cloze_of("The Nile is a major north-flowing river in northeastern Africa. It flows into the Mediterranean Sea.", "Nile")
        ('Which word or name fills the blank: "It flows into the ___."?', 'Mediterranean Sea')
    """
    from rag_lfm.adapters.tuning import _SENT

    sents = _SENT.split(" ".join(str(text).split()))[:2]
    title_words = {w.lower() for w in re.findall(r"\w+", title)}
    options: list[tuple[str, str, int, int]] = []
    for s in sents:
        if len(s.split()) < 6 or len(s) > 300:
            continue
        for m in list(_YEAR.finditer(s)) + list(_CAPS.finditer(s)):
            span = m.group(1) if m.re is _CAPS else m.group(0)
            start = m.start(1) if m.re is _CAPS else m.start()
            if start == 0 or not span.strip():
                continue
            words = {w.lower() for w in re.findall(r"\w+", span)}
            if words & title_words or len(span) < 3 or span in ("The", "It", "He", "She", "In", "A", "An"):
                continue
            options.append((s, span, start, start + len(span)))
    if not options:
        return None
    s, span, a, b = random.Random(f"{seed}:{title}").choice(options)
    return f'Which word or name fills the blank: "{s[:a]}___{s[b:]}"?', span


def wiki_reader_examples(
    source: Any,
    *,
    split: str = "train",
    n: int = 200,
    forms: Sequence[str] = ("title", "cloze"),
    cloze_share: float = 0.4,
    ks: Sequence[int] = (1, 2, 3, 4, 5),
    seed: int = 0,
    entries: Sequence[dict[str, Any]] | None = None,
    in_context_only: bool = True,
) -> list[ReaderExample]:
    """Reader training examples from the wiki-vital documents of one split (by document), retrieved by ``source``.

    Forms: ``title`` -- "Which article/entity is described as: <description>?" -> the title (the
    built-in QA task; retrieval query = the description); ``cloze`` -- a fill-in-the-blank of a
    lead's first sentences (:func:`cloze_of`) -> a name or year inside the lead, not its title
    (retrieval query = the sentence without the blank). ``k`` is drawn per example from ``ks``;
    with ``in_context_only`` an example whose answer is not in its passages is skipped (nothing
    there to copy).
    """
    from rag_lfm.eval.qa import answer_in_context, wiki_vital_task

    bad = [f for f in forms if f not in ("title", "cloze")]
    if bad or not forms:
        raise ConfigError(f"reader example forms {list(forms)!r} are not valid; use any of title, cloze")
    ks = list(ks)
    if not ks or any(not 1 <= int(k) <= 16 for k in ks):
        raise ConfigError(f"passage counts ks={ks!r} must be ints from 1 to 16")
    rng = random.Random(seed)
    n_cloze = int(round(n * cloze_share)) if "cloze" in forms and "title" in forms else (n if "cloze" in forms else 0)
    n_title = n - n_cloze
    pool: list[tuple[str, str, str, str]] = []  # (question, query, answer, form)
    if n_title:
        for e in wiki_vital_task(10**9, seed=seed, split=split, query="description", entries=entries):
            pool.append((e.question, e.query, e.answers[0], "title"))
    titles = pool[: int(n_title * 1.6) + 8]
    cloze: list[tuple[str, str, str, str]] = []
    if n_cloze:
        from rag_lfm.connectors.wiki import load_wiki_vital
        from rag_lfm.eval.splits import document_split

        rows = list(entries) if entries is not None else load_wiki_vital()
        rng.shuffle(rows)
        for e in rows:
            title = (e.get("title") or "").strip()
            if not title or document_split(title) != split:
                continue
            got = cloze_of(e.get("extract") or "", title, seed=seed)
            if got:
                q, a = got
                cloze.append((q, q.split('"')[1].replace("___", " "), a, "cloze"))
            if len(cloze) >= int(n_cloze * 1.6) + 8:
                break
    out: list[ReaderExample] = []
    for want, cands in ((n_title, titles), (n_cloze, cloze)):
        if not want:
            continue
        kk = [ks[rng.randrange(len(ks))] for _ in cands]
        hits = source.search_batch([c[1] for c in cands], max(ks))
        got = []
        for (q, _, a, form), h, k in zip(cands, hits, kk):
            ps = list(h[:k])
            if in_context_only and not answer_in_context([a], [f"{p.metadata.get('title', '')} {p.text}" for p in ps]):
                continue
            got.append(ReaderExample(q, ps, a, form))
            if len(got) >= want:
                break
        out.extend(got)
    rng.shuffle(out)
    return out


def closed_book_anchors(reader: Any, questions: Sequence[str], *, seed: int = 0) -> list[ReaderExample]:
    """Closed-book examples whose targets are the FROZEN reader's own closed-book answers.

    Mixed into an adapter's training data they hold what the adapter was not trained for: with no
    passages, the adapted model keeps answering as the frozen one did (the adapters issue asks
    that closed-book answers move by less than 2 points). The questions may be the training
    questions themselves: with passages the target is the gold answer, without them the frozen
    model's answer, so the adapter learns to read, not to memorise.

    Args:
        reader: a :class:`~rag_lfm.readers.TransformersReader` without an adapter (the one trained).
        questions: questions of training documents (never of the documents it is tested on).

    Example:
        >>> anchors = closed_book_anchors(TransformersReader().warm_up(), ["Who wrote the Aeneid?"])  # doctest: +SKIP
        >>> anchors[0].passages, anchors[0].form
        ([], 'keep')
    """
    if getattr(reader, "adapter", None):
        raise ConfigError("closed-book anchors come from the frozen reader; pass one without an adapter")
    qs = list(dict.fromkeys(q for q in questions if q and q.strip()))
    random.Random(seed).shuffle(qs)
    answers = reader.generate_batch(qs, None, strategy="closed-book")
    return [ReaderExample(q, [], a.text.strip(), "keep") for q, a in zip(qs, answers) if a.text.strip()]


# --------------------------------------------------------------------------- training


@dataclass
class TrainReport:
    """What :func:`train_reader_adapter` did."""

    method: str
    out: str
    trainable_params: int
    frozen_params: int
    steps: int
    examples_seen: int
    best_valid_loss: float | None
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / max(self.frozen_params, 1)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trainable_share": self.trainable_share}


def _encode_example(reader: Any, ex: ReaderExample, *, max_len: int) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids): the reader's own prompt, then the answer and the end of its turn."""
    parts = reader.prompts.build(ex.question, ex.passages)
    tok = reader.tokenizer
    target = list(tok(" " + ex.answer.strip(), add_special_tokens=False)["input_ids"])
    end = tok.eos_token_id if tok.eos_token_id is not None else None
    if end is not None:
        target.append(int(end))
    prompt = list(parts.ids)
    if len(prompt) + len(target) > max_len:
        prompt = prompt[len(prompt) + len(target) - max_len :]  # keep the end (the question and "Answer:")
    return prompt, target


def _choices(reader: Any, ex: ReaderExample, target: list[int]) -> tuple[list[list[int]], int] | None:
    """The answers the reader weighs for ``ex`` (its passages' titles, as ``candidates="titles"``
    spells them, and the gold answer), each ending like ``target``; and the gold's index.
    None when there is nothing to choose between (closed-book, or the gold is the only one)."""
    if not ex.passages:
        return None
    from rag_lfm.eval.qa import normalize_answer
    from rag_lfm.readers.prompts import passage_title

    tok = reader.tokenizer
    end = [target[-1]] if tok.eos_token_id is not None and target and target[-1] == tok.eos_token_id else []
    gold = normalize_answer(ex.answer)
    cands, gi = [list(target)], 0
    for title in dict.fromkeys(passage_title(h) for h in ex.passages):
        if normalize_answer(title) == gold:
            continue  # the gold answer is already there
        cands.append(list(tok(" " + title, add_special_tokens=False)["input_ids"]) + end)
    return (cands, gi) if len(cands) > 1 else None


def _loss(model: Any, prompt: list[int], target: list[int], device: str,
          choices: tuple[list[list[int]], int] | None = None, choice_weight: float = 0.0) -> Any:
    """Token cross-entropy of the gold answer; with ``choices`` and ``choice_weight`` > 0, plus
    ``choice_weight`` x the cross-entropy of choosing the gold among the candidate answers, each
    scored as the reader scores candidates (the mean log-probability of its tokens and its end)."""
    import torch

    if choices is None or choice_weight <= 0:
        ids = torch.tensor([prompt + target], dtype=torch.long, device=device)
        n = len(target)
        # Only the answer's positions need logits: the vocabulary projection is a fifth of a small model.
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=n + 1)
        logits = out.logits[0, -(n + 1) : -1].float()
        return torch.nn.functional.cross_entropy(logits, torch.tensor(target, device=device))
    cands, gold = choices
    # The prompt runs once; its key/value cache is repeated for the candidates, which then cost
    # only their own few tokens (gradients flow through the repeated cache into the prompt).
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[0, -1].float(), -1)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(cands))
    width = max(len(c) for c in cands)
    if width > 1:
        step = torch.zeros((len(cands), width - 1), dtype=torch.long, device=device)
        for j, c in enumerate(cands):
            step[j, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)  # right-padded: pads come after, unseen
        mask = torch.ones((len(cands), len(prompt) + width - 1), dtype=torch.long, device=device)
        pos = torch.arange(len(prompt), len(prompt) + width - 1, device=device)[None].expand(len(cands), -1)
        lp = torch.log_softmax(model(input_ids=step, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                     use_cache=True).logits.float(), -1)
    sums = []
    for j, c in enumerate(cands):
        total = first[c[0]]
        if len(c) > 1:
            total = total + lp[j, torch.arange(len(c) - 1, device=device), torch.tensor(c[1:], device=device)].sum()
        sums.append(total)
    sums_t = torch.stack(sums)
    means = sums_t / torch.tensor([len(c) for c in cands], dtype=torch.float32, device=device)
    token_ce = -sums_t[gold] / len(cands[gold])
    choice_ce = torch.nn.functional.cross_entropy(means[None], torch.tensor([gold], device=device))
    return token_ce + choice_weight * choice_ce


def _save_optimizer(opt: Any, path: Path) -> None:
    from safetensors.torch import save_file

    tensors, scalars = {}, {}
    for i, (pid, st) in enumerate(opt.state_dict()["state"].items()):
        for k, v in st.items():
            if hasattr(v, "shape") and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars[f"{pid}.{k}"] = float(v)
    save_file(tensors, str(path / "optimizer.safetensors"))
    (path / "optimizer.json").write_text(json.dumps(scalars))


def _load_optimizer(opt: Any, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(path / "optimizer.safetensors"))
    scalars = json.loads((path / "optimizer.json").read_text())
    sd = opt.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(scalars.items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v if hasattr(v, "shape") else torch.tensor(v)
    sd["state"] = state
    opt.load_state_dict(sd)


def train_reader_adapter(
    reader: Any,
    train: Sequence[ReaderExample],
    valid: Sequence[ReaderExample] = (),
    *,
    method: str = "lora",
    out: str | Path,
    epochs: int = 1,
    max_steps: int | None = None,
    grad_accum: int = 4,
    lr: float | None = None,
    rank: int = 8,
    alpha: int | None = None,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    top_layers: int | None = None,
    virtual_tokens: int = 16,
    choice_weight: float = 0.0,
    max_len: int = 1024,
    eval_every: int = 10,
    patience: int = 3,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> TrainReport:
    """Train a LoRA or prompt-tuning adapter of ``reader``'s frozen model and save it to ``out``.

    Args:
        reader: a :class:`~rag_lfm.readers.TransformersReader` WITHOUT an adapter (its prompts are
            the training prompts, so train and use match).
        train / valid: examples (``valid`` from documents held out of ``train``: early stopping).
        method: ``"lora"`` (rank ``rank``, ``alpha`` default 2*rank, on ``target_modules`` of every layer, or
            of the ``top_layers`` last ones only: backpropagation then stops there, a large saving on a CPU) or
            ``"prompt"`` (``virtual_tokens`` learned embeddings, started from the text of an instruction).
        epochs / max_steps: passes over ``train`` / a cap on optimizer steps (``grad_accum`` examples each).
        eval_every: optimizer steps between validation losses; the best adapter is kept in ``out``,
            and training stops after ``patience`` evaluations without a gain.
        choice_weight: LoRA only: with passages, add this times a loss on CHOOSING the gold answer among
            the passages' titles, scored whole as ``candidates="titles"`` scores them at answer time (the
            frozen model answers with another passage's title; the token loss alone does not teach it
            which passage to trust). 0 = the token loss alone.
        out: a folder, or a bare name saved under :func:`reader_adapter_home`.
        resume: continue from ``out/checkpoint`` when present.

    Raises:
        ConfigError: a bad method, rank or length, no examples, a reader that already carries an adapter.
    """
    import torch

    peft = _peft()
    if method not in METHODS:
        raise ConfigError(f"reader adapter method {method!r} is not supported; use one of {', '.join(METHODS)}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= 256:
        raise ConfigError(f"LoRA rank {rank!r} is out of range; use an int from 1 to 256")
    if isinstance(virtual_tokens, bool) or not isinstance(virtual_tokens, int) or not 1 <= virtual_tokens <= 512:
        raise ConfigError(f"virtual_tokens {virtual_tokens!r} is out of range; use an int from 1 to 512")
    if int(max_len) < 16:
        raise ConfigError(f"max_len {max_len!r} is out of range; use at least 16 tokens")
    if not 0.0 <= float(choice_weight) <= 100.0:
        raise ConfigError(f"choice_weight {choice_weight!r} is out of range; use a number from 0 (token loss only) to 100")
    if choice_weight and method != "lora":
        raise ConfigError(f"choice_weight applies to method 'lora' only (got method {method!r}); use choice_weight=0")
    if not train:
        raise ConfigError("no training examples: pass at least one (question, passages, answer) example")
    if getattr(reader, "adapter", None):
        raise ConfigError("train from a reader without an adapter (TransformersReader(model)), not one that already carries one")
    out = Path(out)
    if len(out.parts) == 1 and not out.is_absolute() and not str(out).startswith("."):
        out = reader_adapter_home() / str(out)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    base = reader.model
    device = reader.device
    before = base_fingerprint(base)
    frozen = sum(p.numel() for p in base.parameters())
    if method == "lora":
        n_layers = int(model_signature(base).get("num_hidden_layers") or 0)
        layers = None
        if top_layers is not None:
            if isinstance(top_layers, bool) or not isinstance(top_layers, int) or not 1 <= top_layers <= max(n_layers, 1):
                raise ConfigError(f"top_layers {top_layers!r} is out of range; use an int from 1 to {n_layers} (the model's layers)")
            layers = list(range(n_layers - top_layers, n_layers))
        names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
        unknown = [m for m in target_modules if m not in names]
        if unknown or not target_modules:
            linear = sorted({n.rsplit(".", 1)[-1] for n, m in base.named_modules() if type(m).__name__ == "Linear"})
            raise ConfigError(f"LoRA target modules {unknown or list(target_modules)!r} are not modules of this model; "
                              f"use some of: {', '.join(linear)}")
        cfg = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, target_modules=list(target_modules),
                              task_type="CAUSAL_LM", layers_to_transform=layers, layers_pattern="layers" if layers else None)
    else:
        cfg = peft.PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=virtual_tokens, prompt_tuning_init="TEXT",
            prompt_tuning_init_text="Answer with the exact name or phrase from the passage that answers the question.",
            tokenizer_name_or_path=str(Path(reader.tokenizer.name_or_path)),
        )
    # PEFT wraps the reader's model in place for LoRA: train on a deep copy so the reader stays frozen.
    import copy

    work = copy.deepcopy(base)
    work.requires_grad_(False)
    pm = peft.get_peft_model(work, cfg)
    pm.train()
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    lr = lr if lr is not None else (2e-4 if method == "lora" else 3e-2)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    def encode(ex: ReaderExample) -> tuple[list[int], list[int], Any]:
        prompt, target = _encode_example(reader, ex, max_len=max_len)
        return prompt, target, _choices(reader, ex, target) if choice_weight else None

    enc_train = [encode(ex) for ex in train]
    enc_valid = [encode(ex) for ex in valid]
    order: list[int] = []
    for e in range(max(1, int(epochs))):
        idx = list(range(len(enc_train)))
        random.Random(seed + e).shuffle(idx)
        order += idx
    total_steps = len(order) // grad_accum
    if max_steps is not None:
        total_steps = min(total_steps, int(max_steps))
    ckpt = out / "checkpoint"
    state = {"step": 0, "best": None, "stale": 0, "history": []}
    if resume and (ckpt / "state.json").is_file():
        state = json.loads((ckpt / "state.json").read_text())
        peft.set_peft_model_state_dict(pm, peft.load_peft_weights(str(ckpt)))
        _load_optimizer(opt, ckpt)

    def valid_loss() -> float | None:
        if not enc_valid:
            return None
        pm.eval()
        with torch.no_grad():
            v = sum(float(_loss(pm, p, t, device, c, choice_weight)) for p, t, c in enc_valid) / len(enc_valid)
        pm.train()
        return v

    def save_best() -> None:
        out.mkdir(parents=True, exist_ok=True)
        pm.save_pretrained(str(out))
        meta = {"method": method, "base_model": reader.model_ref, "base_signature": model_signature(base),
                "trainable_params": trainable, "frozen_params": frozen, "seed": seed, "lr": lr, "rank": rank if method == "lora" else None, "top_layers": top_layers if method == "lora" else None,
                "virtual_tokens": virtual_tokens if method == "prompt" else None, "choice_weight": choice_weight, "forms": _forms(train),
                "train_examples": len(train), "valid_examples": len(valid), "history": state["history"],
                "best_valid_loss": state["best"], "reader_options": {"max_passage_tokens": reader.max_passage_tokens,
                                                                      "one_shot": reader.one_shot}}
        from rag_lfm.atomic import write_json

        write_json(out / META_FILE, meta)

    if state["step"] == 0 and state["best"] is None:
        v0 = valid_loss()
        state["history"].append({"step": 0, "train_loss": None, "valid_loss": v0})
        state["best"] = v0
        save_best()  # the untrained adapter (identity: LoRA's B = 0) is the one to beat
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state["step"], desc=f"reader {method}", unit="step")
    stopped = False
    running: list[float] = []
    while state["step"] < total_steps:
        s = state["step"]
        opt.zero_grad()
        acc = 0.0
        for j in order[s * grad_accum : (s + 1) * grad_accum]:
            p, t, c = enc_train[j]
            loss = _loss(pm, p, t, device, c, choice_weight) / grad_accum
            loss.backward()
            acc += float(loss.detach())
        opt.step()
        state["step"] = s + 1
        running.append(acc)
        if bar is not None:
            bar.set_postfix(loss=round(sum(running[-10:]) / len(running[-10:]), 4))
            bar.update(1)
        if state["step"] % eval_every == 0 or state["step"] == total_steps:
            v = valid_loss()
            state["history"].append({"step": state["step"], "train_loss": sum(running[-eval_every:]) / len(running[-eval_every:]),
                                     "valid_loss": v})
            if v is None or state["best"] is None or v < state["best"]:
                state["best"], state["stale"] = v, 0
                save_best()
            else:
                state["stale"] += 1
            ckpt.mkdir(parents=True, exist_ok=True)
            pm.save_pretrained(str(ckpt))
            _save_optimizer(opt, ckpt)
            (ckpt / "state.json").write_text(json.dumps(state))
            if enc_valid and state["stale"] >= patience:
                stopped = True
                break
    if bar is not None:
        bar.close()
    after = base_fingerprint(base)
    if after != before or base_fingerprint(pm.get_base_model()) != before:  # pragma: no cover - a guard: training must never touch the reader's weights
        raise RuntimeError("the base model's weights changed during adapter training")
    meta = json.loads((out / META_FILE).read_text())
    meta["history"], meta["best_valid_loss"] = state["history"], state["best"]
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    meta["stopped_early"] = stopped
    from rag_lfm.atomic import write_json

    write_json(out / META_FILE, meta)
    return TrainReport(method, str(out), trainable, frozen, state["step"], state["step"] * grad_accum, state["best"],
                       time.perf_counter() - t0, state["history"], stopped)


def _forms(examples: Sequence[ReaderExample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e.form] = out.get(e.form, 0) + 1
    return out

