"""Demonstrations bootstrapped once before training: rejection sampling and rationalisation."""

import json

import pytest

from srft import rundir
from srft.config import ConfigError, load_config
from srft.models.loading import encode_response
from srft.training import bootstrap as boot_mod
from srft.training.loop import pick_demo, train
from srft.training.step_batch import StepBatch


def _cfg(model_dir, out, *extra):
    return load_config("srft", None, [
        f"model.path={model_dir}", "run.steps=2", "run.eval_every=0", "run.save_every=1", "run.eval_k=1",
        "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2", "data.train_size=6",
        "data.test_size=2", "data.max_response_tokens=24", "data.too_long=truncate", "model.threads=1",
        f"run.out_dir={out}", "objective.bootstrap_k=3", *extra])


def _scripted(monkeypatch, calls: dict):
    """collect_demos with the engine's samples scripted per prompt: odd train indices get a wrong, a long
    correct and a short correct sample; even ones three wrong ones. Records the prompts and the trainer."""
    real_collect = boot_mod.collect_demos

    def scripted(t, source, batch=64):
        calls["n"] = calls.get("n", 0) + 1
        calls["t"] = t

        def fake_generate(engine, prompts, n, max_new, temperature, top_p, seeds=None):
            rows = []
            for p in prompts:
                calls.setdefault("prompts", []).append(t.tokenizer.decode(p))
                i = next(j for j in range(len(t.train_set)) if boot_mod.bootstrap_prompt_ids(t, j, source) == p)
                ans = t.train_set[i].answer
                wrong = encode_response(t.tokenizer, "#### -1")
                long_ok = encode_response(t.tokenizer, f"so the sum is #### {ans}")
                short_ok = encode_response(t.tokenizer, f"#### {ans}")
                rows.append([wrong, long_ok, short_ok] if i % 2 else [wrong, wrong, wrong])
            return rows, [[None] * n for _ in prompts]

        monkeypatch.setattr(boot_mod, "generate_with_logprobs", fake_generate)
        return real_collect(t, source, batch)

    monkeypatch.setattr(boot_mod, "collect_demos", scripted)


@pytest.mark.parametrize("source", ["rejection", "rationalised"])
def test_bootstrapped_demos_verify_train_without_the_hint_and_are_not_recollected(tiny_model_dir, tmp_path,
                                                                                   monkeypatch, source):
    calls: dict = {}
    _scripted(monkeypatch, calls)
    added = []
    real_add = StepBatch.add

    def add(self, prompt_ids, response_ids, group, answer, is_demo=False, **kw):
        if is_demo:
            added.append((prompt_ids, response_ids))
        return real_add(self, prompt_ids, response_ids, group, answer, is_demo=is_demo, **kw)

    monkeypatch.setattr(StepBatch, "add", add)
    cfg = _cfg(tiny_model_dir, tmp_path / "r", f"objective.demo_source={source}", "objective.bootstrap_fallback=none")
    cfg.run.steps = 1
    run = train(cfg)
    t = calls["t"]
    doc = json.loads((run / boot_mod.FILE).read_text())
    n = len(t.train_set)
    assert calls["n"] == 1 and doc["cost"]["samples"] == n * 3 and doc["cost"]["samples_per_prompt"] == 3
    # the shortest correct sample of each odd prompt; no demonstration for the even ones (fallback none)
    assert sorted(int(i) for i in doc["demos"]) == [i for i in range(n) if i % 2]
    for i, d in doc["demos"].items():
        ex = t.train_set[int(i)]
        assert d == encode_response(t.tokenizer, f"#### {ex.answer}")
        assert t.task.verify(t.tokenizer.decode(d, skip_special_tokens=True), ex.answer).reward > 0
    hinted = [p for p in calls["prompts"] if "The answer is" in p]
    assert len(hinted) == (n if source == "rationalised" else 0)
    # trained on the prompts as the data has them: no hint in any demonstration's prompt
    assert added and all("The answer is" not in t.tokenizer.decode(p) for p, _ in added)
    prompts_of = {tuple(t.train_set[int(i)].prompt_ids): d for i, d in doc["demos"].items()}
    assert all(prompts_of.get(tuple(p)) == r for p, r in added)
    # resume: read from the run directory, not collected again
    train(load_config(None, str(run / rundir.CONFIG), ["run.steps=2"]), run_dir=run, resume=True)
    assert calls["n"] == 1
    assert len(rundir.read_jsonl(run / rundir.METRICS)) == 2


def test_pick_demo_for_bootstrapped_sources():
    assert pick_demo("rejection", [1], [2]) == ([2], "self")
    assert pick_demo("rejection", [1], None) == ([1], "expert")
    assert pick_demo("rationalised", [1], None, "none") == (None, "none")


def test_bootstrap_keys_are_checked():
    with pytest.raises(ConfigError, match="bootstrap_k must be > 0"):
        load_config("srft", overrides=["objective.bootstrap_k=0"])
    with pytest.raises(ConfigError, match="bootstrap_fallback"):
        load_config("srft", overrides=["objective.bootstrap_fallback=maybe"])
