"""srft: single-stage supervised and reinforcement fine-tuning for reasoning."""

import os as _os

# OpenMP threads that wait at the end of a parallel region sleep at once instead of spinning
# (OMP_WAIT_POLICY=PASSIVE). torch's CPU ops run in OpenMP parallel regions; with libgomp's
# default (spin ~3 ms before sleeping) and one other busy process on a 2-core machine, a step of
# the built-in model ran 10-14x slower, the spinning thread taking the core from the one it
# waits for. libgomp reads its environment once, when torch loads it: this module runs first on
# every entry point (``srft``, ``python -m srft``, ``import srft`` before ``import torch``), so
# the default is set here, before any srft module imports torch. Loaded after torch, it has no
# effect on libgomp. A wait policy or spin count set by the user wins (GOMP_SPINCOUNT=300000
# restores libgomp's default). benchmarks/contention.py measures the effect.
if "OMP_WAIT_POLICY" not in _os.environ and "GOMP_SPINCOUNT" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"

# The Python API (srft.api), loaded on first use: ``import srft`` stays cheap and loads no torch,
# so the wait policy above is still set before torch loads.
_API = ("load_config", "train", "evaluate")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from srft import api

        return getattr(api, name)
    raise AttributeError(f"module 'srft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
