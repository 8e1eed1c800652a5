"""A prepared, one-shot check of srft's GPU path (issue 21): run it once on a lent GPU, read one table.

    bash scripts/gpu_check.sh OUT_DIR          # on a CUDA machine: at most 8 minutes (budget below)
    bash scripts/gpu_check.sh --cpu OUT_DIR    # the same checks at small shapes on the CPU (CI; < 2 minutes)

Checks (each in its own process, with its own time limit, so that one that fails, hangs or
poisons its CUDA context does not stop the others):

- ``srft_step``: one SRFT training step (demonstrations and rollouts, srft's preset objective,
  ``pad_batch`` -> ``response_logprobs`` -> ``token_losses`` -> ``reduce_terms`` as the loop calls
  them, gradient clipping, AdamW) on a tiny Qwen2 model, float32 master weights; CUDA against
  the CPU. Tolerances: float32 CUDA vs float32 CPU agree to ``RTOL_FP32`` = 1e-4 relative (only
  summation order differs; TF32 is off). bfloat16 keeps 8 significant bits: one rounding is
  at most 2^-9 = 0.2% relative, and a forward and backward through a few layers add a few such
  roundings, so bf16 autocast (CUDA or CPU) agrees with float32 CPU to ``RTOL_BF16`` = 2e-2
  (about ten roundings) on the loss, the gradient norm, the loss after the update and each
  loss term (a loss that is a sum of terms of both signs is compared with an absolute floor
  of RTOL times the sum of its terms' magnitudes; each term against its own magnitude). A
  bf16 figure equal to the float32 one fails too: the pass did not run in bf16. Measured on
  the CPU: bf16 autocast differs by at most 4e-4 (50x inside the tolerance; each term by at
  most 1.5e-4). A real defect (a dropped mask, a wrong dtype, a term lost on one device)
  moves these figures by far more (a lost term: 1).
- ``train_memory``: peak GPU memory (``torch.cuda.max_memory_allocated``) and time of one training
  micro-batch (forward + backward) of one sequence of 1,024 prompt + 8,192 response tokens on a
  Qwen2.5-1.5B-shaped model with random weights: float32 master weights (and AdamW state, made
  by a first step, so the figure is a steady-state step's) with bf16 autocast (srft's one-process
  ``wrap_model``), non-reentrant gradient checkpointing, and srft's loss head
  (``response_logprobs``, whatever it is at the time). ok: it fits ``FIT_GB``.
- ``hf_generation``: tokens/s of srft's HF engine (``HFEngine``) sampling 8 x 256 new tokens from
  that model (float32 weights + bf16 autocast, as a one-process run samples), and again with
  the weights cast to bf16.
- ``fsdp_torchrun``: ``torchrun --nproc_per_node 1`` runs this file's FSDP worker: an NCCL (gloo
  on the CPU) process group, a tiny model sharded with srft's ``shard_model`` (what ``wrap_model``
  calls under torchrun; with one rank ``wrap_model`` itself does not shard), one SRFT step; loss,
  gradient norm and loss after the update equal the non-distributed step's (float32: 1e-4;
  bf16: FSDP2 casts every parameter to bf16 where autocast keeps norms in float32, so 2e-2).
  Then srft's loading under torchrun (``load_sharded``: meta-device build, FSDP2, ``to_empty`` on
  the device, each rank's rows read from safetensors) of that model saved to disk: the weights
  exactly, and its bf16 step with gradient checkpointing equal to the sharded one's.
- ``srft_train_torchrun``: ``torchrun --nproc_per_node 1 -m srft train`` for 2 steps with a tiny
  random Llama and the built-in character tokenizer (bf16, gradient checkpointing, HF engine):
  it exits 0 and every step's loss and gradient norm are finite. One rank runs srft's
  one-process path (srft shards only with 2 or more ranks): this is the CLI end to end on CUDA.

Budget (GPU mode): the checks' time limits (``LIMITS``) add up to 445 s; each check gets at
most what is left of ``BUDGET_S`` = 450 s, and a check that runs out is stopped (SIGTERM, SIGKILL
5 s later), so the run ends within about 460 s, under 8 minutes, whatever hangs. Expected on an
H100: 2-3 minutes (each process spends 5-15 s importing torch and starting CUDA; the 1.5B model
is built twice, on the GPU, in seconds). ``--only a,b`` reruns some checks.

Needs only torch and transformers (which bring pyyaml, safetensors, tokenizers, numpy, tqdm);
a check whose process imports one of ``GPU_IMAGE_LACKS`` (vLLM, datasets, pyarrow, math-verify,
matplotlib, ...) fails, so that the CPU mode in CI finds such an import before a GPU session
does. Every model is built from a config with random weights: nothing is downloaded.
Writes OUT_DIR/gpu_check.json ({"checks": [{"name", "ok", "seconds", ...figures}], "device",
"torch", "transformers", "mode"}) and each check's log under OUT_DIR/logs/; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

RTOL_FP32 = 1e-4
RTOL_BF16 = 2e-2
FIT_GB = 70.0  # of an H100's ~79 GiB: room for the CUDA context and the allocator's slack
# the GPU mode's must end within 8 minutes; the CPU mode's (about 80 s on 2 busy cores) is only a
# guard against a hang in CI
BUDGET_S = {"gpu": 450.0, "cpu": 360.0}
# a check that waits for a torchrun leaves itself this much of its limit: to stop the torchrun
# (SIGTERM, then SIGKILL 5 s later) and report
STOP_MARGIN_S = 12

# name -> (GPU-mode limit, CPU-mode limit) in seconds
LIMITS = {
    "srft_step": (60, 60),
    "train_memory": (120, 60),
    "hf_generation": (90, 60),
    "fsdp_torchrun": (75, 90),
    "srft_train_torchrun": (100, 120),
}

# Shapes of each mode: the GPU mode's are the issue's; the CPU mode's keep the same code paths small (its
# 1,200 response tokens still span more than one of the head's chunks at its default size, the last ragged).
SHAPES = {
    "gpu": dict(big="qwen2.5-1.5b", prompt_tokens=1024, response_tokens=8192, gen_prompts=8, gen_prompt_tokens=64,
                gen_new_tokens=256),
    "cpu": dict(big="tiny", prompt_tokens=64, response_tokens=1200, gen_prompts=4, gen_prompt_tokens=8,
                gen_new_tokens=16),
}

HERE = Path(__file__).resolve()
SRC = HERE.parents[1] / "src"

# srft's dependencies that the GPU image may lack (it has torch and transformers, which bring pyyaml,
# safetensors, tokenizers, numpy, tqdm): a check whose process imports one of them fails, so that
# the --cpu mode (CI) finds such an import before the GPU session does.
GPU_IMAGE_LACKS = ("datasets", "pyarrow", "pandas", "math_verify", "matplotlib", "peft", "vllm")


# --------------------------------------------------------------------------- models and data


def qwen_config(kind: str):
    """A Qwen2 config: the 1.5B shape (Qwen2.5-1.5B's sizes, tied embeddings) or a tiny one. The
    rotary base is left at its default (how transformers names it changed in 5.x; it changes no
    figure measured here)."""
    from transformers import Qwen2Config

    if kind == "qwen2.5-1.5b":
        return Qwen2Config(vocab_size=151936, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, intermediate_size=8960, max_position_embeddings=32768,
                           rms_norm_eps=1e-6, tie_word_embeddings=True,
                           bos_token_id=151643, eos_token_id=151643, pad_token_id=151643)
    # a vocabulary of a few thousand so that the head's softmax is not trivial
    return Qwen2Config(vocab_size=2048, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=128, max_position_embeddings=4096,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=1, pad_token_id=0)


def build_model(kind: str, device, seed: int = 0):
    """Random weights in float32 (the trainer's master weights), built on ``device``."""
    import torch
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen_config(kind))
    return model.float().train()


class StepData:
    """A step's sequences: demonstrations and own rollouts (correct and wrong) of one prompt group,
    of unequal lengths (padding), with their advantages and the engine's log-probs of the rollouts."""

    def __init__(self, vocab: int, pad_id: int, prompt_lens: list[int], response_lens: list[int],
                 is_demo: list[bool], correct: list[bool], seed: int = 0):
        import torch

        from srft.objective import group_advantages

        g = torch.Generator().manual_seed(seed)
        self.pad_id = pad_id
        self.seqs = [(torch.randint(2, vocab, (p,), generator=g).tolist(), torch.randint(2, vocab, (r,), generator=g).tolist())
                     for p, r in zip(prompt_lens, response_lens)]
        self.is_demo = torch.tensor(is_demo)
        self.correct = torch.tensor(correct)
        self.adv = group_advantages(self.correct.float(), torch.zeros(len(is_demo), dtype=torch.long))
        self.rollout_logp: list[list[float] | None] = [None] * len(is_demo)

    def set_rollout_logprobs(self, model, device) -> None:
        """The 'engine's' log-probs of the rollouts: the starting model's, nudged (a sampler that
        differs slightly from the trainer), so that the truncated IS weight is not 1 everywhere."""
        import torch

        from srft.training.batching import pad_batch, response_logprobs

        with torch.no_grad():
            mb = pad_batch(self.seqs, self.pad_id, device)
            logp_BT, _ = response_logprobs(model, mb)
        for b, (_, r) in enumerate(self.seqs):
            if not bool(self.is_demo[b]):
                nudge = torch.linspace(-0.3, 0.3, len(r))
                self.rollout_logp[b] = (logp_BT[b, :len(r)].float().cpu() + nudge).tolist()

    def counts(self, max_len: int) -> dict:
        """agg_loss's counts, as the loop's step_counts makes them (the whole step is one micro-batch)."""
        out = {}
        for kind, keep in (("all", lambda d: True), ("demos", lambda d: d), ("rollouts", lambda d: not d)):
            chosen = [len(r) for (_, r), d in zip(self.seqs, self.is_demo.tolist()) if keep(d)]
            out[kind] = dict(num_tokens=float(sum(chosen)), num_seqs=float(len(chosen)), max_len=max_len)
        return out


def small_step_data(vocab: int, pad_id: int) -> StepData:
    # 2 demonstrations, 2 correct and 2 wrong rollouts, every length different
    return StepData(vocab, pad_id, prompt_lens=[7, 12, 5, 9, 11, 6], response_lens=[30, 18, 41, 12, 25, 36],
                    is_demo=[True, True, False, False, False, False],
                    correct=[True, True, True, True, False, False])


def srft_objective():
    from srft.config import load_config

    return load_config("srft").objective


def srft_head(model, mb: dict):
    """srft's loss head, as the loop calls it."""
    from srft.training.batching import response_logprobs

    return response_logprobs(model, mb, **head_kwargs())


def small_chunk_head(model, mb: dict):
    """srft's loss head in chunks of 16 tokens: the small steps' sequences span several chunks,
    one of them ragged, as 8,192-token ones do with the default chunk size."""
    from srft.training.batching import response_logprobs

    return response_logprobs(model, mb, **head_kwargs(chunk=16))


def plain_head(model, mb: dict):
    """The head before issue 21: the whole [B, T, V] logits, then log-softmax and entropy over them."""
    from srft.objective import token_logprobs_and_entropy
    from srft.training.batching import response_logits

    return token_logprobs_and_entropy(response_logits(model, mb), mb["tokens_BT"])


def srft_loss(model, data: StepData, obj, device, max_len: int, head=srft_head):
    """The loss of one micro-batch holding the whole step, as ``loop.micro_batch_step`` computes it."""
    import torch

    from srft.objective import reduce_terms, token_losses
    from srft.training.batching import pad_batch

    mb = pad_batch(data.seqs, data.pad_id, device)
    mask_BT = mb["mask_BT"]
    logp_BT, ent_BT = head(model, mb)
    rollout_BT = torch.full(mask_BT.shape, float("nan"))
    for b, lp in enumerate(data.rollout_logp):
        if lp is not None:
            rollout_BT[b, :len(lp)] = torch.tensor(lp)
    demo_B = data.is_demo.to(device)
    terms, _ = token_losses(obj, logp_BT, ent_BT, mask_BT, demo_B, data.correct.to(device), data.adv.to(device),
                            rollout_logp_BT=rollout_BT.to(device))
    reduced = reduce_terms(obj, terms, mask_BT, demo_B, data.counts(max_len))
    return sum(reduced.values()), reduced


def train_step(model, data: StepData, obj, device, max_len: int, clip: float = 1.0, lr: float = 1e-3,
               head=small_chunk_head) -> dict:
    """One optimiser step: forward, backward, clip, AdamW; then the loss of the updated model."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    opt.zero_grad(set_to_none=True)
    loss, reduced = srft_loss(model, data, obj, device, max_len, head)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    opt.step()
    with torch.no_grad():
        after, _ = srft_loss(model, data, obj, device, max_len, head)
    terms = {n: float(v.detach()) for n, v in reduced.items()}
    return dict(loss=float(loss.detach()), grad_norm=grad_norm, loss_after=float(after), terms=terms,
                scale=sum(abs(v) for v in terms.values()))


def rel_diff(a: dict, ref: dict) -> float:
    """Largest relative difference of loss, gradient norm, loss after the update and each loss term.
    A loss is measured against the magnitude of its terms (they may cancel); each term against its
    own, so that a small term lost or doubled on one side (the entropy bonus is 1e-5 of the total
    here) shows; a term that is 0 on one side must be 0 on the other to 1e-6 of the total."""
    pairs = [(a[k], ref[k], abs(ref[k]) if k == "grad_norm" else max(abs(ref[k]), ref["scale"]))
             for k in ("loss", "grad_norm", "loss_after")]
    pairs += [(a["terms"].get(n, math.nan), r, abs(r) if r else 1e-6 * ref["scale"]) for n, r in ref["terms"].items()]
    worst = 0.0
    for got, want, denom in pairs:
        if not (math.isfinite(got) and math.isfinite(want)):
            return math.inf
        worst = max(worst, abs(got - want) / max(denom, 1e-12))
    return worst


def within(diff: float, dtype: str) -> bool:
    """A difference within the dtype's tolerance; in bf16 also not 0, which would mean that the
    pass ran in float32 (the autocast or the mixed-precision policy not applied)."""
    if dtype == "float32":
        return diff <= RTOL_FP32
    return 0.0 < diff <= RTOL_BF16


def autocast_copy(model, device, dtype: str):
    """A copy of ``model`` on ``device`` as srft trains it in one process (``wrap_model``)."""
    import copy

    from srft.config import ModelConfig
    from srft.models.loading import wrap_model

    return wrap_model(copy.deepcopy(model).to(device), ModelConfig(dtype=dtype))


def head_kwargs(chunk: int | None = None) -> dict:
    """The loss head's chunk size (default: as ``srft train`` passes it by default, model.loss_chunk_tokens),
    where ``response_logprobs`` takes one."""
    import inspect

    from srft.config import ModelConfig
    from srft.training.batching import response_logprobs

    params = inspect.signature(response_logprobs).parameters
    chunk = chunk or getattr(ModelConfig(), "loss_chunk_tokens", None)
    return {"chunk_tokens": chunk} if "chunk_tokens" in params and chunk is not None else {}


def head_name() -> str:
    """Which loss head ``response_logprobs`` is: its parameters beyond (model, batch) say whether it is chunked."""
    import inspect

    from srft.training.batching import response_logprobs

    return "response_logprobs(" + ", ".join(inspect.signature(response_logprobs).parameters) + ")"


# --------------------------------------------------------------------------- the checks


def check_srft_step(mode: str) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # float32 on CUDA must be float32
    torch.backends.cudnn.allow_tf32 = False
    cfg = qwen_config("tiny")
    model0 = build_model("tiny", "cpu")
    data = small_step_data(cfg.vocab_size, cfg.pad_token_id)
    data.set_rollout_logprobs(model0, "cpu")
    obj, max_len = srft_objective(), 64
    ref = train_step(autocast_copy(model0, "cpu", "float32"), data, obj, "cpu", max_len)
    out = dict(loss=ref["loss"], grad_norm=ref["grad_norm"], loss_after=ref["loss_after"], rtol_bf16=RTOL_BF16,
               rtol_fp32=RTOL_FP32, head_kwargs=head_kwargs(chunk=16),
               terms={n: v for n, v in ref["terms"].items() if v})
    variants = [("cpu", "bfloat16")]
    if mode == "gpu":
        variants += [("cuda", "float32"), ("cuda", "bfloat16")]
    else:
        out["skipped"] = "CUDA variants (no CUDA in --cpu mode)"
    ok = all(math.isfinite(ref[k]) for k in ("loss", "grad_norm", "loss_after"))
    for device, dtype in variants:
        got = train_step(autocast_copy(model0, device, dtype), data, obj, device, max_len)
        diff = rel_diff(got, ref)
        out[f"rel_{device}_{'fp32' if dtype == 'float32' else 'bf16'}"] = diff
        ok = ok and within(diff, dtype)
    out["ok"] = ok
    return out


def check_train_memory(mode: str) -> dict:
    import torch

    shapes = SHAPES[mode]
    device = "cuda" if mode == "gpu" else "cpu"
    cfg = qwen_config(shapes["big"])
    from srft.config import ModelConfig
    from srft.models import loading

    model = build_model(shapes["big"], device)
    # as srft's loading enables it: non-reentrant (issue 21, item 10)
    if hasattr(loading, "enable_checkpointing"):
        loading.enable_checkpointing(model)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = loading.wrap_model(model, ModelConfig(dtype="bfloat16"))
    n_params = sum(p.numel() for p in model.parameters())
    # one demonstration of the full length (SFT and off-policy terms)
    data = StepData(cfg.vocab_size, cfg.pad_token_id, [shapes["prompt_tokens"]], [shapes["response_tokens"]],
                    is_demo=[True], correct=[True])
    obj, max_len = srft_objective(), shapes["response_tokens"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def fwd_bwd(head=srft_head) -> tuple[float, float]:
        sync(device)
        t0 = time.perf_counter()
        loss, _ = srft_loss(model, data, obj, device, max_len, head)
        loss.backward()
        sync(device)
        return float(loss.detach()), time.perf_counter() - t0

    out = dict(model=shapes["big"], params_b=n_params / 1e9, tokens=f"{shapes['prompt_tokens']}+{shapes['response_tokens']}",
               weights="fp32 master + AdamW state, bf16 autocast", head=head_name(), head_kwargs=head_kwargs())
    try:
        _, out["first_s"] = fwd_bwd()  # the first pass also warms up the kernels
        opt.step()  # AdamW's state now exists, as in every later step
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        loss, seconds = fwd_bwd()
    except torch.cuda.OutOfMemoryError as e:  # the figure at the failure, and torch's own line shortened
        out.update(ok=False, error=one_line(e)[:200], peak_gb=torch.cuda.max_memory_allocated() / 1e9)
        return out
    out.update(loss=loss, fwd_bwd_s=seconds)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_gb=peak / 1e9, above_state_gb=(peak - before) / 1e9, fit_gb=FIT_GB)
        out["ok"] = math.isfinite(loss) and peak / 1e9 < FIT_GB
    else:
        import resource

        out.update(skipped="CUDA memory (no CUDA in --cpu mode)",
                   peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6)
        out["ok"] = math.isfinite(loss)
    plain_head_figures(out, fwd_bwd, opt, device)
    return out


def plain_head_figures(out: dict, fwd_bwd, opt, device: str) -> None:
    """For comparison only (not part of ok): the same micro-batch through the plain head, the
    whole [T, V] logits at once, where srft still has it; run last, as it may not fit."""
    import torch

    try:
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        _, out["plain_head_s"] = fwd_bwd(plain_head)
        if device == "cuda":
            out["plain_head_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    except Exception as e:  # an OOM here says what the chunked head saves
        out["plain_head_error"] = one_line(e)[:120]


def check_hf_generation(mode: str) -> dict:
    import torch

    from srft.config import ModelConfig
    from srft.models.loading import wrap_model
    from srft.rollout.engine import HFEngine

    shapes = SHAPES[mode]
    device = "cuda" if mode == "gpu" else "cpu"
    cfg = qwen_config(shapes["big"])
    model = wrap_model(build_model(shapes["big"], device), ModelConfig(dtype="bfloat16"))
    # generate with the KV cache (srft's loading sets use_cache; a config saying False would make
    # every new token recompute the whole sequence)
    model.config.use_cache = model.generation_config.use_cache = True
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, cfg.vocab_size, (shapes["gen_prompt_tokens"],), generator=g).tolist()
               for _ in range(shapes["gen_prompts"])]
    out = dict(model=shapes["big"], prompts=len(prompts), new_tokens=shapes["gen_new_tokens"])
    for label in ("fp32_autocast", "bf16_weights"):
        if label == "bf16_weights":
            model.to(torch.bfloat16)  # what a bf16 copy (an engine's own) would sample at
        engine = HFEngine(model, cfg.pad_token_id, cfg.eos_token_id)
        engine.generate(prompts[:1], n=1, max_new_tokens=4)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        responses = engine.generate(prompts, n=1, max_new_tokens=shapes["gen_new_tokens"], temperature=1.0)
        sync(device)
        seconds = time.perf_counter() - t0
        tokens = sum(len(r) for rs in responses for r in rs)
        out[f"tok_per_s_{label}"] = tokens / seconds
        out[f"tokens_{label}"] = tokens
    out["ok"] = out["tokens_fp32_autocast"] > 0 and out["tokens_bf16_weights"] > 0
    return out


def check_fsdp_torchrun(mode: str, out_dir: Path, deadline: float) -> dict:
    """``deadline``: when (time.monotonic()) this check must have ended."""
    part = out_dir / "parts" / "fsdp_worker.json"
    part.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", str(HERE),
           "--fsdp-worker", *(["--cpu"] if mode == "cpu" else []), str(out_dir)]
    run_torchrun(cmd, out_dir / "logs" / "fsdp_worker.log", deadline - time.monotonic() - STOP_MARGIN_S)
    if not part.exists():
        raise RuntimeError("the torchrun worker wrote no result (see logs/fsdp_worker.log)")
    return json.loads(part.read_text())


def fsdp_worker(mode: str, out_dir: Path) -> None:
    """Under torchrun: one SRFT step of a model sharded as srft shards it, against the same step
    unsharded; then the model loaded as srft loads it under torchrun (``load_sharded``)."""
    import copy
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from srft.distributed import Dist, shard_model
    from srft.models.loading import DTYPES

    torch.backends.cuda.matmul.allow_tf32 = False
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = mode == "gpu"
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=3))
    d = Dist(rank=rank, world=world, local_rank=local)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    cfg = qwen_config("tiny")
    model0 = build_model("tiny", "cpu")
    data = small_step_data(cfg.vocab_size, cfg.pad_token_id)
    data.set_rollout_logprobs(model0, "cpu")
    obj, max_len = srft_objective(), 64
    out = dict(backend=dist.get_backend(), world=world)
    ok = True
    try:
        steps = {}
        for dtype in ("float32", "bfloat16"):
            ref = train_step(autocast_copy(model0, device, dtype), data, obj, device, max_len)
            sharded = shard_model(copy.deepcopy(model0).to(device), DTYPES[dtype], d)
            got = steps[dtype] = train_step(sharded, data, obj, device, max_len)
            short = "fp32" if dtype == "float32" else "bf16"
            diff = rel_diff(got, ref)
            out[f"loss_{short}"] = got["loss"]
            out[f"rel_{short}"] = diff
            ok = ok and within(diff, dtype)
        ok = sharded_load(model0, d, device, data, obj, max_len, steps["bfloat16"], out_dir / "tiny_qwen2", out) and ok
        out["ok"] = ok
    except Exception as e:  # recorded, then the group is left in order
        out.update(ok=False, error=one_line(e))
        traceback.print_exc()
    if rank == 0:
        write_json(out_dir / "parts" / "fsdp_worker.json", out)
    dist.destroy_process_group()


def sharded_load(model0, d, device, data: StepData, obj, max_len: int, ref: dict, path: Path, out: dict) -> bool:
    """srft's loading under torchrun: the model built on the meta device, sharded, then moved to the
    device empty and filled from the safetensors files (``load_sharded``; with one rank ``load_for_training``
    itself loads the whole model). Its weights must be the saved ones exactly, and its step (bf16,
    gradient checkpointing) the bf16 sharded step's (same arithmetic; checkpointing recomputes)."""
    from srft.config import ModelConfig
    from srft.distributed import full_state_dict
    from srft.models import loading

    if not hasattr(loading, "load_sharded"):
        out["sharded_load"] = "n/a (srft.models.loading has no load_sharded)"
        return True
    model0.save_pretrained(path)
    model = loading.load_sharded(path, ModelConfig(dtype="bfloat16", gradient_checkpointing=True), d, device)
    if model is None:
        raise RuntimeError("load_sharded found no safetensors parameters to load")
    saved, loaded = model0.state_dict(), full_state_dict(model)
    missing = sorted(set(saved) - set(loaded))
    out["load_max_diff"] = max(float((loaded[k].float().cpu() - v.float()).abs().max()) for k, v in saved.items()
                               if k in loaded)
    got = train_step(model, data, obj, device, max_len)
    out["rel_loaded_bf16"] = diff = rel_diff(got, ref)
    if missing:
        out["load_missing"] = missing[:3]
    return not missing and out["load_max_diff"] == 0.0 and diff <= RTOL_BF16


def write_tiny_llama(path: Path) -> Path:
    """A random one-layer Llama with srft's character tokenizer (as the tests' conftest makes it)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=4096,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                         tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def check_srft_train_torchrun(mode: str, out_dir: Path, deadline: float) -> dict:
    """``deadline``: when (time.monotonic()) this check must have ended."""
    import shutil

    model_dir = write_tiny_llama(out_dir / "tiny_llama")
    run_dir = out_dir / "train_run"
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["train", "--preset", "srft", f"model.path={model_dir}", f"run.out_dir={run_dir}", "run.steps=2",
            "rollout.prompts_per_step=2", "rollout.n=2", "data.test_size=2", "run.eval_k=1",
            "data.max_response_tokens=24", "data.too_long=truncate", "run.eval_every=0", "run.progress=false", "run.plots=false",
            "model.dtype=bfloat16", "model.gradient_checkpointing=true", "rollout.engine=hf",
            f"model.device={'cuda' if mode == 'gpu' else 'cpu'}", f"model.base_cache_dir={out_dir / 'srft_cache'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "srft", *args]
    run_torchrun(cmd, out_dir / "logs" / "srft_train.log", deadline - time.monotonic() - STOP_MARGIN_S)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    finite = all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for r in records for k in ("loss", "grad_norm"))
    return dict(ok=len(records) == 2 and finite and not any(r.get("skipped") for r in records), steps=len(records),
                loss=records[-1].get("loss") if records else None,
                grad_norm=records[-1].get("grad_norm") if records else None)


CHECKS = {
    "srft_step": lambda mode, out, deadline: check_srft_step(mode),
    "train_memory": lambda mode, out, deadline: check_train_memory(mode),
    "hf_generation": lambda mode, out, deadline: check_hf_generation(mode),
    "fsdp_torchrun": check_fsdp_torchrun,
    "srft_train_torchrun": check_srft_train_torchrun,
}
assert set(CHECKS) == set(LIMITS)


# --------------------------------------------------------------------------- running them


def sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def one_line(e: BaseException) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())
    return text[:300]


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def run_logged(cmd: list[str], log: Path, limit: float, env: dict | None = None) -> None:
    """Run ``cmd`` in its own process group with its output in ``log``; on time out end that group
    (torchrun's workers too). Raises with the log's last line when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    limit = max(limit, 1.0)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stop(proc)
            raise TimeoutError(f"timed out after {limit:.0f} s (see logs/{log.name})") from None
        except BaseException:  # this process is being stopped: stop what it started
            stop(proc)
            raise
    if rc != 0:
        raise RuntimeError(f"exit {rc}: {error_line(log.read_text(errors='replace'))[:240]}")


def stop(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """End the process group ``proc`` leads: SIGTERM first, so that torchrun ends its workers (each in
    a session of its own, out of reach of this group) and a check ends its torchrun; then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def terminated(signum, frame):
    raise SystemExit(f"stopped by signal {signum}")


def run_torchrun(cmd: list[str], log: Path, limit: float) -> None:
    """``run_logged`` for a torchrun, whose workers' imports are listed (``PYTHONPROFILEIMPORTTIME``,
    which every process it starts inherits) and must not include what the GPU image may lack."""
    run_logged(cmd, log, limit, env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"))
    text = log.read_text(errors="replace")
    imported = {m.group(1).split(".")[0] for m in re.finditer(r"import time:\s*\d+\s*\|\s*\d+\s*\|\s*([\w.]+)", text)}
    lacking = sorted(imported & set(GPU_IMAGE_LACKS))
    if lacking:
        raise RuntimeError(f"imported {', '.join(lacking)}, which the GPU image may lack")
    # the import lines are long and of no further use: keep the log readable
    log.write_text("".join(line for line in text.splitlines(keepends=True) if "import time:" not in line))


def error_line(text: str) -> str:
    """The line of a failed run's output that says why: srft's own one-line error, else the last
    exception raised (not torchrun's report that a worker failed), else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pick in (lambda s: s.startswith("error:"),
                 lambda s: re.match(r"^[\w.]*(Error|Exception)\b", s) and "ChildFailedError" not in s):
        found = [line for line in lines if pick(line)]
        if found:
            return found[-1]
    return lines[-1] if lines else ""


def environment() -> dict:
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    return dict(device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__,
                transformers=transformers.__version__, cuda=torch.version.cuda if cuda else None)


def child(name: str, mode: str, out_dir: Path, limit: float) -> None:
    """Run one check in this process and write its part; errors become one line of it."""
    t0, start = time.perf_counter(), time.monotonic()
    signal.signal(signal.SIGTERM, terminated)  # so that a torchrun this check started is ended too
    try:
        if mode == "gpu":
            import torch

            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA device (use --cpu on a machine without one)")
        result = CHECKS[name](mode, out_dir, start + limit)
        lacking = sorted({m.split(".")[0] for m in sys.modules} & set(GPU_IMAGE_LACKS))
        if lacking:
            result.update(ok=False, error=f"imported {', '.join(lacking)}, which the GPU image may lack")
    except Exception as e:
        traceback.print_exc()
        result = dict(ok=False, error=one_line(e))
    result = dict(name=name, ok=bool(result.pop("ok", False)), seconds=time.perf_counter() - t0, **result)
    try:
        result["env"] = environment()
    except Exception:
        pass
    write_json(out_dir / "parts" / f"{name}.json", result)


def run_all(mode: str, out_dir: Path, only: list[str]) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + BUDGET_S[mode]
    results = []
    for name in only:
        limit = LIMITS[name][0 if mode == "gpu" else 1]
        left = deadline - time.monotonic()
        t0 = time.perf_counter()
        if left < 5:
            results.append(dict(name=name, ok=False, seconds=0.0, error=f"not run: the {BUDGET_S[mode]:.0f} s budget is spent"))
            continue
        limit = min(limit, left)
        part = out_dir / "parts" / f"{name}.json"
        part.unlink(missing_ok=True)
        cmd = [sys.executable, str(HERE), "--child", name, "--limit", str(limit),
               *(["--cpu"] if mode == "cpu" else []), str(out_dir)]
        try:
            run_logged(cmd, out_dir / "logs" / f"{name}.log", limit)
            results.append(json.loads(part.read_text()))
        except Exception as e:
            results.append(dict(name=name, ok=False, seconds=time.perf_counter() - t0, error=one_line(e)))
        results[-1]["limit_s"] = round(limit)
        print_row(results[-1])
    env = next((r.pop("env") for r in results if "env" in r), None) or fallback_environment()
    for r in results:
        r.pop("env", None)
    report = dict(checks=results, mode=mode, budget_s=BUDGET_S[mode], seconds=round(time.monotonic() - start, 1), **env)
    write_json(out_dir / "gpu_check.json", report)
    print_table(report)
    return 0 if all(r["ok"] for r in results) else 1


def fallback_environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return dict(device="unknown", torch=v("torch"), transformers=v("transformers"), cuda=None)


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


FIGURE_SKIP = ("name", "ok", "seconds", "limit_s")


def row_text(r: dict) -> str:
    figures = ", ".join(f"{k}={fmt(v)}" for k, v in r.items() if k not in FIGURE_SKIP)
    return f"{r['name']:<20} {'ok' if r['ok'] else 'FAIL':<5} {r.get('seconds', 0.0):>6.1f}  {figures}"


def print_row(r: dict) -> None:
    print(f"  done: {row_text({k: v for k, v in r.items() if k != 'env'})}", file=sys.stderr, flush=True)


def print_table(report: dict) -> None:
    print(f"srft GPU check ({report['mode']} mode) on {report['device']}: torch {report['torch']}, "
          f"transformers {report['transformers']}")
    print(f"{'check':<20} {'ok':<5} {'s':>6}  figures")
    for r in report["checks"]:
        print(row_text(r))


def use_this_tree() -> None:
    """Import srft from this tree (the wrapper does it too; this covers ``python scripts/gpu_check.py``),
    here and in every process started from here."""
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if paths[0] != str(SRC):
        os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), *[p for p in paths if p]])
    if str(SRC) not in sys.path[:1]:
        sys.path.insert(0, str(SRC))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--cpu", action="store_true", help="small shapes on the CPU (gloo), skipping what needs CUDA")
    p.add_argument("--only", default=",".join(CHECKS), help="comma-separated checks to run (default: all)")
    p.add_argument("--child", choices=list(CHECKS), help=argparse.SUPPRESS)
    p.add_argument("--limit", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--fsdp-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    mode = "cpu" if a.cpu else "gpu"
    a.out_dir = a.out_dir.resolve()  # the paths given to srft train and torchrun's workers
    use_this_tree()
    if a.fsdp_worker:
        fsdp_worker(mode, a.out_dir)
        return 0
    if a.child:
        child(a.child, mode, a.out_dir, a.limit)
        return 0
    only = [n.strip() for n in a.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in CHECKS]
    if unknown:
        p.error(f"unknown checks {unknown}; checks: {', '.join(CHECKS)}")
    return run_all(mode, a.out_dir, only)


if __name__ == "__main__":
    sys.exit(main())
