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

Loading runs no code that a file might carry (run directories travel between machines and
people): every file is read as tensors and plain data (``srft.training.safe_load``), and a
file that is well-formed but holds the wrong keys, types or shapes is skipped like a corrupt
one, for the next older checkpoint. ``trainer.pt`` holds tensors and plain Python data only
(the numpy RNG state as a list), so that ``torch.load(weights_only=True)`` reads all of it.
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
from srft.training.safe_load import (
    CONVERT_HINT,
    UnsafeFileError,
    check_shard_entries,
    load_torch_file,
    read_shard_metadata,
    shard_planner,
    shard_reader,
)


class CheckpointError(RuntimeError):
    """No usable checkpoint, or one that does not belong to this run; the message says what to do."""


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_state() -> dict:
    """Every generator's state as tensors and plain data (numpy's array as a list): loadable with
    ``weights_only=True``, no numpy type needed."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved) -> tuple:
    """``np.random.set_state``'s tuple from a saved state: a list (this version) or numpy's own tuple (earlier)."""
    name, keys, pos, has_gauss, gauss = saved
    return str(name), np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_python_state(state["python"]))
    np.random.set_state(_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_state(saved) -> tuple:
    """``random.setstate``'s nested tuple (a list after a JSON round trip or a conversion)."""
    version, internal, gauss = saved
    return int(version), tuple(int(x) for x in internal), gauss


def plain_data(obj, where: str = "state"):
    """``obj`` as tensors and plain Python data (numpy numbers and arrays made Python's, tuples kept),
    so that ``weights_only=True`` loads it; anything else raises ``TypeError`` naming where it is."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {plain_data(k, where): plain_data(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [plain_data(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else items
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}, not plain data")


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
    trainer = {**meta, "config": plain_data(config, "config"), "scheduler": plain_data(scheduler.state_dict()),
               "rng": rng_state(), "extra": plain_data(extra, "extra")}
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

    Tries ``latest``, then older complete checkpoints; one whose files do not load (corrupt,
    or asking to run code), hold the wrong keys or types, or do not fit the model is reported
    on stderr and skipped. The model is only written to once a checkpoint's files have loaded
    and matched its parameters.
    """
    candidates = checkpoint_candidates(run_dir)
    if not candidates:
        raise CheckpointError(f"no checkpoint in {run_dir} to resume from; start a new run instead")
    problems, unsafe = [], []
    for path in candidates:
        sharded = is_sharded_checkpoint(path)
        try:
            state = load_torch_file(path / "trainer.pt")
            check_trainer_state(state, sharded, model)
            weights = _load_shards(path, model) if sharded else load_torch_file(path / "model_state.pt")
            if not sharded:
                _check_fits(model, weights)
        except (Exception, _DcpError) as e:  # a corrupt or foreign file: pickle's, zipfile's, torch's, DCP's errors
            unsafe += [path] if _is_unsafe(e) else []
            problems.append(f"{path.name}: {getattr(e, 'core', None) or _first_line(e)}")  # (the hint: once, below)
            print(f"warning: checkpoint {path} is unusable ({path.name}: {_first_line(e)}); trying an older one",
                  file=sys.stderr)
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
    if unsafe:  # the messages above name the files; one command converts them all (shards: no)
        raise CheckpointError(f"no usable checkpoint in {run_dir}: {unsafe[0].name}'s files ask to run code, "
                              f"so they are not loaded ({'; '.join(problems)}); if you trust where the run comes "
                              f"from, convert its checkpoints with: {CONVERT_HINT} {run_dir}")
    raise CheckpointError(f"no usable checkpoint in {run_dir} ({'; '.join(problems)}); "
                          f"start a new run, or restore the checkpoint files")


def _is_unsafe(e: BaseException) -> bool:
    """A torch.save file refused as unsafe: ``srft convert-checkpoint`` rewrites it, if trusted."""
    return isinstance(e, UnsafeFileError) and e.convertible


def check_trainer_state(state, sharded: bool, model) -> None:
    """Raise ``ValueError`` (naming the entry) unless ``trainer.pt``'s state has the keys and types that
    resuming uses: a well-formed file with the wrong content is skipped like a corrupt one."""
    if not isinstance(state, dict):
        raise ValueError(f"trainer.pt holds a {type(state).__name__}, not the trainer state")
    missing = [k for k in ("step", "scheduler", "rng", "extra") if k not in state]
    if missing or ("optimizer" not in state and not sharded):
        raise ValueError(f"trainer.pt lacks {', '.join(missing or ['the optimiser state'])}")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"trainer.pt: step is {step!r}, not a step number")
    for key, kind in (("scheduler", dict), ("rng", dict), ("extra", dict), ("config", (dict, type(None)))):
        if not isinstance(state.get(key), kind):
            raise ValueError(f"trainer.pt: {key} is a {type(state.get(key)).__name__}")
    _check_rng(state["rng"])
    _check_scheduler(state["scheduler"])
    _check_methods_state(state["extra"])
    by_name = bool(state.get("optimizer_by_name"))
    if "optimizer" in state:
        _check_optimizer(state["optimizer"], model, by_name, "optimizer")
    if "sft_optimizer" in state["extra"]:
        _check_optimizer(state["extra"]["sft_optimizer"], model, by_name, "extra.sft_optimizer")


def _check_rng(rng: dict) -> None:
    """Each generator's state set on a scratch generator: a wrong one fails here, not on resume."""
    try:
        torch.Generator().set_state(rng["torch"])
        random.Random().setstate(_python_state(rng["python"]))
        np.random.RandomState().set_state(_numpy_state(rng["numpy"]))
        if not isinstance(rng.get("cuda", []), (list, tuple)):
            raise TypeError("cuda is not a list")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"trainer.pt: the RNG state is not one ({_first_line(e)})") from None


def _check_scheduler(sd: dict) -> None:
    """A learning-rate scheduler's state: its numbers are numbers, and no entry shadows one of the
    scheduler's methods (``load_state_dict`` puts every entry in the scheduler's ``__dict__``)."""
    from torch.optim.lr_scheduler import LambdaLR

    lrs, last, lambdas = (sd.get(k, []) for k in ("base_lrs", "_last_lr", "lr_lambdas"))
    lists = all(isinstance(x, list) for x in (lrs, last, lambdas))
    numbers = lists and all(isinstance(x, (int, float)) for x in [*lrs, *last])
    shadowing = [k for k in sd if not isinstance(k, str) or callable(getattr(LambdaLR, k, None))
                 or isinstance(getattr(LambdaLR, k, None), property)]
    if not numbers or not isinstance(sd.get("last_epoch", 0), int) or shadowing:
        raise ValueError(f"trainer.pt: scheduler is not a learning-rate scheduler's state"
                         f"{f' (entry {shadowing[0]!r})' if shadowing else ''}")


def _check_methods_state(extra: dict) -> None:
    """The step methods' state loaded into throwaway instances (their ``load_state_dict`` only sets
    what it reads), so that a wrong one is found here and skipped, not met on resume."""
    from srft.training import methods

    kinds = [c for c in vars(methods).values()
             if isinstance(c, type) and isinstance(getattr(c, "name", None), str) and hasattr(c, "load_state_dict")]
    try:
        methods.load_methods_state([object.__new__(c) for c in kinds], extra)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ValueError(f"trainer.pt: the methods' state (extra) does not load ({_first_line(e)})") from None


def _check_optimizer(osd, model, by_name: bool, key: str) -> None:
    """An optimiser state of this model: its parameters (by position or by name) exist, and each
    per-parameter tensor has the parameter's shape."""
    if not (isinstance(osd, dict) and isinstance(osd.get("state"), dict) and isinstance(osd.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in osd["param_groups"])):
        raise ValueError(f"trainer.pt: {key} is not an optimiser state (a dict of state and param_groups)")
    params = list(model.named_parameters())
    shapes = ({n: tuple(p.shape) for n, p in params} if by_name else
              {i: tuple(p.shape) for i, (_, p) in enumerate(params)})
    listed = [p for g in osd["param_groups"] for p in g["params"]]
    unknown = [p for p in [*listed, *osd["state"]] if p not in shapes]
    if unknown:
        raise ValueError(f"trainer.pt: {key} is for other parameters than the model's (e.g. {unknown[0]!r})")
    for p, entry in osd["state"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"trainer.pt: {key} state of {p!r} is a {type(entry).__name__}")
        for name, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0 and tuple(v.shape) != shapes[p]:
                raise ValueError(f"trainer.pt: {key} {name} of {p!r} has shape {tuple(v.shape)}, "
                                 f"the parameter {shapes[p]}")


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


def _dcp_load(state: dict, path: Path) -> None:
    """``dcp.load`` with an index reader and a planner that run no code the files carry."""
    import torch.distributed.checkpoint as dcp

    single = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=shard_reader(path), planner=shard_planner(), no_dist=single)


def _load_shards(path: Path, model) -> dict:
    """A sharded checkpoint's weights, laid out as this process holds the model (its shards under
    torchrun, whole tensors in one process), in a copy: the model is written only once they loaded."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    metadata = read_shard_metadata(path / SHARDS)
    check_shard_entries(path / SHARDS, metadata)  # the optimiser's too: resuming reads them later
    saved = metadata.state_dict_metadata
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
    _dcp_load({"model": copy}, path / SHARDS)
    return copy


def _check_fits(model, weights) -> None:
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError("model_state.pt does not hold a dict of tensors (a model's state)")
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
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        osd = get_optimizer_state_dict(model, optimizer)  # the layout to fill (state made if none yet)
        try:
            _dcp_load({"optim": osd}, Path(state["path"]) / SHARDS)
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


# --------------------------------------------------------------------------- conversion of trusted checkpoints
def convert_checkpoints(target: Path, say=print) -> int:
    """``srft convert-checkpoint``: rewrite the checkpoint files of ``target`` (a run directory or one
    checkpoint directory) that do not load safely as tensors and plain data; return how many it rewrote.

    It unpickles those files in full, which runs whatever code they carry: only for checkpoints
    whose origin you trust. Each original is kept beside the new file as ``NAME.unsafe``
    (never read by srft). A sharded checkpoint's index cannot be rewritten: it is reported.
    """
    target = Path(target)
    dirs = [target] if (target / "trainer.pt").is_file() else checkpoint_candidates(target)
    if not dirs:
        raise CheckpointError(f"{target} holds no checkpoint; give a run directory or one of its "
                              f"{CHECKPOINTS}/step-N directories")
    converted = 0
    for d in dirs:
        for name in ("trainer.pt", "model_state.pt"):
            if (d / name).is_file() and _convert_file(d / name, say):
                converted += 1
        if is_sharded_checkpoint(d):
            try:
                check_shard_entries(d / SHARDS, read_shard_metadata(d / SHARDS))
            except (UnsafeFileError, ValueError, OSError) as e:
                say(f"{d / SHARDS}: not converted ({_first_line(e)}); remove that checkpoint directory to "
                    f"resume from an older one")
    say(f"{converted} file(s) converted" if converted else f"nothing to convert: every checkpoint file in {target} "
        f"loads as tensors and plain data")
    return converted


def _convert_file(path: Path, say) -> bool:
    """Rewrite ``path`` as plain data if it does not load safely; False when it already does."""
    try:
        load_torch_file(path)
        return False
    except UnsafeFileError:
        pass
    except Exception as e:  # corrupt: nothing to convert, and resume skips it anyway
        say(f"{path}: not converted, it does not load ({_first_line(e)})")
        return False
    try:
        obj = plain_data(torch.load(path, weights_only=False), path.name)  # trusted: the caller said so
    except Exception as e:
        raise CheckpointError(f"{path} cannot be converted ({_first_line(e)}); it holds more than tensors and "
                              f"plain data, so srft cannot resume from it") from None
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    load_torch_file(tmp)  # what it wrote loads the safe way
    os.replace(path, path.with_name(path.name + ".unsafe"))
    os.replace(tmp, path)
    say(f"converted {path} (the original is kept as {path.name}.unsafe)")
    return True
