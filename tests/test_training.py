"""The training loop end to end on a tiny model made in the test."""

import json

import pytest
import torch

from srft.config import load_config
from srft.training.loop import pad_batch, prompts_for_step, response_logprobs, train


def _cfg(model_dir, tmp_path, preset="srft", *extra):
    return load_config(preset, None, [
        f"model.path={model_dir}", "run.steps=3", "run.eval_every=2", "run.save_every=2", "run.eval_k=2",
        "run.progress=false", "rollout.prompts_per_step=2", "rollout.n=3", "data.train_size=20",
        "data.test_size=4", "data.max_response_tokens=48", "data.too_long=truncate", "optim.micro_batch=3",
        f"run.out_dir={tmp_path}/run", *extra])


def test_srft_run_writes_the_run_directory(tiny_model_dir, tmp_path):
    run_dir = train(_cfg(tiny_model_dir, tmp_path))
    for name in ("config.yaml", "metrics.jsonl", "eval.json", "model/config.json", "model/model.safetensors",
                 "model/tokenizer.json", "accuracy.png", "entropy.png", "weights.png", "length.png"):
        assert (run_dir / name).exists(), name
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    r = records[0]
    for key in ("reward_mean", "rollout_acc", "frac_all_correct", "frac_all_wrong", "entropy_rollout",
                "entropy_demo", "w_sft", "w_rl", "loss_sft", "loss_offpolicy", "loss_pos", "loss_neg",
                "grad_norm", "response_len", "demo_prob", "t_generate", "t_score", "t_forward_backward",
                "t_optimizer", "gen_tokens_per_s"):
        assert key in r and r[key] is not None, key
    # SRFT: demonstrations are in the batch, the SFT term is active, GRPO's is not
    assert r["n_demos"] == 2 and r["loss_sft"] > 0 and r["loss_grpo"] == 0
    # w_sft = 0.5 exp(-H) lies in (0, 0.5]; w_rl = 0.1 exp(H) >= 0.1
    assert 0 < r["w_sft"] <= 0.5 and r["w_rl"] >= 0.1
    ev = json.loads((run_dir / "eval.json").read_text())
    assert set(ev["before"]) == {"test_id", "test_ood"} and ev["k"] == 2
    assert [h["step"] for h in ev["history"]] == [0, 2, 3]


def test_grpo_run_has_no_demonstration_terms(tiny_model_dir, tmp_path):
    run_dir = train(_cfg(tiny_model_dir, tmp_path, "grpo", "run.steps=2", "run.plots=false"))
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        assert r["n_demos"] == 0 and r["loss_sft"] == 0 and r["loss_offpolicy"] == 0
        assert r["loss_pos"] == 0 and r["loss_neg"] == 0


def test_resume_continues_where_it_stopped(tiny_model_dir, tmp_path):
    straight = train(_cfg(tiny_model_dir, tmp_path / "a", "srft", "run.steps=4", "run.plots=false"))
    # same run, stopped after the checkpoint at step 2, then resumed
    cfg = _cfg(tiny_model_dir, tmp_path / "b", "srft", "run.steps=4", "run.plots=false")
    cfg.run.steps = 2
    run_dir = train(cfg)
    cfg.run.steps = 4
    train(cfg, run_dir=run_dir, resume=True)
    a = [json.loads(l) for l in (straight / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for key in ("reward_mean", "loss", "grad_norm", "entropy_rollout", "response_len"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (ra["step"], key)


def test_prompts_for_step_is_a_permutation_per_epoch():
    seen = [i for step in range(5) for i in prompts_for_step(10, step, 2, seed=3)]
    assert sorted(seen) == list(range(10))
    assert prompts_for_step(10, 7, 3, seed=3) == prompts_for_step(10, 7, 3, seed=3)


def test_pad_batch_positions_predict_response_tokens(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    seqs = [([5, 6, 7], [8, 9]), ([5], [10, 11, 12])]
    batch = pad_batch(seqs, 0, "cpu")
    logp_BT, _ = response_logprobs(model, batch)
    # the same log-probs from separate unpadded forward passes
    for b, (p, r) in enumerate(seqs):
        ids = torch.tensor([p + r])
        logits = model(input_ids=ids).logits[0]
        lp = torch.log_softmax(logits, -1)
        expected = torch.stack([lp[len(p) - 1 + t, tok] for t, tok in enumerate(r)])
        torch.testing.assert_close(logp_BT[b, :len(r)], expected, atol=1e-5, rtol=1e-5)
    assert batch["mask_BT"].tolist() == [[1, 1, 0], [1, 1, 1]]
