"""The objective: hand-computed cases, stop-gradients, loop == vectorised, all-equal groups."""

import math

import pytest
import torch

from srft.config import ObjectiveConfig
from srft.objective import (
    TERMS,
    agg_loss,
    entropy_for_weights,
    group_advantages,
    grpo_loss,
    kl_k3,
    offpolicy_loss,
    rl_weight,
    self_rollout_loss,
    sft_loss,
    sft_weight,
    token_logprobs_and_entropy,
    token_losses,
)

LN2 = math.log(2.0)


# --------------------------------------------------------------------------- hand-computed cases


def test_group_advantages_by_hand():
    # group 0: r = [1, 0, 0, 1]: mean 0.5, centred [.5, -.5, -.5, .5],
    #   unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.57735, A = +-0.5 / 0.57735 = +-0.86603
    # group 1: r = [1, 1, 1]: all equal -> A = 0
    # group 2: r = [0, 0, 1]: mean 1/3, centred [-1/3, -1/3, 2/3], var = (1/9+1/9+4/9)/2 = 1/3,
    #   A = [-0.57735, -0.57735, 1.15470]
    rewards = torch.tensor([1, 0, 0, 1, 1, 1, 1, 0, 0, 1.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    adv = group_advantages(rewards, groups, norm="std", eps=0.0)
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 0, 0, 0, -0.57735, -0.57735, 1.15470])
    torch.testing.assert_close(adv, expected, atol=1e-4, rtol=0)
    # mean-only: r - mean
    adv_mean = group_advantages(rewards, groups, norm="mean")
    expected_mean = torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, -1 / 3, -1 / 3, 2 / 3])
    torch.testing.assert_close(adv_mean, expected_mean, atol=1e-6, rtol=0)


def test_group_advantages_all_equal_and_singletons_are_zero():
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    groups = torch.tensor([0, 0, 1, 1, 2])  # group 2 has a single sequence
    for norm in ("std", "mean"):
        assert torch.equal(group_advantages(rewards, groups, norm=norm), torch.zeros(5))


def test_weights_by_hand():
    h = torch.tensor([[0.0, LN2]])
    # w_SFT = 0.5 * exp(-H): H = 0 -> 0.5; H = ln 2 -> 0.5 / 2 = 0.25
    torch.testing.assert_close(sft_weight(h, 0.5), torch.tensor([[0.5, 0.25]]))
    # w_RL = 0.1 * exp(H): H = 0 -> 0.1; H = ln 2 -> 0.2
    torch.testing.assert_close(rl_weight(h, 0.1), torch.tensor([[0.1, 0.2]]))
    # constant variants ignore H
    torch.testing.assert_close(sft_weight(h, 0.5, "constant"), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(rl_weight(h, 0.1, "constant"), torch.tensor([[0.1, 0.1]]))


def test_loss_terms_by_hand():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))  # pi = 0.5, 0.25
    # SFT: w * -log pi = 0.25 * ln 2 = 0.17329 ; 0.25 * ln 4 = 0.34657
    torch.testing.assert_close(sft_loss(logp, torch.full((1, 2), 0.25)), torch.tensor([[0.17329, 0.34657]]),
                               atol=1e-5, rtol=0)
    # off-policy, identity: -A * pi with A = 2 -> [-1.0, -0.5]
    torch.testing.assert_close(offpolicy_loss(logp, torch.tensor([2.0])), torch.tensor([[-1.0, -0.5]]))
    # off-policy, LUFFY shaping: -A * pi / (pi + 0.1) -> -2 * 0.5/0.6 = -1.66667 ; -2 * 0.25/0.35 = -1.42857
    torch.testing.assert_close(offpolicy_loss(logp, torch.tensor([2.0]), "luffy", 0.1),
                               torch.tensor([[-1.66667, -1.42857]]), atol=1e-5, rtol=0)
    # self-rollout, correct: w_RL * -log pi with w = 0.2 -> 0.2 * ln 2 = 0.13863 ; 0.2 * ln 4 = 0.27726
    two = torch.cat([logp, logp])
    w = torch.full((2, 2), 0.2)
    out = self_rollout_loss(two, torch.tensor([True, False]), w)
    # wrong: +log pi -> [-0.69315, -1.38629]
    torch.testing.assert_close(out, torch.tensor([[0.13863, 0.27726], [-0.69315, -1.38629]]), atol=1e-5, rtol=0)


def test_grpo_surrogate_by_hand():
    old = torch.zeros(2, 1)
    logp = torch.full((2, 1), math.log(1.5))  # ratio 1.5
    adv = torch.tensor([1.0, -1.0])
    loss, clipped = grpo_loss(logp, old, adv, 0.2, 0.2)
    # A = +1: max(-1.5, -1.2) = -1.2 (clipped); A = -1: max(1.5, 1.2) = 1.5 (not clipped)
    torch.testing.assert_close(loss, torch.tensor([[-1.2], [1.5]]))
    assert clipped.tolist() == [[1.0], [0.0]]
    # clip-higher: upper bound 1.28 -> A = +1 gives -1.28
    loss_hi, _ = grpo_loss(logp, old, adv, 0.2, 0.28)
    torch.testing.assert_close(loss_hi[0], torch.tensor([-1.28]))


def test_kl_k3_by_hand():
    # ref = log 0.5, logp = log 0.25: delta = ln 2, k3 = 2 - ln 2 - 1 = 0.30685 ; equal -> 0
    logp = torch.log(torch.tensor([[0.25, 0.5]]))
    ref = torch.log(torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(kl_k3(logp, ref), torch.tensor([[0.30685, 0.0]]), atol=1e-5, rtol=0)


def test_agg_loss_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # token-mean: (1 + 2 + 3) / 3 = 2
    assert agg_loss(loss, mask, "token-mean").item() == pytest.approx(2.0)
    # seq-mean-token-mean: (mean(1, 2) + mean(3)) / 2 = (1.5 + 3) / 2 = 2.25
    assert agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(2.25)
    # token-sum-norm: 6 / (2 sequences * 3 max length) = 1
    assert agg_loss(loss, mask, "token-sum-norm").item() == pytest.approx(1.0)
    # micro-batch counts: the first row alone, normalised by the whole batch's counts
    assert agg_loss(loss[:1], mask[:1], "token-mean", num_tokens=3).item() == pytest.approx(1.0)
    assert agg_loss(loss[:1], mask[:1], "token-sum-norm", num_seqs=2, max_len=3).item() == pytest.approx(0.5)


def test_entropy_granularity_by_hand():
    ent = torch.tensor([[1.0, 3.0, 100.0], [2.0, 2.0, 2.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # token: own values, masked
    assert entropy_for_weights(ent, mask, "token").tolist() == [[1, 3, 0], [2, 2, 2]]
    # sequence: row means over masked tokens: 2 and 2
    assert entropy_for_weights(ent, mask, "sequence").tolist() == [[2, 2, 0], [2, 2, 2]]
    # batch: (1 + 3 + 2 + 2 + 2) / 5 = 2
    assert entropy_for_weights(ent, mask, "batch").tolist() == [[2, 2, 0], [2, 2, 2]]


def test_token_logprobs_and_entropy_uniform():
    # uniform over 4 tokens: log pi = -ln 4 and H = ln 4
    logits = torch.zeros(1, 2, 4)
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([[0, 3]]))
    torch.testing.assert_close(logp, torch.full((1, 2), -math.log(4)))
    torch.testing.assert_close(ent, torch.full((1, 2), math.log(4)))


# --------------------------------------------------------------------------- gradients


def _random_batch(seed: int, B: int = 6, T: int = 5, V: int = 7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    is_demo = torch.rand(B, generator=g) < 0.3
    correct = torch.rand(B, generator=g) < 0.5
    adv = torch.randn(B, generator=g)
    return logits, tokens, mask, is_demo, correct, adv


def test_entropy_weights_carry_no_gradient():
    logits, tokens, mask, is_demo, correct, adv = _random_batch(0)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    assert ent.requires_grad
    h = entropy_for_weights(ent, mask, "sequence")
    assert not h.requires_grad
    assert not sft_weight(h).requires_grad and not rl_weight(h).requires_grad
    cfg = ObjectiveConfig(entropy_coef=0.0)
    terms, weights = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    assert not weights["w_sft"].requires_grad and not weights["w_rl"].requires_grad

    # The SFT term's gradient equals the gradient of a constant-weighted NLL:
    # if exp(-H) let gradient through, the entropy's own gradient would be added.
    demo_mask = mask * is_demo.unsqueeze(-1)
    (g_term,) = torch.autograd.grad(terms["sft"].sum(), logits, retain_graph=True)
    logp2, _ = token_logprobs_and_entropy(logits, tokens)
    const_w = weights["w_sft"].clone()
    (g_const,) = torch.autograd.grad((const_w * -logp2 * demo_mask).sum(), logits)
    torch.testing.assert_close(g_term, g_const)


def test_advantage_carries_no_gradient_into_offpolicy_term():
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_(True)
    adv = torch.tensor([2.0], requires_grad=True)
    offpolicy_loss(logp, adv).sum().backward()
    assert adv.grad is None or torch.all(adv.grad == 0)
    # d/dlogp of -A * exp(logp) = -A * pi = -2 * 0.5 = -1
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0]]))


def test_entropy_bonus_has_gradient():
    logits, tokens, mask, is_demo, correct, adv = _random_batch(1)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    cfg = ObjectiveConfig(entropy_coef=0.01, sft_coef=0.0, offpolicy_coef=0.0, neg_coef=0.0, rl_coef=0.0)
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    (g,) = torch.autograd.grad(terms["entropy_bonus"].sum(), logits)
    assert g.abs().sum() > 0


# --------------------------------------------------------------------------- loop == vectorised


def _loop_advantages(rewards, groups, norm, eps):
    out = []
    for i in range(len(rewards)):
        members = [rewards[j] for j in range(len(rewards)) if groups[j] == groups[i]]
        mean = sum(members) / len(members)
        if all(m == members[0] for m in members):
            out.append(0.0)
            continue
        if norm == "mean":
            out.append(rewards[i] - mean)
        else:
            var = sum((m - mean) ** 2 for m in members) / (len(members) - 1)
            out.append((rewards[i] - mean) / (math.sqrt(var) + eps))
    return out


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("norm", ["std", "mean"])
def test_advantages_loop_equals_vectorised(seed, norm):
    g = torch.Generator().manual_seed(seed)
    n_groups = int(torch.randint(1, 6, (1,), generator=g))
    sizes = torch.randint(1, 10, (n_groups,), generator=g).tolist()
    groups = [gi for gi, s in enumerate(sizes) for _ in range(s)]
    rewards = (torch.rand(len(groups), generator=g) < 0.4).float().tolist()
    vec = group_advantages(torch.tensor(rewards), torch.tensor(groups), norm=norm, eps=1e-6)
    torch.testing.assert_close(vec, torch.tensor(_loop_advantages(rewards, groups, norm, 1e-6)), atol=1e-5, rtol=0)


def _loop_token_losses(cfg, logp, ent, mask, is_demo, correct, adv):
    """Token by token, sequence by sequence; sequence-level entropy."""
    B, T = logp.shape
    total = torch.zeros(B, T)
    for b in range(B):
        n = int(mask[b].sum())
        h = float(sum(ent[b, t] for t in range(n)) / max(n, 1))
        for t in range(n):
            lp = float(logp[b, t])
            if is_demo[b]:
                loss = cfg.sft_coef * math.exp(-h) * -lp
                loss += cfg.offpolicy_coef * -float(adv[b]) * math.exp(lp)
            else:
                if correct[b]:
                    loss = cfg.rl_coef * math.exp(h) * -lp
                else:
                    loss = cfg.neg_coef * lp
                loss -= cfg.entropy_coef * float(ent[b, t])
            total[b, t] = loss
    return total


@pytest.mark.parametrize("seed", range(6))
def test_token_losses_loop_equals_vectorised(seed):
    g = torch.Generator().manual_seed(100 + seed)
    B, T, V = int(torch.randint(2, 9, (1,), generator=g)), int(torch.randint(1, 8, (1,), generator=g)), 5
    logits, tokens, mask, is_demo, correct, adv = _random_batch(seed, B, T, V)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    cfg = ObjectiveConfig()
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    vec = sum(terms[name] for name in TERMS).detach()
    loop = _loop_token_losses(cfg, logp.detach(), ent.detach(), mask, is_demo, correct, adv)
    torch.testing.assert_close(vec, loop, atol=1e-5, rtol=1e-5)
    # the reduced terms add up to the reduced total (the reduction is linear)
    for mode in ("token-mean", "seq-mean-token-mean", "token-sum-norm"):
        parts = sum(agg_loss(terms[n], mask, mode) for n in TERMS)
        torch.testing.assert_close(parts, agg_loss(sum(terms[n] for n in TERMS), mask, mode))


@pytest.mark.parametrize("seed", range(4))
def test_agg_loss_micro_batches_add_up(seed):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(8, 6, generator=g)
    mask = (torch.rand(8, 6, generator=g) < 0.7).float()
    for mode in ("token-mean", "seq-mean-token-mean", "token-sum-norm"):
        whole = agg_loss(loss, mask, mode)
        kw = dict(num_tokens=mask.sum(), num_seqs=(mask.sum(-1) > 0).sum() if mode == "seq-mean-token-mean" else 8,
                  max_len=6)
        parts = agg_loss(loss[:3], mask[:3], mode, **kw) + agg_loss(loss[3:], mask[3:], mode, **kw)
        torch.testing.assert_close(parts, whole)


# --------------------------------------------------------------------------- all-equal rewards


@pytest.mark.parametrize("all_reward", [0.0, 1.0])
def test_rl_terms_vanish_when_group_rewards_equal(all_reward):
    logits, tokens, mask, is_demo, correct, _ = _random_batch(3)
    rewards = torch.full((logits.shape[0],), all_reward)
    adv = group_advantages(rewards, torch.zeros(logits.shape[0], dtype=torch.long))
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    cfg = ObjectiveConfig(self_rollout="grpo", entropy_coef=0.0)
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    assert torch.count_nonzero(terms["offpolicy"]) == 0
    assert torch.count_nonzero(terms["grpo"]) == 0
    # the SFT term does not depend on the advantage and stays
    if is_demo.any():
        assert torch.count_nonzero(terms["sft"]) > 0


def test_inactive_terms_are_zero_for_grpo_preset():
    logits, tokens, mask, is_demo, correct, adv = _random_batch(4)
    logp, ent = token_logprobs_and_entropy(logits, tokens)
    cfg = ObjectiveConfig(self_rollout="grpo", sft_coef=0.0, offpolicy_coef=0.0)
    terms, _ = token_losses(cfg, logp, ent, mask, is_demo, correct, adv)
    for name in ("sft", "offpolicy", "pos", "neg", "kl"):
        assert torch.count_nonzero(terms[name]) == 0, name
    assert torch.count_nonzero(terms["grpo"]) > 0


# --------------------------------------------------------------------------- engine log-probs: old log-probs, TIS
def test_tis_weight_by_hand():
    from srft.objective import tis_weight

    logp_BT = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    # engine probabilities 0.25, 0.4 and none (a demonstration token: NaN)
    rollout_BT = torch.tensor([[math.log(0.25), math.log(0.4), float("nan")]])
    # ratios 0.5/0.25 = 2 (capped at 1.5), 0.2/0.4 = 0.5, and 1 where the engine gave nothing
    assert tis_weight(logp_BT, rollout_BT, cap=1.5)[0].tolist() == pytest.approx([1.5, 0.5, 1.0])
    assert tis_weight(logp_BT, rollout_BT, cap=0.0).tolist() == [[1.0, 1.0, 1.0]]  # off
    assert tis_weight(logp_BT, None, cap=2.0).tolist() == [[1.0, 1.0, 1.0]]  # the HF engine: no log-probs
    w = tis_weight(logp_BT.clone().requires_grad_(), rollout_BT, cap=2.0)
    assert not w.requires_grad  # a weight, not a path for the gradient


def test_grpo_ratio_uses_engine_logprobs_unless_tis_is_on():
    # one rollout token, advantage 1: the surrogate is -ratio, ratio = pi / pi_old
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_()
    rollout = torch.log(torch.tensor([[0.25]]))
    args = (torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([False]), torch.tensor([True]), torch.tensor([1.0]))
    grpo = dict(demonstrations=False, sft_coef=0.0, offpolicy_coef=0.0, self_rollout="grpo", entropy_coef=0.0,
                clip_eps=10.0, clip_eps_high=10.0)
    terms, _ = token_losses(ObjectiveConfig(**grpo, tis_cap=0.0), logp, *args, rollout_logp_BT=rollout)
    assert float(terms["grpo"]) == pytest.approx(-2.0)  # TIS off: old = the engine's 0.25, ratio 2
    terms, _ = token_losses(ObjectiveConfig(**grpo, tis_cap=1.5), logp, *args, rollout_logp_BT=rollout)
    assert float(terms["grpo"]) == pytest.approx(-1.5)  # ratio 1 (old = the trainer's own) x TIS weight min(2, 1.5)
    terms, _ = token_losses(ObjectiveConfig(**grpo), logp, *args)
    assert float(terms["grpo"]) == pytest.approx(-1.0)  # no engine log-probs: ratio 1


def test_tis_is_on_by_default_with_cap_two():
    """With an engine's log-probs the correction is on unless switched off: the default cap is 2."""
    assert ObjectiveConfig().tis_cap == 2.0
    # one rollout token, advantage 1; pi_trainer = 0.5, pi_engine = 0.125: pi / pi_engine = 4, capped at 2
    logp = torch.log(torch.tensor([[0.5]])).requires_grad_()
    rollout = torch.log(torch.tensor([[0.125]]))
    args = (torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([False]), torch.tensor([True]), torch.tensor([1.0]))
    grpo = dict(demonstrations=False, sft_coef=0.0, offpolicy_coef=0.0, self_rollout="grpo", entropy_coef=0.0,
                clip_eps=10.0, clip_eps_high=10.0)
    terms, _ = token_losses(ObjectiveConfig(**grpo), logp, *args, rollout_logp_BT=rollout)
    # old = the trainer's own (ratio 1), times the TIS weight min(4, 2) = 2: surrogate -2
    assert float(terms["grpo"].detach()) == pytest.approx(-2.0)
    terms, _ = token_losses(ObjectiveConfig(**grpo, tis_cap=0.0), logp, *args, rollout_logp_BT=rollout)
    assert float(terms["grpo"].detach()) == pytest.approx(-4.0)  # off: old = the engine's, ratio 4 (clip 10)


def test_srft_rollout_terms_take_the_tis_weight():
    logp = torch.log(torch.tensor([[0.5], [0.5]]))
    rollout = torch.log(torch.tensor([[0.25], [1.0]]))  # ratios 2 and 0.5
    cfg = ObjectiveConfig(demonstrations=False, sft_coef=0.0, offpolicy_coef=0.0, entropy_coef=0.0,
                          rl_weight="constant", rl_coef=1.0, tis_cap=3.0)
    terms, _ = token_losses(cfg, logp, torch.zeros(2, 1), torch.ones(2, 1), torch.tensor([False, False]),
                            torch.tensor([True, False]), torch.zeros(2), rollout_logp_BT=rollout)
    # correct: w_RL (1) * -log 0.5 * 2 = 1.386; wrong: +log 0.5 * 0.5 = -0.347
    assert terms["pos"][:, 0].tolist() == pytest.approx([2 * math.log(2), 0.0], abs=1e-5)
    assert terms["neg"][:, 0].tolist() == pytest.approx([0.0, 0.5 * math.log(0.5)], abs=1e-5)
