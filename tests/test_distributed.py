"""Training under torchrun (2 gloo ranks on the CPU) computes what one process computes.

Each test runs ``srft train`` as a user would, once with ``torchrun --nproc_per_node 2`` and
once in one process, on the built-in base model with the same global batch, and compares
``metrics.jsonl`` and the saved weights. ``rollout.seeds=prompt`` makes a prompt's rollouts
independent of the rank that samples them, so the runs see the same rollouts token for token
(checked: rewards, lengths and generated-token counts are equal exactly).

Tolerances. What differs between the runs is float32 summation order: two ranks reduce their
shares of the loss and the gradient separately and add them (gloo all-reduce), and each rank
pads its micro-batches to its own longest sequence. That moves losses and gradient norms by a
few units in the 7th significant digit (measured: at most 3e-7 relative over 3 steps), so
figures must agree to ``RTOL`` = 1e-5 relative. AdamW at lr 1e-4 without warm-up moves each
weight by about 1e-4 a step, as g / (|g| + eps): where a gradient entry is as small as eps
(1e-8) its update follows the last digits of g, and about 1 entry in 3,000 differs by up to
2.5e-7 (2.5e-6 at lr 1e-3, measured); weights must agree to ``ATOL_W`` = 1e-6, 1% of a step. A real difference
(a rank's gradient lost, a denominator counted per rank, a group split) moves losses by far
more than 1e-5 and flips the update of a large share of the weights (2e-4 each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

RTOL = 1e-5
ATOL_W = 1e-6
# figures that must be equal exactly: they only count tokens and rewards of identical rollouts
EXACT = ("rollout_acc", "reward_mean", "frac_all_correct", "frac_all_wrong", "n_demos", "gen_tokens", "response_len",
         "demo_len", "pool_size", "relift_buffer", "relift_sft_step", "skipped", "step")


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _common(out: Path, cache: Path, steps: int, extra: list[str], preset: str = "srft") -> list[str]:
    return ["train", "--preset", preset, f"run.out_dir={out}", f"run.steps={steps}", f"model.base_cache_dir={cache}",
            "rollout.seeds=prompt", "rollout.prompts_per_step=4", "rollout.n=4", "data.test_size=8",
            "run.eval_every=0", "run.progress=false", "run.plots=false", "optim.lr=1e-4", "optim.warmup_steps=0", *extra]


def srft_cmd(ranks: int, args: list[str]) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "srft", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
            str(29500 + os.getpid() % 1000), "-m", "srft", *args]


def run_srft(ranks: int, args: list[str], timeout: int = 600) -> None:
    proc = subprocess.run(srft_cmd(ranks, args), env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{ranks}-rank run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key, va in ra.items():
            if key.startswith("t_") or key.endswith("_per_s"):
                continue  # timings
            vb = rb[key]
            if key in EXACT or not isinstance(va, float) or vb is None:
                assert va == vb, f"step {ra['step']}: {key} {va} vs {vb}"
            else:
                # abs: a term that is 0 in exact arithmetic (the ratio-1 GRPO loss, -mean A) is a float32 sum of
                # terms of size ~1 whose rounding depends on the summation order (~1e-8)
                assert vb == pytest.approx(va, rel=RTOL, abs=1e-7), f"step {ra['step']}: {key} {va} vs {vb}"


def assert_same_weights(a: Path, b: Path, atol: float = ATOL_W) -> None:
    wa, wb = weights(a), weights(b)
    for name in set(wa) & set(wb):
        diff = (wa[name].float() - wb[name].float()).abs().max().item()
        assert diff <= atol, f"{name}: weights differ by {diff:.3g}"
    assert {"model.embed_tokens.weight"} <= set(wa) & set(wb)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("srft_cache")


def test_one_step_two_ranks_equal_one_rank(tmp_path, cache):
    """Loss, gradient norm and every weight after one SRFT step."""
    run_srft(1, _common(tmp_path / "one", cache, 1, []))
    run_srft(2, _common(tmp_path / "two", cache, 1, []))
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert two[0]["loss"] == pytest.approx(one[0]["loss"], rel=RTOL)
    assert two[0]["grad_norm"] == pytest.approx(one[0]["grad_norm"], rel=RTOL)
    assert_same_records(one, two)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    # evaluation: each rank evaluated half of each split; the gathered figures are one process's
    # (before training the weights are the same bit for bit, so the samples are too)
    from srft import rundir

    ev_one, ev_two = ([json.loads(x) for x in (run / rundir.EVAL_HISTORY).read_text().splitlines()]
                      for run in (tmp_path / "one", tmp_path / "two"))
    assert [e["step"] for e in ev_one] == [e["step"] for e in ev_two] == [0, 1]
    for split in ("test_id", "test_ood"):
        assert ev_two[0][split]["n_prompts"] == ev_one[0][split]["n_prompts"] == 8
        for key in ("acc", "pass@4", "mean_len", "format_ok"):
            assert ev_two[0][split][key] == ev_one[0][split][key], (split, key)
    # the weights moved: the comparison is not of two untouched copies
    from srft.models.base_model import ensure_base_model

    start = weights_of_dir(Path(ensure_base_model(cache, task_name="addition", seed=0, progress=False)))
    moved = max((weights(tmp_path / "one")[k] - v).abs().max().item() for k, v in start.items())
    assert moved > 50 * ATOL_W


def test_hybrid_sharding_equals_one_process(tmp_path, cache):
    """model.shard_group_size=1 on 2 ranks: HSDP's 2-D mesh (2 replicas of 1 shard), gradients summed
    across the replicas; it must compute what one process does."""
    run_srft(1, _common(tmp_path / "one", cache, 2, []))
    run_srft(2, _common(tmp_path / "two", cache, 2, ["model.shard_group_size=1", "run.save_every=1"]))
    assert_same_records(metrics(tmp_path / "one"), metrics(tmp_path / "two"))
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_activation_checkpointing_under_fsdp2_changes_nothing(tmp_path, cache):
    """model.gradient_checkpointing=true on 2 sharded ranks (recompute in backward) equals one plain process."""
    run_srft(1, _common(tmp_path / "one", cache, 2, []))
    run_srft(2, _common(tmp_path / "two", cache, 2, ["model.gradient_checkpointing=true"]))
    assert_same_records(metrics(tmp_path / "one"), metrics(tmp_path / "two"))
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def weights_of_dir(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.parametrize("preset,extra", [
    ("srft", []),
    ("grpo", []),
    # buffer small, so that an SFT step comes within 3 steps. Its second AdamW takes a first step,
    # g / (|g| + eps), on top of the main one's: at eps 1e-8 gradient entries near eps made the two
    # runs' weights differ by up to 3.2e-6 (once in CI); eps 1e-6 makes that update 100 times less
    # sensitive to the last digits of g, so ReLIFT is held to the same 1e-6 as the others
    ("relift", ["objective.relift_buffer=2", "optim.eps=1e-6"]),
    ("chord", []),  # each term a mean over its own kind's tokens: global per-kind counts
    # two updates a step: a rank holds none of one mini-batch's groups and runs zero-weight passes
    ("dapo", ["optim.mini_batches=2", "rollout.filter_groups=false"]),
])
def test_three_steps_two_ranks_equal_one_rank(tmp_path, cache, preset, extra):
    run_srft(1, _common(tmp_path / "one", cache, 3, extra, preset))
    run_srft(2, _common(tmp_path / "two", cache, 3, extra, preset))
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert_same_records(one, two)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    if preset == "relift":
        assert any(r["relift_sft_step"] for r in one), "no ReLIFT SFT step happened: the test shows nothing"


def test_killed_two_rank_run_resumes_on_two_and_on_one_rank(tmp_path, cache):
    """A 2-rank run killed (SIGKILL, no chance to save) after a checkpoint resumes on 2 ranks and on
    1 rank; both continue as an uninterrupted run."""
    steps = 8
    args = lambda out: _common(out, cache, steps, ["run.save_every=2"])  # noqa: E731
    run_srft(1, args(tmp_path / "straight"))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(srft_cmd(2, args(killed)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "the run never saved a checkpoint"
    assert not (killed / "eval.json").exists(), "the run finished before the kill: nothing was tested"
    # torchrun's default checkpoint: one shard file per rank, no whole copy of the weights anywhere
    saved = killed / "checkpoints" / latest.read_text().strip()
    assert len(list((saved / "shards").glob("*.distcp"))) == 2 and not (saved / "model_state.pt").exists()

    shutil.copytree(killed, tmp_path / "killed_copy")
    for ranks, run in ((2, killed), (1, tmp_path / "killed_copy")):
        cmd = ["train", "--resume", str(run)]
        run_srft(ranks, cmd)
        assert_same_records(metrics(tmp_path / "straight"), metrics(run))
        assert_same_weights(tmp_path / "straight", run)


@pytest.mark.parametrize("first,then,fmt", [(1, 2, "sharded"), (2, 1, "full")])
def test_either_checkpoint_format_resumes_on_another_rank_count(tmp_path, cache, first, then, fmt):
    """Shards written by one process resumed by 2 ranks; a 2-rank run's gathered checkpoint by one process."""
    args = lambda out, steps: _common(out, cache, steps, [f"run.checkpoint_format={fmt}"])  # noqa: E731
    run_srft(1, args(tmp_path / "straight", 4))
    run = tmp_path / "run"
    run_srft(first, args(run, 2))
    run_srft(then, ["train", "--resume", str(run), "run.steps=4"])
    assert_same_records(metrics(tmp_path / "straight"), metrics(run))
    assert_same_weights(tmp_path / "straight", run)


def test_prompts_per_step_must_split_over_ranks(tmp_path, cache):
    proc = subprocess.run(srft_cmd(2, _common(tmp_path / "odd", cache, 1, ["rollout.prompts_per_step=3"])),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "rollout.prompts_per_step=3 does not split over 2 ranks" in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr  # (torchrun's own report of a failed child remains)
    proc = subprocess.run(srft_cmd(2, _common(tmp_path / "hsdp", cache, 1, ["model.shard_group_size=3"])),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "model.shard_group_size=3 does not divide the 2 ranks" in proc.stderr
    proc = subprocess.run(srft_cmd(2, _common(tmp_path / "fg", cache, 1, ["rollout.filter_groups=true"])),
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "rollout.filter_groups=true runs in one process only" in proc.stderr
    assert "[rank0]: Traceback" not in proc.stderr
