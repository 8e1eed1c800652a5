"""One forward pass over (prompt, response) pairs: padding and the response tokens' logits.

Shared by the training loop and the analysis tools (``srft.analysis.score``), so that a
token's log-probability in an analysis is exactly the one the loss saw.
"""

from __future__ import annotations

import torch

from srft.objective import token_logprobs_and_entropy


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int, device) -> dict:
    """Right-pad (prompt, response) pairs for one forward pass.

    Returns input_ids_BL / attention_BL for the model, and for the response tokens
    tokens_BT (the response ids), mask_BT, and pos_BT: the position in the logits that
    predicts each response token (prompt length - 1 + t).
    """
    B = len(seqs)
    L = max(len(p) + len(r) for p, r in seqs) - 1
    T = max(len(r) for _, r in seqs)
    input_ids_BL = torch.full((B, L), pad_id, dtype=torch.long)
    attention_BL = torch.zeros((B, L), dtype=torch.long)
    tokens_BT = torch.full((B, T), pad_id, dtype=torch.long)
    mask_BT = torch.zeros((B, T), dtype=torch.float32)
    pos_BT = torch.zeros((B, T), dtype=torch.long)
    for b, (p, r) in enumerate(seqs):
        full = (p + r)[:-1]  # the last token is only a target
        input_ids_BL[b, :len(full)] = torch.tensor(full)
        attention_BL[b, :len(full)] = 1
        tokens_BT[b, :len(r)] = torch.tensor(r)
        mask_BT[b, :len(r)] = 1
        pos_BT[b, :len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))
    return {k: v.to(device) for k, v in dict(input_ids_BL=input_ids_BL, attention_BL=attention_BL,
                                             tokens_BT=tokens_BT, mask_BT=mask_BT, pos_BT=pos_BT).items()}


def response_logits(model, batch: dict) -> torch.Tensor:
    """The logits that predict each response token: [B, T, V]."""
    logits_BLV = model(input_ids=batch["input_ids_BL"], attention_mask=batch["attention_BL"]).logits
    V = logits_BLV.shape[-1]
    return logits_BLV.gather(1, batch["pos_BT"].unsqueeze(-1).expand(-1, -1, V))


def response_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi and entropy at every response token: ([B, T], [B, T])."""
    return token_logprobs_and_entropy(response_logits(model, batch), batch["tokens_BT"])
