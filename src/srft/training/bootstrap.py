"""Demonstrations the model makes for itself once, before training
(``objective.demo_source`` rejection and rationalised).

- rejection: ``bootstrap_k`` samples of the starting model per training prompt, verified;
  the shortest correct one is the prompt's demonstration.
- rationalised (STaR's rationalisation): the model sees the prompt with its gold answer as a
  hint (:func:`srft.tasks.base.hinted_prompt`), ``bootstrap_k`` samples; the shortest whose
  final answer verifies against the gold is the demonstration, trained on the prompt
  WITHOUT the hint.

Prompts with none keep the expert's demonstration or have none (``bootstrap_fallback``).
Each rank samples its share of the prompts (each prompt from its own seed, so the result
does not depend on the number of ranks) and the shares are gathered: every rank holds the
same demonstrations. The result goes to ``RUN_DIR/bootstrap.json`` and into the
demonstration pool, which checkpoints carry, so that a resumed run does not collect again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from srft.models.loading import encode_prompt
from srft.rollout.engine import generate_with_logprobs
from srft.tasks.base import hinted_prompt, verify_all

SOURCES = ("rejection", "rationalised")
FILE = "bootstrap.json"


def bootstrap_seed(run_seed: int, i: int) -> int:
    return (run_seed * 7_919 + 1_000_003 * (i + 1)) % 2 ** 31


def bootstrap_prompt_ids(t, i: int, source: str) -> list[int]:
    ex = t.train_set[i]
    if source == "rationalised":
        return encode_prompt(t.tokenizer, hinted_prompt(t.task, ex.prompt, ex.answer), ex.template)
    return ex.prompt_ids


def collect_demos(t, source: str, batch: int = 64) -> tuple[dict[int, list[int]], dict]:
    """(train index -> demonstration token ids, cost figures), the same on every rank."""
    cfg, dist = t.cfg, t.dist
    k = cfg.objective.bootstrap_k
    mine = list(range(dist.rank, len(t.train_set), dist.world))  # any train-set size splits this way
    t0, demos, generated = time.perf_counter(), {}, 0
    for start in range(0, len(mine), batch):
        idx = mine[start:start + batch]
        prompts = [bootstrap_prompt_ids(t, i, source) for i in idx]
        ids, _ = generate_with_logprobs(t.engine, prompts, k, cfg.data.max_response_tokens,
                                        cfg.rollout.temperature, cfg.rollout.top_p,
                                        seeds=[bootstrap_seed(cfg.run.seed, i) for i in idx])
        flat = [r for rs in ids for r in rs]
        generated += sum(len(r) for r in flat)
        texts = [t.tokenizer.decode(r, skip_special_tokens=True) for r in flat]
        scores = verify_all(t.task, texts, [t.train_set[i].answer for i in idx for _ in range(k)])
        for g, i in enumerate(idx):
            ok = [ids[g][j] for j in range(k) if scores[g * k + j].reward > 0]
            if ok:
                demos[i] = list(min(ok, key=len))
    merged: dict[int, list[int]] = {}
    for part in dist.gather(demos):
        merged.update(part)
    totals = dist.sum({"tokens": float(generated), "seconds": time.perf_counter() - t0})
    cost = {"source": source, "prompts": len(t.train_set), "samples_per_prompt": k,
            "samples": len(t.train_set) * k, "generated_tokens": int(totals["tokens"]),
            "seconds": totals["seconds"] / max(dist.world, 1),
            "prompts_with_demo": len(merged)}
    return merged, cost


def ensure_bootstrap(t, pool, run_dir: Path, say=print) -> dict | None:
    """Fill ``pool`` with the bootstrapped demonstrations: from RUN_DIR/bootstrap.json when an
    earlier start of this run collected them, else collected now (and saved there)."""
    source = t.cfg.objective.demo_source
    if source not in SOURCES:
        return None
    path = Path(run_dir) / FILE
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            pool.pool = {int(i): [int(x) for x in d] for i, d in doc["demos"].items()}
            cost = doc["cost"]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            from srft.rundir import RunDirError

            raise RunDirError(f"{path} is not what srft wrote ({type(e).__name__}: {e}); delete it to collect "
                              f"the demonstrations again") from None
        say(f"bootstrapped demonstrations ({source}): {len(pool.pool)} read from {path}")
        return cost
    demos, cost = collect_demos(t, source)
    pool.pool = demos
    if t.dist.main:
        from srft.rundir import atomic_write_text

        atomic_write_text(path, json.dumps({"cost": cost, "demos": {str(i): d for i, d in sorted(demos.items())}}))
    t.dist.barrier()
    say(f"bootstrapped demonstrations ({source}): {cost['prompts_with_demo']} of {cost['prompts']} prompts, "
        f"{cost['samples']} samples, {cost['generated_tokens']} tokens generated in {cost['seconds']:.1f} s")
    return cost
