"""Comparison suites: which methods, seeds and base-model regimes a comparison runs.

A suite is a YAML file (built-in ones in ``srft/presets/compare/``)::

    name: quick
    description: one line
    seeds: [0, 1, 2]
    common: ["run.steps=60"]          # overrides for every run
    regimes:                          # base-model regimes, each a list of extra overrides
      strong: []
      weak: ["model.base_steps=250"]
    methods:                          # in report order
      - {name: srft, preset: srft, overrides: []}

Every key is checked when the file is read; a wrong or missing one fails naming the key,
the valid keys and the file. Override values are checked later, against the config, by
``srft.compare.plan.validate_configs``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from srft.config import ConfigError

SUITE_DIR = Path(__file__).resolve().parent.parent / "presets" / "compare"
TOP_KEYS = {"name": True, "description": True, "seeds": True, "common": False, "regimes": True, "methods": True}
METHOD_KEYS = {"name": True, "preset": True, "overrides": False}
# Method and regime names become directory names.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SuiteError(ConfigError):
    """A suite file is wrong; the message names the file, the key and what is valid."""


@dataclass
class MethodSpec:
    name: str
    preset: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Suite:
    name: str
    description: str
    seeds: list[int]
    common: list[str]
    regimes: dict[str, list[str]]
    methods: list[MethodSpec]
    path: str = ""

    def method(self, name: str) -> MethodSpec:
        return next(m for m in self.methods if m.name == name)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "seeds": list(self.seeds),
                "common": list(self.common), "regimes": {k: list(v) for k, v in self.regimes.items()},
                "methods": [{"name": m.name, "preset": m.preset, "overrides": list(m.overrides)}
                            for m in self.methods], "path": self.path}


def list_suites() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def suite_path(name_or_path: str) -> Path:
    """A built-in suite's file (``quick``), or the YAML file at that path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"suite file '{name_or_path}' does not exist")
        return path
    builtin = SUITE_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise SuiteError(f"unknown suite '{name_or_path}'; built-in suites: {', '.join(list_suites())} "
                         f"(or give a path to a suite YAML file)")
    return builtin


def load_suite(name_or_path: str) -> Suite:
    path = suite_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:  # PyYAML's message spans lines (with a caret): one line here
        raise SuiteError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e
    suite = suite_from_dict(data, str(path))
    suite.path = str(path)
    return suite


def suite_from_dict(data: Any, source: str) -> Suite:
    """Check ``data`` against the schema and build the Suite; ``source`` names the file in errors."""
    _check_keys(data, TOP_KEYS, "the suite", source)
    regimes = data["regimes"]
    if not isinstance(regimes, dict) or not regimes:
        raise SuiteError(f"{source}: 'regimes' must be a non-empty mapping of regime name to a list of overrides, "
                         f"got {regimes!r}")
    methods = data["methods"]
    if not isinstance(methods, list) or not methods:
        raise SuiteError(f"{source}: 'methods' must be a non-empty list of {{name, preset, overrides}}, "
                         f"got {methods!r}")
    suite = Suite(
        name=_string(data["name"], "name", source),
        description=_string(data["description"], "description", source),
        seeds=_seeds(data["seeds"], source),
        common=_overrides(data.get("common") or [], "common", source),
        regimes={_name(r, f"regimes: '{r}'", source): _overrides(o or [], f"regimes.{r}", source)
                 for r, o in regimes.items()},
        methods=[_method(m, i, source) for i, m in enumerate(methods)],
    )
    names = [m.name for m in suite.methods]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SuiteError(f"{source}: method names must be unique; repeated: {', '.join(dupes)}")
    return suite


def _check_keys(data: Any, schema: dict[str, bool], where: str, source: str) -> None:
    valid = ", ".join(schema)
    if not isinstance(data, dict):
        raise SuiteError(f"{source}: {where} must be a mapping with keys {valid}; got {type(data).__name__}")
    for key in data:
        if key not in schema:
            raise SuiteError(f"{source}: unknown key '{key}' in {where}; valid keys: {valid}")
    for key, required in schema.items():
        if required and key not in data:
            raise SuiteError(f"{source}: missing key '{key}' in {where}; valid keys: {valid}")


def _string(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{source}: '{key}' must be a non-empty string, got {value!r}")
    return value


def _name(value: Any, key: str, source: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise SuiteError(f"{source}: {key}: a name must be letters, digits, '.', '_' or '-' "
                         f"(it names a directory), got {value!r}")
    return value


def _seeds(value: Any, source: str) -> list[int]:
    ok = isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not ok or len(set(value)) != len(value):
        raise SuiteError(f"{source}: 'seeds' must be a non-empty list of distinct integers, got {value!r}")
    return list(value)


def _overrides(value: Any, key: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(o, str) and "=" in o for o in value):
        raise SuiteError(f"{source}: '{key}' must be a list of 'section.key=value' strings, got {value!r}")
    return list(value)


def _method(data: Any, i: int, source: str) -> MethodSpec:
    where = f"methods[{i}]"
    _check_keys(data, METHOD_KEYS, where, source)
    name = _name(data["name"], f"{where}.name", source)
    return MethodSpec(name=name, preset=_string(data["preset"], f"{where}.preset", source),
                      overrides=_overrides(data.get("overrides") or [], f"{where}.overrides", source))
