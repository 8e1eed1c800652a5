"""The loss head: per-token log-probabilities, entropy (and a full-vocabulary KL) of the
response tokens, computed from the last hidden states in chunks, never as whole
[tokens, vocab] tensors.

Why: a plain forward returns logits for every position ([B, L, V]); log_softmax, its exp
and their product add three more [B, T, V] float32 tensors, all kept for the backward
pass. At Qwen2.5's vocabulary (152,064) that is ~3 MB per token: ~29 GB for one sequence
of 1,024 + 8,192 tokens. Here:

- the model runs as usual, but its output projection (``lm_head``) is swapped for the head
  for the duration of the call, so that the model's own code, FSDP's hooks (the root's
  parameters are gathered around its forward) and autocast all act as they would;
- the head keeps the hidden states of the response tokens only ([N, H], N the real tokens,
  no padding, no prompt), and computes each chunk of ``chunk`` tokens' logits ([C, V], in
  the compute dtype, then float32), their log-softmax, the target token's log-prob and the
  entropy; nothing of size V is saved for backward;
- the backward pass recomputes each chunk's logits and forms the gradient of the logits
  from the saved log-sum-exp and entropy: d logp_tok / dz = onehot - p and
  d H / dz = -p * (log p + H).

Peak memory of the head: about two [chunk, V] float32 buffers plus a [V, H] float32
gradient accumulator for the output projection (benchmarks/loss_head.py measures it).

Models whose forward changes the logits after the projection (Gemma-2's soft-capping,
Cohere's logit scale, Granite's scaling) or whose output projection is not a plain
``nn.Linear`` take the plain path (whole logits), which ``plain_head_reason`` names.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

DEFAULT_CHUNK = 512

# config attributes whose presence (non-null) means the model rescales its logits after lm_head
_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _compute_dtype(weight: torch.Tensor, device_type: str) -> torch.dtype:
    """The dtype of the projection's matmul: autocast's where it is on, else the weight's."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def _chunk_logits(h_CH: torch.Tensor, w_VH: torch.Tensor, b_V: torch.Tensor | None) -> torch.Tensor:
    """float32 logits of one chunk, the matmul in the inputs' (compute) dtype."""
    z_CV = h_CH @ w_VH.t()
    if b_V is not None:
        z_CV = z_CV + b_V
    return z_CV.float()


class _LogprobEntropy(torch.autograd.Function):
    """(logp_N, entropy_N) of ``tokens_N`` from hidden states [N, H] and the projection [V, H], chunked."""

    @staticmethod
    def forward(ctx, hidden_NH, weight_VH, bias_V, tokens_N, chunk: int, dtype: torch.dtype):
        N = hidden_NH.shape[0]
        w_VH = weight_VH.to(dtype)
        b_V = None if bias_V is None else bias_V.to(dtype)
        logp_N = hidden_NH.new_empty(N, dtype=torch.float32)
        ent_N = hidden_NH.new_empty(N, dtype=torch.float32)
        lse_N = hidden_NH.new_empty(N, dtype=torch.float32)
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            z_CV = _chunk_logits(hidden_NH[s:e].to(dtype), w_VH, b_V)
            m_C = z_CV.amax(-1, keepdim=True)
            z_CV.sub_(m_C)  # z - max, in place
            p_CV = z_CV.exp()  # unnormalised
            sum_C = p_CV.sum(-1)
            log_sum_C = sum_C.log()
            # E_p[z - max] as a batched dot product: no third [C, V] buffer
            mean_C = torch.bmm(p_CV.unsqueeze(1), z_CV.unsqueeze(2)).view(-1) / sum_C
            del p_CV
            tok_C = z_CV.gather(1, tokens_N[s:e].unsqueeze(1)).squeeze(1)
            logp_N[s:e] = tok_C - log_sum_C
            ent_N[s:e] = log_sum_C - mean_C
            lse_N[s:e] = m_C.squeeze(1) + log_sum_C
            del z_CV
        ctx.save_for_backward(hidden_NH, weight_VH, bias_V, tokens_N, lse_N, ent_N)
        ctx.chunk, ctx.dtype = chunk, dtype
        return logp_N, ent_N

    @staticmethod
    def backward(ctx, g_logp_N, g_ent_N):
        hidden_NH, weight_VH, bias_V, tokens_N, lse_N, ent_N = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        N = hidden_NH.shape[0]
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        w_VH = weight_VH.to(dtype)
        b_V = None if bias_V is None else bias_V.to(dtype)
        g_logp_N = torch.zeros(N, device=hidden_NH.device) if g_logp_N is None else g_logp_N.float()
        g_ent_N = torch.zeros(N, device=hidden_NH.device) if g_ent_N is None else g_ent_N.float()
        grad_h = torch.empty_like(hidden_NH) if need_h else None
        grad_w = torch.zeros(weight_VH.shape, dtype=torch.float32, device=weight_VH.device) if need_w else None
        grad_b = torch.zeros(weight_VH.shape[0], dtype=torch.float32, device=weight_VH.device) if need_b else None
        for s in range(0, N, chunk):
            e = min(s + chunk, N)
            h_CH = hidden_NH[s:e].to(dtype)
            logp_CV = _chunk_logits(h_CH, w_VH, b_V).sub_(lse_N[s:e].unsqueeze(1))  # log p, in place
            p_CV = logp_CV.exp()
            # dz = g_ent * (-p * (log p + H)) + g_logp * (onehot - p), built in logp's buffer
            dz_CV = logp_CV.add_(ent_N[s:e].unsqueeze(1)).mul_(p_CV).mul_(-g_ent_N[s:e].unsqueeze(1))
            dz_CV.sub_(p_CV.mul_(g_logp_N[s:e].unsqueeze(1)))
            del p_CV
            dz_CV.scatter_add_(1, tokens_N[s:e].unsqueeze(1), g_logp_N[s:e].unsqueeze(1))
            dz_CV = dz_CV.to(dtype)
            if need_h:
                grad_h[s:e] = (dz_CV @ w_VH).to(hidden_NH.dtype)
            if need_w:
                grad_w += (dz_CV.t() @ h_CH).float()
            if need_b:
                grad_b += dz_CV.float().sum(0)
            del dz_CV
        return (grad_h, None if grad_w is None else grad_w.to(weight_VH.dtype),
                None if grad_b is None else grad_b.to(bias_V.dtype), None, None, None)


def logprob_entropy(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor | None,
                    tokens_N: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (log pi(token), entropy) per row of ``hidden_NH`` under the projection ``weight_VH``
    (+ ``bias_V``), ``chunk`` rows at a time (0: all rows in one chunk)."""
    N = hidden_NH.shape[0]
    chunk = N if chunk <= 0 else chunk
    dtype = _compute_dtype(weight_VH, hidden_NH.device.type)
    with torch.autocast(hidden_NH.device.type, enabled=False):
        return _LogprobEntropy.apply(hidden_NH, weight_VH, bias_V, tokens_N, max(chunk, 1), dtype)


def _kl_chunk(h_CH, w_VH, b_V, ref_h_CH, ref_w_VH, ref_b_V, direction: str) -> torch.Tensor:
    logp_CV = F.log_softmax(_chunk_logits(h_CH, w_VH, b_V), -1)
    ref_CV = F.log_softmax(_chunk_logits(ref_h_CH, ref_w_VH, ref_b_V), -1)
    if direction == "pi-ref":
        return (logp_CV.exp() * (logp_CV - ref_CV)).sum(-1)
    return (ref_CV.exp() * (ref_CV - logp_CV)).sum(-1)


def full_kl(hidden_NH: torch.Tensor, weight_VH: torch.Tensor, bias_V: torch.Tensor | None,
            ref: HeadInputs, direction: str = "pi-ref", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Full-vocabulary KL per row between the policy and the reference (``ref``: its detached
    head inputs for the same rows), ``chunk`` rows at a time, each chunk recomputed in backward
    (activation checkpointing: a chunk's [C, V] tensors live only while it is computed)."""
    from torch.utils.checkpoint import checkpoint

    N = hidden_NH.shape[0]
    chunk = max(N if chunk <= 0 else chunk, 1)
    dtype = _compute_dtype(weight_VH, hidden_NH.device.type)
    w_VH = weight_VH.to(dtype)
    b_V = None if bias_V is None else bias_V.to(dtype)
    ref_w_VH = ref.weight_VH.to(dtype)
    ref_b_V = None if ref.bias_V is None else ref.bias_V.to(dtype)
    parts = []
    with torch.autocast(hidden_NH.device.type, enabled=False):
        for s in range(0, N, chunk):
            parts.append(checkpoint(_kl_chunk, hidden_NH[s:s + chunk].to(dtype), w_VH, b_V,
                                    ref.hidden_NH[s:s + chunk].to(dtype), ref_w_VH, ref_b_V, direction,
                                    use_reentrant=False))
    return torch.cat(parts) if parts else hidden_NH.new_zeros(0, dtype=torch.float32)


# --------------------------------------------------------------------------- the model's side


@dataclass
class HeadInputs:
    """What the output projection sees for the response tokens: hidden states [N, H] (N: the
    batch's real response tokens, row-major over [B, T]) and the projection's weight and bias."""

    hidden_NH: torch.Tensor
    weight_VH: torch.Tensor
    bias_V: torch.Tensor | None


def output_projection(model) -> torch.nn.Module:
    """The module that maps the last hidden states to logits (through PEFT wrappers)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output projection (get_output_embeddings() is None)")
    return head


def plain_head_reason(model) -> str | None:
    """Why ``model`` needs the plain (whole-logits) path, or None when the chunked head applies."""
    try:
        head = output_projection(model)
    except ValueError as e:
        return str(e)
    if not isinstance(head, torch.nn.Linear):
        return f"its output projection is a {type(head).__name__}, not a plain Linear"
    config = getattr(model, "config", None)
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value not in (None, 0, 1, 1.0):
            return f"its config's {name}={value} rescales the logits after the projection"
    return None


@contextmanager
def _head_swapped(head: torch.nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Within the block, calling ``head`` runs ``fn(hidden)`` instead of its projection (hooks stay)."""
    own = head.__dict__.get("forward")  # an instance-level forward (accelerate's hooks) comes back after
    head.forward = fn
    try:
        yield
    finally:
        if own is None:
            del head.forward  # back to the class's forward
        else:
            head.forward = own


def response_head(model, batch: dict, head_fn: Callable[[HeadInputs], dict]) -> dict:
    """Run ``model`` on ``batch`` (srft.training.batching.pad_batch's) and return ``head_fn``'s
    dict of per-token [N] tensors scattered to [B, T] (0 at padding).

    ``head_fn`` gets the response tokens' ``HeadInputs`` inside the model's forward, where
    FSDP has the output projection's weight gathered."""
    head = output_projection(model)
    mask_BT = batch["mask_BT"] > 0
    b_N, t_N = mask_BT.nonzero(as_tuple=True)
    pos_N = batch["pos_BT"][b_N, t_N]
    out: dict = {}

    def run_head(hidden_BLH: torch.Tensor) -> torch.Tensor:
        inputs = HeadInputs(hidden_BLH[b_N, pos_N], head.weight, head.bias)
        out.update(head_fn(inputs))
        return hidden_BLH.new_zeros(hidden_BLH.shape[0], hidden_BLH.shape[1], 1)  # the "logits" nobody reads

    with _head_swapped(head, run_head):
        model(input_ids=batch["input_ids_BL"], attention_mask=batch["attention_BL"], use_cache=False)
    if not out:
        raise RuntimeError(f"{type(model).__name__}'s forward never called its output projection")
    shape = mask_BT.shape
    scattered = {}
    for k, v_N in out.items():
        if not isinstance(v_N, torch.Tensor) or v_N.dim() != 1:
            scattered[k] = v_N
            continue
        full_BT = v_N.new_zeros(shape)
        full_BT = full_BT.index_put((b_N, t_N), v_N)  # out of place: gradients flow to v_N
        scattered[k] = full_BT
    return scattered
