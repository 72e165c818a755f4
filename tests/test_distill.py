"""Distillation (issue 15) with tiny random models: the real cache, pruning, losses, training and reload.

A 4-layer random Llama is the teacher (REPLUG k=2 and in-context k=1 over a hash-embedder index);
students keep 2 of its layers. Everything runs in seconds on 2 cores.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from rag_lfm.connectors import InMemory  # noqa: E402
from rag_lfm.distill import (  # noqa: E402
    StudentSpec,
    TeacherCache,
    TeacherSpec,
    TrainConfig,
    build_examples,
    build_student,
    build_teacher_cache,
    distill,
    kept_layers,
    load_card,
    mean_kl,
    train_student,
)
from rag_lfm.distill.cache import answer_ids  # noqa: E402
from rag_lfm.distill.losses import Targets, kl_loss  # noqa: E402
from rag_lfm.errors import ConfigError  # noqa: E402
from rag_lfm.eval.qa import QAExample  # noqa: E402
from rag_lfm.readers import TransformersReader  # noqa: E402
from rag_lfm.readers import testing  # noqa: E402
from rag_lfm.readers.prompts import PromptBuilder  # noqa: E402
from rag_lfm.types import Document  # noqa: E402

CORPUS = testing.CORPUS[:5]  # the five articles (testing.CORPUS adds one prompt-shaped line)
TITLES = ["Claude Monet", "Eiffel Tower", "Mount Everest", "Nile", "Marie Curie"]
QUESTIONS = ["Which landmark is in Paris?", "Who founded Impressionism?", "Which river is in Africa?",
             "What is the highest mountain?", "Who studied radioactivity?", "Which tower is made of iron?",
             "Which painter was French?", "Which river flows north?"]
GOLD = [1, 0, 3, 2, 4, 1, 0, 3]


@pytest.fixture(scope="module")
def teacher_folder(tmp_path_factory) -> str:
    from rag_lfm.readers.testing import save_tiny_llama

    # init_std 0.5: peaked next-token distributions, as a trained model has
    return save_tiny_llama(tmp_path_factory.mktemp("teacher"), chat=True, layers=4, init_std=0.5, corpus=CORPUS)


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    from rag_lfm.knowledge_base import KnowledgeBase

    kb = KnowledgeBase.create(tmp_path_factory.mktemp("kb") / "kb", embedder="hash-64")
    kb.ingest(InMemory(name="toy", items=[Document(t, CORPUS[i], {"title": t}) for i, t in enumerate(TITLES)]),
              progress=False)
    return kb


@pytest.fixture(scope="module")
def teacher(teacher_folder) -> TransformersReader:
    # float32: the tests below compare cached log-probabilities with a fresh forward pass to 1e-4
    return TransformersReader(teacher_folder, device="cpu", dtype="float32", max_new_tokens=6, max_passage_tokens=40,
                              batch_size=4).warm_up()


def examples(n: int = len(QUESTIONS)) -> list[QAExample]:
    return [QAExample(q, [TITLES[g]], f"q{i}") for i, (q, g) in enumerate(zip(QUESTIONS[:n], GOLD))]


def _prompts(reader: TransformersReader, tokenizer) -> PromptBuilder:
    return PromptBuilder(tokenizer, budget=reader.context_window - reader.max_new_tokens,
                         max_passage_tokens=reader.max_passage_tokens, one_shot=reader.one_shot)


# -- specs ----------------------------------------------------------------------------------------
def test_specs_parse_and_name_bad_input():
    assert TeacherSpec.parse("replug:5") == TeacherSpec("replug", 5)
    assert TeacherSpec.parse("replug").k == 5 and TeacherSpec.parse("in-context").k == 1
    assert TeacherSpec.parse("replug:3").student_strategy == "in-context"
    assert TeacherSpec.parse("closed-book") == TeacherSpec("closed-book", 0)
    assert StudentSpec.parse("layers=15") == StudentSpec(layers=15)
    assert StudentSpec.parse("copy") == StudentSpec() and StudentSpec.parse("path=/m").path == "/m"
    with pytest.raises(ConfigError, match="'beam'.*in-context, replug, closed-book"):
        TeacherSpec.parse("beam:5")
    with pytest.raises(ConfigError, match="k 'x' is not an integer"):
        TeacherSpec.parse("replug:x")
    with pytest.raises(ConfigError, match="'width=3' is not valid; use 'layers=N'"):
        StudentSpec.parse("width=3")
    with pytest.raises(ConfigError, match="loss 'mse' is not valid; use one of kl, seq, gold"):
        TrainConfig(loss="mse")


# -- the student ------------------------------------------------------------------------------------
def test_kept_layers_every_other_with_first_and_last():
    assert kept_layers(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert kept_layers(4, 2) == [0, 3] and kept_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="from 1 to 4 .* got layers=5"):
        kept_layers(4, 5)


def test_pruned_student_holds_the_teachers_weights(teacher):
    before = teacher.weights_fingerprint()
    student, tok, info = build_student(teacher.model, teacher.tokenizer, StudentSpec(layers=2))
    assert info["kept_layers"] == [0, 3] and student.config.num_hidden_layers == 2
    t, s = teacher.model.state_dict(), student.state_dict()
    for name, value in s.items():
        src = name.replace("layers.1.", "layers.3.")  # student layer 1 is teacher layer 3
        assert torch.equal(value, t[src]), name
    assert info["parameters"] < sum(p.numel() for p in teacher.model.parameters())
    # the student trains without touching the teacher (its tensors were cloned)
    student.model.layers[0].mlp.up_proj.weight.data.add_(1.0)
    assert teacher.weights_fingerprint() == before


# -- the teacher cache ------------------------------------------------------------------------------
def test_cache_resumes_without_recomputing_and_holds_replug_mixture(teacher, kb, tmp_path):
    spec = TeacherSpec.parse("replug:2")
    folder = tmp_path / "cache"
    first = build_teacher_cache(teacher, kb, examples(4), spec, folder, top_k=8, shard_size=3, progress=False)
    assert first == {"computed": 4, "reused": 0, "total": 4}
    files = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    second = build_teacher_cache(teacher, kb, examples(6), spec, folder, top_k=8, shard_size=3, progress=False)
    assert second == {"computed": 2, "reused": 4, "total": 6}
    # the first shards were not rewritten
    assert all((folder / name).stat().st_mtime_ns == t for name, t in files.items() if name.startswith("shard-"))
    assert build_teacher_cache(teacher, kb, examples(6), spec, folder, top_k=8, progress=False)["computed"] == 0
    cache = TeacherCache(folder)
    records = cache.records()
    assert [r["id"] for r in records] == [f"q{i}" for i in range(6)]
    rec = records[0]
    idx, lp = cache.tensors(rec)
    assert idx.shape == lp.shape == (len(answer_ids(teacher.tokenizer, rec["teacher_answer"])), 8)
    assert torch.all(lp[:, :-1] >= lp[:, 1:]) and len(rec["passages"]) == 2
    # the cached target is REPLUG's mixture: sum_r w_r p_r(t) over the two single-passage prompts
    from rag_lfm.distill.cache import answer_logits, hit_from_dict
    from rag_lfm.readers.prompts import plan_prompts

    hits = [hit_from_dict(h) for h in rec["passages"]]
    parts, w = plan_prompts(teacher.prompts, rec["question"], hits, "replug", teacher.replug_temperature)
    target = answer_ids(teacher.tokenizer, rec["teacher_answer"])
    with torch.no_grad():
        probs = [torch.softmax(answer_logits(teacher.model, [p.ids], [target], 0), -1) for p in parts]
    mixed = sum(wr * pr for wr, pr in zip(w, probs))
    assert torch.allclose(lp[0], mixed[0].log()[idx[0]], atol=1e-4)
    # another teacher's cache is never mixed in
    with pytest.raises(ConfigError, match="made by another teacher .*teacher"):
        build_teacher_cache(teacher, kb, examples(2), TeacherSpec.parse("in-context:1"), folder, top_k=8, progress=False)


# -- losses and training ---------------------------------------------------------------------------
def test_kl_loss_is_zero_on_the_teachers_distribution_and_positive_elsewhere():
    logits = torch.tensor([[0.0, 4.0, 1.0]])
    lp = torch.log_softmax(logits, -1)
    t = Targets(torch.tensor([1]), torch.tensor([[0, 1, 2]]), lp)
    assert float(kl_loss(logits, t, temperature=2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_loss(torch.tensor([[3.0, 0.0, 0.0]]), t, temperature=2.0)) > 0.5


def test_tiny_student_trains_and_its_kl_falls(teacher, kb, tmp_path):
    spec = TeacherSpec.parse("replug:2")
    build_teacher_cache(teacher, kb, examples(), spec, tmp_path / "cache", top_k=16, progress=False)
    model, tok, _ = build_student(teacher.model, teacher.tokenizer, StudentSpec(layers=2))
    data = build_examples(TeacherCache(tmp_path / "cache"), tok, _prompts(teacher, tok), "in-context", "kl")
    assert len(data) == len(QUESTIONS) and all(len(e.target) == e.top_idx.shape[0] for e in data)
    pad = int(tok.pad_token_id)
    before = mean_kl(model, data, pad)
    out = train_student(model, data, TrainConfig(loss="kl", lr=1e-2, epochs=4, batch_size=4), tmp_path / "ckpt",
                        pad_id=pad, progress=False)
    after = mean_kl(model, data, pad)
    assert out["steps"] == 8 and after < 0.7 * before, (before, after)
    # the embeddings (and the tied head) stay the teacher's
    assert torch.equal(model.get_input_embeddings().weight, teacher.model.get_input_embeddings().weight)


def test_training_resumes_from_a_checkpoint_exactly(teacher, kb, tmp_path):
    build_teacher_cache(teacher, kb, examples(), TeacherSpec.parse("in-context:1"), tmp_path / "cache", top_k=8,
                        progress=False)
    cache = TeacherCache(tmp_path / "cache")

    def fresh():
        model, tok, _ = build_student(teacher.model, teacher.tokenizer, StudentSpec(layers=2))
        return model, build_examples(cache, tok, _prompts(teacher, tok), "in-context", "kl"), int(tok.pad_token_id)

    cfg = dict(loss="kl", lr=5e-3, epochs=3, batch_size=3, checkpoint_every=2)
    straight, data, pad = fresh()
    train_student(straight, data, TrainConfig(**cfg), tmp_path / "a", pad_id=pad, progress=False)
    halted, data, pad = fresh()  # an interrupted run: stops after 4 of 9 steps ...
    assert train_student(halted, data, TrainConfig(**cfg, max_steps=4), tmp_path / "b", pad_id=pad, progress=False)["steps"] == 4
    resumed, data, pad = fresh()  # ... and a new process picks it up from its checkpoint
    out = train_student(resumed, data, TrainConfig(**cfg), tmp_path / "b", pad_id=pad, progress=False)
    assert out["resumed_from"] == 4 and out["steps"] == 9
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ConfigError, match="another configuration"):
        train_student(resumed, data, TrainConfig(**{**cfg, "lr": 1e-3}), tmp_path / "b", pad_id=pad, progress=False)


# -- end to end: distill(), reload, the teacher unchanged, the CLI -----------------------------------
def test_distill_saves_a_student_that_reloads_identically(teacher, kb, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    before = teacher.weights_fingerprint()
    out = tmp_path / "student"
    cfg = TrainConfig(loss="kl", lr=1e-2, epochs=2, batch_size=4)
    report = distill(kb, out=out, teacher="replug:2", student="layers=2", examples=examples(), teacher_reader=teacher,
                     top_k=16, config=cfg, progress=False)
    assert teacher.weights_fingerprint() == before  # the teacher never changes
    assert report.cache["computed"] == len(QUESTIONS) and report.steps == 4 and report.kl_after < report.kl_before
    card = load_card(out)
    assert card["strategy"] == "in-context" and card["k"] == 2 and card["student"]["kept_layers"] == [0, 3]
    assert card["teacher"]["weights_sha256"] == before and card["reader_options"]["max_passage_tokens"] == 40
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))  # safetensors only, no pickle
    # config and weights reload identically: the saved folder equals the last training checkpoint
    ckpt = next((tmp_path / "student.work" / "checkpoints").glob("*/step-*"))
    trained = load_file(str(ckpt / "model.safetensors"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert AutoConfig.from_pretrained(out).num_hidden_layers == 2
    for name, value in reloaded.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # ... and it loads as a reader by path, answering from the passages
    reader = TransformersReader(str(out), device="cpu", max_new_tokens=6, max_passage_tokens=40)
    hits = kb.search(QUESTIONS[0], k=2)
    answer = reader.generate(QUESTIONS[0], hits, strategy="in-context")
    assert answer.text and answer.model == "student"
    assert reader.generate(QUESTIONS[0], hits, strategy="in-context").text == answer.text
    # a rerun reuses the cache and the finished checkpoint: nothing is recomputed or retrained
    again = distill(kb, out=out, teacher="replug:2", student="layers=2", examples=examples(), teacher_reader=teacher,
                    top_k=16, config=cfg, progress=False)
    assert again.cache == {"computed": 0, "reused": len(QUESTIONS), "total": len(QUESTIONS)}
    assert again.resumed_from == again.steps == 4
    # a folder that is not a student is never overwritten
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a distilled student"):
        distill(kb, out=tmp_path / "other", teacher="replug:2", student="layers=2", examples=examples(),
                teacher_reader=teacher, work=tmp_path / "student.work", top_k=16, config=cfg, progress=False)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_gold_control_and_seq_kd_train_on_their_answers(teacher, kb, tmp_path):
    build_teacher_cache(teacher, kb, examples(), TeacherSpec.parse("in-context:1"), tmp_path / "cache", top_k=4,
                        progress=False)
    cache = TeacherCache(tmp_path / "cache")
    tok = teacher.tokenizer
    gold = build_examples(cache, tok, _prompts(teacher, tok), "in-context", "gold")
    seq = build_examples(cache, tok, _prompts(teacher, tok), "in-context", "seq")
    recs = cache.records()
    assert [e.target for e in gold] == [answer_ids(tok, r["answers"][0]) for r in recs]
    assert [e.target for e in seq] == [answer_ids(tok, r["teacher_answer"]) for r in recs]
    assert gold[0].top_idx is None  # the control never sees the teacher's distributions
    with pytest.raises(ConfigError, match="needs the teacher's tokenizer"):
        build_examples(cache, tok, _prompts(teacher, tok), "in-context", "kl", same_tokenizer=False)


def test_cli_distill_then_ask_with_the_student(teacher_folder, kb, tmp_path):
    from typer.testing import CliRunner

    from rag_lfm.cli import app

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"id": e.id, "question": e.question, "answers": e.answers}) + "\n"
                            for e in examples()))
    out = tmp_path / "student"
    res = CliRunner().invoke(app, ["distill", str(kb.path), "--teacher", "in-context:1", "--student", "layers=2",
                                   "--out", str(out), "--teacher-model", teacher_folder, "--data", str(data),
                                   "--max-passage-tokens", "40", "--lr", "0.01", "--batch-size", "4", "--device", "cpu",
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output.strip().splitlines()[-1])
    assert report["steps"] == 2 and report["examples"] == len(QUESTIONS) and report["student"] == "layers=2"
    res = CliRunner().invoke(app, ["ask", str(kb.path), QUESTIONS[0], "--model", str(out), "-k", "1",
                                   "--max-passage-tokens", "40", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output.strip().splitlines()[-1])["model"] == "student"
    res = CliRunner().invoke(app, ["distill", str(kb.path), "--teacher", "beam:3", "--out", str(tmp_path / "x"),
                                   "--teacher-model", teacher_folder, "--data", str(data)])
    assert res.exit_code == 2 and "teacher 'beam:3' has an unknown strategy" in res.output


def test_shared_prefix_gives_the_same_logits_and_trains(teacher, kb):
    from rag_lfm.distill.cache import answer_logits
    from rag_lfm.readers.prompts import plan_prompts

    model, tok, _ = build_student(teacher.model, teacher.tokenizer, StudentSpec(layers=2))
    pb = _prompts(teacher, tok)
    prompts, targets = [], []
    for q in QUESTIONS[:3]:
        parts, _ = plan_prompts(pb, q, kb.search(q, k=2), "in-context", 0.05)
        prompts.append(parts[0].ids)
        targets.append(answer_ids(tok, "Eiffel Tower" if "tower" in q else "Nile"))
    prefix = parts[0].prefix_len
    assert prefix > 10
    plain = answer_logits(model, prompts, targets, int(tok.pad_token_id))
    shared = answer_logits(model, prompts, targets, int(tok.pad_token_id), prefix)
    assert torch.allclose(plain, shared, atol=1e-4)
    shared.logsumexp(-1).sum().backward()  # gradients reach the layers through the answer positions
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_frozen_lower_layers_keep_the_teachers_weights(teacher, kb, tmp_path):
    build_teacher_cache(teacher, kb, examples(4), TeacherSpec.parse("in-context:1"), tmp_path / "cache", top_k=4,
                        progress=False)
    model, tok, _ = build_student(teacher.model, teacher.tokenizer, StudentSpec())  # a full copy, 4 layers
    data = build_examples(TeacherCache(tmp_path / "cache"), tok, _prompts(teacher, tok), "in-context", "kl")
    train_student(model, data, TrainConfig(lr=1e-2, batch_size=2, freeze_layers=2), tmp_path / "ckpt",
                  pad_id=int(tok.pad_token_id), progress=False)
    t = teacher.model.state_dict()
    for name, value in model.state_dict().items():
        if "rotary" in name or name == "model.norm.weight":
            continue  # buffers; the final norm trains (a weight vector of ones may or may not move far)
        frozen = ".layers.0." in name or ".layers.1." in name or "embed_tokens" in name or "lm_head" in name
        assert torch.equal(value, t[name]) == frozen, name


def test_a_teacher_with_a_reader_adapter_is_refused_clearly(teacher_folder, kb, tmp_path):
    adapted = TransformersReader(teacher_folder, device="cpu", adapter="my-lora")
    with pytest.raises(ConfigError, match="carries the reader adapter 'my-lora'; distilling an adapted teacher"):
        distill(kb, out=tmp_path / "s", teacher="in-context:1", student="layers=2", examples=examples(2),
                teacher_reader=adapted, progress=False)
