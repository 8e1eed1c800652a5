"""srft train with run.report_to=tensorboard: the tracker gets the figures of metrics.jsonl."""

import json

import pytest

from srft.config import load_config
from srft.training.loop import train


def test_train_reports_its_records_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config("srft", None, ["run.steps=2", f"run.out_dir={tmp_path / 'run'}", "run.report_to=tensorboard",
                                     "run.progress=false", "run.plots=false", "run.eval_every=0",
                                     "data.test_size=8", "rollout.prompts_per_step=2", "rollout.n=2"])
    run = train(cfg)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]  # updates done
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    history = [json.loads(x) for x in (run / "eval_history.jsonl").read_text().splitlines()]
    ev = acc.Scalars("eval/test_id/acc")
    assert [(e.step, e.value) for e in ev] == [(h["step"], pytest.approx(h["test_id"]["acc"])) for h in history]


def test_a_missing_tracker_package_stops_before_the_run_starts(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    from srft.config import ConfigError

    cfg = load_config("srft", None, ["run.steps=1", f"run.out_dir={tmp_path / 'run'}", "run.report_to=wandb"])
    with pytest.raises(ConfigError, match="pip install wandb"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # no run directory: nothing started
