"""Building a student: a layer-pruned copy of the teacher, a full copy, or any local causal LM folder.

Layer pruning keeps ``n`` of the teacher's ``L`` decoder layers, evenly spaced with the first
and the last always kept (``n = L/2`` keeps about every other layer, as DistilBERT did), and
initialises every kept layer, the embeddings, the final norm and the output head from the
teacher's weights. It works on the state dict, so it serves every architecture whose decoder
layers are numbered in their parameter names (``model.layers.3.``, ``transformer.h.3.``):
a fresh model is made from the teacher's config with ``n`` layers and the kept layers' weights
are renumbered into it. The teacher's model object is only read.

Example:
    >>> kept_layers(30, 15)
    [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    >>> kept_layers(4, 2)
    [0, 3]
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from rag_lfm.distill.spec import StudentSpec
from rag_lfm.errors import ConfigError, ModelNotFoundError

# "<prefix>.layers.<i>.<rest>" and GPT-2's "<prefix>.h.<i>.<rest>"
_LAYER_KEY = re.compile(r"^(?P<head>(?:.*\.)?(?:layers|h|layer|blocks))\.(?P<i>\d+)\.(?P<rest>.+)$")
_LAYER_COUNT_ATTRS = ("num_hidden_layers", "n_layer", "num_layers")


def kept_layers(total: int, keep: int) -> list[int]:
    """The indices of the ``keep`` layers kept out of ``total``: evenly spaced, first and last included."""
    if not 1 <= keep <= total:
        raise ConfigError(f"a student keeps from 1 to {total} of the teacher's {total} layers, got layers={keep}")
    if keep == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (keep - 1)) for i in range(keep)})


def layer_count(config: Any) -> int:
    """The number of decoder layers a transformers config declares."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in _LAYER_COUNT_ATTRS:
        value = getattr(text, attr, None)
        if isinstance(value, int):
            return value
    raise ConfigError(
        f"the teacher's config ({type(config).__name__}) names no layer count ({', '.join(_LAYER_COUNT_ATTRS)}); "
        "layer pruning needs one: build the student elsewhere and pass it as 'path=FOLDER'"
    )


def prune_layers(model: Any, keep: int) -> tuple[Any, list[int]]:
    """A new model holding ``keep`` of ``model``'s decoder layers (see :func:`kept_layers`), teacher-initialised.

    Returns the student (float32, train mode off, gradients on) and the kept indices.
    """
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    total = layer_count(config)
    kept = kept_layers(total, keep)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in _LAYER_COUNT_ATTRS:
        if isinstance(getattr(text, attr, None), int):
            setattr(text, attr, len(kept))
    types = getattr(text, "layer_types", None)
    if isinstance(types, list) and len(types) == total:
        text.layer_types = [types[i] for i in kept]  # sliding/full attention per kept layer
    new_index = {old: new for new, old in enumerate(kept)}
    state: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        m = _LAYER_KEY.match(name)
        if m is None:
            state[name] = tensor.detach().clone()
            continue
        old = int(m.group("i"))
        if old in new_index:
            state[f"{m.group('head')}.{new_index[old]}.{m.group('rest')}"] = tensor.detach().clone()
    student = AutoModelForCausalLM.from_config(config)
    missing, unexpected = student.load_state_dict(state, strict=False)
    # A tied output head is not in the state dict as its own tensor in every version: that is the only gap allowed.
    missing = [k for k in missing if not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(
            f"layer pruning could not map the teacher's weights onto a {len(kept)}-layer {type(student).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}; pass a student folder instead ('path=FOLDER')"
        )
    if getattr(config, "tie_word_embeddings", False):
        student.tie_weights()
    if getattr(model, "generation_config", None) is not None:
        student.generation_config = copy.deepcopy(model.generation_config)  # the same stop tokens
    student.float()
    return student, kept


def load_causal_lm(path: str | Path) -> tuple[Any, Any]:
    """A local causal LM folder (or a known short name) and its tokenizer, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rag_lfm.models import require_transformers_folder, resolve_model

    resolved = resolve_model(str(path))
    require_transformers_folder(resolved, path, "student/teacher")
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved)
        model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"model {str(path)!r} could not be loaded as a causal LM: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return model, tokenizer


def same_vocabulary(a: Any, b: Any) -> bool:
    """Whether two tokenizers map every token to the same id (token-level losses need this)."""
    return a.get_vocab() == b.get_vocab()


def build_student(teacher_model: Any, teacher_tokenizer: Any, spec: StudentSpec) -> tuple[Any, Any, dict[str, Any]]:
    """The student model and tokenizer for ``spec``, and a description of how it was made.

    The teacher's model is read, never changed: pruning and copying work on clones of its tensors.

    Example:
        >>> student, tok, info = build_student(teacher.model, teacher.tokenizer, StudentSpec(layers=15))  # doctest: +SKIP
        >>> info["kept_layers"][:3]  # doctest: +SKIP
        [0, 2, 4]
    """
    if spec.path:
        model, tokenizer = load_causal_lm(spec.path)
        info = {"kind": "path", "path": str(spec.path), "same_tokenizer": same_vocabulary(tokenizer, teacher_tokenizer)}
    else:
        total = layer_count(teacher_model.config)
        keep = total if spec.layers is None else spec.layers
        model, kept = prune_layers(teacher_model, keep)
        tokenizer = copy.deepcopy(teacher_tokenizer)
        info = {"kind": "copy" if spec.layers is None else "layers", "teacher_layers": total, "kept_layers": kept,
                "same_tokenizer": True}
    info["parameters"] = sum(p.numel() for p in model.parameters())
    return model, tokenizer, info
