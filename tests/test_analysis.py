"""srft analyze: the token-shift, MDS and entropy helpers on hand-checkable cases, and the command end to end."""

import json
import math
import shutil

import pytest
import torch

from srft.analysis import ckpt_map, entropy, token_shift
from srft.analysis.responses import (
    build_response_set,
    load_response_set,
    save_response_set,
)
from srft.analysis.score import Layout, score_logprobs
from srft.cli import main
from srft.config import DataConfig
from srft.tasks import get_task

# --------------------------------------------------------------------------- token shift


def _logp(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_token_shift_hand_computed():
    # p_base  = [0.50, 0.50, 0.20, 0.90]
    # p_model = [0.57, 0.27, 0.20, 0.49]
    # change  = [+0.07, -0.23, 0.00, -0.41]
    # |change| > 0.1: tokens 1 and 3.
    # expert = tokens 0, 1, 2 -> 1 of 3 changed; mean |change| = (0.07 + 0.23 + 0) / 3 = 0.1
    # base   = token 3        -> 1 of 1 changed; mean |change| = 0.41
    # all    = 2 of 4 = 0.5
    base, model = _logp([0.5, 0.5, 0.2, 0.9]), _logp([0.57, 0.27, 0.2, 0.49])
    masks = {"expert": torch.tensor([True, True, True, False]), "base": torch.tensor([False, False, False, True])}
    r = token_shift.token_shift(base, model, masks, threshold=0.1, bins=4)
    assert r["frac_changed"] == pytest.approx({"all": 0.5, "expert": 1 / 3, "base": 1.0})
    assert r["mean_abs_change"]["expert"] == pytest.approx(0.1)
    assert r["mean_abs_change"]["base"] == pytest.approx(0.41)
    assert r["n_tokens"] == {"all": 4, "expert": 3, "base": 1}
    # 4 bins over [-1, 1]: [-1, -0.5) [-0.5, 0) [0, 0.5) [0.5, 1]
    # -0.23 and -0.41 -> bin 1; 0.00 and +0.07 -> bin 2
    assert r["hist_edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert r["hist_counts"]["all"] == [0, 2, 2, 0]
    assert r["hist_counts"]["expert"] == [0, 1, 2, 0]


def test_token_shift_logratio():
    # log(p_model / p_base) = [log 1.14, log 0.54, 0, log 0.5444] = [0.131, -0.616, 0, -0.608]
    # default threshold ln 2 = 0.693: nothing changed; threshold 0.5: tokens 1 and 3 changed.
    base, model = _logp([0.5, 0.5, 0.2, 0.9]), _logp([0.57, 0.27, 0.2, 0.49])
    masks = {"expert": torch.tensor([True, True, False, False]), "base": torch.tensor([False, False, True, True])}
    r = token_shift.token_shift(base, model, masks, measure="logratio")
    assert r["threshold"] == pytest.approx(math.log(2))
    assert r["frac_changed"]["all"] == 0.0
    r = token_shift.token_shift(base, model, masks, threshold=0.5, measure="logratio")
    assert r["frac_changed"] == pytest.approx({"all": 0.5, "expert": 0.5, "base": 0.5})


def test_fraction_changed_threshold_edges():
    ch = torch.tensor([0.5, -0.5, 0.25, 0.0])  # exactly representable values
    assert token_shift.fraction_changed(ch, 0.5) == 0.0  # strict: a change equal to the threshold is not counted
    assert token_shift.fraction_changed(ch, 0.25) == 0.5  # only the two ±0.5
    assert token_shift.fraction_changed(ch, 0.0) == 0.75  # every non-zero change
    assert token_shift.fraction_changed(ch, 1.0) == 0.0  # a probability cannot move by more than 1
    assert math.isnan(token_shift.fraction_changed(torch.zeros(0), 0.1))
    with pytest.raises(ValueError):
        token_shift.fraction_changed(ch, -0.1)
    with pytest.raises(ValueError, match="same response set"):
        token_shift.change_N(torch.zeros(3), torch.zeros(4))


def test_histogram_counts_sum_to_n():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1000, generator=g) * 2 - 1
    x[:3] = torch.tensor([-1.0, 1.0, 0.0])  # both ends of the range
    counts, edges = token_shift.histogram(x)
    assert sum(counts) == 1000 and len(counts) == token_shift.HIST_BINS and len(edges) == token_shift.HIST_BINS + 1
    # log-ratios outside the range are clipped into the end bins, not lost
    counts, _ = token_shift.histogram(torch.tensor([-50.0, 0.0, 50.0]), -5, 5, bins=10)
    assert sum(counts) == 3 and counts[0] == 1 and counts[-1] == 1


def test_mean_std_table_cells():
    assert token_shift.fmt_mean_std([0.1, 0.3]) == f"0.200 ± {math.sqrt(0.02):.3f}"  # sample std: sqrt(2 * 0.01 / 1)
    assert token_shift.fmt_mean_std([0.25]) == "0.250"  # one seed: no ±
    assert token_shift.fmt_mean_std([]) == "–"


# --------------------------------------------------------------------------- checkpoint map


def test_mds_right_triangle():
    # base, A, B with |A| = 3, |B| = 4, |A - B| = 5 (a 3-4-5 right triangle at the base):
    # three points always fit a plane, so MDS must reproduce all three distances exactly.
    d = torch.tensor([[0.0, 3.0, 4.0], [3.0, 0.0, 5.0], [4.0, 5.0, 0.0]])
    coords, explained = ckpt_map.classical_mds(d)
    coords = coords - coords[0]  # base at the origin
    assert explained == pytest.approx(1.0)
    assert coords[1].norm().item() == pytest.approx(3.0)
    assert coords[2].norm().item() == pytest.approx(4.0)
    assert (coords[1] - coords[2]).norm().item() == pytest.approx(5.0)
    assert (coords[1] @ coords[2]).item() == pytest.approx(0.0, abs=1e-9)  # the right angle is at the base


def test_checkpoint_map_from_vectors():
    # RMS distances: base = 0; A = [3, 3, 3, 3] -> 3; B = [4, -4, 4, -4] -> 4;
    # A - B = [-1, 7, -1, 7] -> sqrt((1 + 49 + 1 + 49) / 4) = 5.
    base, a, b = torch.zeros(4), torch.full((4,), 3.0), torch.tensor([4.0, -4.0, 4.0, -4.0])
    assert ckpt_map.rms_distance(a, base) == pytest.approx(3.0)
    assert ckpt_map.rms_distance(a, a) == 0.0
    m = ckpt_map.checkpoint_map(["base", "A", "B"], [base, a, b])
    assert m["coords"][0] == [0.0, 0.0]
    assert math.hypot(*m["coords"][1]) == pytest.approx(3.0)
    assert math.hypot(*m["coords"][2]) == pytest.approx(4.0)
    assert m["pairwise_rms"][1][2] == pytest.approx(5.0)


def test_kl_estimate_on_base_samples():
    # only the base-sample positions (1 and 2) count: mean(log pb - log pm) = ((-1 - -2) + (-1 - -1)) / 2 = 0.5
    lb, lm = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([-9.0, -2.0, -1.0])
    assert ckpt_map.kl_estimate(lb, lm, torch.tensor([False, True, True])) == pytest.approx(0.5)
    assert math.isnan(ckpt_map.kl_estimate(lb, lm, torch.tensor([False, False, False])))


# --------------------------------------------------------------------------- entropy


def test_moving_average_and_seed_band():
    # window 2: [1, (1+2)/2, (2+3)/2, (3+4)/2]
    assert entropy.moving_average([1.0, 2.0, 3.0, 4.0], 2).tolist() == [1.0, 1.5, 2.5, 3.5]
    seeds = [[{"step": s, "entropy_rollout": v} for s, v in enumerate([1.0, 1.0, 1.0])],
             [{"step": s, "entropy_rollout": v} for s, v in enumerate([3.0, 3.0])]]  # stopped one step early
    c = entropy.method_curves({"m": seeds}, "entropy_rollout", window=1)["m"]
    assert c["steps"].tolist() == [0, 1, 2] and c["seeds"] == 2
    assert c["mean"].tolist() == [2.0, 2.0, 1.0]  # the last step has one seed only
    assert c["lo"].tolist() == [1.0, 1.0, 1.0] and c["hi"].tolist() == [3.0, 3.0, 1.0]
    # no values at all (a method without demonstrations): no curve
    assert entropy.method_curves({"m": [[{"step": 0, "entropy_demo": None}]]}, "entropy_demo") == {}


def test_dynamics_table_first_and_last_steps():
    # two seeds of 4 steps, n=2: seed A rollout_acc first (0+0.2)/2=0.1, last (0.4+0.6)/2=0.5;
    # seed B first (0.2+0.4)/2=0.3, last (0.6+0.8)/2=0.7; over seeds 0.2 -> 0.6.
    def run(accs, lens):
        return [{"step": i, "rollout_acc": a, "response_len": n, "w_sft": None} for i, (a, n) in enumerate(zip(accs, lens))]
    table = entropy.dynamics_table({
        "m": [run([0.0, 0.2, 0.4, 0.6], [30, 30, 40, 40]), run([0.2, 0.4, 0.6, 0.8], [30, 30, 40, 40])],
        "g": [[{"step": 0, "rollout_acc": 1.0}]],  # logs no response length: a dash there
    }, n=2)
    lines = table.splitlines()
    assert lines[0] == "| method | rollout accuracy | response length |"  # no run logs w_sft: no column
    assert lines[2] == "| m | 0.200 -> 0.600 | 30.0 -> 40.0 |"
    assert lines[3] == "| g | 1.000 -> 1.000 | – |"
    # a key logged only in the first steps (an SFT stage): no "last" value, not its last logged one
    staged = [{"step": i, "w_sft": 1.0 if i < 2 else None, "rollout_acc": 0.5} for i in range(6)]
    assert entropy.first_last([staged], "w_sft", n=2) == ([1.0], [])
    assert "| s | 0.500 -> 0.500 | 1.000 -> – |" in entropy.dynamics_table({"s": [staged]}, n=2)


# --------------------------------------------------------------------------- response set and scoring


def test_response_set_respects_context_window(tmp_path, tiny_model_dir):
    """A model whose context is shorter than prompt + demonstration: demonstrations left out, samples cut."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.config.max_position_embeddings = 30  # addition prompts are 6-8 characters, demonstrations 25-50
    messages = []
    rs = build_response_set(model, tok, get_task("addition"), DataConfig(), n_prompts=4, seed=0, say=messages.append)
    assert any("do not fit the model's context window" in m and "max_position_embeddings=30" in m for m in messages)
    assert all(len(p) + len(r) <= 30 for p, r in zip(rs.prompt_ids, rs.response_ids))
    assert rs.kind.count("base") == 4
    # saved and read back unchanged
    save_response_set(rs, tmp_path / "rs.jsonl")
    back = load_response_set(tmp_path / "rs.jsonl")
    assert (back.prompt_ids, back.response_ids, back.kind) == (rs.prompt_ids, rs.response_ids, rs.kind)


def test_scores_do_not_depend_on_batching(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srft.analysis.responses import ResponseSet

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = get_task("addition").generate("test_id", 5, 1234)
    rs = ResponseSet([tok(r["prompt"])["input_ids"] for r in rows],
                     [tok(r["demonstration"])["input_ids"] + [tok.eos_token_id] for r in rows], ["expert"] * 5)
    a_N, b_N = score_logprobs(model, rs, batch_size=1), score_logprobs(model, rs, batch_size=4)
    assert a_N.shape == (rs.n_tokens,) and Layout.of(rs).n_tokens == rs.n_tokens
    torch.testing.assert_close(a_N, b_N, atol=1e-5, rtol=0)
    assert bool((a_N <= 0).all())


# --------------------------------------------------------------------------- end to end


def _copy_model(src, dst, noise: float = 0.0, seed: int = 0):
    if noise == 0.0:
        shutil.copytree(src, dst)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    model.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)


def _write_run(run_dir, method: str, base, seed: int, model_noise: float | None):
    run_dir.mkdir(parents=True)
    (run_dir / "eval.json").write_text(json.dumps({"method": method, "base_model": str(base),
                                                   "before": {"test_id": 0.1}, "after": {"test_id": 0.2}}))
    (run_dir / "config.yaml").write_text("data:\n  task: addition\n  max_response_tokens: 96\n  seed: 1234\n")
    with open(run_dir / "metrics.jsonl", "w") as f:
        for step in range(20):
            demo = 0.8 if method == "sft" else None
            f.write(json.dumps({"step": step, "entropy_rollout": 1.0 + 0.01 * step * (1 if method == "sft" else -1)
                                + 0.05 * seed, "entropy_demo": demo, "rollout_acc": 0.5}) + "\n")
    if model_noise is not None:
        _copy_model(base, run_dir / "model", model_noise, seed)


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory, tiny_model_dir):
    """regime 'reg': 'same' (an unchanged copy of the base), 'sft' (2 perturbed seeds), 'broken' (no model/)."""
    root = tmp_path_factory.mktemp("compare")
    _write_run(root / "reg" / "same" / "seed0", "same", tiny_model_dir, 0, 0.0)
    for seed in (0, 1):
        _write_run(root / "reg" / "sft" / f"seed{seed}", "sft", tiny_model_dir, seed, 0.3)
    _write_run(root / "reg" / "broken" / "seed0", "broken", tiny_model_dir, 0, None)
    return root


def test_analyze_compare_dir_end_to_end(compare_dir, capsys):
    out = compare_dir / "analysis"
    rc = main(["analyze", str(compare_dir), "--n-prompts", "6", "--threshold", "0.01", "model.threads=1"])
    assert rc == 0
    for name in ("analysis.md", "analysis.json", "shift-reg.png", "entropy-reg.png", "map-reg.png",
                 "responses-reg.jsonl"):
        assert (out / name).stat().st_size > 0, name
    md = (out / "analysis.md").read_text()
    assert "### Token-probability shift" in md and "| sft | 2 |" in md and "| same | 1 |" in md
    assert "| method | rollout accuracy |" in md  # the training-dynamics table
    assert "srft analyze" in md and "broken/seed0" in md  # the command, and the skipped run under Problems

    res = json.loads((out / "analysis.json").read_text())["regimes"]["reg"]
    same = res["shift"]["per_run"]["same/seed0"]
    assert same["frac_changed"] == {"all": 0.0, "expert": 0.0, "base": 0.0}
    assert same["mean_abs_change"]["all"] == 0.0
    for seed in ("seed0", "seed1"):
        sft = res["shift"]["per_run"][f"sft/{seed}"]
        assert sft["frac_changed"]["all"] > 0 and sft["mean_abs_change"]["expert"] > 0
        assert sum(sft["hist_counts"]["all"]) == sft["n_tokens"]["all"]
    rows = {r["label"]: r for r in res["map"]["runs"]}
    assert set(rows) == {"same/seed0", "sft/seed0", "sft/seed1"}  # broken left out
    assert rows["same/seed0"]["rms"] == 0.0 and rows["same/seed0"]["kl"] == 0.0
    assert rows["sft/seed0"]["rms"] > 0 and rows["sft/seed1"]["rms"] > 0
    assert math.hypot(rows["same/seed0"]["x"], rows["same/seed0"]["y"]) < 1e-6  # on the base model
    assert res["entropy"]["entropy_rollout"]["sft"]["seeds"] == 2
    assert "sft" in res["entropy"]["entropy_demo"] and "same" not in res["entropy"]["entropy_demo"]

    # a second run reuses the response set, and --only limits the work
    capsys.readouterr()
    assert main(["analyze", str(compare_dir), "--n-prompts", "6", "--only", "map", "--out", str(out / "map-only")]) == 0
    assert "making a new one" not in capsys.readouterr().out
    assert (out / "map-only" / "map-reg.png").exists() and not (out / "map-only" / "shift-reg.png").exists()


def test_analyze_models(tmp_path, tiny_model_dir):
    pert = tmp_path / "pert"
    _copy_model(tiny_model_dir, pert, 0.3, 0)
    out = tmp_path / "out"
    rc = main(["analyze", "--models", str(tiny_model_dir), str(tiny_model_dir), str(pert), str(tmp_path / "missing"),
               "--n-prompts", "4", "--out", str(out), "model.threads=1"])
    assert rc == 0
    res = json.loads((out / "analysis.json").read_text())
    rows = {r["label"]: r for r in res["regimes"]["models"]["map"]["runs"]}
    assert rows[tiny_model_dir.name]["rms"] == 0.0 and rows["pert"]["rms"] > 0
    assert any("missing" in p for p in res["problems"])
    assert (out / "shift-models.png").exists() and not (out / "entropy-models.png").exists()


def test_analyze_arguments(tmp_path, capsys):
    assert main(["analyze"]) == 2
    assert main(["analyze", str(tmp_path), "--only", "shift,bogus"]) == 2
    assert "--only" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path)]) == 2  # no runs
    assert "no finished runs" in capsys.readouterr().err
