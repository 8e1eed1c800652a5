"""Per-rank peak host memory of loading a model for training under torchrun: today's path (every
rank loads the whole float32 model, then shards it) against the sharded one (parameters built on
the meta device, sharded, each rank reading its own rows from the safetensors files).

    python benchmarks/sharded_load.py                 # a random Qwen2-0.5B-shaped model, 2 gloo ranks
    python benchmarks/sharded_load.py --size test     # a ~38M-parameter one (tests/test_sharded_loading.py)

The model is written with random weights in bfloat16 (as published checkpoints are) into a temporary
directory; no download. Each path runs in its own torchrun launch (a process's peak RSS counts
everything it ever held), and each rank records its peak RSS (``ru_maxrss``) and how far above its
RSS before the load (torch and transformers imported) that is, then a SHA-1 of every whole
parameter (gathered one at a time) and the loss of one forward pass.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {
    # Qwen2-0.5B's shape: 494M parameters, tied embeddings, vocabulary 151,936
    "0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                 num_attention_heads=14, num_key_value_heads=2),
    # ~38M parameters; an odd vocabulary, so that the ranks' row counts differ
    "test": dict(vocab_size=50001, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2),
}
VARIANTS = ("sharded", "today", "hsdp_ckpt", "engine_bf16", "lora_bf16")


def write_model(path: Path, size: str) -> int:
    """A random Qwen2-shaped model and the character tokenizer in ``path``; its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(**SIZES[size], max_position_embeddings=4096, tie_word_embeddings=True,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    model = Qwen2ForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    model.to(torch.bfloat16).save_pretrained(path)
    tok.save_pretrained(path)
    return n


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def current_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def digests(model) -> dict[str, str]:
    """SHA-1 of each whole parameter in float32, gathered one tensor at a time (a collective)."""
    out = {}
    for name, t in model.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        out[name] = hashlib.sha1(full.detach().float().contiguous().numpy().tobytes()).hexdigest()
    return out


def loss_of(model, backward: bool = False) -> float:
    import torch

    ids = torch.arange(1, 33).remainder(40).unsqueeze(0) + 3
    loss = model(input_ids=ids, labels=ids).loss
    if backward:
        loss.backward()
    return float(loss)


def run_variant(name: str, path: Path, dist) -> dict:
    import torch

    from srft.config import ModelConfig
    from srft.models.loading import load_for_training, load_model_and_tokenizer, wrap_model

    cfg = ModelConfig(path=str(path), device="cpu")
    before = current_rss_mb()
    out: dict = {}
    if name == "today":
        model, _, _ = load_model_and_tokenizer(cfg, for_training=True)
        model = wrap_model(model, cfg, dist)
    elif name == "sharded":
        model, _, _, _ = load_for_training(cfg, dist)
    elif name == "hsdp_ckpt":
        cfg = ModelConfig(path=str(path), device="cpu", shard_group_size=1, gradient_checkpointing=True)
        model, _, _, _ = load_for_training(cfg, dist)
    elif name == "engine_bf16":
        cfg = ModelConfig(path=str(path), device="cpu", dtype="bfloat16")
        model, _, _, engine = load_for_training(cfg, dist, engine_copy=True)
        own = engine.state_dict()
        full = {k: (t.full_tensor() if hasattr(t, "full_tensor") else t) for k, t in model.state_dict().items()}
        out["engine_dtypes"] = sorted({str(t.dtype) for t in own.values()})
        out["engine_equal"] = all(torch.equal(own[k], v.to(own[k].dtype)) for k, v in full.items())
        out["engine_tied"] = engine.lm_head.weight is engine.model.embed_tokens.weight
        del engine, own, full
    elif name == "lora_bf16":
        cfg = ModelConfig(path=str(path), device="cpu", dtype="bfloat16", lora_rank=4)
        model, _, _, _ = load_for_training(cfg, dist)
        out["frozen_dtypes"] = sorted({str(p.dtype) for p in model.parameters() if not p.requires_grad})
        out["trainable_dtypes"] = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
        out["loss"] = loss_of(model, backward=True)
        out["adapter_grads"] = all(p.grad is not None for p in model.parameters() if p.requires_grad)
        return out
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_before_mb"] = before
    inner = getattr(model, "model", None)
    out["tied"] = inner is not None and model.lm_head.weight is inner.embed_tokens.weight
    out["digests"] = digests(model)
    out["loss"] = loss_of(model, backward=name == "hsdp_ckpt")
    del model
    gc.collect()
    return out


def worker(path: Path, variants: list[str], out: Path) -> None:
    import torch

    from srft.distributed import init_from_env, shutdown

    torch.set_num_threads(1)
    dist = init_from_env("cpu")
    import transformers  # noqa: F401  (imported before the start figure: its memory is no load's)
    from transformers import Qwen2ForCausalLM  # noqa: F401

    import srft.models.loading  # noqa: F401
    start_rss = current_rss_mb()
    results = {"start_rss_mb": start_rss}
    for v in variants:
        results[v] = run_variant(v, path, dist)
    every = dist.gather(results)
    if dist.main:
        out.write_text(json.dumps(every))
    shutdown(dist)


def launch(path: Path, variants: list[str], out: Path, ranks: int = 2, timeout: int = 1200) -> list[dict]:
    """Run the variants on ``ranks`` gloo ranks; each rank's results."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(29500 + (os.getpid() * 7) % 1000), __file__, "--worker", str(path), "--variants", ",".join(variants),
           "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    ap.add_argument("--variants", default="sharded,today")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    variants = args.variants.split(",")
    if args.worker:
        return worker(args.worker, variants, args.out)
    with tempfile.TemporaryDirectory() as tmp:
        n = write_model(Path(tmp) / "model", args.size)
        # one launch per variant: a peak RSS is the process's whole life's
        ranks = {v: launch(Path(tmp) / "model", [v], Path(tmp) / f"{v}.json") for v in variants}
    print(f"{args.size}: {n / 1e6:.0f}M parameters ({4 * n / 2**20:.0f} MiB in float32, {2 * n / 2**20:.0f} MiB "
          f"on disk in bfloat16), 2 gloo ranks")
    print(f"{'variant':<12} {'rank':>4} {'start RSS MiB':>14} {'peak RSS MiB':>13} {'peak - start':>13}")
    for v in variants:
        for r, res in enumerate(ranks[v]):
            if "peak_rss_mb" in res[v]:
                print(f"{v:<12} {r:>4} {res['start_rss_mb']:>14.0f} {res[v]['peak_rss_mb']:>13.0f} "
                      f"{res[v]['peak_rss_mb'] - res['start_rss_mb']:>13.0f}")
    with_digests = [v for v in variants if "digests" in ranks[v][0][v]]
    same = all(ranks[v][0][v]["digests"] == ranks[with_digests[0]][0][with_digests[0]]["digests"]
               for v in with_digests)
    print(f"every parameter equal across {', '.join(with_digests)}: {same}")


if __name__ == "__main__":
    main()
