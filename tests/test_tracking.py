"""run.report_to: the config key, the missing-package error, and what each backend writes (read back)."""

from __future__ import annotations

import glob
import struct
import sys

import pytest

from srft.config import ConfigError, describe, load_config
from srft.training.resume import check_resume_changes
from srft.training.tracking import Tracker, check_trackers, make_tracker, scalars

EVALS = [(0, {"test_id": {"acc": 0.25, "pass@4": 0.5, "n_prompts": 8}, "test_ood": {"acc": 0.125, "pass@4": 0.25}}),
         (2, {"test_id": {"acc": 0.5, "pass@4": 0.75, "n_prompts": 8}, "test_ood": {"acc": 0.25, "pass@4": 0.5}})]
RECORDS = [(0, {"step": 0, "loss": 1.5, "skipped": False, "w_rl": None, "verify_errors": 0, "note": "x"}),
           (1, {"step": 1, "loss": 1.25, "skipped": True, "w_rl": 0.5, "verify_errors": 2, "note": "y"})]
# what the backends should hold: {tag: {step: value}}
EXPECTED = {
    "train/loss": {0: 1.5, 1: 1.25}, "train/skipped": {0: 0, 1: 1}, "train/w_rl": {1: 0.5},
    "train/verify_errors": {0: 0, 1: 2},
    "eval/test_id/acc": {0: 0.25, 2: 0.5}, "eval/test_id/pass@4": {0: 0.5, 2: 0.75}, "eval/test_id/n_prompts": {0: 8, 2: 8},
    "eval/test_ood/acc": {0: 0.125, 2: 0.25}, "eval/test_ood/pass@4": {0: 0.25, 2: 0.5},
}


def _feed(tracker: Tracker) -> None:
    """The order of a run: the evaluation before training, two steps, an evaluation after them."""
    tracker.log_eval(EVALS[0][1], EVALS[0][0])
    for step, record in RECORDS:
        tracker.log(record, step)
    tracker.log_eval(EVALS[1][1], EVALS[1][0])
    tracker.close()


def _run_dir(tmp_path):
    run_dir = tmp_path / "srft-20250101-000000"
    run_dir.mkdir()
    return run_dir


# --------------------------------------------------------------------------- config


def test_report_to_parses_from_a_comma_separated_override_or_a_yaml_list():
    assert load_config("srft", None, []).run.report_to == []
    assert load_config("srft", None, ["run.report_to=tensorboard,wandb"]).run.report_to == ["tensorboard", "wandb"]
    assert load_config("srft", None, ["run.report_to=tensorboard, trackio"]).run.report_to == ["tensorboard", "trackio"]
    assert load_config("srft", None, ["run.report_to=[wandb]"]).run.report_to == ["wandb"]
    assert load_config("srft", None, ["run.report_to=trackio"]).run.report_to == ["trackio"]
    assert load_config("srft", None, ["run.report_to=tensorboard", "run.report_to="]).run.report_to == []
    assert load_config("srft", None, ["run.tracking_project=mine"]).run.tracking_project == "mine"
    assert "run.report_to: list of 'tensorboard' | 'wandb' | 'trackio' = []" in describe()


@pytest.mark.parametrize("value", ["tensorboard,mlflow", "[comet]", "5"])
def test_an_unknown_backend_is_refused_naming_the_allowed_ones(value):
    with pytest.raises(ConfigError) as e:
        load_config("srft", None, [f"run.report_to={value}"])
    msg = str(e.value)
    assert "run.report_to" in msg and "'tensorboard' | 'wandb' | 'trackio'" in msg, msg


def test_report_to_may_change_on_resume():
    old = load_config("srft", None, [])
    new = load_config("srft", None, ["run.report_to=tensorboard", "run.tracking_project=p"])
    changes = check_resume_changes(old, new, "the command line")
    assert changes == {"run.report_to": ([], ["tensorboard"]), "run.tracking_project": ("srft", "p")}


# --------------------------------------------------------------------------- the tracker itself


def test_scalars_flatten_and_keep_numbers_only():
    assert scalars({"step": 3, "a": 1, "b": True, "c": None, "d": "s", "e": [1], "f": 0.5}, "train") == {
        "train/a": 1, "train/b": 1, "train/f": 0.5}
    assert scalars({"step": 3, "test_id": {"acc": 0.5, "pass@4": 1.0, "name": "x"}, "t_eval": 2.0}, "eval") == {
        "eval/test_id/acc": 0.5, "eval/test_id/pass@4": 1.0, "eval/t_eval": 2.0}


def test_no_backends_and_other_ranks_do_nothing(tmp_path):
    run_dir = _run_dir(tmp_path)
    _feed(make_tracker(load_config("srft", None, []), run_dir))
    _feed(make_tracker(load_config("srft", None, ["run.report_to=tensorboard,wandb,trackio"]), run_dir, main=False))
    assert list(run_dir.iterdir()) == []


@pytest.mark.parametrize("backend, package", [("tensorboard", "tensorboard"), ("wandb", "wandb"), ("trackio", "trackio")])
def test_a_missing_package_fails_before_anything_starts_with_the_pip_line(tmp_path, monkeypatch, backend, package):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` raises ImportError
    cfg = load_config("srft", None, [f"run.report_to=tensorboard,{backend}" if backend != "tensorboard" else
                                     "run.report_to=tensorboard"])
    for call in (lambda: check_trackers(cfg), lambda: make_tracker(cfg, _run_dir(tmp_path))):
        with pytest.raises(ConfigError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and f"run.report_to={backend} needs the {package} package" in msg, msg
        assert f"pip install {package}" in msg, msg
    assert not (tmp_path / "srft-20250101-000000" / "tensorboard").exists()  # no backend was started


def test_a_backend_that_fails_is_dropped_with_a_warning_and_the_others_go_on(capsys):
    class Broken:
        closed = False

        def log(self, values, step):
            raise OSError("disk full")

        def close(self):
            Broken.closed = True

    class Keep:
        def __init__(self):
            self.got = []

        def log(self, values, step):
            self.got.append((step, values))

        def close(self):
            pass

    keep = Keep()
    tracker = Tracker({"wandb": Broken(), "tensorboard": keep})
    tracker.log({"step": 0, "loss": 1.0}, 0)
    tracker.log({"step": 1, "loss": 2.0}, 1)
    tracker.close()
    tracker.close()  # twice is fine
    err = capsys.readouterr().err
    assert err.count("run.report_to=wandb failed to log step 0 (OSError: disk full)") == 1, err
    assert Broken.closed
    assert keep.got == [(0, {"train/loss": 1.0}), (1, {"train/loss": 2.0})]


# --------------------------------------------------------------------------- the backends, read back


def _check(got: dict) -> None:
    for tag, values in EXPECTED.items():
        assert tag in got, f"{tag} missing from {sorted(got)}"
        assert got[tag] == pytest.approx(values), tag
    assert not [t for t in got if t.endswith(("/note", "/step"))], sorted(got)


def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run_dir(tmp_path)
    _feed(make_tracker(load_config("srft", None, ["run.report_to=tensorboard"]), run_dir))
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    got = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    _check(got)
    assert set(got) == set(EXPECTED)


def test_tensorboard_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = _run_dir(tmp_path)
    cfg = load_config("srft", None, ["run.report_to=tensorboard"])
    first = make_tracker(cfg, run_dir)
    first.log_eval({"test_id": {"acc": 0.0}}, 0)
    for done in range(1, 5):  # killed after 4 updates, its checkpoint and an evaluation after 2
        first.log({"loss": 10.0 + done}, done)
        if done == 2:
            first.log_eval({"test_id": {"acc": 0.5}}, done)
    first.close()
    resumed = make_tracker(cfg, run_dir)
    for done in range(3, 6):
        resumed.log({"loss": 20.0 + done}, done)
    resumed.log_eval({"test_id": {"acc": 1.0}}, 5)
    resumed.close()
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0),
                                                                       (5, 25.0)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/test_id/acc")] == [(0, 0.0), (2, 0.5), (5, 1.0)]


def _wandb_records(path):
    """The records of a .wandb file (wandb's transaction log: a header, then LevelDB-log-style chunks in
    32 KiB blocks, each record a wandb.proto Record)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), data[:7]
    block, pos, pending, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # full / first; middle / last
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
    return out


def test_wandb_offline_run_holds_the_history_and_config(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import json

    for var, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                       "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(var, str(value))
    run_dir = _run_dir(tmp_path)
    cfg = load_config("srft", None, ["run.report_to=wandb", "run.tracking_project=srft-test", "run.steps=7"])
    _feed(make_tracker(cfg, run_dir))
    files = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, list((run_dir / "wandb").rglob("*"))
    records = _wandb_records(files[0])
    got: dict = {}
    for rec in records:
        if rec.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            for key, value in items.items():
                if not key.startswith("_"):
                    got.setdefault(key, {})[items["_step"]] = value
    _check(got)
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "srft-test" and run.display_name == run_dir.name
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["run"]["steps"] == 7 and config["run"]["report_to"] == ["wandb"]
    assert any(r.WhichOneof("record_type") == "exit" for r in records)  # finished


def test_trackio_local_store(tmp_path, monkeypatch):
    pytest.importorskip("trackio")
    import trackio

    # trackio reads TRACKIO_DIR once, at import: point every module's copy at the test's directory
    store = tmp_path / "trackio"
    store.mkdir()
    monkeypatch.setenv("TRACKIO_DIR", str(store))
    for name, module in list(sys.modules.items()):
        if (name == "trackio" or name.startswith("trackio.")) and hasattr(module, "TRACKIO_DIR"):
            monkeypatch.setattr(module, "TRACKIO_DIR", store)
    from trackio.sqlite_storage import SQLiteStorage

    run_dir = _run_dir(tmp_path)
    cfg = load_config("srft", None, ["run.report_to=trackio", "run.tracking_project=srft-test", "run.steps=7"])
    _feed(make_tracker(cfg, run_dir))
    assert trackio.__name__ and (store / "srft-test.db").exists(), list(store.iterdir())
    assert SQLiteStorage.get_runs("srft-test") == [run_dir.name]
    got: dict = {}
    for row in SQLiteStorage.get_logs("srft-test", run_dir.name):
        for key, value in row.items():
            if "/" in key and value is not None:
                got.setdefault(key, {})[row["step"]] = value
    _check(got)
    assert SQLiteStorage.get_run_config("srft-test", run_dir.name)["run"]["steps"] == 7
    assert list(run_dir.iterdir()) == []  # trackio keeps to its store


# --------------------------------------------------------------------------- in a training run


def test_a_missing_package_stops_train_before_the_model_loads(tmp_path, monkeypatch):
    from srft.training.loop import train

    monkeypatch.setitem(sys.modules, "wandb", None)
    cfg = load_config("srft", None, [f"model.path={tmp_path / 'no-such-model'}", "run.report_to=wandb",
                                     f"run.out_dir={tmp_path}/run", "run.progress=false"])
    with pytest.raises(ConfigError, match="run.report_to=wandb needs the wandb package"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_a_training_run_reports_its_records_and_evaluations_to_tensorboard(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from srft.training.loop import train

    cfg = load_config("srft", None, [
        f"model.path={tiny_model_dir}", "run.steps=3", "run.eval_every=2", "run.save_every=2", "run.eval_k=2",
        "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20",
        "data.test_size=4", "data.max_response_tokens=48", "data.too_long=truncate", "optim.micro_batch=3",
        "model.threads=1", f"run.out_dir={tmp_path}/run", "run.report_to=tensorboard"])
    run_dir = train(cfg)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [json.loads(l) for l in (run_dir / "eval_history.jsonl").read_text().splitlines()]
    loss = acc.Scalars("train/loss")  # at the updates done, as evaluations: metrics.jsonl's step + 1
    assert [e.step for e in loss] == [r["step"] + 1 for r in records] == [1, 2, 3]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    ood = acc.Scalars("eval/test_ood/acc")
    assert [e.step for e in ood] == [h["step"] for h in evals] == [0, 2, 3]
    assert [e.value for e in ood] == pytest.approx([h["test_ood"]["acc"] for h in evals])
    assert [e.step for e in acc.Scalars("eval/test_id/pass@2")] == [0, 2, 3]
