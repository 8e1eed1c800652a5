import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srft.models import base_model as bm
from srft.models.base_model import BaseModelConfig, build_base_model, ensure_base_model, measure_accuracy
from srft.models.tokenizer import CHARSET, build_char_tokenizer
from srft.tasks import get_task

TEXT = "347+285=7+5=12 >2 4+8+1=13 >32 #### 632\n(3+4)*2 = 14 ~{}|"


def tiny_config(steps=4):
    return BaseModelConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=128, steps=steps, batch_size=8, warmup_steps=2,
        eval_prompts=4, eval_k=2,
    )


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_one_id_per_char_and_round_trip():
    tok = build_char_tokenizer()
    ids = tok(TEXT, add_special_tokens=False).input_ids
    assert len(ids) == len(TEXT)
    assert tok.decode(ids) == TEXT
    with_specials = [tok.bos_token_id] + ids + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(with_specials, skip_special_tokens=True) == TEXT
    assert tok.pad_token == "<pad>" and tok.eos_token == "<eos>"
    assert tok.pad_token_id != tok.eos_token_id
    assert len(tok) == len(CHARSET) + 4
    # every char of the charset is its own token; unknown chars map to <unk>
    assert len(set(tok(CHARSET, add_special_tokens=False).input_ids)) == len(CHARSET)
    assert tok("é", add_special_tokens=False).input_ids == [tok.unk_token_id]
    assert tok("<eos>", add_special_tokens=False).input_ids == [tok.eos_token_id]


def test_tokenizer_save_and_autoload(tmp_path):
    tok = build_char_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    assert tok2(TEXT, add_special_tokens=False).input_ids == tok(TEXT, add_special_tokens=False).input_ids
    assert tok2.decode(tok2(TEXT).input_ids) == TEXT
    assert (tok2.pad_token_id, tok2.eos_token_id, tok2.bos_token_id) == (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id)
    tok2.padding_side = "left"
    batch = tok2(["1+1=", "12+34="], padding=True, add_special_tokens=False)
    assert batch.input_ids[0][:2] == [tok.pad_token_id] * 2 and batch.attention_mask[0][:2] == [0, 0]


# --------------------------------------------------------------------------- model
def test_tiny_build_save_load_identical_logits(tmp_path):
    out = build_base_model(tmp_path / "base", "addition", seed=0, progress=False, config=tiny_config(), measure=False)
    assert (out / "model.safetensors").is_file()
    info = json.loads((out / "srft_base.json").read_text())
    assert info["task"] == "addition" and info["seed"] == 0 and info["config"]["steps"] == 4
    assert info["n_params"] > 0 and "pretrain_seconds" in info
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama"
    ids = tok(["12+34=4+2=6"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits1 = model(ids).logits
        logits2 = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(logits1, logits2)

    # a rebuild with the same seed gives the same weights, and replaces the directory in place
    build_base_model(tmp_path / "again", "addition", seed=0, progress=False, config=tiny_config(), measure=False)
    with torch.no_grad():
        logits3 = AutoModelForCausalLM.from_pretrained(tmp_path / "again").eval()(ids).logits
    assert torch.equal(logits1, logits3)
    build_base_model(out, "addition", seed=1, progress=False, config=tiny_config(), measure=False)
    assert json.loads((out / "srft_base.json").read_text())["seed"] == 1


def test_measure_accuracy_runs():
    tok = build_char_tokenizer()
    model = bm.make_model(tiny_config(), tok, seed=0)
    task = get_task("addition")
    acc, details = measure_accuracy(model, tok, task, "test_id", n_prompts=3, k=2, temperature=1.0, seed=0,
                                    max_new_tokens=8, return_details=True)
    assert 0.0 <= acc <= 1.0
    assert len(details["completions"]) == 3 and all(len(c) == 2 for c in details["completions"])
    assert tok.padding_side == "right"  # restored


def test_measured_accuracy_of_a_perfect_policy():
    """measure_accuracy scores what the model generates: a model that emits the
    expert demonstration (teacher-forced through a lookup) gets 1.0."""
    task = get_task("addition")
    rows = task.generate("test_id", 3, 0)

    class Oracle:
        training = False

        def eval(self):
            return self

        def train(self, mode=True):
            return self

        def parameters(self):  # the rollout engine reads the device from here
            return iter([torch.zeros(1)])

    tok = build_char_tokenizer()
    answers = {r["prompt"]: r["demonstration"] for r in rows}

    def generate(input_ids, attention_mask, max_new_tokens, **kw):
        outs = []
        for row_ids, m in zip(input_ids, attention_mask):
            prompt = tok.decode(row_ids[m.bool()])
            demo = tok(answers[prompt], add_special_tokens=False).input_ids + [tok.eos_token_id]
            outs.append(row_ids.tolist() + demo)
        width = max(map(len, outs))
        return torch.tensor([o + [tok.pad_token_id] * (width - len(o)) for o in outs])

    oracle = Oracle()
    oracle.generate = generate
    assert measure_accuracy(oracle, tok, task, "test_id", n_prompts=3, k=2, temperature=1.0, seed=0) == 1.0


def test_ensure_base_model_caches(tmp_path, monkeypatch):
    calls = []
    real = bm.build_base_model

    def counting(*a, **kw):
        calls.append(a)
        kw["measure"] = False
        return real(*a, **kw)

    monkeypatch.setattr(bm, "build_base_model", counting)
    p1 = ensure_base_model(tmp_path, "addition", seed=0, progress=False, config=tiny_config(2))
    p2 = ensure_base_model(tmp_path, "addition", seed=0, progress=False, config=tiny_config(2))
    assert p1 == p2 and len(calls) == 1
    p3 = ensure_base_model(tmp_path, "addition", seed=0, progress=False, config=tiny_config(3))
    assert p3 != p1 and len(calls) == 2  # a different recipe is a different cache entry


# --------------------------------------------------------------------------- shipped weights
@pytest.mark.parametrize("task, steps", bm.SHIPPED)
def test_shipped_build_matches_its_recipe_and_record(task, steps):
    # The shipped directory is named by the recipe's hash: a recipe change (or a BUILD_FORMAT
    # bump) leaves it unused until it is rebuilt with `python -m srft.models.base_model ship`.
    path = bm.shipped_base_model(bm.base_model_dirname(task, 0, BaseModelConfig(steps=steps)))
    assert path is not None, f"no shipped build of {task} for {steps} steps"
    info = json.loads((path / "srft_base.json").read_text())
    assert (info["task"], info["seed"], info["config"]["steps"], info["format"]) == (task, 0, steps, bm.BUILD_FORMAT)
    assert info["weights_sha256"] == bm.weights_digest(path)  # the weights are the ones measured
    assert info["config"] == {**vars(BaseModelConfig(steps=steps)), "corpus": info["config"]["corpus"]}


def test_empty_cache_gets_the_shipped_weights_without_building(tmp_path, monkeypatch):
    def no_build(*a, **kw):
        raise AssertionError("built although the package ships this recipe")

    monkeypatch.setattr(bm, "build_base_model", no_build)
    path = ensure_base_model(tmp_path / "cache", "addition", seed=0, progress=False)
    assert path.parent == tmp_path / "cache"
    shipped = bm.shipped_base_model(path.name)
    assert bm.weights_digest(path) == bm.weights_digest(shipped)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp copy left
    model = AutoModelForCausalLM.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == json.loads((path / "srft_base.json").read_text())["n_params"]


def test_rebuild_builds_even_when_shipped(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bm, "build_base_model", lambda path, *a, **kw: calls.append(path) or path)
    path = ensure_base_model(tmp_path, "addition", seed=0, progress=False, rebuild=True)
    assert calls == [path]
    # a seed that does not ship is built too
    ensure_base_model(tmp_path, "addition", seed=5, progress=False)
    assert len(calls) == 2 and "seed5" in calls[1].name


@pytest.mark.slow
def test_shipped_model_measures_as_recorded(built_base_model):
    # The session fixture installs the shipped weights; sampling on another CPU may differ in
    # the last bits, so allow a few samples' worth of difference (64 prompts x 8 samples).
    info = json.loads((built_base_model / "srft_base.json").read_text())
    model, tok = bm.load_base_model(built_base_model)
    torch.set_num_threads(2)
    acc = measure_accuracy(model, tok, get_task("addition"), "test_id", 64, 8, 1.0, seed=0)
    assert abs(acc - info["accuracy"]["test_id_avg@8"]) < 0.05, (acc, info["accuracy"])


@pytest.mark.slow
def test_default_recipe_gives_partial_competence(tmp_path):
    # Built from scratch (not the shipped weights): the recipe itself lands in the band seen
    # on machines of this kind (test_id avg@8 0.23-0.36), not at 0 or near 1.
    path = ensure_base_model(tmp_path, "addition", seed=0, progress=False, rebuild=True)
    acc = json.loads((path / "srft_base.json").read_text())["accuracy"]["test_id_avg@8"]
    assert 0.1 <= acc <= 0.5
