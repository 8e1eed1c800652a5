"""Curve plots of a comparison: one PNG per regime, every method overlaid (mean over seeds)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from srft.rundir import read_jsonl  # strict: a line that is not a record is a one-line error

# (title, source, key, smoothed): eval_history.jsonl holds {split: {acc: ...}}, metrics.jsonl flat keys
PANELS = [
    ("test_id accuracy (avg@k)", "eval", "test_id", False),
    ("rollout entropy (nats/token)", "metrics", "entropy_rollout", True),
    ("response length (tokens)", "metrics", "response_len", True),
    ("rollout accuracy", "metrics", "rollout_acc", True),
]
LINESTYLES = ["-", "--", ":", "-."]


def style(i: int) -> dict:
    """Colour and line style of the i-th method: tab20's 20 colours, then the same with another dash.

    tab20 comes in dark/light pairs of one hue; the ten dark ones go first so that neighbouring
    methods differ in hue.
    """
    colour = (2 * i) % 20 + (i // 10) % 2
    return {"color": plt.get_cmap("tab20")(colour), "linestyle": LINESTYLES[(i // 20) % len(LINESTYLES)]}


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def mean_curve(run_dirs: list[Path], source: str, key: str) -> tuple[list[int], list[float]]:
    """(steps, mean over the runs that have a value at that step)."""
    by_step: dict[int, list[float]] = {}
    for d in run_dirs:
        if source == "eval":
            points = [(r["step"], (r.get(key) or {}).get("acc")) for r in read_jsonl(d / "eval_history.jsonl")]
        else:
            points = [(r["step"], r.get(key)) for r in read_jsonl(d / "metrics.jsonl")]
        for step, v in points:
            if v is not None:
                by_step.setdefault(step, []).append(v)
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_regime(method_runs: dict[str, list[Path]], path: Path, title: str = "") -> Path:
    """Four panels, one line per method (its finished runs averaged); methods without runs are left out."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    shown: set[str] = set()
    for ax, (panel_title, source, key, smoothed) in zip(axes.flat, PANELS):
        for i, (method, dirs) in enumerate(method_runs.items()):
            steps, values = mean_curve(dirs, source, key)
            if not steps:
                continue
            if smoothed:  # per-step rollout statistics are noisy at a few prompts per step
                values = moving_average(values, max(1, min(10, len(values) // 8)))
            ax.plot(steps, values, marker="o" if source == "eval" else None, markersize=3, **style(i))
            shown.add(method)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    # one legend for all panels, in method order
    handles = [Line2D([], [], label=m, **style(i)) for i, m in enumerate(method_runs) if m in shown]
    if handles:
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(0.83, 0.5), fontsize=8,
                   title="method (mean over seeds)", title_fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.82 if handles else 1, 0.97))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
