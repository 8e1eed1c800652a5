"""The peer presets as their papers and official code define them: CHORD's separate reductions and
advantage group, ASFT's KL direction, the GRPO family's normalisations, ReLIFT's advantages."""

import dataclasses
import math

import pytest
import torch

from srft.cli import main
from srft.config import ConfigError, load_config
from srft.objective import kl_full, reduce_terms, token_losses
from srft.tasks.base import Score
from srft.training.step_batch import StepBatch


def _score(r):
    return Score(reward=r, extracted=None, format_ok=True, correct=r > 0)


def _counts(mask_BT, is_demo_B, max_len):
    out = {}
    for kind, keep_B in (("all", torch.ones_like(is_demo_B)), ("demos", is_demo_B), ("rollouts", ~is_demo_B)):
        m = mask_BT[keep_B]
        out[kind] = dict(num_tokens=float(m.sum()), num_seqs=float(keep_B.sum()), max_len=max_len)
    return out


# --------------------------------------------------------------------------- term_norm


def _two_kinds():
    # seq 0 a demonstration with 2 tokens, seq 1 a rollout with 3 tokens
    mask_BT = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    is_demo_B = torch.tensor([True, False])
    terms = {"sft": torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]]),
             "grpo": torch.tensor([[0.0, 0.0, 0.0], [3.0, 3.0, 6.0]]),
             "kl": torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])}
    return terms, mask_BT, is_demo_B


def test_term_norm_own_divides_each_term_by_its_own_tokens():
    terms, mask_BT, is_demo_B = _two_kinds()
    counts = _counts(mask_BT, is_demo_B, max_len=3)
    base = load_config("grpo").objective
    shared = dataclasses.replace(base, loss_agg="token-mean", term_norm="shared")
    own = dataclasses.replace(base, loss_agg="token-mean", term_norm="own", kl_tokens="demos")
    r = reduce_terms(shared, terms, mask_BT, is_demo_B, counts)
    # shared: every term / 5 tokens: sft (1+2)/5 = 0.6, grpo (3+3+6)/5 = 2.4, kl 1/5 = 0.2
    assert [float(r[n]) for n in ("sft", "grpo", "kl")] == pytest.approx([0.6, 2.4, 0.2])
    r = reduce_terms(own, terms, mask_BT, is_demo_B, counts)
    # own: sft / 2 demonstration tokens = 1.5, grpo / 3 rollout tokens = 4, kl (demos) 1/2 = 0.5
    assert [float(r[n]) for n in ("sft", "grpo", "kl")] == pytest.approx([1.5, 4.0, 0.5])
    # token-sum-norm with own: sft 3 / (1 demo x 3) = 1, grpo 12 / (1 rollout x 3) = 4
    r = reduce_terms(dataclasses.replace(own, loss_agg="token-sum-norm"), terms, mask_BT, is_demo_B, counts)
    assert [float(r[n]) for n in ("sft", "grpo")] == pytest.approx([1.0, 4.0])


def test_term_norm_own_micro_batches_add_up_to_the_whole_step():
    torch.manual_seed(0)
    B, T = 6, 4
    mask_BT = (torch.rand(B, T) > 0.3).float()
    mask_BT[:, 0] = 1
    is_demo_B = torch.tensor([True, False, False, True, False, False])
    terms = {"sft": torch.randn(B, T) * is_demo_B[:, None], "grpo": torch.randn(B, T) * ~is_demo_B[:, None]}
    counts = _counts(mask_BT, is_demo_B, max_len=T)
    for agg in ("token-mean", "seq-mean-token-mean", "token-sum-norm"):
        cfg = dataclasses.replace(load_config("chord").objective, loss_agg=agg)
        whole = reduce_terms(cfg, terms, mask_BT, is_demo_B, counts)
        parts = [reduce_terms(cfg, {n: v[i:i + 2] for n, v in terms.items()}, mask_BT[i:i + 2], is_demo_B[i:i + 2],
                              counts) for i in range(0, B, 2)]
        for n in terms:
            assert float(sum(p[n] for p in parts)) == pytest.approx(float(whole[n]), abs=1e-6), (agg, n)


def test_chord_sft_share_is_mu_times_the_mean_demonstration_cross_entropy():
    """mu acts as mu: the reduced SFT term is mu * mean(-log pi) over demonstration tokens,
    whatever the number of rollouts (with a shared normaliser it would be about mu / (G + 1))."""
    cfg = load_config("chord-phi", None, ["objective.sft_weight=constant"]).objective  # mu = 0.1 constant
    G, T = 8, 4
    logp_BT = torch.log(torch.full((G + 1, T), 0.5)).requires_grad_()
    mask_BT = torch.ones(G + 1, T)
    is_demo_B = torch.tensor([False] * G + [True])
    correct_B = torch.tensor([True, False] * (G // 2) + [True])
    adv_B = torch.zeros(G + 1)
    terms, _ = token_losses(cfg, logp_BT, torch.zeros(G + 1, T), mask_BT, is_demo_B, correct_B, adv_B)
    r = reduce_terms(cfg, terms, mask_BT, is_demo_B, _counts(mask_BT, is_demo_B, T))
    # every demonstration token: -log 0.5 = 0.6931; times mu 0.1 = 0.06931
    assert float(r["sft"]) == pytest.approx(0.1 * math.log(2), abs=1e-6)
    # the entropy bonus: -0.001 * 0 entropy = 0, scaled by 1 - mu; GRPO with A = 0: 0
    assert float(r["grpo"]) == 0.0
    sum(r.values()).backward()
    # the gradient reaches demonstration tokens only (the rollouts' advantages are 0)
    assert torch.count_nonzero(logp_BT.grad[:G]) == 0 and torch.count_nonzero(logp_BT.grad[G]) == T


# --------------------------------------------------------------------------- adv_group


def _group_with_demo(adv_group):
    b = StepBatch(idx=[0], n_plain=3, n_prefixed=0)
    for r in ([1], [2], [3]):
        b.add([9], r, 0, "a")
    b.add([9], [4], 0, "a", is_demo=True)
    b.finish([_score(r) for r in (0.0, 0.0, 0.0, 1.0)], "std", 1e-6, adv_group)
    return b


def test_adv_group_rollouts_keeps_the_demonstration_out_of_the_group():
    # all three rollouts wrong, the demonstration correct
    # all: rewards (0, 0, 0, 1), mean 1/4, std sqrt(3/16 * 4/3) = 0.5: rollouts -0.25/0.5 = -0.5, demo 1.5
    assert _group_with_demo("all").adv_N.tolist() == pytest.approx([-0.5, -0.5, -0.5, 1.5], abs=1e-4)
    # rollouts: the group is (0, 0, 0), all equal: every advantage 0, the demonstration's too
    assert _group_with_demo("rollouts").adv_N.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_adv_group_rollouts_mixed_group_is_the_rollouts_grpo_advantage():
    b = StepBatch(idx=[0], n_plain=2, n_prefixed=0)
    b.add([9], [1], 0, "a")
    b.add([9], [2], 0, "a")
    b.add([9], [3], 0, "a", is_demo=True)
    b.finish([_score(r) for r in (1.0, 0.0, 1.0)], "mean", 1e-6, "rollouts")
    # rollouts (1, 0): mean 1/2 -> (0.5, -0.5); the demonstration 0
    assert b.adv_N.tolist() == [0.5, -0.5, 0.0]


# --------------------------------------------------------------------------- ASFT's KL


def test_kl_ref_pi_by_hand_and_its_gradient():
    # ref (0.5, 0.5), pi (0.25, 0.75):
    # KL(ref || pi) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 (0.69315 - 0.40547) = 0.14384
    # KL(pi || ref) = 0.25 ln(0.25/0.5) + 0.75 ln(0.75/0.5) = -0.17329 + 0.30410 = 0.13081
    logits = torch.log(torch.tensor([[[0.25, 0.75]]])).requires_grad_()
    ref = torch.log(torch.tensor([[[0.5, 0.5]]])).requires_grad_()
    logp = torch.log_softmax(logits, -1)
    kl = kl_full(logp, ref, "ref-pi")
    assert float(kl) == pytest.approx(0.14384, abs=1e-5)
    assert float(kl_full(logp, ref, "pi-ref")) == pytest.approx(0.13081, abs=1e-5)
    kl.sum().backward()
    # d/dlogits of sum_v ref (log ref - log pi) = pi - ref = (-0.25, 0.25); the reference gets none
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.25, 0.25]]]))
    assert ref.grad is None
    with pytest.raises(ValueError, match="pi-ref or ref-pi"):
        kl_full(logp, ref, "nope")


def test_kl_ref_pi_loop_equals_vectorised():
    torch.manual_seed(1)
    logp = torch.log_softmax(torch.randn(2, 3, 5), -1)
    ref = torch.log_softmax(torch.randn(2, 3, 5), -1)
    loop = torch.tensor([[sum(float(ref[b, t, v].exp() * (ref[b, t, v] - logp[b, t, v])) for v in range(5))
                          for t in range(3)] for b in range(2)])
    torch.testing.assert_close(kl_full(logp, ref, "ref-pi"), loop, atol=1e-6, rtol=1e-5)


def test_kl_ref_pi_needs_the_full_estimator():
    with pytest.raises(ConfigError, match="kl_direction=ref-pi needs objective.kl_estimator=full"):
        load_config("asft", None, ["objective.kl_estimator=k3"])


# --------------------------------------------------------------------------- the presets' settings


@pytest.mark.parametrize("preset, expected", [
    ("grpo", dict(adv_norm="std", loss_agg="seq-mean-token-mean", clip_eps_high=0.2, demonstrations=False)),
    ("dr-grpo", dict(adv_norm="mean", loss_agg="token-sum-norm", clip_eps_high=0.2, demonstrations=False)),
    ("dapo", dict(adv_norm="std", loss_agg="token-mean", clip_eps=0.2, clip_eps_high=0.28, entropy_coef=0.0,
                  kl_coef=0.0, demonstrations=False, overlong_buffer=0.2, overlong_penalty=1.0)),
    ("chord", dict(adv_group="rollouts", term_norm="own", loss_agg="token-mean", mix="chord")),
    ("chord-phi", dict(adv_group="rollouts", term_norm="own", loss_agg="token-mean", mix="chord")),
    ("asft", dict(kl_direction="ref-pi", kl_estimator="full", kl_tokens="demos", kl_coef=0.1, term_norm="own",
                  loss_agg="token-mean")),
    ("relift", dict(adv_norm="mean")),
    ("srft", dict(adv_group="all", term_norm="shared", kl_direction="pi-ref", loss_agg="token-sum-norm")),
])
def test_preset_settings(preset, expected):
    obj = load_config(preset).objective
    assert {k: getattr(obj, k) for k in expected} == expected


def test_new_keys_are_listed_with_their_help(capsys):
    assert main(["config", "--keys"]) == 0
    out = capsys.readouterr().out
    for key in ("objective.adv_group", "objective.term_norm", "objective.kl_direction"):
        assert key in out, key


@pytest.mark.parametrize("override, message", [
    ("objective.adv_group=demos", "adv_group"),
    ("objective.term_norm=rollouts", "term_norm"),
    ("objective.kl_direction=both", "kl_direction"),
])
def test_new_keys_refuse_unknown_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("srft", None, [override])


# --------------------------------------------------------------------------- optim.mini_batches


def _tiny_run(preset, model_dir, tmp_path, *extra):
    import json

    from srft.training.loop import train

    before = torch.get_num_threads()
    try:
        cfg = load_config(preset, None, [
            f"model.path={model_dir}", "run.eval_every=0", "run.save_every=0", "run.eval_k=2", "run.progress=false",
            "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20", "data.test_size=4",
            "data.max_response_tokens=24", "data.too_long=truncate", "optim.micro_batch=4", "model.threads=1",
            "run.steps=2", f"run.out_dir={tmp_path}/run", *extra])
        run_dir = train(cfg)
    finally:
        torch.set_num_threads(before)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _mixed_rewards(monkeypatch):
    """Every third sequence counts as correct, so that every group has mixed rewards."""
    import srft.training.loop as loop

    real = loop.verify_all

    def verify_all(task, texts, answers):
        return [dataclasses.replace(s, reward=1.0, correct=True) if i % 3 == 0 else s
                for i, s in enumerate(real(task, texts, answers))]

    monkeypatch.setattr(loop, "verify_all", verify_all)


def test_two_mini_batches_move_the_ratio_and_clipping_binds(tiny_model_dir, tmp_path, monkeypatch):
    _mixed_rewards(monkeypatch)
    # a large step and a narrow clip range, so that the second update's ratio leaves [1 - 0.01, 1 + 0.01]
    records = _tiny_run("grpo", tiny_model_dir, tmp_path, "optim.mini_batches=2", "optim.lr=0.05",
                        "optim.warmup_steps=0", "objective.clip_eps=0.01", "objective.clip_eps_high=0.01")
    # the first mini-batch's update sees ratio 1 (old = rollout-time = current), the second's does not
    assert all(r["clip_frac"] > 0 for r in records), [r["clip_frac"] for r in records]
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in records)


def test_one_mini_batch_records_as_before(tiny_model_dir, tmp_path, monkeypatch):
    _mixed_rewards(monkeypatch)
    one = _tiny_run("grpo", tiny_model_dir, tmp_path / "a", "run.seed=3")
    default = _tiny_run("grpo", tiny_model_dir, tmp_path / "b", "run.seed=3", "optim.mini_batches=1")
    drop = ("t_", "gen_tokens_per_s", "train_tokens_per_s")
    strip = lambda rs: [{k: v for k, v in r.items() if not k.startswith(drop)} for r in rs]  # noqa: E731
    assert strip(one) == strip(default) and "clip_frac" not in one[0]


def test_mini_batches_are_validated():
    with pytest.raises(ConfigError, match="optim.mini_batches=4 exceeds rollout.prompts_per_step=2"):
        load_config("grpo", None, ["optim.mini_batches=4", "rollout.prompts_per_step=2"])
    with pytest.raises(ConfigError, match="optim.mini_batches"):
        load_config("grpo", None, ["optim.mini_batches=0"])


def test_mini_batch_ids_cut_the_groups_by_global_position():
    from srft.distributed import SINGLE
    from srft.training.loop import mini_batch_ids

    b = StepBatch(idx=[0, 1, 2, 3], n_plain=1, n_prefixed=0)
    for g in range(4):
        b.add([9], [1], g, "a")
    b.add([9], [1], 2, "a", is_demo=True)  # the demonstration goes with its group
    assert mini_batch_ids(b, 2, SINGLE) == [[0, 1], [2, 3, 4]]

    class Rank1:  # rank 1 of 2 holds global groups 4..7: all of the second mini-batch
        enabled, rank, world = True, 1, 2

    assert mini_batch_ids(b, 2, Rank1()) == [[], [0, 1, 2, 3, 4]]


# --------------------------------------------------------------------------- ReLIFT after the RL step


def test_relift_after_takes_a_full_buffer_and_leaves_the_plan_alone():
    from srft.training.methods import Relift, StepPlan

    obj = load_config("relift").objective
    relift = Relift(size=2, mode="after")
    plan = StepPlan(0, obj)
    relift.plan(plan)
    assert plan.objective is obj and plan.idx is None  # the RL step stays an RL step
    assert relift.take_after() is None
    relift.observe(record := {"all_wrong_prompts": [4, 5, 6]})
    assert relift.take_after() == [4, 5] and relift.buffer == [6] and record["relift_sft_step"] is False


def test_relift_after_runs_an_sft_step_with_its_own_optimiser_and_resumes(tiny_model_dir, tmp_path):
    # the tiny model never answers right: every group is all-wrong, so 2 prompts fill a buffer of 2 each step
    extra = ("objective.relift_buffer=2", "run.steps=4")
    straight = _tiny_run("relift", tiny_model_dir, tmp_path / "a", *extra)
    assert all(r["relift_sft_step"] and r["relift_sft_loss"] > 0 for r in straight)
    assert all(r["relift_buffer"] == 0 for r in straight)
    # stopped after the checkpoint at step 2, then resumed: the SFT optimiser's state comes back
    import json

    from srft.training.loop import train

    cfg = load_config("relift", None, [
        f"model.path={tiny_model_dir}", "run.eval_every=0", "run.save_every=2", "run.eval_k=2", "run.progress=false",
        "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20", "data.test_size=4",
        "data.max_response_tokens=24", "data.too_long=truncate", "optim.micro_batch=4", "model.threads=1",
        f"run.out_dir={tmp_path}/b", *extra])
    before = torch.get_num_threads()
    try:
        cfg.run.steps = 2
        run_dir = train(cfg)
        ckpt = torch.load(sorted((run_dir / "checkpoints").glob("step*"))[-1] / "trainer.pt", weights_only=False)
        assert ckpt["extra"]["sft_optimizer"]["state"]  # Adam moments of the SFT optimiser
        cfg.run.steps = 4
        train(cfg, run_dir=run_dir, resume=True)
    finally:
        torch.set_num_threads(before)
    resumed = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [0, 1, 2, 3]
    for ra, rb in zip(straight, resumed):
        for key in ("loss", "grad_norm", "relift_sft_loss", "relift_sft_grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)
