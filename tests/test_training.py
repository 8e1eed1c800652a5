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
        "model.threads=1", f"run.out_dir={tmp_path}/run", *extra])


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
        assert r["w_sft"] is None and r["w_rl"] is None  # not used by GRPO


def test_resume_continues_where_it_stopped(tiny_model_dir, tmp_path):
    # no evaluation in the straight run: the resumed one evaluates at its first end (step 2),
    # which must not change what training samples afterwards
    straight = train(_cfg(tiny_model_dir, tmp_path / "a", "srft", "run.steps=4", "run.plots=false",
                          "run.eval_every=0"))
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


def test_trains_on_an_exported_luffy_parquet(tiny_model_dir, tmp_path):
    """export -> parquet in the verl/LUFFY schema -> data.task=file -> training with the math verifier."""
    import pyarrow.parquet as pq

    from srft.cli import main

    assert main(["export", "data.task=addition", "--split", "train", "--n", "30", "--out", str(tmp_path / "tr.parquet")]) == 0
    assert main(["export", "data.task=addition", "--split", "test_id", "--n", "4", "--out", str(tmp_path / "te.parquet")]) == 0
    cols = set(pq.read_schema(tmp_path / "tr.parquet").names)
    assert {"prompt", "target", "reward_model", "data_source"} <= cols
    cfg = _cfg(tiny_model_dir, tmp_path, "srft", "data.task=file", f"data.train_file={tmp_path}/tr.parquet",
               f"data.test_id_file={tmp_path}/te.parquet", "data.train_size=0", "data.test_size=0",
               "data.verifier_workers=1", "run.steps=2", "run.plots=false")
    run_dir = train(cfg)
    records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["n_demos"] == 2
    # the expert demonstrations pass the math verifier (they end with '#### <sum>')
    assert records[0]["demo_reward"] == 1.0
    assert records[0]["verify_timeouts"] == 0 and records[0]["verify_errors"] == 0
    ev = json.loads((run_dir / "eval.json").read_text())
    assert set(ev["before"]) == {"test_id"}


def test_bad_rows_are_reported(tiny_model_dir, tmp_path):
    from srft.cli import main

    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "1+1=", "answer": "2", "demonstration": "1+1=2 #### 2"}\n'
                    '{"prompt": "2+2=", "demonstration": "2+2=4 #### 4"}\n'
                    '{"prompt": "3+3=", "answer": "6", "demonstration": "' + "x" * 500 + '"}\n')
    cfg = _cfg(tiny_model_dir, tmp_path, "srft", "data.task=file", f"data.train_file={rows}", "data.train_size=0",
               "data.too_long=drop", "run.steps=0", "run.plots=false", "data.verifier_workers=1")
    from srft.models.loading import load_tokenizer
    from srft.tasks.files import FileTask
    from srft.training.data import encode_rows

    task = FileTask(str(rows), workers=1)
    tok = load_tokenizer(tiny_model_dir)
    kept, report = encode_rows(task.generate("train", 0, 0), tok, cfg.data, name="train")
    summary = report.summary
    assert len(kept) == 1 and "kept 1 of 3 rows" in summary and "1 no answer" in summary, summary
    assert "1 demonstration too long" in summary, summary
    # nothing usable at all: a clear error naming the fix
    only_bad = tmp_path / "bad.jsonl"
    only_bad.write_text('{"prompt": "2+2=", "demonstration": "2+2=4"}\n')
    assert main(["train", f"model.path={tiny_model_dir}", "data.task=file", f"data.train_file={only_bad}",
                 "data.train_size=0", "run.progress=false", f"run.out_dir={tmp_path}/r2"]) == 2
