"""Entropy dynamics: the policy's token entropy over training, per method.

The SRFT paper (Sec. 3 and Fig. 1) contrasts how methods move the policy's entropy: RL on
own rollouts collapses it quickly, SFT on demonstrations raises it, and SRFT's entropy-aware
weights are meant to keep it in between. The training loop logs, each step, the mean entropy
over the rollouts' response tokens (``entropy_rollout``) and over the demonstrations' tokens
(``entropy_demo``, for methods that train on them); this module plots both per method: the mean
over seeds, smoothed with a trailing moving average, and a band from the lowest to the highest
seed (each seed smoothed the same way).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

KEYS = {"entropy_rollout": "rollout entropy", "entropy_demo": "demonstration entropy"}


def moving_average(values_T: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average: entry t is the mean of entries max(0, t-window+1) .. t."""
    values_T = np.asarray(values_T, dtype=float)
    if window <= 1 or values_T.size == 0:
        return values_T.copy()
    c = np.cumsum(np.insert(values_T, 0, 0.0))
    t = np.arange(1, values_T.size + 1)
    lo = np.maximum(t - window, 0)
    return (c[t] - c[lo]) / (t - lo)


def auto_window(n_steps: int) -> int:
    """About 1/20 of the run (at least 1 step), as the run's own plots do with a 10-step window at 200 steps."""
    return max(1, round(n_steps / 20))


def seed_curves(records_by_seed: list[list[dict]], key: str, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps [T] (union over seeds) and smoothed values [S, T], NaN where a seed has no value at a step."""
    per_seed = []
    for records in records_by_seed:
        pts = sorted((r["step"], r[key]) for r in records if r.get(key) is not None and r.get("step") is not None)
        steps = np.array([s for s, _ in pts], dtype=float)
        per_seed.append((steps, moving_average(np.array([v for _, v in pts], dtype=float), window)))
    all_steps = np.array(sorted({float(s) for steps, _ in per_seed for s in steps}))
    values_ST = np.full((len(per_seed), all_steps.size), np.nan)
    for i, (steps, vals) in enumerate(per_seed):
        values_ST[i, np.searchsorted(all_steps, steps)] = vals
    return all_steps, values_ST


def method_curves(records_by_method: dict[str, list[list[dict]]], key: str, window: int | None = None) -> dict:
    """Per method with any value of ``key``: steps, mean, min and max over seeds (smoothed), seeds, window."""
    out = {}
    for method, records_by_seed in records_by_method.items():
        n_steps = max((len(r) for r in records_by_seed), default=0)
        w = window or auto_window(n_steps)
        steps_T, values_ST = seed_curves(records_by_seed, key, w)
        if steps_T.size == 0:
            continue
        seeds = int(np.any(~np.isnan(values_ST), axis=1).sum())
        # nanmean and friends: a seed that stopped early no longer counts at later steps.
        out[method] = {"steps": steps_T, "mean": np.nanmean(values_ST, axis=0), "lo": np.nanmin(values_ST, axis=0),
                       "hi": np.nanmax(values_ST, axis=0), "seeds": seeds, "window": w}
    return out


def first_last(records_by_seed: list[list[dict]], key: str, n: int = 10) -> tuple[list[float], list[float]]:
    """Per seed, the mean of ``key`` over the run's first and over its last ``n`` steps, where it is logged there.

    The windows are the run's steps, not the key's: a key that stops being logged (the demonstration
    terms after an SFT stage) has no "last" value, rather than its last logged one."""
    first, last = [], []
    for records in records_by_seed:
        steps = sorted(records, key=lambda r: r.get("step", 0))
        for window, out in ((steps[:n], first), (steps[-n:], last)):
            vals = [r[key] for r in window if r.get(key) is not None]
            if vals:
                out.append(sum(vals) / len(vals))
    return first, last


def markdown_table(records_by_method: dict[str, list[list[dict]]], n: int = 10) -> str:
    """Method rows: entropy at the start and at the end of training (mean ± std over seeds)."""
    from srft.analysis.token_shift import fmt_mean_std

    lines = [(f"| method | seeds | steps | rollout entropy, first {n} steps | last {n} steps | "
             f"demo entropy, first {n} steps | last {n} steps |"), "|---|---|---|---|---|---|---|"]
    for method, records_by_seed in records_by_method.items():
        steps = max((len(r) for r in records_by_seed), default=0)
        cells = []
        for key in KEYS:
            first, last = first_last(records_by_seed, key, n)
            cells += [fmt_mean_std(first), fmt_mean_std(last)]
        lines.append(f"| {method} | {len(records_by_seed)} | {steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# What else the loop logs that explains how a method moved: accuracy of its own rollouts, groups with
# no correct rollout (nothing for a group advantage to reinforce; all pushed down by SRFT's +log pi
# term), response length (imitating a longer style), SRFT's entropy-scaled weights.
DYNAMICS = {"rollout_acc": "rollout accuracy", "frac_all_wrong": "all-wrong groups", "response_len": "response length",
            "w_sft": "w_SFT", "w_rl": "w_RL"}


def dynamics_table(records_by_method: dict[str, list[list[dict]]], n: int = 10) -> str:
    """Method rows: each DYNAMICS key as "first -> last" (:func:`first_last` of each seed, then the mean over seeds);
    a key no run of the table logs gets no column, a window where a method does not log it a dash."""
    from srft.analysis.token_shift import mean_std

    keys = [k for k in DYNAMICS if any(r.get(k) is not None for runs in records_by_method.values()
                                       for records in runs for r in records)]
    lines = ["| method | " + " | ".join(DYNAMICS[k] for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for method, records_by_seed in records_by_method.items():
        cells = []
        for key in keys:
            first, last = first_last(records_by_seed, key, n)
            digits = 1 if key == "response_len" else 3
            ends = [f"{mean_std(v)[0]:.{digits}f}" if v else "–" for v in (first, last)]
            cells.append("–" if not (first or last) else " -> ".join(ends))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_entropy(records_by_method: dict[str, list[list[dict]]], path: Path, title: str, colors: dict[str, str],
                 window: int | None = None) -> Path | None:
    """Rollout entropy per method (and demonstration entropy in a second panel where logged); None if no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {key: method_curves(records_by_method, key, window) for key in KEYS}
    panels = [key for key in KEYS if curves[key]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        for method, c in curves[key].items():
            color = colors.get(method)
            ax.plot(c["steps"], c["mean"], color=color, label=f"{method} ({c['seeds']} seed"
                    f"{'s' if c['seeds'] != 1 else ''})")
            if c["seeds"] > 1:
                ax.fill_between(c["steps"], c["lo"], c["hi"], color=color, alpha=0.2, linewidth=0)
        windows = sorted({c["window"] for c in curves[key].values()})
        ax.set_title(f"{KEYS[key]} (moving average over {'/'.join(map(str, windows))} steps)", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("mean token entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
