"""Nothing srft reads back from a run directory runs code, and a malformed file is one line (issue 25).

Every planted file carries a payload that creates a marker file if anything unpickles or
constructs it; the tests check that the marker never appears, and that the command falls
back to an older checkpoint or ends with one line. ``test_the_payload_is_live`` shows the
payload does create the marker when loaded the unsafe way, so its absence means something.
"""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from srft import rundir
from srft.cli import main
from srft.config import load_config
from srft.training import checkpoint as ckpt_mod
from srft.training.checkpoint import load_checkpoint
from srft.training.loop import train
from srft.training.safe_load import UnsafeFileError, load_torch_file, read_shard_metadata


class Payload:
    """Unpickling it calls ``os.system`` (the issue's reproduction): the marker file appears."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _cfg(model_dir, out, *extra):
    return load_config("srft", None, [
        f"model.path={model_dir}", "run.steps=2", "run.eval_every=0", "run.save_every=1", "run.eval_k=1",
        "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2", "data.train_size=20",
        "data.test_size=2", "data.max_response_tokens=16", "data.too_long=truncate", "model.threads=1",
        "run.keep_checkpoints=2", f"run.out_dir={out}", *extra])


@pytest.fixture(scope="module")
def made_runs(tiny_model_dir, tmp_path_factory):
    """A full and a sharded run of 2 steps, with checkpoints at steps 1 and 2 (copied by each test)."""
    root = tmp_path_factory.mktemp("made")
    return {fmt: train(_cfg(tiny_model_dir, root / fmt, f"run.checkpoint_format={fmt}")) for fmt in ("full", "sharded")}


@pytest.fixture
def run(made_runs, tmp_path):
    def copy(fmt="full"):
        return shutil.copytree(made_runs[fmt], tmp_path / f"run-{fmt}")
    return copy


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a planted payload ran"


@pytest.fixture
def model(tiny_model_dir):
    from srft.models.loading import load_model_and_tokenizer

    return load_model_and_tokenizer(load_config("srft", None, [f"model.path={tiny_model_dir}"]).model)[0]


def _ckpt(run_dir, step):
    return run_dir / rundir.CHECKPOINTS / rundir.step_dir_name(step)


def _resume(run_dir, capsys, steps=3):
    """``srft train --resume``: its exit code and stderr; ``_resumed_at`` reads its stdout."""
    capsys.readouterr()
    rc = main(["train", "--resume", str(run_dir), f"run.steps={steps}", "run.progress=true"])
    out, err = capsys.readouterr()
    _resume.out = out
    return rc, err


def _resumed_at(run_dir) -> bool:
    return f"resumed {run_dir} at step 1" in _resume.out


def test_the_payload_is_live(tmp_path):
    live = tmp_path / "live"
    torch.save({"step": 1, "optimizer": Payload(live)}, tmp_path / "trainer.pt")
    torch.load(tmp_path / "trainer.pt", weights_only=False)  # how earlier versions loaded it
    assert live.exists()


# --------------------------------------------------------------------------- trainer.pt, model_state.pt
@pytest.mark.parametrize("name", ["trainer.pt", "model_state.pt"])
def test_a_planted_file_in_the_newest_checkpoint_is_skipped_for_the_older_one(run, marker, capsys, name):
    b = run()
    planted = {"step": 2, "optimizer": Payload(marker)} if name == "trainer.pt" else {"w": Payload(marker)}
    torch.save(planted, _ckpt(b, 2) / name)
    rc, err = _resume(b, capsys)
    assert rc == 0
    warning = next(line for line in err.splitlines() if line.startswith("warning: checkpoint"))
    assert "step-000002" in warning and name in warning and "posix.system" in warning
    assert "srft convert-checkpoint" in warning
    assert _resumed_at(b)


def test_planted_files_in_every_checkpoint_are_one_line_naming_the_conversion(run, marker, capsys):
    b = run()
    for step in (1, 2):
        torch.save({"step": step, "optimizer": Payload(marker)}, _ckpt(b, step) / "trainer.pt")
    rc, err = _resume(b, capsys)
    last = err.strip().splitlines()[-1]
    assert rc == 1 and "Traceback" not in err
    assert last.startswith(f"error: no usable checkpoint in {b}") and f"srft convert-checkpoint {b}" in last


def test_the_unsafe_file_is_refused_before_it_is_read(tmp_path, marker):
    torch.save({"x": Payload(marker)}, tmp_path / "trainer.pt")
    with pytest.raises(UnsafeFileError, match=r"asks to import posix\.system, which srft never saves"):
        load_torch_file(tmp_path / "trainer.pt")


# --------------------------------------------------------------------------- malformed but well-formed
def _edit_trainer(path, edit):
    state = load_torch_file(path / "trainer.pt")
    edit(state)
    torch.save(state, path / "trainer.pt")


MALFORMED = {
    "the issue's: an int for the optimiser": (lambda s: s.update(optimizer=5), "optimizer is not an optimiser state"),
    "no step": (lambda s: s.pop("step"), "lacks step"),
    "a step that is text": (lambda s: s.update(step="two"), "step is 'two'"),
    "no RNG": (lambda s: s.pop("rng"), "lacks rng"),
    "a wrong RNG state": (lambda s: s["rng"].update(python=[3, [1, 2], None]), "the RNG state is not one"),
    "a list for the trainer state": (None, "holds a list"),
    "another model's optimiser": (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3, 3)),
                                  "exp_avg of 0 has shape (3, 3)"),
    "unknown parameters": (lambda s: s["optimizer"]["param_groups"][0]["params"].append(999), "999"),
    "methods' state not a dict": (lambda s: s.update(extra=[1]), "extra is a list"),
    "a method's state of the wrong type": (lambda s: s["extra"]["pool"].update(pool=[1]),
                                           "the methods' state (extra) does not load"),
    "a controller's number that is text": (lambda s: s["extra"]["weights"].update(log_sft="high"),
                                           "the methods' state (extra) does not load"),
    "a scheduler entry that shadows a method": (lambda s: s["scheduler"].update(step=1), "entry 'step'"),
    "a learning rate that is text": (lambda s: s["scheduler"].update(base_lrs=["x"]),
                                     "scheduler is not a learning-rate scheduler's state"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_trainer_state_falls_back_naming_the_problem(run, model, capsys, case):
    b = run()
    edit, expected = MALFORMED[case]
    if edit is None:
        torch.save([1, 2], _ckpt(b, 2) / "trainer.pt")
    else:
        _edit_trainer(_ckpt(b, 2), edit)
    capsys.readouterr()
    state = load_checkpoint(b, model)
    assert state["step"] == 1 and state["path"].name == "step-000001"
    err = capsys.readouterr().err
    assert "step-000002" in err and expected in err, err


def test_a_malformed_model_state_falls_back(run, model, capsys):
    b = run()
    torch.save({"model.embed_tokens.weight": [1.0, 2.0]}, _ckpt(b, 2) / "model_state.pt")
    capsys.readouterr()
    assert load_checkpoint(b, model)["step"] == 1
    assert "model_state.pt does not hold a dict of tensors" in capsys.readouterr().err


def test_the_issues_malformed_file_resumes_from_the_older_checkpoint(run, capsys):
    b = run()
    torch.save({"step": 1, "optimizer": 5}, _ckpt(b, 2) / "trainer.pt")
    rc, err = _resume(b, capsys)
    assert rc == 0 and "Traceback" not in err and "lacks scheduler" in err and _resumed_at(b)


def test_every_checkpoint_malformed_is_one_line(run, capsys):
    b = run()
    for step in (1, 2):
        _edit_trainer(_ckpt(b, step), lambda s: s.update(step=-1))
    rc, err = _resume(b, capsys)
    assert rc == 1 and err.strip().splitlines()[-1].startswith("error: no usable checkpoint")
    assert "convert-checkpoint" not in err.strip().splitlines()[-1]  # nothing to convert: a bad file


@pytest.mark.parametrize("content", [b"\xff\xfe\x00 not text", b"../../../../tmp\n"])
def test_a_bad_latest_pointer_is_ignored_for_the_newest_step(run, content):
    b = run()
    (b / rundir.CHECKPOINTS / rundir.LATEST).write_bytes(content)
    assert [p.name for p in rundir.checkpoint_candidates(b)] == ["step-000002", "step-000001"]


# --------------------------------------------------------------------------- what this version writes
def test_trainer_state_is_tensors_and_plain_data(made_runs):
    for fmt in ("full", "sharded"):
        path = _ckpt(made_runs[fmt], 2) / "trainer.pt"
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        state = torch.load(path, weights_only=True)  # no allow-list needed
        assert isinstance(state["rng"]["numpy"], list)


def test_an_earlier_versions_numpy_rng_state_still_resumes(run, capsys):
    """Earlier versions pickled np.random.get_state() (an array) and numpy numbers: still read, safely."""
    b = run()

    def legacy(state):
        name, keys, pos, has_gauss, gauss = state["rng"]["numpy"]
        state["rng"]["numpy"] = (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss)
        state["extra"]["weights"]["log_sft"] = np.float64(state["extra"]["weights"]["log_sft"])

    _edit_trainer(_ckpt(b, 2), legacy)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(_ckpt(b, 2) / "trainer.pt"))  # needs numpy
    rc, err = _resume(b, capsys)
    assert rc == 0 and "warning" not in err and f"resumed {b} at step 2" in _resume.out


def test_rng_state_round_trips_through_the_plain_form():
    np.random.seed(3)
    np.random.rand(5)
    saved = torch.load(_save_load(ckpt_mod.rng_state()), weights_only=True)
    expected = np.random.rand(3)
    np.random.seed(9)
    ckpt_mod.set_rng_state(saved)
    assert np.array_equal(np.random.rand(3), expected)


def _save_load(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_plain_data_refuses_what_it_cannot_make_plain():
    assert ckpt_mod.plain_data({"a": (np.float32(1.5), np.arange(2))}) == {"a": (1.5, [0, 1])}
    with pytest.raises(TypeError, match=r"state\.x is a builtins\.object"):
        ckpt_mod.plain_data({"x": object()})


# --------------------------------------------------------------------------- conversion of a trusted checkpoint
def test_convert_checkpoint_rewrites_a_trusted_file_and_resume_then_works(run, capsys):
    b = run()
    for step in (1, 2):  # a trusted file with a type srft does not load: a path object in the config
        _edit_trainer(_ckpt(b, step), lambda s: s["config"]["run"].update(out_dir=Path(s["config"]["run"]["out_dir"])))
    rc, err = _resume(b, capsys)
    assert rc == 1 and "pathlib.PosixPath" in err and "srft convert-checkpoint" in err
    capsys.readouterr()
    assert main(["convert-checkpoint", str(b)]) == 0
    out = capsys.readouterr().out
    assert "2 file(s) converted" in out and (_ckpt(b, 2) / "trainer.pt.unsafe").exists()
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(_ckpt(b, 2) / "trainer.pt")) == []
    rc, err = _resume(b, capsys)
    assert rc == 0, err
    capsys.readouterr()
    assert main(["convert-checkpoint", str(b)]) == 0 and "nothing to convert" in capsys.readouterr().out


def test_convert_checkpoint_of_a_directory_without_checkpoints_is_one_line(tmp_path, capsys):
    assert main(["convert-checkpoint", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no checkpoint" in err


# --------------------------------------------------------------------------- sharded checkpoints
def _metadata(run_dir, step):
    return _ckpt(run_dir, step) / rundir.SHARDS / rundir.DCP_METADATA


def test_a_planted_shard_index_is_skipped_for_the_older_checkpoint(run, marker, capsys):
    b = run("sharded")
    _metadata(b, 2).write_bytes(pickle.dumps(Payload(marker)))
    rc, err = _resume(b, capsys)
    assert rc == 0 and _resumed_at(b)
    warning = next(line for line in err.splitlines() if line.startswith("warning: checkpoint"))
    assert "step-000002" in warning and "shards/.metadata asks to import posix.system" in warning


def test_the_shard_index_reader_builds_only_the_index_classes(made_runs, marker, tmp_path):
    meta = read_shard_metadata(_ckpt(made_runs["sharded"], 2) / rundir.SHARDS)  # a real one reads
    assert any(k.startswith("model.") for k in meta.state_dict_metadata)
    for planted in (Payload(marker), {"ok": [1, 2], "bad": Payload(marker)}):
        (tmp_path / ".metadata").write_bytes(pickle.dumps(planted, protocol=2))
        with pytest.raises(UnsafeFileError, match="could run code"):
            read_shard_metadata(tmp_path)


def test_a_shard_index_naming_a_file_outside_its_directory_is_refused(run, model, capsys):
    b = run("sharded")
    meta = read_shard_metadata(_ckpt(b, 2) / rundir.SHARDS)
    for info in meta.storage_data.values():
        info.relative_path = "../../../trainer.pt"
    _metadata(b, 2).write_bytes(pickle.dumps(meta))
    capsys.readouterr()
    assert load_checkpoint(b, model)["step"] == 1
    assert "names a shard file outside shards/" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
@pytest.mark.parametrize("older", [True, False])
def test_a_planted_non_tensor_entry_in_the_shards_is_skipped(run, marker, capsys, older):
    """The shards' non-tensor entries (the optimiser's lr, betas, ...) are pickles too: the distributed
    checkpoint reader would load them with weights_only=False. They are checked with the weights."""
    import torch.distributed.checkpoint as dcp

    b = run("sharded")
    if not older:
        shutil.rmtree(_ckpt(b, 1))
    shards = _ckpt(b, 2) / rundir.SHARDS
    entries = _read_all(shards)
    entries["optim.param_groups.0.lr"] = Payload(marker)
    shutil.rmtree(shards)
    dcp.save(entries, checkpoint_id=str(shards), no_dist=True)  # the same files, one entry planted
    rc, err = _resume(b, capsys)
    assert "Traceback" not in err
    assert "its entry optim.param_groups.0.lr asks to import posix.system" in err
    if older:
        assert rc == 0 and _resumed_at(b)
    else:
        last = err.strip().splitlines()[-1]
        assert rc == 1 and last.startswith(f"error: no usable checkpoint in {b} (step-000002: shards/")
        assert "convert-checkpoint" not in last  # shards are not converted: remove the checkpoint


def _read_all(shards) -> dict:
    """Every entry of a distributed checkpoint (this test's own, trusted), flat, as dcp wrote it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = read_shard_metadata(shards)
    flat = {k: torch.empty(v.size, dtype=v.properties.dtype) if isinstance(v, TensorStorageMetadata) else None
            for k, v in meta.state_dict_metadata.items()}
    dcp.load(flat, checkpoint_id=str(shards), no_dist=True, planner=dcp.DefaultLoadPlanner(flatten_state_dict=False))
    return flat


# --------------------------------------------------------------------------- config.yaml, metrics, eval history
YAML_PAYLOAD = "run: !!python/object/apply:os.system [\"touch {marker}\"]\n"


def test_a_planted_config_yaml_is_refused_on_resume(run, marker, capsys):
    b = run()
    (b / rundir.CONFIG).write_text(YAML_PAYLOAD.format(marker=marker))
    rc, err = _resume(b, capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.startswith(f"error: {b / rundir.CONFIG}: not valid YAML")


def test_a_planted_config_yaml_is_one_line(run, marker, capsys):
    b = run()
    (b / rundir.CONFIG).write_text(YAML_PAYLOAD.format(marker=marker))
    rc, err = _resume(b, capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_a_planted_suite_file_is_one_line(tmp_path, marker, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_text("name: !!python/object/apply:os.system [\"touch {marker}\"]\n".replace("{marker}", str(marker)))
    assert main(["compare", str(suite), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {suite}: not valid YAML: could not determine")


@pytest.mark.parametrize("name", [rundir.METRICS, rundir.EVAL_HISTORY])
@pytest.mark.parametrize("content", ["pickle", "a list", "a text step"])
def test_a_bad_log_line_is_one_line_naming_the_file(run, marker, capsys, name, content):
    b = run()
    lines = (b / name).read_text().splitlines()
    bad = {"pickle": pickle.dumps(Payload(marker)).decode("latin-1").replace("\n", " "),
           "a list": json.dumps([1, 2]), "a text step": json.dumps({"step": "one"})}[content]
    (b / name).write_text("\n".join([bad, *lines]) + "\n")
    rc, err = _resume(b, capsys)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in err
    assert last.startswith(f"error: {b / name} line 1 is not a record srft wrote") and "remove" in last


def test_a_cut_last_log_line_is_still_skipped(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"step": 0}\n{"step": 1')
    assert rundir.read_jsonl(tmp_path / "m.jsonl") == [{"step": 0}]


# --------------------------------------------------------------------------- srft compare, srft analyze
def _finished_run(run_dir):
    """A finished compare run directory, as tests/test_compare.py's fake_run makes one."""
    from test_compare import fake_run

    fake_run(run_dir, 0.1, 0.2, 0.0, 0.3, wall=5)
    return run_dir


@pytest.mark.parametrize("name", ["metrics.jsonl", "eval_history.jsonl"])
def test_compare_report_of_a_planted_log_is_one_line(tmp_path, marker, capsys, name):
    run_dir = _finished_run(tmp_path / "strong" / "x" / "seed0")
    (run_dir / name).write_bytes(pickle.dumps(Payload(marker)) + b"\n" + (run_dir / name).read_bytes())
    capsys.readouterr()
    assert main(["compare", "--report-only", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {run_dir / name} line 1 is not a record")


@pytest.mark.parametrize("name,content", [
    ("eval.json", "[1, 2]"), ("eval.json", '{"after": [1]}'), ("run_status.json", '"ok"'),
    ("config.yaml", YAML_PAYLOAD), ("config.yaml", "- a list\n"),
])
def test_compare_report_treats_other_bad_files_as_missing(tmp_path, marker, capsys, name, content):
    run_dir = _finished_run(tmp_path / "strong" / "x" / "seed0")
    (run_dir / name).write_text(content.replace("{marker}", str(marker)))
    capsys.readouterr()
    assert main(["compare", "--report-only", str(tmp_path)]) == 0
    assert "| x |" in capsys.readouterr().out


@pytest.mark.parametrize("content,expected", [
    ("{not json", "plan.json is not JSON"),
    ("[1]", "holds a JSON list, not a plan"),
    ('{"suite": {}, "seeds": "0", "methods": [], "regimes": []}', "seeds is '0', not a list"),
])
def test_compare_report_of_a_bad_plan_is_one_line(tmp_path, capsys, content, expected):
    _finished_run(tmp_path / "strong" / "x" / "seed0")
    (tmp_path / "plan.json").write_text(content)
    capsys.readouterr()
    assert main(["compare", "--report-only", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err and "remove plan.json" in err


def test_compare_lists_the_plugin_files_a_suite_imports_before_it_starts(tmp_path, capsys):
    plugin = tmp_path / "my_task.py"
    plugin.write_text("raise SystemExit('imported')\n")  # never imported by a dry run
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({"name": "p", "description": "d", "seeds": [0], "regimes": {"strong": []},
                                 "methods": [{"name": "srft", "preset": "srft",
                                              "overrides": [f"data.task={plugin}:MyTask"]},
                                             {"name": "grpo", "preset": "grpo"}]}))
    assert main(["compare", str(suite), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.splitlines()
    head = out.index("these runs import task plugin code, which runs as your user; check it is code you trust:")
    assert out[head + 1] == f"  file {plugin.resolve()} (class MyTask): 1 run(s), e.g. strong/srft/seed0"
    assert head < next(i for i, line in enumerate(out) if line.startswith("# strong/srft/seed0"))


def test_compare_of_built_in_tasks_lists_no_plugins(tmp_path, capsys):
    assert main(["compare", "quick", "--methods", "grpo", "--dry-run", "--out", str(tmp_path)]) == 0
    assert "task plugin" not in capsys.readouterr().out


@pytest.mark.parametrize("name,content", [("eval.json", "[1]"), ("config.yaml", YAML_PAYLOAD),
                                          ("config.yaml", "data: [1]\n")])
def test_analyze_lists_bad_run_files_as_problems(tmp_path, marker, name, content):
    from srft.analysis.runs import discover_runs, read_metrics

    run_dir = _finished_run(tmp_path / "strong" / "x" / "seed0")
    (run_dir / name).write_text(content.replace("{marker}", str(marker)))
    (run_dir / "metrics.jsonl").write_text('[1]\n{"step": "x"}\n{"step": 0}\n')
    runs, problems = discover_runs(tmp_path)
    assert len(problems) == 1 and f"{run_dir}: " in problems[0] and len(problems[0].splitlines()) == 1
    assert read_metrics(run_dir) == [{"step": 0}]


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_the_shard_loader_itself_loads_non_tensor_entries_the_safe_way(tmp_path, marker):
    """Behind the check at load time: the planner every sharded load uses refuses a planted entry too."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"w": torch.ones(2), "lr": Payload(marker)}, checkpoint_id=str(tmp_path / "s"), no_dist=True)
    target = {"w": torch.zeros(2), "lr": None}
    with pytest.raises(BaseException) as caught:  # dcp's CheckpointException is a BaseException
        ckpt_mod._dcp_load(target, tmp_path / "s")
    assert "lr asks to import posix.system" in ckpt_mod._first_line(caught.value)
    ckpt_mod._dcp_load(target := {"w": torch.zeros(2)}, tmp_path / "s")  # what is plain still loads
    assert torch.equal(target["w"], torch.ones(2))


@pytest.mark.parametrize("text", ["not json", '{"demos": [1, 2]}', '{"demos": {"0": "abc"}, "cost": {}}', '{"cost": {}}'])
def test_a_malformed_bootstrap_file_is_one_error_naming_it(tmp_path, text):
    """RUN/bootstrap.json (the demonstrations collected before step 1) that is not what srft wrote."""
    from types import SimpleNamespace

    from srft.config import Config
    from srft.rundir import RunDirError
    from srft.training.bootstrap import FILE, ensure_bootstrap

    cfg = Config()
    cfg.objective.demo_source = "rejection"
    (tmp_path / FILE).write_text(text)
    with pytest.raises(RunDirError, match="bootstrap.json is not what srft wrote.*delete it"):
        ensure_bootstrap(SimpleNamespace(cfg=cfg), SimpleNamespace(pool={}), tmp_path, say=lambda *a: None)
