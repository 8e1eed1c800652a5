"""VLLMEngine's orchestration around vLLM, against a fake ``LLM`` (runs without vLLM).

vLLM's CPU backend has no sleep mode, so the order of calls that sleep mode needs on a GPU
(wake the weights, push them, wake the KV cache, generate, sleep, free the cache) is checked
here on a recording fake. So are the sampling seeds (none per request unless the caller gives
them) and the engine's own random stream (the caller's RNG untouched by sampling).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from srft.rollout import vllm_engine
from srft.rollout.vllm_engine import VLLMEngine, iter_export


class FakeLLM:
    """Records every call; fails on what real vLLM would get wrong silently (a weight update
    while the weights sleep, a generation with anything asleep)."""

    def __init__(self, log: list):
        self.log = log
        self.asleep = {"weights": False, "kv_cache": False}
        self.weights: dict[str, torch.Tensor] = {}
        self.last_pushed: dict[str, torch.Tensor] = {}
        self.slept = False

    def sleep(self, level: int = 1):
        assert level == 2
        self.asleep = {"weights": True, "kv_cache": True}
        self.weights = {}  # level 2 discards them
        self.slept = True
        self.log.append("sleep(2)")

    def wake_up(self, tags=None):
        for tag in tags:
            self.asleep[tag] = False
        self.log.append(f"wake({','.join(tags)})")

    def load(self, weights):
        assert not self.asleep["weights"], "weights pushed while asleep: they would be discarded"
        assert self.asleep["kv_cache"] or not self.slept, "KV cache woken before the sync"
        self.weights = {n: t.clone() for n, t in weights}
        self.last_pushed = self.weights
        self.log.append("update")

    def reset_prefix_cache(self):
        self.log.append("reset_prefix_cache")

    def generate(self, inputs, params, use_tqdm=False):
        assert not any(self.asleep.values()), f"generate while asleep: {self.asleep}"
        assert self.weights, "generate with no weights"
        self.log.append("generate")
        out = []
        for p, sp in zip(inputs, params):
            comps = []
            for i in range(sp["n"]):
                # like vLLM's sampler: an unseeded request draws from torch's global generator
                g = None if sp.get("seed") is None else torch.Generator().manual_seed(sp["seed"] + i)
                toks = torch.randint(3, 50, (4,), generator=g).tolist()
                comps.append(SimpleNamespace(index=i, token_ids=toks,
                                             logprobs=[{t: SimpleNamespace(logprob=-1.0)} for t in toks]))
            out.append(SimpleNamespace(outputs=comps))
        return out


class FakeSender:
    """vLLM's trainer-side transfer engine: streams the source into the LLM."""

    def __init__(self, llm: FakeLLM, source):
        self.llm, self.source = llm, source

    def send_weights(self):
        self.llm.load(iter_export(self.source.model, self.source.dtype))


class FakeSource:
    def __init__(self):
        self.model, self.dtype = None, torch.float32


@pytest.fixture
def fake_vllm(monkeypatch):
    """No vLLM needed: SamplingParams and TokensPrompt become dicts; empty_cache is logged."""
    log: list[str] = []
    monkeypatch.setattr(vllm_engine, "_sampling_params", lambda **kw: kw)
    monkeypatch.setattr(vllm_engine, "_token_prompts", lambda prompts: [list(p) for p in prompts])
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    return log


def make_engine(log, *, sleep: bool, seed: int = 0) -> VLLMEngine:
    llm, source = FakeLLM(log), FakeSource()
    torch.manual_seed(seed)
    stream = vllm_engine._TorchRNG.save()
    return VLLMEngine._assemble(llm, FakeSender(llm, source), source, eos_id=2, max_model_len=64,
                                stream=stream, sleep=sleep, on_cuda=True)


ROUND = ["wake(weights)", "update", "empty_cache", "wake(kv_cache)", "reset_prefix_cache", "generate",
         "sleep(2)", "empty_cache"]


def test_sleep_mode_wakes_weights_syncs_then_wakes_the_kv_cache(fake_vllm):
    log = fake_vllm
    model = torch.nn.Linear(4, 3)
    engine = make_engine(log, sleep=True)
    assert log == ["sleep(2)", "empty_cache"]  # asleep from the start: training gets the memory
    engine.sync_weights(model)
    assert log[2:] == []  # asleep: the sync only remembers the model
    engine.generate([[5, 6]], 2, 4)
    assert log[2:] == ROUND
    torch.testing.assert_close(engine.llm.last_pushed["weight"], model.weight.detach())


def test_a_generate_after_an_evaluation_resyncs_the_discarded_weights(fake_vllm):
    """An evaluation's generate puts the engine to sleep (weights discarded); the next rollout,
    with no sync_weights in between, must push the weights again, and the current ones."""
    log = fake_vllm
    model = torch.nn.Linear(4, 3)
    engine = make_engine(log, sleep=True)
    engine.sync_weights(model)
    engine.generate([[5, 6]], 1, 4, temperature=0)  # "evaluation"
    with torch.no_grad():
        model.weight.add_(1.0)  # e.g. the trainer moved on without calling sync_weights
    del log[:]
    engine.generate([[7]], 2, 4)  # "rollout"
    assert log == ROUND
    torch.testing.assert_close(engine.llm.last_pushed["weight"], model.weight.detach())
    # an empty call still pushes (under torchrun the push is a collective every rank joins)
    del log[:]
    assert engine.generate([], 2, 4) == []
    assert log == [x for x in ROUND if x != "generate"]


def test_sleep_mode_needs_a_model_first(fake_vllm):
    engine = make_engine(fake_vllm, sleep=True)
    with pytest.raises(RuntimeError, match="sync_weights"):
        engine.generate([[5]], 1, 4)


def test_without_sleep_the_sync_pushes_at_once_and_nothing_sleeps(fake_vllm):
    log = fake_vllm
    model = torch.nn.Linear(4, 3)
    engine = make_engine(log, sleep=False)
    engine.sync_weights(model)
    engine.generate([[5, 6]], 2, 4)
    assert log == ["update", "empty_cache", "reset_prefix_cache", "generate"]


def test_no_per_request_seed_unless_given(fake_vllm, monkeypatch):
    seen = []
    monkeypatch.setattr(vllm_engine, "_sampling_params", lambda **kw: seen.append(kw) or kw)
    engine = make_engine(fake_vllm, sleep=False)
    engine.sync_weights(torch.nn.Linear(2, 2))
    engine.generate([[5], [6]], 2, 4)
    assert [p["seed"] for p in seen] == [None, None]  # vLLM's batched sampling path
    seen.clear()
    engine.generate([[5], [6]], 2, 4, seeds=[11, 12])  # rollout.seeds=prompt
    assert [p["seed"] for p in seen] == [11, 12]


def test_the_engine_samples_from_its_own_stream(fake_vllm):
    """vLLM in this process samples from torch's global generator: the engine swaps its own
    stream in, so sampling neither moves the caller's RNG nor depends on it."""
    a = make_engine(fake_vllm, sleep=False, seed=3)
    b = make_engine(fake_vllm, sleep=False, seed=3)
    c = make_engine(fake_vllm, sleep=False, seed=4)
    for e in (a, b, c):
        e.sync_weights(torch.nn.Linear(2, 2))
    prompts = [[5], [6], [7]]
    torch.manual_seed(100)
    before = torch.get_rng_state()
    first_a = a.generate(prompts, 2, 4)
    assert torch.equal(torch.get_rng_state(), before), "sampling moved the caller's RNG"
    torch.manual_seed(999)  # the caller's state does not matter
    assert b.generate(prompts, 2, 4) == first_a  # same seed, same samples
    assert c.generate(prompts, 2, 4) != first_a
    assert a.generate(prompts, 2, 4) != first_a  # the stream moves on from call to call


def test_missing_vllm_is_a_one_line_config_error():
    """The CLI prints a ConfigError in one line (exit 2): EngineError is one."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    from srft.config import ConfigError, load_config
    from srft.rollout.engine import EngineError, build_engine

    cfg = load_config("grpo", None, ["rollout.engine=vllm"])
    with pytest.raises(EngineError, match=r"srft\[vllm\].*0\.32\.0") as err:
        build_engine(cfg, torch.nn.Linear(2, 2), None, "unused")
    assert isinstance(err.value, ConfigError) and "\n" not in str(err.value)
