"""The 2025 methods of issue 24 as options of the GRPO term: GSPO (objective.is_level=sequence),
CISPO (objective.surrogate=cispo), the forking tokens (objective.top_entropy_quantile);
hand-computed losses and gradients, their config ranges, and a short run of each preset."""

import math

import pytest
import torch

from srft.config import ConfigError, ObjectiveConfig, load_config
from srft.objective import TokenBatch, agg_loss, batch_losses, cispo_loss, gspo_log_ratio, top_entropy_mask

# --------------------------------------------------------------------------- helpers


def _batch(logp, old, adv, mask=None, is_demo=None, entropy=None):
    logp = torch.tensor(logp).requires_grad_(True)
    B, T = logp.shape
    mask = torch.ones(B, T) if mask is None else torch.tensor(mask)
    is_demo = torch.zeros(B, dtype=torch.bool) if is_demo is None else torch.tensor(is_demo)
    entropy = torch.zeros(B, T) if entropy is None else torch.tensor(entropy)
    return TokenBatch(logp, entropy, mask, is_demo, torch.tensor(adv) > 0, torch.tensor(adv),
                      old_logp_BT=torch.tensor(old))


def _cfg(**kw):
    base = dict(demonstrations=False, sft_coef=0.0, offpolicy_coef=0.0, self_rollout="grpo", entropy_coef=0.0,
                tis_cap=0.0)
    return ObjectiveConfig(**{**base, **kw})


def _tiny_run(preset, model_dir, tmp_path, *extra):
    """test_peer_presets' two-step run, with 4 prompts (whole groups for 2 mini-batches) of 2 rollouts."""
    from test_peer_presets import _tiny_run as peer_tiny_run

    return peer_tiny_run(preset, model_dir, tmp_path, "rollout.prompts_per_step=4", "rollout.n=2",
                         "data.max_response_tokens=16", *extra)


# --------------------------------------------------------------------------- GSPO


def test_gspo_sequence_ratio_by_hand():
    # seq 0: log ratios (logp - old) = [0.2, -0.1, 0.5] -> mean 0.2, s_0 = exp(0.2) = 1.22140
    # seq 1: log ratios [-0.3, 0.1] over its 2 tokens -> mean -0.1, s_1 = exp(-0.1) = 0.90484;
    #        the pad token's log ratio (-9) is left out
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.7, -9.0]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.9, -1.0], [-1.2, -0.8, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    log_s = gspo_log_ratio(logp, old, mask)
    expected = torch.tensor([[0.2] * 3, [-0.1] * 3])
    torch.testing.assert_close(log_s.detach(), expected)
    # the gradient of each token's log ratio is that of its own log pi only (d log s_i,t / d logp_t = 1)
    log_s.sum().backward()
    torch.testing.assert_close(logp.grad, torch.ones(2, 3))


def test_gspo_loss_and_gradient_by_hand():
    # One rollout, 2 tokens, A = +1, log ratios [0.1, 0.3]: log s = 0.2, s = exp(0.2) = 1.221403.
    # Loose clip (eps 1): unclipped; each token's loss -A * s = -1.221403, its token mean -1.221403.
    # Gradient of the token mean w.r.t. logp_t: -A * s / 2 = -0.610701 on each token (s times the
    # mean token gradient), where GRPO's token-level ratio would give -exp(0.1)/2, -exp(0.3)/2.
    b = _batch([[-1.0, -2.0]], [[-1.1, -2.3]], [1.0])
    out = batch_losses(_cfg(is_level="sequence", clip_eps=1.0, clip_eps_high=1.0), b)
    grpo = out.terms["grpo"]
    s = math.exp(0.2)
    torch.testing.assert_close(grpo.detach(), torch.tensor([[-s, -s]]))
    grpo.mean().backward()
    torch.testing.assert_close(b.logp_BT.grad, torch.tensor([[-s / 2, -s / 2]]))
    assert float(out.metrics["grpo"]["clipped_BT"].sum()) == 0


def test_gspo_clips_the_whole_sequence_by_hand():
    # The same sequence with GSPO's ranges [1 - 3e-4, 1 + 4e-4]: s = 1.2214 > 1.0004 with A > 0, so
    # the clipped value binds: loss -1.0004 on both tokens, no gradient, both tokens counted clipped.
    # A second sequence, A = -1 and log ratios [-0.1, 0.1] (s = 1): inside the range, loss +1 per token,
    # gradient +1/2 per token of its token mean.
    b = _batch([[-1.0, -2.0], [-0.5, -0.6]], [[-1.1, -2.3], [-0.4, -0.7]], [1.0, -1.0])
    out = batch_losses(_cfg(is_level="sequence", clip_eps=3e-4, clip_eps_high=4e-4), b)
    grpo = out.terms["grpo"]
    torch.testing.assert_close(grpo.detach(), torch.tensor([[-1.0004, -1.0004], [1.0, 1.0]]))
    torch.testing.assert_close(out.metrics["grpo"]["clipped_BT"], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    grpo.mean(-1).sum().backward()
    torch.testing.assert_close(b.logp_BT.grad, torch.tensor([[0.0, 0.0], [0.5, 0.5]]))


def test_token_level_is_unchanged_by_the_new_key():
    # is_level=token (the default) is GRPO's token ratio: log ratios [0.1, 0.3], A = 1, eps 1:
    # losses -exp(0.1) = -1.105171, -exp(0.3) = -1.349859
    b = _batch([[-1.0, -2.0]], [[-1.1, -2.3]], [1.0])
    out = batch_losses(_cfg(clip_eps=1.0, clip_eps_high=1.0), b)
    torch.testing.assert_close(out.terms["grpo"].detach(), torch.tensor([[-math.exp(0.1), -math.exp(0.3)]]))


def test_gspo_preset_and_config_checks():
    cfg = load_config("gspo")
    o = cfg.objective
    assert (o.self_rollout, o.is_level, o.clip_eps, o.clip_eps_high) == ("grpo", "sequence", 3e-4, 4e-4)
    assert (o.loss_agg, o.adv_norm, o.demonstrations, cfg.optim.mini_batches) == ("seq-mean-token-mean", "std",
                                                                                   False, 2)
    with pytest.raises(ConfigError, match="is_level"):
        load_config("grpo", None, ["objective.is_level=batch"])
    with pytest.raises(ConfigError, match="is_level=sequence sets the GRPO surrogate"):
        load_config("srft", None, ["objective.is_level=sequence"])
    with pytest.raises(ConfigError, match="clip_eps"):
        load_config("gspo", None, ["objective.clip_eps=-0.1"])


def test_gspo_preset_runs(tiny_model_dir, tmp_path):
    records = _tiny_run("gspo", tiny_model_dir, tmp_path)
    assert len(records) == 2
    for r in records:
        assert math.isfinite(r["loss"]) and not r["skipped"]
        assert 0.0 <= r["clip_frac"] <= 1.0  # two mini-batches: the clipped share is recorded
        assert r["loss_sft"] == 0.0 and r["loss_pos"] == 0.0


# --------------------------------------------------------------------------- CISPO


def _cispo_batch():
    # seq 0: A = +1, logp [-1.0, -2.0], old [-1.5, -1.0]: log ratios [0.5, -1.0], r = [1.648721, 0.367879]
    # seq 1: A = -0.5, logp = old = [-0.2, -3.0]: r = [1, 1]
    return _batch([[-1.0, -2.0], [-0.2, -3.0]], [[-1.5, -1.0], [-0.2, -3.0]], [1.0, -0.5])


def test_cispo_loss_and_gradient_by_hand():
    # clip_eps = 1 (no lower bound: 1 - 1 = 0), clip_eps_high = 0.28: weights sg(clip(r)) =
    #   seq 0: [1.28 (clipped from 1.648721), 0.367879]; seq 1: [1, 1]
    # loss -w * A * log pi: seq 0: [-1.28 * 1 * -1.0, -0.367879 * 1 * -2.0] = [1.28, 0.735759]
    #                       seq 1: [-1 * -0.5 * -0.2, -1 * -0.5 * -3.0] = [-0.1, -1.5]
    # gradient d loss / d log pi = -w * A: [[-1.28, -0.367879], [0.5, 0.5]]; the clipped token keeps its
    # gradient (the GRPO surrogate gives it none: r > 1.28 with A > 0)
    b = _cispo_batch()
    out = batch_losses(_cfg(surrogate="cispo", clip_eps=1.0, clip_eps_high=0.28), b)
    loss = out.terms["grpo"]
    torch.testing.assert_close(loss.detach(), torch.tensor([[1.28, 0.735759], [-0.1, -1.5]]))
    torch.testing.assert_close(out.metrics["grpo"]["clipped_BT"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    loss.sum().backward()
    torch.testing.assert_close(b.logp_BT.grad, torch.tensor([[-1.28, -0.367879], [0.5, 0.5]]))

    b = _cispo_batch()
    batch_losses(_cfg(clip_eps=1.0, clip_eps_high=0.28), b).terms["grpo"].sum().backward()
    assert float(b.logp_BT.grad[0, 0]) == 0.0  # the clip surrogate: no gradient where the clip binds


def test_cispo_lower_bound_by_hand():
    # clip_eps = 0.2: seq 0's second token r = 0.367879 < 0.8 is raised to 0.8: loss -0.8 * 1 * -2.0 = 1.6,
    # gradient -0.8; the first token as before (1.28)
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    loss, clipped = cispo_loss(logp, torch.tensor([[0.5, -1.0]]), torch.tensor([1.0]), 0.2, 0.28)
    torch.testing.assert_close(loss.detach(), torch.tensor([[1.28, 1.6]]))
    torch.testing.assert_close(clipped, torch.tensor([[1.0, 1.0]]))
    loss.sum().backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.28, -0.8]]))


def test_cispo_with_the_sequence_ratio_by_hand():
    # is_level=sequence: seq 0's weight is its sequence ratio exp(mean(0.5, -1.0)) = exp(-0.25) = 0.778801
    # (inside [0, 1.28]) on both tokens: loss [-0.778801 * -1.0, -0.778801 * -2.0] = [0.778801, 1.557602],
    # gradient -0.778801 on each
    b = _cispo_batch()
    out = batch_losses(_cfg(surrogate="cispo", is_level="sequence", clip_eps=1.0, clip_eps_high=0.28), b)
    w = math.exp(-0.25)
    torch.testing.assert_close(out.terms["grpo"][0].detach(), torch.tensor([w, 2 * w]))
    out.terms["grpo"][0].sum().backward()
    torch.testing.assert_close(b.logp_BT.grad[0], torch.tensor([-w, -w]))


def test_cispo_preset_and_config_checks():
    cfg = load_config("cispo")
    o = cfg.objective
    assert (o.self_rollout, o.surrogate, o.is_level, o.clip_eps, o.clip_eps_high) == ("grpo", "cispo", "token",
                                                                                      1.0, 3.0)
    assert (o.loss_agg, o.kl_coef, o.entropy_coef, cfg.optim.mini_batches) == ("token-mean", 0.0, 0.0, 2)
    with pytest.raises(ConfigError, match="surrogate"):
        load_config("grpo", None, ["objective.surrogate=ppo"])
    with pytest.raises(ConfigError, match="surrogate=cispo is a loss of the GRPO term"):
        load_config("srft", None, ["objective.surrogate=cispo"])
    with pytest.raises(ConfigError, match="clip_eps_high"):
        load_config("cispo", None, ["objective.clip_eps_high=-1"])


def test_cispo_preset_runs(tiny_model_dir, tmp_path):
    records = _tiny_run("cispo", tiny_model_dir, tmp_path)
    assert len(records) == 2
    for r in records:
        assert math.isfinite(r["loss"]) and not r["skipped"]
        assert 0.0 <= r["clip_frac"] <= 1.0
        assert r["loss_sft"] == 0.0 and r["loss_offpolicy"] == 0.0


# --------------------------------------------------------------------------- forking tokens


# seq 0 a rollout, entropies [0.1, 0.9, 0.5]; seq 1 a rollout [0.7, 0.3] and a pad (5.0);
# seq 2 a demonstration [2.0, 2.0, 2.0]: the 5 rollout tokens' entropies are 0.1, 0.9, 0.5, 0.7, 0.3
ENT = [[0.1, 0.9, 0.5], [0.7, 0.3, 5.0], [2.0, 2.0, 2.0]]
MASK = [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
ROLL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])


@pytest.mark.parametrize("quantile, expected", [
    # k = ceil(0.4 * 5) = 2: the two highest, 0.9 and 0.7; the pad (5.0) and the demonstration (2.0) do not count
    (0.4, [[0, 1, 0], [1, 0, 0], [0, 0, 0]]),
    # k = ceil(0.2 * 5) = 1: 0.9 only
    (0.2, [[0, 1, 0], [0, 0, 0], [0, 0, 0]]),
    # k = ceil(0.5 * 5) = 3: 0.9, 0.7, 0.5
    (0.5, [[0, 1, 1], [1, 0, 0], [0, 0, 0]]),
    # 1: every rollout token
    (1.0, [[1, 1, 1], [1, 1, 0], [0, 0, 0]]),
])
def test_top_entropy_mask_by_hand(quantile, expected):
    mask = top_entropy_mask(torch.tensor(ENT), ROLL, quantile)
    torch.testing.assert_close(mask, torch.tensor(expected, dtype=torch.float32))


def test_top_entropy_mask_keeps_ties_and_handles_no_tokens():
    # entropies [0.5, 0.5, 0.1, 0.1]: k = ceil(0.25 * 4) = 1, the threshold 0.5: both tied tokens kept
    mask = top_entropy_mask(torch.tensor([[0.5, 0.5, 0.1, 0.1]]), torch.ones(1, 4), 0.25)
    torch.testing.assert_close(mask, torch.tensor([[1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(top_entropy_mask(torch.ones(1, 3), torch.zeros(1, 3), 0.2), torch.zeros(1, 3))


def test_forking_tokens_narrow_the_grpo_term_only_by_hand():
    # On-policy (old = logp): ratio 1, each GRPO token's loss -A: seq 0 (A = +1) -1, seq 1 (A = -0.5) +0.5.
    # top_entropy_quantile 0.4 keeps seq 0's second token and seq 1's first (see above):
    #   grpo = [[0, -1, 0], [0.5, 0, 0], [0, 0, 0]], gradient d/dlogp = -A on those tokens, 0 elsewhere;
    # the entropy bonus (coef 0.01) keeps every rollout token: -0.01 * H = [[-0.001, -0.009, -0.005],
    #   [-0.007, -0.003, 0], [0, 0, 0]].
    # The token-mean over the rollout tokens divides by all 5 of them: (-1 + 0.5) / 5 = -0.1
    #   (not by the 2 forking tokens, -0.25), as the paper's objective keeps 1 / sum |o_i|.
    logp = [[-1.0, -2.0, -0.5], [-1.5, -0.7, 0.0], [-0.3, -0.3, -0.3]]
    b = _batch(logp, logp, [1.0, -0.5, 0.0], mask=MASK, is_demo=[False, False, True], entropy=ENT)
    out = batch_losses(_cfg(top_entropy_quantile=0.4, entropy_coef=0.01), b)
    grpo = out.terms["grpo"]
    torch.testing.assert_close(grpo.detach(), torch.tensor([[0.0, -1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(out.terms["entropy_bonus"].detach(),
                               torch.tensor([[-0.001, -0.009, -0.005], [-0.007, -0.003, 0.0], [0.0, 0.0, 0.0]]))
    torch.testing.assert_close(agg_loss(grpo.detach(), ROLL, "token-mean"), torch.tensor(-0.1))
    grpo.sum().backward()
    torch.testing.assert_close(b.logp_BT.grad, torch.tensor([[0.0, -1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # off (1.0): every rollout token: [[-1, -1, -1], [0.5, 0.5, 0], [0, 0, 0]]
    full = batch_losses(_cfg(entropy_coef=0.01), _batch(logp, logp, [1.0, -0.5, 0.0], mask=MASK,
                                                        is_demo=[False, False, True], entropy=ENT))
    torch.testing.assert_close(full.terms["grpo"].detach(),
                               torch.tensor([[-1.0, -1.0, -1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_forking_tokens_mask_the_clipped_figure():
    # CISPO batch (seq 0's first token's weight clipped) with the forking tokens: only seq 0's second
    # token (entropy 0.9, k = ceil(0.25 * 4) = 1) is a forking token, so no clipped token is counted
    b = _batch([[-1.0, -2.0], [-0.2, -3.0]], [[-1.5, -1.0], [-0.2, -3.0]], [1.0, -0.5],
               entropy=[[0.1, 0.9], [0.7, 0.3]])
    out = batch_losses(_cfg(surrogate="cispo", clip_eps=1.0, clip_eps_high=0.28, top_entropy_quantile=0.25), b)
    assert float(out.metrics["grpo"]["clipped_BT"].sum()) == 0.0
    # loss on that token only: -0.367879 * 1 * -2.0 = 0.735759
    torch.testing.assert_close(out.terms["grpo"].detach(), torch.tensor([[0.0, 0.735759], [0.0, 0.0]]))


def test_forking_tokens_preset_and_config_checks():
    o = load_config("forking-tokens").objective
    assert (o.top_entropy_quantile, o.self_rollout, o.clip_eps_high, o.loss_agg) == (0.2, "grpo", 0.28, "token-mean")
    assert load_config("grpo").objective.top_entropy_quantile == 1.0  # off by default
    load_config("gspo", None, ["objective.top_entropy_quantile=0.2"])  # any GRPO-family preset
    for bad in ("0", "1.5", "-0.2"):
        with pytest.raises(ConfigError, match="top_entropy_quantile"):
            load_config("grpo", None, [f"objective.top_entropy_quantile={bad}"])
    with pytest.raises(ConfigError, match="narrows the GRPO term's tokens"):
        load_config("srft", None, ["objective.top_entropy_quantile=0.2"])


def test_forking_tokens_preset_runs_and_changes_only_the_policy_term(tiny_model_dir, tmp_path, monkeypatch):
    import dataclasses

    import srft.training.loop as loop

    real = loop.verify_all

    def verify_all(task, texts, answers):  # every third sequence correct: with n=3 every group is mixed
        return [dataclasses.replace(s, reward=1.0, correct=True) if i % 3 == 0 else s
                for i, s in enumerate(real(task, texts, answers))]

    monkeypatch.setattr(loop, "verify_all", verify_all)
    fork = _tiny_run("forking-tokens", tiny_model_dir, tmp_path / "a", "rollout.n=3", "run.seed=5")
    full = _tiny_run("forking-tokens", tiny_model_dir, tmp_path / "b", "rollout.n=3", "run.seed=5",
                     "objective.top_entropy_quantile=1")
    assert len(fork) == len(full) == 2
    assert all(math.isfinite(r["loss"]) and not r["skipped"] for r in fork)
    # step 0: the same rollouts and weights (the same entropy), a different policy-gradient loss
    assert fork[0]["entropy_rollout"] == pytest.approx(full[0]["entropy_rollout"])
    assert fork[0]["loss_grpo"] != pytest.approx(full[0]["loss_grpo"])
