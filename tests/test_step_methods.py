"""The step-level methods and the step batch, on their own (no model)."""

import pytest
import torch

from srft.config import load_config
from srft.tasks.base import Score
from srft.training.methods import (
    DemoPool,
    Relift,
    Sasr,
    StepPlan,
    TwoStage,
    WeightFactors,
    build_step_methods,
    load_methods_state,
    methods_state,
)
from srft.training.step_batch import StepBatch


def _score(r):
    return Score(reward=r, extracted=None, format_ok=True, correct=r > 0)


def test_relift_buffers_failed_prompts_then_plans_an_sft_step_on_them():
    obj = load_config("relift").objective
    relift = Relift(size=2)
    plan = StepPlan(0, obj)
    relift.plan(plan)
    assert plan.idx is None and plan.objective is obj  # buffer empty: an ordinary step
    record = {"all_wrong_prompts": [7, 3, 9]}
    relift.observe(record)
    assert record["relift_buffer"] == 3 and record["relift_sft_step"] is False
    plan = StepPlan(1, obj)
    relift.plan(plan)
    assert plan.idx == [7, 3] and plan.objective.sft_coef == 1.0 and plan.objective.self_rollout == "none"
    record = {"all_wrong_prompts": [5]}
    relift.observe(record)  # an SFT step's failures are not buffered again
    assert record["relift_buffer"] == 1 and record["relift_sft_step"] is True


def test_two_stage_is_sft_until_its_step():
    obj = load_config("sft-then-grpo", None, ["objective.sft_stage_steps=2"]).objective
    stage = TwoStage(2)
    kinds = []
    for step in range(4):
        plan = StepPlan(step, obj)
        stage.plan(plan)
        kinds.append(plan.objective.sft_coef == 1.0 and plan.objective.self_rollout == "none")
    assert kinds == [True, True, False, False]


def test_sasr_warm_up_is_sft_and_later_draws_follow_p():
    cfg = load_config("sasr", None, ["objective.sasr_warmup_steps=2"])
    norms = {0: 1.0, 1: 3.0, 2: 2.0}
    sasr = Sasr(cfg, lambda step: norms[step])
    for step in (0, 1):
        plan = StepPlan(step, cfg.objective)
        sasr.plan(plan)
        assert plan.record["sasr_sft"] and plan.record["sasr_p_sft"] == 1.0
    plan = StepPlan(2, cfg.objective)
    sasr.plan(plan)
    # g0 = (1 + 3) / 2 = 2, g = 2: p = 2 / (2 + 2) = 0.5
    assert plan.record["sasr_p_sft"] == pytest.approx(0.5) and plan.record["sasr_grad_norm"] == 2.0


def test_target_controller_moves_factors_after_each_step():
    obj = load_config("srft", None, ["objective.sft_weight=target", "objective.rl_weight=target",
                                     "objective.entropy_target=0.3", "objective.controller_gain=0.5"]).objective
    w = WeightFactors(obj, total_steps=10)
    plan = StepPlan(0, obj)
    w.plan(plan)
    assert plan.factors == (1.0, 1.0)  # exp(0)
    w.observe({"entropy_rollout": 0.1})  # 0.2 below the target: w_SFT up, w_RL down by 0.5 * 0.2 in log
    assert (w.log_sft, w.log_rl) == pytest.approx((0.1, -0.1))
    plan = StepPlan(1, obj)
    w.plan(plan)
    assert plan.factors == pytest.approx((torch.tensor(0.1).exp().item(), torch.tensor(-0.1).exp().item()))


def test_methods_state_round_trips_and_reads_the_earlier_flat_layout():
    cfg = load_config("relift", None, ["objective.relift_buffer=2", "objective.sasr_warmup_steps=1"])
    a = build_step_methods(cfg, lambda step: 1.0)
    assert [m.name for m in a] == ["weights", "pool", "sasr", "relift"]
    a[1].add([4], [[[1, 2, 3], [1, 2]]], [[True, True]])
    a[3].buffer = [5, 6, 7]
    a[2].g0_sum, a[2].g0_n = 2.5, 2
    b = build_step_methods(cfg, lambda step: 1.0)
    load_methods_state(b, methods_state(a))
    assert methods_state(b) == methods_state(a) and b[1].get(4) == [1, 2]  # the shortest correct one
    # checkpoints of the earlier version kept everything in three flat entries
    c = build_step_methods(cfg, lambda step: 1.0)
    load_methods_state(c, {"relift_buffer": [5, 6, 7], "demo_pool": {"4": [1, 2]},
                           "control": {"log_sft": 0.0, "log_rl": 0.0, "sasr_g0_sum": 2.5, "sasr_g0_n": 2}})
    assert methods_state(c) == methods_state(a)


def test_demo_pool_keeps_the_shortest_correct_rollout():
    pool = DemoPool()
    pool.add([1, 2], [[[9, 9, 9], [8]], [[7]]], [[True, False], [False]])
    assert pool.get(1) == [9, 9, 9] and pool.get(2) is None and len(pool) == 1
    pool.add([1], [[[6, 6]]], [[True]])
    assert pool.get(1) == [6, 6]


def test_step_batch_advantages_over_rollouts_and_demonstrations():
    b = StepBatch(idx=[10, 11], n_plain=2, n_prefixed=0)
    b.add([1], [2, 3], 0, "a")
    b.add([1], [4], 0, "a")
    b.add([5], [6], 1, "b")
    b.add([5], [7, 8, 9], 1, "b")
    b.add([1], [2, 2], 0, "a", is_demo=True)
    b.finish([_score(r) for r in (1.0, 0.0, 0.0, 0.0, 1.0)], "std", 1e-6)
    assert b.lengths == [2, 1, 1, 3, 2] and b.is_demo_N.tolist() == [False] * 4 + [True]
    # group 0: rewards (1, 0, 1), mean 2/3, std (unbiased) sqrt(1/3) = 0.5774:
    # advantages (1/3, -2/3, 1/3) / 0.5774 = (0.577, -1.155, 0.577); group 1 all 0: advantages 0
    assert b.adv_N.tolist() == pytest.approx([0.5774, -1.1547, 0.0, 0.0, 0.5774], abs=1e-3)
    assert b.correct_N.tolist() == [True, False, False, False, True]
    with pytest.raises(ValueError, match="4 scores for 5 sequences"):
        b.finish([_score(0.0)] * 4, "std", 1e-6)


def test_step_schedules_are_steps_or_fractions_of_the_run():
    from srft.config import ConfigError, step_count, with_step_counts

    assert step_count(0.3333, 300) == 100 and step_count(0.3333, 60) == 20  # round(99.99), round(19.998)
    assert step_count(25, 300) == 25 and step_count(0, 300) == 0
    cfg = with_step_counts(load_config("sft-then-grpo", None, ["run.steps=60", "objective.mu_decay_steps=7"]))
    assert (cfg.objective.sft_stage_steps, cfg.objective.mu_decay_steps) == (20, 7)
    with pytest.raises(ConfigError, match="whole number of steps"):
        load_config("sasr", None, ["objective.sasr_warmup_steps=2.5"])
