"""Rollout engines: turn prompt token ids into sampled responses.

The training loop and the evaluation talk to an engine only through
:class:`RolloutEngine`, so that a faster engine (vLLM) can replace the Hugging Face
one without touching them. An engine that keeps its own copy of the weights gets them
through ``sync_weights`` after every optimiser step.
"""

from __future__ import annotations

from typing import Protocol

import torch


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0) -> list[list[list[int]]]:
        """For each prompt, ``n`` sampled responses as token ids (ending with EOS if finished);
        temperature <= 0 decodes greedily."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from the current weights of ``model``."""
        ...


class HFEngine:
    """Batched sampling with ``model.generate`` (KV cache), on the training model itself."""

    def __init__(self, model: torch.nn.Module, pad_id: int, eos_id: int, max_batch: int = 256):
        self.model = model
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.max_batch = max_batch

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model  # same object: nothing to copy

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0) -> list[list[list[int]]]:
        flat = [p for p in prompts for _ in range(n)]
        out: list[list[int]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(flat), self.max_batch):
                out.extend(self._generate_batch(flat[start:start + self.max_batch], max_new_tokens,
                                                temperature, top_p))
        finally:
            self.model.train(was_training)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                        top_p: float) -> list[list[int]]:
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        # Left padding so that every prompt ends where generation starts.
        ids_BL = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn_BL = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids_BL[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            attn_BL[i, width - len(p):] = 1
        # temperature <= 0 means greedy decoding
        sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
            else dict(do_sample=False)
        # remove_invalid_values: NaN/inf logits (a diverged step) must not crash the sampler;
        # the divergence guard stops such a run on its loss.
        seqs = self.model.generate(
            input_ids=ids_BL.to(device), attention_mask=attn_BL.to(device), max_new_tokens=max_new_tokens,
            pad_token_id=self.pad_id, eos_token_id=self.eos_id, remove_invalid_values=True, **sampling,
        )
        responses = []
        for row in seqs[:, width:].tolist():
            if self.eos_id in row:
                row = row[:row.index(self.eos_id) + 1]  # keep the EOS: the policy learns to stop
            responses.append(row)
        return responses
