"""The Python API (``from srft import load_config, train, evaluate``) against the command line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import srft
from srft import evaluate, load_config, train
from srft.cli import main
from srft.config import Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
SRC = str(ROOT / "src")


def _tiny(model_dir) -> list[str]:
    return [f"model.path={model_dir}", "run.steps=2", "rollout.prompts_per_step=2", "rollout.n=2",
            "data.train_size=16", "data.test_size=4", "run.eval_k=2", "run.eval_every=0", "run.progress=false",
            "run.plots=false", "model.threads=1", "model.device=cpu"]


def _records(run_dir: Path) -> list[dict]:
    # timings (t_step, ...) and throughputs (gen_tokens_per_s, ...) differ between two runs; nothing else may
    return [{k: v for k, v in json.loads(line).items() if not (k.startswith("t_") or k.endswith("_per_s"))}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_import_is_cheap_and_sets_the_wait_policy():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SRFT_WAIT_POLICY")}
    env["PYTHONPATH"] = SRC
    code = ("import sys, os, srft; assert 'torch' not in sys.modules; "
            "from srft import load_config, train, evaluate; assert 'torch' not in sys.modules; "
            "load_config(overrides=['run.steps=1']); assert 'torch' not in sys.modules; "
            "print(os.environ['SRFT_WAIT_POLICY'], os.environ.get('OMP_WAIT_POLICY'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    # passive where the machine was busy at start, libgomp's default (unset) where it was quiet
    decision, policy = out.stdout.split()[0], out.stdout.split()[-1]
    assert (decision, policy) in (("passive", "PASSIVE"), ("default", "None")), out.stdout


def test_the_wait_policy_follows_how_busy_the_machine_is(monkeypatch):
    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "SRFT_WAIT_POLICY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(srft, "_others_busy_cores", lambda: 1.0)  # one other busy process
    srft._choose_wait_policy()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["SRFT_WAIT_POLICY"].startswith("passive")
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.delenv("SRFT_WAIT_POLICY")
    monkeypatch.setattr(srft, "_others_busy_cores", lambda: 0.1)  # a quiet machine
    srft._choose_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["SRFT_WAIT_POLICY"].startswith("default")
    monkeypatch.delenv("SRFT_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # the user's setting wins, busy or not
    monkeypatch.setattr(srft, "_others_busy_cores", lambda: 2.0)
    srft._choose_wait_policy()
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["SRFT_WAIT_POLICY"] == "user"


def test_a_busy_process_is_seen_by_the_sampler():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)  # let it start spinning
        assert srft._others_busy_cores(0.3) >= 0.7
    finally:
        spin.kill()
        spin.wait()


def test_names_and_docstrings():
    assert {"load_config", "train", "evaluate"} <= set(srft.__all__) and "evaluate" in dir(srft)
    for fn in (load_config, train, evaluate):
        assert fn.__doc__ and len(fn.__doc__) > 100
    with pytest.raises(AttributeError):
        srft.no_such_name  # noqa: B018


def test_overrides_as_list_and_dict_agree():
    as_list = load_config("grpo", overrides=["run.steps=10", "objective.sft_coef=0.3", "model.path=null",
                                             "run.report_to=tensorboard,wandb", "optim.betas=[0.5, 0.9]"])
    as_dict = load_config("grpo", overrides={"run.steps": 10, "objective.sft_coef": 0.3, "model.path": None,
                                             "run.report_to": ["tensorboard", "wandb"], "optim.betas": [0.5, 0.9]})
    assert isinstance(as_list, Config) and as_list.to_dict() == as_dict.to_dict()
    assert as_dict.run.steps == 10 and as_dict.optim.betas == [0.5, 0.9] and as_dict.run.method == "grpo"
    assert load_config(overrides={"run.out_dir": "runs/a b"}).run.out_dir == "runs/a b"
    assert load_config().to_dict() == load_config("srft", None, None).to_dict()


def test_config_file_and_preset_none(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("run:\n  steps: 5\n")
    assert load_config(None, f).run.steps == 5
    assert load_config(None, str(f), {"run.steps": 6}).run.steps == 6


@pytest.mark.parametrize("overrides, fragment", [
    (["run.nope=1"], "unknown key 'run.nope'"),
    ({"optimiser.lr": 1}, "unknown section 'optimiser'"),
    ({"run.steps": "many"}, "run.steps: expected int"),
    ({"run.steps": -1}, "run.steps must be >= 0"),
    ("run.steps=1", "not the string"),
    ([3], "is not a 'section.key=value' string"),
])
def test_bad_key_raises_config_error(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert fragment in str(e.value)


def test_train_and_evaluate_reject_a_non_config(tmp_path):
    with pytest.raises(ConfigError, match="expected a Config"):
        train({"run.steps": 1})
    with pytest.raises(ConfigError, match="expected a Config"):
        evaluate("srft")
    with pytest.raises(ConfigError, match="needs run_dir"):
        train(load_config(), resume=True)


def test_train_matches_the_command(tiny_model_dir, tmp_path, capsys):
    overrides = _tiny(tiny_model_dir)
    run_dir = train(load_config("srft", overrides=overrides), run_dir=tmp_path / "api")
    assert run_dir == tmp_path / "api" and (run_dir / "model" / "config.json").exists()
    assert main(["train", *overrides, f"run.out_dir={tmp_path / 'cli'}"]) == 0
    api, cli = _records(run_dir), _records(tmp_path / "cli")
    assert len(api) == 2 and api == cli


def test_evaluate_matches_the_command(tiny_model_dir, tmp_path, capsys):
    overrides = [f"model.path={tiny_model_dir}", "data.test_size=4", "run.eval_k=3", "data.max_response_tokens=12",
                 "model.threads=1", "model.device=cpu", "run.seed=5"]
    res = evaluate(load_config("srft", overrides=overrides))
    assert set(res) == {"model", "task", "k", "temperature", "splits"}
    assert (res["model"], res["task"], res["k"]) == (str(tiny_model_dir), "addition", 3)
    assert list(res["splits"]) == ["test_id", "test_ood"]
    for r in res["splits"].values():
        assert {"avg@3", "pass@3", "format_ok", "n_prompts", "acc"} <= set(r) and r["n_prompts"] == 4
        assert "samples" not in r
    capsys.readouterr()
    assert main(["evaluate", *overrides]) == 0
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if "avg@3" in line]
    for line, (split, r) in zip(printed, res["splits"].items(), strict=True):
        assert line[0] == split
        assert line[2] == f"{r['avg@3']:.3f}" and line[4] == f"{r['pass@3']:.3f}" and line[6] == f"{r['format_ok']:.3f}"
    # one split as a string, the completions to a file
    out = tmp_path / "e.json"
    one = evaluate(load_config("srft", overrides=overrides), splits="test_ood", out=out)
    assert list(one["splits"]) == ["test_ood"] and "samples" not in one["splits"]["test_ood"]
    assert len(json.loads(out.read_text())["splits"]["test_ood"]["samples"]) == 4


def test_quickstart_example_runs(tmp_path):
    # as a user runs it: the built-in base model comes from the package's shipped weights into
    # ~/.cache/srft (HOME here: this test's directory), the run goes to ./runs
    env = {**os.environ, "PYTHONPATH": SRC, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["test_id", "test_ood"]
    assert all("avg@2" in line and "pass@2" in line for line in lines)
    assert len(list((tmp_path / "runs").glob("quickstart-*/model/config.json"))) == 1
