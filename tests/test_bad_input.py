"""Bad input gets one line, ``error: ...``, naming the problem and the fix; exit code 2; no traceback;
no run directory. Also: the README's data-file command with the built-in base model."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srft.cli import main
from srft.config import Config, ConfigError, load_config

# should a bad input pass unnoticed, these keep the run that follows short
SMALL = ["run.steps=0", "data.test_size=2", "run.eval_k=1", "data.verifier_workers=1", "run.plots=false"]

ROWS = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "demonstration": f"{a}+{b}={a + b} #### {a + b}"}
        for a, b in [(12, 30), (7, 8), (45, 11), (3, 99)]]


def _one_error_line(err: str, *fragments: str) -> str:
    """The single ``error:`` line of stderr; it holds every fragment and there is no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# --------------------------------------------------------------------------- bad data files


def _parquet(path: Path, rows=ROWS, **kw) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, **kw)
    return path


def _corrupt_parquet(path: Path) -> Path:
    """A parquet file whose footer is intact but whose prompt column's compressed data is zeroed."""
    rows = [{"prompt": f"question {i}: " + "what is the sum of these digits? " * 8, "answer": str(i)} for i in range(200)]
    _parquet(path, rows, compression="snappy", use_dictionary=False)
    col = pq.ParquetFile(path).metadata.row_group(0).column(0)
    assert not col.has_dictionary_page
    start, size = col.data_page_offset, col.total_compressed_size
    data = bytearray(path.read_bytes())
    data[start + size // 3: start + size - 8] = bytes(size - 8 - size // 3)
    path.write_bytes(bytes(data))
    return path


def _bad_file(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """(a bad data file, a fragment its error names)."""
    if kind == "empty-parquet":
        (p := tmp_path / "empty.parquet").write_bytes(b"")
        return p, "not a readable parquet file (0 bytes)"
    if kind == "truncated-parquet":
        good = _parquet(tmp_path / "good.parquet").read_bytes()
        (p := tmp_path / "truncated.parquet").write_bytes(good[: len(good) // 2])
        return p, "no parquet footer"
    if kind == "text-as-parquet":
        (p := tmp_path / "text.parquet").write_text("prompt,answer\n1+1=,2\n")
        return p, "not a readable parquet file"
    if kind == "corrupt-parquet":
        return _corrupt_parquet(tmp_path / "corrupt.parquet"), "corrupt parquet data"
    if kind == "latin1-jsonl":
        p = tmp_path / "latin1.jsonl"
        p.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + '{"prompt": "caf\xe9 1+1=", "answer": "2"}\n'.encode("latin-1"))
        return p, "line 2 is not UTF-8 text"
    if kind == "utf16-jsonl":
        (p := tmp_path / "utf16.jsonl").write_bytes((json.dumps(ROWS[0]) + "\n").encode("utf-16"))
        return p, "UTF-16"
    if kind == "malformed-jsonl":
        (p := tmp_path / "malformed.jsonl").write_text(json.dumps(ROWS[0]) + '\n{"prompt": "1+1=", "answer": \n')
        return p, "line 2 is not valid JSON"
    if kind == "malformed-json":
        (p := tmp_path / "malformed.json").write_text('[{"prompt": "1+1=", "answer": "2"},\n {"prompt": ')
        return p, "not valid JSON"
    if kind == "latin1-json":
        (p := tmp_path / "latin1.json").write_bytes('[{"prompt": "caf\xe9", "answer": "2"}]'.encode("latin-1"))
        return p, "line 1 is not UTF-8 text"
    if kind == "no-answers":
        p = tmp_path / "no_answers.jsonl"
        p.write_text("".join(json.dumps({"prompt": r["prompt"], "demonstration": r["demonstration"]}) + "\n"
                             for r in ROWS))
        return p, "none of the 4 rows is usable (4 no answer"
    if kind == "empty-jsonl":
        (p := tmp_path / "empty.jsonl").write_text("")
        return p, "holds no rows"
    if kind == "directory":
        (p := tmp_path / "dir.parquet").mkdir()
        return p, "is a directory"
    if kind == "missing":
        return tmp_path / "missing.parquet", "does not exist"
    raise AssertionError(kind)


BAD_FILES = ["empty-parquet", "truncated-parquet", "text-as-parquet", "corrupt-parquet", "latin1-jsonl",
             "utf16-jsonl", "malformed-jsonl", "malformed-json", "latin1-json", "no-answers", "empty-jsonl",
             "directory", "missing"]


@pytest.mark.parametrize("kind", BAD_FILES)
def test_train_bad_train_file(kind, tiny_model_dir, tmp_path, capsys):
    bad, fragment = _bad_file(kind, tmp_path)
    out = tmp_path / "runs"
    code = main(["train", f"model.path={tiny_model_dir}", "data.task=file", f"data.train_file={bad}",
                 "run.progress=false", f"run.out_dir={out}/x", *SMALL])
    assert code == 2
    _one_error_line(capsys.readouterr().err, f"data.train_file {bad}", fragment)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["empty-parquet", "corrupt-parquet", "latin1-jsonl", "malformed-jsonl"])
def test_train_bad_test_file(kind, tiny_model_dir, tmp_path, capsys):
    good = _parquet(tmp_path / "train.parquet")
    bad, fragment = _bad_file(kind, tmp_path)
    out = tmp_path / "runs"
    code = main(["train", f"model.path={tiny_model_dir}", "data.task=file", f"data.train_file={good}",
                 f"data.test_ood_file={bad}", "run.progress=false", f"run.out_dir={out}/x", *SMALL])
    assert code == 2
    _one_error_line(capsys.readouterr().err, f"data.test_ood_file {bad}", fragment)
    assert not out.exists()


@pytest.mark.parametrize("kind", BAD_FILES)
def test_benchmark_bad_file(kind, tiny_model_dir, tmp_path, capsys):
    good = _parquet(tmp_path / "math.parquet")
    bad, fragment = _bad_file(kind, tmp_path)
    fragment = fragment.replace("does not exist", "no such file")  # the loader's own word for it
    assert main(["benchmark", str(good), str(bad), f"model.path={tiny_model_dir}"]) == 2
    _one_error_line(capsys.readouterr().err, f"benchmark file {bad}", fragment)


def test_loader_names_the_problem(tmp_path):
    """The same messages from the library, without a label."""
    from srft.data import DataError, load_rows

    for kind in BAD_FILES:
        (tmp_path / kind).mkdir()
        bad, fragment = _bad_file(kind, tmp_path / kind)
        fragment = fragment.replace("does not exist", "no such file")
        with pytest.raises(DataError) as e:
            load_rows(bad)
        assert str(e.value).startswith(f"{bad}: ") and fragment in str(e.value) and "\n" not in str(e.value)


def test_benchmark_option_ranges(tmp_path, capsys):
    good = _parquet(tmp_path / "math.parquet")
    for option, value in [("data.verifier_timeout=", "0"), ("data.verifier_workers=", "0"),
                          ("run.eval_temperature=", ".nan"), ("data.max_response_tokens=", "0")]:
        assert main(["benchmark", str(good), f"model.path={tmp_path / 'nowhere'}", option + value]) == 2
        _one_error_line(capsys.readouterr().err, option[:-1], value.strip("."))
    for option, value in [("--limit", "-1"), ("--batch", "0")]:
        assert main(["benchmark", str(good), f"model.path={tmp_path / 'nowhere'}", option, value]) == 2
        _one_error_line(capsys.readouterr().err, option, value)


# --------------------------------------------------------------------------- bad config values


@pytest.mark.parametrize("override, fragment", [
    ("optim.lr=.nan", "optim.lr must be > 0 and finite, got nan"),
    ("optim.lr=.inf", "optim.lr must be > 0 and finite, got inf"),
    ("optim.lr=0", "optim.lr must be > 0 and finite, got 0.0"),
    ("rollout.temperature=.nan", "rollout.temperature must be > 0 and finite, got nan"),
    ("objective.sft_coef=.nan", "objective.sft_coef must be >= 0 and finite, got nan"),
    ("objective.sft_coef=-0.5", "objective.sft_coef must be >= 0 and finite, got -0.5"),
    ("data.verifier_timeout=0", "data.verifier_timeout must be > 0 and finite, got 0.0"),
    ("data.verifier_workers=0", "data.verifier_workers must be > 0, got 0"),
    ("run.save_every=-5", "run.save_every must be >= 0, got -5"),
    ("data.test_size=-3", "data.test_size must be >= 0, got -3"),
    ("run.eval_every=-1", "run.eval_every must be >= 0, got -1"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be >= 0, got -1"),
    ("optim.grad_clip=.nan", "optim.grad_clip must be >= 0 (inf allowed), got nan"),
    ("optim.weight_decay=-.inf", "optim.weight_decay must be >= 0 and finite, got -inf"),
    ("rollout.top_p=1.5", "rollout.top_p must be in (0, 1], got 1.5"),
    ("run.seed=-1", "run.seed must be in [0, 4294967295], got -1"),
    ("optim.betas=[0.9, 1.0]", "optim.betas must be two numbers in [0, 1), got [0.9, 1.0]"),
    ("optim.betas=[a, b]", "optim.betas must be two numbers in [0, 1)"),
    ("objective.entropy_coef=.inf", "objective.entropy_coef must be a finite number, got inf"),
    ("run.out_dir={out}/{methd}", "only {method} and {time} are filled in"),
    ("data.train_file=/tmp/x.parquet", "data.train_file is set but data.task is 'addition'"),
])
def test_bad_config_value(override, fragment, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["train", override.replace("{out}", str(out)), "run.progress=false"]
    if not override.startswith("run.out_dir="):
        args.append(f"run.out_dir={out}/x")
    # a model path that does not exist: should a bad value pass, the run stops there, not after training
    args.append(f"model.path={tmp_path}/no-model")
    assert main(args) == 2
    line = _one_error_line(capsys.readouterr().err, fragment)
    assert override.split("=")[0] in line
    assert not out.exists()


def test_bad_device_names_the_key(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", f"model.path={tiny_model_dir}", "model.device=gpu", "run.progress=false",
                 f"run.out_dir={out}/x", *SMALL]) == 2
    _one_error_line(capsys.readouterr().err, "model.device='gpu' is not a device")
    assert not out.exists()


def _ranged_fields():
    for sect in dataclasses.fields(Config):
        for f in dataclasses.fields(getattr(Config(), sect.name)):
            if "range" in f.metadata:
                yield sect.name, f


def test_every_float_key_rejects_nan_and_every_count_rejects_negatives():
    fields = list(_ranged_fields())
    assert len(fields) > 40
    for sect, f in fields:
        key = f"{sect}.{f.name}"
        rng = f.metadata["range"]
        lo = float(rng[1:].split(",")[0])
        bad = [".nan"] if isinstance(f.default, float) else []
        if lo > -math.inf:  # just below the range: the bound itself when it is excluded
            below = lo if rng[0] == "(" else lo - (1 if isinstance(f.default, int) else 0.5)
            bad.append(str(int(below)) if isinstance(f.default, int) else str(below))
        for value in bad:
            with pytest.raises(ConfigError) as e:
                load_config("srft", None, [f"{key}={value}"])
            assert f"{key} must be" in str(e.value) and "got" in str(e.value), str(e.value)


def test_inf_only_where_the_key_allows_it():
    cfg = load_config("srft", None, ["optim.grad_clip=.inf", "objective.clip_eps_high=.inf",
                                     "objective.entropy_coef=-0.01"])
    assert math.isinf(cfg.optim.grad_clip) and math.isinf(cfg.objective.clip_eps_high)
    allowed = {f"{s}.{f.name}" for s, f in _ranged_fields() if f.metadata["range"].endswith("inf]")}
    assert allowed == {"optim.grad_clip", "objective.clip_eps", "objective.clip_eps_high"}


# --------------------------------------------------------------------------- the README's data-file command


def test_readme_file_task_uses_the_default_builtin_base_model(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`srft train data.task=file ...` with model.path=null trains from the built-in addition base model."""
    import srft.models.base_model as base_model

    asked = []

    def fake_ensure_base_model(cache_dir, task_name="addition", seed=0, progress=True, config=None, **kw):
        asked.append(task_name)
        return tiny_model_dir

    monkeypatch.setattr(base_model, "ensure_base_model", fake_ensure_base_model)
    train, test = tmp_path / "add_train.parquet", tmp_path / "add_test.parquet"
    assert main(["export", "data.task=addition", "--split", "train", "--n", "32", "--out", str(train)]) == 0
    assert main(["export", "data.task=addition", "--split", "test_id", "--n", "8", "--out", str(test)]) == 0
    capsys.readouterr()
    out = tmp_path / "runs" / "readme"
    assert main(["train", "data.task=file", f"data.train_file={train}", f"data.test_id_file={test}",
                 f"model.base_cache_dir={tmp_path}/cache", "run.steps=1", "rollout.prompts_per_step=2", "rollout.n=2",
                 "data.test_size=2", "run.eval_k=1", "data.max_response_tokens=48", "data.verifier_workers=1",
                 "optim.micro_batch=8", "run.plots=false", "run.progress=false", f"run.out_dir={out}"]) == 0
    assert asked == ["addition"]
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if "base model" in line]
    assert len(notes) == 1 and "task 'file'" in notes[0] and "'addition'" in notes[0], err
    assert (out / "model" / "config.json").exists()


def test_builtin_and_plugin_tasks_keep_their_own_base_model():
    from srft.tasks import base_model_task

    assert base_model_task("file") == "addition"
    assert base_model_task("expression") == "expression"
    assert base_model_task("my_tasks.py:MyTask") == "my_tasks.py:MyTask"


def test_base_task_names_the_base_model_outright():
    from srft.tasks import base_model_task

    assert base_model_task("expression", "addition") == "addition"
    assert base_model_task("file", "expression") == "expression"
    assert base_model_task("my_tasks.py:MyTask", "addition") == "addition"
    assert base_model_task("expression", None) == "expression"


@pytest.mark.parametrize("value", ["file", "my_tasks.py:MyTask", "additon"])
def test_base_task_must_be_a_builtin_task(value):
    with pytest.raises(ConfigError, match=r"model.base_task must be a built-in task \(addition, .*\) or null"):
        load_config("srft", None, [f"model.base_task={value}"])


def test_base_task_reaches_the_base_model_build(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """`data.task=expression model.base_task=addition`: the addition base model, and no note about it."""
    import srft.models.base_model as base_model
    from srft.models.loading import resolve_model_path

    asked = []
    monkeypatch.setattr(base_model, "ensure_base_model",
                        lambda cache, task_name="addition", **kw: asked.append(task_name) or tiny_model_dir)
    cfg = load_config("srft", None, ["data.task=expression", "model.base_task=addition",
                                     f"model.base_cache_dir={tmp_path}"])
    assert resolve_model_path(cfg.model, cfg.data.task, progress=False) == tiny_model_dir
    assert asked == ["addition"]
    assert "base model" not in capsys.readouterr().err  # asked for, so nothing to point out
    # the comparison builds the same recipe before its runs
    from srft.compare.plan import RunSpec, base_model_recipes

    run = RunSpec(regime="r", method="m", seed=0, run_dir=tmp_path / "run", overrides=[])
    assert [r[1] for r in base_model_recipes([run], {run.key: cfg})] == ["addition"]
