"""Settings of the process group, the sharding and the model that need no second process: the
process group's timeout, the master weights' dtypes, non-reentrant gradient checkpointing, and the
context check's advice for a 4k-context model."""

from __future__ import annotations

import datetime

import pytest
import torch

from srft.config import ModelConfig
from srft.distributed import init_from_env, master_weights_fp32
from srft.models.loading import ModelError, check_context, load_model_and_tokenizer


def test_process_group_gets_the_configured_timeout(monkeypatch):
    import torch.distributed as dist

    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = init_from_env("cpu", timeout_minutes=45)
    assert (d.rank, d.world, d.local_rank) == (1, 2, 1)
    assert seen == {"backend": "gloo", "timeout": datetime.timedelta(minutes=45)}
    init_from_env("cpu")
    assert seen["timeout"] == datetime.timedelta(hours=2)  # the default: model.dist_timeout_minutes=120


def test_config_default_timeout_is_the_functions():
    import inspect

    default = inspect.signature(init_from_env).parameters["timeout_minutes"].default
    assert ModelConfig().dist_timeout_minutes == default


def test_frozen_parameters_keep_their_dtype_trainable_ones_become_float32(tiny_model_dir):
    """LoRA's frozen base stays in the compute dtype under FSDP2; only the adapters are float32 masters."""
    cfg = ModelConfig(path=str(tiny_model_dir), device="cpu", dtype="bfloat16", lora_rank=4)
    model, _, _ = load_model_and_tokenizer(cfg, for_training=True)
    model.to(torch.bfloat16)  # as if every parameter came in bfloat16
    master_weights_fp32(model)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    assert sum(p.requires_grad for p in model.parameters()) > 0


def test_gradient_checkpointing_is_non_reentrant(tiny_model_dir):
    model, _, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True),
                                           for_training=True)
    funcs = [m._gradient_checkpointing_func for m in model.modules() if getattr(m, "gradient_checkpointing", False)]
    assert funcs, "no layer is checkpointed"
    assert all(f.keywords == {"use_reentrant": False} for f in funcs)


def test_context_error_names_the_config_edit_for_a_4k_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # a 4,096-position window, as Qwen2.5-Math-7B's
    with pytest.raises(ModelError) as e:
        check_context(model, 1024, 8192, "data.max_prompt_tokens + data.max_response_tokens")
    msg = str(e.value)
    assert "\n" not in msg
    assert "need 9216 positions" in msg and "is 4096" in msg
    assert '"max_position_embeddings": 16384 and "rope_theta": 40000' in msg
    assert msg.endswith("or lower data.max_response_tokens")


def test_merged_lora_state_is_merge_and_unload(tiny_model_dir):
    """What rank 0 writes under torchrun from the gathered LoRA model equals PEFT's own merge."""
    import copy

    from transformers import AutoModelForCausalLM

    from srft.models.loading import merged_lora_state, tied_duplicates

    model, _, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_model_dir), lora_rank=4, lora_alpha=8),
                                           for_training=True)
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero: give the adapters something to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    got = merged_lora_state(model.get_base_model(), model.state_dict())
    assert set(got) == set(want)
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-6, atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    moved = max((got[name] - t).abs().max().item() for name, t in plain.items())
    assert moved > 1e-2, "the merge changed nothing: the test shows nothing"
    assert tied_duplicates(model.get_base_model()) == {"lm_head.weight"}


def test_load_whole_reads_every_file_of_a_split_checkpoint(tiny_model_dir, tmp_path):
    """The HF engine's copy, read tensor by tensor from a checkpoint split over several files (an
    index), equals transformers' own load: tied head, rotary buffers and all."""
    from transformers import AutoModelForCausalLM

    from srft.models.loading import load_whole, safetensors_index

    AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "split", max_shard_size="20KB")
    files = safetensors_index(tmp_path / "split")
    assert len(set(files.values())) > 2
    model = load_whole(tmp_path / "split", torch.bfloat16, torch.device("cpu"))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "split", dtype=torch.bfloat16)
    want = plain.state_dict()
    got = model.state_dict()
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    for name, b in plain.named_buffers():
        torch.testing.assert_close(dict(model.named_buffers())[name].float(), b.float())
    ids = torch.tensor([[5, 6, 7, 8]])
    torch.testing.assert_close(model(input_ids=ids).logits, plain(input_ids=ids).logits)


def test_sharded_loading_falls_back_without_safetensors_by_name(tiny_model_dir, tmp_path):
    """A checkpoint without safetensors files, or one whose tensor names are not the model's, takes
    the whole-model path (the caller is told by None)."""
    from srft.models.loading import build_empty, parameter_sources, safetensors_index

    (tmp_path / "bin").mkdir()  # what matters: no *.safetensors (transformers 5 writes no .bin any more)
    (tmp_path / "bin" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    assert safetensors_index(tmp_path / "bin") is None
    files = safetensors_index(tiny_model_dir)
    model = build_empty(tiny_model_dir, torch.float32)
    assert next(model.parameters()).is_meta and not next(model.buffers()).is_meta
    sources = parameter_sources(model, files)
    assert sources is not None and "lm_head.weight" not in sources  # the tied head is the embedding
    renamed = {k.replace("model.layers.", "transformer.h."): v for k, v in files.items()}
    assert parameter_sources(model, renamed) is None
