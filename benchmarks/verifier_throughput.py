"""Verifications per second of the math verifier: in-process vs a pool of workers.

Completions are built from the MATH/AIME/AMC/Minerva/OlympiadBench golds of
``shared/data/benchmarks/math.parquet``: a few hundred characters of reasoning
followed by ``\\boxed{answer}``, half of them with the gold answer and half
with a digit of it changed. Two mixes:

* typical: the answer is written as the gold is (or is a changed integer), so
  most samples are settled by the string/number shortcut;
* sympy-bound: every answer is written as ``(answer)+0``, so every sample goes
  through math_verify's parser and comparison.

Each mix is scored in-process (``score_math`` in a loop, no timeout) and by a
``Verifier`` with 2 workers (the workers' start-up is excluded and reported).

    python benchmarks/verifier_throughput.py [--n 600] [--workers 2]
"""

from __future__ import annotations

import argparse
import random
import re
import time
from pathlib import Path

from srft.rewards import Verifier, score_math

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"

FILLER = (
    "We set up the problem carefully. Let the unknown be x and write the given condition as an equation. "
    "Expanding and collecting terms, we simplify both sides; checking small cases confirms the pattern. "
    "Substituting back shows the constraint is satisfied, and no other case is possible, therefore "
)


def _alter(g: str) -> str:
    ds = [m.start() for m in re.finditer(r"\d", g)]
    if not ds:
        return g + "+1"
    k = ds[-1]
    return g[:k] + str((int(g[k]) + 1) % 10) + g[k + 1 :]


def build(n: int, seed: int = 0):
    import pyarrow.parquet as pq

    golds = [r["ground_truth"] for r in pq.read_table(BENCH / "math.parquet", columns=["reward_model"]).column(
        "reward_model"
    ).to_pylist()]
    rng = random.Random(seed)
    picks = [rng.choice(golds) for _ in range(n)]
    typical, sympy_bound = [], []
    for i, g in enumerate(picks):
        ans = g.strip().strip("$") if i % 2 == 0 else _alter(g.strip().strip("$"))
        reasoning = FILLER[: rng.randint(200, len(FILLER))]
        typical.append(f"{reasoning} the final answer is $\\boxed{{{ans}}}$.")
        sympy_bound.append(f"{reasoning} the final answer is $\\boxed{{({ans})+0}}$.")
    return picks, {"typical": typical, "sympy-bound": sympy_bound}


def _clear_caches():
    try:
        from math_verify import parser

        parser.parse_latex_cached.cache_clear()
        parser.parse_expr_cached.cache_clear()
    except Exception:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    golds, mixes = build(args.n)
    score_math(r"\boxed{\frac{1}{2}}", "0.25")  # import sympy before timing

    import os

    print(
        f"{args.n} completions per mix ({args.workers} workers, timeout {args.timeout} s); "
        f"{os.cpu_count()} CPUs, load average before: {os.getloadavg()[0]:.1f}"
    )
    print(f"{'mix':<12} {'in-process /s':>14} {'pool /s':>10} {'pool: via workers':>18} {'timeouts':>9} {'agree':>6}")
    with Verifier(kind="math", workers=args.workers, timeout_s=args.timeout) as v:
        t = time.perf_counter()
        v.score_batch([r"\boxed{\sqrt{2}}"] * args.workers * 2, [r"\sqrt{2}+0"] * args.workers * 2)
        startup = time.perf_counter() - t
        for name, comps in mixes.items():
            _clear_caches()
            t = time.perf_counter()
            local = [score_math(c, g) for c, g in zip(comps, golds)]
            t_local = time.perf_counter() - t
            before_pool, before_to = v.n_in_pool, v.n_timeouts
            t = time.perf_counter()
            pooled = v.score_batch(comps, golds)
            t_pool = time.perf_counter() - t
            agree = sum(a.reward == b.reward for a, b in zip(local, pooled)) / len(local)
            print(
                f"{name:<12} {len(comps) / t_local:>14.0f} {len(comps) / t_pool:>10.0f} "
                f"{v.n_in_pool - before_pool:>18d} {v.n_timeouts - before_to:>9d} {agree:>6.1%}"
            )
    print(f"pool start-up (spawn {args.workers} workers, import sympy): {startup:.1f} s")


if __name__ == "__main__":
    main()
