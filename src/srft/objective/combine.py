"""Combine the loss terms for one batch of mixed sequences (demonstrations and own rollouts).

A batch holds B sequences of both kinds in one ``[B, T]`` layout (:class:`TokenBatch`);
each token gets the terms that apply to its sequence's kind, so every term is a ``[B, T]``
tensor that is zero where it does not apply. The terms are registered in
:mod:`srft.objective.terms`; :func:`batch_losses` computes the pieces they share, then each
enabled term, then the mix. The caller reduces each term with the same
:func:`~srft.objective.losses.agg_loss` call (:func:`reduce_terms`); because the reduction is
linear, the reduced terms add up to the reduced total, and they can be logged one by one.

With ``mix: chord`` the SFT term is scaled by CHORD's mu(step) and every other term by
(1 - mu); the caller passes the optimiser step as ``step`` (default 0).

Weights that are one number per step (schedules, the target-entropy controller) arrive
as ``sft_factor`` / ``rl_factor``, computed by the caller; Prefix-RFT's rollouts that
start with a demonstration prefix arrive as ``prefix_len_B`` (0 for ordinary rollouts).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from srft.config import ObjectiveConfig
from srft.objective.batch import TokenBatch
from srft.objective.cov import clip_cov_mask, detach_where, kl_cov_mask, token_covariance
from srft.objective.losses import (
    agg_loss,
    chord_mu,
    entropy_for_weights,
    old_logprobs,
    prefix_keep_mask,
    rl_weight,
    sft_weight,
    tis_weight,
    top_entropy_mask,
)
from srft.objective.terms import REGISTRY, Shared, TermOut

# Every term the objective can produce, in logging order (the registration order).
TERMS = tuple(REGISTRY)
# The sequences each term applies to, for term_norm=own; absent: objective.kl_tokens decides.
TERM_KIND = {name: spec.applies_to for name, spec in REGISTRY.items() if spec.applies_to != "kl_tokens"}


class Losses(NamedTuple):
    terms: dict[str, torch.Tensor]  # name -> [B, T] loss, every registered term (zero when disabled)
    weights: dict[str, torch.Tensor]  # 'w_sft' (CHORD's mu included), 'w_rl' -> [B, T], detached
    metrics: dict[str, dict[str, torch.Tensor]]  # an enabled term's name -> its own figures


def batch_losses(cfg: ObjectiveConfig, batch: TokenBatch) -> Losses:
    """The shared pieces, then each enabled term's per-token loss, then the mix: with
    ``mix: chord`` every term but the SFT one is scaled by (1 - mu), last (the SFT term's mu
    is in its weight)."""
    sh = shared_pieces(cfg, batch)
    zeros_BT = torch.zeros_like(batch.logp_BT)
    outs: dict[str, TermOut] = {name: spec.fn(cfg, batch, sh) for name, spec in REGISTRY.items()
                                if spec.enabled(cfg)}
    terms = {name: outs[name].loss_BT if name in outs else zeros_BT for name in REGISTRY}
    if sh.rl_share != 1.0:
        terms = {name: t if name == "sft" else sh.rl_share * t for name, t in terms.items()}
    return Losses(terms, {"w_sft": sh.w_sft_BT, "w_rl": sh.w_rl_BT},
                  {name: out.metrics for name, out in outs.items()})


def shared_pieces(cfg: ObjectiveConfig, b: TokenBatch) -> Shared:
    """What the terms share, in an order that matters: the entropy that enters the weights is
    taken over each kind's tokens before Prefix-RFT narrows the rollout tokens, and w_RL and the
    covariance choice see the narrowed ones."""
    if cfg.mix not in ("add", "chord"):
        raise ValueError(f"mix must be add or chord, got {cfg.mix!r}")
    if cfg.self_rollout not in ("srft", "grpo", "none"):
        raise ValueError(f"self_rollout must be srft, grpo or none, got {cfg.self_rollout!r}")
    logp_BT = b.logp_BT
    mask = b.mask_BT.to(logp_BT.dtype)
    demo_BT = b.is_demo_B.unsqueeze(-1).to(mask.dtype) * mask
    roll_BT = (~b.is_demo_B).unsqueeze(-1).to(mask.dtype) * mask
    # The entropy of each kind is taken over that kind's tokens only.
    h_demo_BT = entropy_for_weights(b.entropy_BT, demo_BT, cfg.entropy_granularity)
    h_roll_BT = entropy_for_weights(b.entropy_BT, roll_BT, cfg.entropy_granularity)
    mu = chord_mu(b.step, cfg.mu_peak, cfg.mu_valley, cfg.mu_warmup_steps, cfg.mu_decay_steps) \
        if cfg.mix == "chord" else None
    sft_share, rl_share = (1.0, 1.0) if mu is None else (mu, 1.0 - mu)
    if b.prefix_len_B is not None and bool((b.prefix_len_B > 0).any()):
        # Prefix-RFT: low-entropy prefix tokens of prefixed rollouts get no policy term.
        roll_BT = roll_BT * prefix_keep_mask(b.entropy_BT, b.prefix_len_B, roll_BT, cfg.prefix_entropy_top)
    w_sft_BT = sft_share * sft_weight(h_demo_BT, cfg.sft_coef, cfg.sft_weight, logp_BT, b.sft_factor) * demo_BT
    w_rl_BT = rl_weight(h_roll_BT, cfg.rl_coef, cfg.rl_weight, logp_BT, b.rl_factor) * roll_BT
    # Own rollouts sampled by an engine other than the trainer: optional truncated IS weight.
    tis_BT = tis_weight(logp_BT, b.rollout_logp_BT, cfg.tis_cap)
    # The ratio's old log-probs (GRPO, KL-Cov): with TIS the trainer's own, without it the engine's.
    old_BT = b.old_logp_BT if b.old_logp_BT is not None else old_logprobs(
        logp_BT, b.rollout_logp_BT, use_rollout=cfg.tis_cap <= 0)
    # Clip-Cov / KL-Cov choose among the plain rollout tokens (not demonstrations), for the own-rollout term.
    pg_logp_BT, kl_cov_BT = logp_BT, None
    if cfg.cov_method != "none" and cfg.self_rollout != "none":
        cov_BT = token_covariance(logp_BT, b.adv_B, roll_BT)
        if cfg.cov_method == "clip-cov":
            pg_logp_BT = detach_where(logp_BT, clip_cov_mask(cov_BT, roll_BT, cfg.cov_ratio, cfg.cov_low,
                                                             cfg.cov_high, b.cov_generator))
        elif cfg.cov_method == "kl-cov":
            kl_cov_BT = kl_cov_mask(cov_BT, roll_BT, cfg.cov_ratio)
        else:
            raise ValueError(f"cov_method must be none, clip-cov or kl-cov, got {cfg.cov_method!r}")
    # The forking tokens (arXiv 2506.01939): the GRPO term only on the rollout tokens whose entropy is
    # in the top top_entropy_quantile of this micro-batch's (after Prefix-RFT's narrowing); the other
    # rollout terms and the normalisers keep every rollout token.
    fork_BT = top_entropy_mask(b.entropy_BT, roll_BT, cfg.top_entropy_quantile) \
        if cfg.top_entropy_quantile < 1 else None
    return Shared(demo_BT=demo_BT, roll_BT=roll_BT, w_sft_BT=w_sft_BT, w_rl_BT=w_rl_BT, tis_BT=tis_BT,
                  old_logp_BT=old_BT, pg_logp_BT=pg_logp_BT, kl_cov_BT=kl_cov_BT,
                  sft_share=sft_share, rl_share=rl_share, fork_BT=fork_BT)


def token_losses(
    cfg: ObjectiveConfig,
    logp_BT: torch.Tensor,
    entropy_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    is_demo_B: torch.Tensor,
    correct_B: torch.Tensor,
    adv_B: torch.Tensor,
    old_logp_BT: torch.Tensor | None = None,
    ref_logp_BT: torch.Tensor | None = None,
    **batch_fields,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`batch_losses` with the inputs as arguments (the fields of :class:`TokenBatch`;
    keyword-only after ``ref_logp_BT``): returns (terms, weights)."""
    batch = TokenBatch(logp_BT, entropy_BT, mask_BT, is_demo_B, correct_B, adv_B, old_logp_BT=old_logp_BT,
                       ref_logp_BT=ref_logp_BT, **batch_fields)
    terms, weights, _ = batch_losses(cfg, batch)
    return terms, weights


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
        spec = REGISTRY.get(name)  # the registry, not TERM_KIND: a term registered later has its kind too
        kind = spec.applies_to if spec is not None and spec.applies_to != "kl_tokens" else cfg.kl_tokens
        out[name] = agg_loss(v, masks[kind], cfg.loss_agg, **counts[kind])
    return out
