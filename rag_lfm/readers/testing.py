"""Tiny randomly initialised causal LMs for tests: the real decoding code runs, in milliseconds.

Two tokenizers:

- ``"bpe"``: byte-level BPE trained on a few sentences (like real models: merges, and
  tokens that can split a character);
- ``"chars"``: one token per printable ASCII character, no merges, so every text has
  exactly one tokenization. Decoding token by token and re-tokenizing the text then gives
  back the same ids, which is what a test needs to compare a reader that sees token ids
  with one that only sees text (REPLUG over an HTTP API).

Example:
    >>> folder = save_tiny_llama(tmp_path / "tiny", chat=True)  # doctest: +SKIP
    >>> TransformersReader(folder, device="cpu").complete("Paris is", max_tokens=3)  # doctest: +SKIP
"""

from __future__ import annotations

import string
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "Claude Monet was a French painter and a founder of Impressionism.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France.",
    "Mount Everest is Earth's highest mountain above sea level.",
    "The Nile is a major north-flowing river in northeastern Africa.",
    "Marie Curie was a physicist and chemist who studied radioactivity.",
    "Question: Which landmark? Answer: Passages: [1] [2] [3]",
]


def _bpe_tokenizer(corpus: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus * 3, trainer)
    return tok


def _char_tokenizer():
    from tokenizers import Tokenizer, decoders, models

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]  # letters, digits, punctuation, space, \t, \n
    vocab = {s: i for i, s in enumerate(SPECIALS + chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<|endoftext|>"))
    tok.decoder = decoders.Fuse()  # tokens are characters: decoding concatenates them
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    return tok


def save_tiny_llama(
    folder: str | Path,
    *,
    chat: bool = True,
    vocab: str = "bpe",
    seed: int = 0,
    hidden_size: int = 32,
    layers: int = 2,
    init_std: float = 0.02,
    corpus: list[str] | None = None,
) -> str:
    """Write a random 2-layer Llama and its tokenizer to ``folder`` (``save_pretrained``); return the folder.

    ``init_std`` is the weights' initial standard deviation: a larger one (e.g. 0.5)
    gives peaked next-token distributions, as a trained model has, instead of nearly
    uniform ones where every greedy step is a near-tie.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if vocab not in ("bpe", "chars"):
        raise ValueError(f"vocab {vocab!r} is not valid; use 'bpe' or 'chars'")
    tok = _bpe_tokenizer(corpus or CORPUS) if vocab == "bpe" else _char_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512 if vocab == "bpe" else 2048, initializer_range=init_std,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)
