"""The SRFT objective and its pieces, as pure tensor functions.

Every loss function returns a per-token loss ``[B, T]``; reducing it to a scalar is a
separate named step, :func:`agg_loss`. Shapes use the suffix convention: ``_BT`` is
``[batch, response tokens]``, ``_B`` one value per sequence, ``_BTV`` logits.

Per prompt x the step has G on-policy rollouts and (usually) one demonstration;
rewards r are in {0, 1}. With ``pi`` the current policy's probability of the token
actually in the sequence and ``H`` the policy's entropy:

- advantages over the augmented group (rollouts + demonstration):
  ``A = (r - mean) / (std + eps)`` or ``A = r - mean``; an all-equal group gives A = 0;
- demonstration SFT term:       ``w_SFT * (-log pi)``,  ``w_SFT = c_sft * sg(exp(-H))``, c_sft = 0.5;
- demonstration off-policy RL:  ``-A * f(pi)``, the behaviour policy taken as 1, no clipping,
  ``f(pi) = pi`` or LUFFY's ``pi / (pi + gamma)``;
- own correct rollouts:         ``w_RL * (-log pi)``,  ``w_RL = c_rl * sg(exp(H))``, c_rl = 0.1;
- own wrong rollouts:           ``+log pi`` (weight 1);
- or, instead of the last two, the clipped GRPO surrogate (``self_rollout: grpo``), or no
  term at all (``self_rollout: none``, for SFT-only methods).

Pieces for the peer methods (presets sft, dft, luffy, chord, chord-phi): the SFT weight
can also be the token's own probability ``sg(pi)`` (DFT) or ``sg(pi (1 - pi))``
(CHORD-phi), and :func:`chord_mu` is CHORD's schedule of the SFT share mu over steps.

Where this implementation departs from the paper or chooses what it leaves open:

- Sign of the entropy in w_SFT. The paper's text has ``exp(-H)``: the SFT pull is
  weakened when the policy is uncertain, so that demonstrations do not collapse its
  entropy. Reports of the authors' code use ``exp(+H)``. We follow the text.
- Rewards. The paper derives the self-rollout term with rewards +1/-1 but trains with
  0/1 verifiable rewards; we use 0/1 for the advantages and the correct/wrong split
  for the self-rollout terms (exactly the two cases of the derivation).
- Granularity of H. The text does not say. The default is ``sequence``: each
  sequence's weight uses the mean entropy of the policy over that sequence's response
  tokens, so the weight says how uncertain the policy is on *this* sample while
  leaving the direction of the gradient within a sequence unchanged (``token`` would
  re-weight tokens inside a sequence, closer to CHORD's per-token phi; ``batch`` uses
  one number per micro-batch for all sequences of the same kind).
- The entropy bonus (default 0.001, as in the reference scripts) and the KL penalty
  (default 0) apply to on-policy rollout tokens only.
- The negative term ``+log pi`` is unbounded below; the loop clips the global gradient
  norm (``optim.grad_clip``), which the paper does not discuss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

AggMode = Literal["token-mean", "seq-mean-token-mean", "token-sum-norm"]


# --------------------------------------------------------------------------- advantages


def group_advantages(rewards_N: torch.Tensor, group_N: torch.Tensor, norm: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-normalised advantages over arbitrary groups.

    rewards_N: [N] rewards of all sequences (rollouts and demonstrations) of the step.
    group_N:   [N] integer group id (the prompt) of each sequence, in [0, num_groups).
    norm:      'std' -> (r - mean) / (std + eps); 'mean' -> r - mean.
    Returns [N] advantages; a group whose rewards are all equal gets exactly 0.
    The std is the unbiased sample std (a group of one sequence gets A = 0).
    """
    rewards_N = rewards_N.float()
    num_groups = int(group_N.max().item()) + 1 if group_N.numel() else 0
    count_G = torch.zeros(num_groups, dtype=rewards_N.dtype).index_add_(0, group_N, torch.ones_like(rewards_N))
    sum_G = torch.zeros(num_groups, dtype=rewards_N.dtype).index_add_(0, group_N, rewards_N)
    mean_G = sum_G / count_G.clamp(min=1)
    centred_N = rewards_N - mean_G[group_N]
    if norm == "mean":
        adv_N = centred_N
    elif norm == "std":
        sq_G = torch.zeros(num_groups, dtype=rewards_N.dtype).index_add_(0, group_N, centred_N**2)
        std_G = (sq_G / (count_G - 1).clamp(min=1)).sqrt()
        adv_N = centred_N / (std_G[group_N] + eps)
    else:
        raise ValueError(f"adv_norm must be 'std' or 'mean', got {norm!r}")
    # All-equal groups: the centred reward is 0 up to rounding; make it exactly 0.
    spread_G = torch.zeros(num_groups, dtype=rewards_N.dtype).index_add_(0, group_N, centred_N.abs())
    same_G = spread_G <= 1e-12
    return torch.where(same_G[group_N], torch.zeros_like(adv_N), adv_N)


def overlong_penalty(lengths_N: torch.Tensor, max_len: int, buffer: float, factor: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to each own rollout's reward.

    lengths_N: [N] response lengths in tokens; max_len: the response limit; buffer: the last
    fraction of max_len over which the penalty grows. With B = round(buffer * max_len), a
    response no longer than max_len - B gets 0, one at the limit -factor, linear in between.
    """
    width = round(buffer * max_len)
    if width <= 0 or factor == 0:
        return torch.zeros(lengths_N.shape, dtype=torch.float32)
    over_N = (lengths_N.float() - (max_len - width)) / width
    return -factor * over_N.clamp(0.0, 1.0)


# --------------------------------------------------------------------------- log-probs and entropy


def token_logprobs_and_entropy(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(token) and the entropy of pi at each position, both [B, T], with gradients."""
    logp_BTV = F.log_softmax(logits_BTV.float(), dim=-1)
    logp_BT = logp_BTV.gather(-1, tokens_BT.unsqueeze(-1)).squeeze(-1)
    entropy_BT = -(logp_BTV.exp() * logp_BTV).sum(-1)
    return logp_BT, entropy_BT


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def entropy_for_weights(entropy_BT: torch.Tensor, mask_BT: torch.Tensor,
                        granularity: str = "sequence") -> torch.Tensor:
    """The entropy H that enters the weights, broadcast to [B, T] and detached.

    token:    each token's own entropy;
    sequence: the mean over that sequence's masked tokens;
    batch:    the mean over all masked tokens of the batch.
    """
    ent_BT = entropy_BT.detach()
    if granularity == "token":
        h_BT = ent_BT
    elif granularity == "sequence":
        h_BT = masked_mean(ent_BT, mask_BT, dim=-1).unsqueeze(-1).expand_as(ent_BT)
    elif granularity == "batch":
        h_BT = masked_mean(ent_BT, mask_BT).expand_as(ent_BT)
    else:
        raise ValueError(f"entropy granularity must be token, sequence or batch, got {granularity!r}")
    return h_BT * mask_BT.to(h_BT.dtype)


def sft_weight(h_BT: torch.Tensor, coef: float = 0.5, mode: str = "exp",
               logp_BT: torch.Tensor | None = None, factor: float = 1.0) -> torch.Tensor:
    """The per-token weight of the SFT term; [B, T], no gradient.

    exp:      coef * sg(exp(-H))       (SRFT, entropy-aware);
    constant: coef                     (plain cross-entropy);
    prob:     coef * sg(pi)            (DFT: the loss becomes sg(pi) * (-log pi));
    phi:      coef * sg(pi * (1 - pi)) (CHORD-phi: small for tokens the policy is sure of
              either way, largest at pi = 1/2);
    linear, cosine, target: coef * factor, where the caller computes ``factor`` for the
              step (:func:`schedule_factor` or the :func:`controller_update` state).
    ``prob`` and ``phi`` need ``logp_BT``, the log-probability of each token.
    """
    if mode == "exp":
        return coef * torch.exp(-h_BT.detach())
    if mode == "constant":
        return torch.full_like(h_BT, coef).detach()
    if mode in SCALAR_MODES:
        return torch.full_like(h_BT, coef * factor).detach()
    if mode in ("prob", "phi"):
        if logp_BT is None:
            raise ValueError(f"sft weight mode {mode!r} needs the token log-probabilities")
        return coef * (prob_weight(logp_BT) if mode == "prob" else phi_weight(logp_BT))
    raise ValueError(f"sft weight mode must be exp, constant, prob, phi, linear, cosine or target, got {mode!r}")


def prob_weight(logp_BT: torch.Tensor) -> torch.Tensor:
    """sg(pi) per token, DFT's weight; [B, T], no gradient."""
    return logp_BT.detach().exp()


def phi_weight(logp_BT: torch.Tensor) -> torch.Tensor:
    """sg(pi * (1 - pi)) per token, CHORD-phi's weight, in [0, 1/4]; [B, T], no gradient."""
    prob_BT = logp_BT.detach().exp()
    return prob_BT * (1 - prob_BT)


def chord_mu(step: int, peak: float, valley: float, warmup_steps: int, decay_steps: int) -> float:
    """CHORD's global SFT share mu at optimiser step ``step`` (0-based).

    Warm-up: linear from 0 to ``peak``, ``mu = peak * (step + 1) / warmup_steps`` for
    step < warmup_steps (the convention of the learning-rate warm-up, so that step 0
    already has a non-zero SFT share); then a cosine decay from ``peak`` to ``valley``
    over ``decay_steps`` steps; then ``valley`` for good. With no warm-up and no decay
    steps mu is ``valley`` throughout (a constant mu: set peak = valley).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    since = step - max(warmup_steps, 0)
    if decay_steps > 0 and since < decay_steps:
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * since / decay_steps))
    return valley


def rl_weight(h_BT: torch.Tensor, coef: float = 0.1, mode: str = "exp",
              logp_BT: torch.Tensor | None = None, factor: float = 1.0) -> torch.Tensor:
    """w_RL on correct rollouts; [B, T], no gradient.

    exp: coef * sg(exp(H)) (SRFT); constant: coef; phi: coef * sg(pi * (1 - pi)) per token
    (needs ``logp_BT``); linear, cosine, target: coef * ``factor``.
    """
    if mode == "exp":
        return coef * torch.exp(h_BT.detach())
    if mode == "constant":
        return torch.full_like(h_BT, coef).detach()
    if mode in SCALAR_MODES:
        return torch.full_like(h_BT, coef * factor).detach()
    if mode == "phi":
        if logp_BT is None:
            raise ValueError("rl weight mode 'phi' needs the token log-probabilities")
        return coef * phi_weight(logp_BT)
    raise ValueError(f"rl weight mode must be exp, constant, phi, linear, cosine or target, got {mode!r}")


# Weight modes whose value is one number per step, computed outside the batch.
SCALAR_MODES = ("linear", "cosine", "target")
CONTROLLER_BOUND = 4.0  # |log factor| of the target-entropy controller


def schedule_factor(mode: str, step: int, total_steps: int, end: float) -> float:
    """Multiplier of a weight's coefficient at ``step`` of ``total_steps``: 1 at step 0, ``end`` at the last step.

    linear: 1 + (end - 1) * progress; cosine: end + (1 - end) * (1 + cos(pi * progress)) / 2,
    with progress = step / (total_steps - 1) clamped to [0, 1].
    """
    progress = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
    if mode == "linear":
        return 1.0 + (end - 1.0) * progress
    if mode == "cosine":
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be linear or cosine, got {mode!r}")


def controller_update(log_factor: float, entropy: float, target: float, gain: float, sign: float) -> float:
    """One step of the target-entropy controller: an integral controller on the log of a weight's factor.

    ``log_factor += sign * gain * (entropy - target)``, bounded to [-4, 4] so that a target the
    policy cannot reach does not drive the weight to 0 or infinity. sign = +1 for w_RL (entropy
    below target -> reinforce own samples less, they sharpen the policy), sign = -1 for w_SFT
    (entropy below target -> imitate more; fitting another policy's tokens raises entropy).
    This is the accumulated version of what exp(+H) and exp(-H) do step by step.
    """
    new = log_factor + sign * gain * (entropy - target)
    return min(max(new, -CONTROLLER_BOUND), CONTROLLER_BOUND)


def weight_factor(mode: str, step: int, total_steps: int, end: float, log_factor: float) -> float:
    """The step's factor for a scalar weight mode (1 for the per-token modes)."""
    if mode in ("linear", "cosine"):
        return schedule_factor(mode, step, total_steps, end)
    if mode == "target":
        return math.exp(log_factor)
    return 1.0


def prefix_keep_mask(entropy_BT: torch.Tensor, prefix_len_B: torch.Tensor, mask_BT: torch.Tensor,
                     top: float) -> torch.Tensor:
    """Prefix-RFT's entropy-based selection: which tokens of each response get a policy term; [B, T].

    Tokens at positions < prefix_len (copied from a demonstration) are kept only if they are
    among the ceil(top * prefix_len) highest-entropy prefix tokens of their sequence; the
    model's own continuation (positions >= prefix_len) is always kept. A sequence without a
    prefix (prefix_len 0) keeps every token.
    """
    B, T = entropy_BT.shape
    pos_BT = torch.arange(T, device=entropy_BT.device).unsqueeze(0).expand(B, T)
    in_prefix_BT = (pos_BT < prefix_len_B.unsqueeze(-1)) & (mask_BT > 0)
    ent_BT = entropy_BT.detach().masked_fill(~in_prefix_BT, float("-inf"))
    n_keep_B = torch.ceil(top * prefix_len_B.float()).long()
    # rank of each token's entropy within its sequence's prefix (0 = highest)
    order_BT = ent_BT.argsort(dim=-1, descending=True)
    rank_BT = torch.empty_like(order_BT).scatter_(1, order_BT, pos_BT.contiguous())
    keep_prefix_BT = in_prefix_BT & (rank_BT < n_keep_B.unsqueeze(-1))
    return (keep_prefix_BT | ~in_prefix_BT).to(mask_BT.dtype) * mask_BT


def top_entropy_mask(entropy_BT: torch.Tensor, mask_BT: torch.Tensor, quantile: float) -> torch.Tensor:
    """The forking tokens (Wang et al. 2025, "Beyond the 80/20 Rule", arXiv 2506.01939): of the
    tokens in ``mask_BT``, those whose entropy is in the top ``quantile`` of theirs; [B, T].

    With n tokens the threshold is the k-th highest entropy, k = ceil(quantile * n) (at least 1),
    and every token at or above it is kept (the paper's indicator H >= tau; ties may keep a few
    more). ``quantile >= 1`` keeps every token. The entropy carries no gradient here.
    """
    mask = mask_BT.to(entropy_BT.dtype)
    if quantile >= 1:
        return mask
    values = entropy_BT.detach()[mask_BT > 0]
    if values.numel() == 0:
        return mask
    k = max(1, math.ceil(quantile * values.numel() - 1e-9))
    threshold = torch.topk(values, k).values[-1]
    return (entropy_BT.detach() >= threshold).to(mask.dtype) * mask


# --------------------------------------------------------------------------- per-token loss terms


def sft_loss(logp_BT: torch.Tensor, weight_BT: torch.Tensor) -> torch.Tensor:
    """Weighted negative log-likelihood: weight * (-log pi). [B, T]."""
    return weight_BT.detach() * (-logp_BT)


def offpolicy_loss(logp_BT: torch.Tensor, adv_B: torch.Tensor, shaping: str = "identity",
                   gamma: float = 0.1) -> torch.Tensor:
    """Off-policy policy-gradient term on demonstrations, behaviour policy taken as 1: -A * f(pi). [B, T].

    f = identity: the importance ratio pi/1; f = luffy: pi / (pi + gamma), which
    enlarges the gradient of low-probability tokens. No clipping.
    """
    prob_BT = logp_BT.exp()
    if shaping == "identity":
        f_BT = prob_BT
    elif shaping == "luffy":
        f_BT = prob_BT / (prob_BT + gamma)
    else:
        raise ValueError(f"off-policy shaping must be identity or luffy, got {shaping!r}")
    return -adv_B.detach().unsqueeze(-1) * f_BT


def self_rollout_loss(logp_BT: torch.Tensor, correct_B: torch.Tensor, w_rl_BT: torch.Tensor,
                      neg_coef: float = 1.0) -> torch.Tensor:
    """SRFT's loss on own rollouts: w_RL * (-log pi) if correct, neg_coef * (+log pi) if wrong. [B, T]."""
    correct_BT = correct_B.bool().unsqueeze(-1).expand_as(logp_BT)
    return torch.where(correct_BT, w_rl_BT.detach() * (-logp_BT), neg_coef * logp_BT)


def old_logprobs(logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor | None, use_rollout: bool) -> torch.Tensor:
    """The GRPO ratio's old log-probs: the engine's rollout-time ones where ``use_rollout`` and
    known (not NaN), else the trainer's own, detached (ratio 1 in value)."""
    own_BT = logp_BT.detach()
    if rollout_logp_BT is None or not use_rollout:
        return own_BT
    return torch.where(torch.isnan(rollout_logp_BT), own_BT, rollout_logp_BT)


def tis_weight(logp_BT: torch.Tensor, rollout_logp_BT: torch.Tensor | None, cap: float) -> torch.Tensor:
    """Truncated importance weight min(pi_trainer / pi_engine, cap) per token, detached: it
    corrects for sampling with an engine whose probabilities differ slightly from the
    trainer's. 1 where the engine gave no log-prob (NaN: demonstrations, Prefix-RFT's
    demonstration prefix) or when ``cap`` is 0 (off)."""
    if rollout_logp_BT is None or cap <= 0:
        return torch.ones_like(logp_BT).detach()
    known_BT = ~torch.isnan(rollout_logp_BT)
    ratio_BT = torch.exp(logp_BT.detach() - torch.where(known_BT, rollout_logp_BT, logp_BT.detach()))
    return torch.where(known_BT, ratio_BT.clamp(max=cap), torch.ones_like(ratio_BT))


def grpo_loss(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, adv_B: torch.Tensor,
              clip_low: float = 0.2, clip_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped PPO/GRPO surrogate. Returns (loss [B, T], clipped-token indicator [B, T])."""
    ratio_BT = torch.exp(logp_BT - old_logp_BT.detach())
    adv_BT = adv_B.detach().unsqueeze(-1)
    unclipped_BT = -adv_BT * ratio_BT
    clipped_BT = -adv_BT * ratio_BT.clamp(1 - clip_low, 1 + clip_high)
    loss_BT = torch.maximum(unclipped_BT, clipped_BT)
    return loss_BT, (clipped_BT > unclipped_BT).float()


def cispo_loss(logp_BT: torch.Tensor, log_ratio_BT: torch.Tensor, adv_B: torch.Tensor,
               clip_low: float = 1.0, clip_high: float = 0.28) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1, arXiv 2506.13585): the importance weight clipped and detached, the
    gradient through log pi only. Returns (loss [B, T], clipped-weight indicator [B, T]).

    ``loss_t = -sg(clip(r_t, 1 - clip_low, 1 + clip_high)) * A * log pi_t`` with
    ``r_t = exp(log_ratio_t)``: unlike the PPO/GRPO surrogate no token loses its gradient where
    the clip binds; the weight only stops growing. ``clip_low >= 1`` sets no lower bound (the
    paper's practice). The indicator marks the tokens whose weight the clip changed.
    """
    ratio_BT = torch.exp(log_ratio_BT.detach())
    weight_BT = ratio_BT.clamp(1 - clip_low, 1 + clip_high)
    loss_BT = -weight_BT * adv_B.detach().unsqueeze(-1) * logp_BT
    return loss_BT, (weight_BT != ratio_BT).float()


def gspo_log_ratio(logp_BT: torch.Tensor, old_logp_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """GSPO's token-level form of the sequence importance ratio, as a log (Zheng et al. 2025,
    "Group Sequence Policy Optimization", arXiv 2507.18071, GSPO-token). [B, T].

    ``log s_i = mean over the sequence's tokens (mask_BT) of (log pi - log pi_old)``, the log of
    the sequence ratio (the geometric mean of the token ratios); each token carries its value and
    the gradient of its own log pi: ``log s_i,t = sg(log s_i) + log pi_t - sg(log pi_t)``. So
    ``exp(log s_i,t) = s_i`` at every token, and a per-sequence token mean of ``-A * s_i,t`` has
    the gradient ``-A * s_i * mean_t grad log pi_t``. A sequence without tokens gets log s = 0.
    """
    mask = mask_BT.to(logp_BT.dtype)
    diff_BT = (logp_BT.detach() - old_logp_BT.detach()) * mask
    log_s_B = diff_BT.sum(-1) / mask.sum(-1).clamp(min=1)
    return log_s_B.unsqueeze(-1) + logp_BT - logp_BT.detach()


def kl_full(logp_BTV: torch.Tensor, ref_logp_BTV: torch.Tensor, direction: str = "pi-ref") -> torch.Tensor:
    """The KL between pi and ref over the whole vocabulary at each position. [B, T].

    pi-ref: KL(pi || ref) = sum_v pi(v) (log pi(v) - log ref(v)), the RL penalty;
    ref-pi: KL(ref || pi) = sum_v ref(v) (log ref(v) - log pi(v)), ASFT's anchor (its code's
            ``F.kl_div(log_softmax(policy), softmax(ref))``); its gradient is
            -sum_v ref(v) grad log pi(v), a cross-entropy towards the reference.
    Exact, and zero only where the two distributions agree; costs the full [B, T, V]
    log-probs of both models (the k3 estimate needs only the sampled tokens').
    """
    ref_BTV = ref_logp_BTV.detach()
    if direction == "pi-ref":
        return (logp_BTV.exp() * (logp_BTV - ref_BTV)).sum(-1)
    if direction == "ref-pi":
        return (ref_BTV.exp() * (ref_BTV - logp_BTV)).sum(-1)
    raise ValueError(f"kl direction must be pi-ref or ref-pi, got {direction!r}")


def kl_k3(logp_BT: torch.Tensor, ref_logp_BT: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1 >= 0. [B, T].

    Its mean is KL(pi || ref) only over tokens sampled from pi (own rollouts), not on demonstrations."""
    delta_BT = ref_logp_BT.detach() - logp_BT
    return delta_BT.exp() - delta_BT - 1


# --------------------------------------------------------------------------- reduction


def agg_loss(loss_BT: torch.Tensor, mask_BT: torch.Tensor, mode: AggMode = "token-mean", *,
             num_tokens: float | None = None, num_seqs: float | None = None,
             max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token loss to a scalar.

    token-mean:          sum over valid tokens / number of valid tokens;
    seq-mean-token-mean: mean over sequences of each sequence's token mean;
    token-sum-norm:      sum over valid tokens / (number of sequences * max_len), the
                         constant normaliser of Dr.GRPO and the LUFFY/SRFT reference code.
    ``num_tokens``, ``num_seqs``, ``max_len`` let a caller that splits a step into
    micro-batches pass the whole step's counts, so that the micro-batch losses add up
    to the loss of the whole step. Sequences with no valid token do not count in
    seq-mean-token-mean.
    """
    mask = mask_BT.to(loss_BT.dtype)
    if mode == "token-mean":
        denom = num_tokens if num_tokens is not None else mask.sum()
        return (loss_BT * mask).sum() / max(float(denom), 1.0)
    if mode == "seq-mean-token-mean":
        tokens_B = mask.sum(-1)
        seq_mean_B = (loss_BT * mask).sum(-1) / tokens_B.clamp(min=1)
        denom = num_seqs if num_seqs is not None else (tokens_B > 0).sum()
        return seq_mean_B.sum() / max(float(denom), 1.0)
    if mode == "token-sum-norm":
        n_seqs = num_seqs if num_seqs is not None else loss_BT.shape[0]
        length = max_len if max_len is not None else loss_BT.shape[1]
        return (loss_BT * mask).sum() / max(float(n_seqs) * float(length), 1.0)
    raise ValueError(f"loss_agg must be token-mean, seq-mean-token-mean or token-sum-norm, got {mode!r}")
