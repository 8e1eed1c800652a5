"""Evaluation on benchmark files with the SRFT/LUFFY protocol.

The benchmark files (verl/LUFFY schema, e.g. ``math.parquet``, ``arc_c.parquet``,
``gpqa_diamond.parquet``) hold one row per question and ``data_source`` naming the
benchmark. AIME24 and AMC23 rows are repeated in ``math.parquet`` (30 x 8 and 83 x 4):
that repetition was how avg@k was computed; here rows are de-duplicated first and each
question is sampled k times instead.

The ``paper`` protocol: temperature 0.6, avg@32 for AIME24 and AMC23, pass@1 (one sample)
for MATH-500, Minerva and OlympiadBench and the out-of-distribution sets; the maximum
response length is 8192 tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from srft.evaluation.sampling import pass_at_k

MATH_BENCHMARKS = ("aime", "amc", "math", "minerva", "olympiad_bench")
OOD_BENCHMARKS = ("arc_c", "gpqa", "mmlu_pro")


@dataclass
class Protocol:
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 8192
    k: dict = field(default_factory=lambda: {"aime": 32, "amc": 32})  # samples per question by benchmark
    default_k: int = 1


PROTOCOLS = {
    "paper": Protocol(),
    # A quick look: 4 samples on AIME/AMC, short responses.
    "quick": Protocol(max_new_tokens=1024, k={"aime": 4, "amc": 4}),
}


def dedupe(rows: list[dict]) -> list[dict]:
    """One row per (benchmark, prompt), in first-seen order."""
    seen, out = set(), []
    for r in rows:
        key = (r.get("data_source", ""), json.dumps(r["prompt"], sort_keys=True))
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def limit_per_benchmark(rows: list[dict], limit: int) -> list[dict]:
    """At most ``limit`` rows of each benchmark (0 = all), in order."""
    if limit <= 0:
        return rows
    counts: dict[str, int] = {}
    out = []
    for r in rows:
        src = r.get("data_source", "")
        if counts.get(src, 0) < limit:
            counts[src] = counts.get(src, 0) + 1
            out.append(r)
    return out


def aggregate(results: list[dict]) -> dict:
    """Per-benchmark scores from per-question results.

    results: [{"data_source": str, "rewards": [k floats]}]. Returns
    {"benchmarks": {name: {"n", "k", "avg@k", "pass@k"}}, "math_avg", "ood_avg"}; the
    averages are unweighted means over the benchmarks present (None if none is).
    """
    by_source: dict[str, list[list[float]]] = {}
    for r in results:
        by_source.setdefault(r["data_source"], []).append(r["rewards"])
    table = {}
    for src, rewards in by_source.items():
        k = min(len(x) for x in rewards)
        table[src] = {
            "n": len(rewards),
            "k": k,
            "avg@k": sum(sum(x) / len(x) for x in rewards) / len(rewards),
            "pass@k": sum(pass_at_k(len(x), sum(1 for v in x if v > 0), k) for x in rewards) / len(rewards),
        }

    def mean_over(names):
        vals = [table[n]["avg@k"] for n in names if n in table]
        return sum(vals) / len(vals) if vals else None

    return {"benchmarks": table, "math_avg": mean_over(MATH_BENCHMARKS), "ood_avg": mean_over(OOD_BENCHMARKS)}


def format_table(summary: dict) -> str:
    lines = [f"{'benchmark':<16} {'n':>5} {'k':>4} {'avg@k':>8} {'pass@k':>8}"]
    for src, row in summary["benchmarks"].items():
        lines.append(f"{src:<16} {row['n']:>5} {row['k']:>4} {100 * row['avg@k']:>8.1f} {100 * row['pass@k']:>8.1f}")
    for name in ("math_avg", "ood_avg"):
        if summary[name] is not None:
            lines.append(f"{name:<16} {'':>5} {'':>4} {100 * summary[name]:>8.1f}")
    return "\n".join(lines)


def run_benchmarks(engine, tokenizer, rows: list[dict], verifier, protocol: Protocol, *,
                   template: str = "auto", max_prompt_tokens: int | None = None, progress=None) -> tuple[dict, list]:
    """Sample, verify and aggregate. Returns (summary, per-question records with every completion).

    rows: normalised rows (``srft.data.loading.load_rows``): prompt, answer, data_source.
    verifier: anything with ``score_batch(completions, golds, kinds) -> [Score]`` (srft.rewards.Verifier).
    """
    from srft.models.loading import check_context, encode_prompt

    records = []
    by_k: dict[int, list[dict]] = {}
    for r in dedupe(rows):
        by_k.setdefault(protocol.k.get(r.get("data_source", ""), protocol.default_k), []).append(r)
    for k, group in by_k.items():
        ids = [encode_prompt(tokenizer, r["prompt"], template) for r in group]
        if max_prompt_tokens is not None:
            too_long = [i for i, x in enumerate(ids) if len(x) > max_prompt_tokens]
            if too_long:
                raise ValueError(f"{len(too_long)} prompts are longer than {max_prompt_tokens} tokens "
                                 f"(e.g. a {group[too_long[0]].get('data_source')} question): raise the limit")
        if getattr(engine, "model", None) is not None:  # engines that hold a model: check its window
            check_context(engine.model, max(len(x) for x in ids), protocol.max_new_tokens, "benchmark evaluation")
        responses = engine.generate(ids, k, protocol.max_new_tokens, protocol.temperature, protocol.top_p)
        texts = [[tokenizer.decode(x, skip_special_tokens=True) for x in resp_k] for resp_k in responses]
        flat = [t for ts in texts for t in ts]
        golds = [r["answer"] for r, ts in zip(group, texts) for _ in ts]
        # Multiple-choice benchmarks are scored as choices even where a gold is a digit (some ARC-C rows).
        kinds = ["choice" if r.get("data_source") in OOD_BENCHMARKS else None for r, ts in zip(group, texts) for _ in ts]
        scores = verifier.score_batch(flat, golds, kinds=kinds)
        pos = 0
        for r, ts in zip(group, texts):
            sc = scores[pos:pos + len(ts)]
            pos += len(ts)
            records.append({
                "data_source": r.get("data_source", ""),
                "answer": r["answer"],
                "completions": ts,
                "extracted": [s.extracted for s in sc],
                "rewards": [s.reward for s in sc],
                "timeouts": sum(1 for s in sc if s.info.get("timeout")),
            })
        if progress is not None:
            progress(len(group))
    return aggregate(records), records
