"""Resumable checkpoints: model, optimiser, scheduler, RNG states, the data position, method state.

Each save is a new directory ``checkpoints/step-N``: written under a temporary name,
fsynced, renamed into place, and only then named by the ``latest`` pointer (itself
replaced atomically); older ones beyond ``keep`` are removed afterwards. A kill at any
instant therefore leaves at least one complete checkpoint, and resume falls back from
``latest`` to the newest complete one that loads. A model with a non-finite parameter
is never saved.

Two layouts of the weights and the optimiser state (``run.checkpoint_format``):

- ``full`` (one process's default): ``model_state.pt`` and the optimiser state in
  ``trainer.pt``; under torchrun gathered whole to rank 0 (``full_state_dict``) and written
  under the parameters' names;
- ``sharded`` (torchrun's default): ``torch.distributed.checkpoint`` writes every rank's
  shards into ``shards/`` at once, no rank ever holding the whole state; rank 0 writes the
  rest (``trainer.pt``: schedule, RNG, method state, config). The shards must land on one
  file system that every rank sees (the run directory of a multi-node run is shared).

Either layout resumes on any number of ranks, one process included: a full checkpoint is
loaded whole and sharded on load; a sharded one is resharded by the distributed checkpoint
reader to the ranks that load it (whole tensors for one process). The save is atomic in both:
every rank writes into the temporary directory that rank 0 then renames.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from srft.distributed import SINGLE, Dist, local_tensor
from srft.rundir import (
    CHECKPOINTS,
    CKPT_META,
    LATEST,
    SHARDS,
    atomic_write_text,
    checkpoint_candidates,
    fsync_path,
    fsync_tree,
    is_sharded_checkpoint,
    step_dir_name,
)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not belong to this run; the message says what to do."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_parameters(model, dist: Dist = SINGLE) -> list[str]:
    """Names of the parameters with a non-finite value (on any rank: the names are gathered)."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(local_tensor(p)).all()]
    if not dist.enabled:
        return bad
    return sorted({n for names in dist.gather(bad) for n in names})


def _full_states(model, optimizer, dist: Dist) -> tuple[dict, dict]:
    """(weights, optimiser state): a single process's own; under torchrun gathered whole on
    rank 0 (empty elsewhere), the optimiser's keyed by parameter name."""
    if not dist.enabled:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def use_shards(checkpoint_format: str, dist: Dist) -> bool:
    """``run.checkpoint_format``: ``auto`` is sharded under torchrun, full in one process."""
    return checkpoint_format == "sharded" or (checkpoint_format == "auto" and dist.enabled)


def save_checkpoint(run_dir: Path, model, tokenizer, optimizer, scheduler, step: int, extra: dict,
                    config: dict | None = None, keep: int = 2, dist: Dist = SINGLE, sharded: bool = False,
                    sft_optimizer=None) -> Path:
    """Save a complete checkpoint of ``step``; return its directory.

    ``config`` (the run's config as a dict) is stored with its hash, so that a resume can
    tell a changed config. Raises ``CheckpointError`` rather than save non-finite weights.
    Under torchrun every rank calls it (the states are gathered, or each rank writes its
    shards when ``sharded``); rank 0 writes the rest and makes the checkpoint current.
    """
    bad = non_finite_parameters(model, dist)
    if bad:
        raise CheckpointError(f"not saving a checkpoint at step {step}: {len(bad)} parameters are not finite "
                              f"(first: {bad[0]}); the last good checkpoint is kept")
    if sft_optimizer is not None:  # ReLIFT's own SFT optimiser (objective.relift_mode=after), gathered whole
        extra = {**extra, "sft_optimizer": _full_states(model, sft_optimizer, dist)[1]}
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    # (rank 0 decides, every rank follows: the save below is a collective)
    if dist.broadcast(_is_current(root, final) if dist.main else None):
        return final  # this step is saved already (e.g. a stop right after a periodic save)
    tmp = root / f".{final.name}.tmp"
    if dist.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    dist.barrier()
    if sharded:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        weights, optim_state = get_state_dict(model, optimizer)  # this rank's shards, keyed by name
        _dcp(dcp.save, {"model": weights, "optim": optim_state}, str(tmp / SHARDS))
        weights = optim_state = None
    else:
        weights, optim_state = _full_states(model, optimizer, dist)
    if dist.main:
        _write_checkpoint(root, final, tmp, weights, optim_state, tokenizer, scheduler, step, extra, config, keep,
                          by_name=dist.enabled)
    dist.barrier()  # no rank goes on before the checkpoint is complete
    return final


def _is_current(root: Path, final: Path) -> bool:
    return final.exists() and (root / LATEST).is_file() and (root / LATEST).read_text().strip() == final.name


def _write_checkpoint(root: Path, final: Path, tmp: Path, weights: dict | None, optim_state: dict | None, tokenizer,
                      scheduler, step: int, extra: dict, config: dict | None, keep: int, by_name: bool) -> None:
    """Rank 0's part: everything but the shards (``weights`` None: the shards are in ``tmp``), then
    fsync, rename into place, and name it ``latest``."""
    if weights is not None:
        # The exact parameters (adapters included), for resuming; the run's final model/ is the HF export.
        torch.save(weights, tmp / "model_state.pt")
    tokenizer.save_pretrained(tmp / "tokenizer")
    meta = {"step": step, "config_hash": config_hash(config) if config is not None else None}
    # optimizer_by_name: the state keyed by parameter name (torchrun), else by position (one process);
    # no "optimizer" entry: it is in the shards
    trainer = {**meta, "config": config, "scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra}
    if optim_state is not None:
        trainer.update(optimizer=optim_state, optimizer_by_name=by_name)
    torch.save(trainer, tmp / "trainer.pt")
    (tmp / CKPT_META).write_text(json.dumps(meta) + "\n")
    fsync_tree(tmp)
    if final.exists():  # a leftover of an attempt that never became `latest`
        shutil.rmtree(final)
    os.replace(tmp, final)
    fsync_path(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    _prune(root, keep, final)


def _prune(root: Path, keep: int, newest: Path) -> None:
    """Remove all but the ``keep`` newest complete checkpoints (never ``newest``) and stray temporaries."""
    complete = [p for p in checkpoint_candidates(root.parent) if p.parent == root]
    complete.sort(key=lambda p: p.name, reverse=True)
    for p in complete[max(keep, 1):]:
        if p != newest:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(run_dir: Path, model, dist: Dist = SINGLE) -> dict:
    """Load the best usable checkpoint of ``run_dir`` into ``model``; return its trainer state.

    Tries ``latest``, then older complete checkpoints; one whose files do not load or do
    not fit the model is reported on stderr and skipped. The model is only written to once
    a checkpoint's files have loaded and matched its parameters.
    """
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run_dir} to resume from; start a new run instead")
    problems = []
    for path in candidates:
        sharded = is_sharded_checkpoint(path)
        try:
            state = torch.load(path / "trainer.pt", weights_only=False)
            if not isinstance(state, dict) or "step" not in state or ("optimizer" not in state and not sharded):
                raise ValueError("trainer.pt lacks the step or the optimiser state")
            weights = _load_shards(path, model) if sharded else torch.load(path / "model_state.pt", weights_only=True)
            if not sharded:
                _check_fits(model, weights)
        except (Exception, _DcpError) as e:  # a corrupt or foreign file: pickle's, zipfile's, torch's, DCP's errors
            problems.append(f"{path.name}: {_first_line(e)}")
            print(f"warning: checkpoint {path} is unusable ({problems[-1]}); trying an older one", file=sys.stderr)
            continue
        if sharded:  # each rank read its own share (a whole copy in one process)
            from torch.distributed.checkpoint.state_dict import set_model_state_dict

            set_model_state_dict(model, weights)
        elif dist.enabled:  # every rank read the whole weights; each keeps its shard
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        else:
            model.load_state_dict(weights)
        state["path"] = path
        return state
    raise CheckpointError(f"no usable checkpoint in {run_dir} ({'; '.join(problems)}); "
                          f"start a new run, or restore the checkpoint files")


try:  # raised on every rank when any rank's part of a distributed load or save fails (a BaseException)
    from torch.distributed.checkpoint.api import CheckpointException as _DcpError
except ImportError:  # a torch without distributed support: no sharded checkpoints to load
    class _DcpError(Exception):
        pass


def _first_line(e: BaseException) -> str:
    """An error in one line; for a distributed checkpoint's, the first failing rank's own error."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, (inner, _) = sorted(failures.items())[0]
        return f"rank {rank}: {_first_line(inner)}"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _dcp(fn, state: dict, path: str):
    """``dcp.save`` / ``dcp.load`` of ``state`` at ``path``: collective under torchrun; in one process
    without a process group (and without its warning that it assumes so)."""
    single = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(state, checkpoint_id=path, no_dist=single)


def _load_shards(path: Path, model) -> dict:
    """A sharded checkpoint's weights, laid out as this process holds the model (its shards under
    torchrun, whole tensors in one process), in a copy: the model is written only once they loaded."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    saved = dcp.FileSystemReader(str(path / SHARDS)).read_metadata().state_dict_metadata
    own = get_model_state_dict(model)
    shapes = {k[len("model."):]: tuple(getattr(v, "size", ())) for k, v in saved.items() if k.startswith("model.")}
    missing, extra = set(own) - set(shapes), set(shapes) - set(own)
    if missing or extra:
        raise ValueError(f"{SHARDS}/ does not match the model (missing {sorted(missing)[:2]}, "
                         f"unexpected {sorted(extra)[:2]})")
    for k, v in own.items():
        if tuple(v.shape) != shapes[k]:  # a DTensor's shape is the whole tensor's
            raise ValueError(f"{SHARDS}/: {k} has shape {shapes[k]}, the model {tuple(v.shape)}")
    copy = {k: v.detach().clone() for k, v in own.items()}
    _dcp(dcp.load, {"model": copy}, str(path / SHARDS))
    return copy


def _check_fits(model, weights: dict) -> None:
    own = model.state_dict()
    if set(own) != set(weights):
        missing, extra = set(own) - set(weights), set(weights) - set(own)
        raise ValueError(f"model_state.pt does not match the model (missing {sorted(missing)[:2]}, "
                         f"unexpected {sorted(extra)[:2]})")
    for k, v in weights.items():
        if v.shape != own[k].shape:
            raise ValueError(f"model_state.pt: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")


def load_optimizer_state(model, optimizer, state: dict, dist: Dist = SINGLE) -> None:
    """Load a checkpoint's optimiser state, whichever number of ranks wrote it, in either layout."""
    if "optimizer" not in state:  # a sharded checkpoint: read this rank's share from its shards
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        osd = get_optimizer_state_dict(model, optimizer)  # the layout to fill (state made if none yet)
        try:
            _dcp(dcp.load, {"optim": osd}, str(Path(state["path"]) / SHARDS))
        except (Exception, _DcpError) as e:  # its weights loaded from the same files: rare, but not a traceback
            raise CheckpointError(f"the optimiser state of {state['path']} does not load ({_first_line(e)}); "
                                  f"remove that checkpoint directory to resume from an older one") from None
        set_optimizer_state_dict(model, optimizer, osd)
        return
    osd = state["optimizer"]
    names = [n for n, _ in model.named_parameters()]
    by_name = bool(state.get("optimizer_by_name"))
    if not dist.enabled:
        optimizer.load_state_dict(_by_position(osd, names) if by_name else osd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, osd if by_name else _by_name(osd, names),
                             options=StateDictOptions(full_state_dict=True))


def _by_name(osd: dict, names: list[str]) -> dict:
    """An optimiser state keyed by position (``optimizer.state_dict()``) keyed by parameter name."""
    return {"state": {names[i]: v for i, v in osd["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]}


def _by_position(osd: dict, names: list[str]) -> dict:
    pos = {n: i for i, n in enumerate(names)}
    return {"state": {pos[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [pos[n] for n in g["params"]]} for g in osd["param_groups"]]}
