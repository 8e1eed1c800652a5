"""The compute dtypes by config name, and running a model's forward under one.

A leaf (torch only): the rollout engine needs these two and nothing else of
``srft.models.loading``, which reaches the built-in base model and through it the
evaluation and the engine again.
"""

from __future__ import annotations

import functools

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_forward(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Run ``model``'s forward (training passes and ``generate`` alike) under autocast to ``dtype``."""
    inner = model.forward
    device_type = next(model.parameters()).device.type

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type, dtype=dtype):
            return inner(*args, **kwargs)

    model.forward = forward
    model.srft_compute_dtype = dtype
