"""The prepared GPU check (scripts/gpu_check.sh): its tolerances, budget and process handling (fast),
and its --cpu mode (slow, about 60-110 s on a busy 2-core machine): the same checks at small shapes,
so that the script a GPU session runs once still runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["srft_step", "train_memory", "hf_generation", "fsdp_torchrun", "srft_train_torchrun"]


def load_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tolerances_and_budget():
    g = load_script()
    terms = dict(sft=6.0, neg=-4.0, entropy_bonus=-1e-3, kl=0.0)
    ref = dict(loss=2.0, grad_norm=4.0, loss_after=1.0, scale=10.0, terms=terms)
    # the loss is measured against its terms' magnitude (10), the gradient norm against itself
    assert g.rel_diff(dict(ref, loss=2.1), ref) == pytest.approx(0.01)
    assert g.rel_diff(dict(ref, grad_norm=4.2), ref) == pytest.approx(0.05)
    assert g.rel_diff(dict(ref, loss=float("nan")), ref) == float("inf")
    # each term against its own magnitude: a small term lost shows, as does one that should be 0
    assert g.rel_diff(dict(ref, terms=dict(terms, entropy_bonus=0.0)), ref) == pytest.approx(1.0)
    assert g.rel_diff(dict(ref, terms=dict(terms, kl=1e-3)), ref) > 1
    assert g.rel_diff(ref, ref) == 0.0
    assert g.within(1e-3, "bfloat16") and not g.within(0.0, "bfloat16") and not g.within(0.05, "bfloat16")
    assert g.within(0.0, "float32") and not g.within(1e-3, "float32")
    # the GPU mode's limits fit its budget, and the budget (with one stop's grace) 8 minutes
    assert sum(gpu for gpu, _ in g.LIMITS.values()) <= g.BUDGET_S["gpu"] <= 8 * 60 - 20
    assert set(g.LIMITS) == set(CHECKS) == set(g.CHECKS)


def test_error_line_and_time_limit(tmp_path):
    g = load_script()
    torchrun_output = "Traceback (most recent call last):\nValueError: bad shape\n" \
                      "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n==== srft FAILED\n"
    assert g.error_line(torchrun_output) == "ValueError: bad shape"
    assert g.error_line("note: x\nerror: no rows left\nE1207 failed (exitcode: 2)\n") == "error: no rows left"
    with pytest.raises(TimeoutError, match="timed out after 1 s"):
        g.run_logged(["sleep", "30"], tmp_path / "sleep.log", 1)
    with pytest.raises(RuntimeError, match="exit 3: error: it broke"):
        g.run_logged(["bash", "-c", "echo 'error: it broke'; exit 3"], tmp_path / "fail.log", 10)


@pytest.mark.slow
def test_gpu_check_cpu_mode(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=420)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    failed = [(c["name"], c.get("error")) for c in report["checks"] if not c["ok"]]
    assert proc.returncode == 0 and not failed, f"{failed}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert report["mode"] == "cpu" and report["device"] == "cpu"
    assert report["torch"] and report["transformers"]
    assert [c["name"] for c in report["checks"]] == CHECKS
    for c in report["checks"]:
        assert isinstance(c["ok"], bool) and c["seconds"] >= 0 and "error" not in c
    by = {c["name"]: c for c in report["checks"]}
    # what needs CUDA says so; the bf16 step agrees with the float32 one within its tolerance
    assert "no CUDA" in by["srft_step"]["skipped"] and "no CUDA" in by["train_memory"]["skipped"]
    assert by["srft_step"]["rel_cpu_bf16"] <= by["srft_step"]["rtol_bf16"]
    assert by["fsdp_torchrun"]["backend"] == "gloo" and by["fsdp_torchrun"]["rel_fp32"] <= 1e-4
    assert by["srft_train_torchrun"]["steps"] == 2
    assert by["hf_generation"]["tok_per_s_fp32_autocast"] > 0
    # one line per check in the printed table
    assert all(any(line.startswith(name) for line in proc.stdout.splitlines()) for name in CHECKS)


@pytest.mark.slow
def test_a_failing_check_is_recorded_and_the_others_run(tmp_path):
    """A check that cannot run (here: the GPU mode without CUDA) fails with one line; the run goes
    on and exits nonzero."""
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path), "--only",
                           "srft_step,hf_generation"], env=env, capture_output=True, text=True, timeout=120)
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert proc.returncode == 1
    assert [c["name"] for c in report["checks"]] == ["srft_step", "hf_generation"]
    for c in report["checks"]:
        assert c["ok"] is False and "no CUDA device" in c["error"] and "\n" not in c["error"]
