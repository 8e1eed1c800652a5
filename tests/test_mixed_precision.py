"""model.dtype=bfloat16 trains float32 master weights: a tiny update survives."""

import torch

from srft.config import ModelConfig
from srft.models.loading import load_model_and_tokenizer, wrap_model


def test_bfloat16_training_keeps_float32_master_weights(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    model, tok, _ = load_model_and_tokenizer(cfg, for_training=True)
    model = wrap_model(model, cfg)
    assert all(p.dtype == torch.float32 for p in model.parameters())

    ids = torch.tensor([tok.encode("12+34=46")])
    out = model(input_ids=ids)
    assert out.logits.dtype == torch.bfloat16  # the forward ran in bfloat16 (autocast)

    # An update of 1e-6 on weights above 1e-3: bfloat16 (8 significant bits: a spacing of about
    # 2^-8 of the value, >= 4e-6 here) rounds it away; float32 master weights keep it.
    w = model.get_input_embeddings().weight
    before = w.detach().clone()
    big = before.abs() > 1e-3
    assert big.sum() > 100
    as_bf16 = before[big].bfloat16()
    assert torch.equal(as_bf16 + 1e-6, as_bf16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    loss = -torch.log_softmax(out.logits.float(), -1)[0, :-1].gather(-1, ids[0, 1:, None]).mean()
    loss.backward()
    assert w.grad is not None and w.grad.dtype == torch.float32
    with torch.no_grad():  # a unit step direction: each touched weight moves by exactly lr
        for p in model.parameters():
            if p.grad is not None:
                p.grad.copy_(torch.sign(p.grad))
    opt.step()
    moved = (w.detach() - before).abs()
    touched = (w.grad != 0) & big
    assert touched.sum() > 10
    assert torch.allclose(moved[touched], torch.full_like(moved[touched], 1e-6), rtol=1e-2)


def test_evaluation_loads_in_the_configured_dtype(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), device="cpu", dtype="bfloat16")
    model, _, _ = load_model_and_tokenizer(cfg)  # not for training: the weights as asked
    assert next(model.parameters()).dtype == torch.bfloat16


def test_gradient_checkpointing_recomputes_the_layers_in_backward(tiny_model_dir):
    """model.gradient_checkpointing=true: each decoder layer runs twice per training step (forward, and
    again in backward), with the same gradients as without (tests/test_distributed.py: the same under FSDP2)."""
    grads, calls = {}, {}
    for on in (False, True):
        model, _, _ = load_model_and_tokenizer(ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=on),
                                               for_training=True)
        layer = model.model.layers[0]
        calls[on] = 0

        def count(module, args, calls=calls, on=on):
            calls[on] += 1

        layer.register_forward_pre_hook(count)
        ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
        model(input_ids=ids, labels=ids).loss.backward()
        grads[on] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert calls == {False: 1, True: 2}
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-6, atol=1e-7)
