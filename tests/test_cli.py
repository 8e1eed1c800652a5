"""The command-line convention: section.key=value on every command, removed flags named, one list syntax."""

import json

import pytest

from srft.cli import REMOVED_FLAGS, main


def _error_line(err: str) -> str:
    """The single ``error:`` line of stderr (no traceback, no usage block)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- removed flags

REMOVED = [(cmd, flag, key) for cmd, table in REMOVED_FLAGS.items() for flag, key in table.items()]


@pytest.mark.parametrize("command, flag, key", REMOVED, ids=[f"{c}{f}" for c, f, _ in REMOVED])
def test_removed_flag_names_its_key(command, flag, key, capsys):
    assert main([command, flag, "1"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line.startswith(f"error: srft {command}: {flag}") or f"srft {command}: " in line
    if key is not None:
        assert f"{flag} is now the config key {key} (configuration is given as section.key=value)" in line
    else:
        assert "positional" in line


def test_removed_flag_with_equals_and_after_positionals(capsys):
    assert main(["evaluate", "data.test_size=2", "--k=4"]) == 2
    assert "--k is now the config key run.eval_k=K" in _error_line(capsys.readouterr().err)
    assert main(["compare", "quick", "--dry-run", "--set", "run.steps=2"]) == 2
    assert "srft compare SUITE section.key=value" in _error_line(capsys.readouterr().err)


def test_flags_kept_where_they_are_not_configuration(tmp_path, capsys):
    # export keeps --n (rows to write), fetch-model keeps --cache-dir and --dtype
    out = tmp_path / "rows.jsonl"
    assert main(["export", "--split", "test_id", "--n", "3", "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    assert main(["fetch-model", "no-such-model", "--cache-dir", str(tmp_path), "--dtype", "float32"]) == 2
    assert "--cache-dir is now" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["export", "run.steps=3", "--out", "x.jsonl"], "srft export: run.steps does not apply to this command; "
                                                     "it reads data.task, data.seed"),
    (["build-base", "optim.lr=1"], "srft build-base: optim.lr does not apply"),
    (["evaluate", "objective.sft_coef=1"], "srft evaluate: objective.sft_coef does not apply"),
    (["benchmark", "f.parquet", "rollout.n=2"], "srft benchmark: rollout.n does not apply"),
    (["analyze", "d", "data.train_size=3"], "srft analyze: data.train_size does not apply"),
    (["export", "data.seed=x", "--out", "x.jsonl"], "data.seed: expected int"),
    (["build-base", "stray", "--out", "d"], "unexpected argument 'stray'"),
    (["benchmark"], "give one or more benchmark files"),
    (["compare", "quick", "other", "--dry-run"], "one suite, got quick, other"),
    (["analyze", "a", "b"], "one COMPARE_DIR, got a b"),
    (["analyze", "a", "--models", "b", "c"], "either COMPARE_DIR or --models"),
])
def test_bad_keys_and_positionals(argv, fragment, capsys):
    assert main(argv) == 2
    assert fragment in _error_line(capsys.readouterr().err)


def test_help_says_the_convention_once(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "section.key=value" in out and "comma-separated" in out and "shell globs" in out
    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "override the protocol's values only when given on the command line" in out


# --------------------------------------------------------------------------- each command's keys


def _small_eval(model_dir):
    return [f"model.path={model_dir}", "data.test_size=3", "run.eval_k=2", "data.max_response_tokens=8",
            "model.threads=1", "model.device=cpu"]


def test_evaluate_reads_its_keys(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", *_small_eval(tiny_model_dir), "run.eval_temperature=0.5", "data.seed=7",
                 "model.dtype=bfloat16", "data.max_prompt_tokens=40", "--split", "test_id,test_ood",
                 "--out", str(out)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if "avg@2" in line]
    assert [line.split()[0] for line in printed] == ["test_id", "test_ood"]
    res = json.loads(out.read_text())
    assert res["k"] == 2 and res["temperature"] == 0.5 and set(res["splits"]) == {"test_id", "test_ood"}
    for split, r in res["splits"].items():
        assert r["n_prompts"] == 3 and len(r["samples"]) == 3
        # at most data.max_response_tokens: the tiny model rarely stops on its own
        assert r["mean_len"] <= 8
    # one split, a different generator seed: other prompts
    assert main(["evaluate", *_small_eval(tiny_model_dir), "--split", "test_id", "data.seed=8",
                 "--out", str(tmp_path / "other.json")]) == 0
    other = json.loads((tmp_path / "other.json").read_text())
    assert list(other["splits"]) == ["test_id"]
    assert ([s["answer"] for s in other["splits"]["test_id"]["samples"]]
            != [s["answer"] for s in res["splits"]["test_id"]["samples"]])


def test_evaluate_bad_split_and_preset(tiny_model_dir, capsys):
    assert main(["evaluate", *_small_eval(tiny_model_dir), "--split", "test_id,train_x"]) == 2
    assert "has no split train_x; its test splits: test_id, test_ood" in _error_line(capsys.readouterr().err)
    assert main(["evaluate", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in _error_line(capsys.readouterr().err)


def test_evaluate_data_files(tiny_model_dir, tmp_path, capsys):
    test = tmp_path / "test.parquet"
    assert main(["export", "--split", "test_id", "--n", "5", "--out", str(test)]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", *_small_eval(tiny_model_dir), "data.task=file", f"data.test_id_file={test}",
                 "data.test_size=0", "data.verifier_workers=1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["task"] == "file" and list(res["splits"]) == ["test_id"] and res["splits"]["test_id"]["n_prompts"] == 5
    capsys.readouterr()
    assert main(["evaluate", *_small_eval(tiny_model_dir), "data.task=file", f"data.test_id_file={test}",
                 "--split", "test_ood"]) == 2
    assert "has no split test_ood; its test splits: test_id" in _error_line(capsys.readouterr().err)
    assert main(["evaluate", "data.task=file"]) == 2
    assert "data.test_id_file=PATH" in _error_line(capsys.readouterr().err)
    # training still needs its file
    assert main(["train", "data.task=file", f"data.test_id_file={test}", f"model.path={tiny_model_dir}",
                 f"run.out_dir={tmp_path}/run"]) == 2
    assert "data.task=file needs data.train_file" in _error_line(capsys.readouterr().err)


def test_hub_id_as_model_path(capsys):
    assert main(["evaluate", "model.path=Qwen/Qwen2.5-Math-1.5B"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "looks like a Hugging Face Hub id" in line and "does not download" in line
    assert "huggingface-cli download Qwen/Qwen2.5-Math-1.5B --local-dir DIR" in line and "srft fetch-model" in line


def test_hub_id_message_only_for_hub_like_paths(tmp_path, capsys):
    assert main(["evaluate", f"model.path={tmp_path / 'nowhere'}"]) == 2
    line = _error_line(capsys.readouterr().err)
    assert "does not exist" in line and "Hub" not in line


def test_benchmark_protocol_values_only_when_given(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from srft import rewards
    from srft.data.loading import export_rows
    from srft.evaluation import benchmarks

    bench = tmp_path / "math.jsonl"
    export_rows([{"prompt": "2+3", "answer": "5", "data_source": "math"}], bench, split="test")
    seen, verifiers = [], []
    real_verifier = rewards.Verifier

    def spy_verifier(**kw):
        verifiers.append(kw)
        return real_verifier(**kw)

    def fake_run(engine, tok, rows, verifier, protocol, template):
        seen.append((protocol.max_new_tokens, protocol.temperature, template))
        return {"benchmarks": {}}, []

    monkeypatch.setattr(rewards, "Verifier", spy_verifier)

    monkeypatch.setattr(benchmarks, "run_benchmarks", fake_run)
    monkeypatch.setattr(benchmarks, "format_table", lambda summary: "table")
    common = [str(bench), f"model.path={tiny_model_dir}", "model.threads=1"]
    assert main(["benchmark", *common, "--protocol", "quick"]) == 0
    quick = benchmarks.PROTOCOLS["quick"]
    assert seen[-1][:3] == (quick.max_new_tokens, quick.temperature, "auto")
    # given on the command line, also after a flag
    assert main(["benchmark", *common, "--protocol", "quick", "data.max_response_tokens=7",
                 "run.eval_temperature=0.25", "data.template=plain", "data.verifier_workers=1",
                 "data.verifier_timeout=3"]) == 0
    assert seen[-1] == (7, 0.25, "plain")
    assert (verifiers[-1]["workers"], verifiers[-1]["timeout_s"]) == (1, 3.0)
    assert main(["benchmark", "--limit", "1", *common]) == 0  # files after a flag


def test_build_base_reads_its_keys(tmp_path, monkeypatch, capsys):
    from srft.models import base_model

    calls = []
    monkeypatch.setattr(base_model, "ensure_base_model",
                        lambda cache, **kw: calls.append(("cache", str(cache), kw)) or "cached")
    monkeypatch.setattr(base_model, "build_base_model", lambda out, **kw: calls.append(("out", str(out), kw)) or "built")
    assert main(["build-base", "model.base_seed=3", "model.base_steps=20", f"model.base_cache_dir={tmp_path}",
                 "--rebuild"]) == 0
    kind, where, kw = calls[-1]
    assert (kind, where, kw["seed"], kw["config"].steps, kw["rebuild"], kw["task_name"]) == (
        "cache", str(tmp_path), 3, 20, True, "addition")
    assert main(["build-base", "--out", str(tmp_path / "b"), "data.task=addition"]) == 0
    assert calls[-1][0] == "out" and calls[-1][2]["seed"] == 0 and calls[-1][2]["config"].steps == 1000
    assert capsys.readouterr().out.split() == ["cached", "built"]


def test_export_reads_its_keys(tmp_path):
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    assert main(["export", "data.seed=1", "--split", "train", "--n", "4", "--out", str(a)]) == 0
    assert main(["export", "--split", "train", "--n", "4", "--out", str(b), "data.seed=1"]) == 0
    assert main(["export", "--split", "train", "--n", "4", "--out", str(c), "data.seed=2"]) == 0
    assert a.read_text() == b.read_text() != c.read_text()


def test_analyze_reads_its_keys(tmp_path, monkeypatch):
    from srft.analysis import report

    seen = []
    monkeypatch.setattr(report, "run_cli", lambda args: seen.append(args) or 0)
    assert main(["analyze", "--models", "base", "m1", "m2", "data.task=addition", "data.seed=5",
                 "data.max_response_tokens=12", "run.seed=2", "model.device=cpu", "model.threads=1",
                 "--only", "shift,map"]) == 0
    a = seen[-1]
    assert (a.models, a.compare_dir, a.task, a.data_seed, a.max_new_tokens, a.seed, a.device, a.threads, a.only) == (
        ["base", "m1", "m2"], None, "addition", 5, 12, 2, "cpu", 1, "shift,map")
    assert main(["analyze", "run.seed=4", str(tmp_path), "--n-prompts", "3"]) == 0
    a = seen[-1]
    assert (a.compare_dir, a.models, a.seed, a.data_seed, a.max_new_tokens) == (str(tmp_path), None, 4, 1234, 96)


def test_analyze_line_reproduces_with_keys():
    from types import SimpleNamespace

    from srft.analysis.report import _argv

    args = SimpleNamespace(models=["b", "m"], compare_dir=None, task="addition", data_seed=5, max_new_tokens=12,
                           out=None, n_prompts=4, measure="prob", threshold=None, only="map", seed=1, smooth=None)
    line = _argv(args)
    assert "data.seed=5" in line and "run.seed=1" in line and not any(x.startswith("--data") for x in line)


def test_compare_positional_overrides_reach_every_run(tmp_path, capsys):
    # overrides before the suite, between flags and after them; lists comma-separated
    assert main(["compare", "run.steps=3", "quick", "--methods", "sft,grpo", "rollout.n=2", "--seeds", "0,1",
                 "--regimes", "strong", "--dry-run", "--out", str(tmp_path), "run.eval_k=1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "-m srft train" in line]
    assert len(lines) == 4  # 2 methods x 2 seeds x 1 regime
    for line in lines:
        assert "run.steps=3" in line and "rollout.n=2" in line and "run.eval_k=1" in line
    assert sum("--preset grpo" in line for line in lines) == 2
    assert {line.split("run.seed=")[1].split()[0] for line in lines} == {"0", "1"}
    assert main(["compare", "quick", "run.nope=1", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "unknown key 'run.nope'" in _error_line(capsys.readouterr().err)


def test_list_values_comma_separated(tmp_path, capsys):
    assert main(["config", "run.report_to=tensorboard,wandb"]) == 0
    assert "- tensorboard\n  - wandb" in capsys.readouterr().out
