"""Memory over a long run: does a training process grow?

Runs ``srft train`` (the built-in base model, SRFT by default) for many steps as a
subprocess and samples its resident set size (VmRSS from /proc) each time the run's
``metrics.jsonl`` passes a multiple of ``--every`` steps. Prints the samples, the
growth from the first sample to the last and the slope over the second half (after
allocator warm-up), in MiB. Linux only (/proc).

    python benchmarks/soak.py [--steps 1000] [--every 50] [--out /tmp/srft-soak] [KEY=VALUE ...]

Extra ``KEY=VALUE`` arguments go to ``srft train`` (e.g. ``--preset grpo`` is not
taken; use ``objective.*`` keys or edit the command).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def count_lines(path: Path) -> int:
    try:
        with path.open() as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS over steps, MiB per 1000 steps."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(s for s, _ in points) / n
    my = sum(r for _, r in points) / n
    var = sum((s - mx) ** 2 for s, _ in points)
    return 1000 * sum((s - mx) * (r - my) for s, r in points) / var if var else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--out", default="/tmp/srft-soak")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "srft", "train", f"run.steps={args.steps}", "run.eval_every=0",
           "run.save_every=100", "run.progress=false", "run.plots=false", f"run.out_dir={out}", *args.overrides]
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, float]] = []
    next_mark = args.every
    while proc.poll() is None:
        done = count_lines(out / "metrics.jsonl")
        if done >= next_mark:
            rss = rss_mib(proc.pid)
            if rss is not None:
                samples.append((done, rss))
                print(f"step {done:>5}  RSS {rss:8.1f} MiB  ({time.time() - t0:6.0f} s)", flush=True)
            next_mark = (done // args.every + 1) * args.every
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        print(f"srft train failed ({proc.returncode}):\n{err[-2000:]}", file=sys.stderr)
        return 1
    if not samples:
        print("no samples: the run was shorter than --every steps", file=sys.stderr)
        return 1
    half = [p for p in samples if p[0] >= args.steps // 2]
    result = {
        "steps": args.steps, "samples": len(samples), "wall_s": round(time.time() - t0),
        "rss_first_mib": round(samples[0][1], 1), "rss_last_mib": round(samples[-1][1], 1),
        "rss_max_mib": round(max(r for _, r in samples), 1),
        "growth_first_to_last_mib": round(samples[-1][1] - samples[0][1], 1),
        "slope_second_half_mib_per_1000_steps": round(slope(half), 1),
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
