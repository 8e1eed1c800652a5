"""Experiment tracking (``run.report_to``): each record of a run also goes to TensorBoard, Weights & Biases
or Trackio.

RUN_DIR's own files (metrics.jsonl, eval_history.jsonl) remain the run's record; a tracker gets the numbers
of each training record as ``train/KEY`` and of each evaluation as ``eval/SPLIT/METRIC``. The step of both
is the number of updates done, as in TRL and verl: the evaluation before training is at 0, the record of
metrics.jsonl's step 0 (the first update) at 1. Each backend's package is imported only when the run asks
for it; a missing one fails with a ``ConfigError`` naming the pip install line, before the run does any work
(``check_trackers``).

    tracker = make_tracker(cfg, run_dir, main=dist.main)   # one per run; a no-op on ranks other than 0
    tracker.log(record, step + 1)                          # after each training record (step: its index)
    tracker.log_eval(ev, done)                             # after each evaluation, at the updates done
    tracker.close()                                        # at the end (safe to call twice)

A backend that fails while logging is reported once on stderr and dropped: the run goes on, and its
numbers stay in RUN_DIR's files.
"""

from __future__ import annotations

import atexit
import numbers
import sys
from pathlib import Path
from typing import Any

from srft.config import Config, ConfigError

# backend -> (module to import, pip package)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}


def _import(name: str):
    """The backend's module, or a ConfigError with the pip install line."""
    module, package = PACKAGES[name]
    try:
        if name == "tensorboard":
            import tensorboard  # noqa: F401  (torch's writer needs the package)
            from torch.utils.tensorboard import SummaryWriter
            return SummaryWriter
        return __import__(module)
    except ImportError as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"run.report_to={name} needs the {package} package, which does not import here "
                          f"({reason}): pip install {package} (or pip install -e '.[{name}]' in srft's checkout)") from e


def _names(cfg: Config) -> list[str]:
    return list(dict.fromkeys(cfg.run.report_to))  # in order, without repeats


def check_trackers(cfg: Config) -> None:
    """Raise ConfigError if a backend of ``run.report_to`` does not import (call it before any work)."""
    for name in _names(cfg):
        _import(name)


def scalars(record: dict, prefix: str, _top: bool = True) -> dict[str, float | int]:
    """The numbers of ``record`` as ``{prefix/key: value}``; nested dicts give ``prefix/key/subkey``.
    Booleans become 0/1; None, strings, lists and the record's own ``step`` are left out."""
    out: dict[str, float | int] = {}
    for key, value in record.items():
        if key == "step" and _top:
            continue
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(scalars(value, name, _top=False))
        elif isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, numbers.Integral):
            out[name] = int(value)
        elif isinstance(value, numbers.Real):
            out[name] = float(value)
    return out


class _TensorBoard:
    """Event files in RUN_DIR/tensorboard. The writer opens at the first record, with ``purge_step`` at
    that record's step: a resumed run's curves replace what the interrupted run logged after its checkpoint
    (its first record is that of the first update after the checkpoint)."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.writer_class = _import("tensorboard")
        self.log_dir = Path(run_dir) / "tensorboard"
        self.writer = None

    def log(self, values: dict, step: int) -> None:
        if self.writer is None:
            self.writer = self.writer_class(log_dir=str(self.log_dir), purge_step=step)
        for key, value in values.items():
            self.writer.add_scalar(key, value, global_step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes


class _Wandb:
    """A Weights & Biases run named after RUN_DIR, its files in RUN_DIR/wandb. wandb's own settings apply
    (WANDB_MODE=offline, WANDB_API_KEY, WANDB_ENTITY, ...)."""

    def __init__(self, cfg: Config, run_dir: Path):
        wandb = _import("wandb")
        try:
            self.run = wandb.init(project=cfg.run.tracking_project, name=Path(run_dir).name, dir=str(run_dir),
                                  config=cfg.to_dict())
        except Exception as e:  # no API key, no network, ...: one line, before the first step
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConfigError(f"run.report_to=wandb: wandb.init failed ({type(e).__name__}: {reason}); log in with "
                              f"'wandb login', or log offline with WANDB_MODE=offline") from e

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    """A Trackio run named after RUN_DIR, in trackio's local store (TRACKIO_DIR, by default
    ~/.cache/huggingface/trackio; ``trackio show`` opens its dashboard)."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.trackio = _import("trackio")
        try:
            self.run = self.trackio.init(project=cfg.run.tracking_project, name=Path(run_dir).name,
                                         config=cfg.to_dict())
        except Exception as e:
            reason = " ".join(str(e).split()) or type(e).__name__
            raise ConfigError(f"run.report_to=trackio: trackio.init failed ({type(e).__name__}: {reason})") from e

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        try:
            self.trackio.finish()  # our run, unless another trackio.init has finished it already
        except RuntimeError:
            pass


BACKENDS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "trackio": _Trackio}


class Tracker:
    """Fans each record out to the configured backends; with none, every call does nothing."""

    def __init__(self, backends: dict[str, Any] | None = None):
        self.backends = dict(backends or {})
        if self.backends:
            atexit.register(self.close)  # an exception that skips the caller's close still flushes

    def log(self, record: dict, step: int) -> None:
        """A training record: its numbers as ``train/KEY``, at ``step`` = updates done (its index + 1)."""
        self._emit(scalars(record, "train"), step)

    def log_eval(self, record: dict, step: int) -> None:
        """An evaluation ``{split: {metric: value}}`` (top-level numbers too) as ``eval/SPLIT/METRIC``, at
        ``step`` = updates done before it."""
        self._emit(scalars(record, "eval"), step)

    def _emit(self, values: dict, step: int) -> None:
        if not values:
            return
        for name, backend in list(self.backends.items()):
            try:
                backend.log(values, int(step))
            except Exception as e:  # a tracker's failure must not end a run; the run's files have it all
                print(f"warning: run.report_to={name} failed to log step {step} ({type(e).__name__}: {e}); "
                      f"it gets no more records in this run", file=sys.stderr)
                self.backends.pop(name)
                self._close_one(name, backend)

    @staticmethod
    def _close_one(name: str, backend: Any) -> None:
        try:
            backend.close()
        except Exception as e:
            print(f"warning: run.report_to={name}: closing failed ({type(e).__name__}: {e})", file=sys.stderr)

    def close(self) -> None:
        backends, self.backends = self.backends, {}
        for name, backend in backends.items():
            self._close_one(name, backend)
        atexit.unregister(self.close)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_tracker(cfg: Config, run_dir: Path, main: bool = True) -> Tracker:
    """The tracker of ``cfg.run.report_to`` for the run in ``run_dir`` (``main=False``, ranks other than 0:
    one that does nothing). Every backend is imported before any starts; ConfigError names what is missing."""
    names = _names(cfg) if main else []
    for name in names:
        _import(name)
    backends: dict[str, Any] = {}
    try:
        for name in names:
            backends[name] = BACKENDS[name](cfg, Path(run_dir))
    except BaseException:
        for name, backend in backends.items():
            Tracker._close_one(name, backend)
        raise
    return Tracker(backends)
