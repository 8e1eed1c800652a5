"""The chunked loss head (srft.training.head): by hand, against the plain whole-logits path
(values and gradients, every preset's terms, padding, tied/untied, LoRA, bf16), chunked equals
whole, and which tensors get gradients."""

import math

import pytest
import torch

from srft.config import list_presets, load_config
from srft.objective import kl_full, reduce_terms, token_logprobs_and_entropy, token_losses
from srft.training.batching import pad_batch, response_logits, response_logprobs, response_logprobs_and_kl
from srft.training.head import logprob_entropy, plain_head_reason


def tiny_llama(tie=True, vocab=97, hidden=16, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


# prompts and responses of unequal lengths: right padding in both the prompt and the response parts
SEQS = [([1, 2, 3], [4, 5, 6, 7, 8, 9]), ([10, 11], [12, 13]), ([14, 15, 16, 17, 18], [19, 20, 21]), ([22], [23])]


def plain(model, batch):
    """Today's path before the chunked head: whole logits, log_softmax over [B, T, V]."""
    logp_BT, ent_BT = token_logprobs_and_entropy(response_logits(model, batch), batch["tokens_BT"])
    return logp_BT * batch["mask_BT"], ent_BT * batch["mask_BT"]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_close_grads(g1, g2, tol):
    assert g1.keys() == g2.keys() and g1
    for n in g1:
        scale = max(float(g1[n].abs().max()), 1e-3)
        assert float((g1[n] - g2[n]).abs().max()) <= tol * scale, n


def test_by_hand_two_tokens_three_words():
    # hidden states h1 = [1, 0], h2 = [0, 2]; projection rows w_a = [1, 0], w_b = [0, 1], w_c = [1, 1]
    # logits z1 = [1, 0, 1], z2 = [0, 2, 2]
    # lse1 = log(e + 1 + e) = log(2e + 1); lse2 = log(1 + 2e^2)
    # token 1 = a: logp1 = 1 - lse1;  token 2 = b: logp2 = 2 - lse2
    # H = lse - sum p z: H1 = lse1 - (2e / (2e + 1)), H2 = lse2 - (4e^2 / (1 + 2e^2))
    e = math.e
    lse1, lse2 = math.log(2 * e + 1), math.log(1 + 2 * e * e)
    h_NH = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    w_VH = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    tokens_N = torch.tensor([0, 1])
    logp_N, ent_N = logprob_entropy(h_NH, w_VH, None, tokens_N, chunk=1)
    assert logp_N.tolist() == pytest.approx([1 - lse1, 2 - lse2], abs=1e-6)
    assert ent_N.tolist() == pytest.approx([lse1 - 2 * e / (2 * e + 1), lse2 - 4 * e * e / (1 + 2 * e * e)], abs=1e-6)
    # d logp1 / d h1 = w_a - sum_v p_v w_v, p1 = [e, 1, e] / (2e + 1):
    #   = [1, 0] - [(e + e) / (2e + 1), (1 + e) / (2e + 1)]
    logp_N[0].backward()
    expect = [1 - 2 * e / (2 * e + 1), -(1 + e) / (2 * e + 1)]
    assert h_NH.grad[0].tolist() == pytest.approx(expect, abs=1e-6)
    assert h_NH.grad[1].tolist() == [0.0, 0.0]  # token 2 plays no part in logp1


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("chunk", [1, 3, 0])
def test_values_and_gradients_equal_the_plain_path(tie, chunk):
    model = tiny_llama(tie)
    batch = pad_batch(SEQS, 0, "cpu")
    w_BT = torch.randn(batch["mask_BT"].shape, generator=torch.Generator().manual_seed(1))

    def loss(logp_BT, ent_BT):
        return (logp_BT * w_BT + 0.3 * ent_BT * w_BT.flip(1)).sum()

    lp0, en0 = plain(model, batch)
    loss(lp0, en0).backward()
    g0 = grads(model)
    model.zero_grad()
    lp1, en1 = response_logprobs(model, batch, chunk)
    loss(lp1, en1).backward()
    assert torch.allclose(lp1, lp0, atol=1e-5) and torch.allclose(en1, en0, atol=1e-5)
    assert (lp1[batch["mask_BT"] == 0] == 0).all() and (en1[batch["mask_BT"] == 0] == 0).all()
    assert_close_grads(grads(model), g0, 1e-5)


def test_chunked_equals_whole_micro_batched_equals_whole():
    model = tiny_llama()
    batch = pad_batch(SEQS, 0, "cpu")
    whole = response_logprobs(model, batch, 0)
    for chunk in (1, 2, 5):
        part = response_logprobs(model, batch, chunk)
        assert torch.allclose(part[0], whole[0], atol=1e-6) and torch.allclose(part[1], whole[1], atol=1e-6)
    # one sequence at a time gives each sequence's values of the batch (padding does not leak)
    for b, seq in enumerate(SEQS):
        one_lp, one_en = response_logprobs(model, pad_batch([seq], 0, "cpu"))
        n = len(seq[1])
        assert torch.allclose(one_lp[0, :n], whole[0][b, :n], atol=1e-5)
        assert torch.allclose(one_en[0, :n], whole[1][b, :n], atol=1e-5)


def test_which_tensors_get_gradients():
    h_NH = torch.randn(5, 4, requires_grad=True)
    w_VH = torch.randn(7, 4, requires_grad=True)
    b_V = torch.randn(7, requires_grad=True)
    tokens_N = torch.randint(0, 7, (5,))
    logp_N, ent_N = logprob_entropy(h_NH, w_VH, b_V, tokens_N, chunk=2)
    (logp_N.sum() + ent_N.sum()).backward()
    assert h_NH.grad is not None and w_VH.grad is not None and b_V.grad is not None
    # against autograd through the whole log_softmax, bias included
    h2, w2, b2 = (x.detach().clone().requires_grad_() for x in (h_NH, w_VH, b_V))
    logp2_NV = torch.log_softmax(h2 @ w2.t() + b2, -1)
    (logp2_NV.gather(1, tokens_N[:, None]).sum() - (logp2_NV.exp() * logp2_NV).sum()).backward()
    for a, b in ((h_NH, h2), (w_VH, w2), (b_V, b2)):
        assert torch.allclose(a.grad, b.grad, atol=1e-5)
    # a frozen projection (LoRA's base) gets none, and its absence costs nothing else
    w_frozen = w_VH.detach()
    h3 = h_NH.detach().clone().requires_grad_()
    logprob_entropy(h3, w_frozen, None, tokens_N, chunk=2)[0].sum().backward()
    assert h3.grad is not None and w_frozen.grad is None


def test_a_loss_on_entropy_alone_or_logp_alone():
    # backward with one of the two outputs unused (its gradient None) works and matches autograd
    h_NH = torch.randn(3, 4, requires_grad=True)
    w_VH = torch.randn(6, 4)
    tokens_N = torch.tensor([0, 5, 2])
    for pick in (0, 1):
        h_NH.grad = None
        logprob_entropy(h_NH, w_VH, None, tokens_N, chunk=2)[pick].sum().backward()
        h2 = h_NH.detach().clone().requires_grad_()
        logp2_NV = torch.log_softmax(h2 @ w_VH.t(), -1)
        out = logp2_NV.gather(1, tokens_N[:, None]).sum() if pick == 0 else -(logp2_NV.exp() * logp2_NV).sum()
        out.backward()
        assert torch.allclose(h_NH.grad, h2.grad, atol=1e-5)


def _preset_loss(obj, logp_BT, ent_BT, ref_BT, kl_BT, batch):
    mask_BT = batch["mask_BT"]
    B = mask_BT.shape[0]
    demo_B = torch.tensor([True] + [False] * (B - 1))
    correct_B = torch.tensor([True, True, False, False][:B])
    adv_B = torch.tensor([0.0, 0.8, -0.5, -0.3][:B])
    prefix_B = torch.tensor([0, 2, 0, 0][:B]) if obj.prefix_rollouts else None
    terms, _ = token_losses(obj, logp_BT, ent_BT, mask_BT, demo_B, correct_B, adv_B, None, ref_BT,
                            prefix_len_B=prefix_B, kl_BT=kl_BT,
                            cov_generator=torch.Generator().manual_seed(0) if obj.cov_method == "clip-cov" else None)
    lengths = mask_BT.sum(1)
    counts = {k: dict(num_tokens=float(lengths[sel].sum()), num_seqs=float(sel.sum()), max_len=8)
              for k, sel in (("all", torch.ones(B, dtype=torch.bool)), ("demos", demo_B), ("rollouts", ~demo_B))}
    return sum(reduce_terms(obj, terms, mask_BT, demo_B, counts).values())


@pytest.mark.parametrize("preset", list_presets())
def test_every_presets_terms_equal_the_plain_path(preset):
    obj = load_config(preset).objective
    model, ref = tiny_llama(seed=0), tiny_llama(seed=1)
    ref.requires_grad_(False)
    batch = pad_batch(SEQS, 0, "cpu")
    direction = obj.kl_direction if obj.kl_estimator == "full" else None

    # plain: whole logits of both models
    lp0, en0 = plain(model, batch)
    with torch.no_grad():
        ref0, _ = plain(ref, batch)
    kl0 = None
    if direction:
        kl0 = kl_full(torch.log_softmax(response_logits(model, batch), -1),
                      torch.log_softmax(response_logits(ref, batch), -1), direction) * batch["mask_BT"]
    loss0 = _preset_loss(obj, lp0, en0, ref0, kl0, batch)
    loss0.backward()
    g0 = grads(model)
    model.zero_grad()

    lp1, en1, ref1, kl1 = response_logprobs_and_kl(model, ref, batch, direction, chunk_tokens=3)
    loss1 = _preset_loss(obj, lp1, en1, ref1, kl1, batch)
    loss1.backward()
    assert float(loss1.detach()) == pytest.approx(float(loss0.detach()), rel=1e-5, abs=1e-6)
    if direction:
        assert torch.allclose(kl1, kl0, atol=1e-5)
    assert_close_grads(grads(model), g0, 1e-5)
    assert not any(p.grad is not None for p in ref.parameters())


def test_lora_model_equals_the_plain_path():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                               init_lora_weights=False))
    batch = pad_batch(SEQS, 0, "cpu")
    lp0, en0 = plain(model, batch)
    (lp0.sum() + en0.sum()).backward()
    g0 = grads(model)
    model.zero_grad()
    lp1, en1 = response_logprobs(model, batch, 2)
    (lp1.sum() + en1.sum()).backward()
    assert torch.allclose(lp1, lp0, atol=1e-5) and torch.allclose(en1, en0, atol=1e-5)
    assert all("lora" in n for n in g0)  # only the adapters train
    assert_close_grads(grads(model), g0, 1e-5)


def test_bfloat16_autocast_matches_the_plain_path_at_bf16_precision():
    model = tiny_llama()
    batch = pad_batch(SEQS, 0, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp0, en0 = plain(model, batch)
    (lp0.sum() + en0.sum()).backward()
    g0 = grads(model)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp1, en1 = response_logprobs(model, batch, 2)
    (lp1.sum() + en1.sum()).backward()
    assert lp1.dtype == torch.float32
    # both compute the projection in bf16 (autocast's dtype) and the softmax in float32
    assert torch.allclose(lp1, lp0, atol=1e-3) and torch.allclose(en1, en0, atol=1e-3)
    assert_close_grads(grads(model), g0, 2e-2)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_models_that_rescale_logits_take_the_plain_path():
    model = tiny_llama()
    assert plain_head_reason(model) is None
    model.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping" in plain_head_reason(model)
    batch = pad_batch(SEQS, 0, "cpu")
    lp, en = response_logprobs(model, batch)
    assert torch.allclose(lp, plain(model, batch)[0], atol=1e-6)


def test_the_output_projection_is_restored_after_the_call():
    model = tiny_llama()
    batch = pad_batch(SEQS, 0, "cpu")
    response_logprobs(model, batch)
    assert "forward" not in model.lm_head.__dict__
    logits = model(input_ids=batch["input_ids_BL"]).logits
    assert logits.shape[-1] == model.config.vocab_size


@pytest.mark.slow
def test_the_head_benchmark_runs_and_the_chunked_head_holds_less(tmp_path):
    """benchmarks/loss_head.py at a short length (the real vocabulary): both paths run, give the
    same loss, and the chunked one's peak is below the plain one's."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "loss_head.py"
    out = tmp_path / "rows.json"
    subprocess.run([sys.executable, str(script), "--prompt", "32", "--responses", "256", "--repeats", "1",
                    "--threads", "1", "--json", str(out)], check=True, capture_output=True, timeout=300)
    plain, chunked = json.loads(out.read_text())
    assert (plain["path"], chunked["path"]) == ("plain", "chunked")
    assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert chunked["peak_above_model_gb"] < plain["peak_above_model_gb"]
