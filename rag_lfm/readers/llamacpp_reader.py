"""A GGUF model through llama.cpp as the reader: closed-book, in-context, REPLUG, extractive, streaming.

``llama-cpp-python`` runs quantised GGUF files on the CPU several times faster than
transformers in float32 (the packaged SmolLM2 Q4_1: ~50 tokens/s against ~12 on 2
cores) and loads them in a fraction of a second, with no conversion.

The reader keeps its own greedy loop over llama.cpp's next-token logits rather than
``Llama.create_completion``, so it decodes exactly as :class:`TransformersReader` does:
the same prompts (:mod:`rag_lfm.readers.prompts`, counted with the GGUF's own tokenizer
and rendered with its chat template), the same copy constraint, the same REPLUG mixture
(one prompt per passage, next-token distributions mixed with the retrieval weights,
token by token), the same rescoring of whole candidate answers. Each step evaluates
only the tokens that differ from what llama.cpp's KV cache already holds (the longest
common prefix is kept), so a single prompt costs one token per step. Under REPLUG the
k prompts take turns in llama.cpp's one cache: each prompt's cache is saved after its
turn and restored before the next (a memory copy, ``state_memory_mb`` bounds them), so
its passage is evaluated once, not at every step.

Install: ``pip install "rag-lfm[llamacpp]"`` (builds llama.cpp from source, ~18 min on
2 cores; ``pip install --find-links ../shared/wheels llama-cpp-python==0.3.36`` takes a
prebuilt wheel where one is at hand).

Example:
    >>> reader = LlamaCppReader("SmolLM2-135M-Instruct")  # the packaged GGUF  # doctest: +SKIP
    >>> reader.generate("Which French painter founded Impressionism?", hits).text  # doctest: +SKIP
    'Claude Monet'
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rag_lfm.errors import ConfigError, ModelNotFoundError
from rag_lfm.readers.base import Capabilities, PromptTooLongError, check_reader, check_strategy
from rag_lfm.readers.prompts import PromptBuilder, PromptParts, extractive_answer, keep_candidates, make_answer, plan_prompts
from rag_lfm.readers.streaming import TextAssembler, thread_stream
from rag_lfm.readers.transformers_reader import _CopyConstraint, _first_line, _holds_span, word_edges
from rag_lfm.readers.types import Answer, Completion
from rag_lfm.types import Hit

LLAMACPP_PIP = 'pip install "rag-lfm[llamacpp]"  (or: pip install llama-cpp-python)'


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelNotFoundError(
            f"LlamaCppReader needs llama-cpp-python: {LLAMACPP_PIP}; it compiles llama.cpp (~18 min on 2 cores) "
            "unless a prebuilt wheel is found (pip install --find-links DIR llama-cpp-python)"
        ) from exc
    return llama_cpp


def gguf_path(model: str | os.PathLike[str]) -> Path:
    """A GGUF file for ``model``: a ``.gguf`` path, a folder holding one, or a packaged model's name.

    Example:
        >>> gguf_path("SmolLM2-135M-Instruct").name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    from rag_lfm.readers.convert import SMOLLM2_NAME, smollm2_gguf

    text = str(model)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelNotFoundError(f"model file {text!r} is not a .gguf file; LlamaCppReader reads GGUF models")
        return path
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise ModelNotFoundError(
                f"folder {text!r} holds {len(found)} .gguf files ({', '.join(p.name for p in found[:5]) or 'none'}); "
                "pass the path of the one to load"
            )
        return found[0]
    if path.name.lower() == SMOLLM2_NAME.lower():
        return smollm2_gguf()
    raise ModelNotFoundError(
        f"model {text!r} is neither a .gguf file, a folder holding one, nor a packaged model ({SMOLLM2_NAME})"
    )


class _LlamaTokenizer:
    """The slice of the transformers tokenizer API that :class:`PromptBuilder` uses, over a GGUF's tokenizer."""

    def __init__(self, llm: Any) -> None:
        llama_cpp = _llama_cpp()
        self._llm = llm
        meta = llm.metadata
        self.chat_template = meta.get("tokenizer.chat_template") or None
        self.eos_token_id = int(llm.token_eos())
        self.pad_token_id = self.eos_token_id
        self.eos_token = self.decode([self.eos_token_id])
        self.bos_token = self.decode([int(llm.token_bos())]) if int(llm.token_bos()) >= 0 else ""
        self._formatter = None
        if self.chat_template:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            self._formatter = Jinja2ChatFormatter(self.chat_template, eos_token=self.eos_token, bos_token=self.bos_token)
        self._llama_cpp = llama_cpp

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        if not text:
            return {"input_ids": []}
        # special=True: the chat template's markers (<|im_start|> ...) are tokens, as in transformers
        return {"input_ids": list(self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        data = self._llm.detokenize([int(i) for i in ids], special=not skip_special_tokens)
        return data.decode("utf-8", errors="replace")

    def batch_decode(self, rows: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r, skip_special_tokens) for r in rows]

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str:
        if self._formatter is None:
            raise ConfigError("this GGUF has no chat template (tokenizer.chat_template); pass the prompt as one string")
        self._formatter.add_generation_prompt = add_generation_prompt
        return self._formatter(messages=messages).prompt

    def __len__(self) -> int:
        return int(self._llm.n_vocab())


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64, copy=False)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


class LlamaCppReader:
    """A reader over any GGUF model through llama-cpp-python.

    Args:
        model: a ``.gguf`` file, a folder holding one, or ``"SmolLM2-135M-Instruct"`` (the packaged GGUF).
        n_ctx: the context window llama.cpp allocates (prompt plus answer), in tokens.
        n_threads: CPU threads (default: llama.cpp's choice, the physical cores).
        n_gpu_layers: layers offloaded to a GPU when llama.cpp was built with one (0: CPU only).
        max_new_tokens, max_passage_tokens, min_passage_tokens, replug_temperature, stop_at_newline,
        use_chat_template, constrain, one_shot, candidates, answer_starts, drop_echoes: as for
            :class:`~rag_lfm.readers.TransformersReader`, with the same defaults (alternative
            starts are decoded one after another here: llama.cpp runs one sequence at a time).
        state_memory_mb: under REPLUG the k prompts take turns in llama.cpp's one KV cache; each
            prompt's cache is saved after its turn and restored at the next (a copy, instead of
            re-evaluating its passage), within this many MiB (past it, prompts are re-evaluated).
        verbose: let llama.cpp print its loading log to stderr.
    """

    # llama.cpp hands out the logits of every step; prompts run one at a time (no batching).
    capabilities = Capabilities(logprobs=True, logits=True, batching=False, streaming=True, completion=True)

    def __init__(
        self,
        model: str | os.PathLike[str] = "SmolLM2-135M-Instruct",
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        max_new_tokens: int = 24,
        max_passage_tokens: int = 160,
        min_passage_tokens: int = 24,
        replug_temperature: float = 0.05,
        stop_at_newline: bool = True,
        use_chat_template: bool | None = None,
        constrain: str = "copy",
        one_shot: bool = True,
        candidates: str = "titles",
        answer_starts: int = 4,
        drop_echoes: bool = True,
        state_memory_mb: float = 512.0,
        verbose: bool = False,
    ) -> None:
        for label, value in [("max_new_tokens", max_new_tokens), ("max_passage_tokens", max_passage_tokens),
                             ("n_ctx", n_ctx)]:
            if int(value) < 1:
                raise ConfigError(f"{label} must be >= 1, got {value!r}")
        if int(n_ctx) <= int(max_new_tokens):
            raise ConfigError(f"n_ctx {n_ctx} leaves no room for a prompt with max_new_tokens={max_new_tokens}")
        if constrain not in ("copy", "none"):
            raise ConfigError(f"constrain {constrain!r} is not valid; use 'copy' (answers are spans of the passages) or 'none'")
        if candidates not in ("titles", "none"):
            raise ConfigError(f"candidates {candidates!r} is not valid; use 'titles' or 'none'")
        if replug_temperature <= 0:
            raise ConfigError(f"replug_temperature must be > 0, got {replug_temperature!r}")
        if not isinstance(answer_starts, int) or not 1 <= answer_starts <= 16:
            raise ConfigError(f"answer_starts must be an int from 1 to 16, got {answer_starts!r}")
        self.model_ref = str(model)
        self.name = Path(self.model_ref).stem if self.model_ref.endswith(".gguf") else Path(self.model_ref).name
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads
        self.n_gpu_layers = int(n_gpu_layers)
        self.max_new_tokens = int(max_new_tokens)
        self.max_passage_tokens = int(max_passage_tokens)
        self.min_passage_tokens = int(min_passage_tokens)
        self.replug_temperature = float(replug_temperature)
        self.stop_at_newline = stop_at_newline
        self.use_chat_template = use_chat_template
        self.constrain = constrain
        self.one_shot = one_shot
        self.candidates = candidates
        self.answer_starts = answer_starts
        self.drop_echoes = bool(drop_echoes)
        self.verbose = verbose
        self.state_memory_mb = float(state_memory_mb)
        self.context_window = self.n_ctx
        self._states: dict[int, tuple[np.ndarray, Any]] = {}
        self._llm: Any = None
        self._tokenizer: _LlamaTokenizer | None = None
        self._prompts: PromptBuilder | None = None
        self._stop: np.ndarray | None = None
        self._eog: np.ndarray | None = None
        self._lock = threading.RLock()  # a llama.cpp context serves one sequence at a time

    # -- loading -------------------------------------------------------------------------------
    def warm_up(self) -> LlamaCppReader:
        """Load the GGUF (once, ~0.3 s for the packaged SmolLM2)."""
        if self._llm is not None:
            return self
        llama_cpp = _llama_cpp()
        path = gguf_path(self.model_ref)
        kwargs: dict[str, Any] = {"n_ctx": self.n_ctx, "n_gpu_layers": self.n_gpu_layers, "verbose": self.verbose}
        if self.n_threads:
            kwargs["n_threads"] = int(self.n_threads)
            kwargs["n_threads_batch"] = int(self.n_threads)
        try:
            llm = llama_cpp.Llama(str(path), **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ModelNotFoundError(f"llama.cpp could not load {str(path)!r}: {exc}") from exc
        self._llm = llm
        self.path = path
        tok = _LlamaTokenizer(llm)
        self._tokenizer = tok
        self._prompts = PromptBuilder(
            tok, budget=self.n_ctx - self.max_new_tokens, max_passage_tokens=self.max_passage_tokens,
            min_passage_tokens=self.min_passage_tokens, use_chat_template=self.use_chat_template,
            one_shot=self.one_shot,
        )
        n = len(tok)
        vocab = llm._model.vocab  # the llama_vocab pointer llama.cpp's C API takes
        eog = np.array([bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in range(n)])
        eog[tok.eos_token_id] = True
        self._eog = eog
        stop = eog.copy()
        pieces = tok.batch_decode([[i] for i in range(n)])
        self._word_edges = word_edges(pieces)  # answers copied as whole words (see _CopyConstraint)
        if self.stop_at_newline:
            # every vocabulary entry whose text holds a newline ends a one-line answer
            stop |= np.array(["\n" in p for p in pieces])
        self._stop = stop
        return self

    @property
    def tokenizer(self) -> _LlamaTokenizer:
        self.warm_up()
        assert self._tokenizer is not None
        return self._tokenizer

    @property
    def prompts(self) -> PromptBuilder:
        self.warm_up()
        assert self._prompts is not None
        return self._prompts

    def weights_fingerprint(self) -> str:
        """sha256 of the GGUF file: llama.cpp maps it read-only, so it is the same before and after any use."""
        self.warm_up()
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    # -- the model: next-token logits for a token sequence --------------------------------------
    def _next_logits(self, tokens: Sequence[int], row: int | None = None) -> np.ndarray:
        """The logits after ``tokens``; only the part the KV cache does not already hold is evaluated.

        ``row`` names one of several sequences that take turns (REPLUG's prompts): after
        its turn its KV cache is saved, and restored at its next turn when that saves
        more than re-evaluating (``state_memory_mb`` bounds what is kept).
        """
        llm = self._llm
        if len(tokens) > self.n_ctx:
            raise PromptTooLongError(
                f"{len(tokens)} tokens do not fit llama.cpp's context window n_ctx={self.n_ctx}; raise n_ctx"
            )
        common = self._common(llm.input_ids[: llm.n_tokens], tokens)
        saved = self._states.get(row) if row is not None else None
        if saved is not None:
            held, blob = saved
            reuse = self._common(held, tokens)
            if reuse > common + 8:  # restoring copies the cache: worth it when it saves evaluating tokens
                lc = self._llama_cpp()
                if lc.llama_state_seq_set_data(llm.ctx, blob, len(blob), 0):
                    llm.input_ids[: len(held)] = held
                    llm.n_tokens = len(held)
                    common = reuse
        llm.n_tokens = common  # eval() first drops the cache beyond n_tokens
        llm.eval(list(tokens[common:]))
        logits = np.ctypeslib.as_array(self._llama_cpp().llama_get_logits_ith(llm.ctx, -1),
                                       shape=(len(self._tokenizer),)).copy()
        if row is not None:
            self._save_state(row, tokens)
        return logits

    @staticmethod
    def _common(held: Any, tokens: Sequence[int]) -> int:
        """Length of the common prefix, leaving at least one token of ``tokens`` to evaluate (fresh logits)."""
        n = min(len(held), len(tokens) - 1)
        if n <= 0:
            return 0
        diff = np.nonzero(np.asarray(held[:n]) != np.asarray(tokens[:n], dtype=np.asarray(held).dtype))[0]
        return int(diff[0]) if len(diff) else n

    def _save_state(self, row: int, tokens: Sequence[int]) -> None:
        lc = self._llama_cpp()
        llm = self._llm
        size = int(lc.llama_state_seq_get_size(llm.ctx, 0))
        others = sum(len(b) for r, (_, b) in self._states.items() if r != row)
        if size <= 0 or others + size > self.state_memory_mb * 2**20:
            self._states.pop(row, None)
            return
        import ctypes

        blob = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(llm.ctx, blob, size, 0):
            self._states[row] = (np.asarray(tokens, dtype=np.intc).copy(), blob)

    @staticmethod
    def _llama_cpp():
        return _llama_cpp()

    def _decode(
        self,
        prompts: list[list[int]],
        weights: list[float] | None,
        *,
        copy_from: list[list[int]] | None = None,
        max_new_tokens: int | None = None,
        stop: np.ndarray | None = None,
        on_token: Callable[[int], bool | None] | None = None,
        on_logits: Callable[[np.ndarray], None] | None = None,
        first: int | None = None,
    ) -> tuple[list[int], str]:
        """Greedy decoding of one question: one prompt, or (REPLUG) one per passage mixed with ``weights``.

        The same rule as :meth:`TransformersReader._decode`: a stop token ends the answer;
        under the copy constraint each prompt may only continue a span of its own passage,
        a stop is allowed once the answer has a token, and (REPLUG) a prompt whose span
        can no longer continue drops out of the mixture. ``first`` forces the first token (an
        alternative start, see :meth:`_first_tokens`).
        """
        stop = self._stop if stop is None else stop
        rows = [list(p) for p in prompts]
        copy = None if copy_from is None else [_CopyConstraint(c, self._word_edges) for c in copy_from]
        out: list[int] = []
        reason = "length"
        for step in range(self.max_new_tokens if max_new_tokens is None else max_new_tokens):
            logits = [self._next_logits(r, row=i if len(rows) > 1 else None) for i, r in enumerate(rows)]
            if on_logits is not None:
                on_logits(logits[0])
            lps = []
            alive = []
            for r, lg in enumerate(logits):
                if copy is not None:
                    ok = np.zeros(lg.shape[0], dtype=bool)
                    allowed = copy[r].allowed()
                    if allowed:
                        ok[allowed] = True
                    if step > 0 and copy[r].can_end():
                        ok |= stop
                    if not ok.any():
                        if weights is None:
                            ok = stop.copy()  # a row with no continuation left can only stop
                        else:
                            alive.append(False)
                            lps.append(None)
                            continue
                    lg = np.where(ok, lg, -np.inf)
                alive.append(True)
                lps.append(lg)
            if step == 0 and first is not None:
                tok = int(first)
            elif weights is None:
                tok = int(np.argmax(lps[0]))
            elif not any(alive):
                reason = "stop"
                break
            else:
                mixed = np.zeros(logits[0].shape[0], dtype=np.float64)
                for w, lg in zip(weights, lps):
                    if lg is not None:
                        mixed += w * np.exp(_log_softmax(lg))
                tok = int(np.argmax(mixed))
            if stop[tok]:
                reason = "stop"
                break
            out.append(tok)
            if on_token is not None and on_token(tok):
                reason = "stop"
                break
            for r in rows:
                r.append(tok)
            if copy is not None:
                for c in copy:
                    c.advance(tok)
        return out, reason

    def _sequence_logprob(self, prompt: list[int], answer: list[int], row: int | None = None) -> float:
        """log p(answer tokens, then any stop token | prompt), unconstrained."""
        total = 0.0
        seq = list(prompt)
        for t in answer:
            total += float(_log_softmax(self._next_logits(seq, row))[t])
            seq.append(t)
        lp = _log_softmax(self._next_logits(seq, row))
        return total + float(np.logaddexp.reduce(lp[self._stop]))

    def _first_tokens(self, parts: list[PromptParts], weights: list[float] | None, copy: bool, n: int) -> list[int]:
        """The ``n`` likeliest first answer tokens (copy-constrained; REPLUG-mixed), best first."""
        mixed = None
        for r, p in enumerate(parts):
            lg = self._next_logits(p.ids, row=r if len(parts) > 1 else None).astype(np.float64)
            if copy:
                ok = np.zeros(lg.shape[0], dtype=bool)
                allowed = _CopyConstraint(p.context_ids or [], self._word_edges).allowed()
                ok[allowed] = True
                lg = np.where(ok, lg, -np.inf)
            lg = np.where(self._stop, -np.inf, lg)
            if not np.isfinite(lg).any():
                continue
            probs = np.exp(_log_softmax(lg)) * (1.0 if weights is None else weights[r])
            mixed = probs if mixed is None else mixed + probs
        if mixed is None:
            return []
        order = np.argsort(-mixed)[:n]
        return [int(t) for t in order if mixed[t] > 0]

    def _rescore(self, parts: list[PromptParts], weights: list[float] | None, decoded: list[tuple[list[int], str]],
                 copy: bool, question: str | None) -> tuple[list[int], list[dict[str, Any]]]:
        """The decoded answers (and the passages' titles) scored whole, as TransformersReader does; returns
        the best and the scored candidates. ``decoded`` holds each start's tokens and finish reason."""
        tok = self._tokenizer
        titles = dict.fromkeys(c.title for p in parts for c in p.citations if c.title) if self.candidates == "titles" else {}
        pool = [(ids, "decoded" if j == 0 else "start") for j, (ids, _) in enumerate(decoded)]
        pool += [(tok(" " + t, add_special_tokens=False)["input_ids"], "title") for t in titles]
        texts = [_first_line(tok.decode(ids, skip_special_tokens=True)) for ids, _ in pool]
        cut = {j for j, (_, why) in enumerate(decoded) if why == "length"} if len(decoded) > 1 else set()
        options = [pool[i] for i in keep_candidates(texts, question, cut)]
        if len(options) < 2:
            return (options[0][0] if options else decoded[0][0]), []
        found = []
        best, best_score = options[0][0], float("-inf")
        for ids, kind in options:
            rows = list(range(len(parts)))
            if weights is not None and copy:
                rows = [r for r in rows if _holds_span(parts[r].context_ids or [], ids)] or rows
            scores = np.array([self._sequence_logprob(parts[r].ids, ids, r if len(parts) > 1 else None)
                               for r in rows])
            if weights is not None:
                scores = scores + np.log(np.maximum(np.array([weights[r] for r in rows]), 1e-30))
            score = float(np.logaddexp.reduce(scores)) / (len(ids) + 1)
            found.append({"text": _first_line(tok.decode(ids, skip_special_tokens=True)), "source": kind,
                          "score": score})
            if score > best_score:
                best, best_score = ids, score
        return best, found

    # -- public API ------------------------------------------------------------------------------
    def generate(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Answer:
        """Answer ``question`` from ``passages`` (best first) with ``strategy``."""
        return self.generate_batch([question], [passages], strategy=strategy)[0]

    def generate_batch(
        self,
        questions: Sequence[str],
        passages: Sequence[Sequence[Hit]] | None = None,
        *,
        strategy: str = "in-context",
        progress: bool = False,
    ) -> list[Answer]:
        """Answer many questions, one after another (llama.cpp runs one sequence at a time)."""
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        if passages is None:
            passages = [[] for _ in questions]
        if len(passages) != len(questions):
            raise ConfigError(f"got {len(questions)} questions but {len(passages)} passage lists; pass one list per question")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(questions), desc=f"answering ({strategy})", unit="q")
        answers = []
        for q, p in zip(questions, passages):
            answers.append(self._answer_one(q, list(p), strategy))
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return answers

    def _answer_one(self, question: str, passages: list[Hit], strategy: str) -> Answer:
        if strategy == "extractive":
            return extractive_answer(question, passages)
        start = time.perf_counter()
        with self._lock:
            self.warm_up()
            self._states.clear()  # saved caches belong to one question's prompts
            parts, weights = plan_prompts(self.prompts, question, passages, strategy, self.replug_temperature)
            copy = self.constrain == "copy" and strategy != "closed-book"
            copy_from = [p.context_ids or [] for p in parts] if copy else None
            runs = [self._decode([p.ids for p in parts], weights, copy_from=copy_from)]
            if self.answer_starts > 1 and strategy != "closed-book":
                # Alternative starts: the next likeliest first tokens, each continued greedily.
                firsts = self._first_tokens(parts, weights, copy, self.answer_starts)
                head = runs[0][0][:1]
                runs += [self._decode([p.ids for p in parts], weights, copy_from=copy_from, first=t)
                         for t in firsts if [t] != head][: self.answer_starts - 1]
            gen, reason = runs[0]
            scored: list[dict[str, Any]] = []
            if strategy != "closed-book" and (self.candidates == "titles" or len(runs) > 1 or self.drop_echoes):
                best, scored = self._rescore(parts, weights, runs, copy, question if self.drop_echoes else None)
                if best is not gen:
                    gen, reason = best, next((why for ids, why in runs if ids is best), "stop")
            self._states.clear()
        text = _first_line(self._tokenizer.decode(gen, skip_special_tokens=True))
        answer = make_answer(question, strategy, parts, text, model=self.name, generated_tokens=len(gen),
                             finish_reason=reason, latency_s=time.perf_counter() - start)
        answer.candidates = scored
        return answer

    def stream(self, question: str, passages: Sequence[Hit] = (), *, strategy: str = "in-context") -> Iterator[str]:
        """Yield the decoded answer piece by piece (whole characters; no rescoring of candidates)."""
        strategy = check_strategy(strategy)
        check_reader(self, strategy)
        passages = list(passages)
        if strategy == "extractive":
            return iter([extractive_answer(question, passages).text])
        self.warm_up()
        parts, weights = plan_prompts(self.prompts, question, passages, strategy, self.replug_temperature)
        copy = self.constrain == "copy" and strategy != "closed-book"
        tok = self._tokenizer
        text = TextAssembler(lambda ids: tok.decode(ids, skip_special_tokens=True))

        def work(emit: Callable[[str], bool]) -> None:
            with self._lock:
                self._states.clear()
                try:
                    self._decode([p.ids for p in parts], weights, on_token=lambda t: emit(text.push(t)),
                                 copy_from=[p.context_ids or [] for p in parts] if copy else None)
                finally:
                    self._states.clear()
            emit(text.flush())

        return thread_stream(work)

    # -- raw completion ---------------------------------------------------------------------------
    def _completion_ids(self, prompt: str | Sequence[dict[str, str]], max_tokens: int) -> list[int]:
        self.warm_up()
        if int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens!r}")
        tok = self._tokenizer
        if isinstance(prompt, str):
            if not prompt:
                raise ConfigError("prompt is empty; pass the text to continue (or chat messages)")
            ids = tok(prompt)["input_ids"]
        else:
            messages = [dict(m) for m in prompt]
            if not messages or any(not {"role", "content"} <= set(m) for m in messages):
                raise ConfigError(
                    f"chat messages must be a non-empty list of {{'role', 'content'}} dicts, got {list(prompt)[:3]!r}"
                )
            ids = tok(tok.apply_chat_template(messages, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError(f"prompt {str(prompt)[:80]!r} encodes to no tokens; pass some text to continue")
        if len(ids) + int(max_tokens) > self.n_ctx:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens; with max_tokens={max_tokens} that is over the context window "
                f"of {self.n_ctx} tokens (n_ctx); shorten the prompt, lower max_tokens or raise n_ctx"
            )
        return ids

    def complete(
        self, prompt: str | Sequence[dict[str, str]], *, max_tokens: int = 256, stop: Sequence[str] = (),
        top_logprobs: int = 0,
    ) -> Completion:
        """Continue ``prompt`` greedily (see :meth:`TransformersReader.complete`: same contract)."""
        if int(top_logprobs) < 0:
            raise ConfigError(f"top_logprobs must be >= 0, got {top_logprobs!r}")
        with self._lock:
            ids = self._completion_ids(prompt, max_tokens)
            tok = self._tokenizer
            text = TextAssembler(lambda g: tok.decode(g, skip_special_tokens=False), stop)
            steps: list[np.ndarray] = []

            def on_token(t: int) -> bool:
                text.push(t)
                return text.stopped

            gen, reason = self._decode([ids], None, max_new_tokens=int(max_tokens), stop=self._eog,
                                       on_token=on_token, on_logits=steps.append if top_logprobs else None)
        text.flush()
        eos = reason == "stop" and not text.stopped
        c = Completion(text=text.text, finish_reason=reason, prompt_tokens=len(ids), completion_tokens=len(gen) + int(eos))
        if top_logprobs:
            c.top_logprobs, c.tokens, c.token_logprobs = [], [], []
            chosen = list(gen) + ([int(np.argmax(steps[len(gen)]))] if eos else [])
            for logits, t in zip(steps, chosen):
                lp = _log_softmax(logits)
                top = np.argsort(-lp, kind="stable")[: int(top_logprobs)]
                row: dict[str, float] = {}
                for i in top.tolist():
                    row.setdefault(tok.decode([i]), float(lp[i]))
                c.top_logprobs.append(row)
                c.tokens.append(tok.decode([t]))
                c.token_logprobs.append(float(lp[t]))
        return c

    def complete_batch(self, prompts: Sequence[str | Sequence[dict[str, str]]], *, max_tokens: int = 256,
                       stop: Sequence[str] = (), top_logprobs: int = 0) -> list[Completion]:
        """:meth:`complete` for each prompt, in turn."""
        if isinstance(prompts, str):
            raise ConfigError("complete_batch() takes a list of prompts, got one str; use complete()")
        return [self.complete(p, max_tokens=max_tokens, stop=stop, top_logprobs=top_logprobs) for p in prompts]

    def stream_complete(self, prompt: str | Sequence[dict[str, str]], *, max_tokens: int = 256,
                        stop: Sequence[str] = ()) -> Iterator[str]:
        """Yield :meth:`complete`'s text piece by piece (whole characters; closing it stops generation)."""
        with self._lock:
            ids = self._completion_ids(prompt, max_tokens)
        tok = self._tokenizer
        text = TextAssembler(lambda g: tok.decode(g, skip_special_tokens=False), stop)

        def work(emit: Callable[[str], bool]) -> None:
            def on_token(t: int) -> bool:
                cancelled = emit(text.push(t))
                return cancelled or text.stopped

            with self._lock:
                self._decode([ids], None, max_new_tokens=int(max_tokens), stop=self._eog, on_token=on_token)
            emit(text.flush())

        return thread_stream(work)
