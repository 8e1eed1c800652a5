"""Find and read the runs of a comparison directory.

``srft compare`` writes ``COMPARE_DIR/REGIME/METHOD/seedS/``, one run directory per
(regime, method, seed). A run counts as finished when it has ``eval.json`` (the training
loop writes it last, after ``model/``); the analyses read its ``eval.json`` (base model),
``config.yaml`` (task and data limits), ``metrics.jsonl`` (entropy over training) and ``model/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from srft.config import DataConfig
from srft.rundir import METRICS, read_jsonl


@dataclass
class Run:
    """One finished run (or, for ``srft analyze --models``, one plain model directory)."""

    regime: str
    method: str
    seed: str  # the seed directory's name ("seed0"), "" for a plain model directory
    path: Path  # the run directory
    eval: dict = field(default_factory=dict)  # eval.json
    data: dict = field(default_factory=dict)  # the data section of config.yaml
    model_path: Path | None = None  # the final model; default: path / "model"

    @property
    def model_dir(self) -> Path:
        return self.model_path if self.model_path is not None else self.path / "model"

    @property
    def label(self) -> str:
        return f"{self.method}/{self.seed}" if self.seed else self.method

    @property
    def base_model(self) -> str | None:
        return self.eval.get("base_model")


def discover_runs(compare_dir: Path) -> tuple[list[Run], list[str]]:
    """Finished runs under ``compare_dir`` (``*/*/seed*/eval.json``), sorted, and problems met reading them."""
    runs, problems = [], []
    for eval_file in sorted(Path(compare_dir).glob("*/*/seed*/eval.json")):
        run_dir = eval_file.parent
        regime, method = run_dir.parent.parent.name, run_dir.parent.name
        try:
            ev = json.loads(eval_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"{run_dir}: unreadable eval.json ({e}); run skipped")
            continue
        if not isinstance(ev, dict):
            problems.append(f"{run_dir}: eval.json holds a JSON {type(ev).__name__}, not an object; run skipped")
            continue
        data: dict = {}
        cfg_file = run_dir / "config.yaml"
        if cfg_file.exists():
            try:  # safe_load: data only, no tags that build objects
                data = (yaml.safe_load(cfg_file.read_text()) or {}).get("data") or {}
                if not isinstance(data, dict):
                    raise AttributeError(f"its data section is a {type(data).__name__}")
            except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
                data = {}
                problems.append(f"{run_dir}: unreadable config.yaml ({_one_line(e)}); data settings taken from "
                                f"defaults")
        else:
            problems.append(f"{run_dir}: no config.yaml; data settings taken from defaults")
        runs.append(Run(regime, method, run_dir.name, run_dir, ev, data))
    # Numeric order of seeds (seed2 before seed10) within each method.
    runs.sort(key=lambda r: (r.regime, r.method, _seed_number(r.seed), r.seed))
    return runs, problems


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _seed_number(name: str) -> int:
    digits = name.removeprefix("seed")
    return int(digits) if digits.isdigit() else -1


def data_config(data: dict) -> DataConfig:
    """A DataConfig from a saved config's data section; keys this version does not know are ignored.

    The saved config may come from an older or newer srft, so it is read leniently
    rather than through ``load_config``, which would reject unknown keys.
    """
    known = {f.name for f in dataclasses.fields(DataConfig)}
    return DataConfig(**{k: v for k, v in data.items() if k in known})


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's ``metrics.jsonl`` records (one per step); [] when it is missing. Broken lines are skipped."""
    return read_jsonl(Path(run_dir) / METRICS, strict=False)


def group_by(runs: list[Run], key: str) -> dict[str, list[Run]]:
    """Runs grouped by an attribute (``regime`` or ``method``), in first-seen order."""
    out: dict[str, list[Run]] = {}
    for r in runs:
        out.setdefault(getattr(r, key), []).append(r)
    return out
