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
this module is imported) through the same code path: untested here (no GPU), and refused
under torchrun (one engine per rank), where the in-process backend is the one that works. The
in-process backend itself is device-agnostic and should work on a GPU too (also untested).

Weight sync memory. ``sync_weights`` streams the weights (``iter_export``): each tensor is
gathered (an FSDP2 shard: cast to vLLM's dtype first, then all-gathered), handed to vLLM's
``load_weights``, and let go before the next is gathered; nothing holds the whole model. What
a sync adds is the tensor in flight and the gather's buffers (measured on 2 gloo ranks: ~2.5x
the largest bf16 tensor, against the whole fp32 model before), plus what vLLM's layerwise
reload keeps until its layer is complete (a fused module's parts; on the test model also the
embedding until the end). Under FSDP2 every rank must run each sync: each gather is a
collective. The IPC backend packs tensors into buffers of 1 GiB (vLLM's default).

vLLM version. srft uses vLLM internals whose signatures change between releases; the engine
checks them at start (``check_vllm_api``) and, if they moved, stops with one line naming the
installed and the tested release (``TESTED_VLLM``; GPU install: ``pip install 'srft[vllm]'``).

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

Sampling seeds, sleep mode: see ``VLLMEngine``'s docstring (one random stream per engine
unless the caller gives per-prompt seeds; on a GPU vLLM may sleep between generations).

Process-wide side effects of vLLM that the constructor undoes: vLLM reseeds torch, numpy
and ``random`` while it starts (the RNG states are saved and restored), lowers torch's
thread count to 1 and replaces ``torch.set_num_threads`` by a no-op on its CPU backend
(both restored). What stays: a one-process ``torch.distributed`` group (gloo on CPU) until
``close()``.
"""

from __future__ import annotations

import functools
import gc
import inspect
import logging
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from srft.rollout.errors import EngineError

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

def iter_export(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The weights to send to vLLM, one tensor at a time, under the Hugging Face checkpoint's names.

    Each tensor is gathered whole (an FSDP2 shard: cast first, then all-gathered, so a bf16
    engine costs half the traffic of fp32), cast to ``dtype`` (floating-point tensors only;
    None: as they are), yielded, and not referenced again here: the memory this stream adds
    is the tensor in flight (a LoRA-merged weight: its module's whole base weight and delta,
    briefly both), plus whatever the receiver keeps. A plain tensor already in ``dtype`` is a
    detached view of the live weight (no copy). Under FSDP2 every rank must iterate it to the
    end, in step: each gather is a collective.

    The full ``state_dict()``, not ``named_parameters()``: a tied ``lm_head.weight`` is only
    in the former. A PEFT model (LoRA) is exported merged: each adapted weight is ``W +
    delta`` of its active adapters, computed out of place (in float32), so the training model
    is left untouched. A ``torch.compile``d model is exported under its inner module's names.
    """
    for name, _shape, _dtype, gather in _export_plan(model):
        yield name, gather(dtype)


def export_metadata(model: torch.nn.Module, dtype: torch.dtype | None = None
                    ) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
    """``(name, dtype, shape)`` of what ``iter_export(model, dtype)`` yields, in order, without
    gathering anything (a DTensor's shape is the whole tensor's)."""
    return [(name, dtype if dtype is not None and dt.is_floating_point else dt, shape)
            for name, shape, dt, _ in _export_plan(model)]


def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``iter_export`` as a dict: every tensor at once (views of the live weights in one process;
    whole gathered copies under FSDP2). For tests and small models; the sync streams instead."""
    return dict(iter_export(model))


def _export_plan(model: torch.nn.Module):
    """``(name, shape, dtype, gather)`` per exported tensor, in the order vLLM gets them;
    ``gather(dtype)`` materialises that one tensor. Holds no gathered tensor itself."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the module inside
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        yield from _peft_merged_plan(model)
        return
    for name, t in model.state_dict().items():
        yield name, tuple(t.shape), t.dtype, functools.partial(_gather, t)


def _gather(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` whole (an FSDP2 shard is all-gathered: a collective) and in ``dtype`` (floating only)."""
    t = t.detach()
    cast = dtype is not None and t.is_floating_point() and t.dtype != dtype
    if callable(getattr(t, "full_tensor", None)):  # a DTensor: cast the shard, gather the cast
        return (t.to(dtype) if cast else t).full_tensor()
    return t.to(dtype) if cast else t


def _peft_merged_plan(model):
    from peft.tuners.lora import LoraLayer

    inner = model.get_base_model()
    lora = {name: mod for name, mod in inner.named_modules() if isinstance(mod, LoraLayer)}
    for name, t in inner.state_dict().items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        mod_name, _, leaf = clean.rpartition(".")
        mod = lora.get(mod_name)
        if mod is not None and leaf == "weight":
            yield clean, tuple(t.shape), t.dtype, functools.partial(_merged_weight, mod)
        else:
            yield clean, tuple(t.shape), t.dtype, functools.partial(_gather, t)


def _merged_weight(mod, dtype: torch.dtype | None = None) -> torch.Tensor:
    """One LoRA module's ``W + delta`` whole: its base weight gathered (under FSDP2 a shard; one
    module at a time), each active adapter's delta (a DTensor product under FSDP2) gathered,
    summed in float32 (a bf16 base is not rounded twice), then cast to ``dtype`` (default: the
    base weight's)."""
    with torch.no_grad():
        weight = _gather(mod.get_base_layer().weight)
        out_dtype = dtype or weight.dtype
        merged = weight.float()
        for adapter in mod.active_adapters:
            if adapter in mod.lora_A and not mod.disable_adapters:
                merged = merged + _gather(mod.get_delta_weight(adapter)).float()  # out of place
        return merged.to(out_dtype)


# --------------------------------------------------------------------------- vLLM's API

TESTED_VLLM = "0.32.0"
"""The vLLM release srft's engine was tested with (vllm on a GPU host, vllm-cpu on a CPU one)."""

# The vLLM internals this module builds on, with the parameter names it relies on. vLLM moves
# them between releases (the weight-transfer API was reshaped several times), so the engine
# checks them before starting rather than failing mid-run in a sync.
_API = (
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine.__init__",
     ("self", "config", "vllm_config", "device", "model")),
    ("vllm.distributed.weight_transfer.base", "WeightTransferEngine.parse_update_info", ("self", "update_dict")),
    ("vllm.distributed.weight_transfer.base", "TrainerWeightTransferEngine.__init__",
     ("self", "client", "source", "is_sender")),
    ("vllm.distributed.weight_transfer.base", "TrainerWeightTransferEngine.trainer_init",
     ("init_info", "client", "source")),
    ("vllm.distributed.weight_transfer.base", "ParamMeta", ("name", "dtype", "shape")),
    ("vllm.distributed.weight_transfer.base", "TrainerInitInfo", ("rank",)),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferEngineFactory.register_engine",
     ("name", "module_path_or_cls", "class_name")),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferTrainerFactory.register_engine",
     ("name", "module_path_or_cls", "class_name")),
    ("vllm.distributed.weight_transfer.factory", "WeightTransferTrainerFactory.trainer_init",
     ("init_info", "client", "source")),
    ("vllm.model_executor.model_loader.reload", "initialize_layerwise_reload", ("model",)),
    ("vllm.model_executor.model_loader.reload", "finalize_layerwise_reload", None),
    ("vllm.model_executor.model_loader.mtp_validation", "disable_mtp_completeness_check", None),
    ("vllm", "LLM.init_weight_transfer_engine", ("self", "request")),
    ("vllm", "LLM.start_weight_update", ("self",)),
    ("vllm", "LLM.update_weights", ("self", "request")),
    ("vllm", "LLM.finish_weight_update", ("self", "weight_version")),
    ("vllm", "LLM.sleep", ("self", "level", "mode")),
    ("vllm", "LLM.wake_up", ("self", "tags")),
)


def vllm_version() -> str:
    """The installed vLLM's version (the GPU package ``vllm`` or the CPU build ``vllm-cpu``)."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm", "vllm-cpu"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return getattr(__import__("vllm"), "__version__", "unknown")


def api_mismatch() -> str | None:
    """What differs between the installed vLLM and the internals this module uses, or None."""
    import dataclasses
    import importlib

    for module_name, attr, params in _API:
        where = f"{module_name}.{attr}"
        try:
            obj = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            return f"{where} is missing"
        if params is None:
            continue
        if dataclasses.is_dataclass(obj):
            got = tuple(f.name for f in dataclasses.fields(obj))
        else:
            try:
                got = tuple(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                return f"{where} has no readable signature"
        if got != params:
            return f"{where} takes ({', '.join(got)}), srft passes ({', '.join(params)})"
    return None


def check_vllm_api() -> None:
    """Raise EngineError (one line: installed and tested versions) if vLLM's API has moved."""
    problem = api_mismatch()
    if problem:
        raise EngineError(f"vLLM {vllm_version()} is installed, srft's engine was tested with {TESTED_VLLM} and uses "
                          f"internals that changed ({problem}): pip install 'srft[vllm]' on a GPU host "
                          f"(vllm=={TESTED_VLLM}), scripts/install-vllm-cpu.sh VENV on a CPU host")


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
        """``iter_export`` of the current model, in vLLM's dtype, one tensor at a time (the
        model is set by ``VLLMEngine`` for the length of one sync)."""

        def __init__(self, dtype: torch.dtype | None = None):
            self.model: torch.nn.Module | None = None
            self.dtype = dtype

        def _model(self) -> torch.nn.Module:
            if self.model is None:
                raise RuntimeError("no model to send: call sync_weights(model)")
            return self.model

        def metadata(self) -> list:
            return [ParamMeta(n, dt, shape) for n, dt, shape in export_metadata(self._model(), self.dtype)]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            return iter_export(self._model(), self.dtype)

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
        seed: seed of the engine's own sampling stream (see "Sampling randomness" below); under
            torchrun give each rank its own.
        max_num_seqs: most sequences vLLM decodes at once.
        kv_cache_gib: KV cache size in GiB; default 1 on CPU, vLLM's own sizing from
            ``gpu_memory_utilization`` on GPU.
        gpu_memory_utilization: fraction of the device's memory vLLM may take (on the CPU
            backend: of the host's memory, only checked when ``kv_cache_gib`` is None).
        enforce_eager: no CUDA graphs / torch.compile (fast start, slow decoding); None: eager
            on the CPU, CUDA graphs on a GPU.
        max_num_batched_tokens: most tokens vLLM schedules in one forward pass (it also sizes
            vLLM's memory profiling run); None: ``max_model_len``, at least 4096 on the CPU and
            8192 on a GPU. On the CPU (no chunked prefill) it must be at least ``max_model_len``.
        sleep: sleep mode (a GPU only): vLLM sleeps (level 2: weights and KV cache freed)
            outside ``generate``; see "Sleep mode" below.
        logprobs_mode: "raw_logprobs" (policy at temperature 1) or "processed_logprobs"
            (the distribution sampled from); see the module docstring.
        weight_transfer: "auto" (= "inproc"), "inproc" (this module's backend; needs vLLM in
            this process: VLLM_ENABLE_V1_MULTIPROCESSING=0) or "ipc" (vLLM's CUDA IPC
            backend, one process on a GPU only; untested here).
        generate_threads: torch's thread count while vLLM generates (restored afterwards), or
            None to leave it. 1 is vLLM's own serving setting: a decoding step is many tiny
            ops, and with more OpenMP threads than idle cores their spin-waiting made a step
            up to ~50x slower here (2 cores, shared).
        llm_kwargs: further keyword arguments for ``vllm.LLM``.

    ``generate`` follows the ``RolloutEngine`` protocol; ``generate_with_logprobs`` returns
    the same token ids and, aligned with them, the per-token log-probs.

    Sampling randomness. Without ``seeds`` the requests carry no seed (vLLM samples the whole
    batch at once; a per-request seed sends it down a slower per-request path) and draw from
    the engine's own random stream, seeded once here from ``seed``: vLLM in this process
    samples from torch's global generators, so ``generate`` swaps the engine's stream in and
    the caller's back out, and the trainer's random state is never touched by sampling. With
    ``seeds`` (one per prompt) each prompt's samples come from its own seeded stream, whatever
    else is in the batch.

    Sleep mode. vLLM sleeps at level 2 from the end of construction and after every
    ``generate``, and ``torch.cuda.empty_cache()`` then hands its memory to the trainer. Level
    2 discards the weights, so every ``generate`` first wakes the weights, pushes those of the
    model last given to ``sync_weights`` (the engine keeps that reference), frees the cache,
    then wakes the KV cache: an evaluation's ``generate`` followed by a rollout with no sync
    in between still samples from the right weights. ``sync_weights`` itself only records the
    model. Under torchrun each push is a collective, so every rank must call ``generate`` the
    same number of times (an empty prompt list still pushes).
    """

    def __init__(self, model_dir: str | Path, *, eos_id: int | None = None, dtype: str | None = None,
                 max_model_len: int = 2048, seed: int = 0, max_num_seqs: int = 256,
                 kv_cache_gib: float | None = None, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool | None = None, max_num_batched_tokens: int | None = None,
                 sleep: bool = False, logprobs_mode: str = "raw_logprobs", weight_transfer: str = "auto",
                 generate_threads: int | None = 1, llm_kwargs: dict | None = None):
        import vllm  # noqa: F401  (ImportError here: install with scripts/install-vllm-cpu.sh)

        check_vllm_api()
        from vllm import LLM
        from vllm.platforms import current_platform

        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode must be raw_logprobs or processed_logprobs, got {logprobs_mode!r}")
        weight_transfer = _check_transfer(weight_transfer, llm_kwargs)
        on_cpu = current_platform.is_cpu()
        if sleep and on_cpu:
            raise ValueError("vLLM's CPU backend has no sleep mode: set rollout.vllm_sleep=false (sleep=False)")

        self.model_dir = str(model_dir)
        cfg = _read_config(self.model_dir)
        eos_id = int(eos_id if eos_id is not None else _first(cfg.get("eos_token_id")))
        if dtype is None:
            dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "auto"
        if on_cpu:
            _check_cpu_head_dim(cfg)
        if kv_cache_gib is None and on_cpu:
            kv_cache_gib = _DEFAULT_CPU_KV_CACHE_GIB
        if enforce_eager is None:
            enforce_eager = on_cpu  # CUDA graphs on a GPU: decoding is launch-bound without them
        batched = _batched_tokens(max_num_batched_tokens, max_model_len, on_cpu)

        kwargs: dict[str, Any] = dict(
            skip_tokenizer_init=True,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            max_num_seqs=max_num_seqs,
            gpu_memory_utilization=gpu_memory_utilization,
            enforce_eager=enforce_eager,
            # vLLM's default budget per step is large, and its memory profiler sizes the KV
            # cache after a dummy pass of that many tokens (TRL pins it too)
            max_num_batched_tokens=batched,
            enable_prefix_caching=True,
            logprobs_mode=logprobs_mode,
            # The checkpoint's generation_config.json must not change the sampling defaults.
            generation_config="vllm",
            weight_transfer_config={"backend": BACKEND if weight_transfer == "inproc" else "ipc"},
        )
        if sleep:
            kwargs["enable_sleep_mode"] = True
        if kv_cache_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * (1 << 30))
        if on_cpu:
            # A prompt prefilled in chunks has its sampled token thrown away and its seeded
            # generator rewound, which the CPU generator cannot do ("CPU Generator does not use
            # offset": a crash as soon as a seeded batch's prompts exceed the step's token
            # budget). Without chunked prefill every prompt is prefilled in one step.
            kwargs["enable_chunked_prefill"] = False
        kwargs.update(llm_kwargs or {})

        registered = _register_backend()
        rng = _RNGState.save()
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        logging.getLogger(_QUIET_STARTUP[0]).addFilter(_QUIET_STARTUP[1])
        try:
            llm = LLM(self.model_dir, **kwargs)
            torch.manual_seed(seed)  # the engine's sampling stream (CPU and every GPU)
            stream = _TorchRNG.save()
        finally:
            logging.getLogger(_QUIET_STARTUP[0]).removeFilter(_QUIET_STARTUP[1])
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
            rng.restore()

        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

        logging.getLogger(_QUIET_RELOAD[0]).addFilter(_QUIET_RELOAD[1])
        source = registered["source_cls"](llm.model_config.dtype)
        if weight_transfer == "inproc":
            init_info = registered["trainer_init_info_cls"](rank=0)
        else:  # pragma: no cover - needs a GPU
            from vllm.distributed.weight_transfer.ipc_engine import IPCTrainerInitInfo
            init_info = IPCTrainerInitInfo(rank=0, packed=True)  # buffers of 1 GiB (vLLM's default)
        sender = WeightTransferTrainerFactory.trainer_init(init_info, client=_LLMClient(llm), source=source)
        self._setup(llm, sender, source, eos_id=eos_id, max_model_len=max_model_len, stream=stream, sleep=sleep,
                    on_cuda=current_platform.is_cuda_alike(), logprobs_mode=logprobs_mode,
                    weight_transfer=weight_transfer, generate_threads=generate_threads)

    def _setup(self, llm, sender, source, *, eos_id: int, max_model_len: int, stream: _TorchRNG, sleep: bool,
               on_cuda: bool, logprobs_mode: str = "raw_logprobs", weight_transfer: str = "inproc",
               generate_threads: int | None = 1) -> None:
        """The engine's state around a started ``LLM`` (the tests give fakes of the three parts)."""
        self.llm = llm
        self._sender = sender
        self._source = source
        self.dtype: torch.dtype | None = source.dtype
        self.eos_id = eos_id
        self.max_model_len = max_model_len
        self.logprobs_mode = logprobs_mode
        self.weight_transfer = weight_transfer
        self.generate_threads = generate_threads
        self.sleep = sleep
        self._on_cuda = on_cuda
        self._stream = stream
        self._model: torch.nn.Module | None = None  # sleep mode only: what each wake-up pushes
        self.syncs = 0
        if sleep:
            self._go_to_sleep()  # the trainer gets vLLM's memory until the first generate

    @classmethod
    def _assemble(cls, llm, sender, source, **kwargs) -> VLLMEngine:
        """An engine around parts already made (tests: fakes of vLLM's LLM, without vLLM)."""
        engine = cls.__new__(cls)
        engine._setup(llm, sender, source, **kwargs)
        return engine

    # ---- RolloutEngine

    def generate(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0,
                 seeds: list[int] | None = None) -> list[list[list[int]]]:
        """For each prompt, ``n`` responses as token ids, ending with EOS if finished;
        temperature <= 0 decodes greedily; ``seeds``: one per prompt (else the engine's stream)."""
        ids, _ = self.generate_with_logprobs(prompts, n, max_new_tokens, temperature, top_p, seeds)
        return ids

    def generate_with_logprobs(self, prompts: list[list[int]], n: int, max_new_tokens: int,
                               temperature: float = 1.0, top_p: float = 1.0, seeds: list[int] | None = None
                               ) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
        """Like ``generate``, plus each response token's log-prob (same nesting, same lengths):
        raw (temperature 1, before top-p) or of the sampled distribution, by ``logprobs_mode``."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        longest = max((len(p) for p in prompts), default=0)
        if longest + max_new_tokens > self.max_model_len:
            # vLLM would silently cut the responses at max_model_len.
            raise ValueError(f"a prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds the "
                             f"engine's max_model_len {self.max_model_len}: raise max_model_len")
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: one per prompt, got {len(seeds)} for {len(prompts)} prompts")
        greedy = temperature <= 0
        common = dict(max_tokens=max_new_tokens, stop_token_ids=[self.eos_id], logprobs=0,
                      detokenize=False, skip_special_tokens=False)
        if greedy:
            # vLLM refuses n > 1 with greedy decoding: decode once, copy n times.
            params = [_sampling_params(n=1, temperature=0.0, **common) for _ in prompts]
        else:
            # seed None: the engine's stream, one batched sampling step; a seed: that prompt's
            # own stream (vLLM gives the i-th of n samples seed + i)
            params = [_sampling_params(n=n, temperature=temperature, top_p=top_p, top_k=0,
                                       seed=None if seeds is None else seeds[i], **common)
                      for i in range(len(prompts))]
        outputs = self._run(_token_prompts(prompts), params) if prompts or self.sleep else []
        return _unpack(outputs, n, greedy)

    def _run(self, inputs: list, params: list) -> list:
        """``llm.generate`` on the engine's random stream and thread count; in sleep mode
        bracketed by wake (weights), push, wake (KV cache) ... sleep."""
        self._check_open()
        if self.sleep:
            self._wake_and_push()
        trainer_rng = _TorchRNG.save()
        self._stream.restore()
        threads = torch.get_num_threads()
        if self.generate_threads is not None:
            torch.set_num_threads(self.generate_threads)
        try:
            return self.llm.generate(inputs, params, use_tqdm=False) if inputs else []
        finally:
            torch.set_num_threads(threads)
            self._stream = _TorchRNG.save()
            trainer_rng.restore()
            if self.sleep:
                self._go_to_sleep()

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy ``model``'s current weights into vLLM (in memory) and drop the prefix cache. In
        sleep mode, only remember ``model``: its weights go in at the next ``generate``."""
        self._check_open()
        if self.sleep:
            self._model = model
            return
        self._push_weights(model)
        self.llm.reset_prefix_cache()

    def _push_weights(self, model: torch.nn.Module) -> None:
        """The transfer alone, without resetting the prefix cache (the tests need it apart)."""
        self._check_open()
        self._source.model = model
        try:
            self._sender.send_weights()
        finally:
            self._source.model = None  # the source keeps no reference to the training model
        self.syncs += 1
        self._free_cache()  # the gathered tensors' blocks, back to the trainer and vLLM

    # ---- sleep mode

    def _wake_and_push(self) -> None:
        if self._model is None:
            raise RuntimeError("VLLMEngine in sleep mode has no weights to wake with: call sync_weights(model) first")
        self.llm.wake_up(tags=["weights"])
        self._push_weights(self._model)
        self.llm.wake_up(tags=["kv_cache"])  # only now: the sync had the KV cache's memory
        self.llm.reset_prefix_cache()  # sleep dropped it already; kept for an engine that did not

    def _go_to_sleep(self) -> None:
        self.llm.sleep(level=2)  # weights and KV cache discarded, not offloaded
        self._free_cache()

    def _free_cache(self) -> None:
        if self._on_cuda:
            torch.cuda.empty_cache()

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
        self._model = None
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


def _sampling_params(**kwargs):
    from vllm import SamplingParams

    return SamplingParams(**kwargs)


def _token_prompts(prompts: list[list[int]]) -> list:
    from vllm.inputs import TokensPrompt

    return [TokensPrompt(prompt_token_ids=list(p)) for p in prompts]


def _unpack(outputs, n: int, greedy: bool) -> tuple[list[list[list[int]]], list[list[list[float]]]]:
    """vLLM's outputs as (ids, log-probs), nested per prompt then per sample."""
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


def _check_transfer(weight_transfer: str, llm_kwargs: dict | None) -> str:
    """The transfer backend to use, or a one-line refusal."""
    if weight_transfer == "auto":
        weight_transfer = "inproc"
    if weight_transfer not in ("inproc", "ipc"):
        raise ValueError(f"weight_transfer must be auto, inproc or ipc, got {weight_transfer!r}")
    if weight_transfer == "inproc" and os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") != "0":
        raise ValueError("the in-process weight transfer needs VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                         "(vLLM's worker in this process); unset it or use weight_transfer='ipc' on a GPU")
    torchrun = (llm_kwargs or {}).get("distributed_executor_backend") == "external_launcher"
    if weight_transfer == "ipc" and torchrun:
        # vLLM's IPC trainer sends only from global rank 0 and its external launcher runs the
        # worker in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0), where IPC has nothing to cross
        raise ValueError("weight_transfer='ipc' does not work under torchrun (one engine per rank): use "
                         "weight_transfer='inproc' (the default), which hands each rank's tensors over in memory")
    return weight_transfer


def _batched_tokens(wanted: int | None, max_model_len: int, on_cpu: bool) -> int:
    """vLLM's max_num_batched_tokens: the given value, or the context length with a floor."""
    if not wanted:
        return max(max_model_len, 4096 if on_cpu else 8192)
    if on_cpu and wanted < max_model_len:
        # no chunked prefill on the CPU: a whole prompt must fit in one step
        raise ValueError(f"rollout.vllm_max_num_batched_tokens {wanted} is below the engine's max_model_len "
                         f"{max_model_len}, which vLLM's CPU backend needs (no chunked prefill): raise it or set 0")
    return wanted


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


class _TorchRNG:
    """torch's CPU and CUDA generator states: the stream vLLM samples from in this process."""

    def __init__(self, cpu_state, cuda_states):
        self.cpu_state, self.cuda_states = cpu_state, cuda_states

    @classmethod
    def save(cls) -> _TorchRNG:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(torch.get_rng_state(), cuda)

    def restore(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)
