"""A frozen transformers causal LM as a reader: closed-book, in-context, REPLUG, extractive.

One greedy decoding loop serves every strategy, so they share batching, stopping
and streaming:

- prompts are left-padded into one batch; positions come from the attention mask,
  so a padded row decodes exactly as it would alone;
- a row stops at the end-of-turn token or at the first token holding a newline
  (answers are one line: this is what keeps a small model from rambling on);
- REPLUG runs its k prompts per question as rows of the same batch and, at each
  step, mixes their next-token distributions with the retrieval weights before
  taking the argmax, which then feeds every row of that question.

The model loads on first use (:meth:`TransformersReader.warm_up`), its weights are
frozen (``requires_grad_(False)``, ``eval()``) and every forward pass runs under
``torch.inference_mode``.

Example:
    >>> reader = TransformersReader("SmolLM2-135M-Instruct", max_new_tokens=16)  # doctest: +SKIP
    >>> reader.generate("Who painted Water Lilies?", hits).text  # doctest: +SKIP
    'Claude Monet'
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.eval.qa import normalize_answer
from rag_lfm.readers.base import Capabilities, PromptTooLongError, check_reader, check_strategy
from rag_lfm.readers.prompts import (
    MAX_ANSWER_WORDS,
    PromptBuilder,
    PromptParts,
    extractive_answer,
    keep_candidates,
    make_answer,
    plan_prompts,
)
from rag_lfm.readers.streaming import TextAssembler, thread_stream
from rag_lfm.readers.types import Answer, Completion
from rag_lfm.types import Hit

_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _torch():
    import torch

    return torch


def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when torch sees a GPU, else ``"mps"`` or ``"cpu"``."""
    torch = _torch()
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512_BF16 or AMX tiles): there, bfloat16
    matmuls run ~1.6x faster than float32 (oneDNN); elsewhere they are emulated, several times slower."""
    cpu = getattr(_torch(), "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _crop(cache: Any, length: int) -> None:
    """Cut a key/value cache back to its first ``length`` positions.

    A negative argument removes that many positions in every transformers version
    (older ones also take a positive max length; newer ones only the negative form).
    """
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _kv_snapshot(cache: Any) -> list[tuple[Any, Any]] | None:
    """The key/value tensors of every layer of a plain ``DynamicCache`` (references, not copies), else None.

    A ``DynamicCache`` replaces its tensors on every change (``cat``, ``repeat_interleave``,
    indexing) and never writes into them, so references taken after the prompt keep the
    prompt's cache however decoding goes on (rows dropped, tokens appended); other cache
    kinds (sliding windows, quantised) carry more state, and get None.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # an older transformers without cache layers
        return None
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _kv_restore(cache: Any, snapshot: list[tuple[Any, Any]]) -> None:
    """Put back the tensors :func:`_kv_snapshot` took."""
    for layer, (keys, values) in zip(cache.layers, snapshot):
        layer.keys, layer.values = keys, values


def _length_passes(lengths: Sequence[int], overhead: int = 32) -> list[list[int]]:
    """Split sequences into forward passes of similar lengths: the indices of each pass.

    A pass over ``n`` sequences right-padded to width ``m`` costs about ``overhead + n * m``
    token-evaluations (``overhead``: a pass's fixed cost, reading every weight once, in
    tokens). Sorted by length, the cheapest split into contiguous runs is found exactly
    (dynamic programming over split points; a few dozen candidates at most).

    Example:
        >>> _length_passes([3, 19, 2, 4, 3])
        [[2, 0, 4, 3], [1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [math.inf] * n  # best[j]: cheapest cost of the first j sorted sequences
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]  # the longest of any run ending at j
        for i in range(j):
            cost = best[i] + overhead + (j - i) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
    passes, j = [], n
    while j > 0:
        passes.append(order[cut[j] : j])
        j = cut[j]
    return passes[::-1]


def _holds_span(tokens: list[int], span: list[int]) -> bool:
    """Whether ``span`` occurs contiguously in ``tokens``."""
    n = len(span)
    first = span[0] if span else None
    return any(tokens[i : i + n] == span for i, t in enumerate(tokens) if t == first)


def word_edges(pieces: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per vocabulary entry: does its text start, and end, with a letter or digit?

    A token that starts with one continues the word before it (SmolLM2 writes "1969" as
    " ", "1", "9", "6", "9" and "Lennon" as " L", "ennon"), which is how the copy
    constraint keeps answers to whole words.
    """
    starts = np.array([bool(p) and p[0].isalnum() for p in pieces], dtype=bool)
    ends = np.array([bool(p) and p[-1].isalnum() for p in pieces], dtype=bool)
    return starts, ends


class _CopyConstraint:
    """Keeps an answer a contiguous span of whole words of one token sequence (the passages).

    It tracks every position in the passages where the answer so far could end; the
    allowed next tokens are the ones that follow those positions. A 135M model
    left free tends to start "The article described as ..."; constrained, it must
    choose a name or phrase that is in the passages, which is what extractive
    factoid QA asks for. When the answer so far matches nowhere (under REPLUG
    another passage chose the token) the row stops constraining.

    With the vocabulary's word edges (:func:`word_edges`) a span starts and ends on word
    boundaries only: it never starts inside a word, and it may end only where the passage's
    word ends (so "1" out of "1969" or "Lenn" out of "Lennon" is no answer).
    """

    def __init__(self, tokens: list[int], edges: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.tokens = tokens
        self.ends: list[int] | None = None  # None: nothing generated yet
        n = len(tokens)
        if edges is None:
            self.boundary = [True] * (n + 1)  # boundary[p]: a word boundary lies just before position p
        else:
            starts, ends = edges
            self.boundary = [p == 0 or p == n or not starts[tokens[p]] or not ends[tokens[p - 1]] for p in range(n + 1)]

    def allowed(self) -> list[int]:
        if self.ends is None:
            return sorted({t for p, t in enumerate(self.tokens) if self.boundary[p]})
        # An empty list also when the span matches nowhere any more (REPLUG: another
        # passage chose the token): this row then adds nothing to the group's options.
        n = len(self.tokens)
        return sorted({self.tokens[p + 1] for p in self.ends if p + 1 < n})

    def can_end(self) -> bool:
        """Whether the answer so far may stop here: it ends where a word of the passage ends."""
        return self.ends is not None and any(self.boundary[p + 1] for p in self.ends)

    def advance(self, token: int) -> None:
        if self.ends is None:
            self.ends = [p for p, t in enumerate(self.tokens) if t == token and self.boundary[p]]
        else:
            n = len(self.tokens)
            self.ends = [p + 1 for p in self.ends if p + 1 < n and self.tokens[p + 1] == token]


class TransformersReader:
    """A reader over any local transformers causal LM (or seq2seq model).

    Args:
        model: a local model folder or a known short name (``"SmolLM2-135M-Instruct"``),
            resolved through :func:`rag_lfm.models.resolve_model`.
        device: ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        dtype: ``"auto"`` (bfloat16 on a GPU, and on a CPU with native bfloat16 dot products,
            AVX512_BF16 or AMX, :func:`cpu_has_bf16`; float32 on other CPUs, where bfloat16
            matmuls run several times slower), or ``"float32"``/``"bfloat16"``/``"float16"``.
            On the dev splits bfloat16 answered as well as float32 (EM 0.507 vs 0.503 general,
            0.593 vs 0.587 description task) at 1.6x the speed on an AVX512_BF16 CPU
            (benchmarks/RESULTS.md, issue 13).
        max_new_tokens: the longest answer, in tokens.
        context_window: tokens the prompt plus answer may use; default the model's
            ``max_position_embeddings``. Set it lower to bound CPU cost.
        max_passage_tokens / min_passage_tokens: the token budget rule
            (:mod:`rag_lfm.readers.prompts`).
        batch_size: prompts per forward pass in batched generation.
        replug_temperature: REPLUG weights are ``softmax(score / replug_temperature)``.
        stop_at_newline: end an answer at its first newline.
        use_chat_template: ``None`` uses the model's chat template when it has one.
        constrain: ``"copy"`` (default): with passages, the answer must be a span copied
            from them (a name or phrase the passages hold); ``"none"``: free generation.
        one_shot: show one worked example before the question (see ``prompts``).
        candidates: ``"titles"`` (default): with passages, the decoded answer competes with
            the passages' titles, each scored whole by the model (:meth:`_rescore`; a
            cheap pass over the candidates' tokens only); ``"none"``: the decoded answer
            as it is. Streaming always yields the decoded answer.
        answer_starts: decode each answer from this many of its likeliest first tokens (each
            continued greedily, in one batch) and let the answers compete as candidates: greedy
            decoding otherwise commits to one first token.
        drop_echoes: a candidate that only repeats words of the question ("John Lennon" to
            "Who was John Lennon's songwriting partner?") loses to any other candidate.
        adapter: a reader adapter (LoRA or prompt tuning, trained by ``rag-lfm tune reader``): a
            folder or a name under ``<cache_dir>/reader-adapters`` (:mod:`rag_lfm.adapters.reader`).
            It changes the model's weights through PEFT at load only (LoRA layers beside the frozen
            ones, or virtual prompt tokens); the base weights stay as they are, and every decoding
            option above works the same. Needs ``pip install "rag-lfm[adapters]"``.
    """

    def __init__(
        self,
        model: str | Path = "SmolLM2-135M-Instruct",
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_new_tokens: int = 24,
        context_window: int | None = None,
        max_passage_tokens: int = 160,
        min_passage_tokens: int = 24,
        batch_size: int = 16,
        replug_temperature: float = 0.05,
        stop_at_newline: bool = True,
        use_chat_template: bool | None = None,
        constrain: str = "copy",
        one_shot: bool = True,
        candidates: str = "titles",
        answer_starts: int = 4,
        drop_echoes: bool = True,
        adapter: str | Path | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ConfigError(f"dtype {dtype!r} is not supported; valid values: {', '.join(_DTYPES)}")
        for label, value in [("max_new_tokens", max_new_tokens), ("batch_size", batch_size),
                             ("max_passage_tokens", max_passage_tokens)]:
            if int(value) < 1:
                raise ConfigError(f"{label} must be >= 1, got {value!r}")
        if constrain not in ("copy", "none"):
            raise ConfigError(f"constrain {constrain!r} is not valid; use 'copy' (answers are spans of the passages) or 'none'")
        if candidates not in ("titles", "none"):
            raise ConfigError(f"candidates {candidates!r} is not valid; use 'titles' (titles compete with the decoded answer) or 'none'")
        if replug_temperature <= 0:
            raise ConfigError(f"replug_temperature must be > 0, got {replug_temperature!r}")
        if not isinstance(answer_starts, int) or not 1 <= answer_starts <= 16:
            raise ConfigError(f"answer_starts must be an int from 1 to 16, got {answer_starts!r}")
        self.model_ref = str(model)
        self.name = Path(str(model)).name or str(model)
        self.device_arg = device
        self.dtype_arg = dtype
        self.max_new_tokens = int(max_new_tokens)
        self.context_window_arg = context_window
        self.max_passage_tokens = int(max_passage_tokens)
        self.min_passage_tokens = int(min_passage_tokens)
        self.batch_size = int(batch_size)
        self.replug_temperature = float(replug_temperature)
        self.stop_at_newline = stop_at_newline
        self.use_chat_template = use_chat_template
        self.constrain = constrain
        self.one_shot = one_shot
        self.candidates = candidates
        self.answer_starts = answer_starts
        self.drop_echoes = bool(drop_echoes)
        self.adapter = str(adapter) if adapter else None
        self.adapter_info: dict[str, Any] | None = None
        self.share_prefix = True
        self._prefix_kv: dict[tuple[int, tuple[int, ...]], Any] = {}  # see _prefix_cache
        self._model = None
        self._tokenizer = None
        self._prompts: PromptBuilder | None = None
        self._stop_ids: Any = None
        self._eos_ids: Any = None
        self._cache_kw = "past_key_values"
        self.is_seq2seq = False

    # Everything: the model runs in this process, its logits are at hand at every step.
    capabilities = Capabilities(logprobs=True, logits=True, batching=True, streaming=True, completion=True)

    # -- loading -----------------------------------------------------------------------------
    @property
    def model(self):
        self.warm_up()
        return self._model

    @property
    def tokenizer(self):
        self.warm_up()
        return self._tokenizer

    @property
    def prompts(self) -> PromptBuilder:
        self.warm_up()
        assert self._prompts is not None
        return self._prompts

    def warm_up(self) -> TransformersReader:
        """Load the tokenizer and model (once); raises ModelNotFoundError for a folder that is no model."""
        if self._model is not None:
            return self
        torch = _torch()
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        from rag_lfm.models import require_transformers_folder, resolve_model

        path = resolve_model(self.model_ref)
        require_transformers_folder(path, path, "reader")
        try:
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"reader model {str(path)!r} could not be read as a transformers model: {exc}") from exc
        self.is_seq2seq = bool(getattr(config, "is_encoder_decoder", False))
        device = resolve_device(self.device_arg)
        dtype = self.dtype_arg
        if dtype == "auto":
            dtype = "bfloat16" if device != "cpu" or cpu_has_bf16() else "float32"
        auto_cls = AutoModelForSeq2SeqLM if self.is_seq2seq else AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # a 0.5 s load needs no bar (and --json output stays clean)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = auto_cls.from_pretrained(path, dtype=getattr(torch, dtype))
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(
                f"reader model {str(path)!r} could not be loaded as a {'seq2seq' if self.is_seq2seq else 'causal'} "
                f"LM with its tokenizer: {exc}"
            ) from exc
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        model.to(device)
        model.eval()
        model.requires_grad_(False)  # frozen: a reader never trains its model
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        window = self.context_window_arg or int(
            getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 0) or 2048
        )
        if window <= self.max_new_tokens:
            raise ConfigError(
                f"context_window {window} leaves no room for a prompt with max_new_tokens={self.max_new_tokens}; "
                "raise context_window or lower max_new_tokens"
            )
        self.context_window = window
        self.device = device
        self.dtype = dtype
        self._tokenizer = tokenizer
        self._model = model
        self._prompts = PromptBuilder(
            tokenizer,
            budget=window - self.max_new_tokens,
            max_passage_tokens=self.max_passage_tokens,
            min_passage_tokens=self.min_passage_tokens,
            use_chat_template=self.use_chat_template,
            one_shot=self.one_shot,
        )
        self._stop_ids = self._make_stop_ids(self.stop_at_newline)
        self._eos_ids = self._make_stop_ids(False)  # raw completions end at end-of-sequence only
        if self.adapter:
            from rag_lfm.adapters.reader import load_reader_adapter

            try:
                self.adapter_info = load_reader_adapter(self, self.adapter)
            except BaseException:  # any failure, interrupts included: clean up, then re-raise
                self._model = None  # not half-loaded: the next warm_up starts again
                raise
            self.name = f"{self.name}+{Path(self.adapter_info['path']).name}"
        return self

    @property
    def _pieces(self) -> list[str]:
        """The text of every vocabulary entry (decoded once)."""
        if getattr(self, "_pieces_cache", None) is None:
            tok = self._tokenizer
            self._pieces_cache = tok.batch_decode([[i] for i in range(len(tok))])
        return self._pieces_cache

    @property
    def _word_edges(self) -> tuple[np.ndarray, np.ndarray]:
        if getattr(self, "_edges_cache", None) is None:
            self._edges_cache = word_edges(self._pieces)
        return self._edges_cache

    def _make_stop_ids(self, newline: bool):
        torch = _torch()
        tok = self._tokenizer
        model = self._model
        stops: set[int] = set()
        for source in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
            if isinstance(source, int):
                stops.add(source)
            elif isinstance(source, (list, tuple)):
                stops.update(int(s) for s in source)
        if newline:
            # Every vocabulary entry whose text holds a newline ends a one-line answer.
            stops.update(i for i, p in enumerate(self._pieces) if "\n" in p)
        mask = torch.zeros(max(len(tok), model.config.get_text_config().vocab_size), dtype=torch.bool)
        mask[list(stops)] = True
        return mask.to(self.device)

    def base_weights_fingerprint(self) -> str:
        """sha256 over the base model's weights only (an adapter's own weights left out): the same
        with and without an adapter, before and after training one."""
        from rag_lfm.adapters.reader import base_fingerprint

        return base_fingerprint(self.model)

    def weights_fingerprint(self) -> str:
        """sha256 over every parameter and buffer: equal before and after any use of the reader."""
        import hashlib

        h = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().numpy().tobytes())
        return h.hexdigest()

    # -- prompts ------------------------------------------------------------------------------
    def _plan(self, question: str, passages: Sequence[Hit], strategy: str) -> tuple[list[PromptParts], Any]:
        """The prompts for one question (k of them under REPLUG) and their mixture weights (a tensor)."""
        parts, weights = plan_prompts(self.prompts, question, passages, strategy, self.replug_temperature)
        return parts, None if weights is None else _torch().tensor(weights, dtype=_torch().float32)

    # -- decoding -----------------------------------------------------------------------------
    def _forward(self, ids, mask, positions, cache):
        kwargs = {self._cache_kw: cache} if cache is not None else {}
        out = self._model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1, **kwargs
        )
        new_cache = getattr(out, "cache", None)
        if new_cache is None:
            new_cache = out.past_key_values
        return out.logits[:, -1, :], new_cache

    def _prefix_cache(self, head: list[int]) -> Any:
        """The key/value cache of a prompt head shared by every row of a batch (batch 1), computed
        once and kept across calls: every question of a strategy starts with the same instructions
        (and example), ~170 tokens, ~5% of the time of an 8-question batch on a CPU.

        The last four heads are kept (one per strategy and chat template in use); decoding gets a
        copy, which it grows and re-indexes, never the one kept. A reader's model is frozen after
        ``warm_up`` (adapters train on a copy); the key also holds the model object's id, so a
        reader given another model does not reuse the first one's cache.
        """
        import copy

        torch = _torch()
        key = (id(self._model), tuple(head))
        kept = self._prefix_kv.get(key)
        if kept is None:
            dev = self.device
            ids = torch.tensor([head], dtype=torch.long, device=dev)
            _, kept = self._forward(ids, torch.ones_like(ids), torch.arange(len(head), device=dev)[None], None)
            while len(self._prefix_kv) >= 4:
                self._prefix_kv.pop(next(iter(self._prefix_kv)))
            self._prefix_kv[key] = kept
        return copy.deepcopy(kept)

    def _decode(
        self,
        prompts: list[list[int]],
        groups: list[int],
        weights: list[float] | None,
        n_groups: int,
        on_token: Callable[[int, int], bool | None] | None = None,
        copy_from: list[list[int]] | None = None,
        prefix_len: int = 0,
        candidates: list[list[list[int]]] | None = None,
        scored: list[list[dict[str, Any]]] | None = None,
        max_new_tokens: int | None = None,
        stop_mask: Any = None,
        on_logits: Callable[[Any], None] | None = None,
        starts: int = 1,
        echo: list[str] | None = None,
    ) -> tuple[list[list[int]], list[str]]:
        """Greedy decoding of ``prompts`` as one left-padded batch.

        Row ``r`` belongs to group ``groups[r]`` (a question); with ``weights`` the
        rows of a group are mixed (REPLUG), else each group has exactly one row.
        With ``copy_from`` (one token list per row), the answer is constrained to a
        span copied from that row's passages (see :class:`_CopyConstraint`).
        When every prompt starts with the same ``prefix_len`` tokens, the prefix runs
        once (batch 1) and its cache is repeated for the rows, with the rows' left
        padding placed after it (masked out, positions kept contiguous).
        With ``candidates`` (token lists per group, e.g. the passages' titles), the decoded
        answer competes with them once decoding ends (see :meth:`_rescore`); each
        group's candidates and scores are appended to ``scored``.
        ``on_token(g, t)`` sees each token as it is chosen; returning True ends group
        ``g`` there (finish reason ``"stop"``: a stop string, or a consumer that left).
        ``max_new_tokens`` and ``stop_mask`` (a boolean mask over the vocabulary)
        default to the reader's; ``on_logits`` sees each step's raw logits (rows, V).
        With ``starts = n > 1`` each group is decoded ``n`` times, from its ``n`` likeliest
        first tokens (each continued greedily), and the ``n`` answers compete as candidates;
        ``echo`` (each group's question) drops candidates the question itself
        holds (see :meth:`_choose`). Returns the generated ids and the finish reason of each group.
        """
        torch = _torch()
        with torch.inference_mode():
            dev = self.device
            pad = int(self._tokenizer.pad_token_id)
            # Keep at least one token of every row outside the shared prefix.
            # One row gains too: the head's cache is kept across calls (_prefix_cache).
            shared = min(prefix_len, min(len(p) for p in prompts) - 1) if self.share_prefix else 0
            if shared > 0 and any(p[:shared] != prompts[0][:shared] for p in prompts):
                shared = 0
            cache = None
            if shared:
                cache = self._prefix_cache(prompts[0][:shared])
                cache.batch_repeat_interleave(len(prompts))
                prompts = [p[shared:] for p in prompts]
            width = max(len(p) for p in prompts)
            ids = torch.full((len(prompts), width), pad, dtype=torch.long)
            mask = torch.zeros((len(prompts), width), dtype=torch.long)
            for r, p in enumerate(prompts):
                ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
                mask[r, width - len(p):] = 1
            ids, mask = ids.to(dev), mask.to(dev)
            positions = (mask.cumsum(-1) - 1).clamp(min=0) + shared
            if shared:
                mask = torch.cat([torch.ones((len(prompts), shared), dtype=mask.dtype, device=dev), mask], dim=1)
            group_idx = torch.tensor(groups, dtype=torch.long, device=dev)
            w = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=dev)
            logits, cache = self._forward(ids, mask, positions, cache)
            next_pos = positions[:, -1:] + 1
            prompt_state = (logits, mask, next_pos, mask.shape[1])  # for _rescore
            # Rows whose answer has ended leave the batch (every later step costs in proportion to
            # the rows left); the prompt's cache is kept aside for _rescore. Not with on_logits,
            # whose callers index each step's logits by group.
            prompt_kv = _kv_snapshot(cache) if on_logits is None else None
            copy = None if copy_from is None else [_CopyConstraint(c, self._word_edges) for c in copy_from]
            stop_ids = self._stop_ids if stop_mask is None else stop_mask
            n_rows, n_first = len(prompts), n_groups
            row_group0, w0 = group_idx, w
            forced = None
            if starts > 1:
                # Alternative answer starts: every row is repeated `starts` times, copy m of group g
                # becoming group g * starts + m, forced to the group's m-th likeliest first token.
                first = self._first_tokens(logits, group_idx, w, copy, stop_ids, n_groups, starts)
                rep_rows = torch.arange(n_rows * starts, device=dev) // starts
                logits, mask, next_pos = logits[rep_rows], mask[rep_rows], next_pos[rep_rows]
                cache.batch_repeat_interleave(starts)
                group_idx = group_idx[rep_rows] * starts + torch.arange(starts, device=dev).repeat(n_rows)
                w = None if w is None else w[rep_rows]
                if copy is not None:
                    copy = [_CopyConstraint(copy_from[r], self._word_edges) for r in rep_rows.tolist()]
                forced = torch.tensor([f[min(m, len(f) - 1)] for f in first for m in range(starts)], dtype=torch.long, device=dev)
                n_groups *= starts
            out: list[list[int]] = [[] for _ in range(n_groups)]
            reasons = ["length"] * n_groups
            # Among several options, an answer past MAX_ANSWER_WORDS words competes only as a last
            # resort (keep_candidates): decoding it further is wasted, so it ends, unfinished, once it
            # holds two words more than that (one more word could still vanish: "th" + "e" is an article).
            cut_long = None
            if candidates is not None or starts > 1:
                n_opts = [starts + (len(candidates[q]) if candidates is not None else 0) for q in range(n_first)]
                cut_long = [n_opts[g // starts] > 1 for g in range(n_groups)]
            done = torch.zeros(n_groups, dtype=torch.bool, device=dev)
            stop_rows = stop_ids.nonzero().flatten()
            # rows_ok is filled on the CPU: index it with a CPU copy, made once (on a GPU,
            # stop_rows.cpu() inside the row loop was a device sync per row per step).
            stop_rows_cpu = stop_rows.cpu()
            n_steps = self.max_new_tokens if max_new_tokens is None else max_new_tokens
            for step in range(n_steps):
                if on_logits is not None:
                    on_logits(logits)
                rows_ok = None
                if copy is not None:
                    # Each row may emit a token that continues a span of its own passages;
                    # a stop is allowed once the answer has a token (an empty answer is no
                    # answer). A row whose span can no longer continue drops out.
                    rows_ok = torch.zeros(logits.shape, dtype=torch.bool)
                    for r, c in enumerate(copy):
                        ok = c.allowed()
                        if ok:
                            rows_ok[r, ok] = True
                        if step > 0 and c.can_end():
                            rows_ok[r, stop_rows_cpu] = True
                    rows_ok = rows_ok.to(dev)
                if w is None:
                    if rows_ok is not None:
                        # a row with no continuation left can only stop
                        dead = ~rows_ok.any(-1)
                        rows_ok[dead] = stop_ids[: rows_ok.shape[-1]][None].expand(int(dead.sum()), -1)
                        logits = logits.masked_fill(~rows_ok, float("-inf"))
                    tok_g = torch.zeros(n_groups, dtype=torch.long, device=dev)  # (ended groups have no rows)
                    tok_g[group_idx] = logits.argmax(-1)
                else:
                    # REPLUG: p(t) = sum_r w_r p_r(t); under the copy constraint each p_r is
                    # renormalised over its own passage's continuations, so passages vote
                    # for spans they hold, and a row whose span ended elsewhere weighs 0.
                    row_w = w
                    if rows_ok is not None:
                        logits = logits.masked_fill(~rows_ok, float("-inf"))
                        row_w = w * rows_ok.any(-1)
                        logits = torch.where(rows_ok.any(-1, keepdim=True), logits, torch.zeros_like(logits))
                    probs = torch.softmax(logits.float(), dim=-1) * row_w[:, None]
                    mixed = torch.zeros((n_groups, probs.shape[-1]), dtype=probs.dtype, device=dev)
                    mixed.index_add_(0, group_idx, probs)
                    tok_g = mixed.argmax(-1)
                    # a group none of whose rows can continue stops
                    alive = torch.zeros(n_groups, dtype=row_w.dtype, device=dev).index_add_(0, group_idx, row_w) > 0
                    tok_g = torch.where(alive, tok_g, torch.full_like(tok_g, int(stop_rows[0])))
                if step == 0 and forced is not None:
                    tok_g = forced
                is_stop = stop_ids[tok_g] & ~done
                new = (~done & ~is_stop).nonzero().flatten().tolist()
                toks = tok_g.tolist()
                overlong = []
                for g in new:
                    out[g].append(toks[g])
                    if on_token is not None and on_token(g, toks[g]):
                        is_stop[g] = True  # the caller ends this group here (a stop string)
                    elif cut_long is not None and cut_long[g] and len(out[g]) > MAX_ANSWER_WORDS + 1 \
                            and len(normalize_answer(self._text(out[g])).split()) > MAX_ANSWER_WORDS + 1:
                        overlong.append(g)
                for g in is_stop.nonzero().flatten().tolist():
                    reasons[g] = "stop"
                done |= is_stop
                done[overlong] = True  # (reason "length": unfinished, as if it had run to the limit)
                if bool(done.all()) or step + 1 == n_steps:
                    break  # (no forward pass for a token that would never be read)
                tok_r = tok_g[group_idx]
                if copy is not None:
                    for r, t in enumerate(tok_r.tolist()):
                        copy[r].advance(t)
                if prompt_kv is not None:
                    keep = ~done[group_idx]
                    if not bool(keep.all()):
                        idx = keep.nonzero().flatten()
                        tok_r, mask, next_pos, group_idx = tok_r[idx], mask[idx], next_pos[idx], group_idx[idx]
                        w = None if w is None else w[idx]
                        copy = None if copy is None else [copy[i] for i in idx.tolist()]
                        cache.batch_select_indices(idx)
                mask = torch.cat([mask, torch.ones((mask.shape[0], 1), dtype=mask.dtype, device=dev)], dim=1)
                logits, cache = self._forward(tok_r[:, None], mask, next_pos, cache)
                next_pos = next_pos + 1
            if candidates is None and starts == 1 and echo is None:
                return out, reasons
            # Collapse the alternative starts: each question's answers (and titles) compete.
            options: list[list[tuple[list[int], str]]] = []
            unfinished: list[set[int]] = []
            for g in range(n_first):
                opts = [(out[g * starts + m], "decoded" if m == 0 else "start") for m in range(starts)]
                unfinished.append({m for m in range(starts) if reasons[g * starts + m] == "length"})
                opts += [(t, "title") for t in (candidates[g] if candidates is not None else [])]
                options.append(opts)
            # With the prompt's cache kept aside (prompt_kv) its rows are there once each: stride 1.
            best, found = self._choose(cache, prompt_state, row_group0, w0, options, copy_from, echo,
                                       stride=1 if prompt_kv is not None else starts,
                                       unfinished=unfinished if starts > 1 else None, prompt_kv=prompt_kv)
            final_out, final_reasons = [], []
            for g in range(n_first):
                b = best[g]
                final_out.append(options[g][b][0])
                final_reasons.append(reasons[g * starts + b] if b < starts else "stop")
            if scored is not None:
                scored.extend(found)
            return final_out, final_reasons

    def _first_tokens(self, logits, group_idx, w, copy, stop_ids, n_groups: int, n: int) -> list[list[int]]:
        """Each group's ``n`` likeliest first answer tokens (copy-constrained; REPLUG-mixed), best first."""
        torch = _torch()
        lg = logits.float()
        if copy is not None:
            ok = torch.zeros(lg.shape, dtype=torch.bool)
            for r, c in enumerate(copy):
                allowed = c.allowed()
                if allowed:
                    ok[r, allowed] = True
            lg = lg.masked_fill(~ok.to(lg.device), float("-inf"))
        lg = lg.masked_fill(stop_ids[: lg.shape[-1]][None], float("-inf"))  # an answer starts with a token
        probs = torch.softmax(lg, -1).nan_to_num(0.0)
        if w is not None:
            probs = probs * w[:, None]
        mixed = torch.zeros((n_groups, probs.shape[-1]), dtype=probs.dtype, device=probs.device)
        mixed.index_add_(0, group_idx, probs)
        top = mixed.topk(n, dim=-1)
        out = []
        for g in range(n_groups):
            toks = [t for t, v in zip(top.indices[g].tolist(), top.values[g].tolist()) if v > 0]
            out.append(toks or top.indices[g].tolist()[:1])
        return out

    def _choose(
        self, cache, prompt_state, row_group, w, options, contexts, echo, *, stride: int = 1,
        unfinished: list[set[int]] | None = None, prompt_kv=None,
    ) -> tuple[list[int], list[list[dict[str, Any]]]]:
        """Pick each group's answer among its options (decoded answers, alternative starts, titles).

        Which options compete is :func:`~rag_lfm.readers.prompts.keep_candidates`'s rule (``echo``:
        the questions; ``unfinished``: options that ran to ``max_new_tokens`` without ending). The rest are
        scored whole by :meth:`_rescore`. Returns the index of the chosen option per group and
        the scored candidates (``Answer.candidates``).
        """
        kept = [keep_candidates([self._text(ids) if ids else "" for ids, _ in opts], echo[g] if echo else None,
                                unfinished[g] if unfinished is not None else frozenset())
                for g, opts in enumerate(options)]
        scores = self._rescore(cache, prompt_state, row_group, w, [[options[g][i][0] for i in kept[g]] for g in range(len(options))],
                               contexts, stride=stride, prompt_kv=prompt_kv)
        best, found = [], []
        for g, idx in enumerate(kept):
            if not idx:
                best.append(0)
                found.append([])
                continue
            sc = scores[g]
            j = max(range(len(idx)), key=lambda j: sc[j]) if sc else 0
            best.append(idx[j])
            found.append([{"text": self._text(options[g][i][0]), "source": options[g][i][1], "score": sc[n] if sc else None}
                          for n, i in enumerate(idx)] if sc else [])
        return best, found

    def _rescore(
        self, cache, prompt_state, row_group, w, options, contexts=None, *, stride: int = 1, prompt_kv=None
    ) -> list[list[float]]:
        """Score each group's candidate answers whole, as answers to the same prompt; returns the scores
        (an empty list for a group with fewer than two candidates: nothing to choose between).

        A candidate's score is the mean log-probability of its tokens and of ending there (the
        probability mass of every stop token), so a long name is not penalised for its length.
        Under REPLUG a candidate's probability is the weighted mixture over the group's rows, as
        for decoding; with the copy constraint (``contexts``) a row can only answer with a span of
        its own passage, so a candidate is scored on the rows whose passage holds it (on all rows
        when none does), which also keeps the cost near in-context's (k rows x k titles otherwise).
        Greedy decoding commits to its first token; scoring whole answers lets a name whose first
        token was less likely than a description's ("Museo del Prado" against "Spanish national art
        museum") win when the model finds it the better answer as a whole.

        The prompt's key/value cache is reused (cropped back to the prompt), so only the
        candidates' tokens are computed. Row ``r`` of the prompt is cache row ``r * stride``
        (the cache holds ``stride`` copies of each row after alternative starts). With ``prompt_kv``
        (the prompt's cache tensors, :func:`_kv_snapshot`) the cache is reset to them instead.
        """
        torch = _torch()
        first_logits, prompt_mask, next_pos, prompt_len = prompt_state
        dev = first_logits.device
        groups = row_group.tolist()
        rows_of: dict[int, list[int]] = {}
        for r, g in enumerate(groups):
            rows_of.setdefault(g, []).append(r)
        pairs = []
        for g, opts in enumerate(options):
            if len(opts) < 2:
                continue  # nothing to choose between
            for c, t in enumerate(opts):
                rows_gc = rows_of.get(g, [])
                if w is not None and contexts is not None:
                    rows_gc = [r for r in rows_gc if _holds_span(contexts[r], t)] or rows_gc
                pairs.extend((r, c) for r in rows_gc)
        result: list[list[float]] = [[] for _ in options]
        if not pairs:
            return result
        seqs = [options[groups[r]][c] for r, c in pairs]
        pair_rows = torch.tensor([r for r, _ in pairs], dtype=torch.long, device=dev)
        pad = int(self._tokenizer.pad_token_id)
        stops = self._stop_ids[: first_logits.shape[-1]]
        lp_first_all = torch.log_softmax(first_logits.float(), -1)  # (rows, V): predicts token 0
        totals = torch.empty(len(seqs), dtype=torch.float32, device=dev)
        # Candidates are right-padded to the longest of their forward pass; with the prompt's cache
        # at hand (prompt_kv), they go in passes of similar lengths so that one long candidate
        # does not make every short one pay its length.
        passes = _length_passes([len(t) for t in seqs]) if prompt_kv is not None else [list(range(len(seqs)))]
        for members in passes:
            if prompt_kv is not None:
                _kv_restore(cache, prompt_kv)
            else:
                _crop(cache, prompt_len)
            rows = pair_rows[members]
            cache.batch_select_indices(rows * stride)
            width = max(len(seqs[i]) for i in members)
            ids = torch.full((len(members), width), pad, dtype=torch.long)
            for j, i in enumerate(members):
                ids[j, : len(seqs[i])] = torch.tensor(seqs[i], dtype=torch.long)  # right-padded: pads come after, unseen
            ids = ids.to(dev)
            mask = torch.cat([prompt_mask[rows], torch.ones((len(members), width), dtype=prompt_mask.dtype, device=dev)], 1)
            positions = next_pos[rows] + torch.arange(width, device=dev)[None]
            kwargs = {self._cache_kw: cache}
            logits = self._model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs).logits
            lp = torch.log_softmax(logits.float(), -1)  # position j predicts token j + 1, or the end
            for j, i in enumerate(members):
                t = seqs[i]
                n = len(t)
                tok = torch.tensor(t, device=dev)
                sc = lp_first_all[pairs[i][0], tok[0]]
                if n > 1:
                    sc = sc + lp[j, torch.arange(n - 1, device=dev), tok[1:]].sum()
                totals[i] = sc + torch.logsumexp(lp[j, n - 1][stops], 0)
        where: dict[tuple[int, int], list[int]] = {}
        for i, (r, c) in enumerate(pairs):
            where.setdefault((groups[r], c), []).append(i)
        for g, opts in enumerate(options):
            if len(opts) < 2:
                continue
            for c, t in enumerate(opts):
                idx = where[(g, c)]
                row_scores = totals[idx]
                if w is not None:  # REPLUG: log sum_r w_r p_r(candidate)
                    row_scores = row_scores + torch.log(w[pair_rows[idx]].clamp(min=1e-30))
                result[g].append(float(torch.logsumexp(row_scores, 0)) / (len(t) + 1))
        return result

    def _decode_seq2seq(self, prompts: list[list[int]]) -> tuple[list[list[int]], list[str]]:
        """Seq2seq models go through ``model.generate`` (greedy); REPLUG is not offered for them."""
        torch = _torch()
        with torch.inference_mode():
            batch = self._tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.device)
            gen = self._model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False)
        out, reasons = [], []
        for row in gen.tolist():
            kept: list[int] = []
            reason = "length"
            for t in row[1:]:  # row[0] is the decoder start token
                if self._stop_ids[t]:
                    reason = "stop"
                    break
                kept.append(t)
            out.append(kept)
            reasons.append(reason)
        return out, reasons

    # -- public API ---------------------------------------------------------------------------
    def generate(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Answer:
        """Answer ``question`` from ``passages`` (best first) with ``strategy``.

        Example:
            >>> reader.generate("Which city is the capital of France?", [], strategy="closed-book")  # doctest: +SKIP
        """
        return self.generate_batch([question], [passages], strategy=strategy)[0]

    def generate_batch(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[Hit]] | None = None,
        *,
        strategy: str = "in-context",
        progress: bool = False,
    ) -> list[Answer]:
        """Answer many questions, ``batch_size`` prompts per forward pass (sorted by length to cut padding).

        Under REPLUG a question's k prompts always share a batch, so a batch may hold
        up to ``batch_size`` rows or one question's k rows, whichever is more.
        """
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        if passages is None:
            passages = [[] for _ in questions]
        if len(passages) != len(questions):
            raise ConfigError(f"got {len(questions)} questions but {len(passages)} passage lists; pass one list per question")
        if strategy == "extractive":
            return [self._extractive(q, list(p)) for q, p in zip(questions, passages)]
        if strategy == "replug" and self.warm_up().is_seq2seq:
            raise ConfigError(f"strategy 'replug' needs a causal LM; {self.model_ref!r} is seq2seq: use 'in-context'")
        plans = [self._plan(q, list(p), strategy) for q, p in zip(questions, passages)]
        order = sorted(range(len(plans)), key=lambda i: max(len(p.ids) for p in plans[i][0]))
        answers: list[Answer | None] = [None] * len(plans)
        batches: list[list[int]] = []
        current: list[int] = []
        rows = 0
        for i in order:
            n = len(plans[i][0])
            if current and rows + n > self.batch_size:
                batches.append(current)
                current, rows = [], 0
            current.append(i)
            rows += n
        if current:
            batches.append(current)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plans), desc=f"answering ({strategy})", unit="q")
        for batch in batches:
            start = time.perf_counter()
            gen, reasons, scored = self._decode_plans([plans[i] for i in batch], strategy, [questions[i] for i in batch])
            elapsed = (time.perf_counter() - start) / len(batch)
            for g, i in enumerate(batch):
                answers[i] = self._answer(questions[i], strategy, plans[i][0], passages[i], gen[g], reasons[g], elapsed)
                answers[i].candidates = scored[g]
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return [a for a in answers if a is not None]

    def stream(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Iterator[str]:
        """Yield the answer text piece by piece as it is generated (for interactive use).

        Pieces are whole characters: a token that ends inside a multi-byte character is
        held back until the next one completes it. ``"".join(stream(...))`` equals the
        answer's raw text.
        """
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        if strategy == "extractive":
            yield self._extractive(question, list(passages)).text
            return
        parts, w = self._plan(question, list(passages), strategy)
        if self.is_seq2seq:
            yield self.generate(question, passages, strategy=strategy).text
            return
        tok = self._tokenizer
        text = TextAssembler(lambda ids: tok.decode(ids, skip_special_tokens=True))

        def work(emit: Callable[[str], bool]) -> None:
            self._decode(
                [p.ids for p in parts], [0] * len(parts), None if w is None else w.tolist(), 1,
                lambda _g, t: emit(text.push(t)),
                copy_from=self._copy_from(strategy, [p.context_ids or [] for p in parts]),
                prefix_len=parts[0].prefix_len,
            )
            emit(text.flush())

        yield from thread_stream(work)

    # -- raw completion -------------------------------------------------------------------------
    def _completion_ids(self, prompt: str | Sequence[dict[str, str]], max_tokens: int) -> list[int]:
        """Token ids of a raw prompt (as is) or of chat messages (the model's chat template)."""
        self.warm_up()
        if self.is_seq2seq:
            raise ConfigError(
                f"raw completion needs a causal LM; {self.model_ref!r} is seq2seq: use generate() with a strategy"
            )
        if int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens!r}")
        tok = self._tokenizer
        if isinstance(prompt, str):
            if not prompt:
                raise ConfigError("prompt is empty; pass the text to continue (or chat messages)")
            ids = list(tok(prompt)["input_ids"])  # the tokenizer's usual special tokens (BOS for Llama)
        else:
            messages = [dict(m) for m in prompt]
            bad = [m for m in messages if not {"role", "content"} <= set(m)]
            if not messages or bad:
                raise ConfigError(
                    f"chat messages must be a non-empty list of {{'role', 'content'}} dicts, got {list(prompt)[:3]!r}"
                )
            if not getattr(tok, "chat_template", None):
                raise ConfigError(
                    f"model {self.model_ref!r} has no chat template, so chat messages cannot be rendered; "
                    "pass the prompt as one string instead"
                )
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            ids = list(tok(text, add_special_tokens=False)["input_ids"])  # the template holds them
        if not ids:
            raise ConfigError(f"prompt {str(prompt)[:80]!r} encodes to no tokens; pass some text to continue")
        ids = list(self._prompts.virtual_ids) + ids  # a prompt-tuning adapter's virtual tokens come first
        if len(ids) + int(max_tokens) > self.context_window:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens; with max_tokens={max_tokens} that is over the context window "
                f"of {self.context_window} tokens; shorten the prompt or lower max_tokens"
            )
        return ids

    def complete(
        self,
        prompt: str | Sequence[dict[str, str]],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Completion:
        """Continue ``prompt`` greedily with the frozen model: no retrieval, no answer clean-up.

        A ``str`` is continued as is; a list of ``{"role", "content"}`` messages goes
        through the model's chat template with the assistant's turn opened. Generation
        ends at the end-of-sequence token, at the first of the ``stop`` strings (cut from
        the text), or after ``max_tokens`` tokens. With ``top_logprobs=N`` each generated
        token comes with the model's N most likely tokens and their log-probabilities
        (what REPLUG over an API mixes); an end-of-sequence token that ended the
        generation counts as a generated token there (and in ``completion_tokens``),
        though it adds no text.

        Example:
            >>> reader.complete("The capital of France is", max_tokens=3, stop=["."]).text  # doctest: +SKIP
            ' Paris'
        """
        return self.complete_batch([prompt], max_tokens=max_tokens, stop=stop, top_logprobs=top_logprobs)[0]

    def complete_batch(
        self,
        prompts: Sequence[str | Sequence[dict[str, str]]],
        *,
        max_tokens: int = 256,
        stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> list[Completion]:
        """:meth:`complete` for many prompts, ``batch_size`` per forward pass (same results as one by one)."""
        torch = _torch()
        if isinstance(prompts, str):
            raise ConfigError("complete_batch() takes a list of prompts, got one str; use complete()")
        if int(top_logprobs) < 0:
            raise ConfigError(f"top_logprobs must be >= 0, got {top_logprobs!r}")
        all_ids = [self._completion_ids(p, max_tokens) for p in prompts]
        tok = self._tokenizer
        out: list[Completion] = []
        for lo in range(0, len(all_ids), self.batch_size):
            chunk = all_ids[lo : lo + self.batch_size]
            texts = [TextAssembler(lambda g: tok.decode(g, skip_special_tokens=False), stop) for _ in chunk]
            steps: list[Any] = []

            def on_logits(logits) -> None:
                lp = torch.log_softmax(logits.float(), -1)
                steps.append((lp, torch.topk(lp, min(int(top_logprobs), lp.shape[-1]))))

            def on_token(g: int, t: int, texts=texts) -> bool:
                texts[g].push(t)
                return texts[g].stopped

            gen, reasons = self._decode(
                chunk, list(range(len(chunk))), None, len(chunk), on_token, max_new_tokens=int(max_tokens),
                stop_mask=self._eos_ids, on_logits=on_logits if top_logprobs else None,
            )
            for g, ids in enumerate(chunk):
                texts[g].flush()
                # Ended by end-of-sequence (not by a stop string): that token was generated too.
                eos = reasons[g] == "stop" and not texts[g].stopped
                c = Completion(text=texts[g].text, finish_reason=reasons[g], prompt_tokens=len(ids),
                               completion_tokens=len(gen[g]) + int(eos))
                if top_logprobs:
                    c.top_logprobs, c.tokens, c.token_logprobs = [], [], []
                    for lp, top in steps[: c.completion_tokens]:
                        pieces = tok.batch_decode([[i] for i in top.indices[g].tolist()], skip_special_tokens=False)
                        row: dict[str, float] = {}
                        for piece, value in zip(pieces, top.values[g].tolist()):
                            row.setdefault(piece, value)  # two ids with one text: keep the likelier
                        c.top_logprobs.append(row)
                    chosen = list(gen[g]) + ([int(steps[len(gen[g])][0][g].argmax())] if eos else [])
                    for (lp, _), t in zip(steps, chosen):
                        c.tokens.append(tok.decode([t], skip_special_tokens=False))
                        c.token_logprobs.append(float(lp[g, t]))
                out.append(c)
        return out

    def stream_complete(
        self, prompt: str | Sequence[dict[str, str]], *, max_tokens: int = 256, stop: Sequence[str] = ()
    ) -> Iterator[str]:
        """Yield :meth:`complete`'s text piece by piece as it is generated (whole characters only).

        ``"".join(stream_complete(p, ...)) == complete(p, ...).text``; a piece that may be
        the start of a stop string is held back until it is clear. Closing the generator
        early stops the generation.
        """
        ids = self._completion_ids(prompt, max_tokens)  # bad input raises here, before the first piece
        tok = self._tokenizer
        text = TextAssembler(lambda g: tok.decode(g, skip_special_tokens=False), stop)

        def work(emit: Callable[[str], bool]) -> None:
            def on_token(_g: int, t: int) -> bool:
                cancelled = emit(text.push(t))
                return cancelled or text.stopped

            self._decode([ids], [0], None, 1, on_token, max_new_tokens=int(max_tokens), stop_mask=self._eos_ids)
            emit(text.flush())

        return thread_stream(work)

    # -- helpers ------------------------------------------------------------------------------
    def _decode_plans(
        self, plans: list[tuple[list[PromptParts], Any]], strategy: str, questions: Sequence[str] | None = None
    ) -> tuple[list[list[int]], list[str], list[list[dict[str, Any]]]]:
        """Decode the prompts of ``plans`` (one group per question) as one batch."""
        prompts, groups, weights, contexts = [], [], [], []
        for g, (parts, w) in enumerate(plans):
            for j, p in enumerate(parts):
                prompts.append(p.ids)
                groups.append(g)
                weights.append(1.0 if w is None else float(w[j]))
                contexts.append(p.context_ids or [])
        scored: list[list[dict[str, Any]]] = []
        if self.is_seq2seq:
            return (*self._decode_seq2seq(prompts), [[] for _ in plans])
        candidates = None
        if self.candidates == "titles" and strategy != "closed-book":
            candidates = [self._title_ids(parts) for parts, _ in plans]
        echo = None
        if self.drop_echoes and questions is not None and strategy != "closed-book":
            echo = list(questions)
        gen, reasons = self._decode(
            prompts, groups, weights if strategy == "replug" else None, len(plans),
            copy_from=self._copy_from(strategy, contexts), prefix_len=plans[0][0][0].prefix_len,
            candidates=candidates, scored=scored, starts=self.answer_starts if strategy != "closed-book" else 1,
            echo=echo,
        )
        return gen, reasons, scored or [[] for _ in plans]

    def _title_ids(self, parts: list[PromptParts]) -> list[list[int]]:
        """The token ids of the passages' titles, spelled as an answer after ``Answer:``."""
        titles = dict.fromkeys(c.title for p in parts for c in p.citations if c.title)
        return [list(self._tokenizer(" " + t, add_special_tokens=False)["input_ids"]) for t in titles]

    def _text(self, ids: list[int]) -> str:
        return _first_line(self._tokenizer.decode(ids, skip_special_tokens=True))

    def _copy_from(self, strategy: str, contexts: list[list[int]]) -> list[list[int]] | None:
        if self.constrain != "copy" or strategy == "closed-book":
            return None
        return contexts

    def _answer(self, question, strategy, parts, passages, gen_ids, reason, latency) -> Answer:
        return make_answer(question, strategy, parts, self._text(gen_ids), model=self.name,
                           generated_tokens=len(gen_ids), finish_reason=reason, latency_s=latency)

    def _extractive(self, question: str, passages: list[Hit]) -> Answer:
        return extractive_answer(question, passages)
