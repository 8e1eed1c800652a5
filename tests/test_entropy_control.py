"""More ways to control entropy: the adaptive entropy-bonus coefficient, Clip-Cov / KL-Cov,
and the target controller that measures which way its factors move entropy."""

import dataclasses

import pytest
import torch

from srft.config import Config, ConfigError, ObjectiveConfig, load_config
from srft.objective import token_losses
from srft.objective.cov import clip_cov_mask, kl_cov_loss, kl_cov_mask, token_covariance
from srft.training.methods import EntropyCoef, StepPlan, WeightFactors, build_step_methods

# log pi [[0, -3], [-1, 0]]: mean -1, centred [[1, -2], [0, 1]]; A = [2, -1] per sequence: token mean
# (2 + 2 - 1 - 1) / 4 = 0.5, centred [1.5, -1.5]; cov = [[1 * 1.5, -2 * 1.5], [0 * -1.5, 1 * -1.5]]
LOGP = [[0.0, -3.0], [-1.0, 0.0]]
ADV = [2.0, -1.0]
COV = [[1.5, -3.0], [0.0, -1.5]]


def test_token_covariance_and_selection_by_hand():
    mask = torch.ones(2, 2)
    cov = token_covariance(torch.tensor(LOGP), torch.tensor(ADV), mask)
    assert torch.allclose(cov, torch.tensor(COV))
    # a masked-out token counts in neither mean nor selection: mask (1, 1) -> log pi mean -4/3 ...
    cov_m = token_covariance(torch.tensor(LOGP), torch.tensor(ADV), torch.tensor([[1.0, 1.0], [1.0, 0.0]]))
    assert cov_m[1, 1] == 0
    # KL-Cov: top max(int(0.25 * 4), 1) = 1 token by cov -> (0, 0); ratio 0.5 -> 2 tokens: 1.5 and 0
    assert kl_cov_mask(cov, mask, 0.25).tolist() == [[1, 0], [0, 0]]
    assert kl_cov_mask(cov, mask, 0.5).tolist() == [[1, 0], [1, 0]]
    assert kl_cov_mask(cov, torch.zeros(2, 2), 0.5).sum() == 0
    # Clip-Cov: band (1, 5) holds only (0, 0); band (-2, 1) holds 0 and -1.5: ratio 1 takes both,
    # ratio 0.25 one of them at random
    assert clip_cov_mask(cov, mask, 1.0, 1.0, 5.0).tolist() == [[1, 0], [0, 0]]
    assert clip_cov_mask(cov, mask, 1.0, -2.0, 1.0).tolist() == [[0, 0], [1, 1]]
    one = clip_cov_mask(cov, mask, 0.25, -2.0, 1.0, torch.Generator().manual_seed(0))
    assert one.sum() == 1 and one[0].sum() == 0
    assert clip_cov_mask(cov, mask, 1.0, 10.0, 20.0).sum() == 0  # nothing in the band


def _grpo_terms(cov_method, **kw):
    cfg = dataclasses.replace(ObjectiveConfig(), self_rollout="grpo", demonstrations=False, entropy_coef=0.0,
                              cov_method=cov_method, **kw)
    logp = torch.tensor(LOGP, requires_grad=True)
    terms, _ = token_losses(cfg, logp, torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([False, False]),
                            torch.tensor([True, False]), torch.tensor(ADV),
                            old_logp_BT=torch.tensor(LOGP) - 0.5)
    return terms, logp


def test_clip_cov_removes_the_gradient_of_the_chosen_tokens_only():
    # GRPO surrogate -A * ratio, ratio = exp(0.5) = 1.6487 inside the clip range only for A < 0 (upper clip
    # 1.2 binds for A = 2 > 0: constant, no gradient): d/d log pi of row 1 = -(-1) * 1.6487 = 1.6487
    terms, logp = _grpo_terms("none")
    terms["grpo"].sum().backward()
    plain = logp.grad.clone()
    assert plain[1].tolist() == pytest.approx([1.6487, 1.6487], abs=1e-4)
    # band (-2, 1) with ratio 1 chooses (1, 0) and (1, 1): their gradient is gone, the values stay
    terms, logp = _grpo_terms("clip-cov", cov_ratio=1.0, cov_low=-2.0, cov_high=1.0)
    terms["grpo"].sum().backward()
    assert logp.grad[1].tolist() == [0.0, 0.0] and logp.grad[0].tolist() == plain[0].tolist()
    assert float(terms["grpo"].detach().sum()) == pytest.approx(float(_grpo_terms("none")[0]["grpo"].detach().sum()))


def test_kl_cov_penalises_the_top_tokens():
    # top 1 by cov: (0, 0); |log pi - old| = 0.5 there, x coef 2 = 1.0; gradient +2 (log pi above old)
    terms, logp = _grpo_terms("kl-cov", cov_ratio=0.25, kl_cov_coef=2.0)
    assert torch.allclose(terms["kl_cov"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    terms["kl_cov"].sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[2.0, 0.0], [0.0, 0.0]]))
    assert kl_cov_loss(torch.tensor([-1.0]), torch.tensor([-0.5])).tolist() == [0.5]
    # on SRFT's rollout terms too: clip-cov on the pos/neg terms
    cfg = dataclasses.replace(ObjectiveConfig(), cov_method="clip-cov", cov_ratio=1.0, cov_low=-2.0, cov_high=1.0,
                              entropy_coef=0.0, rl_weight="constant")
    logp = torch.tensor(LOGP, requires_grad=True)
    terms, _ = token_losses(cfg, logp, torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([False, False]),
                            torch.tensor([True, False]), torch.tensor(ADV))
    (terms["pos"] + terms["neg"]).sum().backward()
    # row 0 correct: -0.1 * log pi -> grad -0.1; row 1 wrong (+log pi) chosen: no gradient
    assert torch.allclose(logp.grad, torch.tensor([[-0.1, -0.1], [0.0, 0.0]]))


def test_adaptive_entropy_coefficient_by_hand_and_its_state():
    obj = dataclasses.replace(ObjectiveConfig(), entropy_coef_mode="adaptive", entropy_coef=0.001,
                              entropy_coef_step=0.0005, entropy_coef_max=0.002, entropy_target=0.3)
    m = EntropyCoef(obj)
    coefs = []
    for h in (0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5, 0.5):
        plan = StepPlan(0, obj)
        m.plan(plan)
        coefs.append(plan.objective.entropy_coef)
        m.observe({"entropy_rollout": h})
    # below target: 0.001 -> 0.0015 -> 0.002 -> 0.002 (clamped); above: 0.0015, 0.001, 0.0005, 0, 0 (clamped)
    assert coefs == pytest.approx([0.001, 0.0015, 0.002, 0.002, 0.0015, 0.001, 0.0005, 0.0])
    again = EntropyCoef(obj)
    again.load_state_dict(m.state_dict())
    assert again.coef == m.coef == 0.0
    cfg = Config(objective=obj)
    assert any(isinstance(x, EntropyCoef) for x in build_step_methods(cfg, lambda s: 0.0))


def _run_plant(controller_sign: str, steps: int = 300) -> tuple[list[float], WeightFactors]:
    """A plant where imitation LOWERS entropy: h = 0.14 - 0.1 * log(sft factor) of the previous step."""
    obj = dataclasses.replace(ObjectiveConfig(), sft_weight="target", rl_weight="exp", entropy_target=0.3,
                              controller_gain=0.5, controller_sign=controller_sign, controller_probe=0.1)
    wf = WeightFactors(obj, steps)
    h, seen = 0.14, []
    for step in range(steps):
        plan = StepPlan(step, obj)
        wf.plan(plan)
        wf.observe({"entropy_rollout": h})
        seen.append(h)
        h = 0.14 - 0.1 * float(torch.log(torch.tensor(plan.factors[0])))
    return seen, wf


def test_measured_controller_converges_where_the_assumed_one_saturates():
    # target 0.3 needs log factor -1.6; the assumed sign raises w_SFT while entropy is below the target,
    # which here lowers it: the log factor runs to its bound +4 (entropy 0.14 - 0.4 = -0.26)
    seen, wf = _run_plant("assumed")
    assert wf.log_sft == 4.0 and seen[-1] == pytest.approx(-0.26)
    seen, wf = _run_plant("measured")
    assert sum(seen[-20:]) / 20 == pytest.approx(0.3, abs=0.02)
    assert wf.log_sft == pytest.approx(-1.6, abs=0.15) and wf.slopes()[0] < 0
    # the fitted slope is the plant's: -0.1 per unit of log factor
    assert wf.slopes()[0] == pytest.approx(-0.1, abs=0.01)
    again = WeightFactors(wf.obj, 300)
    again.load_state_dict(wf.state_dict())
    assert again.history == wf.history and again.slopes() == wf.slopes()


@pytest.mark.parametrize("override, message", [
    (["objective.entropy_coef_mode=adaptive", "objective.entropy_coef=0.05"], "entropy_coef_max"),
    (["objective.cov_method=clip-cov", "objective.cov_low=5", "objective.cov_high=1"], "cov_low=5.0 must be below"),
    (["objective.cov_method=kl-cov", "objective.self_rollout=none"], "self_rollout=none"),
    (["objective.cov_ratio=0"], "cov_ratio must be in (0, 1]"),
    (["objective.controller_window=2"], "controller_window must be >= 3"),
    (["objective.controller_sign=guess"], "controller_sign"),
])
def test_new_config_values_are_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_config("srft", overrides=override)


def test_new_keys_are_described():
    from srft.config import describe

    text = describe()
    for key in ("entropy_coef_mode", "entropy_coef_step", "entropy_coef_max", "cov_method", "cov_ratio", "cov_low",
                "cov_high", "kl_cov_coef", "controller_sign", "controller_probe", "controller_window"):
        assert f"objective.{key}:" in text


def test_runs_with_the_new_controls_resume_as_if_uninterrupted(tiny_model_dir, tmp_path):
    from srft import rundir
    from srft.training.loop import train

    def cfg(out, steps, *extra):
        return load_config("srft", None, [
            f"model.path={tiny_model_dir}", f"run.steps={steps}", "run.eval_every=0", "run.save_every=1",
            "run.eval_k=1", "run.progress=false", "run.plots=false", "rollout.prompts_per_step=2", "rollout.n=2",
            "data.train_size=20", "data.test_size=2", "data.max_response_tokens=24", "data.too_long=truncate",
            "model.threads=1", f"run.out_dir={out}", "objective.entropy_coef_mode=adaptive",
            "objective.entropy_coef_step=0.01", "objective.entropy_coef_max=0.05", "objective.sft_weight=target",
            "objective.controller_sign=measured", "objective.cov_method=clip-cov", "objective.cov_ratio=0.05",
            "objective.cov_low=-10", "objective.cov_high=10", *extra])

    straight = train(cfg(tmp_path / "a", 4))
    b = train(cfg(tmp_path / "b", 2))
    train(load_config(None, str(b / rundir.CONFIG), ["run.steps=4"]), run_dir=b, resume=True)
    rec_a, rec_b = rundir.read_jsonl(straight / rundir.METRICS), rundir.read_jsonl(b / rundir.METRICS)
    keys = ("loss", "entropy_coef", "sft_factor")
    assert [[round(r[k], 6) for k in keys] for r in rec_b] == [[round(r[k], 6) for k in keys] for r in rec_a]
    assert len({r["entropy_coef"] for r in rec_a}) > 1  # the coefficient moved
