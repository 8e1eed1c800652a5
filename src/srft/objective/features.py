"""What each config key feeds, and when that is on: the tags of ``_f(..., feeds=...)`` resolved.

A key's tags (``feeds`` in its field's metadata, :mod:`srft.config`) name loss terms of the
registry (:data:`srft.objective.terms.REGISTRY`: on when the term's ``enabled`` says so) or
the features below: a step method or a shared piece of the objective that reads the key, with
the rule that says when it is on. A key matters only while one of its tags is on, so a key set
away from its default while all its tags are off does nothing (:func:`dead_keys`; ``srft
doctor``'s ``keys`` check). An untagged key is read in every run; in ``ObjectiveConfig`` it is
listed in :data:`ALWAYS_READ`, so that a new objective key cannot go untagged by oversight.

Each rule is conservative: on whenever the key could change the loss, a step's plan or what
the run generates. The rules read the config through attributes only, so that
:func:`dead_keys` can name the keys that turned a tag off.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

from srft.config import Config
from srft.objective.terms import REGISTRY


def _term(name: str, cfg: Config) -> bool:
    return REGISTRY[name].enabled(cfg.objective)


def _advantages(cfg: Config) -> bool:
    # the group advantages enter the GRPO surrogate, the off-policy term and the token covariance
    return _term("grpo", cfg) or _term("offpolicy", cfg) or _cov_control(cfg)


def _cov_control(cfg: Config) -> bool:
    return cfg.objective.cov_method != "none" and cfg.objective.self_rollout != "none"


def _entropy_controller(cfg: Config) -> bool:
    o = cfg.objective
    return (_term("sft", cfg) and o.sft_weight == "target") or (_term("pos", cfg) and o.rl_weight == "target")


# feature -> when it is on. A name here is not a term's name (the tests check it).
FEATURES: dict[str, Callable[[Config], bool]] = {
    "advantages": _advantages,
    "overlong": lambda cfg: cfg.objective.overlong_buffer > 0 and _advantages(cfg),  # DAPO's reward shaping
    "luffy-shaping": lambda cfg: _term("offpolicy", cfg) and cfg.objective.offpolicy_shaping == "luffy",
    # the entropy H enters w_SFT and w_RL only in their exp modes
    "entropy-weights": lambda cfg: ((_term("sft", cfg) and cfg.objective.sft_weight == "exp")
                                    or (_term("pos", cfg) and cfg.objective.rl_weight == "exp")),
    "sft-schedule": lambda cfg: _term("sft", cfg) and cfg.objective.sft_weight in ("linear", "cosine"),
    "rl-schedule": lambda cfg: _term("pos", cfg) and cfg.objective.rl_weight in ("linear", "cosine"),
    "entropy-controller": _entropy_controller,
    "measured-controller": lambda cfg: _entropy_controller(cfg) and cfg.objective.controller_sign == "measured",
    "adaptive-entropy": lambda cfg: cfg.objective.entropy_coef_mode == "adaptive",  # Skywork-OR1's bonus
    "chord-mu": lambda cfg: cfg.objective.mix == "chord",
    "cov-control": _cov_control,
    "clip-cov": lambda cfg: _cov_control(cfg) and cfg.objective.cov_method == "clip-cov",
    # not the kl_cov term: kl_cov_coef=0 is how that term is turned off, so the coefficient counts as read
    "kl-cov": lambda cfg: _cov_control(cfg) and cfg.objective.cov_method == "kl-cov",
    "relift": lambda cfg: cfg.objective.relift_buffer > 0,
    "prefix-rft": lambda cfg: cfg.objective.prefix_rollouts > 0,
    # demonstrations are picked for the groups, and for the SFT steps of the two-stage, SASR and ReLIFT methods
    "demos": lambda cfg: (cfg.objective.demonstrations or cfg.objective.sft_stage_steps > 0
                          or cfg.objective.sasr_warmup_steps > 0 or cfg.objective.relift_buffer > 0),
    "bootstrap": lambda cfg: (cfg.objective.demo_source in ("rejection", "rationalised")
                              and FEATURES["demos"](cfg)),
    # the truncated IS weight needs an engine's own log-probs, and weights only the own-rollout terms
    "tis": lambda cfg: cfg.rollout.engine != "hf" and cfg.objective.self_rollout != "none",
    "dynamic-sampling": lambda cfg: cfg.rollout.filter_groups,  # DAPO's
}

# ObjectiveConfig keys read in every run: the switches (their value turns a term or a method on
# or off, so setting one always does something) and the reduction of the loss.
ALWAYS_READ = (
    "demonstrations", "self_rollout", "mix", "sft_coef", "offpolicy_coef", "entropy_coef", "entropy_coef_mode",
    "kl_coef", "cov_method", "sft_stage_steps", "relift_buffer", "prefix_rollouts", "sasr_warmup_steps",
    "loss_agg", "term_norm",
)


def tags(field: dataclasses.Field) -> tuple[str, ...]:
    """The terms and features a config field feeds (empty: read in every run)."""
    return tuple(field.metadata.get("feeds", ()))


def tag_on(tag: str, cfg: Config) -> bool:
    if tag in REGISTRY:
        return bool(_term(tag, cfg))
    if tag in FEATURES:
        return bool(FEATURES[tag](cfg))
    raise KeyError(f"unknown config tag {tag!r}: neither a registered loss term nor a feature of "
                   f"srft.objective.features")


class _Reads:
    """``obj`` read through attributes, each key read recorded as ``section.key`` (a section gives a _Reads too)."""

    def __init__(self, obj: Any, prefix: str, log: dict[str, Any]):
        self._obj, self._prefix, self._log = obj, prefix, log

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._obj, name)
        if dataclasses.is_dataclass(value):
            return _Reads(value, f"{name}.", self._log)
        self._log.setdefault(self._prefix + name, value)
        return value


class DeadKey(NamedTuple):
    key: str  # section.key
    value: Any
    tags: tuple[str, ...]
    off_by: dict[str, Any]  # the keys that turned the tags off -> their values


def dead_keys(cfg: Config) -> list[DeadKey]:
    """The keys set away from their defaults whose tags are all off for ``cfg``."""
    out, defaults = [], Config()
    for sect in dataclasses.fields(Config):
        obj, default_obj = getattr(cfg, sect.name), getattr(defaults, sect.name)
        for f in dataclasses.fields(obj):
            value, key_tags = getattr(obj, f.name), tags(f)
            if not key_tags or value == getattr(default_obj, f.name):
                continue
            reads: dict[str, Any] = {}
            if not any(tag_on(t, _Reads(cfg, "", reads)) for t in key_tags):
                out.append(DeadKey(f"{sect.name}.{f.name}", value, key_tags, reads))
    return out


def _name(tag: str) -> str:
    return f"the {tag} term" if tag in REGISTRY else tag


def dead_key_message(d: DeadKey) -> str:
    """One line: the key, what it feeds, the settings that turned that off, and the fix."""
    fed = " and ".join(_name(t) for t in d.tags)
    which = "which is off" if len(d.tags) == 1 else "which are all off"
    why = ", ".join(f"{k}={v}" for k, v in d.off_by.items())
    return (f"{d.key}={d.value} is set but nothing reads it here: it feeds {fed}, {which} ({why}); "
            f"remove it or turn that on")
