"""The comparison report: every run's results, aggregated per regime and method.

Reads each run directory (``eval.json``, ``metrics.jsonl``, ``config.yaml``,
``run_status.json``) and writes ``OUT/compare.md`` (one Markdown table per regime),
``OUT/compare.json`` (every run and every aggregate) and ``OUT/curves-REGIME.png``.
Means are over the seeds whose run finished; std uses ddof=1 (none with a single seed); the
95% interval of a mean is Student t's, mean +- t(0.975, n-1) * std / sqrt(n) (none with a
single seed). Against a reference method, the paired differences method - reference on the
seeds both finished get the same interval: a gap whose interval excludes 0 is marked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from srft.compare.plan import RunSpec
from srft.compare.runner import fmt_duration, has_checkpoint, read_status
from srft.rundir import read_json_object, read_jsonl

COST_NOTE = (
    "Every method generates `rollout.n` rollouts per prompt per step, the SFT-only ones (sft, dft, asft, the SFT "
    "stage of sft-then-grpo, SASR's SFT steps) included: the loop generates, scores and logs them even where it "
    "puts no loss on them, so that every step of every method costs a generation pass. Generation cost per step "
    "is therefore the same by construction, with two exceptions: ReLIFT's SFT steps generate for their buffered "
    "prompts, and Prefix-RFT's prefixed rollouts generate only the continuation of their demonstration prefix. "
    "The tokens column counts what was actually generated (it also moves with response length). Methods with "
    "demonstrations also run forward/backward on the demonstration tokens (one more sequence per prompt; SASR "
    "one more pass to measure its SFT gradient), which the wall time includes.")


def _read_json(path: Path) -> dict:
    """A JSON object file, its values that should be sections ({split: ...}) kept only when they are."""
    data = read_json_object(path) or {}
    return {k: v for k, v in data.items() if not (k in _SECTIONS and not isinstance(v, dict))}


_SECTIONS = ("before", "after", "pass@k_after")


def _read_config(run_dir: Path) -> dict:
    """A run's config.yaml as data (``yaml.safe_load``: no tags that build objects); {} if unreadable."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def generated_tokens(records: list[dict], config: dict) -> int | None:
    """Tokens the rollouts generated over the run.

    Per step: ``gen_tokens`` when logged; else the generation throughput times the generation
    time (both logged); else response_len * rollout.n * rollout.prompts_per_step.
    """
    rollout = config.get("rollout") or {}
    total = 0.0
    for r in records:
        if r.get("gen_tokens") is not None:
            total += r["gen_tokens"]
        elif r.get("gen_tokens_per_s") is not None and r.get("t_generate") is not None:
            total += r["gen_tokens_per_s"] * r["t_generate"]
        elif r.get("response_len") is not None and "n" in rollout and "prompts_per_step" in rollout:
            total += r["response_len"] * rollout["n"] * rollout["prompts_per_step"]
        else:
            return None
    return round(total) if records else None


def run_status(run_dir: Path) -> tuple[str, str]:
    """(status, error): ok, failed, unfinished (stopped, running or resumable) or not run."""
    if (run_dir / "eval.json").exists():
        return "ok", ""
    st = read_status(run_dir)
    if st.get("status") == "failed":
        return "failed", st.get("error", "")
    if st or has_checkpoint(run_dir) or (run_dir / "config.yaml").exists():
        return "unfinished", ""
    return "not run", ""


def collect_run(run: RunSpec) -> dict:
    """One run's row of the report (accuracies None unless it finished)."""
    d = run.run_dir
    status, error = run_status(d)
    ev = _read_json(d / "eval.json") if status == "ok" else {}
    st = read_status(d)
    config = _read_config(d)
    k = ev.get("k")
    return {
        "regime": run.regime, "method": run.method, "seed": run.seed, "run_dir": str(d),
        "status": status, "error": error,
        "id_before": ev.get("before", {}).get("test_id"), "id_after": ev.get("after", {}).get("test_id"),
        "ood_before": ev.get("before", {}).get("test_ood"), "ood_after": ev.get("after", {}).get("test_ood"),
        "id_pass_after": ev.get("pass@k_after", {}).get("test_id"), "k": k,
        "temperature": ev.get("temperature"), "steps": ev.get("steps"),
        "n_prompts": ev.get("n_prompts"),
        "wall_s": st.get("wall_s") if status == "ok" else None,
        "train_time_s": ev.get("train_time_s"),
        "gen_tokens": generated_tokens(read_jsonl(d / "metrics.jsonl"), config) if status == "ok" else None,
    }


def mean_std(values: list[float]) -> dict:
    """{mean, std, n}: std with ddof=1, None for fewer than two values; mean None for none."""
    vals = [v for v in values if v is not None]
    n = len(vals)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


# Student t's 0.975 quantile for 1..30 degrees of freedom; beyond, the Cornish-Fisher expansion
# around the normal quantile (within 1e-4 of the exact value from 30 on).
T975 = (12.7062047, 4.3026527, 3.1824463, 2.7764451, 2.5705818, 2.4469119, 2.3646243, 2.3060041, 2.2621572,
        2.2281389, 2.2009852, 2.1788128, 2.1603687, 2.1447867, 2.1314495, 2.1199053, 2.1098156, 2.1009220,
        2.0930241, 2.0859634, 2.0796138, 2.0738731, 2.0686576, 2.0638986, 2.0595386, 2.0555294, 2.0518305,
        2.0484071, 2.0452296, 2.0422725)
Z975 = 1.959963985


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3))


def mean_ci(values: list[float]) -> dict:
    """{mean, std, n, ci95}: ``mean_std`` and the 95% t interval [low, high] of the mean (None for n < 2)."""
    stat = mean_std(values)
    n = stat["n"]
    stat["ci95"] = None
    if n > 1:
        half = t975(n - 1) * stat["std"] / math.sqrt(n)
        stat["ci95"] = [stat["mean"] - half, stat["mean"] + half]
    return stat


def excludes_zero(stat: dict) -> bool:
    ci = stat.get("ci95")
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


PAIRED_KEYS = ("id_after", "ood_after", "id_pass_after")


def paired_differences(rows: list[dict], ref_rows: list[dict]) -> dict:
    """Per metric, the mean of (method - reference) over the seeds both finished, with its 95% interval."""
    ref = {r["seed"]: r for r in ref_rows if r["status"] == "ok"}
    ok = [r for r in rows if r["status"] == "ok" and r["seed"] in ref]
    out: dict = {"seeds": sorted(r["seed"] for r in ok)}
    for key in PAIRED_KEYS:
        diffs = [r[key] - ref[r["seed"]][key] for r in ok
                 if r[key] is not None and ref[r["seed"]][key] is not None]
        stat = mean_ci(diffs)
        stat["excludes_0"] = excludes_zero(stat)
        out[key] = stat
    return out


def default_reference(methods: list[str]) -> str | None:
    """srft when the suite has it, else its first method."""
    return "srft" if "srft" in methods else (methods[0] if methods else None)


def status_text(counts: dict[str, int], requested: int) -> str:
    """``ok``, or what went wrong: ``2 of 3 failed, 1 of 3 not run``."""
    if counts.get("ok", 0) == requested:
        return "ok"
    parts = [f"{counts[s]} of {requested} {s}" for s in ("failed", "unfinished", "not run") if counts.get(s)]
    return ", ".join(parts) or "ok"


def aggregate(rows: list[dict], requested_seeds: int) -> dict:
    """The per-method aggregate over its seeds' rows."""
    ok = [r for r in rows if r["status"] == "ok"]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    walls = [r["wall_s"] for r in ok if r["wall_s"] is not None]
    tokens = [r["gen_tokens"] for r in ok if r["gen_tokens"] is not None]
    return {
        "n_requested": requested_seeds, "n_ok": len(ok), "counts": counts,
        "status": status_text(counts, requested_seeds),
        **{key: mean_ci([r[key] for r in ok]) for key in ("id_before", "id_after", "ood_after", "id_pass_after")},
        "wall_s": sum(walls) / len(walls) if walls else None,
        "gen_tokens": sum(tokens) / len(tokens) if tokens else None,
    }


# --------------------------------------------------------------------------- formatting


def fmt_stat(stat: dict, requested: int) -> str:
    """``0.812 [0.760, 0.864]`` (the mean and its 95% interval; the mean alone for one seed);
    ``(n=2)`` after it when fewer seeds finished than were asked for."""
    if stat["mean"] is None:
        return "–"
    ci = stat.get("ci95")
    text = f"{stat['mean']:.3f}" if ci is None else f"{stat['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text + (f" (n={stat['n']})" if stat["n"] < requested else "")


def fmt_diff(stat: dict) -> str:
    """``+0.100 [+0.020, +0.180] *`` (* : the interval excludes 0); ``+0.100`` for one seed pair."""
    if stat["mean"] is None:
        return "–"
    ci = stat.get("ci95")
    if ci is None:
        return f"{stat['mean']:+.3f}"
    return f"{stat['mean']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" + (" *" if excludes_zero(stat) else "")


def diff_table(methods: list[str], diffs: dict[str, dict], reference: str, k: Any) -> str:
    k = k or "k"
    header = ["method", "seeds paired", f"ID acc after − {reference}", f"OOD acc after − {reference}",
              f"ID pass@{k} after − {reference}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 4) + "|"]
    for m in methods:
        if m == reference:
            continue
        d = diffs[m]
        lines.append("| " + " | ".join([m, str(len(d["seeds"]))] + [fmt_diff(d[key]) for key in PAIRED_KEYS]) + " |")
    return "\n".join(lines)


def fmt_tokens(n: float | None) -> str:
    """``1.23M``, ``45.6k``, ``512``."""
    if n is None:
        return "–"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}" if n / size < 100 else f"{n / size:.0f}{unit}"
    return f"{n:.0f}"


def markdown_table(methods: list[str], aggregates: dict[str, dict], k: Any) -> str:
    k = k or "k"
    header = ["method", "ID acc before", "ID acc after", "OOD acc after", f"ID pass@{k} after", "wall / run",
              "tokens / run", "status"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * 6 + ["---"]) + "|"]
    for m in methods:
        a = aggregates[m]
        req = a["n_requested"]
        cells = [m, fmt_stat(a["id_before"], req), fmt_stat(a["id_after"], req), fmt_stat(a["ood_after"], req),
                 fmt_stat(a["id_pass_after"], req), fmt_duration(a["wall_s"]), fmt_tokens(a["gen_tokens"]),
                 a["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def effective_overrides(overrides: list[str]) -> list[str]:
    """The overrides as they take effect: one per key, the last value, in first-seen order."""
    last = {}
    for o in overrides:
        last[o.split("=", 1)[0]] = o
    return list(last.values())


def _first(rows: list[dict], key: str) -> Any:
    return next((r[key] for r in rows if r.get(key) is not None), None)


def markdown_report(meta: dict, regimes: list[str], methods: list[str], rows: list[dict],
                    aggregates: dict[str, dict[str, dict]], differences: dict | None = None,
                    reference: str | None = None) -> str:
    k, temp = _first(rows, "k"), _first(rows, "temperature")
    n_prompts = _first(rows, "n_prompts") or {}
    budget = effective_overrides(meta.get("common", []) + meta.get("extra", []))
    lines = [
        f"# Comparison `{meta.get('suite', '?')}`" + (f": {meta['description']}" if meta.get("description") else ""),
        "",
        f"Seeds {', '.join(str(s) for s in meta.get('seeds', []))}; overrides of every run (budget): "
        + (", ".join(f"`{o}`" for o in budget) or "none")
        + (f" (of which from the command line: {', '.join(f'`{o}`' for o in meta['extra'])})" if meta.get("extra") else "")
        + ".",
        "Regimes: " + "; ".join(f"`{r}` ({', '.join(f'`{o}`' for o in meta.get('regimes', {}).get(r, [])) or 'defaults'})"
                                for r in regimes) + ".",
        "",
        f"Accuracy is avg@{k or 'k'} at temperature {temp if temp is not None else '?'} on "
        + (", ".join(f"{n} {s}" for s, n in n_prompts.items()) + " prompts" if n_prompts else "the test splits")
        + " (ID: test_id, OOD: test_ood): the mean over the seeds whose run finished and its 95% interval "
          "[low, high] (Student t with n-1 degrees of freedom; none for a single seed); (n=…) when fewer seeds "
          "finished than were asked for. Wall time and tokens generated are per run."
        + (f" Below each table, every method's paired difference to `{reference}` on the seeds both finished: "
           "the mean difference and its 95% t interval; * marks an interval that excludes 0 (a gap the seeds "
           "resolve)." if reference else ""),
        "",
        COST_NOTE,
    ]
    for regime in regimes:
        lines += ["", f"## Regime `{regime}`", "", markdown_table(methods, aggregates[regime], k)]
        if reference and differences and len(methods) > 1:
            lines += ["", f"Paired differences against `{reference}`:", "",
                      diff_table(methods, differences[regime], reference, k)]
        lines += ["", f"Curves: `curves-{regime}.png`."]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            last = next((ln for ln in reversed(r["error"].splitlines()) if ln.strip()), "(empty log)")
            lines.append(f"- `{r['regime']}/{r['method']}/seed{r['seed']}`: {last}  (log: `{r['run_dir']}/train.log`)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the report


def build_report(out_dir: Path, runs: list[RunSpec], meta: dict, plots: bool = True,
                 reference: str | None = None) -> dict:
    """Collect every run, write compare.md, compare.json and the curve PNGs; return the JSON document.

    ``meta``: suite, description, seeds (asked for), common, extra, regimes (name -> overrides),
    methods (the suite's method list, in report order) and suite_file. ``reference``: the method
    the paired differences are taken against (default: srft when present, else the first method).
    """
    out_dir = Path(out_dir)
    rows = [collect_run(r) for r in runs]
    regimes = list(dict.fromkeys(r.regime for r in runs))
    methods = list(dict.fromkeys(r.method for r in runs))
    requested = len(meta.get("seeds") or {r.seed for r in runs})
    aggregates = {
        regime: {m: aggregate([x for x in rows if x["regime"] == regime and x["method"] == m], requested)
                 for m in methods}
        for regime in regimes
    }
    if reference is None:
        reference = default_reference(methods)
    elif reference not in methods:
        raise ValueError(f"reference method '{reference}' is not among the compared methods: {', '.join(methods)}")
    differences = {
        regime: {m: paired_differences([x for x in rows if x["regime"] == regime and x["method"] == m],
                                       [x for x in rows if x["regime"] == regime and x["method"] == reference])
                 for m in methods if m != reference}
        for regime in regimes
    }
    md = markdown_report(meta, regimes, methods, rows, aggregates, differences, reference)
    (out_dir / "compare.md").write_text(md)
    doc = {**meta, "runs": rows, "aggregates": aggregates, "reference": reference, "differences": differences,
           "regime_order": regimes, "method_order": methods}
    (out_dir / "compare.json").write_text(json.dumps(doc, indent=1))
    if plots:
        # here, not at the top: curves loads matplotlib and sets its backend, for plots only
        from srft.compare.curves import plot_regime

        for regime in regimes:
            dirs = {m: [Path(x["run_dir"]) for x in rows
                        if x["regime"] == regime and x["method"] == m and x["status"] == "ok"] for m in methods}
            plot_regime(dirs, out_dir / f"curves-{regime}.png", title=f"{meta.get('suite', '')} / {regime}")
    doc["markdown"] = md
    return doc


def tables_text(doc: dict) -> str:
    """The report's regime tables (what the command prints at the end)."""
    md = doc["markdown"]
    start = md.find("## Regime")
    return md[start:] if start >= 0 else md

