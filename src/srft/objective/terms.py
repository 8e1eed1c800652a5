"""The registry of loss terms: a term is one function and one registration.

A term is a function ``(cfg, batch, shared) -> TermOut``: its per-token loss ``[B, T]``
(zero on tokens it does not apply to; the reduction is the caller's, see
:func:`~srft.objective.combine.reduce_terms`) and its own figures for the step's record.
``shared`` (:class:`Shared`) holds what several terms read and what must be computed once,
in order, before any term: the token masks, the entropy-aware weights, the TIS weight, the
ratio's old log-probs, the covariance-chosen tokens and the forking tokens.

Registration declares the term's name, the sequences it applies to (``demos``,
``rollouts``, or ``kl_tokens``: chosen by ``objective.kl_tokens``), which fixes its
normaliser under ``term_norm=own``, and when the config enables it. A disabled term's
loss is zero. The registration order is the logging order (``TERMS``, the ``loss_<term>``
columns of metrics.jsonl), so a new term registers after the existing ones, in this module
(``combine`` derives ``TERMS`` when it is imported).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from srft.config import ObjectiveConfig
from srft.objective.batch import TokenBatch
from srft.objective.cov import kl_cov_loss
from srft.objective.losses import cispo_loss, grpo_loss, gspo_log_ratio, kl_k3, offpolicy_loss, self_rollout_loss, sft_loss


@dataclass
class TermOut:
    """One term's per-token loss [B, T] and its figures (name -> tensor, e.g. an indicator [B, T])."""

    loss_BT: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Shared:
    """The pieces computed once per batch, before the terms (:func:`~srft.objective.combine.shared_pieces`)."""

    demo_BT: torch.Tensor  # [B, T] demonstration tokens
    roll_BT: torch.Tensor  # [B, T] rollout tokens that get a policy term (Prefix-RFT narrows it)
    w_sft_BT: torch.Tensor  # [B, T] SFT weight, CHORD's mu included (detached)
    w_rl_BT: torch.Tensor  # [B, T] w_RL (detached)
    tis_BT: torch.Tensor  # [B, T] truncated IS weight (1: none)
    old_logp_BT: torch.Tensor  # [B, T] the ratio's old log-probs (GRPO, KL-Cov)
    pg_logp_BT: torch.Tensor  # [B, T] log pi for the own-rollout term (Clip-Cov detaches some tokens)
    kl_cov_BT: torch.Tensor | None  # [B, T] KL-Cov's chosen tokens (None: off)
    sft_share: float  # CHORD's mu (1 with mix=add)
    rl_share: float  # 1 - mu (1 with mix=add): scales every term but sft, last
    # [B, T] the forking tokens, the only rollout tokens the GRPO term applies to (None: all of roll_BT)
    fork_BT: torch.Tensor | None = None
    # pieces two terms compute together (SRFT's pos and neg), computed by the first that needs them
    cache: dict[str, torch.Tensor] = field(default_factory=dict)


TermFn = Callable[[ObjectiveConfig, TokenBatch, Shared], TermOut]
KINDS = ("demos", "rollouts", "kl_tokens")


@dataclass(frozen=True)
class TermSpec:
    name: str
    fn: TermFn
    applies_to: str  # demos, rollouts, or kl_tokens (objective.kl_tokens decides)
    enabled: Callable[[ObjectiveConfig], bool]


REGISTRY: dict[str, TermSpec] = {}


def register_term(name: str, applies_to: str, enabled: Callable[[ObjectiveConfig], bool]):
    """Decorator: register ``fn(cfg, batch, shared) -> TermOut`` as the loss term ``name``."""
    if applies_to not in KINDS:
        raise ValueError(f"applies_to must be one of {KINDS}, got {applies_to!r}")

    def wrap(fn: TermFn) -> TermFn:
        if name in REGISTRY:
            raise ValueError(f"loss term {name!r} is already registered")
        REGISTRY[name] = TermSpec(name, fn, applies_to, enabled)
        return fn

    return wrap


def kind_mask(kind: str, shared: Shared) -> torch.Tensor:
    """The [B, T] tokens of ``demos``, ``rollouts`` or ``all``."""
    return {"rollouts": shared.roll_BT, "demos": shared.demo_BT, "all": shared.roll_BT + shared.demo_BT}[kind]


# --------------------------------------------------------------------------- the built-in terms
# In logging order. Each masks its own loss: the masks are not all its ``applies_to`` (KL-Cov's
# tokens are a subset of the rollouts).


@register_term("sft", applies_to="demos", enabled=lambda cfg: cfg.sft_coef != 0)
def sft_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    return TermOut(sft_loss(batch.logp_BT, sh.w_sft_BT) * sh.demo_BT)


@register_term("offpolicy", applies_to="demos", enabled=lambda cfg: cfg.offpolicy_coef != 0)
def offpolicy_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    loss_BT = offpolicy_loss(batch.logp_BT, batch.adv_B, cfg.offpolicy_shaping, cfg.shaping_gamma)
    return TermOut(cfg.offpolicy_coef * loss_BT * sh.demo_BT)


def _srft_self_rollout(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> tuple[torch.Tensor, torch.Tensor]:
    """SRFT's own-rollout loss [B, T] and the correct-rollout indicator [B, 1]: computed once
    for both the pos and the neg term, which split it by correctness."""
    if "srft_both_BT" not in sh.cache:
        sh.cache["srft_both_BT"] = sh.tis_BT * self_rollout_loss(sh.pg_logp_BT, batch.correct_B, sh.w_rl_BT,
                                                                cfg.neg_coef)
        sh.cache["srft_correct_BT"] = batch.correct_B.unsqueeze(-1).to(sh.roll_BT.dtype)
    return sh.cache["srft_both_BT"], sh.cache["srft_correct_BT"]


@register_term("pos", applies_to="rollouts", enabled=lambda cfg: cfg.self_rollout == "srft")
def pos_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    both_BT, correct_BT = _srft_self_rollout(cfg, batch, sh)
    return TermOut(both_BT * sh.roll_BT * correct_BT)


@register_term("neg", applies_to="rollouts", enabled=lambda cfg: cfg.self_rollout == "srft")
def neg_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    both_BT, correct_BT = _srft_self_rollout(cfg, batch, sh)
    return TermOut(both_BT * sh.roll_BT * (1 - correct_BT))


@register_term("grpo", applies_to="rollouts", enabled=lambda cfg: cfg.self_rollout == "grpo")
def grpo_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    # is_level=sequence: GSPO (arXiv 2507.18071): every token's ratio is its sequence's
    # exp(mean log ratio) over the rollout tokens, with the token's own gradient, clipped alike.
    logp_BT, old_BT = sh.pg_logp_BT, sh.old_logp_BT
    if cfg.is_level == "sequence":
        logp_BT, old_BT = gspo_log_ratio(logp_BT, old_BT, sh.roll_BT), torch.zeros_like(old_BT)
    # clipped_BT: where the clip binds (not masked; the loop counts it over its rollout tokens)
    if cfg.surrogate == "cispo":  # CISPO (arXiv 2506.13585): the clipped ratio a detached weight on log pi
        surrogate_BT, clipped_BT = cispo_loss(sh.pg_logp_BT, logp_BT - old_BT.detach(), batch.adv_B,
                                              cfg.clip_eps, cfg.clip_eps_high)
    else:
        surrogate_BT, clipped_BT = grpo_loss(logp_BT, old_BT, batch.adv_B, cfg.clip_eps, cfg.clip_eps_high)
    roll_BT = sh.roll_BT
    if sh.fork_BT is not None:  # top_entropy_quantile < 1: the policy gradient on the forking tokens only
        roll_BT, clipped_BT = sh.fork_BT, clipped_BT * sh.fork_BT
    return TermOut(sh.tis_BT * surrogate_BT * roll_BT, {"clipped_BT": clipped_BT})


@register_term("entropy_bonus", applies_to="rollouts", enabled=lambda cfg: cfg.entropy_coef != 0)
def entropy_bonus_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    return TermOut(-cfg.entropy_coef * batch.entropy_BT * sh.roll_BT)


@register_term("kl", applies_to="kl_tokens", enabled=lambda cfg: cfg.kl_coef != 0)
def kl_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    if cfg.kl_estimator == "full":
        if batch.kl_BT is None:
            raise ValueError("kl_estimator=full needs the per-token full KL (kl_BT)")
        per_token_BT = batch.kl_BT
    else:
        if batch.ref_logp_BT is None:
            raise ValueError("kl_coef > 0 needs the reference model's log-probs")
        per_token_BT = kl_k3(batch.logp_BT, batch.ref_logp_BT)
    return TermOut(cfg.kl_coef * per_token_BT * kind_mask(cfg.kl_tokens, sh))


# KL-Cov's tokens are rollout tokens, but under term_norm=own it has always been normalised
# like the KL term (objective.kl_tokens): kept so, as metrics must not move with this registry.
@register_term("kl_cov", applies_to="kl_tokens",
               enabled=lambda cfg: cfg.cov_method == "kl-cov" and cfg.self_rollout != "none" and cfg.kl_cov_coef != 0)
def kl_cov_term(cfg: ObjectiveConfig, batch: TokenBatch, sh: Shared) -> TermOut:
    return TermOut(cfg.kl_cov_coef * kl_cov_loss(batch.logp_BT, sh.old_logp_BT) * sh.kl_cov_BT)
