"""Config: presets, overrides, and errors that name the key and the valid choices."""

import pytest

from srft.cli import main
from srft.config import ConfigError, list_presets, load_config, parse_override


def test_defaults_are_srft():
    cfg = load_config()
    assert cfg.run.method == "srft"
    assert cfg.objective.sft_coef == 0.5 and cfg.objective.rl_coef == 0.1
    assert cfg.objective.self_rollout == "srft" and cfg.rollout.n == 8


def test_presets_load():
    assert {"srft", "grpo"} <= set(list_presets())
    grpo = load_config("grpo")
    assert grpo.objective.demonstrations is False and grpo.objective.self_rollout == "grpo"
    assert grpo.objective.sft_coef == 0 and grpo.run.method == "grpo"


def test_every_preset_validates():
    """Every preset is within the keys' ranges (the compare suites: tests/test_compare.py)."""
    load_config(None)
    for name in list_presets():
        assert load_config(name).run.method == name


def test_keys_list_their_ranges(capsys):
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr: float = 0.0003" in out and "Range: (0, inf)." in out and "Range: [0, inf]." in out


def test_overrides_are_typed():
    cfg = load_config("srft", None, ["run.steps=7", "objective.sft_coef=0.25", "model.path=null",
                                     "objective.adv_norm=mean", "optim.lr=1e-3", "optim.betas=[0.8, 0.9]"])
    assert cfg.run.steps == 7 and cfg.objective.sft_coef == 0.25 and cfg.model.path is None
    assert cfg.objective.adv_norm == "mean" and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.optim.betas == [0.8, 0.9]
    # an int where a float is expected is accepted as a float
    assert isinstance(load_config("srft", None, ["objective.sft_coef=1"]).objective.sft_coef, float)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as e:
        load_config("srft", None, ["objective.sft_coeff=0.3"])
    msg = str(e.value)
    assert "objective.sft_coeff" in msg and "sft_coef" in msg and "Did you mean 'sft_coef'" in msg


def test_unknown_section_and_malformed_override():
    with pytest.raises(ConfigError, match="unknown section 'optimiser'.*optim"):
        load_config("srft", None, ["optimiser.lr=1"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("steps")
    with pytest.raises(ConfigError, match="section.key"):
        parse_override("steps=3")


@pytest.mark.parametrize("override, fragment", [
    ("run.steps=ten", "run.steps: expected int"),
    ("run.steps=1.5", "run.steps: expected int"),
    ("objective.adv_norm=median", "'median' is not one of 'std' | 'mean'"),
    ("run.progress=maybe", "run.progress: expected bool"),
    ("rollout.n=0", "rollout.n must be > 0"),
])
def test_wrong_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("srft", None, [override])
    assert fragment in str(e.value)


def test_yaml_file_and_bad_yaml(tmp_path):
    good = tmp_path / "my.yaml"
    good.write_text("run:\n  steps: 11\nobjective:\n  offpolicy_shaping: luffy\n")
    cfg = load_config(None, str(good))
    assert cfg.run.steps == 11 and cfg.objective.offpolicy_shaping == "luffy"
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'run.stepz'"):
        load_config(None, str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(None, str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="unknown preset 'nope'.*srft"):
        load_config("nope")


def test_cli_reports_config_errors_before_work(capsys):
    assert main(["train", "run.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'run.stepz'" in err and "steps" in err


def test_cli_missing_model_path(capsys, tmp_path):
    assert main(["train", f"model.path={tmp_path}/nowhere", "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "model.path" in err


def test_cli_model_path_not_a_model(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    assert main(["train", f"model.path={tmp_path}/empty", "run.progress=false"]) == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err


def test_cli_bad_task_plugin(capsys, tmp_path):
    plugin = tmp_path / "broken.py"
    plugin.write_text("import no_such_module_xyz\n")
    assert main(["train", f"data.task={plugin}:Task", "run.progress=false"]) == 2
    err = capsys.readouterr().err
    assert "broken.py" in err and "no_such_module_xyz" in err


def test_cli_config_keys_lists_help(capsys):
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "objective.sft_coef" in out and "w_SFT" in out and "presets:" in out


def test_bad_model_path_creates_no_run_directory(tmp_path):
    out = tmp_path / "runs"
    assert main(["train", f"model.path={tmp_path}/nowhere", "run.progress=false", f"run.out_dir={out}/x"]) == 2
    assert not out.exists()


def test_cli_takes_overrides_on_both_sides_of_a_flag(capsys):
    import yaml

    from srft.cli import main

    assert main(["config", "run.steps=3", "--preset", "grpo", "rollout.n=2"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["run"]["method"], cfg["run"]["steps"], cfg["rollout"]["n"]) == ("grpo", 3, 2)


def test_cli_refuses_an_unknown_flag_and_prints_its_version(capsys):
    from srft.cli import main

    with pytest.raises(SystemExit):
        main(["config", "run.steps=3", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("srft ")
