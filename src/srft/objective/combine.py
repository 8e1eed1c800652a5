"""Combine the loss terms for one batch of mixed sequences (demonstrations and own rollouts).

A batch holds B sequences of both kinds in one ``[B, T]`` layout; each token gets the
terms that apply to its sequence's kind, so every term is a ``[B, T]`` tensor that is
zero where it does not apply. The caller reduces each term with the same
:func:`~srft.objective.losses.agg_loss` call; because the reduction is linear, the
reduced terms add up to the reduced total, and they can be logged one by one.

With ``mix: chord`` the SFT term is scaled by CHORD's mu(step) and every other term by
(1 - mu); the caller passes the optimiser step as ``step`` (default 0).

Weights that are one number per step (schedules, the target-entropy controller) arrive
as ``sft_factor`` / ``rl_factor``, computed by the caller; Prefix-RFT's rollouts that
start with a demonstration prefix arrive as ``prefix_len_B`` (0 for ordinary rollouts).
"""

from __future__ import annotations

import torch

from srft.config import ObjectiveConfig
from srft.objective.cov import clip_cov_mask, detach_where, kl_cov_loss, kl_cov_mask, token_covariance
from srft.objective.losses import (
    agg_loss,
    chord_mu,
    entropy_for_weights,
    grpo_loss,
    kl_k3,
    offpolicy_loss,
    old_logprobs,
    prefix_keep_mask,
    rl_weight,
    self_rollout_loss,
    sft_loss,
    sft_weight,
    tis_weight,
)

# Every term the objective can produce, in logging order.
TERMS = ("sft", "offpolicy", "pos", "neg", "grpo", "entropy_bonus", "kl", "kl_cov")


def token_losses(
    cfg: ObjectiveConfig,
    logp_BT: torch.Tensor,  # [B, T] log pi of the sequence's tokens (with gradient)
    entropy_BT: torch.Tensor,  # [B, T] entropy of pi at each position (with gradient)
    mask_BT: torch.Tensor,  # [B, T] 1 on response tokens
    is_demo_B: torch.Tensor,  # [B] bool: a demonstration (off-policy) rather than an own rollout
    correct_B: torch.Tensor,  # [B] bool: reward 1
    adv_B: torch.Tensor,  # [B] group advantage
    old_logp_BT: torch.Tensor | None = None,  # [B, T] rollout-time log-probs (GRPO ratio)
    ref_logp_BT: torch.Tensor | None = None,  # [B, T] frozen reference log-probs (KL)
    *,
    step: int = 0,  # the optimiser step (0-based): CHORD's mu schedule
    sft_factor: float = 1.0,  # the step's factor of w_SFT (sft_weight linear/cosine/target)
    rl_factor: float = 1.0,  # the step's factor of w_RL (rl_weight linear/cosine/target)
    prefix_len_B: torch.Tensor | None = None,  # [B] Prefix-RFT: demonstration tokens opening each rollout
    kl_BT: torch.Tensor | None = None,  # [B, T] full-vocabulary KL to the reference (kl_estimator=full)
    rollout_logp_BT: torch.Tensor | None = None,  # [B, T] the engine's log-probs of rollout tokens (NaN: none)
    cov_generator: torch.Generator | None = None,  # clip-cov's random choice of tokens
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Return (terms, weights): terms name -> [B, T] loss, weights 'w_sft'/'w_rl' -> [B, T] (detached).

    'w_sft' is the SFT weight as applied, CHORD's mu included.
    """
    mask = mask_BT.to(logp_BT.dtype)
    demo_BT = is_demo_B.unsqueeze(-1).to(mask.dtype) * mask  # [B, T]
    roll_BT = (~is_demo_B).unsqueeze(-1).to(mask.dtype) * mask  # [B, T]
    zeros = torch.zeros_like(logp_BT)

    # The entropy of each kind is taken over that kind's tokens only.
    h_demo_BT = entropy_for_weights(entropy_BT, demo_BT, cfg.entropy_granularity)
    h_roll_BT = entropy_for_weights(entropy_BT, roll_BT, cfg.entropy_granularity)
    if cfg.mix == "chord":
        mu = chord_mu(step, cfg.mu_peak, cfg.mu_valley, cfg.mu_warmup_steps, cfg.mu_decay_steps)
        sft_share, rl_share = mu, 1.0 - mu
    elif cfg.mix == "add":
        sft_share, rl_share = 1.0, 1.0
    else:
        raise ValueError(f"mix must be add or chord, got {cfg.mix!r}")
    if prefix_len_B is not None and bool((prefix_len_B > 0).any()):
        # Prefix-RFT: low-entropy prefix tokens of prefixed rollouts get no policy term.
        roll_BT = roll_BT * prefix_keep_mask(entropy_BT, prefix_len_B, roll_BT, cfg.prefix_entropy_top)
    w_sft_BT = sft_share * sft_weight(h_demo_BT, cfg.sft_coef, cfg.sft_weight, logp_BT, sft_factor) * demo_BT
    w_rl_BT = rl_weight(h_roll_BT, cfg.rl_coef, cfg.rl_weight, logp_BT, rl_factor) * roll_BT

    # Own rollouts sampled by an engine other than the trainer: optional truncated IS weight.
    tis_BT = tis_weight(logp_BT, rollout_logp_BT, cfg.tis_cap)
    terms = {name: zeros for name in TERMS}
    # Clip-Cov / KL-Cov choose among the plain rollout tokens (not demonstrations), for the own-rollout term.
    pg_logp_BT, kl_cov_BT = logp_BT, None
    if cfg.cov_method != "none" and cfg.self_rollout != "none":
        cov_BT = token_covariance(logp_BT, adv_B, roll_BT)
        if cfg.cov_method == "clip-cov":
            pg_logp_BT = detach_where(logp_BT, clip_cov_mask(cov_BT, roll_BT, cfg.cov_ratio, cfg.cov_low,
                                                             cfg.cov_high, cov_generator))
        elif cfg.cov_method == "kl-cov":
            kl_cov_BT = kl_cov_mask(cov_BT, roll_BT, cfg.cov_ratio)
        else:
            raise ValueError(f"cov_method must be none, clip-cov or kl-cov, got {cfg.cov_method!r}")
    if cfg.sft_coef != 0:
        terms["sft"] = sft_loss(logp_BT, w_sft_BT) * demo_BT
    if cfg.offpolicy_coef != 0:
        terms["offpolicy"] = cfg.offpolicy_coef * offpolicy_loss(
            logp_BT, adv_B, cfg.offpolicy_shaping, cfg.shaping_gamma) * demo_BT
    if cfg.self_rollout == "srft":
        both_BT = tis_BT * self_rollout_loss(pg_logp_BT, correct_B, w_rl_BT, cfg.neg_coef)
        correct_BT = correct_B.unsqueeze(-1).to(mask.dtype)
        terms["pos"] = both_BT * roll_BT * correct_BT
        terms["neg"] = both_BT * roll_BT * (1 - correct_BT)
    elif cfg.self_rollout == "grpo":
        if old_logp_BT is None:  # with TIS the ratio is the trainer's own; without, the engine's
            old_logp_BT = old_logprobs(logp_BT, rollout_logp_BT, use_rollout=cfg.tis_cap <= 0)
        surrogate_BT, _ = grpo_loss(pg_logp_BT, old_logp_BT, adv_B, cfg.clip_eps, cfg.clip_eps_high)
        terms["grpo"] = tis_BT * surrogate_BT * roll_BT
    elif cfg.self_rollout != "none":
        raise ValueError(f"self_rollout must be srft, grpo or none, got {cfg.self_rollout!r}")
    if kl_cov_BT is not None and cfg.kl_cov_coef != 0:
        kl_old_BT = old_logp_BT if old_logp_BT is not None else old_logprobs(
            logp_BT, rollout_logp_BT, use_rollout=cfg.tis_cap <= 0)
        terms["kl_cov"] = cfg.kl_cov_coef * kl_cov_loss(logp_BT, kl_old_BT) * kl_cov_BT
    if cfg.entropy_coef != 0:
        terms["entropy_bonus"] = -cfg.entropy_coef * entropy_BT * roll_BT
    if cfg.kl_coef != 0:
        if cfg.kl_estimator == "full":
            if kl_BT is None:
                raise ValueError("kl_estimator=full needs the per-token full KL (kl_BT)")
            per_token_BT = kl_BT
        else:
            if ref_logp_BT is None:
                raise ValueError("kl_coef > 0 needs the reference model's log-probs")
            per_token_BT = kl_k3(logp_BT, ref_logp_BT)
        where_BT = {"rollouts": roll_BT, "demos": demo_BT, "all": roll_BT + demo_BT}[cfg.kl_tokens]
        terms["kl"] = cfg.kl_coef * per_token_BT * where_BT
    if rl_share != 1.0:
        terms = {name: t if name == "sft" else rl_share * t for name, t in terms.items()}
    return terms, {"w_sft": w_sft_BT, "w_rl": w_rl_BT}


# The sequences each term applies to (the KL: objective.kl_tokens), for term_norm=own.
TERM_KIND = {"sft": "demos", "offpolicy": "demos", "pos": "rollouts", "neg": "rollouts", "grpo": "rollouts",
             "entropy_bonus": "rollouts"}


def reduce_terms(cfg: ObjectiveConfig, terms: dict[str, torch.Tensor], mask_BT: torch.Tensor,
                 is_demo_B: torch.Tensor, counts: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Reduce each [B, T] term to a scalar with ``agg_loss(cfg.loss_agg)``.

    ``counts`` maps 'all', 'demos', 'rollouts' to the step's agg_loss counts (num_tokens,
    num_seqs, max_len) of those sequences. term_norm=shared: every term over all sequences
    (the terms add up to one reduction of their sum); own: each term over the sequences it
    applies to (CHORD: the SFT term a mean over demonstration tokens, the GRPO term a mean
    over rollout tokens, then mixed by mu).
    """
    if cfg.term_norm == "shared":
        return {n: agg_loss(v, mask_BT, cfg.loss_agg, **counts["all"]) for n, v in terms.items()}
    if cfg.term_norm != "own":
        raise ValueError(f"term_norm must be shared or own, got {cfg.term_norm!r}")
    demo_BT = is_demo_B.unsqueeze(-1).to(mask_BT.dtype) * mask_BT
    masks = {"demos": demo_BT, "rollouts": mask_BT - demo_BT, "all": mask_BT}
    out = {}
    for name, v in terms.items():
        kind = TERM_KIND.get(name, cfg.kl_tokens)
        out[name] = agg_loss(v, masks[kind], cfg.loss_agg, **counts[kind])
    return out
