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
) -> dict:
    """Sample k responses per prompt, verify them with ``task``'s verifier, and aggregate.

    Returns {"avg@k": mean accuracy over all samples, "pass@k": mean unbiased pass@k,
    "n_prompts", "k", "temperature", "mean_len", "format_ok"} and, if asked, "samples":
    per prompt the completions and their rewards.
    """
    from srft.tasks.base import verify_all

    responses = engine.generate(prompt_ids, k, max_new_tokens, temperature, top_p)
    flat_texts = [tokenizer.decode(r, skip_special_tokens=True) for resp_k in responses for r in resp_k]
    flat_scores = verify_all(task, flat_texts, [a for a, resp_k in zip(answers, responses) for _ in resp_k])
    total, correct_all, fmt, length = 0, 0.0, 0, 0
    pass_sum = 0.0
    samples = []
    pos = 0
    for resp_k, answer in zip(responses, answers):
        texts = flat_texts[pos:pos + len(resp_k)]
        scores = flat_scores[pos:pos + len(resp_k)]
        pos += len(resp_k)
        c = sum(1 for s in scores if s.reward > 0)
        correct_all += sum(s.reward for s in scores)
        fmt += sum(1 for s in scores if s.format_ok)
        length += sum(len(r) for r in resp_k)
        total += len(resp_k)
        pass_sum += pass_at_k(len(resp_k), c, len(resp_k))
        if keep_completions:
            samples.append({"answer": answer, "completions": texts, "rewards": [s.reward for s in scores]})
    n = max(len(prompt_ids), 1)
    out = {
        f"avg@{k}": correct_all / max(total, 1),
        f"pass@{k}": pass_sum / n,
        "n_prompts": len(prompt_ids),
        "k": k,
        "temperature": temperature,
        "mean_len": length / max(total, 1),
        "format_ok": fmt / max(total, 1),
    }
    if keep_completions:
        out["samples"] = samples
    return out


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
) -> dict:
    """``evaluate_prompts`` on each split, in order: {split: its result, with ``acc`` = avg@k}.

    tests_by_split: {split: prompts}, each prompt anything with ``prompt_ids`` and ``answer``
    (``Example``, ``EvalPrompt``). With a ``seed``, sampling draws from a random stream of its
    own, seeded once before the first split, and the caller's random state is left as it was
    (training evaluates without moving its RNG, so a resumed run matches an uninterrupted
    one); without, it draws from the current global stream.
    """
    if seed is None:
        return _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens,
                                top_p, keep_completions)
    device = next(engine.model.parameters()).device if hasattr(engine, "model") else torch.device("cpu")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        return _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens,
                                top_p, keep_completions)


def _evaluate_splits(engine, tokenizer, task, tests_by_split, k, temperature, max_new_tokens, top_p,
                     keep_completions) -> dict:
    out = {}
    for split, prompts in tests_by_split.items():
        res = evaluate_prompts(engine, tokenizer, [p.prompt_ids for p in prompts], [p.answer for p in prompts], task,
                               k=k, temperature=temperature, max_new_tokens=max_new_tokens, top_p=top_p,
                               keep_completions=keep_completions)
        res["acc"] = res[f"avg@{k}"]
        out[split] = res
    return out
