"""srft compare: suites, the plan's checks, the runner's skip/resume/failure logic, the report."""

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from srft.compare.plan import (
    RunSpec,
    check_existing,
    plan_runs,
    save_plan,
    select,
    validate_configs,
)
from srft.compare.report import build_report, fmt_tokens, mean_std
from srft.compare.runner import fmt_duration, run_all
from srft.compare.suite import SuiteError, list_suites, load_suite
from srft.config import ConfigError, load_config, save_config

GOOD_SUITE = {
    "name": "mini", "description": "two methods", "seeds": [0, 1],
    "common": ["run.steps=3"], "regimes": {"strong": [], "weak": ["model.base_steps=250"]},
    "methods": [{"name": "srft", "preset": "srft"},
                {"name": "grpo-x", "preset": "grpo", "overrides": ["rollout.n=2"]}],
}


def write_suite(tmp_path: Path, data: dict, name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- suites


def test_builtin_suites_load_and_their_runs_validate():
    assert {"quick", "entropy", "bootstrap", "weak-long", "carry", "unseen", "default"} <= set(list_suites())
    quick = load_suite("quick")
    assert [m.name for m in quick.methods] == [
        "sft", "dft", "asft", "grpo", "dr-grpo", "dapo", "sft-then-grpo", "luffy", "chord", "relift", "prefix-rft", "sasr",
        "srft",
        "srft-no-wsft", "srft-no-wrl"]
    assert quick.seeds == [0, 1, 2] and list(quick.regimes) == ["strong", "weak"]
    assert [m.name for m in load_suite("entropy").methods] == [
        "srft", "srft-constant", "srft-linear", "srft-cosine", "srft-target", "srft-phi", "srft-target-measured",
        "srft-adaptive-bonus", "grpo-adaptive-bonus", "grpo-clip-cov", "grpo-kl-cov", "srft-clip-cov"]
    assert [m.name for m in load_suite("bootstrap").methods] == [
        "srft-expert", "srft-self", "srft-mixed", "srft-rejection", "srft-rejection-only", "srft-rationalised",
        "srft-rationalised-only", "grpo"]
    # every run of every built-in suite has a valid config (presets exist, overrides are real keys)
    for name in list_suites():
        suite = load_suite(name)
        configs = validate_configs(plan_runs(suite, select(suite), Path("/nonexistent")))
        if name == "unseen":  # the regime's point: another task's base model
            assert {(c.data.task, c.model.base_task) for c in configs.values()} == {("expression", "addition")}


@pytest.mark.parametrize("change, expected", [
    (lambda d: d.update(method=[]), ["unknown key 'method' in the suite", "valid keys: name, description, seeds"]),
    (lambda d: d.pop("seeds"), ["missing key 'seeds'", "valid keys: name, description, seeds, common, regimes"]),
    (lambda d: d["methods"][1].update(presets="grpo"), ["unknown key 'presets' in methods[1]",
                                                        "valid keys: name, preset, overrides"]),
    (lambda d: d["methods"][0].pop("preset"), ["missing key 'preset' in methods[0]"]),
    (lambda d: d["methods"].append({"name": "srft", "preset": "grpo"}), ["unique; repeated: srft"]),
    (lambda d: d.update(seeds="0,1"), ["'seeds' must be a non-empty list of distinct integers"]),
    (lambda d: d.update(common=["run.steps"]), ["'common' must be a list of 'section.key=value'"]),
    (lambda d: d.update(regimes={"a b": []}), ["regimes: 'a b'", "names a directory"]),
    (lambda d: d.update(methods=[]), ["'methods' must be a non-empty list"]),
])
def test_suite_errors_name_the_key_the_valid_keys_and_the_file(tmp_path, change, expected):
    data = json.loads(json.dumps(GOOD_SUITE))
    change(data)
    path = write_suite(tmp_path, data)
    with pytest.raises(SuiteError) as e:
        load_suite(str(path))
    for text in [str(path), *expected]:
        assert text in str(e.value)


def test_unknown_suite_lists_the_builtin_ones():
    with pytest.raises(SuiteError, match="unknown suite 'nope'; built-in suites: bootstrap, bootstrap-long, carry, "
                                         "carry-taught, carry-taught-long, default, entropy, entropy-long, entropy-taught, "
                                         "expression"):
        load_suite("nope")


def test_selection_and_plan_order(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, GOOD_SUITE)))
    with pytest.raises(SuiteError, match="unknown method 'grpo'.*valid: srft, grpo-x"):
        select(suite, methods=["grpo"])
    with pytest.raises(SuiteError, match="unknown regime 'medium'.*valid: strong, weak"):
        select(suite, regimes=["medium"])
    # asked in another order: the suite's order wins; regime -> method -> seed
    sel = select(suite, seeds=[1], methods=["grpo-x", "srft"], extra=["rollout.prompts_per_step=2"])
    runs = plan_runs(suite, sel, tmp_path / "out")
    assert [r.key for r in runs] == ["strong/srft/seed1", "strong/grpo-x/seed1", "weak/srft/seed1",
                                     "weak/grpo-x/seed1"]
    assert runs[3].overrides == ["run.steps=3", "rollout.prompts_per_step=2", "model.base_steps=250", "rollout.n=2",
                                 "run.seed=1", "run.method=grpo-x", f"run.out_dir={tmp_path / 'out/weak/grpo-x/seed1'}"]
    cfg = validate_configs(runs)["weak/grpo-x/seed1"]
    assert (cfg.run.steps, cfg.rollout.n, cfg.model.base_steps, cfg.objective.self_rollout) == (3, 2, 250, "grpo")


def test_a_bad_override_fails_before_anything_runs_naming_the_run(tmp_path):
    data = json.loads(json.dumps(GOOD_SUITE))
    data["methods"][1]["overrides"] = ["rollout.nn=2"]
    suite = load_suite(str(write_suite(tmp_path, data)))
    with pytest.raises(ConfigError, match=r"run strong/grpo-x/seed0 \(preset 'grpo'\).*unknown key 'rollout.nn'"):
        validate_configs(plan_runs(suite, select(suite), tmp_path / "out"))


def test_existing_run_dirs_with_another_config_are_refused(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, GOOD_SUITE)))
    runs = plan_runs(suite, select(suite, seeds=[0], regimes=["strong"]), tmp_path / "out")
    configs = validate_configs(runs)
    run = runs[0]
    run.run_dir.mkdir(parents=True)
    # same config, other thread count and progress flag: fine
    save_config(load_config(run.preset, None, [*run.overrides, "model.threads=7", "run.progress=false"]),
                run.run_dir / "config.yaml")
    check_existing(runs, configs)
    save_config(load_config(run.preset, None, [*run.overrides, "run.steps=5"]), run.run_dir / "config.yaml")
    with pytest.raises(SuiteError, match=r"strong/srft/seed0: run.steps \(5 there, 3 now\)"):
        check_existing(runs, configs)


def test_plan_file_merges_partial_invocations(tmp_path):
    suite = load_suite(str(write_suite(tmp_path, GOOD_SUITE)))
    save_plan(tmp_path, suite, select(suite, methods=["grpo-x"], seeds=[1]))
    merged = save_plan(tmp_path, suite, select(suite, methods=["srft"], seeds=[0]))
    assert merged.methods == ["srft", "grpo-x"] and merged.seeds == [0, 1]


# --------------------------------------------------------------------------- the runner

# A stand-in for `srft train`: records its call, fails for method "bad", else writes eval.json.
FAKE_TRAIN = textwrap.dedent("""
    import json, sys, pathlib
    run_dir, method, resume, calls = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    with open(calls, "a") as f:
        f.write(f"{run_dir.parent.name}/{run_dir.name} resume={resume}\\n")
    print("training", method)
    if method == "bad":
        print("Traceback: something broke")
        sys.exit(1)
    (run_dir / "eval.json").write_text(json.dumps({"after": {"test_id": 0.5, "test_ood": 0.0}}))
""")


def fake_builder(calls: Path):
    def build(run: RunSpec, resume: bool, threads: int) -> list[str]:
        return [sys.executable, "-c", FAKE_TRAIN, str(run.run_dir), run.method, str(resume), str(calls)]
    return build


def test_runner_records_failures_goes_on_resumes_and_skips_finished_runs(tmp_path):
    calls = tmp_path / "calls.txt"
    runs = [RunSpec("r", m, s, tmp_path / "out" / "r" / m / f"seed{s}") for m in ("good", "bad", "late") for s in (0, 1)]
    # "late/seed1" stopped earlier after a checkpoint: it resumes
    resumable = runs[5].run_dir
    ckpt = resumable / "checkpoints" / "step-000003"  # the layout of srft.rundir
    ckpt.mkdir(parents=True)
    for name in ("trainer.pt", "model_state.pt"):
        (ckpt / name).write_text("")
    (resumable / "config.yaml").write_text("{}")
    (resumable / "run_status.json").write_text(json.dumps({"status": "interrupted", "wall_s": 100.0}))
    lines: list[str] = []
    results = run_all(runs, jobs=2, threads=1, build_command=fake_builder(calls), say=lines.append, poll_s=0.05)

    assert [r.status for r in results] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    bad = json.loads((runs[2].run_dir / "run_status.json").read_text())
    assert bad["status"] == "failed" and bad["returncode"] == 1
    assert "Traceback: something broke" in bad["error"] and "training bad" in bad["error"]
    assert "training bad" in (runs[2].run_dir / "train.log").read_text()
    late = json.loads((resumable / "run_status.json").read_text())
    assert late["resumed"] and late["wall_s"] >= 100.0  # the earlier attempt's time counts
    assert "late/seed1 resume=True" in calls.read_text()
    assert sum("start" in x for x in lines) == 6 and any("ETA" in x for x in lines)

    # again: finished runs are skipped, the failed ones are tried again (fresh: no checkpoint)
    calls.unlink()
    results = run_all(runs, jobs=1, threads=1, build_command=fake_builder(calls), say=lines.append, poll_s=0.05)
    assert [r.status for r in results] == ["skipped", "skipped", "failed", "failed", "skipped", "skipped"]
    assert calls.read_text().splitlines() == ["bad/seed0 resume=False", "bad/seed1 resume=False"]
    assert "4 of 6 runs already finished: skipped" in lines


# A stand-in that saves a "checkpoint" on SIGTERM, as the training loop does.
SLOW_TRAIN = textwrap.dedent("""
    import signal, sys, time, pathlib
    run_dir = pathlib.Path(sys.argv[1])
    def stop(signum, frame):
        (run_dir / "checkpoint").mkdir()
        (run_dir / "checkpoint" / "trainer.pt").write_text("")
        sys.exit(130)
    signal.signal(signal.SIGTERM, stop)
    (run_dir / "started").write_text("")
    time.sleep(60)
""")


def test_interrupt_stops_children_with_sigterm_so_they_save(tmp_path):
    runs = [RunSpec("r", "m", 0, tmp_path / "r" / "m" / "seed0")]

    def build(run, resume, threads):
        return [sys.executable, "-c", SLOW_TRAIN, str(run.run_dir)]

    def say(line):  # a Ctrl-C once the child is up
        if "start" in line:
            import time
            while not (runs[0].run_dir / "started").exists():
                time.sleep(0.05)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_all(runs, jobs=1, threads=1, build_command=build, say=say, poll_s=0.05, grace_s=20)
    assert (runs[0].run_dir / "checkpoint" / "trainer.pt").exists()
    assert json.loads((runs[0].run_dir / "run_status.json").read_text())["status"] == "interrupted"


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_a_run_still_running_from_an_earlier_invocation_is_detected(tmp_path):
    import subprocess
    import time

    from srft.compare.runner import running_elsewhere

    run_dir = tmp_path / "r" / "m" / "seed0"
    run_dir.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", f"run.out_dir={run_dir}"])
    try:
        while not Path(f"/proc/{proc.pid}/cmdline").read_bytes():  # empty for a moment after exec
            time.sleep(0.01)
        (run_dir / "run_status.json").write_text(json.dumps({"status": "running", "pid": proc.pid}))
        assert running_elsewhere(run_dir) == proc.pid
        assert running_elsewhere(tmp_path / "r" / "m" / "seed1") is None
    finally:
        proc.kill()
        proc.wait()
    assert running_elsewhere(run_dir) is None


# --------------------------------------------------------------------------- the report


def fake_run(run_dir: Path, id_before: float, id_after: float, ood_after: float, pass_after: float, wall: float,
             gen_tokens: list | None = None) -> None:
    """A finished run's files: two steps of metrics (response_len 10, rollout.n 2, 4 prompts per step)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"rollout": {"n": 2, "prompts_per_step": 4}}))
    records = [{"step": s, "rollout_acc": 0.5, "entropy_rollout": 1.0 - 0.1 * s, "response_len": 10.0}
               for s in range(2)]
    for r, g in zip(records, gen_tokens or []):
        r["gen_tokens"] = g
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    history = [{"step": 0, "test_id": {"acc": id_before}, "test_ood": {"acc": 0.0}},
               {"step": 2, "test_id": {"acc": id_after}, "test_ood": {"acc": ood_after}}]
    (run_dir / "eval_history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    (run_dir / "eval.json").write_text(json.dumps({
        "k": 4, "temperature": 1.0, "steps": 2, "n_prompts": {"test_id": 8, "test_ood": 8},
        "before": {"test_id": id_before, "test_ood": 0.0}, "after": {"test_id": id_after, "test_ood": ood_after},
        "pass@k_after": {"test_id": pass_after, "test_ood": 0.0}}))
    (run_dir / "run_status.json").write_text(json.dumps({"status": "ok", "wall_s": wall}))


def test_report_aggregates_seeds_reports_failures_and_plots(tmp_path):
    out = tmp_path / "out"
    runs = [RunSpec("strong", m, s, out / "strong" / m / f"seed{s}") for m in ("a", "b", "c") for s in (0, 1, 2)]
    # a: three seeds; ID after 0.5, 0.6, 0.7 -> mean 0.6, std sqrt((0.01 + 0 + 0.01) / 2) = 0.1
    for s, acc in enumerate((0.5, 0.6, 0.7)):
        fake_run(runs[s].run_dir, 0.3, acc, 0.0, acc + 0.2, wall=60 + 30 * s, gen_tokens=[100, 200])
    # b: two seeds finished (0.4, 0.8 -> mean 0.6, std sqrt(0.04 + 0.04) = 0.283), one failed
    fake_run(runs[3].run_dir, 0.3, 0.4, 0.1, 0.9, wall=10)
    fake_run(runs[4].run_dir, 0.3, 0.8, 0.3, 0.9, wall=20)
    runs[5].run_dir.mkdir(parents=True)
    (runs[5].run_dir / "run_status.json").write_text(json.dumps(
        {"status": "failed", "error": "Traceback\nValueError: bad thing", "wall_s": 1.0}))
    # c: nothing ran
    meta = {"suite": "mini", "description": "test", "seeds": [0, 1, 2], "common": ["run.steps=2"], "extra": [],
            "regimes": {"strong": []}}
    doc = build_report(out, runs, meta)

    a, b, c = (doc["aggregates"]["strong"][m] for m in "abc")
    assert a["id_after"]["mean"] == pytest.approx(0.6) and a["id_after"]["std"] == pytest.approx(0.1)
    assert a["status"] == "ok" and a["wall_s"] == pytest.approx(90)  # (60 + 90 + 120) / 3
    assert a["gen_tokens"] == 300  # logged gen_tokens: 100 + 200
    assert b["id_after"]["std"] == pytest.approx(0.2828, abs=1e-4) and b["n_ok"] == 2
    assert b["gen_tokens"] == 160  # estimated: 2 steps x response_len 10 x n 2 x 4 prompts
    assert b["status"] == "1 of 3 failed" and c["status"] == "3 of 3 not run"
    md = (out / "compare.md").read_text()
    # 95% intervals mean +- t(0.975, n-1) * std / sqrt(n): a's ID after 0.6 +- 4.3027 * 0.1 / sqrt(3) = 0.6 +- 0.2484;
    # its pass@k 0.7, 0.8, 0.9: 0.8 +- 0.2484; b's ID after (n=2) 0.6 +- 12.7062 * 0.2828 / sqrt(2) = 0.6 +- 2.5412,
    # OOD after 0.1, 0.3: 0.2 +- 12.7062 * 0.1414 / sqrt(2) = 0.2 +- 1.2706
    assert "| a | 0.300 [0.300, 0.300] | 0.600 [0.352, 0.848] | 0.000 [0.000, 0.000] | 0.800 [0.552, 1.048] " \
           "| 1:30 | 300 | ok |" in md
    assert "| b | 0.300 [0.300, 0.300] (n=2) | 0.600 [-1.941, 3.141] (n=2) | 0.200 [-1.071, 1.471] (n=2)" in md
    assert a["id_after"]["ci95"] == pytest.approx([0.6 - 0.248414, 0.6 + 0.248414], abs=1e-6)
    # paired against a (the first method: no srft here), seeds 0 and 1: b - a = 0.4 - 0.5, 0.8 - 0.6 = -0.1, 0.2
    # -> mean 0.05, std 0.3 / sqrt(2) = 0.2121, half width 12.7062 * 0.2121 / sqrt(2) = 1.9059: spans 0, no *
    assert doc["reference"] == "a"
    assert "| b | 2 | +0.050 [-1.856, +1.956] |" in md and "| c | 0 | – | – | – |" in md
    assert "| c | – | – | – | – | – | – | 3 of 3 not run |" in md
    assert "ID pass@4 after" in md and "`run.steps=2`" in md
    assert "`strong/b/seed2`: ValueError: bad thing" in md
    failed = [r for r in json.loads((out / "compare.json").read_text())["runs"] if r["status"] == "failed"]
    assert [r["method"] for r in failed] == ["b"] and "bad thing" in failed[0]["error"]
    png = out / "curves-strong.png"
    assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"


def test_paired_differences_mark_intervals_that_exclude_zero(tmp_path):
    out = tmp_path / "out"
    runs = [RunSpec("strong", m, s, out / "strong" / m / f"seed{s}") for m in ("x", "srft") for s in (0, 1, 2)]
    # srft (the default reference when present): ID after 0.5, 0.6, 0.7; x: 0.6, 0.8, 0.9
    for s, (ref, acc) in enumerate(((0.5, 0.6), (0.6, 0.8), (0.7, 0.9))):
        fake_run(runs[3 + s].run_dir, 0.3, ref, 0.2, 0.9, wall=10)
        fake_run(runs[s].run_dir, 0.3, acc, 0.2, 0.9, wall=10)
    meta = {"suite": "mini", "seeds": [0, 1, 2], "regimes": {"strong": []}}
    doc = build_report(out, runs, meta, plots=False)
    # differences 0.1, 0.2, 0.2: mean 0.1667; std sqrt((0.0667^2 + 2 * 0.0333^2) / 2) = 0.05774;
    # half width 4.3027 * 0.05774 / sqrt(3) = 4.3027 * 0.03333 = 0.1434 -> [0.0232, 0.3101], excludes 0
    d = doc["differences"]["strong"]["x"]
    assert doc["reference"] == "srft" and d["seeds"] == [0, 1, 2]
    assert d["id_after"]["mean"] == pytest.approx(1 / 6)
    assert d["id_after"]["ci95"] == pytest.approx([1 / 6 - 0.143422, 1 / 6 + 0.143422], abs=1e-5)
    assert d["id_after"]["excludes_0"] and not d["ood_after"]["excludes_0"]  # OOD: equal, 0 [0, 0]
    md = (out / "compare.md").read_text()
    assert "Paired differences against `srft`" in md
    assert "| x | 3 | +0.167 [+0.023, +0.310] * | +0.000 [+0.000, +0.000] |" in md
    assert json.loads((out / "compare.json").read_text())["differences"]["strong"]["x"]["id_after"]["n"] == 3
    # another reference: srft - x, the same interval mirrored; one seed pair has no interval
    doc = build_report(out, runs, meta, plots=False, reference="x")
    assert doc["differences"]["strong"]["srft"]["id_after"]["ci95"][1] == pytest.approx(-0.023245, abs=1e-5)
    doc = build_report(out, runs[:1] + runs[3:4], {**meta, "seeds": [0]}, plots=False)
    assert doc["differences"]["strong"]["x"]["id_after"]["ci95"] is None
    assert "| x | 1 | +0.100 | +0.000 | +0.000 |" in (out / "compare.md").read_text()
    with pytest.raises(ValueError, match="reference method 'nope'"):
        build_report(out, runs, meta, plots=False, reference="nope")


def test_t_quantiles():
    from srft.compare.report import mean_ci, t975

    # tabulated t(0.975, df): 12.706 (1), 4.303 (2), 2.228 (10), 2.042 (30); expansion 2.0395 (31), 1.9799 (120)
    assert [round(t975(d), 3) for d in (1, 2, 10, 30)] == [12.706, 4.303, 2.228, 2.042]
    assert t975(31) == pytest.approx(2.039513, abs=1e-5) and t975(120) == pytest.approx(1.979930, abs=1e-5)
    assert mean_ci([1.0])["ci95"] is None
    # 1, 3: mean 2, std sqrt(2), half width 12.7062 * sqrt(2) / sqrt(2) = 12.7062
    assert mean_ci([1.0, 3.0])["ci95"] == pytest.approx([2 - 12.7062047, 2 + 12.7062047])


def test_formatting_helpers():
    assert mean_std([1.0]) == {"mean": 1.0, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}
    assert [fmt_tokens(x) for x in (512, 45_600, 1_234_000, 250_000_000)] == ["512", "45.6k", "1.23M", "250M"]
    assert [fmt_duration(x) for x in (42, 252, 3723, None)] == ["42 s", "4:12", "1:02:03", "–"]


def test_report_only_without_a_plan_scans_the_run_directories(tmp_path, capsys):
    from srft.cli import main

    fake_run(tmp_path / "strong" / "x" / "seed0", 0.1, 0.2, 0.0, 0.3, wall=5)
    assert main(["compare", "--report-only", str(tmp_path), "--reference", "y"]) == 2
    assert "--reference y: not among the compared methods (x)" in capsys.readouterr().err
    assert main(["compare", "--report-only", str(tmp_path)]) == 0
    assert "| x | 0.100 | 0.200 |" in capsys.readouterr().out
    assert main(["compare", "--report-only", str(tmp_path / "none")]) == 2


def test_cli_rejects_unknown_methods_and_dry_runs(tmp_path, capsys):
    from srft.cli import main

    assert main(["compare", "quick", "--methods", "srft,nope", "--out", str(tmp_path)]) == 2
    assert "unknown method 'nope' for suite 'quick'; valid: sft, dft" in capsys.readouterr().err
    assert main(["compare", "quick", "--methods", "grpo", "--seeds", "3", "--dry-run", "--out", str(tmp_path),
                 "run.steps=2"]) == 0
    out = capsys.readouterr().out
    assert out.count("-m srft train --preset grpo") == 2  # strong and weak
    assert "run.steps=2" in out and "run.seed=3" in out and "model.base_steps=600" in out
    assert not (tmp_path / "plan.json").exists()  # a dry run writes nothing


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_compare_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    from srft.cli import main

    out = tmp_path / "cmp"
    args = ["compare", "quick", "--methods", "sft,grpo", "--seeds", "0", "--regimes", "strong", "--out", str(out),
            "run.steps=2", "rollout.prompts_per_step=2", "rollout.n=2", "data.test_size=4",
            "data.train_size=20", "run.eval_k=1", "model.threads=1",
            "run.plots=false", f"model.path={tiny_model_dir}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| sft |" in printed and "| grpo |" in printed
    for m in ("sft", "grpo"):
        run_dir = out / "strong" / m / "seed0"
        assert (run_dir / "eval.json").exists() and (run_dir / "model").is_dir()
        assert json.loads((run_dir / "run_status.json").read_text())["status"] == "ok"
    doc = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in doc["runs"]] == ["ok", "ok"] and all(r["gen_tokens"] for r in doc["runs"])
    assert (out / "curves-strong.png").exists()
    # again: nothing reruns
    assert main(args) == 0
    assert "2 of 2 runs already finished: skipped" in capsys.readouterr().out


def test_a_file_task_run_needs_the_default_base_model():
    from srft.compare.plan import base_model_recipes

    cfg = load_config("srft", None, ["data.task=file", "data.train_file=x.parquet"])
    run = RunSpec("r", "m", 0, Path("out"))
    assert base_model_recipes([run], {run.key: cfg}) == [("~/.cache/srft", "addition", 0, 1000)]
