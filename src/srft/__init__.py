"""srft: single-stage supervised and reinforcement fine-tuning for reasoning."""

import os as _os

# libgomp's wait policy, chosen at start from how busy the machine is. torch's CPU ops run in
# OpenMP parallel regions; a thread that finishes its share spins (~3 ms with libgomp's default)
# before it sleeps. On a quiet machine the spin is what makes small ops fast; beside one other
# busy process on a 2-core machine it made a step of the built-in model 10-14x slower (the
# spinning thread takes the core from the one it waits for), while OMP_WAIT_POLICY=PASSIVE (sleep
# at once) kept it within 1.4x but cost a quiet machine 1.45x. So: sample /proc/stat for 0.1 s;
# if other processes keep half a core or more busy, PASSIVE, else libgomp's default.
# benchmarks/contention.py measures the three (settings before, passive, auto).
# libgomp reads its environment once, when torch loads it: this module runs first on every entry
# point (``srft``, ``python -m srft``, ``import srft`` before ``import torch``); loaded after torch
# it has no effect. A wait policy or spin count set by the user wins (GOMP_SPINCOUNT=300000 is
# libgomp's default; OMP_WAIT_POLICY=PASSIVE the contended choice). The decision is left in
# SRFT_WAIT_POLICY for the record (and for child processes: a run's workers inherit the policy).
BUSY_CORES_FOR_PASSIVE = 0.5


def _others_busy_cores(seconds: float = 0.1) -> float:
    """Cores that other processes kept busy over ``seconds`` (this one sleeps meanwhile); 0 where
    /proc/stat cannot be read."""
    import time

    def busy_and_total() -> tuple[int, int]:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
        return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # less idle and iowait

    try:
        b0, t0 = busy_and_total()
        time.sleep(seconds)
        b1, t1 = busy_and_total()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (b1 - b0) / max(t1 - t0, 1) * (_os.cpu_count() or 1)


def _choose_wait_policy() -> None:
    if "OMP_WAIT_POLICY" in _os.environ or "GOMP_SPINCOUNT" in _os.environ:
        _os.environ.setdefault("SRFT_WAIT_POLICY", "user")
        return
    busy = _others_busy_cores()
    if busy >= BUSY_CORES_FOR_PASSIVE:
        _os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        _os.environ["SRFT_WAIT_POLICY"] = f"passive (others kept {busy:.1f} cores busy at start)"
    else:
        _os.environ["SRFT_WAIT_POLICY"] = f"default (others kept {busy:.1f} cores busy at start)"


_choose_wait_policy()

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
