"""Peer methods that only need the objective: SFT, DFT, LUFFY, CHORD(-phi), SRFT ablations.

Hand-computed weights and mu schedule, stop-gradients, the term wiring of token_losses,
and for every preset a two-step run on the tiny model checking which loss terms are on.
"""

import dataclasses
import json
import math

import pytest
import torch

from srft.config import ConfigError, ObjectiveConfig, list_presets, load_config, with_step_counts
from srft.objective import (
    TERMS,
    agg_loss,
    chord_mu,
    kl_full,
    phi_weight,
    prob_weight,
    sft_weight,
    token_logprobs_and_entropy,
    token_losses,
)

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- hand-computed weights


def test_prob_weight_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0]]))
    # DFT: w = sg(pi) -> [0.5, 0.25, 1.0]
    torch.testing.assert_close(prob_weight(logp), torch.tensor([[0.5, 0.25, 1.0]]))
    # with c_sft = 2: [1.0, 0.5, 2.0]
    torch.testing.assert_close(sft_weight(torch.zeros(1, 3), 2.0, "prob", logp), torch.tensor([[1.0, 0.5, 2.0]]))


def test_phi_weight_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25, 1.0, 0.9]]))
    # phi = pi (1 - pi): 0.5 * 0.5 = 0.25; 0.25 * 0.75 = 0.1875; 1 * 0 = 0; 0.9 * 0.1 = 0.09
    expected = torch.tensor([[0.25, 0.1875, 0.0, 0.09]])
    torch.testing.assert_close(phi_weight(logp), expected)
    torch.testing.assert_close(sft_weight(torch.zeros(1, 4), 0.1, "phi", logp), 0.1 * expected)


def test_prob_and_phi_need_the_log_probs():
    for mode in ("prob", "phi"):
        with pytest.raises(ValueError, match="log-probabilities"):
            sft_weight(torch.zeros(1, 2), 1.0, mode)
    with pytest.raises(ValueError, match="exp, constant, prob, phi, linear, cosine or target"):
        sft_weight(torch.zeros(1, 2), 1.0, "nope")


def test_chord_mu_by_hand():
    peak, valley, warm, decay = 0.9, 0.05, 10, 200
    mu = lambda s: chord_mu(s, peak, valley, warm, decay)  # noqa: E731
    # warm-up: peak * (step + 1) / 10: step 0 -> 0.09, step 4 -> 0.45, step 9 -> 0.9
    assert mu(0) == pytest.approx(0.09) and mu(4) == pytest.approx(0.45) and mu(9) == pytest.approx(0.9)
    # decay starts at step 10 with cos(0) = 1 -> peak
    assert mu(10) == pytest.approx(0.9)
    # step 60: 50 of 200 decay steps, 0.05 + 0.85 * 0.5 * (1 + cos(pi/4)) = 0.05 + 0.425 * 1.70711 = 0.77552
    assert mu(60) == pytest.approx(0.77552, abs=1e-5)
    # step 110: half way, cos(pi/2) = 0 -> 0.05 + 0.425 = 0.475
    assert mu(110) == pytest.approx(0.475)
    # step 210 and later: the valley
    assert mu(210) == pytest.approx(0.05) and mu(10_000) == pytest.approx(0.05)
    # no warm-up: starts at the peak; no warm-up and no decay: the valley throughout
    assert chord_mu(0, 0.8, 0.2, 0, 4) == pytest.approx(0.8)
    assert chord_mu(2, 0.8, 0.2, 0, 4) == pytest.approx(0.5)  # 0.2 + 0.6 * 0.5 * (1 + cos(pi/2))
    assert chord_mu(0, 0.8, 0.2, 0, 0) == chord_mu(50, 0.8, 0.2, 0, 0) == pytest.approx(0.2)
    # monotone: up during the warm-up, down during the decay
    values = [mu(s) for s in range(0, 250)]
    assert all(a <= b for a, b in zip(values[:10], values[1:10]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_chord_mu_config_is_checked():
    with pytest.raises(ConfigError, match="mu_peak"):
        load_config("chord", None, ["objective.mu_peak=1.5"])
    with pytest.raises(ConfigError, match="mu_decay_steps"):
        load_config("chord", None, ["objective.mu_decay_steps=-1"])


# --------------------------------------------------------------------------- stop-gradients


def _logits(seed: int, B: int = 4, T: int = 5, V: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    return logits, tokens


@pytest.mark.parametrize("mode", ["prob", "phi"])
def test_prob_and_phi_weights_carry_no_gradient(mode):
    logits, tokens = _logits(1)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    w = sft_weight(ent, 1.0, mode, logp)
    assert not w.requires_grad
    # The SFT term's gradient is that of -log pi times a constant: if the weight let
    # gradient through, d(-pi log pi) would add -log pi * d(pi) for DFT.
    B, T = tokens.shape
    mask = torch.ones(B, T)
    is_demo = torch.ones(B, dtype=torch.bool)
    cfg = ObjectiveConfig(sft_coef=1.0, sft_weight=mode, offpolicy_coef=0.0, self_rollout="none", entropy_coef=0.0)
    terms, weights = token_losses(cfg, logp, ent, mask, is_demo, torch.zeros(B, dtype=torch.bool), torch.zeros(B))
    (g_term,) = torch.autograd.grad(terms["sft"].sum(), logits)
    logp2, _ = token_logprobs_and_entropy(logits, tokens)
    const_w = weights["w_sft"].clone()
    (g_const,) = torch.autograd.grad((const_w * -logp2).sum(), logits)
    torch.testing.assert_close(g_term, g_const)
    # and it differs from the gradient with the weight not detached
    logp3, _ = token_logprobs_and_entropy(logits, tokens)
    p3 = logp3.exp()
    w_live = p3 if mode == "prob" else p3 * (1 - p3)
    (g_live,) = torch.autograd.grad((w_live * -logp3).sum(), logits)
    assert not torch.allclose(g_term, g_live)


# --------------------------------------------------------------------------- token_losses wiring


def _two_sequences():
    # row 0: a demonstration with token probabilities [0.5, 0.25]; row 1: a correct rollout [0.5, 0.5]
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])).requires_grad_(True)
    ent = torch.full((2, 2), LN2)
    mask = torch.ones(2, 2)
    is_demo = torch.tensor([True, False])
    correct = torch.tensor([True, True])
    adv = torch.tensor([0.75, -0.25])
    return logp, ent, mask, is_demo, correct, adv


def test_dft_term_by_hand():
    logp, ent, mask, is_demo, correct, adv = _two_sequences()
    cfg = load_config("dft").objective
    terms, weights = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    # demo: sg(pi) * (-log pi) = 0.5 * ln 2 and 0.25 * 2 ln 2 = 0.5 ln 2; the rollout row: 0
    torch.testing.assert_close(terms["sft"], torch.tensor([[0.5 * LN2, 0.5 * LN2], [0.0, 0.0]]))
    torch.testing.assert_close(weights["w_sft"], torch.tensor([[0.5, 0.25], [0.0, 0.0]]))
    for name in TERMS:
        if name != "sft":
            assert torch.count_nonzero(terms[name]) == 0, name


def test_sft_preset_trains_on_demonstrations_only():
    logp, ent, mask, is_demo, correct, adv = _two_sequences()
    cfg = load_config("sft").objective
    for correct_rollout in (True, False):
        terms, _ = token_losses(cfg, logp, ent, mask, is_demo, torch.tensor([True, correct_rollout]), adv)
        # demo: 1 * (-log pi) = [ln 2, 2 ln 2]
        torch.testing.assert_close(terms["sft"], torch.tensor([[LN2, 2 * LN2], [0.0, 0.0]]))
        for name in TERMS:
            if name != "sft":
                assert torch.count_nonzero(terms[name]) == 0, name


def test_luffy_terms_by_hand():
    logp, ent, mask, is_demo, correct, adv = _two_sequences()
    cfg = load_config("luffy").objective
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    # demo: -A * pi / (pi + 0.1) with A = 0.75: pi = 0.5 -> -0.75 * 0.5 / 0.6 = -0.625;
    #   pi = 0.25 -> -0.75 * 0.25 / 0.35 = -0.535714
    torch.testing.assert_close(terms["offpolicy"], torch.tensor([[-0.625, -0.535714], [0.0, 0.0]]))
    # rollout: ratio 1 (old = current, detached) -> -A = 0.25 per token
    torch.testing.assert_close(terms["grpo"], torch.tensor([[0.0, 0.0], [0.25, 0.25]]))
    # entropy bonus -0.001 * ln 2 on rollout tokens; no SFT, no SRFT terms
    torch.testing.assert_close(terms["entropy_bonus"], torch.tensor([[0.0, 0.0], [-0.001 * LN2] * 2]))
    for name in ("sft", "pos", "neg", "kl"):
        assert torch.count_nonzero(terms[name]) == 0, name


def test_chord_scales_sft_by_mu_and_the_rest_by_one_minus_mu():
    logp, ent, mask, is_demo, correct, adv = _two_sequences()
    # the preset's mu schedule is in fractions of run.steps: 10 and 200 of the default 300
    chord = with_step_counts(load_config("chord")).objective
    plain = load_config("chord", None, ["objective.mix=add"]).objective
    base, _ = token_losses(plain, logp, ent, mask, is_demo, correct, adv)
    for step in (0, 4, 60, 500):
        mu = chord_mu(step, 0.9, 0.05, 10, 200)
        terms, weights = token_losses(chord, logp, ent, mask, is_demo, correct, adv, step=step)
        for name in TERMS:
            share = mu if name == "sft" else 1 - mu
            torch.testing.assert_close(terms[name], share * base[name], msg=f"{name} at step {step}")
        # the logged weight is the applied one: mu * 1 on demonstration tokens
        torch.testing.assert_close(weights["w_sft"], torch.tensor([[mu, mu], [0.0, 0.0]]))
    # step 0 by hand: mu = 0.09; sft = 0.09 * [ln 2, 2 ln 2]; grpo = 0.91 * 0.25
    terms, _ = token_losses(chord, logp, ent, mask, is_demo, correct, adv)  # step defaults to 0
    torch.testing.assert_close(terms["sft"][0], torch.tensor([0.09 * LN2, 0.18 * LN2]))
    torch.testing.assert_close(terms["grpo"][1], torch.tensor([0.2275, 0.2275]))


def test_chord_phi_weight_in_token_losses():
    logp, ent, mask, is_demo, correct, adv = _two_sequences()
    cfg = load_config("chord-phi").objective
    terms, weights = token_losses(cfg, logp, ent, mask, is_demo, correct, adv, step=123)
    # mu = 0.1 at every step; phi = [0.25, 0.1875] -> w = [0.025, 0.01875]
    torch.testing.assert_close(weights["w_sft"], torch.tensor([[0.025, 0.01875], [0.0, 0.0]]))
    # sft = w * (-log pi) = [0.025 ln 2, 0.01875 * 2 ln 2]
    torch.testing.assert_close(terms["sft"], torch.tensor([[0.025 * LN2, 0.0375 * LN2], [0.0, 0.0]]))
    torch.testing.assert_close(terms["grpo"], torch.tensor([[0.0, 0.0], [0.225, 0.225]]))  # 0.9 * 0.25


def _tiny_run_config(preset, model_dir, tmp_path, threads, *extra):
    """A few-second run of ``preset`` on the tiny model: 2 prompts x 3 rollouts a step."""
    return load_config(preset, None, [
        f"model.path={model_dir}", "run.eval_every=0", "run.save_every=0", "run.eval_k=2", "run.progress=false",
        "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20", "data.test_size=4",
        "data.max_response_tokens=48", "data.too_long=truncate", "optim.micro_batch=4", threads,
        f"run.out_dir={tmp_path}/run", *extra])


@pytest.mark.parametrize("preset", list_presets())
def test_terms_add_up_to_the_total(preset):
    g = torch.Generator().manual_seed(7)
    B, T, V = 8, 6, 5
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B, 1), generator=g)).float()
    is_demo = torch.tensor([True, False, False, False] * 2)
    correct = torch.tensor([True, True, False, False] * 2)
    adv = torch.randn(B, generator=g)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    ref = logp.detach() + 0.1 * torch.randn(B, T, generator=g)
    prefix_len = torch.tensor([0, 2, 0, 1, 0, 3, 0, 0])
    cfg = load_config(preset).objective
    kl = kl_full(torch.log_softmax(logits, -1), torch.log_softmax(torch.randn(B, T, V, generator=g), -1))
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv, None, ref, step=3, sft_factor=0.7,
                            rl_factor=1.3, prefix_len_B=prefix_len, kl_BT=kl)
    assert set(terms) == set(TERMS)
    for name, t in terms.items():
        assert t.shape == (B, T), name
        assert torch.count_nonzero(t * (1 - mask)) == 0, f"{name} is non-zero on padding"
    reduced = [agg_loss(t, mask, cfg.loss_agg) for t in terms.values()]
    total = agg_loss(sum(terms.values()), mask, cfg.loss_agg)
    torch.testing.assert_close(sum(reduced), total)


# --------------------------------------------------------------------------- every preset, two steps

# The loss terms each preset must make non-zero; every other term must be exactly 0.
# (Rewards are forced to be mixed in every group, see _mixed_rewards, so that every
# advantage-dependent term and both SRFT rollout terms have something to act on.)
ACTIVE = {
    "srft": {"sft", "offpolicy", "pos", "neg", "entropy_bonus"},
    "srft-no-wsft": {"sft", "offpolicy", "pos", "neg", "entropy_bonus"},
    "srft-no-wrl": {"sft", "offpolicy", "pos", "neg", "entropy_bonus"},
    "grpo": {"grpo", "entropy_bonus"},
    "dr-grpo": {"grpo", "entropy_bonus"},
    "dapo": {"grpo"},  # no entropy bonus
    "sft": {"sft"},
    "dft": {"sft"},
    "luffy": {"offpolicy", "grpo", "entropy_bonus"},
    "chord": {"sft", "grpo", "entropy_bonus"},
    "chord-phi": {"sft", "grpo", "entropy_bonus"},
    "relift": {"grpo", "entropy_bonus"},  # every group has a correct rollout here: the buffer stays empty
    "asft": {"sft", "kl"},  # the KL term is 0 at step 0 (policy = reference) but not at step 1: see below
    "prefix-rft": {"grpo", "entropy_bonus"},
    "gspo": {"grpo"},  # no entropy bonus
    "cispo": {"grpo"},  # no entropy bonus
    "forking-tokens": {"grpo"},  # no entropy bonus
}


def _mixed_rewards(monkeypatch):
    """Score as the task does, but count every third sequence of a step as correct.

    The tiny random model never answers correctly; with 3 rollouts (+ 1 demonstration)
    per prompt, every group then has a correct and a wrong rollout.
    """
    import srft.training.loop as loop

    real = loop.verify_all

    def verify_all(task, texts, answers):
        scores = real(task, texts, answers)
        return [dataclasses.replace(s, reward=1.0, correct=True) if i % 3 == 0 else s
                for i, s in enumerate(scores)]

    monkeypatch.setattr(loop, "verify_all", verify_all)


@pytest.fixture
def one_thread():
    """model.threads=1 (ten times faster for the tiny model here); the thread count is restored after."""
    before = torch.get_num_threads()
    yield "model.threads=1"
    torch.set_num_threads(before)


def _tiny_run_config(preset, model_dir, tmp_path, threads, *extra):
    """A few-second run of ``preset`` on the tiny model: 2 prompts x 3 rollouts a step."""
    return load_config(preset, None, [
        f"model.path={model_dir}", "run.eval_every=0", "run.save_every=0", "run.eval_k=2", "run.progress=false",
        "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20", "data.test_size=4",
        "data.max_response_tokens=48", "data.too_long=truncate", "optim.micro_batch=4", threads,
        f"run.out_dir={tmp_path}/run", *extra])


@pytest.mark.parametrize("preset", list_presets())
def test_preset_runs_with_the_right_terms(preset, tiny_model_dir, tmp_path, monkeypatch, one_thread):
    from srft.training.loop import train

    if preset in ("sft-then-grpo", "sasr"):
        pytest.skip("steps of two kinds: see test_sft_then_grpo_switches_stage and test_sasr_*")
    assert preset in ACTIVE, f"add preset '{preset}' to ACTIVE with the loss terms it must make non-zero"
    _mixed_rewards(monkeypatch)
    cfg = _tiny_run_config(preset, tiny_model_dir, tmp_path, one_thread, "run.steps=2")
    run_dir = train(cfg)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    for r in records:
        assert r["n_demos"] == (2 if cfg.objective.demonstrations else 0)
        assert r["response_len"] > 0  # the loop generates rollouts for every method
        assert 0 < r["rollout_acc"] < 1
        for name in TERMS:
            value = r[f"loss_{name}"]
            if preset == "asft" and name == "kl" and r["step"] == 0:
                assert value == 0  # the policy is still the reference model
            elif name in ACTIVE[preset]:
                assert value != 0, (preset, r["step"], name)
            else:
                assert value == 0, (preset, r["step"], name, value)
        assert r["loss"] == pytest.approx(sum(r[f"loss_{n}"] for n in TERMS))
    first = records[0]
    if preset == "sft":
        assert first["w_sft"] == pytest.approx(1.0)
    if preset == "dft":  # w = sg(pi) per token: its mean is the mean demonstration-token probability
        assert first["w_sft"] == pytest.approx(first["demo_prob"], rel=1e-5)
    if preset == "chord":
        # the mu schedule is in fractions of run.steps: with 2 steps the warm-up (0.0333 x 2)
        # rounds to 0 steps and the decay (0.6667 x 2) to 1, so step 0 has mu = mu_peak = 0.9
        assert first["w_sft"] == pytest.approx(0.9)
    if preset == "chord-phi":  # 0.1 * pi (1 - pi) <= 0.025
        assert 0 < first["w_sft"] <= 0.025
    if preset == "prefix-rft":  # 1 of 3 rollouts starts from 95% of the demonstration at step 0
        assert first["prefix_ratio"] == pytest.approx(0.95) and first["prefix_acc"] is not None
        assert first["gen_tokens"] < 6 * first["response_len"]  # the copied prefix is not generated


def test_sft_then_grpo_switches_stage(tiny_model_dir, tmp_path, monkeypatch, one_thread):
    from srft.training.loop import train

    _mixed_rewards(monkeypatch)
    cfg = _tiny_run_config("sft-then-grpo", tiny_model_dir, tmp_path, one_thread, "objective.sft_stage_steps=2",
                           "run.steps=4")
    records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        stage = {"sft"} if r["step"] < 2 else {"grpo", "entropy_bonus"}
        assert r["n_demos"] == (2 if r["step"] < 2 else 0)
        for name in TERMS:
            assert (r[f"loss_{name}"] != 0) == (name in stage), (r["step"], name)


def test_relift_interleaves_sft_steps_on_failed_prompts(tiny_model_dir, tmp_path, one_thread):
    from srft.training.loop import train

    # the tiny random model fails every prompt: each RL step fills the buffer (2 prompts),
    # so every other step is an SFT step on the demonstrations of the prompts just failed
    cfg = _tiny_run_config("relift", tiny_model_dir, tmp_path, one_thread, "objective.relift_buffer=2",
                           "objective.relift_mode=replace",
                           "run.steps=4")
    records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert [r["relift_sft_step"] for r in records] == [False, True, False, True]
    assert [r["relift_buffer"] for r in records] == [2, 0, 2, 0]
    for r in records:
        assert r["rollout_acc"] == 0
        if r["relift_sft_step"]:
            assert r["n_demos"] == 2 and r["loss_sft"] > 0 and r["loss_grpo"] == 0
        else:
            assert r["n_demos"] == 0 and r["loss_sft"] == 0


def test_sasr_warms_up_with_sft_then_draws(tiny_model_dir, tmp_path, monkeypatch, one_thread):
    from srft.training.loop import train

    _mixed_rewards(monkeypatch)
    cfg = _tiny_run_config("sasr", tiny_model_dir, tmp_path, one_thread, "objective.sasr_warmup_steps=2",
                           "run.steps=6")
    records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert [r["sasr_sft"] for r in records[:2]] == [True, True]
    for r in records:
        assert r["sasr_grad_norm"] > 0
        if r["step"] >= 2:
            assert 0 < r["sasr_p_sft"] < 1
        stage = {"sft"} if r["sasr_sft"] else {"grpo", "entropy_bonus"}
        for name in TERMS:
            assert (r[f"loss_{name}"] != 0) == (name in stage), (r["step"], name)
    # the draws are seeded: the same run makes the same choices
    again = [json.loads(line) for line in (train(_tiny_run_config(
        "sasr", tiny_model_dir, tmp_path / "again", one_thread, "objective.sasr_warmup_steps=2", "run.steps=6"))
        / "metrics.jsonl").read_text().splitlines()]
    assert [r["sasr_sft"] for r in again] == [r["sasr_sft"] for r in records]


@pytest.mark.parametrize("source", ["self", "mixed"])
def test_bootstrapped_demonstrations(source, tiny_model_dir, tmp_path, monkeypatch, one_thread):
    from srft.training.loop import train

    _mixed_rewards(monkeypatch)  # the first rollout of every prompt is "correct"
    cfg = _tiny_run_config("srft", tiny_model_dir, tmp_path, one_thread, f"objective.demo_source={source}",
                           "run.steps=2")
    records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        # each prompt is solved in its own step, so its demonstration is its own rollout
        assert (r["demo_self"], r["demo_expert"], r["demo_none"]) == (2, 0, 0)
        assert r["n_demos"] == 2 and r["pool_size"] >= 2


def test_self_source_without_solutions_has_no_demonstrations(tiny_model_dir, tmp_path, one_thread):
    from srft.training.loop import train

    # the tiny random model solves nothing: no own demonstration, and 'self' uses no expert one
    records = [json.loads(line) for line in (train(_tiny_run_config(
        "srft", tiny_model_dir, tmp_path, one_thread, "objective.demo_source=self", "run.steps=1"))
        / "metrics.jsonl").read_text().splitlines()]
    assert (records[0]["demo_self"], records[0]["demo_expert"], records[0]["demo_none"]) == (0, 0, 2)
    assert records[0]["n_demos"] == 0 and records[0]["loss_sft"] == 0
    mixed = [json.loads(line) for line in (train(_tiny_run_config(
        "srft", tiny_model_dir, tmp_path / "m", one_thread, "objective.demo_source=mixed", "run.steps=1"))
        / "metrics.jsonl").read_text().splitlines()]
    assert (mixed[0]["demo_self"], mixed[0]["demo_expert"]) == (0, 2)


def test_target_controller_moves_the_weights(tiny_model_dir, tmp_path, one_thread):
    from srft.training.loop import train

    # The tiny random model's rollout entropy is far above a target of 0.01 nats: the
    # controller lowers w_SFT's factor and raises w_RL's from step 1 on.
    cfg = _tiny_run_config("srft", tiny_model_dir, tmp_path, one_thread, "objective.sft_weight=target",
                           "objective.rl_weight=target", "objective.entropy_target=0.01", "run.steps=3")
    records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["sft_factor"] == 1.0 and records[0]["rl_factor"] == 1.0
    h0 = records[0]["entropy_rollout"]
    # one update: log factor -/+ 0.5 * (H - 0.01)
    assert records[1]["sft_factor"] == pytest.approx(math.exp(-0.5 * (h0 - 0.01)), rel=1e-6)
    assert records[1]["rl_factor"] == pytest.approx(math.exp(0.5 * (h0 - 0.01)), rel=1e-6)
    assert records[2]["sft_factor"] < records[1]["sft_factor"] < 1 < records[1]["rl_factor"] < records[2]["rl_factor"]
    # the weights as applied: c_sft * factor (0.5 * ...), c_rl * factor (0.1 * ...)
    assert records[1]["w_sft"] == pytest.approx(0.5 * records[1]["sft_factor"], rel=1e-5)
    assert records[1]["w_rl"] == pytest.approx(0.1 * records[1]["rl_factor"], rel=1e-5)


@pytest.mark.parametrize("extra", [
    ["objective.sft_weight=target", "objective.rl_weight=target", "objective.demo_source=mixed"],
    ["--preset=sasr", "objective.sasr_warmup_steps=1"],
])
def test_resume_carries_controller_pool_and_sasr_state(extra, tiny_model_dir, tmp_path, monkeypatch, one_thread):
    from srft.training.loop import train

    _mixed_rewards(monkeypatch)
    preset = "sasr" if "--preset=sasr" in extra else "srft"
    extra = [e for e in extra if not e.startswith("--")]
    straight = train(_tiny_run_config(preset, tiny_model_dir, tmp_path / "a", one_thread, "run.steps=4", *extra))
    cfg = _tiny_run_config(preset, tiny_model_dir, tmp_path / "b", one_thread, "run.steps=4", "run.save_every=2",
                           *extra)
    cfg.run.steps = 2
    run_dir = train(cfg)
    cfg.run.steps = 4
    train(cfg, run_dir=run_dir, resume=True)
    a = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("loss", "sft_factor", "rl_factor", "pool_size", "demo_self", "demo_expert", "sasr_sft",
                    "sasr_p_sft"):
            va, vb = ra.get(key), rb.get(key)
            assert (va == vb) if va is None or isinstance(va, bool) else va == pytest.approx(vb, rel=1e-4), \
                (ra["step"], key, va, vb)
