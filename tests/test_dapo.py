"""DAPO's dynamic sampling (rollout.filter_groups) and soft overlong punishment (objective.overlong_buffer)."""

import dataclasses
import json

import pytest
import torch

from srft.config import ConfigError, load_config
from srft.objective import group_advantages, overlong_penalty
from srft.tasks.base import Score
from srft.training.step_batch import StepBatch


# --------------------------------------------------------------------------- overlong punishment
def test_overlong_penalty_by_hand():
    # max_len 10, buffer 0.2 -> the last 2 tokens: length 8 is free, 9 is half-way, 10 at the limit
    lengths_N = torch.tensor([5, 8, 9, 10])
    assert overlong_penalty(lengths_N, 10, 0.2).tolist() == [0.0, 0.0, -0.5, -1.0]
    # the factor scales it: 9 -> -0.5 * 0.4 = -0.2
    assert overlong_penalty(lengths_N, 10, 0.2, factor=0.4).tolist() == pytest.approx([0.0, 0.0, -0.2, -0.4])
    # buffer 0.25 of 64 = 16 tokens: free up to 48; 56 -> -(56 - 48) / 16 = -0.5
    assert overlong_penalty(torch.tensor([48, 56, 64]), 64, 0.25).tolist() == [0.0, -0.5, -1.0]
    assert overlong_penalty(lengths_N, 10, 0.0).tolist() == [0.0] * 4  # off


def _score(r: float) -> Score:
    return Score(r, "1" if r else None, True, bool(r))


def _batch(groups: list[list[float]], demo_rewards: list[float] | None = None) -> tuple[StepBatch, list[Score]]:
    """A batch of len(groups) prompts, rollout g/j with response [g, j] and the given rewards."""
    b = StepBatch(idx=[100 + g for g in range(len(groups))], n_plain=len(groups[0]), n_prefixed=0)
    scores = []
    for g, rs in enumerate(groups):
        for j, r in enumerate(rs):
            b.add([7], [g, j], g, "1", logprobs=[-0.5, -0.5])
            scores.append(_score(r))
        b.plain_ok.append([r > 0 for r in rs])
    for g, r in enumerate(demo_rewards or []):
        b.add([7], [g, 9, 9], g, "1", is_demo=True)
        b.demo_src.append("expert")
        scores.append(_score(r))
    return b, scores


def test_shaping_moves_rewards_and_advantages_not_correctness():
    b, scores = _batch([[1.0, 1.0, 0.0]])
    shaping_N = torch.tensor([0.0, -0.5, 0.0])  # the second correct rollout ran into the buffer
    b.finish(scores, "mean", 1e-6, shaping_N=shaping_N)
    assert b.correct_N.tolist() == [True, True, False]  # the verifier's verdicts
    assert b.rewards_N.tolist() == [1.0, 0.5, 0.0]
    # mean 0.5: advantages 0.5, 0, -0.5
    assert b.adv_N.tolist() == pytest.approx([0.5, 0.0, -0.5])


def test_a_shaped_all_correct_group_is_no_longer_all_equal():
    b, scores = _batch([[1.0, 1.0]])
    b.finish(scores, "mean", 1e-6, shaping_N=torch.tensor([0.0, -1.0]))
    assert b.adv_N.tolist() == pytest.approx([0.5, -0.5])


# --------------------------------------------------------------------------- selecting groups
def test_select_groups_equals_a_batch_of_those_groups_alone():
    rewards = [[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
    whole, scores = _batch(rewards, demo_rewards=[1.0, 1.0, 1.0, 1.0])
    whole.finish(scores, "std", 1e-6)
    picked = whole.select_groups([3, 0])
    alone, alone_scores = _batch([rewards[3], rewards[0]], demo_rewards=[1.0, 1.0])
    alone.finish(alone_scores, "std", 1e-6)
    assert picked.idx == [103, 100]
    assert picked.group == alone.group and picked.is_demo == alone.is_demo
    assert picked.plain_ok == alone.plain_ok and picked.demo_from == alone.demo_from
    assert [r for _, r in picked.seqs] == [[3, 0], [3, 1], [0, 0], [0, 1], [3, 9, 9], [0, 9, 9]]
    assert torch.equal(picked.adv_N, alone.adv_N) and torch.equal(picked.rewards_N, alone.rewards_N)
    # the advantage is per group, so the vectorised one over all four groups agrees with either
    full_adv = group_advantages(whole.rewards_N, whole.group_N, "std", 1e-6)
    assert torch.equal(full_adv, whole.adv_N)


# --------------------------------------------------------------------------- in training
def _run(model_dir, tmp_path, monkeypatch, correct, *extra):
    import srft.training.loop as loop

    real = loop.verify_all
    calls = []

    def verify_all(task, texts, answers):
        calls.append(list(answers))
        return [dataclasses.replace(s, reward=1.0, correct=True) if correct(i, a) else
                dataclasses.replace(s, reward=0.0, correct=False)
                for i, (s, a) in enumerate(zip(real(task, texts, answers), answers))]

    monkeypatch.setattr(loop, "verify_all", verify_all)
    before = torch.get_num_threads()
    try:
        cfg = load_config("dapo", None, [
            f"model.path={model_dir}", "run.eval_every=0", "run.save_every=0", "run.eval_k=1", "run.progress=false",
            "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=40", "data.test_size=2",
            "data.max_response_tokens=24", "data.too_long=truncate", "optim.micro_batch=4", "model.threads=1",
            "run.steps=3", f"run.out_dir={tmp_path}/run", *extra])
        run_dir = loop.train(cfg)
    finally:
        torch.set_num_threads(before)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return records, calls


def test_filter_groups_keeps_only_mixed_groups_and_draws_more(tiny_model_dir, tmp_path, monkeypatch):
    # the first rollout of a group is correct when its answer is even: those groups are mixed,
    # the odd ones all wrong (each call scores whole groups of 3 rollouts, in order)
    records, calls = _run(tiny_model_dir, tmp_path, monkeypatch, lambda i, a: i % 3 == 0 and int(a) % 2 == 0)
    assert len(records) == 3
    for r in records:
        assert 1 <= r["filter_kept"] <= 2 and r["filter_drawn"] >= 2
        assert r["frac_all_wrong"] == 0 and r["frac_all_correct"] == 0  # only mixed groups trained
    # at least one step needed a further draw (fixed by run.seed, so the test always sees one)
    assert any(r["filter_drawn"] > 2 for r in records), [r["filter_drawn"] for r in records]
    for r in records:
        # gen_tokens counts the discarded groups' rollouts too (3 a group, each at least one
        # token), not only the kept ones' (response_len is their mean length)
        kept_tokens = r["response_len"] * 3 * r["filter_kept"]
        assert r["gen_tokens"] >= round(kept_tokens) + 3 * (r["filter_drawn"] - r["filter_kept"])
        # mixed groups: one rollout in 3 correct; the all-wrong ones drawn pull the whole draw's accuracy lower
        assert r["rollout_acc"] == pytest.approx(1 / 3)
        assert r["filter_drawn_acc"] == pytest.approx(r["filter_kept"] / (3 * r["filter_drawn"]))
    assert len(calls) > 3 + 1  # more verifier calls than one a step (+ the evaluation)


def test_filter_groups_with_no_mixed_group_trains_on_the_first_draw(tiny_model_dir, tmp_path, monkeypatch):
    # (no overlong penalty: it would make the all-wrong groups' rewards differ by length)
    records, _ = _run(tiny_model_dir, tmp_path, monkeypatch, lambda i, a: False, "rollout.filter_rounds=2",
                      "objective.overlong_buffer=0")
    for r in records:
        assert r["filter_kept"] == 0 and 2 < r["filter_drawn"] <= 4  # two draws of 2 prompts (distinct ones)
        assert r["frac_all_wrong"] == 1 and r["loss"] == 0  # all advantages 0: nothing to learn
        assert r["filter_drawn_acc"] == 0
        assert not r["skipped"]


def test_overlong_buffer_in_a_run_lowers_the_reward_of_long_correct_rollouts(tiny_model_dir, tmp_path, monkeypatch):
    # every rollout correct; the tiny random model runs to the 24-token limit, so the penalty
    # (buffer 0.5: tokens 13-24) takes most of the reward
    records, _ = _run(tiny_model_dir, tmp_path, monkeypatch, lambda i, a: True, "rollout.filter_groups=false",
                      "objective.overlong_buffer=0.5")
    for r in records:
        assert r["rollout_acc"] == 1.0
        assert r["reward_mean"] < 1.0


def test_config_of_the_dapo_pieces():
    cfg = load_config("dapo")
    assert cfg.rollout.filter_groups and cfg.objective.overlong_buffer == 0.2 and cfg.objective.overlong_penalty == 1
    assert not load_config("grpo").rollout.filter_groups and load_config("grpo").objective.overlong_buffer == 0
    for bad in ("objective.overlong_buffer=1.0", "objective.overlong_buffer=-0.1", "objective.overlong_penalty=-1",
                "rollout.filter_rounds=0"):
        with pytest.raises(ConfigError):
            load_config("dapo", None, [bad])
