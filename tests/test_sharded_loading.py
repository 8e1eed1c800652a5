"""Sharded loading under torchrun (2 gloo ranks): no rank holds the whole float32 model, and the
weights are those of today's path (every rank loads the whole model, then shards it).

One torchrun launch runs the sharded path and its variants (HSDP with gradient checkpointing, the
HF engine's bfloat16 copy, LoRA), another today's path alone, on a random ~37M-parameter
Qwen2-shaped model saved in bfloat16 with an odd vocabulary (50,001 rows: the ranks hold 25,001
and 25,000). The worker is ``benchmarks/sharded_load.py``, which measures the same at 0.5B.

Memory: each rank's peak RSS above its RSS before loading. Today's path holds the whole float32
model (141 MiB here) and the mapped file's pages (70 MiB); the sharded path half the model and one
tensor's pages at a time. Measured here: 85 MiB per rank against 220 MiB (at 0.5B: 962 MiB against
2,838 MiB, see the benchmark); the test asks for less than 60% of today's figure.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "sharded_load.py"


def _bench():
    spec = importlib.util.spec_from_file_location("sharded_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    bench = _bench()
    tmp = tmp_path_factory.mktemp("sharded_load")
    bench.write_model(tmp / "model", "test")
    sharded = bench.launch(tmp / "model", ["sharded", "hsdp_ckpt", "engine_bf16", "lora_bf16"], tmp / "sharded.json",
                           timeout=300)
    today = bench.launch(tmp / "model", ["today"], tmp / "today.json", timeout=300)
    return sharded, today


def test_sharded_load_gives_todays_weights(runs):
    sharded, today = runs
    for rank in (0, 1):
        want = today[rank]["today"]
        assert len(want["digests"]) > 40 and want["tied"]
        for v in ("sharded", "hsdp_ckpt", "engine_bf16"):
            got = sharded[rank][v]
            assert got["digests"] == want["digests"], f"{v}: parameters differ from today's path"
            assert got["tied"], f"{v}: the embedding and the head are no longer one parameter"
        # the forward pass reads the buffers too (rotary inv_freq, which no checkpoint holds)
        assert sharded[rank]["sharded"]["loss"] == want["loss"]
        assert sharded[rank]["hsdp_ckpt"]["loss"] == want["loss"]
        # bfloat16 forward under FSDP2 (it failed before: float32 layer outputs met bfloat16 weights)
        assert math.isfinite(sharded[rank]["engine_bf16"]["loss"])
        assert sharded[rank]["engine_bf16"]["loss"] == pytest.approx(want["loss"], rel=1e-2)


def test_hf_engine_copy_is_whole_and_in_the_compute_dtype(runs):
    sharded, _ = runs
    for rank in (0, 1):
        got = sharded[rank]["engine_bf16"]
        assert got["engine_dtypes"] == ["torch.bfloat16"]
        assert got["engine_equal"] and got["engine_tied"]


def test_lora_under_fsdp2_keeps_the_frozen_base_in_the_compute_dtype(runs):
    sharded, _ = runs
    for rank in (0, 1):
        got = sharded[rank]["lora_bf16"]
        assert got["frozen_dtypes"] == ["torch.bfloat16"]
        assert got["trainable_dtypes"] == ["torch.float32"]
        assert got["adapter_grads"] and math.isfinite(got["loss"])


def test_no_rank_holds_the_whole_float32_model(runs):
    sharded, today = runs
    full_mib = 36_880_384 * 4 / 2**20
    for rank in (0, 1):
        new = sharded[rank]["sharded"]["peak_rss_mb"] - sharded[rank]["start_rss_mb"]
        old = today[rank]["today"]["peak_rss_mb"] - today[rank]["start_rss_mb"]
        assert old > full_mib, f"today's path held {old:.0f} MiB, less than the model: the measure is off"
        assert new < 0.6 * old, f"rank {rank}: sharded load peaked {new:.0f} MiB above start, today's {old:.0f}"
        assert new < full_mib, f"rank {rank}: the sharded load held {new:.0f} MiB, a whole float32 model's worth"


def test_lora_on_two_ranks_exports_the_merged_model(tmp_path, base_cache_dir):
    """Under torchrun the saved model is the plain merged one (PEFT's save_pretrained wrote the
    adapters alone), without a second copy of the tied embedding, as one process saves it."""
    from test_distributed import _common, assert_same_weights, run_srft, weights

    for ranks, name in ((1, "one"), (2, "two")):
        run_srft(ranks, _common(tmp_path / name, base_cache_dir, 2, ["model.lora_rank=4"]))
    assert not (tmp_path / "two" / "model" / "adapter_config.json").exists()
    assert set(weights(tmp_path / "one")) == set(weights(tmp_path / "two"))
    assert_same_weights(tmp_path / "one", tmp_path / "two")
