"""Token-probability shift: how many tokens' probabilities a training method moved.

The SRFT paper (Fu et al., 2025, Sec. 3) compares the base model and fine-tuned models token by
token on the same responses and reports that SFT changes the probabilities of many more tokens
than RL does, which only moves a few. Here, on a fixed response set (expert demonstrations and the
base model's own samples, see :mod:`srft.analysis.responses`), a token counts as *changed* when

- ``measure="prob"`` (default): ``|p_model - p_base| > threshold`` (absolute change in probability,
  default 0.1), or
- ``measure="logratio"``: ``|log p_model - log p_base| > threshold`` (default ln 2: the probability
  at least doubled or halved), which also sees changes among rare tokens.

The comparison is strict, so a change exactly at the threshold does not count. Everything below
is a pure function of flat [N] tensors (one entry per response token, same order for both models).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

MEASURES = ("prob", "logratio")
DEFAULT_THRESHOLDS = {"prob": 0.1, "logratio": math.log(2)}
# Histogram ranges: a probability change lies in [-1, 1]; log-ratios are clipped into [-5, 5].
HIST_RANGES = {"prob": (-1.0, 1.0), "logratio": (-5.0, 5.0)}
# An odd number of bins puts 0 (an unchanged token) in the middle of a bin, not on an edge.
HIST_BINS = 41
KIND_LABELS = {"expert": "expert-demo tokens", "base": "base-sample tokens"}


def change_N(logp_base_N: torch.Tensor, logp_model_N: torch.Tensor, measure: str = "prob") -> torch.Tensor:
    """Per-token change from base to model: ``p_model - p_base`` or ``log p_model - log p_base``."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; measures: {', '.join(MEASURES)}")
    if logp_base_N.shape != logp_model_N.shape:
        raise ValueError(f"base and model vectors differ in shape: {tuple(logp_base_N.shape)} vs "
                         f"{tuple(logp_model_N.shape)}; they must be scored on the same response set")
    b, m = logp_base_N.double(), logp_model_N.double()
    return m.exp() - b.exp() if measure == "prob" else m - b


def fraction_changed(change_N: torch.Tensor, threshold: float) -> float:
    """Fraction of entries with ``|change| > threshold`` (strictly); NaN for an empty vector."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    if change_N.numel() == 0:
        return float("nan")
    return float((change_N.abs() > threshold).double().mean())


def histogram(change_N: torch.Tensor, lo: float = -1.0, hi: float = 1.0, bins: int = HIST_BINS
              ) -> tuple[list[int], list[float]]:
    """Counts of the changes in ``bins`` equal bins over [lo, hi] and the bin edges.

    Values outside the range are counted in the first or last bin (and the last bin includes
    ``hi``), so the counts always sum to the number of entries.
    """
    x = change_N.double().clamp(lo, hi).cpu().numpy()
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return [int(c) for c in counts], [float(e) for e in edges]


def token_shift(logp_base_N: torch.Tensor, logp_model_N: torch.Tensor, masks: dict[str, torch.Tensor],
                threshold: float | None = None, measure: str = "prob", bins: int = HIST_BINS) -> dict:
    """The shift of one model from the base: fraction changed, mean |change| and a histogram, per token kind.

    ``masks`` maps a kind ("expert", "base") to a boolean [N] mask of its tokens; "all" is added.
    """
    threshold = DEFAULT_THRESHOLDS[measure] if threshold is None else threshold
    ch_N = change_N(logp_base_N, logp_model_N, measure)
    lo, hi = HIST_RANGES[measure]
    groups = {"all": torch.ones_like(ch_N, dtype=torch.bool), **masks}
    out: dict = {"measure": measure, "threshold": threshold, "n_tokens": {}, "frac_changed": {},
                 "mean_abs_change": {}, "hist_counts": {}}
    for kind, mask_N in groups.items():
        sel_N = ch_N[mask_N]
        out["n_tokens"][kind] = int(sel_N.numel())
        out["frac_changed"][kind] = fraction_changed(sel_N, threshold)
        out["mean_abs_change"][kind] = float(sel_N.abs().mean()) if sel_N.numel() else float("nan")
        out["hist_counts"][kind], edges = histogram(sel_N, lo, hi, bins)
    out["hist_edges"] = edges
    return out


# --------------------------------------------------------------------------- per method, over seeds


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return float("nan"), float("nan"), 0
    m = sum(v) / len(v)
    sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
    return m, sd, len(v)


def fmt_mean_std(values: list[float], digits: int = 3) -> str:
    m, sd, n = mean_std(values)
    if n == 0:
        return "–"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {sd:.{digits}f}"


def summarize(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method (``results``: method -> its runs' :func:`token_shift` results): mean, std and seeds per kind."""
    out = {}
    for method, runs in results.items():
        row: dict = {"seeds": len(runs)}
        for kind in ("expert", "base", "all"):
            m, sd, _ = mean_std([r["frac_changed"].get(kind) for r in runs])
            row[f"frac_changed_{kind}"] = {"mean": m, "std": sd}
            m, sd, _ = mean_std([r["mean_abs_change"].get(kind) for r in runs])
            row[f"mean_abs_change_{kind}"] = {"mean": m, "std": sd}
        out[method] = row
    return out


def markdown_table(results: dict[str, list[dict]]) -> str:
    """Method rows: the fraction of tokens changed (mean ± std over seeds) on expert-demo and base-sample tokens."""
    if not results:
        return "(no runs)"
    first = next(iter(results.values()))[0]
    sym = r"\|Δp\|" if first["measure"] == "prob" else r"\|Δlog p\|"  # escaped: a bare | ends a table cell
    lines = [
        (f"| method | seeds | expert-demo tokens with {sym} > {first['threshold']:.3g} | "
        f"base-sample tokens with {sym} > {first['threshold']:.3g} | mean {sym} expert | mean {sym} base-sample |"),
        "|---|---|---|---|---|---|",
    ]
    for method, runs in results.items():
        cells = [fmt_mean_std([r["frac_changed"]["expert"] for r in runs]),
                 fmt_mean_std([r["frac_changed"]["base"] for r in runs]),
                 fmt_mean_std([r["mean_abs_change"]["expert"] for r in runs], 4),
                 fmt_mean_std([r["mean_abs_change"]["base"] for r in runs], 4)]
        lines.append(f"| {method} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_histograms(results: dict[str, list[dict]], path: Path, title: str, colors: dict[str, str]) -> Path:
    """Overlaid histograms of the changes, one line per method (its seeds pooled), one panel per token kind.

    The y axis is the fraction of the kind's tokens in each bin, on a log scale, so that the
    few large changes stay visible next to the mass of unchanged tokens at 0.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(results.values()))[0]
    edges = np.array(first["hist_edges"])
    xlabel = "p_model − p_base" if first["measure"] == "prob" else "log p_model − log p_base"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    floor = 1.0
    for ax, kind in zip(axes, ("expert", "base")):
        for method, runs in results.items():
            counts = np.sum([r["hist_counts"][kind] for r in runs], axis=0).astype(float)
            total = counts.sum()
            if total == 0:
                continue
            frac = counts / total
            floor = min(floor, 0.5 / total)
            # Empty bins drop below the axis (log scale) instead of breaking the line.
            ax.stairs(np.where(frac > 0, frac, 1e-12), edges, label=f"{method} ({len(runs)} seed"
                      f"{'s' if len(runs) != 1 else ''})", color=colors.get(method), linewidth=1.5)
        for t in (-first["threshold"], first["threshold"]):
            ax.axvline(t, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        ax.set_title(KIND_LABELS[kind])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fraction of tokens")
    axes[0].set_ylim(bottom=floor)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
