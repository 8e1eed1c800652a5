"""Checkpoint map: where each method's final model sits relative to the base model.

Each model is represented by its vector of per-token log-probabilities on the fixed response
set (:mod:`srft.analysis.score`), so two models are close when they assign the same
probabilities to the same tokens. Measures against the base model:

- RMS distance: ``sqrt(mean_i (log p_model(i) - log p_base(i))^2)`` over all N response tokens;
- KL estimate: ``mean over base-sample tokens of (log p_base - log p_model)``. The base samples are
  drawn from the base model itself, so per sequence the sum of this difference is an unbiased
  estimate of KL(base || model) between the two models' response distributions; divided by the
  tokens it is that KL per token (a sample estimate: it can come out slightly negative).

The 2-D map is classical multidimensional scaling (Torgerson) of the pairwise RMS distances
between all models, translated so that the base model is at the origin; with the exact
distances of points in a plane it reproduces them exactly, otherwise it is the best 2-D
least-squares fit of the centred Gram matrix, and the share of it the two axes keep is reported.
"""

from __future__ import annotations

from pathlib import Path

import torch


def rms_distance(a_N: torch.Tensor, b_N: torch.Tensor) -> float:
    """Root-mean-square difference of two per-token log-prob vectors (0 for identical vectors)."""
    if a_N.numel() == 0:
        return float("nan")
    return float((a_N.double() - b_N.double()).pow(2).mean().sqrt())


def kl_estimate(logp_base_N: torch.Tensor, logp_model_N: torch.Tensor, base_sample_mask_N: torch.Tensor) -> float:
    """Per-token estimate of KL(base || model) from the base model's own samples (see the module docstring)."""
    sel = base_sample_mask_N
    if not bool(sel.any()):
        return float("nan")
    return float((logp_base_N.double()[sel] - logp_model_N.double()[sel]).mean())


def pairwise_rms(vectors_KN: torch.Tensor) -> torch.Tensor:
    """[K, K] RMS distances between the rows of ``vectors_KN``."""
    x = vectors_KN.double()
    # Not the matrix-product shortcut, whose rounding would give identical models a distance of ~1e-8.
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    return d / max(x.shape[1], 1) ** 0.5


def classical_mds(dist_KK: torch.Tensor, dims: int = 2) -> tuple[torch.Tensor, float]:
    """Coordinates [K, dims] whose distances approximate ``dist_KK``, and the share of variance they keep.

    Torgerson's method: double-centre the squared distances, B = -1/2 J D^2 J, and take the top
    eigenvectors scaled by the square roots of their eigenvalues. Axes with no positive
    eigenvalue (e.g. fewer than three points) are zero. Each axis's sign is fixed so that its
    largest coordinate is positive, so the same input always gives the same picture.
    """
    d2 = dist_KK.double() ** 2
    k = d2.shape[0]
    j = torch.eye(k, dtype=torch.float64) - 1.0 / k
    b = -0.5 * j @ d2 @ j
    b = (b + b.T) / 2
    evals, evecs = torch.linalg.eigh(b)  # ascending
    evals, evecs = evals.flip(0), evecs.flip(1)
    coords = torch.zeros(k, dims, dtype=torch.float64)
    positive = evals.clamp(min=0)
    for a in range(min(dims, k)):
        if positive[a] <= 1e-12 * max(float(positive[0]), 1e-300):
            continue
        v = evecs[:, a] * positive[a].sqrt()
        if v[v.abs().argmax()] < 0:
            v = -v
        coords[:, a] = v
    total = float(positive.sum())
    explained = float(positive[:dims].sum()) / total if total > 0 else 1.0
    return coords, explained


def checkpoint_map(labels: list[str], vectors: list[torch.Tensor], base_index: int = 0) -> dict:
    """Pairwise RMS distances, MDS coordinates with the base at the origin, and the variance the 2-D map keeps."""
    dist = pairwise_rms(torch.stack(vectors))
    coords, explained = classical_mds(dist)
    coords = coords - coords[base_index]
    return {"labels": labels, "coords": coords.tolist(), "pairwise_rms": dist.tolist(), "explained": explained}


def markdown_table(rows: list[dict]) -> str:
    """One row per run: RMS log-prob distance and KL estimate to the base model, and its map position."""
    lines = ["| run | method | RMS Δlog p vs base | KL(base‖model) per token | map x | map y |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        x, y = (round(v, 4) + 0.0 for v in (r["x"], r["y"]))  # + 0.0: no "-0.0000" for the base's neighbours
        lines.append(f"| {r['label']} | {r['method']} | {r['rms']:.4f} | {r['kl']:.4f} | {x:.4f} | {y:.4f} |")
    return "\n".join(lines)


def plot_map(points: list[dict], path: Path, title: str, colors: dict[str, str], explained: float) -> Path:
    """One point per run (colour = method, label = run) and the base model at the origin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter([0], [0], marker="*", s=220, color="black", zorder=3, label="base model")
    seen = set()
    for p in points:
        color = colors.get(p["method"])
        ax.scatter([p["x"]], [p["y"]], s=60, color=color, zorder=3,
                   label=p["method"] if p["method"] not in seen else None)
        seen.add(p["method"])
        ax.annotate(p["label"], (p["x"], p["y"]), textcoords="offset points", xytext=(5, 4), fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("MDS axis 1 (RMS Δlog p)")
    ax.set_ylabel("MDS axis 2 (RMS Δlog p)")
    ax.set_title(f"{title}\n(classical MDS of RMS log-prob distances; the 2 axes keep {explained:.0%})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
