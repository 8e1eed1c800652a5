"""How far the built-in base model's accuracy spreads over its pre-training seeds.

Builds the recipe of a task for each seed (``srft build-base --rebuild``, into OUT/SEED, never
into the cache) and prints one table row per seed from its ``srft_base.json``: final pre-training
loss, test_id avg@8 and greedy accuracy, test_ood avg@8, build time; then mean, std and range.
Builds run one after another (one heavy job at a time); each takes about 2-3 min on 2 cores.

    python scripts/base_band.py [--task addition] [--seeds 0 1 2] [--out runs/base-band] [KEY=VALUE ...]

Finished seeds are read back, not rebuilt, so an interrupted run continues.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

COLUMNS = [("final loss", "final_loss", "{:.3f}"), ("test_id avg@8", "test_id_avg@8", "{:.3f}"),
           ("test_id greedy", "test_id_greedy", "{:.3f}"), ("test_ood avg@8", "test_ood_avg@8", "{:.3f}"),
           ("build s", "build_seconds", "{:.0f}")]


def build(task: str, seed: int, out: Path, extra: list[str]) -> dict:
    meta = out / "srft_base.json"
    if not meta.is_file():
        cmd = [sys.executable, "-m", "srft", "build-base", "--rebuild", "--out", str(out),
               f"data.task={task}", f"model.base_seed={seed}", *extra]
        print("$", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    data = json.loads(meta.read_text())
    row = {"final_loss": data["final_loss"], "build_seconds": data["build_seconds"]}
    row.update(data["accuracy"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="addition")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/base-band"))
    p.add_argument("overrides", nargs="*", help="further build-base overrides, e.g. model.base_steps=600")
    a = p.parse_args()
    # one directory per recipe: the overrides are part of its name, so two recipes never share builds
    recipe = "-".join([a.task, *(o.split(".")[-1].replace("=", "") for o in a.overrides)])
    rows = {s: build(a.task, s, a.out / f"{recipe}-seed{s}", a.overrides) for s in a.seeds}
    print(f"\nBase model of task '{a.task}', pre-training seeds {a.seeds}"
          + (f", overrides {' '.join(a.overrides)}" if a.overrides else "")
          + " (accuracy: avg@8 at temperature 1 and greedy, 64 prompts)\n")
    print("| seed | " + " | ".join(c[0] for c in COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for s, r in rows.items():
        print(f"| {s} | " + " | ".join(fmt.format(r[k]) for _, k, fmt in COLUMNS) + " |")
    for label, fn in [("mean", statistics.mean), ("std", statistics.stdev if len(rows) > 1 else lambda v: 0.0),
                      ("min", min), ("max", max)]:
        print(f"| {label} | " + " | ".join(fmt.format(fn([r[k] for r in rows.values()]))
                                          for _, k, fmt in COLUMNS) + " |")


if __name__ == "__main__":
    main()
