"""Per-token log-probabilities of a model on a response set.

Every model is scored on the same sequences in the same order, so the result is one flat
vector per model, ``logp_N`` over all N response tokens of the set (sequence by sequence,
token by token), and position i of one model's vector is the same token as position i of
another's. :class:`Layout` says which sequence and kind each position belongs to.

The forward pass is the training loop's (``pad_batch`` + ``response_logprobs``), so a
token's log-probability here is exactly the one the loss saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from srft.analysis.responses import ResponseSet
from srft.training.batching import pad_batch, response_logprobs


@dataclass
class Layout:
    """Where each sequence's tokens sit in a flat per-token vector."""

    offsets: list[int]  # first position of each sequence
    lengths: list[int]  # response tokens of each sequence
    kind: list[str]  # "expert" | "base", per sequence

    @classmethod
    def of(cls, rs: ResponseSet) -> Layout:
        lengths = [len(r) for r in rs.response_ids]
        offsets, pos = [], 0
        for n in lengths:
            offsets.append(pos)
            pos += n
        return cls(offsets, lengths, list(rs.kind))

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    def kind_mask_N(self, kind: str) -> torch.Tensor:
        """Boolean [N]: the positions whose sequence is of ``kind``."""
        mask_N = torch.zeros(self.n_tokens, dtype=torch.bool)
        for off, n, k in zip(self.offsets, self.lengths, self.kind):
            if k == kind:
                mask_N[off:off + n] = True
        return mask_N

    def seq_index_N(self) -> torch.Tensor:
        """Long [N]: the sequence each position belongs to."""
        return torch.repeat_interleave(torch.arange(len(self.lengths)), torch.tensor(self.lengths, dtype=torch.long))


@torch.no_grad()
def score_logprobs(model, rs: ResponseSet, batch_size: int = 16) -> torch.Tensor:
    """log pi of every response token of ``rs`` under ``model``: float32 [N] on the CPU, in ``Layout.of(rs)`` order."""
    device = next(model.parameters()).device
    pad_id = getattr(model.config, "pad_token_id", None)
    pad_id = 0 if pad_id is None else int(pad_id)  # padding is masked out, any id in the vocabulary will do
    seqs = list(zip(rs.prompt_ids, rs.response_ids))
    per_seq: list[torch.Tensor | None] = [None] * len(seqs)
    # Similar lengths share a batch (less padding); results go back to the set's order.
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
    was_training = model.training
    model.eval()  # no dropout: the same model always gives the same numbers
    try:
        for start in range(0, len(order), batch_size):
            ids = order[start:start + batch_size]
            batch = pad_batch([seqs[i] for i in ids], pad_id, device)
            logp_BT, _ = response_logprobs(model, batch)
            logp_BT = logp_BT.float().cpu()
            for b, i in enumerate(ids):
                per_seq[i] = logp_BT[b, :len(seqs[i][1])]
    finally:
        model.train(was_training)
    if not per_seq:
        return torch.zeros(0)
    return torch.cat(per_seq)  # type: ignore[arg-type]


def load_model_for_scoring(path: Path, device: torch.device):
    """A causal LM from a Hugging Face directory, float32, in eval mode; ModelError with a reason if it cannot be."""
    from transformers import AutoModelForCausalLM

    from srft.config import ModelConfig
    from srft.models.loading import ModelError, resolve_model_path

    if not Path(path).exists():
        raise ModelError(f"no model directory {path} (a run writes model/ at its end; was it finished?)")
    path = resolve_model_path(ModelConfig(path=str(path)), task_name="addition", progress=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as e:  # transformers raises many kinds here
        raise ModelError(f"could not load a causal LM from '{path}': {e}") from e
    return model.to(device).eval()


def check_vocab(model, rs: ResponseSet, what: str) -> None:
    """Fail clearly when the set holds token ids the model does not have (another tokenizer)."""
    from srft.models.loading import ModelError

    vocab = model.get_input_embeddings().num_embeddings
    top = max(max(p + r) for p, r in zip(rs.prompt_ids, rs.response_ids))
    if top >= vocab:
        raise ModelError(f"{what}: the response set has token id {top} but the model's vocabulary has {vocab} "
                         f"entries; it was made with another tokenizer")
