"""Sampled evaluation: avg@k accuracy and unbiased pass@k on a list of prompts.

The same function serves the periodic evaluation during training and ``srft evaluate``.
"""

from __future__ import annotations

import math

from srft.rollout.engine import RolloutEngine


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
