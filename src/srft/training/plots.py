"""PNG plots of a run from its ``metrics.jsonl`` and evaluation history."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _smooth(values: list[float], window: int = 10) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


def _panel(ax, records: list[dict], keys: list[str], title: str) -> None:
    steps = [r["step"] for r in records]
    for key in keys:
        vals = [r.get(key) for r in records]
        if all(v is None for v in vals):
            continue
        pts = [(s, v) for s, v in zip(steps, vals) if v is not None]
        xs, ys = zip(*pts)
        line, = ax.plot(xs, ys, alpha=0.25)
        ax.plot(xs, _smooth(list(ys)), color=line.get_color(), label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def plot_run(records: list[dict], evals: list[dict], out_dir: Path) -> list[Path]:
    """Write reward/accuracy, entropy, weights and length plots; return their paths."""
    if not records:
        return []
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    _panel(ax, records, ["rollout_acc"], "accuracy")
    for split, marker in (("test_id", "o"), ("test_ood", "s")):
        pts = [(e["step"], e[split]["acc"]) for e in evals if split in e]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker=marker, label=f"{split} (avg@k)")
    ax.legend(fontsize=8)
    paths.append(out_dir / "accuracy.png")

    specs = [
        ("entropy.png", ["entropy_rollout", "entropy_demo"], "mean token entropy"),
        ("weights.png", ["w_sft", "w_rl"], "entropy-aware weights"),
        ("length.png", ["response_len", "demo_len"], "mean response length (tokens)"),
    ]
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    for name, keys, title in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        _panel(ax, records, keys, title)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=100)
        plt.close(fig)
        paths.append(out_dir / name)
    return paths
