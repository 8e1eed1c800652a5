"""One forward pass over (prompt, response) pairs: padding, and the response tokens'
log-probs and entropy through the chunked loss head (``srft.training.head``).

Shared by the training loop and the analysis tools (``srft.analysis.score``), so that a
token's log-probability in an analysis is exactly the one the loss saw.
"""

from __future__ import annotations

import torch

from srft.objective import kl_full, token_logprobs_and_entropy
from srft.training.head import DEFAULT_CHUNK, HeadInputs, full_kl, logprob_entropy, plain_head_reason, response_head


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
    """The logits that predict each response token: [B, T, V] (the plain path: the model's whole
    [B, L, V] logits first; ``response_logprobs`` avoids both where it can)."""
    logits_BLV = model(input_ids=batch["input_ids_BL"], attention_mask=batch["attention_BL"]).logits
    V = logits_BLV.shape[-1]
    return logits_BLV.gather(1, batch["pos_BT"].unsqueeze(-1).expand(-1, -1, V))


def response_logprobs(model, batch: dict, chunk_tokens: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 log pi and entropy at every response token: ([B, T], [B, T]), 0 at padding.

    The chunked head (``srft.training.head``): from the response tokens' last hidden states,
    ``chunk_tokens`` tokens at a time, never a whole [B, T, V]; models that rescale their
    logits after the projection take the plain path (``response_logits``)."""
    if plain_head_reason(model) is not None:
        logp_BT, ent_BT = token_logprobs_and_entropy(response_logits(model, batch), batch["tokens_BT"])
        mask_BT = batch["mask_BT"]
        return logp_BT * mask_BT, ent_BT * mask_BT
    tokens_BT = batch["tokens_BT"]
    mask_BT = batch["mask_BT"] > 0

    def head_fn(h):
        logp_N, ent_N = logprob_entropy(h.hidden_NH, h.weight_VH, h.bias_V, tokens_BT[mask_BT], chunk_tokens)
        return {"logp": logp_N, "entropy": ent_N}

    out = response_head(model, batch, head_fn)
    return out["logp"], out["entropy"]


def response_logprobs_and_kl(model, ref_model, batch: dict, kl_direction: str | None,
                             chunk_tokens: int = DEFAULT_CHUNK):
    """(logp_BT, entropy_BT, ref_logp_BT, kl_BT) of the policy ``model`` and the frozen
    ``ref_model``: ref_logp_BT under no_grad; kl_BT the full-vocabulary KL (``kl_direction``
    'pi-ref' or 'ref-pi'), or None when ``kl_direction`` is None. Chunked as
    ``response_logprobs`` is (the KL's chunks recomputed in backward)."""
    if kl_direction is None:
        logp_BT, ent_BT = response_logprobs(model, batch, chunk_tokens)
        with torch.no_grad():
            ref_BT, _ = response_logprobs(ref_model, batch, chunk_tokens)
        return logp_BT, ent_BT, ref_BT, None
    if plain_head_reason(model) is not None or plain_head_reason(ref_model) is not None:
        return _plain_logprobs_and_kl(model, ref_model, batch, kl_direction)
    tokens_BT = batch["tokens_BT"]
    mask_BT = batch["mask_BT"] > 0
    with torch.no_grad():
        ref = response_head(ref_model, batch, lambda h: {"inputs": HeadInputs(h.hidden_NH.detach(), h.weight_VH.detach(),
                                                                               None if h.bias_V is None else h.bias_V.detach())})
        ref_inputs = ref["inputs"]
        ref_N, _ = logprob_entropy(ref_inputs.hidden_NH, ref_inputs.weight_VH, ref_inputs.bias_V, tokens_BT[mask_BT],
                                   chunk_tokens)
    ref_BT = torch.zeros(mask_BT.shape, dtype=torch.float32, device=ref_N.device).index_put(mask_BT.nonzero(as_tuple=True), ref_N)

    def head_fn(h):
        logp_N, ent_N = logprob_entropy(h.hidden_NH, h.weight_VH, h.bias_V, tokens_BT[mask_BT], chunk_tokens)
        kl_N = full_kl(h.hidden_NH, h.weight_VH, h.bias_V, ref_inputs, kl_direction, chunk_tokens)
        return {"logp": logp_N, "entropy": ent_N, "kl": kl_N}

    out = response_head(model, batch, head_fn)
    return out["logp"], out["entropy"], ref_BT, out["kl"]


def _plain_logprobs_and_kl(model, ref_model, batch: dict, kl_direction: str):
    """The plain path of ``response_logprobs_and_kl``: whole [B, T, V] logits of both models."""
    mask_BT = batch["mask_BT"]
    logits_BTV = response_logits(model, batch)
    logp_BT, ent_BT = token_logprobs_and_entropy(logits_BTV, batch["tokens_BT"])
    with torch.no_grad():
        ref_logits_BTV = response_logits(ref_model, batch)
    ref_BT, _ = token_logprobs_and_entropy(ref_logits_BTV, batch["tokens_BT"])
    kl_BT = kl_full(torch.log_softmax(logits_BTV.float(), -1), torch.log_softmax(ref_logits_BTV.float(), -1),
                    kl_direction)
    return logp_BT * mask_BT, ent_BT * mask_BT, ref_BT * mask_BT, kl_BT * mask_BT
