"""The teacher's outputs, computed once and kept on disk, so a distillation run resumes without recomputing.

For every training question the cache holds (JSONL) the retrieved passages, the gold answers and
the teacher's decoded answer, and (safetensors) the teacher's next-token distribution at every
position of that answer and at its end -- the ``top_k`` most likely tokens and their
log-probabilities, never the whole vocabulary (49k floats per position for SmolLM2).

The distributions are teacher-forced on the teacher's own answer, tokenized as ``" " + answer``
followed by the end-of-turn token, which is what the student is trained to emit after ``Answer:``:

- ``in-context`` / ``closed-book`` teacher: the model's distribution on its one prompt;
- ``replug`` teacher: REPLUG's mixture ``sum_r w_r p_r(t)`` over its k single-passage prompts,
  with the reader's retrieval weights (``softmax(score / replug_temperature)``). This mixed
  distribution is the target of a one-pass (in-context) student. (The reader's decoding also
  renormalises each row over the spans its passage holds; the cached target is the plain mixture.)

Layout of a cache folder::

    manifest.json            teacher, reader options, weights fingerprint, top_k (a mismatch is an error)
    shard-00000.safetensors  "<n>/idx" int32 [positions, top_k], "<n>/lp" float32 [positions, top_k]
    shard-00000.jsonl        one record per question; written after its tensors, so a shard with a
                             .jsonl is complete and a crash leaves at most one shard to redo

Example:
    >>> stats = build_teacher_cache(reader, kb, examples, TeacherSpec.parse("replug:5"), "work/cache")  # doctest: +SKIP
    >>> stats                                                                                         # doctest: +SKIP
    {'computed': 300, 'reused': 0, 'total': 300}
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag_lfm.atomic import write_bytes, write_json
from rag_lfm.distill.spec import TeacherSpec
from rag_lfm.errors import ConfigError
from rag_lfm.types import Hit

FORMAT = 1
READER_OPTIONS = ("max_new_tokens", "max_passage_tokens", "min_passage_tokens", "context_window_arg", "replug_temperature",
                  "stop_at_newline", "use_chat_template", "constrain", "one_shot", "candidates", "answer_starts",
                  "drop_echoes")


def reader_options(reader: Any) -> dict[str, Any]:
    """The settings of a :class:`~rag_lfm.readers.TransformersReader` that shape its prompts and answers."""
    out = {name: getattr(reader, name) for name in READER_OPTIONS if hasattr(reader, name)}
    if "context_window_arg" in out:
        out["context_window"] = out.pop("context_window_arg")
    return out


def end_token_id(tokenizer: Any) -> int:
    """The token that ends an answer (the end of the assistant's turn for chat models)."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no end-of-sequence token; "
                          "distillation needs one to mark the end of an answer")
    return int(tokenizer.eos_token_id)


def answer_ids(tokenizer: Any, text: str) -> list[int]:
    """An answer as the model emits it after ``Answer:`` -- ``" " + text`` -- then the end token."""
    ids = list(tokenizer(" " + text, add_special_tokens=False)["input_ids"]) if text else []
    return ids + [end_token_id(tokenizer)]


def hit_from_dict(d: dict[str, Any]) -> Hit:
    return Hit(chunk_id=int(d["chunk_id"]), doc_id=str(d["doc_id"]), score=float(d["score"]), text=str(d["text"]),
               metadata=dict(d.get("metadata") or {}), source_id=str(d.get("source_id", "")),
               start=int(d.get("start", 0)), end=int(d.get("end", 0)))


def _pad_right(seqs: list[list[int]], pad: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def answer_logits(model: Any, prompts: Sequence[list[int]], targets: Sequence[list[int]], pad_id: int,
                  prefix_len: int = 0):
    """The model's logits at every position that predicts a target token: a (sum of len(targets), V) tensor.

    Each row is ``prompt + target[:-1]`` (right-padded, so pads come after everything a row attends
    to); only the answer positions go through the output head (a prompt of 300 tokens would
    otherwise cost 300 x 49k logits per row). With ``prefix_len``, the leading tokens every prompt
    shares (system text and worked examples: about half of a one-passage prompt) run once, without
    gradients, and their keys and values serve every row -- as the reader runs them at inference.
    Training then moves how the weights read the passages, question and answer, not how they read
    the fixed instructions (the prefix is recomputed with the current weights at every step).
    """
    import torch

    device = next(model.parameters()).device
    decoder = model.get_decoder()
    shared = min(int(prefix_len), min(len(p) for p in prompts) - 1) if prefix_len else 0
    if shared > 0 and any(list(p[:shared]) != list(prompts[0][:shared]) for p in prompts):
        shared = 0
    kwargs: dict[str, Any] = {}
    if shared > 0:
        # newer transformers name the argument `cache` (past_key_values is deprecated there)
        cache_kw = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
        with torch.no_grad():
            head = torch.tensor([list(prompts[0][:shared])], dtype=torch.long, device=device)
            out = decoder(input_ids=head, use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
        cache.batch_repeat_interleave(len(prompts))
        kwargs = {cache_kw: cache, "use_cache": True}
    seqs = [list(p[shared:]) + list(t[:-1]) for p, t in zip(prompts, targets)]
    ids, mask = _pad_right(seqs, pad_id)
    if shared > 0:
        kwargs["position_ids"] = torch.arange(shared, shared + ids.shape[1], device=device)[None].expand(len(seqs), -1)
        mask = torch.cat([torch.ones((len(seqs), shared), dtype=mask.dtype), mask], dim=1)
    hidden = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs).last_hidden_state
    rows, cols = [], []
    for r, (p, t) in enumerate(zip(prompts, targets)):
        start = len(p) - 1 - shared
        rows.extend([r] * len(t))
        cols.extend(range(start, start + len(t)))
    picked = hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
    return model.get_output_embeddings()(picked)


class TeacherCache:
    """A cache folder (see the module docstring): ``records()`` and the ``top-k`` tensors of one record."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def shards(self) -> list[Path]:
        """Complete shards (their .jsonl exists), in order."""
        return sorted(self.folder.glob("shard-*.jsonl"))

    def records(self) -> list[dict[str, Any]]:
        """Every cached record, in the order written (each has ``shard`` and ``key`` for :meth:`tensors`)."""
        out: list[dict[str, Any]] = []
        for shard in self.shards():
            for line in shard.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out.append(json.loads(line))
        return out

    def tensors(self, record: dict[str, Any]):
        """The teacher's top-k token ids (int64) and log-probabilities (float32) for one record."""
        from safetensors.torch import load_file

        data = self._shard_tensors(record["shard"], load_file)
        return data[f"{record['key']}/idx"].long(), data[f"{record['key']}/lp"].float()

    def _shard_tensors(self, shard: str, load_file) -> dict[str, Any]:
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != shard:
            self._loaded = (shard, load_file(str(self.folder / f"{shard}.safetensors")))
        return self._loaded[1]


def _teacher_manifest(reader: Any, spec: TeacherSpec, top_k: int, fingerprint: str) -> dict[str, Any]:
    return {"format": FORMAT, "teacher": spec.to_dict(), "model": str(reader.model_ref), "weights_sha256": fingerprint,
            "top_k": int(top_k), "reader": reader_options(reader)}


def teacher_distributions(reader: Any, spec: TeacherSpec, questions: Sequence[str], passages: Sequence[Sequence[Hit]],
                          answers: Sequence[str], top_k: int) -> list[tuple[Any, Any]]:
    """The teacher's top-k next-token distribution along each answer (teacher-forced), one (idx, lp) pair per question."""
    import torch

    from rag_lfm.readers.prompts import plan_prompts

    model, tok = reader.model, reader.tokenizer
    rows_p, rows_t, rows_q, rows_w = [], [], [], []
    prefix = 0
    for q, (question, hits, answer) in enumerate(zip(questions, passages, answers)):
        parts, weights = plan_prompts(reader.prompts, question, list(hits) if spec.strategy != "closed-book" else [],
                                      spec.strategy, reader.replug_temperature)
        target = answer_ids(tok, answer)
        prefix = parts[0].prefix_len
        for j, p in enumerate(parts):
            rows_p.append(p.ids)
            rows_t.append(target)
            rows_q.append(q)
            rows_w.append(1.0 if weights is None else float(weights[j]))
    probs_sum: list[Any] = [None] * len(questions)
    with torch.inference_mode():
        for lo in range(0, len(rows_p), reader.batch_size):
            hi = lo + reader.batch_size
            logits = answer_logits(model, rows_p[lo:hi], rows_t[lo:hi], int(tok.pad_token_id), prefix).float()
            probs = torch.softmax(logits, -1)
            at = 0
            for r in range(lo, min(hi, len(rows_p))):
                n = len(rows_t[r])
                part = probs[at : at + n] * rows_w[r]
                q = rows_q[r]
                probs_sum[q] = part if probs_sum[q] is None else probs_sum[q] + part
                at += n
    out = []
    for mixed in probs_sum:
        top = torch.topk(mixed.clamp_min(1e-30).log(), min(int(top_k), mixed.shape[-1]), dim=-1)
        out.append((top.indices.to(torch.int32).cpu(), top.values.float().cpu()))
    return out


def build_teacher_cache(
    reader: Any,
    source: Any,
    examples: Sequence[Any],
    spec: TeacherSpec,
    folder: str | Path,
    *,
    top_k: int = 32,
    shard_size: int = 16,
    progress: bool = True,
) -> dict[str, int]:
    """Retrieve for, answer with the teacher, and cache the top-k distributions of every example not yet cached.

    ``examples`` are :class:`~rag_lfm.eval.qa.QAExample` (their ``id`` must be unique); ``source`` is
    anything with ``search_batch`` (a KnowledgeBase or a Retriever). An existing cache made by another
    teacher (strategy, model weights, reader options or top_k) is an error, never silently mixed.
    Returns how many examples were computed and how many reused.
    """
    from safetensors.torch import save

    if int(top_k) < 1:
        raise ConfigError(f"top_k must be >= 1, got {top_k!r}")
    ids = [str(e.id) for e in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"training examples need unique ids; {dup!r} occurs more than once")
    cache = TeacherCache(folder)
    cache.folder.mkdir(parents=True, exist_ok=True)
    fingerprint = reader.weights_fingerprint()
    wanted = _teacher_manifest(reader, spec, top_k, fingerprint)
    found = cache.manifest()
    if found is None:
        write_json(cache.manifest_path, wanted)
    elif found != wanted:
        diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
        raise ConfigError(
            f"teacher cache {str(cache.folder)!r} was made by another teacher (differs in {', '.join(diff)}); "
            "pass another cache folder, or delete this one to recompute it"
        )
    done = {str(r["id"]) for r in cache.records()}
    todo = [e for e in examples if str(e.id) not in done]
    n_shards = len(cache.shards())
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"teacher {spec}", unit="q")
    computed = 0
    for lo in range(0, len(todo), shard_size):
        batch = todo[lo : lo + shard_size]
        questions = [e.question for e in batch]
        if spec.strategy == "closed-book":
            passages: list[list[Hit]] = [[] for _ in batch]
        else:
            passages = source.search_batch([e.query for e in batch], spec.k)
        answers = reader.generate_batch(questions, passages, strategy=spec.strategy)
        texts = [a.text for a in answers]
        dists = teacher_distributions(reader, spec, questions, passages, texts, top_k)
        name = f"shard-{n_shards:05d}"
        tensors: dict[str, Any] = {}
        lines = []
        for n, (e, hits, text, (idx, lp)) in enumerate(zip(batch, passages, texts, dists)):
            tensors[f"{n}/idx"] = idx.contiguous()
            tensors[f"{n}/lp"] = lp.contiguous()
            lines.append(json.dumps({"id": str(e.id), "question": e.question, "query": e.query, "answers": list(e.answers),
                                     "teacher_answer": text, "positions": int(idx.shape[0]),
                                     "passages": [h.to_dict() for h in hits], "shard": name, "key": str(n)},
                                    ensure_ascii=False))
        write_bytes(cache.folder / f"{name}.safetensors", save(tensors))
        write_bytes(cache.folder / f"{name}.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
        n_shards += 1
        computed += len(batch)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return {"computed": computed, "reused": len(examples) - computed, "total": len(examples)}
