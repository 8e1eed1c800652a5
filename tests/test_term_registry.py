"""The objective's term registry and TokenBatch: the derived names, the wrapper with
today's signature, the GRPO term's own clipped-token figure, and a term added by
registration alone."""

import dataclasses

import pytest
import torch

from srft.config import ObjectiveConfig
from srft.objective import (
    REGISTRY,
    TERM_KIND,
    TERMS,
    TermOut,
    TokenBatch,
    agg_loss,
    batch_losses,
    grpo_loss,
    reduce_terms,
    register_term,
    token_losses,
)


def _batch(seed=0, B=4, T=5, **fields):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    ent = torch.rand(B, T, generator=g).requires_grad_(True)
    lengths = torch.tensor([5, 3, 4, 2])[:B]
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).float()
    is_demo = torch.tensor([True, False, False, False])[:B]
    correct = torch.tensor([True, True, False, True])[:B]
    adv = torch.tensor([1.0, 0.5, -1.0, 0.25])[:B]
    return TokenBatch(logp, ent, mask, is_demo, correct, adv, **fields)


def test_names_and_kinds_are_todays():
    # The loss_<term> columns of metrics.jsonl and term_norm=own's normalisers depend on these.
    assert TERMS == ("sft", "offpolicy", "pos", "neg", "grpo", "entropy_bonus", "kl", "kl_cov")
    assert TERM_KIND == {"sft": "demos", "offpolicy": "demos", "pos": "rollouts", "neg": "rollouts",
                         "grpo": "rollouts", "entropy_bonus": "rollouts"}
    assert tuple(REGISTRY) == TERMS


def test_registration_checks():
    with pytest.raises(ValueError, match="already registered"):
        register_term("sft", applies_to="demos", enabled=lambda cfg: True)(lambda cfg, b, sh: None)
    with pytest.raises(ValueError, match="applies_to"):
        register_term("x", applies_to="everything", enabled=lambda cfg: True)


def test_token_batch_is_frozen():
    b = _batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.step = 3


@pytest.mark.parametrize("cfg", [
    ObjectiveConfig(),
    ObjectiveConfig(self_rollout="grpo", mix="chord", mu_peak=0.5, mu_valley=0.1, kl_coef=0.1, kl_tokens="all"),
    ObjectiveConfig(self_rollout="grpo", cov_method="kl-cov", cov_ratio=0.5, term_norm="own"),
])
def test_wrapper_equals_batch_losses(cfg):
    ref = torch.log(torch.full((4, 5), 0.3))
    b = _batch(ref_logp_BT=ref, step=2, sft_factor=0.7)
    terms, weights = token_losses(cfg, b.logp_BT, b.entropy_BT, b.mask_BT, b.is_demo_B, b.correct_B, b.adv_B,
                                  None, ref, step=2, sft_factor=0.7)
    out = batch_losses(cfg, b)
    assert list(terms) == list(out.terms) == list(TERMS)
    for name in TERMS:
        torch.testing.assert_close(terms[name], out.terms[name], rtol=0, atol=0)
    for name in ("w_sft", "w_rl"):
        torch.testing.assert_close(weights[name], out.weights[name], rtol=0, atol=0)


def test_disabled_terms_are_zero_and_report_nothing():
    cfg = ObjectiveConfig(self_rollout="none", entropy_coef=0.0, offpolicy_coef=0.0)
    out = batch_losses(cfg, _batch())
    assert set(out.metrics) == {"sft"}
    for name in TERMS:
        if name != "sft":
            assert float(out.terms[name].abs().sum()) == 0.0


def test_grpo_term_reports_its_clipped_tokens():
    # old log-probs 0.5 away from the current ones: ratio e^{+-0.5} is outside [0.8, 1.2] on every token,
    # and the clip binds where the ratio moves with the advantage's sign (the same indicator grpo_loss gives).
    b0 = _batch()
    old = b0.logp_BT.detach() + torch.tensor([0.5, -0.5, 0.5, -0.5]).unsqueeze(-1)
    b = dataclasses.replace(b0, old_logp_BT=old)
    out = batch_losses(ObjectiveConfig(self_rollout="grpo"), b)
    _, expected_BT = grpo_loss(b.logp_BT, old, b.adv_B, 0.2, 0.2)
    torch.testing.assert_close(out.metrics["grpo"]["clipped_BT"], expected_BT, rtol=0, atol=0)
    assert float(expected_BT.sum()) > 0


def test_a_registered_term_needs_no_other_edit():
    # A toy term (0.5 * entropy on demonstrations) appears in the terms, with its metrics, and in
    # the reduction; removed from the registry afterwards.
    @register_term("toy", applies_to="demos", enabled=lambda cfg: cfg.entropy_coef > 0)
    def toy(cfg, batch, sh):
        return TermOut(0.5 * batch.entropy_BT * sh.demo_BT, {"n_demo_tokens": sh.demo_BT.sum()})

    try:
        b = _batch()
        out = batch_losses(ObjectiveConfig(), b)
        demo_BT = b.mask_BT * b.is_demo_B.unsqueeze(-1)
        torch.testing.assert_close(out.terms["toy"], 0.5 * b.entropy_BT * demo_BT)
        assert float(out.metrics["toy"]["n_demo_tokens"]) == 5.0
        counts = {k: dict(num_tokens=float(m.sum()), num_seqs=float((m.sum(-1) > 0).sum()), max_len=5)
                  for k, m in (("all", b.mask_BT), ("demos", demo_BT), ("rollouts", b.mask_BT - demo_BT))}
        own = ObjectiveConfig(term_norm="own")
        reduced = reduce_terms(own, out.terms, b.mask_BT, b.is_demo_B, counts)
        # term_norm=own: normalised over the demonstrations' tokens, as its registration says
        expected = agg_loss(out.terms["toy"], demo_BT, own.loss_agg, **counts["demos"])
        torch.testing.assert_close(reduced["toy"], expected, rtol=0, atol=0)
    finally:
        del REGISTRY["toy"]
