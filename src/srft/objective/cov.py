"""Covariance-based control of the tokens that drive entropy collapse (Clip-Cov and KL-Cov,
from "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models", 2025).

Under a policy gradient, entropy falls at a rate set by the covariance of a token's
log-probability and its advantage: confident tokens with high advantage sharpen the policy
fastest. Per on-policy rollout token, the centred product

    cov = (log pi - mean(log pi)) * (A - mean(A))      (means over the rollout tokens given)

measures that token's share. Both methods act on a small fraction of the tokens:

- Clip-Cov: of the tokens whose cov lies in the band (low, high), a random
  ``ratio`` * (rollout tokens) of them get no gradient (their log pi is detached);
- KL-Cov: the top ``ratio`` * (rollout tokens) by cov get the penalty
  ``coef * |log pi - log pi_old|``, which holds them near the rollout-time policy.

Either way at least one token is chosen (when any qualifies). The means and the choice are
over the tokens of one call (the micro-batch), as in the reference implementation.
"""

from __future__ import annotations

import torch


def token_covariance(logp_BT: torch.Tensor, adv_B: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """The centred covariance term per token [B, T] (no gradient; 0 outside ``mask_BT``)."""
    mask = mask_BT.to(logp_BT.dtype)
    n = mask.sum().clamp(min=1)
    logp = logp_BT.detach()
    adv_BT = adv_B.detach().to(logp.dtype).unsqueeze(-1).expand_as(logp)
    mean_logp = (logp * mask).sum() / n
    mean_adv = (adv_BT * mask).sum() / n
    return (logp - mean_logp) * (adv_BT - mean_adv) * mask


def _count(ratio: float, mask_BT: torch.Tensor) -> int:
    return max(int(ratio * float(mask_BT.sum())), 1)


def clip_cov_mask(cov_BT: torch.Tensor, mask_BT: torch.Tensor, ratio: float, low: float, high: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, T] 1 at the tokens whose gradient Clip-Cov removes: ``max(int(ratio * n), 1)`` of the
    masked tokens with low < cov < high (n = masked tokens), drawn at random; all when fewer qualify."""
    band_BT = (mask_BT > 0) & (cov_BT > low) & (cov_BT < high)
    where = band_BT.flatten().nonzero().squeeze(-1)
    chosen_BT = torch.zeros_like(cov_BT)
    k = min(_count(ratio, mask_BT), where.numel())
    if k:
        pick = where[torch.randperm(where.numel(), generator=generator)[:k].to(where.device)]
        chosen_BT.view(-1)[pick] = 1.0
    return chosen_BT


def kl_cov_mask(cov_BT: torch.Tensor, mask_BT: torch.Tensor, ratio: float) -> torch.Tensor:
    """[B, T] 1 at the ``max(int(ratio * n), 1)`` masked tokens of largest cov (n = masked tokens)."""
    chosen_BT = torch.zeros_like(cov_BT)
    n = int((mask_BT > 0).sum())
    if not n:
        return chosen_BT
    k = min(_count(ratio, mask_BT), n)
    scores = cov_BT.masked_fill(mask_BT <= 0, float("-inf")).flatten()
    chosen_BT.view(-1)[scores.topk(k).indices] = 1.0
    return chosen_BT


def detach_where(logp_BT: torch.Tensor, chosen_BT: torch.Tensor) -> torch.Tensor:
    """log pi with the gradient removed at the chosen tokens (the same values everywhere)."""
    return torch.where(chosen_BT > 0, logp_BT.detach(), logp_BT)


def kl_cov_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor) -> torch.Tensor:
    """KL-Cov's per-token penalty |log pi - log pi_old| [B, T] (pi_old detached)."""
    return (logp_BT - old_logp_BT.detach()).abs()
