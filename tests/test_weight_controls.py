"""Entropy-weight controls (schedules, target controller, per-token phi) and Prefix-RFT's token selection."""

import math

import pytest
import torch

from srft.objective import controller_update, prefix_keep_mask, rl_weight, sft_weight, weight_factor
from srft.objective.losses import schedule_factor


def test_schedules_by_hand():
    # 5 steps, end 0.2: progress = step / 4
    # linear: 1 + (0.2 - 1) * progress -> 1, 0.8, 0.6, 0.4, 0.2
    assert [schedule_factor("linear", s, 5, 0.2) for s in range(5)] == pytest.approx([1, 0.8, 0.6, 0.4, 0.2])
    # cosine: 0.2 + 0.8 * (1 + cos(pi * progress)) / 2 -> step 2: 0.2 + 0.8 * 0.5 = 0.6; step 1: 0.2 + 0.8 * 0.8536
    assert schedule_factor("cosine", 2, 5, 0.2) == pytest.approx(0.6)
    assert schedule_factor("cosine", 1, 5, 0.2) == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi / 4)) / 2)
    assert schedule_factor("cosine", 0, 5, 0.2) == 1.0 and schedule_factor("cosine", 4, 5, 0.2) == pytest.approx(0.2)
    # past the end the schedule stays at its end value; an end above 1 makes it grow
    assert schedule_factor("linear", 9, 5, 0.2) == pytest.approx(0.2)
    assert schedule_factor("linear", 4, 5, 3.0) == pytest.approx(3.0)


def test_controller_by_hand():
    # w_RL (sign +1): entropy 0.5 above target 0.3 with gain 0.5 -> log factor 0 + 0.5 * 0.2 = 0.1
    assert controller_update(0.0, 0.5, 0.3, 0.5, +1.0) == pytest.approx(0.1)
    # w_SFT (sign -1) moves the other way: -0.1
    assert controller_update(0.0, 0.5, 0.3, 0.5, -1.0) == pytest.approx(-0.1)
    # integral: a second step below target (0.1) -> 0.1 + 0.5 * (0.1 - 0.3) = 0.0
    assert controller_update(0.1, 0.1, 0.3, 0.5, +1.0) == pytest.approx(0.0)
    # bounded to [-4, 4]
    assert controller_update(3.9, 10.0, 0.3, 0.5, +1.0) == 4.0
    assert controller_update(-3.9, 10.0, 0.3, 0.5, -1.0) == -4.0
    # the factor the weights use is exp(log factor) for target, the schedule for linear/cosine, else 1
    assert weight_factor("target", 7, 10, 0.0, 0.1) == pytest.approx(math.exp(0.1))
    assert weight_factor("linear", 0, 10, 0.0, 0.1) == 1.0
    assert weight_factor("exp", 3, 10, 0.0, 2.0) == 1.0


def test_scalar_and_phi_weights_by_hand():
    h = torch.tensor([[0.3, 1.2]])
    logp = torch.log(torch.tensor([[0.5, 0.9]]))
    for mode in ("linear", "cosine", "target"):
        # c * factor on every token, whatever the entropy: 0.5 * 0.4 = 0.2, 0.1 * 2.5 = 0.25
        torch.testing.assert_close(sft_weight(h, 0.5, mode, logp, 0.4), torch.tensor([[0.2, 0.2]]))
        torch.testing.assert_close(rl_weight(h, 0.1, mode, logp, 2.5), torch.tensor([[0.25, 0.25]]))
    # w_RL phi = 0.1 * pi (1 - pi): 0.1 * 0.25 = 0.025, 0.1 * 0.09 = 0.009
    torch.testing.assert_close(rl_weight(h, 0.1, "phi", logp), torch.tensor([[0.025, 0.009]]))
    with pytest.raises(ValueError, match="log-probabilities"):
        rl_weight(h, 0.1, "phi")
    with pytest.raises(ValueError, match="exp, constant, phi, linear, cosine or target"):
        rl_weight(h, 0.1, "nope")


def test_rl_phi_weight_carries_no_gradient():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[..., 0]
    w = rl_weight(torch.zeros(2, 3), 0.1, "phi", logp)
    assert not w.requires_grad


def test_prefix_keep_mask_by_hand():
    ent = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2],
                        [0.4, 0.8, 0.6, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    prefix_len = torch.tensor([5, 0])
    # sequence 0: prefix = first 5 tokens, entropies 0.9 0.1 0.5 0.3 0.7; top 40% -> ceil(2.0) = 2 kept:
    # 0.9 (pos 0) and 0.7 (pos 4); pos 5 is the model's own continuation: kept
    # sequence 1: no prefix -> every valid token kept
    keep = prefix_keep_mask(ent, prefix_len, mask, top=0.4)
    torch.testing.assert_close(keep, torch.tensor([[1, 0, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float32))
    # top = 1: every token
    torch.testing.assert_close(prefix_keep_mask(ent, prefix_len, mask, top=1.0), mask)


@pytest.mark.parametrize("seed", range(5))
def test_prefix_keep_mask_matches_a_loop(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = int(torch.randint(1, 6, (1,), generator=g)), int(torch.randint(1, 12, (1,), generator=g))
    ent = torch.rand(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()
    prefix_len = torch.minimum(torch.randint(0, T + 1, (B,), generator=g), lengths)
    top = float(torch.rand(1, generator=g)) * 0.9 + 0.05
    expected = torch.zeros(B, T)
    for b in range(B):
        n = int(prefix_len[b])
        ranked = sorted(range(n), key=lambda t: -float(ent[b, t]))[:math.ceil(top * n)]
        for t in range(int(lengths[b])):
            expected[b, t] = 1.0 if t >= n or t in ranked else 0.0
    torch.testing.assert_close(prefix_keep_mask(ent, prefix_len, mask, top), expected)


def test_full_kl_by_hand():
    from srft.objective import kl_full

    # pi = (0.5, 0.5), ref = (0.25, 0.75): 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75) = 0.5 (0.6931 - 0.4055) = 0.1438
    logp = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]])).requires_grad_(True)
    ref = torch.log(torch.tensor([[[0.25, 0.75], [0.9, 0.1]]])).requires_grad_(True)
    kl = kl_full(logp, ref)
    torch.testing.assert_close(kl, torch.tensor([[0.5 * (math.log(2) + math.log(2 / 3)), 0.0]]), atol=1e-5, rtol=0)
    kl.sum().backward()
    assert ref.grad is None and logp.grad is not None  # the reference is a constant


def test_asft_full_kl_term(tiny_model_dir, tmp_path):
    """ASFT's KL term is the full KL on demonstration tokens: 0 at step 0, > 0 once the policy moved."""
    import json

    from srft.config import load_config
    from srft.training.loop import train

    before = torch.get_num_threads()
    try:
        cfg = load_config("asft", None, [
            f"model.path={tiny_model_dir}", "run.eval_every=0", "run.save_every=0", "run.eval_k=1",
            "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2",
            "data.train_size=10", "data.test_size=2", "data.max_response_tokens=48", "data.too_long=truncate",
            "model.threads=1", "run.steps=2", "optim.lr=1e-2", f"run.out_dir={tmp_path}/run"])
        assert cfg.objective.kl_estimator == "full" and cfg.objective.kl_tokens == "demos"
        records = [json.loads(line) for line in (train(cfg) / "metrics.jsonl").read_text().splitlines()]
    finally:
        torch.set_num_threads(before)
    assert records[0]["loss_kl"] == 0 and records[1]["loss_kl"] > 0
