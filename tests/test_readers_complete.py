"""TransformersReader's raw completion primitive: complete() and stream_complete().

A tiny random Llama built here; the reader's own decoding loop runs (cache, masks, stops).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rag_lfm.errors import ConfigError  # noqa: E402
from rag_lfm.readers import Completion, PromptTooLongError, TransformersReader  # noqa: E402
from rag_lfm.readers.streaming import TextAssembler  # noqa: E402
from rag_lfm.readers.testing import save_tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def reader(tmp_path_factory) -> TransformersReader:
    folder = save_tiny_llama(tmp_path_factory.mktemp("tiny-complete"), chat=True)
    return TransformersReader(folder, device="cpu").warm_up()


def _greedy_reference(reader, ids: list[int], n: int) -> list[int]:
    """Greedy decoding without a cache: one full forward pass per token."""
    out = list(ids)
    eos = reader.tokenizer.eos_token_id
    with torch.inference_mode():
        for _ in range(n):
            t = int(reader.model(torch.tensor([out])).logits[0, -1].argmax())
            if t == eos:
                break
            out.append(t)
    return out[len(ids):]


def test_complete_is_greedy_and_bounded(reader):
    prompt = "The Eiffel Tower is"
    c = reader.complete(prompt, max_tokens=7)
    assert isinstance(c, Completion) and c.completion_tokens <= 7
    ids = reader.tokenizer(prompt)["input_ids"]
    expected = _greedy_reference(reader, ids, 7)
    assert c.text == reader.tokenizer.decode(expected)
    ended = len(expected) < 7  # by the end-of-sequence token, which counts as generated
    assert c.prompt_tokens == len(ids) and c.completion_tokens == len(expected) + int(ended)
    assert c.finish_reason == ("stop" if ended else "length")
    assert reader.complete(prompt, max_tokens=7).text == c.text  # deterministic


def test_chat_messages_use_the_template(reader):
    messages = [{"role": "user", "content": "Which tower is in Paris?"}]
    c = reader.complete(messages, max_tokens=5)
    text = reader.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = reader.tokenizer(text, add_special_tokens=False)["input_ids"]  # the template holds the specials
    assert c.prompt_tokens == len(ids)
    assert c.text == reader.tokenizer.decode(_greedy_reference(reader, ids, 5))


def test_stop_strings_cut_the_text_and_end_generation(reader):
    full = reader.complete("Mount Everest is", max_tokens=12)
    assert len(full.text) >= 4, full
    stop = full.text[2:4]  # a string the free generation holds
    cut = reader.complete("Mount Everest is", max_tokens=12, stop=[stop, "never-there"])
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and cut.completion_tokens <= full.completion_tokens


def test_top_logprobs_are_the_models_distribution(reader):
    c = reader.complete("Marie Curie was", max_tokens=4, top_logprobs=5)
    assert c.top_logprobs is not None and len(c.top_logprobs) == c.completion_tokens
    ids = reader.tokenizer("Marie Curie was")["input_ids"]
    with torch.inference_mode():
        lp = torch.log_softmax(reader.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    top = torch.topk(lp, 5)
    first = c.top_logprobs[0]
    for i, v in zip(top.indices.tolist(), top.values.tolist()):
        assert first[reader.tokenizer.decode([i])] == pytest.approx(v, abs=1e-4)
    # greedy: the chosen token is the most likely one at each step
    for row, token, value in zip(c.top_logprobs, c.tokens, c.token_logprobs):
        assert max(row.values()) == pytest.approx(value, abs=1e-5) and row[token] == pytest.approx(value, abs=1e-5)
    assert all(len(row) <= 5 for row in c.top_logprobs)


def test_batch_equals_one_by_one(reader):
    prompts = ["The Nile is", [{"role": "user", "content": "Who was Marie Curie?"}], "Claude", "Mount Everest is a"]
    batch = reader.complete_batch(prompts, max_tokens=6, stop=["e"], top_logprobs=3)
    single = [reader.complete(p, max_tokens=6, stop=["e"], top_logprobs=3) for p in prompts]
    for b, s in zip(batch, single):
        assert (b.text, b.finish_reason, b.completion_tokens, b.tokens) == (s.text, s.finish_reason, s.completion_tokens, s.tokens)
        assert b.token_logprobs == pytest.approx(s.token_logprobs, abs=1e-4)


def test_end_of_sequence_counts_as_a_generated_token(tmp_path):
    """A model whose head favours EOS after one token: the EOS step is reported, its text is not."""
    r = TransformersReader(save_tiny_llama(tmp_path / "t", chat=True), device="cpu").warm_up()
    free = r.complete("The Nile", max_tokens=1, top_logprobs=2)
    head = r.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[r.tokenizer.eos_token_id] = 1e4
    r.model.lm_head = biased
    c = r.complete("The Nile", max_tokens=5, top_logprobs=2)
    assert free.tokens[0] != r.tokenizer.eos_token  # the unbiased model says something first
    assert (c.text, c.finish_reason, c.completion_tokens) == ("", "stop", 1)
    assert c.tokens == [r.tokenizer.eos_token] and c.top_logprobs[0][r.tokenizer.eos_token] == pytest.approx(0.0)


def test_stream_complete_joins_to_complete(reader):
    for stop in ((), ("a",)):
        pieces = list(reader.stream_complete("The Nile is", max_tokens=10, stop=stop))
        assert "".join(pieces) == reader.complete("The Nile is", max_tokens=10, stop=stop).text
        assert all(p for p in pieces)


def test_stream_complete_stops_when_closed(reader):
    gen = reader.stream_complete("The Nile is", max_tokens=200)
    first = next(gen)
    gen.close()  # the decoding thread ends at its next token instead of running 200 steps
    assert first


def test_bad_input_is_a_clear_error(reader):
    with pytest.raises(ConfigError, match="max_tokens"):
        reader.complete("x", max_tokens=0)
    with pytest.raises(ConfigError, match="empty"):
        reader.complete("")
    with pytest.raises(ConfigError, match="role"):
        reader.complete([{"text": "hi"}])
    with pytest.raises(PromptTooLongError, match="context window"):
        reader.complete("tower " * 300, max_tokens=300)
    with pytest.raises(ConfigError, match="max_tokens"):
        reader.stream_complete("x", max_tokens=0)  # raised at the call, before any piece


def test_weights_stay_frozen(reader):
    before = reader.weights_fingerprint()
    reader.complete("Claude Monet", max_tokens=3, top_logprobs=3)
    list(reader.stream_complete("Claude Monet", max_tokens=3))
    assert reader.weights_fingerprint() == before


def test_text_assembler_holds_back_partial_stops_and_characters():
    data = "héllo world".encode()
    asm = TextAssembler(lambda ids: bytes(ids).decode("utf-8", errors="replace"), stops=["wor"])
    pieces = [asm.push(b) for b in data]
    assert "".join(pieces) + asm.flush() == "héllo "
    assert asm.stopped and "\ufffd" not in "".join(pieces)
