"""Sampled evaluation: avg@k accuracy and unbiased pass@k on a list of prompts.

``evaluate_splits`` is the one evaluation of a task's test splits: the periodic evaluation
during training, ``srft evaluate`` and the base model's ``measure_accuracy`` all call it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from srft.rollout.engine import RolloutEngine


class EvalPrompt(NamedTuple):
    """A test prompt as ``evaluate_splits`` needs it (``srft.training.data.Example`` has the same two fields)."""

    prompt_ids: list[int]
    answer: str


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if k > n:
        raise ValueError(f"pass@k needs k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate_prompts(
    engine: RolloutEngine,
    tokenizer,
    prompt_ids: list[list[int]],
    answers: list[str],
    task,
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    top_p: float = 1.0,
    keep_completions: bool = False,
    seeds: list[int] | None = None,
) -> dict:
    """Sample k responses per prompt, verify them with ``task``'s verifier, and aggregate.

    Returns {"avg@k": mean accuracy over all samples, "pass@k": mean unbiased pass@k,
    "n_prompts", "k", "temperature", "mean_len", "format_ok"} and, if asked, "samples":
    per prompt the completions and their rewards. ``seeds``: one per prompt (each prompt's
    samples from a stream of its own), else torch's RNG.
    """
    records = prompt_records(engine, tokenizer, prompt_ids, answers, task, k=k, temperature=temperature,
                             max_new_tokens=max_new_tokens, top_p=top_p, keep_completions=keep_completions,
                             seeds=seeds)
    return aggregate(records, k, temperature, keep_completions)


def prompt_records(engine, tokenizer, prompt_ids, answers, task, *, k, temperature, max_new_tokens, top_p=1.0,
                   keep_completions=False, seeds=None) -> list[dict]:
    """Per prompt: samples, correct ones, reward sum, well-formed ones, tokens (and, if asked, the sample)."""
    from srft.tasks.base import verify_all

    per_prompt = {} if seeds is None else {"seeds": seeds}
    # called even with no prompts (a rank's empty slice): an engine that syncs its weights on
    # generate (vLLM's sleep mode) gathers them with every rank
    responses = engine.generate(prompt_ids, k, max_new_tokens, temperature, top_p, **per_prompt)
    if not prompt_ids:
        return []
    flat_texts = [tokenizer.decode(r, skip_special_tokens=True) for resp_k in responses for r in resp_k]
    flat_scores = verify_all(task, flat_texts, [a for a, resp_k in zip(answers, responses) for _ in resp_k])
    records = []
    pos = 0
    for resp_k, answer in zip(responses, answers):
        texts = flat_texts[pos:pos + len(resp_k)]
        scores = flat_scores[pos:pos + len(resp_k)]
        pos += len(resp_k)
        rec = {"n": len(resp_k), "correct": sum(1 for s in scores if s.reward > 0),
               "reward": sum(s.reward for s in scores), "format_ok": sum(1 for s in scores if s.format_ok),
               "tokens": sum(len(r) for r in resp_k)}
        if keep_completions:
            rec["sample"] = {"answer": answer, "completions": texts, "rewards": [s.reward for s in scores]}
        records.append(rec)
    return records


def aggregate(records: list[dict], k: int, temperature: float, keep_completions: bool = False) -> dict:
    """``evaluate_prompts``'s figures from per-prompt records (in prompt order)."""
    total = sum(r["n"] for r in records)
    n = max(len(records), 1)
    out = {
        f"avg@{k}": sum(r["reward"] for r in records) / max(total, 1),
        f"pass@{k}": sum(pass_at_k(r["n"], r["correct"], r["n"]) for r in records) / n,
        "n_prompts": len(records),
        "k": k,
        "temperature": temperature,
        "mean_len": sum(r["tokens"] for r in records) / max(total, 1),
        "format_ok": sum(r["format_ok"] for r in records) / max(total, 1),
    }
    if keep_completions:
        out["samples"] = [r["sample"] for r in records]
    return out


def prompt_seeds(seed: int, split_no: int, n: int) -> list[int]:
    """The sampling seed of each of a split's ``n`` prompts: a function of the evaluation seed, the
    split and the prompt's position only, so that any slicing over ranks draws the same samples."""
    return [((seed * 1_000_003 + split_no) * 1_000_033 + i) % (2**62) for i in range(n)]


def rank_slice(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous part of ``n`` items (the first ``n % world`` ranks get one more)."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return slice(start, start + per + (1 if rank < extra else 0))


def evaluate_splits(
    engine: RolloutEngine,
    tokenizer,
    task,
    tests_by_split: dict,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int | None = None,
    *,
    top_p: float = 1.0,
    keep_completions: bool = False,
    dist=None,
) -> dict:
    """``evaluate_prompts`` on each split, in order: {split: its result, with ``acc`` = avg@k}.

    tests_by_split: {split: prompts}, each prompt anything with ``prompt_ids`` and ``answer``
    (``Example``, ``EvalPrompt``). With a ``seed``, each prompt samples from a stream of its
    own (``prompt_seeds``) and the caller's random state is left as it was (training evaluates
    without moving its RNG, so a resumed run matches an uninterrupted one); without, sampling
    draws from the current global stream.

    ``dist`` (``srft.distributed.Dist``, under torchrun): every rank evaluates its slice of each
    split with its own engine and the per-prompt figures are gathered, so every rank returns the
    figures one process would (no rank waits for another's whole evaluation). Needs a seed.
    """
    if seed is None:
        if dist is not None and dist.enabled:
            raise ValueError("a sharded evaluation needs a seed (each prompt's samples from its own stream)")
        return _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens,
                                top_p, keep_completions, None, None)
    device = next(engine.model.parameters()).device if hasattr(engine, "model") else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens,
                                top_p, keep_completions, seed, dist)


def _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens, top_p,
                     keep_completions, seed, dist) -> dict:
    sharded = dist is not None and dist.enabled
    out = {}
    for split_no, (split, prompts) in enumerate(tests_by_split.items()):
        seeds = None if seed is None else prompt_seeds(seed, split_no, len(prompts))
        part = rank_slice(len(prompts), dist.rank, dist.world) if sharded else slice(0, len(prompts))
        records = prompt_records(engine, tokenizer, [p.prompt_ids for p in prompts[part]],
                                 [p.answer for p in prompts[part]], task, k=k, temperature=temperature,
                                 max_new_tokens=max_new_tokens, top_p=top_p, keep_completions=keep_completions,
                                 seeds=None if seeds is None else seeds[part])
        if sharded:  # every rank's records, in rank order: the split's prompts in order
            records = [r for rank_records in dist.gather(records) for r in rank_records]
        res = aggregate(records, k, temperature, keep_completions)
        res["acc"] = res[f"avg@{k}"]
        out[split] = res
    return out
