"""The training objective: per-token loss terms (``losses``), registered as the objective's
terms (``terms``) and combined for a batch (``combine``, inputs in a ``TokenBatch``)."""

from srft.objective.batch import TokenBatch
from srft.objective.combine import TERM_KIND, TERMS, Losses, batch_losses, reduce_terms, token_losses
from srft.objective.losses import (
    agg_loss,
    chord_mu,
    cispo_loss,
    controller_update,
    entropy_for_weights,
    group_advantages,
    grpo_loss,
    gspo_log_ratio,
    kl_full,
    kl_k3,
    offpolicy_loss,
    old_logprobs,
    overlong_penalty,
    phi_weight,
    prefix_keep_mask,
    prob_weight,
    rl_weight,
    self_rollout_loss,
    sft_loss,
    sft_weight,
    tis_weight,
    token_logprobs_and_entropy,
    top_entropy_mask,
    weight_factor,
)
from srft.objective.terms import REGISTRY, TermOut, register_term

__all__ = [
    "TERMS", "TERM_KIND", "token_losses", "reduce_terms", "batch_losses", "Losses", "TokenBatch",
    "register_term", "TermOut", "REGISTRY",
    "agg_loss", "chord_mu", "cispo_loss", "entropy_for_weights", "group_advantages", "grpo_loss", "gspo_log_ratio", "kl_full", "kl_k3",
    "offpolicy_loss", "phi_weight", "prob_weight", "rl_weight", "self_rollout_loss", "sft_loss", "sft_weight", "token_logprobs_and_entropy",
    "controller_update", "prefix_keep_mask", "weight_factor", "old_logprobs", "tis_weight", "top_entropy_mask",
    "overlong_penalty",
]
