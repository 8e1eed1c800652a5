"""The run directory's layout: file names, durable writes, and readers (no torch import).

Training writes a run directory; ``srft compare`` and ``srft analyze`` read it. They
all take the names from here::

    RUN_DIR/
      config.yaml            the resolved config (what ``--resume`` continues)
      metrics.jsonl          one record per optimiser step
      eval_history.jsonl     one record per evaluation (step 0 = before training)
      eval.json              the summary, written last: its presence means "finished"
      model/                 the final model as a Hugging Face directory
      checkpoints/
        step-000200/         a complete resumable checkpoint (meta.json, trainer.pt, and
                             model_state.pt or shards/: see srft.training.checkpoint)
        step-000300/
        latest               the name of the newest complete checkpoint

Nothing read back from a run directory runs code: JSON and YAML (``yaml.safe_load``) are
data only, and checkpoints are read as tensors and plain data (``srft.training.safe_load``).
The one exception by design is the task plugin (``data.task=file.py:Class``) that a run's
``config.yaml`` names: resuming or analysing the run imports it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from srft.config import ConfigError

# durable writes live in a leaf module (config writes through them too); callers import them from here
from srft.durable import atomic_write_text, fsync_path, fsync_tree  # noqa: F401

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
EVAL_HISTORY = "eval_history.jsonl"
EVAL = "eval.json"
MODEL = "model"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
CKPT_META = "meta.json"  # {"step": ..., "config_hash": ...}: readable without torch
SHARDS = "shards"  # a sharded checkpoint's weights and optimiser state (torch.distributed.checkpoint)
DCP_METADATA = ".metadata"  # written last by torch.distributed.checkpoint: the shards are complete
LEGACY_CHECKPOINT = "checkpoint"  # the single checkpoint directory of earlier versions

_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# --------------------------------------------------------------------------- checkpoints
def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Checkpoint directories to try when resuming, best first: the one ``latest`` names, then
    every other ``step-N`` from the newest, then an earlier version's ``checkpoint/``.

    Only directories that hold the files of a finished save are listed; whether their files
    load is for the loader to find out.
    """
    root = Path(run_dir) / CHECKPOINTS
    steps = []
    if root.is_dir():
        for p in root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and is_complete_checkpoint(p):
                steps.append((int(m.group(1)), p))
    ordered = [p for _, p in sorted(steps, reverse=True)]
    latest = root / LATEST
    if latest.is_file():
        named = root / latest.read_text(errors="replace").strip()  # a name that is no step directory is ignored
        if named in ordered:
            ordered.remove(named)
            ordered.insert(0, named)
    legacy = Path(run_dir) / LEGACY_CHECKPOINT
    if is_complete_checkpoint(legacy):
        ordered.append(legacy)
    return ordered


def is_complete_checkpoint(path: Path) -> bool:
    return (path / "trainer.pt").is_file() and ((path / "model_state.pt").is_file() or is_sharded_checkpoint(path))


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / SHARDS / DCP_METADATA).is_file()


def has_checkpoint(run_dir: Path) -> bool:
    return bool(checkpoint_candidates(run_dir))


def checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint directory was saved at (from its meta.json), None if unknown."""
    try:
        return int(json.loads((path / CKPT_META).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------- readers
class RunDirError(ConfigError):
    """A run directory's file that does not read as srft wrote it; the message names the file and the fix."""


def read_jsonl(path: Path, strict: bool = True) -> list[dict]:
    """The records of a JSON-lines log (metrics, eval history); [] when the file is missing, and a
    last line cut short by a kill is skipped.

    Any other line that is not a JSON object, or whose ``step`` is not a whole number, raises
    ``RunDirError`` naming the file and the line; with ``strict=False`` it is skipped instead
    (``srft analyze`` reads what it can of many runs).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    lines = path.read_text(errors="replace").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines) - 1 or not strict:
                continue  # a partial last line (its write never finished), or any bad line when lenient
            raise RunDirError(_bad_line(path, i, f"not JSON: {e.msg}")) from None
        step = record.get("step", 0) if isinstance(record, dict) else None
        if not isinstance(record, dict):
            why = f"a JSON {type(record).__name__}, not an object"
        elif not isinstance(step, int) or isinstance(step, bool):
            why = f"its step is {step!r}, not a whole number"
        else:
            out.append(record)
            continue
        if strict:
            raise RunDirError(_bad_line(path, i, why))
    return out


def _bad_line(path: Path, i: int, why: str) -> str:
    return (f"{path} line {i + 1} is not a record srft wrote ({why}); remove or fix that line "
            f"(the file is a log: training does not need its records)")


def read_json_object(path: Path) -> dict | None:
    """A JSON file holding one object (``eval.json``, ``run_status.json``), None when it is missing,
    not JSON, or not an object: readers that can go on without it decide what to say."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / EVAL).exists()
