"""Crash-safe checkpoints, the divergence guard, and resume that refuses a changed run.

Each test stages a failure that once lost work or passed silently: a kill inside the
checkpoint swap (simulated by failing the rename it stops at), a NaN at a chosen step, a
resume with a changed key, corrupt checkpoint files.
"""

import json
import math
import os

import pytest
import torch

from srft import rundir
from srft.cli import main
from srft.config import ConfigError, load_config
from srft.training import checkpoint as ckpt_mod
from srft.training import loop as loop_mod
from srft.training.checkpoint import CheckpointError
from srft.training.loop import train


def _cfg(model_dir, out, *extra, preset="srft"):
    return load_config(preset, None, [
        f"model.path={model_dir}", "run.steps=4", "run.eval_every=0", "run.save_every=1", "run.eval_k=1",
        "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2", "data.train_size=20",
        "data.test_size=2", "data.max_response_tokens=24", "data.too_long=truncate", "model.threads=1",
        f"run.out_dir={out}", *extra])


def _losses(run_dir):
    return [round(r["loss"], 6) for r in rundir.read_jsonl(run_dir / rundir.METRICS)]


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs, no handler sees it (not an Exception)."""


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_are_step_directories_with_a_pointer_and_only_the_newest_kept(tiny_model_dir, tmp_path):
    run = train(_cfg(tiny_model_dir, tmp_path / "run", "run.keep_checkpoints=2"))
    root = run / rundir.CHECKPOINTS
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000003", "step-000004"]
    assert (root / "latest").read_text().strip() == "step-000004"
    meta = json.loads((root / "step-000004" / rundir.CKPT_META).read_text())
    saved = torch.load(root / "step-000004" / "trainer.pt", weights_only=False)
    assert meta["step"] == 4 and meta["config_hash"] == ckpt_mod.config_hash(saved["config"])
    assert saved["config"]["run"]["steps"] == 4


@pytest.mark.parametrize("kill_at", ["directory rename", "pointer write"])
def test_a_kill_inside_the_checkpoint_swap_leaves_a_resumable_run(tiny_model_dir, tmp_path, monkeypatch, kill_at):
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    # the same run, killed while saving its step-3 checkpoint
    real_replace, real_write = os.replace, rundir.atomic_write_text

    def replace(src, dst):
        if kill_at == "directory rename" and str(dst).endswith("step-000003"):
            raise Killed
        return real_replace(src, dst)

    def write(path, text):
        if kill_at == "pointer write" and "step-000003" in text:
            raise Killed
        return real_write(path, text)

    monkeypatch.setattr(ckpt_mod.os, "replace", replace)
    monkeypatch.setattr(ckpt_mod, "atomic_write_text", write)
    with pytest.raises(Killed):
        train(_cfg(tiny_model_dir, tmp_path / "b"))
    monkeypatch.undo()
    b = tmp_path / "b"
    # step 2's checkpoint is still named by `latest`; resume picks it and redoes step 2
    assert (b / rundir.CHECKPOINTS / "latest").read_text().strip() == "step-000002"
    train(load_config(None, str(b / rundir.CONFIG)), run_dir=b, resume=True)
    assert _losses(b) == _losses(straight)
    assert not list((b / rundir.CHECKPOINTS).glob(".*tmp"))  # the half-written copy is cleaned up


def test_resume_falls_back_from_a_missing_or_corrupt_newest_checkpoint(tiny_model_dir, tmp_path, capsys):
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    cfg = _cfg(tiny_model_dir, tmp_path / "b", "run.keep_checkpoints=3")
    cfg.run.steps = 3
    b = train(cfg)
    root = b / rundir.CHECKPOINTS
    (root / "step-000003" / "trainer.pt").write_bytes(b"not a torch file")  # corrupt newest
    (root / "latest").write_text("step-000009\n")  # a pointer to nothing
    capsys.readouterr()
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4"]), run_dir=b, resume=True)
    assert "step-000003" in capsys.readouterr().err  # said which one it skipped
    assert _losses(b) == _losses(straight)


def test_sharded_checkpoints_resume_as_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """run.checkpoint_format=sharded (torch.distributed.checkpoint; one process here, torchrun in
    tests/test_distributed.py): the weights and the optimiser's moments come back exactly."""
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    b = train(_cfg(tiny_model_dir, tmp_path / "b", "run.steps=2", "run.checkpoint_format=sharded"))
    saved = b / rundir.CHECKPOINTS / "step-000002"
    assert rundir.is_sharded_checkpoint(saved) and not (saved / "model_state.pt").exists()
    assert "optimizer" not in torch.load(saved / "trainer.pt", weights_only=False)  # it is in the shards
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4"]), run_dir=b, resume=True)
    assert _losses(b) == _losses(straight)  # after 2 more AdamW steps: the moments were restored too


def test_the_checkpoint_format_may_change_on_resume(tiny_model_dir, tmp_path):
    """A full checkpoint resumed with sharded saves from then on (and back): either format loads."""
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    b = train(_cfg(tiny_model_dir, tmp_path / "b", "run.steps=2", "run.checkpoint_format=full"))
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=3", "run.checkpoint_format=sharded"]),
          run_dir=b, resume=True)
    assert rundir.is_sharded_checkpoint(b / rundir.CHECKPOINTS / "step-000003")
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4", "run.checkpoint_format=full"]),
          run_dir=b, resume=True)
    assert _losses(b) == _losses(straight)


def test_a_corrupt_or_foreign_sharded_checkpoint_falls_back_without_touching_the_model(tiny_model_dir, tmp_path,
                                                                                       capsys):
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    b = train(_cfg(tiny_model_dir, tmp_path / "b", "run.steps=3", "run.checkpoint_format=sharded",
                   "run.keep_checkpoints=3"))
    shard = next((b / rundir.CHECKPOINTS / "step-000003" / rundir.SHARDS).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # cut short
    capsys.readouterr()
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4"]), run_dir=b, resume=True)
    err = capsys.readouterr().err
    assert "checkpoint" in err and "step-000003" in err and "unusable" in err  # said which one it skipped
    assert _losses(b) == _losses(straight)  # resumed from step 2, as if step 3's save never happened


def test_resume_with_every_checkpoint_corrupt_is_a_one_line_error(tiny_model_dir, tmp_path, capsys):
    cfg = _cfg(tiny_model_dir, tmp_path / "b", "run.steps=2", "run.keep_checkpoints=1")
    b = train(cfg)
    (b / rundir.CHECKPOINTS / "step-000002" / "model_state.pt").write_bytes(b"\x00" * 10)
    capsys.readouterr()
    assert main(["train", "--resume", str(b)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: no usable checkpoint in") and "Traceback" not in err


def test_a_run_dir_of_the_earlier_layout_still_resumes(tiny_model_dir, tmp_path):
    straight = train(_cfg(tiny_model_dir, tmp_path / "a"))
    cfg = _cfg(tiny_model_dir, tmp_path / "b")
    cfg.run.steps = 2
    b = train(cfg)
    # the earlier layout: one `checkpoint/` directory, no pointer, no config in trainer.pt
    legacy = b / rundir.LEGACY_CHECKPOINT
    os.replace(b / rundir.CHECKPOINTS / "step-000002", legacy)
    state = torch.load(legacy / "trainer.pt", weights_only=False)
    del state["config"], state["config_hash"]
    torch.save(state, legacy / "trainer.pt")
    for p in (b / rundir.CHECKPOINTS).iterdir():
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
    (b / rundir.CHECKPOINTS / "latest").unlink()
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4"]), run_dir=b, resume=True)
    assert _losses(b) == _losses(straight)


def test_metrics_truncation_goes_through_a_temporary_file(tmp_path, monkeypatch):
    from srft.training.metrics import MetricsLog

    log = MetricsLog(tmp_path / "m.jsonl")
    for step in range(3):
        log.append({"step": step})
    with open(log.path, "a") as f:
        f.write('{"step": 3, "lo')  # a line cut short by a kill
    assert [r["step"] for r in log.read()] == [0, 1, 2]

    def killed(*a):
        raise Killed

    from srft import durable  # the atomic write's home

    monkeypatch.setattr(durable.os, "replace", killed)
    with pytest.raises(Killed):
        log.truncate_from(1)
    monkeypatch.undo()
    assert [r["step"] for r in log.read()] == [0, 1, 2]  # untouched until the rename
    log.truncate_from(1)
    assert [r["step"] for r in log.read()] == [0]


# --------------------------------------------------------------------------- divergence
def _nan_at(monkeypatch, steps):
    """Make the loss of the given steps NaN, as a bad batch or an overflow would."""
    from srft.objective import combine  # the loop reduces its terms with combine.reduce_terms

    real = combine.agg_loss
    current = {"step": None}
    real_step = loop_mod.train_step

    def step_spy(t, plan, *a, **kw):
        current["step"] = plan.step
        return real_step(t, plan, *a, **kw)

    def agg(t, *a, **kw):
        out = real(t, *a, **kw)
        return out * float("nan") if current["step"] in steps else out

    monkeypatch.setattr(loop_mod, "train_step", step_spy)
    monkeypatch.setattr(combine, "agg_loss", agg)


def test_a_nan_step_is_skipped_and_the_run_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {1})
    run = train(_cfg(tiny_model_dir, tmp_path / "run", "run.save_every=0"))
    records = rundir.read_jsonl(run / rundir.METRICS)
    assert [r["skipped"] for r in records] == [False, True, False, False]
    assert [r["bad_steps_in_row"] for r in records] == [0, 1, 0, 0]
    assert math.isnan(records[1]["loss"])
    model = torch.load(run / rundir.CHECKPOINTS / "step-000004" / "model_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in model.values())


def test_skipped_step_leaves_weights_and_optimizer_untouched(tiny_model_dir, tmp_path, monkeypatch):
    _nan_at(monkeypatch, {0})
    cfg = _cfg(tiny_model_dir, tmp_path / "run", "run.steps=1")
    run = train(cfg)
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    after = torch.load(run / rundir.CHECKPOINTS / "step-000001" / "model_state.pt", weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    state = torch.load(run / rundir.CHECKPOINTS / "step-000001" / "trainer.pt", weights_only=False)
    assert state["optimizer"]["state"] == {}  # AdamW never stepped


def test_nan_steps_in_a_row_stop_the_run_and_keep_the_good_checkpoint(tiny_model_dir, tmp_path, monkeypatch, capsys):
    _nan_at(monkeypatch, {2, 3, 4, 5})
    out = tmp_path / "run"
    rc = main(["train", *[f"{k}" for k in [
        f"model.path={tiny_model_dir}", "run.steps=6", "run.eval_every=0", "run.save_every=2", "run.eval_k=1",
        "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2", "data.train_size=20",
        "data.test_size=2", "data.max_response_tokens=24", "data.too_long=truncate", "model.threads=1",
        "optim.max_bad_steps=3", f"run.out_dir={out}"]]])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: training diverged: steps 2-4") and "optim.lr" in err and "step-000002" in err
    assert f"srft train --resume {out} optim.lr=" in err
    assert (out / rundir.CHECKPOINTS / "latest").read_text().strip() == "step-000002"
    assert not (out / rundir.EVAL).exists() and not (out / rundir.MODEL).exists()
    assert [r["step"] for r in rundir.read_jsonl(out / rundir.METRICS)] == [0, 1, 2, 3, 4]


def test_a_huge_learning_rate_stops_with_a_clear_error_not_a_sampler_crash(tiny_model_dir, tmp_path, capsys):
    # (the built-in base model diverges at lr 1e3; this one-layer model needs more)
    out = tmp_path / "run"
    rc = main(["train", f"model.path={tiny_model_dir}", "optim.lr=1e8", "optim.warmup_steps=0", "run.steps=8",
               "run.eval_every=0", "run.save_every=0", "run.eval_k=1", "run.progress=false", "run.plots=false",
               "rollout.prompts_per_step=2", "rollout.n=2", "data.train_size=20", "data.test_size=2",
               "data.max_response_tokens=24", "data.too_long=truncate", "model.threads=1", f"run.out_dir={out}"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: training diverged")
    assert not (out / rundir.MODEL).exists()
    # whatever was saved is finite
    for p in (out / rundir.CHECKPOINTS).glob("step-*/model_state.pt"):
        assert all(torch.isfinite(v).all() for v in torch.load(p, weights_only=True).values())


def test_a_non_finite_model_is_never_saved(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    ckpt_mod.save_checkpoint(tmp_path, model, tok, opt, sched, 1, {})
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        ckpt_mod.save_checkpoint(tmp_path, model, tok, opt, sched, 2, {})
    assert rundir.checkpoint_candidates(tmp_path) == [tmp_path / rundir.CHECKPOINTS / "step-000001"]


def test_sampling_survives_nan_weights(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from srft.rollout.engine import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    out = HFEngine(model, 0, 1).generate([[5, 6, 7]], 2, 4, temperature=1.0)
    assert len(out) == 1 and len(out[0]) == 2


# --------------------------------------------------------------------------- resume and config
def _run_for_resume(tiny_model_dir, tmp_path):
    args = [f"model.path={tiny_model_dir}", "run.steps=2", "run.eval_every=0", "run.save_every=1",
            "run.eval_k=1", "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2",
            "data.train_size=20", "data.test_size=2", "data.max_response_tokens=24", "data.too_long=truncate",
            "model.threads=1", f"run.out_dir={tmp_path / 'run'}"]
    assert main(["train", *args]) == 0
    return tmp_path / "run"


def test_resume_refuses_changed_keys_and_names_them(tiny_model_dir, tmp_path, capsys):
    run = _run_for_resume(tiny_model_dir, tmp_path)
    before = (run / rundir.CONFIG).read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "rollout.n=3", "objective.sft_coef=0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: a resumed run keeps its config")
    assert "rollout.n 2 -> 3" in err and "objective.sft_coef 0.5 -> 0.2" in err and "run.steps" in err
    assert (run / rundir.CONFIG).read_text() == before  # nothing written
    assert main(["train", "--resume", str(run), "--preset", "grpo"]) == 2
    assert "drop --preset" in capsys.readouterr().err


def test_resume_refuses_a_config_edited_since_the_checkpoint(tiny_model_dir, tmp_path, capsys):
    run = _run_for_resume(tiny_model_dir, tmp_path)
    (run / rundir.EVAL).unlink()  # as if it stopped before the end
    text = (run / rundir.CONFIG).read_text().replace("n: 2\n", "n: 5\n", 1)
    (run / rundir.CONFIG).write_text(text)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "rollout.n 2 -> 5" in err and "edited since the checkpoint" in err


def test_resume_may_extend_the_run_and_lower_the_learning_rate(tiny_model_dir, tmp_path, capsys):
    run = _run_for_resume(tiny_model_dir, tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "run.steps=4", "optim.lr=1e-5"]) == 0
    err = capsys.readouterr().err
    assert "resume: run.steps 2 -> 4" in err and "resume: optim.lr 0.0003 -> 1e-05" in err
    records = rundir.read_jsonl(run / rundir.METRICS)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    # warm-up of 10 steps: step s runs at lr * (s + 1) / 10, with the new peak from the resume on
    assert records[1]["lr"] == pytest.approx(3e-4 * 3 / 10)
    assert records[2]["lr"] == pytest.approx(1e-5 * 4 / 10) and records[3]["lr"] == pytest.approx(1e-5 * 5 / 10)
    assert load_config(None, str(run / rundir.CONFIG)).optim.lr == 1e-5


def test_resuming_a_finished_run_adds_nothing(tiny_model_dir, tmp_path, capsys):
    run = _run_for_resume(tiny_model_dir, tmp_path)
    files = {n: (run / n).read_text() for n in (rundir.METRICS, rundir.EVAL_HISTORY, rundir.EVAL)}
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    assert "finished all 2 steps already" in capsys.readouterr().err
    assert {n: (run / n).read_text() for n in files} == files


def test_a_run_killed_after_its_final_evaluation_finishes_without_a_duplicate_row(tiny_model_dir, tmp_path):
    run = _run_for_resume(tiny_model_dir, tmp_path)
    (run / rundir.EVAL).unlink()  # killed after the final checkpoint, before eval.json
    train(load_config(None, str(run / rundir.CONFIG)), run_dir=run, resume=True)
    steps = [r["step"] for r in rundir.read_jsonl(run / rundir.EVAL_HISTORY)]
    assert steps == [0, 2]


def test_check_resume_changes_is_a_config_error():
    a = load_config("srft")
    b = load_config("srft", None, ["run.steps=9", "model.threads=1"])
    assert set(loop_mod.check_resume_changes(a, b, "x")) == {"run.steps", "model.threads"}
    with pytest.raises(ConfigError, match="optim.betas"):
        loop_mod.check_resume_changes(a, load_config("srft", None, ["optim.betas=[0.5,0.5]"]), "x")


def test_a_sharded_checkpoint_of_another_model_is_refused_before_loading(tiny_model_dir, tmp_path):
    from conftest import write_tiny_llama
    from srft.models.loading import load_model_and_tokenizer

    b = train(_cfg(tiny_model_dir, tmp_path / "b", "run.steps=1", "run.checkpoint_format=sharded"))
    other_dir = write_tiny_llama(tmp_path / "wider", hidden_size=48, intermediate_size=64)
    other, _, _ = load_model_and_tokenizer(load_config("srft", None, [f"model.path={other_dir}"]).model)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"shards/: model\.embed_tokens\.weight has shape"):
        ckpt_mod.load_checkpoint(b, other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched
