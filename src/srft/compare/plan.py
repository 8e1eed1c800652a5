"""The runs of a comparison: which (regime, method, seed) runs, with which overrides, where.

Everything here is checked before the first run starts: the selection (``--methods``,
``--regimes``), every run's config, and that run directories left by an earlier invocation
were made with the same config (so a report never mixes budgets). The selection is kept in
``OUT/plan.json`` so that ``srft compare --report-only OUT`` knows what was asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from srft.compare.suite import Suite, SuiteError, suite_from_dict
from srft.config import Config, ConfigError, load_config
from srft.tasks import TASKS, base_model_task

PLAN_FILE = "plan.json"
# Keys a run may change between invocations without changing what it computes.
VOLATILE_KEYS = {("model", "threads"), ("run", "progress"), ("run", "out_dir")}


@dataclass
class RunSpec:
    regime: str
    method: str
    seed: int
    run_dir: Path
    preset: str = ""
    overrides: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.regime}/{self.method}/seed{self.seed}"


@dataclass
class Selection:
    """What one invocation asked for out of a suite."""
    seeds: list[int]
    methods: list[str]
    regimes: list[str]
    extra: list[str] = field(default_factory=list)  # the command line's overrides for every run


def select(suite: Suite, seeds: list[int] | None = None, methods: list[str] | None = None,
           regimes: list[str] | None = None, extra: list[str] | None = None) -> Selection:
    """The selection, in suite order; unknown method or regime names fail with the valid ones."""
    valid_methods = [m.name for m in suite.methods]
    valid_regimes = list(suite.regimes)
    for kind, asked, valid in (("method", methods, valid_methods), ("regime", regimes, valid_regimes)):
        unknown = [n for n in asked or [] if n not in valid]
        if unknown:
            raise SuiteError(f"unknown {kind} {', '.join(repr(n) for n in unknown)} for suite '{suite.name}'; "
                             f"valid: {', '.join(valid)}")
    for o in extra or []:
        if "=" not in o:
            raise SuiteError(f"override '{o}' is not of the form section.key=value")
    return Selection(
        seeds=list(dict.fromkeys(seeds)) if seeds else list(suite.seeds),
        methods=[m for m in valid_methods if not methods or m in methods],
        regimes=[r for r in valid_regimes if not regimes or r in regimes],
        extra=list(extra or []),
    )


def plan_runs(suite: Suite, sel: Selection, out_dir: Path) -> list[RunSpec]:
    """Every run, in the order regime -> method -> seed."""
    runs = []
    for regime in sel.regimes:
        for name in sel.methods:
            method = suite.method(name)
            for seed in sel.seeds:
                run_dir = Path(out_dir) / regime / name / f"seed{seed}"
                overrides = [*suite.common, *sel.extra, *suite.regimes[regime], *method.overrides,
                             f"run.seed={seed}", f"run.method={name}", f"run.out_dir={run_dir}"]
                runs.append(RunSpec(regime, name, seed, run_dir, method.preset, overrides))
    return runs


def validate_configs(runs: list[RunSpec]) -> dict[str, Config]:
    """Each run's resolved config by run key; a bad preset or override fails naming the run."""
    configs = {}
    for run in runs:
        try:
            configs[run.key] = load_config(run.preset, None, run.overrides)
        except ConfigError as e:
            raise ConfigError(f"run {run.key} (preset '{run.preset}'): {e}") from e
    return configs


def config_differences(a: dict, b: dict) -> list[str]:
    """``section.key`` of every value that differs between two config dicts, volatile keys aside."""
    diffs = []
    for sect in sorted(set(a) | set(b)):
        sa, sb = a.get(sect) or {}, b.get(sect) or {}
        for key in sorted(set(sa) | set(sb)):
            if (sect, key) not in VOLATILE_KEYS and sa.get(key) != sb.get(key):
                diffs.append(f"{sect}.{key} ({sa.get(key)!r} there, {sb.get(key)!r} now)")
    return diffs


def check_existing(runs: list[RunSpec], configs: dict[str, Config]) -> None:
    """Fail if a run directory from an earlier invocation holds a run with another config."""
    problems = []
    for run in runs:
        saved = run.run_dir / "config.yaml"
        if not saved.exists():
            continue
        try:
            old = load_config(None, str(saved)).to_dict()
        except ConfigError as e:
            problems.append(f"{run.key}: its config.yaml no longer loads ({e})")
            continue
        diffs = config_differences(old, configs[run.key].to_dict())
        if diffs:
            problems.append(f"{run.key}: {'; '.join(diffs[:4])}{' ...' if len(diffs) > 4 else ''}")
    if problems:
        more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise SuiteError("run directories from an earlier invocation were made with another config, so their "
                         "results would not be comparable:\n  " + "\n  ".join(problems[:5]) + more +
                         "\nuse another --out, or delete those run directories")


def base_model_recipes(runs: list[RunSpec], configs: dict[str, Config]) -> list[tuple[str, str, int, int]]:
    """The distinct built-in base models (cache dir, task, seed, steps) the runs need, in run order."""
    recipes = []
    for run in runs:
        m = configs[run.key].model
        if m.path is None:
            recipe = (m.base_cache_dir, base_model_task(configs[run.key].data.task, m.base_task), m.base_seed, m.base_steps)
            if recipe not in recipes:
                recipes.append(recipe)
    return recipes


def task_plugins(runs: list[RunSpec], configs: dict[str, Config]) -> dict[str, list[str]]:
    """The task plugins (``file.py:Class``, ``module:Class``) the runs' configs name, as what will be
    imported (a file's absolute path, or the module), with the runs that import each."""
    found: dict[str, list[str]] = {}
    for run in runs:
        spec = configs[run.key].data.task  # (model.base_task is always a built-in one)
        if spec in TASKS or ":" not in spec:
            continue
        target, _, attr = spec.rpartition(":")
        is_file = target.endswith(".py") or "/" in target or "\\" in target
        what = (f"file {Path(target).expanduser().resolve()} (class {attr})" if is_file
                else f"module {target} (class {attr})")
        found.setdefault(what, []).append(run.key)
    return found


# --------------------------------------------------------------------------- plan.json


def save_plan(out_dir: Path, suite: Suite, sel: Selection) -> Selection:
    """Record the selection in ``OUT/plan.json``, merged with an earlier invocation's; return the merge.

    Invocations that ask for parts of a suite (``--methods a`` then ``--methods b``) add up,
    so the report covers both.
    """
    path = Path(out_dir) / PLAN_FILE
    merged = sel
    if path.exists():
        old = json.loads(path.read_text())
        if old["suite"]["name"] != suite.name:
            raise SuiteError(f"{out_dir} holds a comparison of suite '{old['suite']['name']}', not '{suite.name}'; "
                             f"use another --out")
        merged = Selection(
            seeds=sorted(set(old["seeds"]) | set(sel.seeds)),
            methods=[m.name for m in suite.methods if m.name in sel.methods or m.name in old["methods"]],
            regimes=[r for r in suite.regimes if r in sel.regimes or r in old["regimes"]],
            extra=sel.extra,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"suite": suite.to_dict(), "seeds": merged.seeds, "methods": merged.methods,
                                "regimes": merged.regimes, "extra": merged.extra}, indent=1))
    return merged


def load_plan(out_dir: Path) -> tuple[Suite, Selection] | None:
    """The suite and selection recorded in ``OUT/plan.json``, or None if there is none."""
    path = Path(out_dir) / PLAN_FILE
    if not path.exists():
        return None
    data = _read_plan(path)
    suite_data = dict(data["suite"])
    suite_path = suite_data.pop("path", "")
    suite = suite_from_dict(suite_data, str(path))  # every key checked, as a suite file's
    suite.path = str(suite_path)
    sel = Selection(data["seeds"], data["methods"], data["regimes"], data.get("extra", []))
    valid = {"seeds": suite.seeds, "methods": [m.name for m in suite.methods], "regimes": list(suite.regimes)}
    for key, names in valid.items():  # the selection is of the suite it records
        unknown = [x for x in getattr(sel, key) if x not in names and key != "seeds"]
        if unknown:
            raise SuiteError(f"{path}: {key} {unknown[0]!r} is not in its suite; {_PLAN_FIX}")
    return suite, sel


_PLAN_FIX = "remove plan.json to report the run directories found instead"


def _read_plan(path: Path) -> dict:
    """plan.json as JSON data (it names presets and overrides, never code), its entries of the right types."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SuiteError(f"{path} is not JSON ({e}); {_PLAN_FIX}") from None
    kinds = {"suite": dict, "seeds": list, "methods": list, "regimes": list, "extra": list}
    if not isinstance(data, dict):
        raise SuiteError(f"{path} holds a JSON {type(data).__name__}, not a plan; {_PLAN_FIX}")
    for key, kind in kinds.items():
        if not isinstance(data.get(key, [] if key == "extra" else None), kind):
            raise SuiteError(f"{path}: {key} is {data.get(key)!r}, not a {kind.__name__}; {_PLAN_FIX}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in data["seeds"]) or \
            not all(isinstance(x, str) for x in [*data["methods"], *data["regimes"], *data.get("extra", [])]):
        raise SuiteError(f"{path}: seeds must be whole numbers, methods, regimes and extra strings; {_PLAN_FIX}")
    return data


def scan_runs(out_dir: Path) -> list[RunSpec]:
    """Runs found as ``OUT/REGIME/METHOD/seedS`` directories (for a directory without plan.json)."""
    runs = []
    for d in sorted(Path(out_dir).glob("*/*/seed*")):
        seed = d.name[len("seed"):]
        if d.is_dir() and seed.lstrip("-").isdigit():
            runs.append(RunSpec(d.parent.parent.name, d.parent.name, int(seed), d))
    return sorted(runs, key=lambda r: (r.regime, r.method, r.seed))
