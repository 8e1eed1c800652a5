"""Load a policy and its tokenizer, and turn prompts into token ids.

``model.path: null`` means the built-in base model, built on first use and cached.
Any local Hugging Face causal-LM directory works too.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from srft.config import ModelConfig


class ModelError(ValueError):
    """The model path or the model itself cannot be used; the message says why and what to do."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device={name} but no CUDA device is available; use model.device=cpu")
    return torch.device(name)


def resolve_model_path(cfg: ModelConfig, task_name: str, progress: bool = True) -> Path:
    """The directory to load: ``cfg.path``, or the built-in base model (built if missing)."""
    if cfg.path is None:
        from srft.models.base_model import ensure_base_model

        cache = Path(os.path.expanduser(cfg.base_cache_dir))
        return Path(ensure_base_model(cache, task_name=task_name, seed=cfg.base_seed, progress=progress))
    path = Path(os.path.expanduser(cfg.path))
    if not path.exists():
        raise ModelError(f"model.path '{cfg.path}' does not exist; give a local Hugging Face model directory, "
                         f"or model.path=null for the built-in base model")
    if not (path / "config.json").exists():
        raise ModelError(f"model.path '{cfg.path}' is not a Hugging Face model directory (no config.json); "
                         f"it should hold what save_pretrained writes (config.json, *.safetensors, tokenizer files)")
    return path


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many kinds here
        raise ModelError(f"could not load a tokenizer from '{path}': {e}") from e
    if tok.eos_token_id is None:
        raise ModelError(f"the tokenizer in '{path}' has no eos_token; set one in its tokenizer_config.json")
    if tok.pad_token_id is None:
        # Padding positions are always masked out, so the EOS token can stand in.
        tok.pad_token = tok.eos_token
    return tok


def load_model_and_tokenizer(cfg: ModelConfig, task_name: str = "addition", progress: bool = True):
    """Return (model, tokenizer, path) with the model on its device, in train mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(cfg, task_name, progress)
    tok = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[cfg.dtype])
    except Exception as e:
        raise ModelError(f"could not load a causal LM from '{path}': {e}") from e
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = True
    model.to(resolve_device(cfg.device))
    model.train()
    return model, tok, path


def wrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The seam where a distributed wrapper (FSDP2 under torchrun) goes; one process: unchanged."""
    return model


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of a prompt: a plain string as is, a list of chat messages through the chat template."""
    if isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            text = "\n".join(m["content"] for m in prompt) + "\n"
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
    raise ValueError(f"a prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def encode_response(tokenizer, text: str) -> list[int]:
    """Token ids of a response (a demonstration), ending with EOS so that the policy learns to stop."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
