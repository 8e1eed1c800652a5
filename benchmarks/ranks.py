"""One process against N ranks under torchrun: the same run, its step time and its figures.

Runs ``srft train`` (built-in base model and task unless overridden) once in one process with
``model.threads=N`` and once with ``torchrun --nproc_per_node N`` (one thread per rank), with
``rollout.seeds=prompt`` so that both sample the same rollouts, alternating the order over
``--repeats`` rounds. Prints, per run, the median step time and its phases (from
``metrics.jsonl``), the evaluation before and after, and the largest relative difference of the
per-step figures between the two (the rollouts are the same; only summation order differs).

    python benchmarks/ranks.py [--ranks 2] [--steps 20] [--repeats 2] [--out DIR] [key=value ...]
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

SKIP = ("t_", "_per_s")


def run(ranks: int, out: Path, steps: int, threads: int, overrides: list[str]) -> float:
    args = ["train", f"run.out_dir={out}", f"run.steps={steps}", "rollout.seeds=prompt", "run.progress=false",
            "run.plots=false", "run.eval_every=0", "run.save_every=0", *overrides]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if ranks == 1:
        cmd = [sys.executable, "-m", "srft", *args, f"model.threads={threads}"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "-m", "srft", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{ranks}-rank run failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def summary(out: Path) -> dict:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ev = json.loads((out / "eval.json").read_text())
    med = lambda k: statistics.median(r[k] for r in recs[1:] or recs)  # noqa: E731  (step 0 warms up)
    return {"recs": recs, "t_step": med("t_step"), "t_generate": med("t_generate"),
            "t_forward_backward": med("t_forward_backward"), "before": ev["before"], "after": ev["after"]}


def max_rel_diff(a: list[dict], b: list[dict]) -> tuple[float, str]:
    worst, where = 0.0, ""
    for ra, rb in zip(a, b):
        for k, va in ra.items():
            vb = rb.get(k)
            if k.startswith(SKIP[0]) or k.endswith(SKIP[1]) or not isinstance(va, float) or not isinstance(vb, float):
                continue
            d = abs(va - vb) / max(abs(va), 1e-12)
            if d > worst:
                worst, where = d, f"{k} at step {ra['step']}"
    return worst, where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the run directories here (default: a temporary one)")
    ap.add_argument("overrides", nargs="*", help="config overrides for both runs (section.key=value)")
    args = ap.parse_args()
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="srft-ranks-"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; runs in {root}")
    rows = []
    for rep in range(args.repeats):
        order = (1, args.ranks) if rep % 2 == 0 else (args.ranks, 1)
        for ranks in order:
            out = root / f"r{rep}-{ranks}rank"
            shutil.rmtree(out, ignore_errors=True)
            wall = run(ranks, out, args.steps, args.ranks, args.overrides)
            s = summary(out)
            rows.append((rep, ranks, wall, s))
            print(f"round {rep} {ranks} rank(s): {s['t_step']:.2f} s/step (generate {s['t_generate']:.2f}, "
                  f"forward/backward {s['t_forward_backward']:.2f}), wall {wall:.0f} s, test_id "
                  f"{s['before']['test_id']:.3f} -> {s['after']['test_id']:.3f}", flush=True)
    one = [r for r in rows if r[1] == 1]
    many = [r for r in rows if r[1] == args.ranks]
    ratio = [a[3]["t_step"] / b[3]["t_step"] for a, b in zip(one, many)]
    diff, where = max_rel_diff(one[0][3]["recs"], many[0][3]["recs"])
    print(f"step time, 1 process / {args.ranks} ranks: " + ", ".join(f"{x:.2f}" for x in ratio))
    print(f"largest relative difference of a per-step figure (round 0): {diff:.2e} ({where})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
