"""CPU contention: how much slower is a step when one other busy process shares the machine?

For each workload and each setting, runs a worker subprocess twice, alone ("quiet") and beside
one busy process that this script starts and stops itself ("contended"), and prints the step
time of both and their ratio. The settings differ in what libgomp (torch's OpenMP runtime)
and torch are told at start:

- ``before``: libgomp's default wait policy (a thread that finishes its share of an OpenMP
  parallel region spins ~300k iterations, a few ms, before it sleeps), torch's default thread
  count: the worker imports torch before srft, so srft's default cannot reach libgomp;
- ``after``: srft's default: ``import srft`` (every entry point does it before torch) samples how
  busy the machine is for 0.1 s and sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep at
  once) only when other processes keep half a core or more busy, else leaves libgomp's default;
- ``passive``: ``OMP_WAIT_POLICY=PASSIVE`` always (srft's default until 2026-12-07);
- ``after-gen1``: ``after`` with one torch thread while the HF engine generates (what a change
  to ``srft.rollout.engine.HFEngine`` would do; here a patch inside the worker only);
- ``before-threads1``: libgomp's default with one torch thread (``model.threads=1``);
- ``spin1k`` ... ``spin100k``: ``GOMP_SPINCOUNT=1000`` ... ``100000`` (a short spin before sleeping);
  ``spin10k-gen1``: 10000 with one torch thread while the HF engine generates.

Workloads: ``reference`` (a single-threaded pure-Python loop, no torch, no OpenMP: the slowdown
that plain time-sharing of the cores gives here, measured once, not per setting); and with the
built-in base model (1.1M parameters, on CPU): ``pretrain`` (one step of its pre-training:
forward, backward and AdamW on 32 sequences), ``generate`` (the HF engine samples 8 prompts x 8
rollouts, up to 64 new tokens), ``train`` (``srft train`` in process, SRFT with the default 16
prompts x 8 rollouts; the step time is ``t_step`` of ``metrics.jsonl``).

The machine may be shared: each line records the load average when it was measured and the
CPU cores that other processes kept busy during the timed steps ("others", from /proc/stat less
the worker's own CPU time; in a contended run it includes this script's busy process). Ratios
measured side by side in one run are what to read; the absolute times move with the load.

    python benchmarks/contention.py [--workloads reference,pretrain,generate,train] [--settings before,after]
                                    [--rounds 2] [--budget 20] [--busy spin|matmul] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {
    # name: (environment added for the worker, import srft before torch, torch threads, threads while HF generates)
    "before": ({}, False, 0, None),
    "after": ({}, True, 0, None),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, True, 0, None),
    "after-gen1": ({}, True, 0, 1),
    "before-threads1": ({}, False, 1, None),
    "after-threads1": ({}, True, 1, None),
    "spin1k": ({"GOMP_SPINCOUNT": "1000"}, True, 0, None),
    "spin3k": ({"GOMP_SPINCOUNT": "3000"}, True, 0, None),
    "spin10k": ({"GOMP_SPINCOUNT": "10000"}, True, 0, None),
    "spin10k-gen1": ({"GOMP_SPINCOUNT": "10000"}, True, 0, 1),
    "spin30k": ({"GOMP_SPINCOUNT": "30000"}, True, 0, None),
    "spin100k": ({"GOMP_SPINCOUNT": "100000"}, True, 0, None),
}
WORKLOADS = ("reference", "pretrain", "generate", "train")
# variables that decide libgomp's wait; the worker starts without them unless its setting adds them
OMP_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SRFT_WAIT_POLICY")

BUSY = {
    "spin": "while True:\n    pass\n",
    # one core's worth of BLAS work (OpenBLAS/MKL kept to one thread by the environment below)
    "matmul": "import numpy as np\na = np.random.rand(256, 256)\nwhile True:\n    a = np.tanh(a @ a)\n",
}


# --------------------------------------------------------------------------- /proc readings


def cpu_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def self_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------- worker


class Probe:
    """Wall time, own CPU time and everyone's CPU time over the timed steps."""

    def __init__(self):
        self.wall0, self.self0, self.all0 = time.perf_counter(), self_cpu_seconds(), cpu_busy_seconds()

    def others_cores(self) -> float:
        wall = time.perf_counter() - self.wall0
        others = (cpu_busy_seconds() - self.all0) - (self_cpu_seconds() - self.self0)
        return max(0.0, others / wall) if wall > 0 else 0.0


def limit_generate_threads(threads: int) -> None:
    """Patch HFEngine.generate to run with ``threads`` torch threads (restored afterwards)."""
    import torch

    from srft.rollout.engine import HFEngine

    inner = HFEngine.generate

    def generate(self, *args, **kwargs):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return inner(self, *args, **kwargs)
        finally:
            torch.set_num_threads(before)

    HFEngine.generate = generate


def timed_loop(step, warmup: int, budget: float, max_steps: int, min_steps: int = 3) -> tuple[list[float], float]:
    for _ in range(warmup):
        step()
    times: list[float] = []
    probe = Probe()
    while len(times) < max_steps and (len(times) < min_steps or time.perf_counter() - probe.wall0 < budget):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times, probe.others_cores()


def work_pretrain(args) -> tuple[list[float], float]:
    import torch

    from srft.models.base_model import ensure_base_model, load_base_model

    model, tok = load_base_model(ensure_base_model(args.cache_dir, progress=False))
    model.train()
    task_docs = _documents(args.seed, 32 * (args.max_steps + args.warmup))
    ids = tok(task_docs, add_special_tokens=False).input_ids
    width = max(len(x) for x in ids) + 1
    batches = []
    for i in range(0, len(ids) - 31, 32):
        x = torch.full((32, width), tok.pad_token_id, dtype=torch.long)
        for j, row in enumerate(ids[i:i + 32]):
            x[j, :len(row) + 1] = torch.tensor(row + [tok.eos_token_id])
        batches.append(x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    it = iter(range(10**9))

    def step():
        x = batches[next(it) % len(batches)]
        labels = x.masked_fill(x == tok.pad_token_id, -100)
        out = model(input_ids=x, attention_mask=(x != tok.pad_token_id).long(), labels=labels)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    return timed_loop(step, args.warmup, args.budget, args.max_steps)


def _documents(seed: int, n: int) -> list[str]:
    from srft.tasks import get_task

    return get_task("addition").pretraining_documents(n, seed)


def work_generate(args) -> tuple[list[float], float]:
    import torch

    from srft.models.base_model import ensure_base_model, load_base_model
    from srft.rollout.engine import HFEngine
    from srft.tasks import get_task

    model, tok = load_base_model(ensure_base_model(args.cache_dir, progress=False))
    rows = get_task("addition").generate("train", 8 * (args.max_steps + args.warmup), args.seed)
    prompts = [tok(r["prompt"], add_special_tokens=False).input_ids for r in rows]
    engine = HFEngine(model, tok.pad_token_id, tok.eos_token_id)
    torch.manual_seed(args.seed)
    it = iter(range(10**9))

    def step():
        i = next(it) % (len(prompts) // 8)
        engine.generate(prompts[8 * i:8 * i + 8], 8, 64)

    return timed_loop(step, args.warmup, args.budget, args.max_steps)


def work_train(args) -> tuple[list[float], float]:
    from srft.config import load_config
    from srft.training.loop import train

    steps = args.warmup + args.train_steps
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config("srft", None, [
            f"run.steps={steps}", "run.eval_every=0", "run.save_every=0", "run.progress=false",
            "run.plots=false", "data.test_size=4", "run.eval_k=1", f"run.out_dir={tmp}/run",
            f"model.base_cache_dir={args.cache_dir}", f"model.threads={args.threads}"])
        probe = Probe()
        train(cfg)
        others = probe.others_cores()  # over the whole run (evaluations included)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r["t_step"] for r in records[args.warmup:]], others


def work_reference(args) -> tuple[list[float], float]:
    def step():
        sum(i * i for i in range(1_000_000))

    return timed_loop(step, args.warmup, args.budget, args.max_steps)


def worker(args) -> int:
    if args.worker == "reference":
        times, others = work_reference(args)
        print("RESULT " + json.dumps({"times": times, "others_cores": others, "torch_threads": None,
                                      "omp_wait_policy": None}), flush=True)
        return 0
    env, srft_first, threads, gen_threads = SETTINGS[args.setting]
    if srft_first:
        import srft  # noqa: F401  (sets srft's OpenMP defaults before torch loads libgomp)
    import torch

    import srft  # noqa: F401,F811
    if threads:
        torch.set_num_threads(threads)
    args.threads = threads
    if gen_threads:
        limit_generate_threads(gen_threads)
    times, others = {"pretrain": work_pretrain, "generate": work_generate, "train": work_train}[args.worker](args)
    print("RESULT " + json.dumps({"times": times, "others_cores": others, "torch_threads": torch.get_num_threads(),
                                  "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                                  "srft_wait_policy": os.environ.get("SRFT_WAIT_POLICY")}), flush=True)
    return 0


# --------------------------------------------------------------------------- parent


def start_busy(kind: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", BUSY[kind]], env=env)
    time.sleep(0.5)  # let it get going
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_worker(workload: str, setting: str, args, busy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in OMP_WAIT_VARS}
    env.update(SETTINGS[setting][0])
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints what it read at load: the spin count it uses
    cmd = [sys.executable, __file__, "--worker", workload, "--setting", setting, "--budget", str(args.budget),
           "--max-steps", str(args.max_steps), "--warmup", str(args.warmup), "--train-steps", str(args.train_steps),
           "--cache-dir", args.cache_dir, "--seed", str(args.seed)]
    load = os.getloadavg()[0]
    proc = start_busy(busy) if busy else None
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    finally:
        if proc is not None:
            stop(proc)
    result = next((json.loads(line[7:]) for line in out.stdout.splitlines() if line.startswith("RESULT ")), None)
    if out.returncode != 0 or result is None:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
        raise SystemExit(f"worker {workload}/{setting} failed (exit {out.returncode})")
    spin = re.search(r"GOMP_SPINCOUNT = '(\d+)'", out.stderr)
    result.update(load1=load, gomp_spincount=int(spin.group(1)) if spin else None,
                  median=statistics.median(result["times"]))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--settings", default="before,after", help="comma-separated, of: " + ", ".join(SETTINGS))
    ap.add_argument("--rounds", type=int, default=2,
                    help="quiet/contended pairs per (workload, setting); odd rounds run contended first")
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of timed steps per measurement (at least 3 steps)")
    ap.add_argument("--max-steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=3, help="timed steps of the train workload")
    ap.add_argument("--busy", choices=sorted(BUSY), default="spin")
    ap.add_argument("--cache-dir", default="~/.cache/srft")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write every measurement to this file")
    ap.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    ap.add_argument("--setting", choices=sorted(SETTINGS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.cache_dir = os.path.expanduser(args.cache_dir)
    if args.worker:
        return worker(args)

    workloads = [w for w in args.workloads.split(",") if w]
    settings = [s for s in args.settings.split(",") if s]
    for name in settings:
        if name not in SETTINGS:
            ap.error(f"unknown setting {name!r}; one of {', '.join(SETTINGS)}")
    print(f"{os.cpu_count()} CPUs, load average at start {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"busy process: {args.busy}; {args.rounds} round(s)", flush=True)
    rows = []
    for workload in workloads:
        for setting in (["before"] if workload == "reference" else settings):
            quiet, contended = [], []
            for r in range(args.rounds):
                order = [None, args.busy] if r % 2 == 0 else [args.busy, None]
                for busy in order:
                    res = run_worker(workload, setting, args, busy)
                    (contended if busy else quiet).append(res)
                    label = "-" if workload == "reference" else setting
                    print(f"  {workload:<9} {label:<16} {'contended' if busy else 'quiet':<9} "
                          f"{res['median']:8.3f} s/step  ({len(res['times'])} steps, load {res['load1']:.2f}, "
                          f"others {res['others_cores']:.2f} cores, spincount {res['gomp_spincount']}, "
                          f"threads {res['torch_threads']})", flush=True)
            q = statistics.median(x["median"] for x in quiet)
            c = statistics.median(x["median"] for x in contended)
            rows.append(dict(workload=workload, setting="-" if workload == "reference" else setting,
                             quiet_s=q, contended_s=c, slowdown=c / q,
                             quiet_others_cores=statistics.mean(x["others_cores"] for x in quiet),
                             contended_others_cores=statistics.mean(x["others_cores"] for x in contended),
                             load1=statistics.mean(x["load1"] for x in quiet + contended),
                             gomp_spincount=quiet[0]["gomp_spincount"], runs=quiet + contended))

    print()
    print(f"{'workload':<9} {'setting':<16} {'quiet s':>8} {'contended s':>11} {'slowdown':>8} "
          f"{'vs before (quiet)':>17} {'vs before (cont.)':>17} {'others q/c':>10} {'load':>5}")
    for row in rows:
        ref = next((x for x in rows if x["workload"] == row["workload"] and x["setting"] == "before"), None)
        if row["workload"] == "reference":
            ref = None
        vq = f"{row['quiet_s'] / ref['quiet_s']:.2f}x" if ref else "-"
        vc = f"{row['contended_s'] / ref['contended_s']:.2f}x" if ref else "-"
        print(f"{row['workload']:<9} {row['setting']:<16} {row['quiet_s']:8.3f} {row['contended_s']:11.3f} "
              f"{row['slowdown']:7.2f}x {vq:>17} {vc:>17} "
              f"{row['quiet_others_cores']:4.2f}/{row['contended_others_cores']:4.2f} {row['load1']:5.2f}")
    plain = next((x for x in rows if x["workload"] == "reference"), None)
    if plain:
        print(f"\nreference: a single-threaded loop without torch slows {plain['slowdown']:.2f}x beside the busy "
              f"process under this load: the share of the cores it loses, with no OpenMP involved.")
    quiet_load = statistics.mean(x["quiet_others_cores"] for x in rows)
    if quiet_load > 0.3:
        print(f"note: the machine was not quiet: other processes kept {quiet_load:.2f} cores busy on average during "
              f"the 'quiet' measurements, so 'quiet' here means beside that load, 'contended' beside it plus one "
              f"busy process.")
    print(f"\nslowdown = contended / quiet step time; 'vs before' = this setting's step time / the 'before' "
          f"setting's (quiet and contended); others = CPU cores kept busy by other processes during the timed "
          f"steps (quiet/contended); load = 1-min load average. Load average at end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(busy=args.busy, rounds=args.rounds, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
