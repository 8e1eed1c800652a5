"""The config keys' tags (``_f(..., feeds=...)``): what each key feeds, when that is on, and the
keys set away from their defaults that nothing reads (``srft doctor``'s ``keys`` check)."""

from __future__ import annotations

import dataclasses

import pytest

from srft.compare.suite import list_suites, load_suite
from srft.config import Config, ObjectiveConfig, list_presets, load_config
from srft.objective.features import ALWAYS_READ, FEATURES, dead_key_message, dead_keys, tag_on, tags
from srft.objective.terms import REGISTRY


def _all_fields():
    for sect in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), sect.name)):
            yield f"{sect.name}.{f.name}", f


def _dead(preset="srft", *overrides):
    return [d.key for d in dead_keys(load_config(preset, None, list(overrides)))]


def test_every_objective_key_is_tagged_or_always_read():
    """A new objective key must say what it feeds, or be listed as read in every run."""
    names = [f.name for f in dataclasses.fields(ObjectiveConfig)]
    untagged = [f.name for f in dataclasses.fields(ObjectiveConfig) if not tags(f) and f.name not in ALWAYS_READ]
    both = [f.name for f in dataclasses.fields(ObjectiveConfig) if tags(f) and f.name in ALWAYS_READ]
    assert untagged == [], "tag these with feeds=... in srft/config.py, or list them in features.ALWAYS_READ"
    assert both == []
    assert set(ALWAYS_READ) <= set(names), set(ALWAYS_READ) - set(names)


def test_each_tag_is_a_registered_term_or_a_feature():
    unknown = {key: t for key, f in _all_fields() for t in tags(f) if t not in REGISTRY and t not in FEATURES}
    assert unknown == {}
    assert set(FEATURES).isdisjoint(REGISTRY), "a feature named like a term would hide the term"
    used = {t for _, f in _all_fields() for t in tags(f)}
    assert set(FEATURES) <= used, f"features no key feeds: {set(FEATURES) - used}"
    with pytest.raises(KeyError, match="neither a registered loss term nor a feature"):
        tag_on("no-such-tag", Config())


def test_every_tag_is_on_for_some_preset_and_off_for_another():
    """A rule that is always on (or always off) would never warn (or always warn)."""
    configs = [load_config(p) for p in list_presets()]
    for tag in ("grpo", "pos", "neg", "kl", "chord-mu", "prefix-rft", "relift", "dynamic-sampling",
                "advantages", "overlong", "entropy-weights"):
        states = {tag_on(tag, cfg) for cfg in configs}
        assert states == {True, False}, tag


def test_clip_eps_high_under_srft_warns_with_the_reason_and_the_fix():
    dead = dead_keys(load_config("srft", None, ["objective.clip_eps_high=0.28"]))
    assert [dead_key_message(d) for d in dead] == [
        "objective.clip_eps_high=0.28 is set but nothing reads it here: it feeds the grpo term, which is off "
        "(objective.self_rollout=srft); remove it or turn that on"]
    assert _dead("grpo", "objective.clip_eps_high=0.28") == []  # the GRPO term reads it


def test_features_name_the_keys_that_turned_them_off():
    dead = dead_keys(load_config("grpo", None, ["objective.kl_cov_coef=0.5", "objective.mu_peak=0.5"]))
    messages = {d.key: dead_key_message(d) for d in dead}
    assert messages["objective.kl_cov_coef"] == (
        "objective.kl_cov_coef=0.5 is set but nothing reads it here: it feeds kl-cov, which is off "
        "(objective.cov_method=none); remove it or turn that on")
    assert "it feeds chord-mu, which is off (objective.mix=add)" in messages["objective.mu_peak"]
    # two tags: the message says both are off, and names what each rule read
    [d] = dead_keys(load_config("sft", None, ["objective.kl_tokens=all"]))
    assert dead_key_message(d).startswith("objective.kl_tokens=all is set but nothing reads it here: it feeds the "
                                          "kl term and the kl_cov term, which are all off (objective.kl_coef=0.0, "
                                          "objective.cov_method=none)")


@pytest.mark.parametrize("overrides, dead", [
    # switches are always read: setting one is how a term or method is turned off
    (["objective.sft_coef=0", "objective.entropy_coef=0", "objective.offpolicy_coef=0"], []),
    (["objective.neg_coef=0.5"], []),  # SRFT's neg term reads it
    (["objective.self_rollout=grpo", "objective.neg_coef=0.5"], ["objective.neg_coef"]),
    (["objective.prefix_entropy_top=0.5"], ["objective.prefix_entropy_top"]),
    (["objective.prefix_rollouts=2", "objective.prefix_entropy_top=0.5"], []),
    (["rollout.filter_rounds=5"], ["rollout.filter_rounds"]),
    (["rollout.filter_rounds=5", "rollout.filter_groups=true"], []),
    (["objective.shaping_gamma=0.2"], ["objective.shaping_gamma"]),  # srft's off-policy term is unshaped
    (["objective.offpolicy_shaping=luffy", "objective.shaping_gamma=0.2"], []),
    (["objective.tis_cap=0"], ["objective.tis_cap"]),  # no engine log-probs with rollout.engine=hf
    # no weight in target mode: no controller, measured or not
    (["objective.controller_probe=0.2", "objective.controller_sign=measured"],
     ["objective.controller_sign", "objective.controller_probe"]),
    (["objective.controller_probe=0.2", "objective.controller_sign=measured", "objective.rl_weight=target"], []),
    (["objective.entropy_target=0.5"], ["objective.entropy_target"]),
    (["objective.entropy_target=0.5", "objective.entropy_coef_mode=adaptive"], []),
    (["objective.bootstrap_k=2"], ["objective.bootstrap_k"]),
    (["objective.bootstrap_k=2", "objective.demo_source=rejection"], []),
])
def test_dead_keys_of_hand_made_configs(overrides, dead):
    assert _dead("srft", *overrides) == dead


def test_sft_reads_no_advantage():
    """SFT has no term that reads the group advantages, so their settings (and DAPO's shaping) do nothing."""
    assert _dead("sft", "objective.adv_norm=mean", "objective.overlong_buffer=0.2") == [
        "objective.adv_norm", "objective.overlong_buffer"]
    assert _dead("srft", "objective.adv_norm=mean", "objective.overlong_buffer=0.2") == []  # the off-policy term


@pytest.mark.parametrize("preset", list_presets())
def test_no_builtin_preset_sets_a_key_nothing_reads(preset):
    assert [dead_key_message(d) for d in dead_keys(load_config(preset))] == []


def test_no_comparison_suite_sets_a_key_nothing_reads():
    suites = list_suites()
    assert suites
    found = []
    for name in suites:
        suite = load_suite(name)
        for regime, regime_overrides in suite.regimes.items():
            for m in suite.methods:
                cfg = load_config(m.preset, None, [*suite.common, *regime_overrides, *m.overrides])
                found += [f"{name}/{regime}/{m.name}: {dead_key_message(d)}" for d in dead_keys(cfg)]
    assert found == []


def test_the_keys_page_and_help_show_the_tags():
    from srft.config import describe

    text = describe()
    assert "objective.clip_eps_high: float = 0.2" in text
    assert "Feeds: grpo." in text and "Feeds: kl, kl_cov." in text
