"""What the objective sees of one micro-batch: :class:`TokenBatch`.

One frozen record instead of a long parameter list, so that a new loss term that needs a
new input adds a field here (with a default) rather than a parameter to every caller.
Shapes are in the field names: ``_B`` one value per sequence, ``_BT`` one per response
token (padded to the batch's longest response; ``mask_BT`` says which are real).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


# eq=False: the generated __eq__ would compare tensors element-wise, which has no truth value.
@dataclass(frozen=True, eq=False)
class TokenBatch:
    """B sequences, demonstrations and own rollouts mixed, in one ``[B, T]`` layout."""

    logp_BT: torch.Tensor  # log pi of each response token (with gradient)
    entropy_BT: torch.Tensor  # entropy of pi at each position (with gradient)
    mask_BT: torch.Tensor  # 1 on response tokens
    is_demo_B: torch.Tensor  # bool: a demonstration (off-policy) rather than an own rollout
    correct_B: torch.Tensor  # bool: reward 1
    adv_B: torch.Tensor  # group advantage
    old_logp_BT: torch.Tensor | None = None  # rollout-time log-probs (the GRPO ratio's); None: derived
    ref_logp_BT: torch.Tensor | None = None  # the frozen reference's log-probs (k3 KL)
    kl_BT: torch.Tensor | None = None  # full-vocabulary KL to the reference (kl_estimator=full)
    rollout_logp_BT: torch.Tensor | None = None  # the engine's log-probs of rollout tokens (NaN: none)
    prefix_len_B: torch.Tensor | None = None  # Prefix-RFT: demonstration tokens opening each rollout
    step: int = 0  # the optimiser step (0-based): CHORD's mu schedule
    sft_factor: float = 1.0  # the step's factor of w_SFT (sft_weight linear/cosine/target)
    rl_factor: float = 1.0  # the step's factor of w_RL (rl_weight linear/cosine/target)
    cov_generator: torch.Generator | None = None  # clip-cov's random choice of tokens
