"""The training loop: one function, every method.

Each step is planned, collected, updated and recorded:

- plan: the step-level methods (``srft.training.methods``: weight schedules and the
  target-entropy controller, two-stage SFT, SASR's draw, ReLIFT's buffer) set the step's
  objective, prompts and weight factors in a ``StepPlan``;
- ``collect``: sample ``prompts_per_step`` prompts (a seeded permutation per epoch, so the
  data position is a function of the step and a resumed run sees the same prompts),
  generate ``n`` rollouts per prompt with the rollout engine (phase ``generate``), score
  rollouts and demonstrations with the task's verifier (phase ``score``), and build each
  prompt's augmented group (rollouts + its demonstration) with its advantages: one
  ``StepBatch``;
- ``update``: for each of ``optim.mini_batches`` mini-batches of groups, forward/backward in
  micro-batches, the per-token terms of ``srft.objective`` reduced with the mini-batch's
  global counts (phase ``forward_backward``), then clip the gradient norm and step the
  optimiser (phase ``optimizer``); the schedule steps once per step;
- ``make_record``: the step's line of ``metrics.jsonl``, which the methods then observe.

Periodic evaluation on the test splits, periodic checkpoints, and ``resume`` from the
last one (model, optimiser, scheduler, RNG states, step; the data position follows from
the step; a changed config is refused, see ``srft.training.resume``). Every step appends
a line to ``metrics.jsonl``. The divergence guard: a step whose loss or gradient norm is
not finite is skipped (no update, logged as ``skipped``); ``optim.max_bad_steps`` such
steps in a row, or an update that makes a weight non-finite, stop the run with its last
good checkpoint kept (a non-finite model is never saved).

Departures from the paper (the objective's own are in ``srft.objective.losses``):

- One optimiser update per batch of rollouts by default (``optim.mini_batches=1``): the
  GRPO ratio's "old" log-probs are the current ones detached, so the ratio is 1 in value
  and clipping never binds. The LUFFY/SRFT reference scripts instead run several updates
  per rollout batch (LUFFY's run 2 mini-batches), where clipping acts; ``optim.mini_batches=N``
  splits the step's groups into N mini-batches, one update each, with the rollout-time
  log-probs as the old ones (the engine's, else a no-grad pass before the first update).
  The learning-rate schedule moves once per step either way.
- With an engine that samples from its own copy of the weights (vLLM), rollout tokens' policy
  terms carry a truncated importance weight min(pi_trainer / pi_engine, 2) by default
  (``objective.tis_cap``), against the engine/trainer mismatch that bf16 makes real.
- Demonstrations are scored by the verifier like rollouts; an expert demonstration
  that fails verification enters its group with reward 0 (counted in ``demo_reward``).
- Rollouts that hit ``max_response_tokens`` without EOS are scored as they are
  (usually wrong) and trained on like any other rollout.
- The learning-rate schedule has a short linear warm-up (``optim.warmup_steps``).
- ReLIFT (``objective.relift_buffer``): with ``relift_mode=replace`` an SFT step on the
  buffer replaces an RL step (equal optimiser steps), and its prompts are the buffered
  ones, not the next slice; with ``after`` (the paper's) it follows the RL step that
  filled the buffer, with its own optimiser and no learning-rate schedule.
- Two-stage runs (``objective.sft_stage_steps``) keep one optimiser and schedule across
  both stages, and generate (and log) rollouts during the SFT stage as well, so that
  every step of every method costs a generation pass.
- Demonstration sources (``objective.demo_source``): own correct rollouts enter the pool
  before the step's demonstrations are picked, so with ``self`` a prompt solved for the
  first time is its own demonstration in the same step (a copy of a rollout of its group).
- Prefix-RFT (``objective.prefix_rollouts``): prefixed rollouts share the group with plain
  ones; a prefix keeps at least one demonstration token for the model to write, and the
  continuation is cut so that prefix + continuation fit ``max_response_tokens``.
- SASR (``objective.sasr_warmup_steps``): the SFT gradient norm that drives the choice is
  measured on the step's prompts with a separate forward/backward before the step.
- The target-entropy controller (``sft_weight``/``rl_weight`` = target) updates after each
  step from that step's mean rollout entropy; its state is saved in checkpoints.

Under torchrun (``srft.distributed``): each rank collects its share of the step's prompts
(whole groups) and the update sums the ranks' shares of one global objective; the record,
the demonstration pool and the methods' state are built from the gathered batch, the same on
every rank; every rank evaluates a slice of each test split (the figures gathered: those of
one process, each prompt sampled from its own seed); rank 0 writes. ``objective.entropy_granularity=batch`` takes its
mean over a micro-batch, which holds one rank's sequences only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from srft import rundir
from srft.config import Config, ConfigError, ObjectiveConfig, save_config, with_step_counts
from srft.distributed import SINGLE, Dist, init_from_env, local_tensor, shutdown
from srft.evaluation.sampling import evaluate_splits as evaluate_test_splits
from srft.models.loading import DTYPES, check_context, load_for_training, save_model
from srft.objective import (
    TERMS,
    TokenBatch,
    agg_loss,
    batch_losses,
    grpo_loss,
    old_logprobs,
    overlong_penalty,
    reduce_terms,
)
from srft.rollout.engine import build_engine, generate_with_logprobs
from srft.scoring import Score
from srft.tasks import make_task
from srft.tasks.base import verify_all  # a module global: tests patch it
from srft.training.batching import pad_batch, response_logprobs, response_logprobs_and_kl
from srft.training.bootstrap import FILE as BOOTSTRAP_FILE
from srft.training.bootstrap import ensure_bootstrap
from srft.training.checkpoint import (
    CheckpointError,
    config_hash,
    load_checkpoint,
    load_optimizer_state,
    non_finite_parameters,
    save_checkpoint,
    set_rng_state,
    use_shards,
)
from srft.training.data import Example, encode_rows
from srft.training.methods import (
    DemoPool,
    Relift,
    StepPlan,
    build_step_methods,
    load_methods_state,
    methods_state,
    sft_objective,
)
from srft.training.metrics import MetricsLog, timed
from srft.training.resume import check_resume_changes, fixed_part
from srft.training.step_batch import StepBatch
from srft.training.tracking import check_trackers, make_tracker

TEST_SPLITS = ("test_id", "test_ood")


class DivergenceError(RuntimeError):
    """Training stopped because its loss, gradients or weights stopped being finite."""


def make_run_dir(cfg: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(cfg.run.out_dir.format(method=cfg.run.method, time=stamp))
    path.mkdir(parents=True, exist_ok=True)
    return path


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: Config):
    warmup, total, schedule = cfg.optim.warmup_steps, max(cfg.run.steps, 1), cfg.optim.schedule

    def f(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return f


def prompts_for_step(n_examples: int, step: int, per_step: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step``: consecutive slices of a per-epoch permutation."""
    out = []
    start = step * per_step
    for pos in range(start, start + per_step):
        epoch, i = divmod(pos, n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        out.append(int(perm[i]))
    return out


# --------------------------------------------------------------------------- evaluation


def evaluate_splits(engine, tokenizer, task, tests: dict[str, list[Example]], cfg: Config, dist: Dist = SINGLE) -> dict:
    # Evaluation samples each prompt from a seeded stream of its own: it does not move the
    # training's random state (so a resumed run matches an uninterrupted one whatever the
    # evaluation schedule), every evaluation of a run draws its samples the same way, and under
    # torchrun each rank evaluates a slice of each split with the figures one process would get.
    return evaluate_test_splits(engine, tokenizer, task, tests, cfg.run.eval_k, cfg.run.eval_temperature,
                                cfg.data.max_response_tokens, seed=cfg.run.seed + 1_000_003, dist=dist)


# --------------------------------------------------------------------------- the loop


@dataclass
class Trainer:
    """What every phase of a step works with."""

    cfg: Config
    model: torch.nn.Module
    ref_model: torch.nn.Module | None
    engine: object
    tokenizer: object
    task: object
    train_set: list[Example]
    optimizer: torch.optim.Optimizer
    scheduler: object
    device: torch.device
    dist: Dist = SINGLE  # this process among the ranks (torchrun); SINGLE in one process
    sft_optimizer: torch.optim.Optimizer | None = None  # ReLIFT's own (objective.relift_mode=after)
    tracker: object = None  # run.report_to (srft.training.tracking), made when the run directory is known


def train(cfg: Config, run_dir: Path | None = None, resume: bool = False) -> Path:
    """Train as ``cfg`` says; return the run directory. ``resume`` continues ``run_dir``'s checkpoint."""
    if cfg.model.threads > 0:
        torch.set_num_threads(cfg.model.threads)
    dist = init_from_env(cfg.model.device, cfg.model.dist_timeout_minutes)
    try:
        out = _train(cfg, run_dir, resume, dist)
    except BaseException:
        shutdown(dist, wait=False)
        raise
    shutdown(dist)
    return out


def _train(cfg: Config, run_dir: Path | None, resume: bool, dist: Dist) -> Path:
    if cfg.rollout.prompts_per_step % dist.world:
        raise ConfigError(f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} does not split over "
                          f"{dist.world} ranks: make it a multiple of the number of processes")
    if cfg.objective.relift_buffer % dist.world:
        raise ConfigError(f"objective.relift_buffer={cfg.objective.relift_buffer} does not split over {dist.world} "
                          f"ranks: make it a multiple of the number of processes")
    if cfg.rollout.filter_groups and dist.enabled:
        raise ConfigError("rollout.filter_groups=true runs in one process only so far (under torchrun the ranks "
                          "would keep different numbers of groups); use rollout.filter_groups=false with torchrun")
    if cfg.model.shard_group_size and dist.world % cfg.model.shard_group_size:
        raise ConfigError(f"model.shard_group_size={cfg.model.shard_group_size} does not divide the {dist.world} "
                          f"ranks: make the number of processes a multiple of it (or 0 to shard over all ranks)")
    # Every rank keeps the same random state: the step's plan and sampling seeds agree everywhere.
    seed_everything(cfg.run.seed)
    say = print if cfg.run.progress and dist.main else (lambda *a, **k: None)

    # ---- task, model, data: every check before the first step
    check_trackers(cfg)
    task = make_task(cfg)
    model_cfg = cfg.model
    if dist.enabled and torch.cuda.is_available() and cfg.model.device in ("auto", "cuda"):
        model_cfg = dataclasses.replace(cfg.model, device=f"cuda:{dist.local_rank}")
    # Under torchrun: built on the meta device, sharded, each rank reading only its rows from the
    # files (no rank holds the whole float32 model); the HF engine's whole copy in the compute dtype.
    model, tokenizer, model_path, engine_model = load_for_training(
        model_cfg, dist, task_name=cfg.data.task, progress=cfg.run.progress and dist.main,
        engine_copy=dist.enabled and cfg.rollout.engine == "hf")
    device = next(model.parameters()).device
    train_rows = task.generate("train", cfg.data.train_size, cfg.data.seed)
    train_set, report = encode_rows(train_rows, tokenizer, cfg.data, name="train", need_demo=needs_expert(cfg.objective))
    say(f"train: {report.summary}")
    tests = {}
    for split in getattr(task, "test_splits", TEST_SPLITS):
        rows = task.generate(split, cfg.data.test_size, cfg.data.seed)
        tests[split], rep = encode_rows(rows, tokenizer, cfg.data, name=split)
        if rep.kept < rep.total:
            say(f"{split}: {rep.summary}")

    check_context(model, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                  "data.max_prompt_tokens + data.max_response_tokens")
    # Only now, with every input checked, does the run get a directory (rank 0 names it).
    run_dir = Path(dist.broadcast(str(run_dir or make_run_dir(cfg)) if dist.main else None))
    run_dir.mkdir(parents=True, exist_ok=True)
    ref_model = None
    if cfg.objective.kl_coef > 0:  # frozen, in the compute dtype; whole on every rank
        from transformers import AutoModelForCausalLM
        ref_model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=DTYPES[cfg.model.dtype])
        ref_model = ref_model.to(device).eval()
        ref_model.requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                  eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    sft_optimizer = None
    if cfg.objective.relift_buffer and cfg.objective.relift_mode == "after":
        sft_optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                          eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)
    engine = build_engine(cfg, model, tokenizer, model_path, engine_model=engine_model, distributed=dist.enabled)
    # the phases see step schedules in whole steps; the run directory keeps the config as given
    t = Trainer(with_step_counts(cfg), model, ref_model, engine, tokenizer, task, train_set, optimizer, scheduler,
                device, dist, sft_optimizer=sft_optimizer)
    try:
        return run(t, cfg, tests, run_dir, model_path, resume, say)
    finally:
        if t.tracker is not None:
            t.tracker.close()
        close = getattr(engine, "close", None)  # vLLM: before any process group goes
        if callable(close):
            close()


def run(t: Trainer, cfg: Config, tests: dict, run_dir: Path, model_path: Path, resume: bool, say) -> Path:
    """Resume or evaluate the start, run the steps, and finish the run directory (``cfg``: the
    config as given, saved and checked on resume; ``t.cfg``: with step schedules in steps)."""
    model, tokenizer, optimizer, scheduler = t.model, t.tokenizer, t.optimizer, t.scheduler
    engine, task, dist = t.engine, t.task, t.dist
    methods = build_step_methods(t.cfg, lambda step: sft_gradient_norm(t, step_prompts(t, step)))
    pool = next(m for m in methods if isinstance(m, DemoPool))
    # only rank 0 writes files; the other ranks' logs take nothing
    log = MetricsLog(run_dir / rundir.METRICS, write=dist.main)
    eval_log = MetricsLog(run_dir / rundir.EVAL_HISTORY, write=dist.main)
    tracker = make_tracker(cfg, run_dir, main=dist.main)  # run.report_to; closed by _train's caller
    t.tracker = tracker

    def save(step: int) -> None:  # a collective under torchrun
        save_checkpoint(run_dir, model, tokenizer, optimizer, scheduler, step, methods_state(methods),
                        config=cfg.to_dict(), keep=cfg.run.keep_checkpoints, dist=dist,
                        sharded=use_shards(cfg.run.checkpoint_format, dist), sft_optimizer=t.sft_optimizer)

    def evaluate(step: int) -> dict:
        """Every rank evaluates its slice of the test splits with its own engine; the figures are
        gathered (no rank waits in a barrier through another's evaluation); rank 0 writes them."""
        t0 = time.perf_counter()
        with torch.no_grad():
            ev = evaluate_splits(engine, tokenizer, task, tests, cfg, dist)
        if dist.main:
            eval_log.append({"step": step, **ev, "t_eval": time.perf_counter() - t0})
            tracker.log_eval(ev, step)
        return ev

    start_step = 0
    if resume:
        start_step = restore(t, cfg, methods, run_dir)
        engine.sync_weights(model)  # an engine with its own weights has those of the start
        log.truncate_from(start_step)
        eval_log.truncate_from(start_step + 1)
        if start_step >= cfg.run.steps and (run_dir / rundir.EVAL).exists():
            if dist.main:
                print(f"{run_dir} finished all {cfg.run.steps} steps already; to train longer, resume with "
                      f"run.steps=N (N > {cfg.run.steps})", file=sys.stderr)
            return run_dir
        say(f"resumed {run_dir} at step {start_step}")
    elif dist.main:
        for path in (log.path, eval_log.path, run_dir / BOOTSTRAP_FILE):
            path.unlink(missing_ok=True)
    if dist.main:
        save_config(cfg, run_dir / rundir.CONFIG)  # on resume, only once the checkpoint has matched it
    dist.barrier()
    ensure_bootstrap(t, pool, run_dir, say)  # demo_source rejection/rationalised: once per run

    if not resume:
        ev = evaluate(0)
        if dist.main:
            say("before training: " + ", ".join(f"{s} acc {ev[s]['acc']:.3f}" for s in ev))

    # Ctrl-C or SIGTERM: finish the step in progress, save, and stop.
    stop = {"now": False}

    def request_stop(signum, frame):
        stop["now"] = True

    old_handler = signal.signal(signal.SIGTERM, request_stop) if _main_thread() else None

    bar = None
    if cfg.run.progress and dist.main:
        from tqdm import tqdm
        bar = tqdm(total=cfg.run.steps, initial=start_step, desc=cfg.run.method, dynamic_ncols=True)
    completed = start_step  # steps whose update is applied and logged
    bad_in_row = 0  # the divergence guard's count of consecutive skipped steps
    try:
        for step in range(start_step, cfg.run.steps):
            plan = StepPlan(step, t.cfg.objective)
            for m in methods:
                m.plan(plan)
            record = train_step(t, plan, pool)
            for m in methods:
                m.observe(record)
            record.update(relift_after(t, methods, step))
            record.pop("all_wrong_prompts")
            record.setdefault("relift_buffer", None)
            record.setdefault("relift_sft_step", False)
            bad_in_row = bad_in_row + 1 if record["skipped"] else 0
            record["bad_steps_in_row"] = bad_in_row
            log.append(record)
            tracker.log(record, step + 1)
            completed = step + 1
            if bad_in_row >= cfg.optim.max_bad_steps:
                raise DivergenceError(divergence_message(cfg, step, bad_in_row, record, run_dir))
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{record[k]:.3g}" for k in ("rollout_acc", "entropy_rollout", "w_sft", "w_rl",
                                                                   "loss") if record[k] is not None})
            done = step + 1
            if cfg.run.eval_every and done % cfg.run.eval_every == 0 and done < cfg.run.steps:
                ev = evaluate(done)
                if bar is not None:
                    bar.write(f"step {done}: " + ", ".join(f"{s} acc {ev[s]['acc']:.3f}" for s in ev))
            if cfg.run.save_every and done % cfg.run.save_every == 0 and done < cfg.run.steps and not bad_in_row:
                save(done)
            if dist.max(int(stop["now"])):  # every rank stops after the same step
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        if bad_in_row:  # the weights are those of the last good step, but that step's state is gone
            print(f"\ninterrupted after {bad_in_row} skipped steps: no checkpoint saved; "
                  f"continue from the last one with: srft train --resume {run_dir}", file=sys.stderr)
            raise
        try:
            save(completed)
            if dist.main:
                print(f"\ninterrupted: checkpoint saved at step {completed} in {run_dir}; "
                      f"continue with: srft train --resume {run_dir}", file=sys.stderr)
        except CheckpointError as e:
            print(f"\ninterrupted: {e}", file=sys.stderr)
        raise
    except DivergenceError:
        if bar is not None:
            bar.close()
        raise
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if bar is not None:
        bar.close()

    # ---- the end: final evaluation, model, eval.json, plots, summary
    eval_log.truncate_from(cfg.run.steps)  # a resume of a run killed after its final evaluation
    final = evaluate(cfg.run.steps)
    save(cfg.run.steps)
    save_model(model, tokenizer, run_dir / rundir.MODEL, dist=dist)
    if not dist.main:
        return run_dir
    history = eval_log.read()
    before = history[0]
    splits = list(tests)
    summary = {
        "method": cfg.run.method,
        "task": cfg.data.task,
        "base_model": str(model_path),
        "steps": cfg.run.steps,
        "k": cfg.run.eval_k,
        "temperature": cfg.run.eval_temperature,
        "metric": f"avg@{cfg.run.eval_k}",
        "before": {s: before[s]["acc"] for s in splits},
        "after": {s: final[s]["acc"] for s in splits},
        "pass@k_before": {s: before[s][f"pass@{cfg.run.eval_k}"] for s in splits},
        "pass@k_after": {s: final[s][f"pass@{cfg.run.eval_k}"] for s in splits},
        "n_prompts": {s: final[s]["n_prompts"] for s in splits},
        "history": [{"step": h["step"], **{s: h[s]["acc"] for s in splits}} for h in history],
    }
    records = log.read()
    summary["train_time_s"] = sum(r["t_step"] for r in records)
    rundir.atomic_write_text(run_dir / rundir.EVAL, json.dumps(summary, indent=2))
    close = getattr(task, "close", None)  # e.g. the file task's verifier processes
    if callable(close):
        close()
    if cfg.run.plots:
        from srft.training.plots import plot_run
        plot_run(records, [{"step": h["step"], **{s: h[s] for s in splits}} for h in history], run_dir)
    say(summary_table(summary, records, run_dir))
    return run_dir


def restore(t: Trainer, cfg: Config, methods: list, run_dir: Path) -> int:
    """Load the checkpoint of ``run_dir`` into the trainer and the methods; return its step."""
    state = load_checkpoint(run_dir, t.model, t.dist)
    if state.get("config") is not None:  # checkpoints of earlier versions carry no config
        if config_hash(fixed_part(state["config"])) != config_hash(fixed_part(cfg.to_dict())):
            check_resume_changes(state["config"], cfg, f"{run_dir / rundir.CONFIG} (edited since the checkpoint?)")
    load_optimizer_state(t.model, t.optimizer, state, t.dist)
    t.scheduler.load_state_dict(state["scheduler"])
    # optim.lr may change on resume: the schedule scales the new peak from here on
    t.scheduler.base_lrs = [cfg.optim.lr for _ in t.scheduler.base_lrs]
    for group, factor in zip(t.optimizer.param_groups, t.scheduler.lr_lambdas):
        group["initial_lr"] = cfg.optim.lr
        group["lr"] = cfg.optim.lr * factor(t.scheduler.last_epoch)
    set_rng_state(state["rng"])
    if t.sft_optimizer is not None and "sft_optimizer" in state["extra"]:
        load_optimizer_state(t.model, t.sft_optimizer, {"optimizer": state["extra"]["sft_optimizer"],
                                                        "optimizer_by_name": state.get("optimizer_by_name")}, t.dist)
    load_methods_state(methods, state["extra"])
    return state["step"]


def divergence_message(cfg: Config, step: int, n_bad: int, record: dict, run_dir: Path) -> str:
    ckpts = rundir.checkpoint_candidates(run_dir)
    what_next = (f"its last good checkpoint ({ckpts[0].name}) is kept: resume with a lower learning rate "
                 f"(srft train --resume {run_dir} optim.lr=...)" if ckpts else
                 "no checkpoint had been saved yet: start again with a lower optim.lr")
    return (f"training diverged: steps {step - n_bad + 1}-{step} had a non-finite loss or gradient norm "
            f"(last: loss {record['loss']:.4g}, grad_norm {record['grad_norm']:.4g}) and were skipped. Likely "
            f"cause: a learning rate too high for this model (optim.lr={cfg.optim.lr:g}), or a loss coefficient "
            f"far out of scale; {what_next}")


def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def summary_table(summary: dict, records: list[dict], run_dir: Path) -> str:
    k = summary["k"]
    lines = [
        "",
        f"{summary['method']} on {summary['task']}: {summary['steps']} steps in {summary['train_time_s']:.0f} s",
        f"{'split':<10} {'before':>8} {'after':>8}   (avg@{k}, temperature {summary['temperature']})",
    ]
    for s in summary["before"]:
        lines.append(f"{s:<10} {summary['before'][s]:>8.3f} {summary['after'][s]:>8.3f}")
    if records:
        last = records[-10:]
        parts = []
        for key in ("rollout_acc", "entropy_rollout", "w_sft", "w_rl"):
            vals = [r[key] for r in last if r[key] is not None]
            if vals:
                parts.append(f"{key} {sum(vals) / len(vals):.3f}")
        lines.append("last 10 steps: " + ", ".join(parts))
    lines.append(f"run directory: {run_dir}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- one step: collect, update, record


def train_step(t: Trainer, plan: StepPlan, pool: DemoPool) -> dict:
    """One optimiser step as ``plan`` says; returns the step's record."""
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    batch = collect(t, plan, pool, times)
    stats = update(t, batch, plan, times)
    # the record is of the whole step: every rank's share of the batch, figures summed over ranks
    whole = StepBatch.concat(t.dist.gather(batch)) if t.dist.enabled else batch
    return make_record(t, whole, stats, plan, pool, times, time.perf_counter() - t_start)


class _NoSchedule:
    def step(self) -> None:
        pass


def relift_after(t: Trainer, methods: list, step: int) -> dict:
    """ReLIFT with relift_mode=after: once the buffer is full, an SFT step on its demonstrations
    follows the step's RL update, with ReLIFT's own optimiser (no schedule). Returns its figures."""
    relift = next((m for m in methods if isinstance(m, Relift)), None)
    if relift is None or relift.mode != "after":
        return {}
    idx = relift.take_after()
    if idx is None:
        return {"relift_sft_loss": None, "relift_sft_grad_norm": None, "relift_sft_skipped": None}
    if t.dist.enabled:  # this rank's share of the buffered prompts
        idx = t.dist.share(idx)
    batch = StepBatch(idx=idx, n_plain=0, n_prefixed=0)
    for g, e in enumerate(t.train_set[i] for i in idx):
        batch.add(e.prompt_ids, e.demo_ids, g, e.answer, is_demo=True)
    batch.finish([Score(reward=1.0, extracted=None, format_ok=True, correct=True)] * len(idx), "mean", 0.0)
    plan = StepPlan(step, dataclasses.replace(sft_objective(t.cfg.objective), loss_agg="token-mean"))
    cfg = dataclasses.replace(t.cfg, optim=dataclasses.replace(t.cfg.optim, mini_batches=1))
    stats = update(dataclasses.replace(t, cfg=cfg, optimizer=t.sft_optimizer, scheduler=_NoSchedule()), batch, plan,
                   times={})
    return {"relift_sft_step": True, "relift_buffer": len(relift.buffer), "relift_sft_loss": stats["loss_sft"],
            "relift_sft_grad_norm": stats["grad_norm"], "relift_sft_skipped": stats["skipped"]}


def step_prompts(t: Trainer, step: int) -> list[Example]:
    return [t.train_set[i] for i in prompts_for_step(len(t.train_set), step, t.cfg.rollout.prompts_per_step,
                                                     t.cfg.run.seed)]


def collect(t: Trainer, plan: StepPlan, pool: DemoPool, times: dict) -> StepBatch:
    """The step's batch: its prompts' rollouts (with ``rollout.filter_groups``, only the
    prompts whose rollouts disagree, drawn over up to ``filter_rounds`` rounds)."""
    cfg = t.cfg
    idx = plan.idx if plan.idx is not None else prompts_for_step(len(t.train_set), plan.step,
                                                                 cfg.rollout.prompts_per_step, cfg.run.seed)
    if not cfg.rollout.filter_groups:
        return collect_groups(t, plan, pool, times, idx)
    want, kept, seen, parts, n_kept = cfg.rollout.prompts_per_step, [], set(), [], 0
    for r in range(cfg.rollout.filter_rounds):
        if r:  # a further draw: the step's slice of another permutation of the train set
            idx = [i for i in prompts_for_step(len(t.train_set), plan.step, want, cfg.run.seed + 7919 * r)
                   if i not in seen]
            if not idx:
                continue
        seen.update(idx)
        part = collect_groups(t, plan, pool, times, idx)
        parts.append(part)
        mixed = [g for g, ok in enumerate(part.plain_ok) if 0 < sum(ok) < len(ok)][:want - n_kept]
        if mixed:
            kept.append(part.select_groups(mixed))
            n_kept += len(mixed)
        if n_kept >= want:
            break
    # every draw's rollouts were generated: gen_tokens (and so the throughput and compare's
    # tokens per run) counts them all; the accuracy of all drawn rollouts, as rollout_acc is
    # over the kept, mixed groups only
    drawn_ok = [ok for part in parts for g in part.plain_ok for ok in g]
    plan.record.update(filter_drawn=len(seen), filter_kept=n_kept,
                       gen_tokens=sum(part.gen_tokens for part in parts),
                       filter_drawn_acc=sum(drawn_ok) / max(len(drawn_ok), 1))
    # no prompt with mixed rewards at all: the first draw as it is (its advantages are all 0)
    return StepBatch.concat(kept) if kept else parts[0]


def collect_groups(t: Trainer, plan: StepPlan, pool: DemoPool, times: dict, idx: list[int]) -> StepBatch:
    """Rollouts of the prompts ``idx``, scored, with their demonstrations and group advantages."""
    cfg, obj, dist = t.cfg, plan.objective, t.dist
    seeds = sampling_seeds(cfg, plan.step, idx, dist)
    if dist.enabled:  # this rank's prompts: whole groups
        idx, seeds = dist.share(idx), dist.share(seeds)
    examples = [t.train_set[i] for i in idx]
    prompt_ids = [e.prompt_ids for e in examples]  # tokenised on use, once per step
    expert_ids = [e.demo_ids for e in examples]
    n_prefixed = obj.prefix_rollouts
    n_plain = cfg.rollout.n - n_prefixed
    with timed("generate", times):
        responses, prefixes, continuations = generate_rollouts(t, plan, prompt_ids, expert_ids, n_plain, n_prefixed,
                                                               seeds)

    batch = StepBatch(idx=idx, n_plain=n_plain, n_prefixed=n_prefixed)
    for g, (ex, p_ids) in enumerate(zip(examples, prompt_ids)):
        for r, lp in responses[g]:
            batch.add(p_ids, r, g, ex.answer, logprobs=lp)
        pre = prefixes[g]
        for c, lp in continuations[g]:  # the prefix is the demonstration's: no engine log-probs
            batch.add(p_ids, pre + c, g, ex.answer, prefix_len=len(pre),
                      logprobs=None if lp is None else [float("nan")] * len(pre) + lp)
    responses = [[r for r, _ in rs] for rs in responses]
    decode = lambda ids: t.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    with timed("score", times):
        scores = verify_all(t.task, [decode(r) for r in batch.responses], batch.answers)
        # Own correct rollouts feed the pool before demonstrations are picked, so that with
        # demo_source self/mixed a prompt solved for the first time has its demonstration at once.
        pos = 0
        for g in range(len(examples)):
            batch.plain_ok.append([scores[pos + j].reward > 0 for j in range(len(responses[g]))])
            pos += len(responses[g]) + len(continuations[g])
        if obj.demo_source in ("self", "mixed"):  # every rank's pool learns of every rank's solved prompts
            for r_idx, r_resp, r_ok in t.dist.gather((idx, responses, batch.plain_ok)):
                pool.add(r_idx, r_resp, r_ok)
        demos = []
        if obj.demonstrations:
            for g, (i, p_ids) in enumerate(zip(idx, prompt_ids)):
                d_ids, where = pick_demo(obj.demo_source, expert_ids[g], pool.get(i), obj.bootstrap_fallback)
                batch.demo_src.append(where)
                if d_ids is not None:
                    demos.append((g, p_ids, d_ids))
        demo_scores = verify_all(t.task, [decode(d) for _, _, d in demos],
                                 [examples[g].answer for g, _, _ in demos]) if demos else []
    for g, p_ids, d_ids in demos:
        batch.add(p_ids, d_ids, g, examples[g].answer, is_demo=True)
    shaping_N = None
    if obj.overlong_buffer > 0:  # own rollouts only; a demonstration is never penalised
        shaping_N = overlong_penalty(torch.tensor(batch.lengths), cfg.data.max_response_tokens,
                                     obj.overlong_buffer, obj.overlong_penalty) * (~batch.is_demo_N)
    batch.finish(list(scores) + list(demo_scores), obj.adv_norm, obj.adv_eps, obj.adv_group, shaping_N)
    return batch


def sampling_seeds(cfg: Config, step: int, idx: list[int], dist: Dist) -> list[int] | None:
    """One sampling seed per prompt of the step, or None (sample from torch's RNG stream).

    ``rollout.seeds=prompt``: a function of (run.seed, step, prompt), so a prompt's rollouts
    are the same whatever the number of ranks and whatever else is in the batch. ``stream``:
    one process samples from torch's stream itself; under torchrun the vLLM engine samples from
    its own stream (seeded once from run.seed and the rank: per-request seeds would send vLLM's
    GPU sampler down its slower per-request path), while the HF engine gets seeds drawn from
    torch's RNG, which every rank keeps equal (else every rank would draw the same noise)."""
    if cfg.rollout.seeds == "prompt":
        return [(cfg.run.seed * 1_000_003 + step) * 1_000_033 + i for i in idx]
    if dist.enabled and cfg.rollout.engine == "hf":
        return torch.randint(0, 2**62, (len(idx),)).tolist()
    return None


def generate_rollouts(t: Trainer, plan: StepPlan, prompt_ids, expert_ids, n_plain: int, n_prefixed: int,
                      seeds: list[int] | None = None):
    """(responses, prefixes, continuations): per prompt, n_plain plain rollouts and, for
    Prefix-RFT, n_prefixed continuations of a demonstration prefix; each rollout as
    (token ids, the engine's log-probs of them or None)."""
    cfg = t.cfg
    max_new = cfg.data.max_response_tokens

    def sample(prompts, n, limit, seeds):
        ids, lps = generate_with_logprobs(t.engine, prompts, n, limit, cfg.rollout.temperature, cfg.rollout.top_p,
                                          seeds=seeds)
        return [list(zip(i, lp)) for i, lp in zip(ids, lps)]

    responses = sample(prompt_ids, n_plain, max_new, seeds) if n_plain else [[] for _ in prompt_ids]
    prefixes: list[list[int]] = [[] for _ in prompt_ids]
    continuations: list[list] = [[] for _ in prompt_ids]
    if n_prefixed:  # continue from the first ratio * len tokens of the demonstration
        ratio = prefix_ratio(plan.objective, plan.step, cfg.run.steps)
        for g, d_ids in enumerate(expert_ids):
            if d_ids:
                prefixes[g] = d_ids[:min(round(ratio * len(d_ids)), len(d_ids) - 1)]
        continuations = sample([p + pre for p, pre in zip(prompt_ids, prefixes)], n_prefixed, max_new,
                               None if seeds is None else [s + 1 for s in seeds])
        # a prefix eats into the response budget
        continuations = [[(c[:max_new - len(pre)], None if lp is None else lp[:max_new - len(pre)]) for c, lp in cs]
                         for pre, cs in zip(prefixes, continuations)]
    return responses, prefixes, continuations


def update(t: Trainer, batch: StepBatch, plan: StepPlan, times: dict) -> dict:
    """The step's optimiser updates: one per mini-batch of groups (``optim.mini_batches``), each
    forward/backward in micro-batches with that mini-batch's global counts, then the optimiser step
    (skipped, the divergence guard, when the loss or the gradient norm is not finite). The learning-rate
    schedule and the engine's weights move once per step. With several mini-batches the GRPO ratio's
    old log-probs are the rollout-time ones (:func:`rollout_time_logprobs`), so from the second update
    on the ratio moves away from 1 and clipping can bind."""
    n_mb = t.cfg.optim.mini_batches
    old = rollout_time_logprobs(t, batch, plan, times) if n_mb > 1 else None
    parts = [mini_batch_update(t, batch, ids, plan, times, old) for ids in mini_batch_ids(batch, n_mb, t.dist)]
    if n_mb == 1:
        stats = parts[0]
    else:  # losses and gradient norms: the mean over the updates; token figures: their sums
        stats = {k: sum(p[k] for p in parts) for k in parts[0] if k not in ("grad_norm", "skipped")}
        for k in [f"loss_{n}" for n in TERMS]:
            stats[k] /= n_mb
        stats.update(grad_norm=sum(p["grad_norm"] for p in parts) / n_mb, skipped=any(p["skipped"] for p in parts),
                     clip_frac=stats.pop("clipped") / max(stats["tok_roll"], 1.0))
    with timed("optimizer", times):
        with warnings.catch_warnings():  # torch warns of a scheduler step without an optimiser step
            warnings.simplefilter("ignore", UserWarning)
            t.scheduler.step()  # the schedule follows the step count, skipped steps included
        if not all(p["skipped"] for p in parts):
            # gradients go before the sync: an engine that gathers the weights needs that memory
            t.optimizer.zero_grad(set_to_none=True)
            t.engine.sync_weights(t.model)
    return stats


def mini_batch_ids(batch: StepBatch, n_mb: int, dist: Dist) -> list[list[int]]:
    """This rank's sequences of each of the step's ``n_mb`` mini-batches: the step's groups in order,
    cut into ``n_mb`` contiguous runs by their global position, so that the mini-batches are the same
    whatever the number of ranks (a rank may have none of a mini-batch's groups)."""
    n_local = len(batch.idx)
    first, n_global = dist.rank * n_local if dist.enabled else 0, n_local * (dist.world if dist.enabled else 1)
    which = [(first + g) * n_mb // n_global for g in batch.group]
    return [[i for i, k in enumerate(which) if k == m] for m in range(n_mb)]


@torch.no_grad()
def rollout_time_logprobs(t: Trainer, batch: StepBatch, plan: StepPlan, times: dict) -> list[torch.Tensor]:
    """Each sequence's log-probs under the policy that sampled it, before any update of the step:
    the engine's where it gave them (and ``objective.tis_cap`` is 0), else a no-grad forward pass of
    the trainer's model. One [len(response)] tensor per sequence."""
    cfg, lengths = t.cfg, batch.lengths
    out: list[torch.Tensor] = [torch.empty(0)] * len(lengths)
    with timed("old_logprobs", times):
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks = [order[s:s + cfg.optim.micro_batch] for s in range(0, len(order), cfg.optim.micro_batch)]
        chunks += [order[:1]] * (t.dist.max(len(chunks)) - len(chunks))  # FSDP: as many passes as the busiest rank
        for ids in chunks:
            mb = pad_batch([batch.seqs[i] for i in ids], t.tokenizer.pad_token_id, t.device)
            own_BT, _ = response_logprobs(t.model, mb, t.cfg.model.loss_chunk_tokens)
            engine_BT = batch.rollout_logprobs_BT(ids, own_BT.shape[1])
            old_BT = old_logprobs(own_BT, None if engine_BT is None else engine_BT.to(t.device),
                                  use_rollout=plan.objective.tis_cap <= 0)
            for b, i in enumerate(ids):
                out[i] = old_BT[b, :lengths[i]].float().cpu()
    return out


def mini_batch_update(t: Trainer, batch: StepBatch, ids: list[int], plan: StepPlan, times: dict,
                      old: list[torch.Tensor] | None) -> dict:
    """Forward/backward of the sequences ``ids`` (this rank's share of one mini-batch) with the
    mini-batch's global counts, then one optimiser step; returns the update's figures."""
    cfg, dist = t.cfg, t.dist
    lengths = batch.lengths
    counts = step_counts(batch, cfg.data.max_response_tokens, dist, ids)
    stats = {f"loss_{n}": 0.0 for n in TERMS}
    stats.update({k: 0.0 for k in ("ent_roll", "ent_demo", "tok_roll", "tok_demo", "w_sft", "w_rl", "prob_demo",
                                   "mismatch_sum", "mismatch_tokens")})
    if old is not None:
        stats["clipped"] = 0.0
    t.optimizer.zero_grad(set_to_none=True)
    with timed("forward_backward", times):
        order = sorted(ids, key=lambda i: lengths[i])  # similar lengths share a micro-batch
        chunks = [order[start:start + cfg.optim.micro_batch] for start in range(0, len(order), cfg.optim.micro_batch)]
        # FSDP: as many passes as the busiest rank, agreed before any pass (a rank with none of a
        # mini-batch's groups would otherwise wait in this collective while the others gather weights)
        n_passes = dist.max(len(chunks))
        for chunk in chunks:
            micro_batch_step(t, batch, chunk, plan, counts, stats, old=old)
        for _ in range(n_passes - len(chunks)):
            micro_batch_step(t, batch, [0], plan, counts, stats, weight=0.0, old=old)
    stats = dist.sum(stats)
    with timed("optimizer", times):
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), clip)
        grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
        loss = sum(stats[f"loss_{n}"] for n in TERMS)
        skipped = not (math.isfinite(grad_norm) and math.isfinite(loss))
        if skipped:
            t.optimizer.zero_grad(set_to_none=True)
        else:
            t.optimizer.step()
            bad = non_finite_parameters(t.model, dist)
            if bad:
                raise DivergenceError(f"training diverged: the update of step {plan.step} made {len(bad)} "
                                      f"parameters non-finite (first: {bad[0]}) although its gradient was finite "
                                      f"(norm {grad_norm:.3g}); lower optim.lr (now {cfg.optim.lr:g}) and resume "
                                      f"from the last checkpoint, which is kept")
    stats.update(grad_norm=grad_norm, skipped=skipped)
    return stats


def step_counts(batch: StepBatch, max_len: int, dist: Dist, ids: list[int] | None = None) -> dict[str, dict]:
    """agg_loss's counts of the sequences ``ids`` (default: all of the step's), all of them, the
    demonstrations' and the rollouts': global (over every rank's sequences), so that micro-batch
    losses add up to the (mini-)batch's loss."""
    ids = range(len(batch.lengths)) if ids is None else ids
    lengths = [batch.lengths[i] for i in ids]
    is_demo = [batch.is_demo[i] for i in ids]
    local = {}
    for kind, keep in (("all", lambda d: True), ("demos", lambda d: d), ("rollouts", lambda d: not d)):
        chosen = [n for n, d in zip(lengths, is_demo) if keep(d)]
        local[f"{kind}.num_tokens"], local[f"{kind}.num_seqs"] = float(sum(chosen)), float(len(chosen))
    total = dist.sum(local)
    return {kind: dict(num_tokens=total[f"{kind}.num_tokens"], num_seqs=total[f"{kind}.num_seqs"], max_len=max_len)
            for kind in ("all", "demos", "rollouts")}


def micro_batch_step(t: Trainer, batch: StepBatch, ids: list[int], plan: StepPlan, counts: dict,
                     stats: dict, weight: float = 1.0, old: list[torch.Tensor] | None = None) -> None:
    """Forward and backward of the sequences ``ids``; their reduced terms and figures go to ``stats``.
    ``weight=0``: a pass that adds nothing (a rank with fewer micro-batches than another). ``old``:
    each sequence's rollout-time log-probs, the GRPO ratio's old ones (None: the current ones, detached)."""
    obj = plan.objective
    mb = pad_batch([batch.seqs[i] for i in ids], t.tokenizer.pad_token_id, t.device)
    mask_BT = mb["mask_BT"]
    chunk = t.cfg.model.loss_chunk_tokens
    ref_BT = kl_BT = None
    if t.ref_model is None:
        logp_BT, ent_BT = response_logprobs(t.model, mb, chunk)
    else:
        logp_BT, ent_BT, ref_BT, kl_BT = response_logprobs_and_kl(
            t.model, t.ref_model, mb, obj.kl_direction if obj.kl_estimator == "full" else None, chunk)
    demo_B = batch.is_demo_N[ids].to(t.device)
    rollout_BT = batch.rollout_logprobs_BT(ids, mask_BT.shape[1])
    rollout_BT = rollout_BT.to(t.device) if rollout_BT is not None else None
    old_BT = None
    if old is not None:
        old_BT = torch.zeros_like(logp_BT)
        for b, i in enumerate(ids):
            old_BT[b, :len(old[i])] = old[i].to(t.device)
    adv_B = batch.adv_N[ids].to(t.device)
    tb = TokenBatch(logp_BT, ent_BT, mask_BT, demo_B, batch.correct_N[ids].to(t.device), adv_B,
                    old_logp_BT=old_BT, ref_logp_BT=ref_BT, kl_BT=kl_BT, rollout_logp_BT=rollout_BT,
                    prefix_len_B=batch.prefix_N[ids].to(t.device) if batch.n_prefixed else None,
                    step=plan.step, sft_factor=plan.factors[0], rl_factor=plan.factors[1],
                    cov_generator=torch.Generator().manual_seed(t.cfg.run.seed * 1_000_033 + plan.step)
                    if obj.cov_method == "clip-cov" else None)
    terms, weights, term_metrics = batch_losses(obj, tb)
    reduced = reduce_terms(obj, terms, mask_BT, demo_B, counts)
    (weight * sum(reduced.values())).backward()
    if weight == 0.0:
        return
    with torch.no_grad():  # the micro-batch's share of the step's figures
        for n, v in reduced.items():
            stats[f"loss_{n}"] += float(v)
        demo_BT = mask_BT * demo_B.unsqueeze(-1)
        roll_BT = mask_BT - demo_BT
        stats["ent_roll"] += float((ent_BT * roll_BT).sum())
        stats["ent_demo"] += float((ent_BT * demo_BT).sum())
        stats["tok_roll"] += float(roll_BT.sum())
        stats["tok_demo"] += float(demo_BT.sum())
        stats["w_sft"] += float((weights["w_sft"] * demo_BT).sum())
        stats["w_rl"] += float((weights["w_rl"] * roll_BT).sum())
        stats["prob_demo"] += float((logp_BT.exp() * demo_BT).sum())
        if old_BT is not None:  # rollout tokens where the GRPO clip binds (the GRPO term's own figure)
            clipped_BT = term_metrics.get("grpo", {}).get("clipped_BT")
            if clipped_BT is None:  # no GRPO term (SRFT's own-rollout term): where the clip would bind
                _, clipped_BT = grpo_loss(logp_BT, old_BT, adv_B, obj.clip_eps, obj.clip_eps_high)
            stats["clipped"] += float((clipped_BT * roll_BT).sum())
        if rollout_BT is not None:  # how far the engine's log-probs are from the trainer's
            known_BT = ~torch.isnan(rollout_BT) & (mask_BT > 0)
            stats["mismatch_sum"] += float((logp_BT - rollout_BT).abs()[known_BT].sum())
            stats["mismatch_tokens"] += float(known_BT.sum())


def make_record(t: Trainer, batch: StepBatch, stats: dict, plan: StepPlan, pool: DemoPool, times: dict,
                t_step: float) -> dict:
    """The step's line of ``metrics.jsonl``; accuracy figures are over plain rollouts (no prefix)."""
    obj, n_plain, n_examples = plan.objective, batch.n_plain, len(batch.idx)
    is_demo_N, prefix_N, rewards_N, correct_N = batch.is_demo_N, batch.prefix_N, batch.rewards_N, batch.correct_N
    plain_N = (~is_demo_N) & (prefix_N == 0)
    prefixed_N = (~is_demo_N) & (prefix_N > 0)
    r_plain = torch.tensor(batch.plain_ok, dtype=torch.float32) if n_plain else torch.zeros(n_examples, 0)  # [P, G]
    solved_P = r_plain.max(dim=1).values > 0 if n_plain else torch.zeros(n_examples, dtype=torch.bool)
    lengths, is_demo = batch.lengths, batch.is_demo
    gen_tokens = plan.record.get("gen_tokens", batch.gen_tokens)  # dynamic sampling: every draw's
    n_roll = int((~is_demo_N).sum())
    sums = {f"loss_{n}": stats[f"loss_{n}"] for n in TERMS}
    tok_demo, tok_roll = stats["tok_demo"], stats["tok_roll"]
    return {
        "step": plan.step,
        "lr": t.scheduler.get_last_lr()[0],
        "reward_mean": float(rewards_N[plain_N].mean()) if plain_N.any() else None,
        "rollout_acc": float(correct_N[plain_N].float().mean()) if plain_N.any() else None,
        "prefix_acc": float(correct_N[prefixed_N].float().mean()) if prefixed_N.any() else None,
        "frac_all_correct": float((r_plain.min(dim=1).values > 0).float().mean()) if n_plain else None,
        "frac_all_wrong": float((~solved_P).float().mean()) if n_plain else None,
        "all_wrong_prompts": [i for i, ok in zip(batch.idx, solved_P.tolist())
                              if not ok and t.train_set[i].demonstration] if n_plain else [],
        "format_ok": sum(s.format_ok for s, d in zip(batch.scores, is_demo) if not d) / max(n_roll, 1),
        # verifications that timed out or crashed (scored 0; only the pooled math verifier has them)
        "verify_timeouts": sum(1 for s in batch.scores if (s.info or {}).get("timeout")),
        "verify_errors": sum(1 for s in batch.scores if (s.info or {}).get("error")),
        "demo_reward": float(rewards_N[is_demo_N].mean()) if is_demo_N.any() else None,
        "n_demos": int(is_demo_N.sum()),
        # where the step's demonstrations came from (objective.demo_source)
        **{f"demo_{k}": n for k, n in batch.demo_from.items()},
        "pool_size": len(pool),
        "entropy_rollout": stats["ent_roll"] / max(tok_roll, 1),
        "entropy_demo": stats["ent_demo"] / tok_demo if tok_demo else None,
        # the weights as applied: None where the method does not use them
        "w_sft": stats["w_sft"] / tok_demo if tok_demo and obj.sft_coef else None,
        "w_rl": stats["w_rl"] / max(tok_roll, 1) if obj.self_rollout == "srft" else None,
        "sft_factor": plan.factors[0], "rl_factor": plan.factors[1],
        "prefix_ratio": prefix_ratio(obj, plan.step, t.cfg.run.steps) if batch.n_prefixed else None,
        "demo_prob": stats["prob_demo"] / tok_demo if tok_demo else None,
        # mean |log pi_trainer - log pi_engine| over rollout tokens (an engine with its own weights)
        "logprob_mismatch": stats["mismatch_sum"] / stats["mismatch_tokens"] if stats["mismatch_tokens"] else None,
        **sums,
        "loss": sum(sums.values()),
        "grad_norm": stats["grad_norm"],
        "skipped": stats["skipped"],
        **({"clip_frac": stats["clip_frac"]} if "clip_frac" in stats else {}),  # optim.mini_batches > 1
        "response_len": sum(n for n, d in zip(lengths, is_demo) if not d) / max(n_roll, 1),
        "gen_tokens": gen_tokens,
        "demo_len": (sum(n for n, d in zip(lengths, is_demo) if d) / int(is_demo_N.sum())
                     if is_demo_N.any() else None),
        "adv_abs_mean": float(batch.adv_N.abs().mean()),
        **plan.record,
        **times,
        "t_step": t_step,
        "gen_tokens_per_s": gen_tokens / max(times["t_generate"], 1e-9),
        "train_tokens_per_s": sum(lengths) / max(times["t_forward_backward"], 1e-9),
    }


# --------------------------------------------------------------------------- helpers of the step


def needs_expert(obj: ObjectiveConfig) -> bool:
    """Whether training rows must carry an expert demonstration."""
    bootstrapped_alone = obj.demo_source in ("rejection", "rationalised") and obj.bootstrap_fallback == "none"
    return ((obj.demonstrations and obj.demo_source != "self" and not bootstrapped_alone)
            or obj.sft_stage_steps > 0 or obj.relift_buffer > 0
            or obj.prefix_rollouts > 0 or obj.sasr_warmup_steps > 0)


def sft_gradient_norm(t: Trainer, examples: list[Example]) -> float:
    """Norm of the gradient of the plain token-mean NLL of ``examples``' demonstrations (gradients left zero)."""
    model, dist, mb = t.model, t.dist, t.cfg.optim.micro_batch
    if dist.enabled:
        examples = dist.share(examples)
    seqs = [(e.prompt_ids, e.demo_ids) for e in examples if e.demo_ids]
    model.zero_grad(set_to_none=True)
    n_tokens = dist.sum({"n": float(sum(len(d) for _, d in seqs))})["n"]
    if not n_tokens:
        return 0.0
    chunks = [seqs[start:start + mb] for start in range(0, len(seqs), mb)]
    passes = dist.max(len(chunks))
    for k in range(passes):  # every rank the same number of passes (FSDP); the extra ones add nothing
        weight = 1.0 if k < len(chunks) else 0.0
        batch = pad_batch(chunks[k] if k < len(chunks) else [(examples[0].prompt_ids, [examples[0].prompt_ids[-1]])],
                          t.tokenizer.pad_token_id, t.device)
        logp_BT, _ = response_logprobs(model, batch, t.cfg.model.loss_chunk_tokens)
        (weight * agg_loss(-logp_BT, batch["mask_BT"], "token-mean", num_tokens=n_tokens)).backward()
    sq = sum(float((local_tensor(p.grad).float() ** 2).sum()) for p in model.parameters() if p.grad is not None)
    norm = math.sqrt(dist.sum({"sq": sq})["sq"])  # a shard's squares: summed over the ranks
    model.zero_grad(set_to_none=True)
    return norm


def prefix_ratio(obj: ObjectiveConfig, step: int, total_steps: int) -> float:
    """Prefix-RFT: the demonstration fraction given as a prefix at ``step`` (cosine from start to end)."""
    progress = min(step / max(total_steps - 1, 1), 1.0)
    return obj.prefix_ratio_end + (obj.prefix_ratio_start - obj.prefix_ratio_end) * 0.5 * (1 + math.cos(math.pi * progress))


def pick_demo(source: str, expert: list[int] | None, own: list[int] | None,
              fallback: str = "expert") -> tuple[list[int] | None, str]:
    """The demonstration of one prompt for ``objective.demo_source``, and where it came from
    (``own``: the pool's, for rejection/rationalised the bootstrapped one; ``fallback``: theirs without one)."""
    if source == "expert":
        chosen = expert, "expert"
    elif source == "self":
        chosen = own, "self"
    elif source == "mixed":
        chosen = (own, "self") if own is not None else (expert, "expert")
    elif source in ("rejection", "rationalised"):
        chosen = (own, "self") if own is not None else (expert, "expert") if fallback == "expert" else (None, "none")
    else:
        raise ValueError(f"demo_source must be expert, self, mixed, rejection or rationalised, got {source!r}")
    return chosen if chosen[0] is not None else (None, "none")
