"""Peak memory and time of the loss head at a real vocabulary: the plain path against the chunked one.

One sequence of PROMPT + RESPONSE tokens through a Qwen2-shaped model with Qwen2.5's vocabulary
(152,064) and a tiny hidden size, forward and backward of a loss on its response tokens' log-probs
and entropy. With a tiny hidden size the model and its activations are small, so what the
measurement sees is the head: the [tokens, vocab] tensors. Memory at these shapes does not depend
on the machine (it is what a GPU would hold for the head, less the hidden-size-dependent parts).

Each (path, length) runs in a fresh process; its peak resident memory is measured from a reset
high-water mark (Linux /proc/self/clear_refs) taken after the model and batch are built, so the
figure is "above the model". Time is the best of ``--repeats`` forward+backward passes.

    python benchmarks/loss_head.py                       # 256 + 2,048 and 256 + 4,096 tokens
    python benchmarks/loss_head.py --responses 2048 --paths chunked --chunk 512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

VOCAB = 152_064


def _peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmHWM: peak RSS, VmRSS: now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(path: str, prompt: int, response: int, hidden: int, chunk: int, repeats: int, threads: int) -> dict:
    """Measure one (path, length) in this process."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from srft.objective import token_logprobs_and_entropy
    from srft.training.batching import pad_batch, response_logits, response_logprobs

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=prompt + response + 8,
                         tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    g = torch.Generator().manual_seed(1)
    p_ids = torch.randint(0, VOCAB, (prompt,), generator=g).tolist()
    r_ids = torch.randint(0, VOCAB, (response,), generator=g).tolist()
    batch = pad_batch([(p_ids, r_ids)], 0, "cpu")
    w_BT = torch.randn(batch["mask_BT"].shape, generator=g)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if path == "plain":
            logp_BT, ent_BT = token_logprobs_and_entropy(response_logits(model, batch), batch["tokens_BT"])
        else:
            logp_BT, ent_BT = response_logprobs(model, batch, chunk)
        loss = ((logp_BT * w_BT + 0.1 * ent_BT) * batch["mask_BT"]).sum()
        loss.backward()
        return float(loss)

    step()  # warm-up: the gradients' buffers exist from here on, as in training
    model.zero_grad(set_to_none=True)
    import gc
    gc.collect()
    base = _status_bytes("VmRSS")
    if not _peak_reset():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): Linux only")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    peak = _status_bytes("VmHWM")
    return {"path": path, "prompt": prompt, "response": response, "chunk": chunk if path == "chunked" else None,
            "peak_above_model_gb": (peak - base) / 1e9, "bytes_per_token": (peak - base) / (prompt + response),
            "seconds": min(times), "loss": loss}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--responses", default="2048,4096", help="comma-separated response lengths")
    ap.add_argument("--paths", default="plain,chunked")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=512, help="model.loss_chunk_tokens of the chunked path")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.paths, args.prompt, int(args.responses), args.hidden, args.chunk, args.repeats,
                             args.threads)))
        return 0
    rows = []
    for response in [int(x) for x in args.responses.split(",")]:
        for path in args.paths.split(","):
            cmd = [sys.executable, __file__, "--one", "--paths", path, "--prompt", str(args.prompt), "--responses",
                   str(response), "--hidden", str(args.hidden), "--chunk", str(args.chunk), "--repeats",
                   str(args.repeats), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"{path} failed", file=sys.stderr)
                rows.append({"path": path, "prompt": args.prompt, "response": response, "error": out.returncode})
                continue
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'path':8} {'tokens':>12} {'peak above model':>17} {'per token':>10} {'fwd+bwd':>8}  loss")
    for r in rows:
        if "error" in r:
            print(f"{r['path']:8} {r['prompt']:>5} + {r['response']:<5} failed (exit {r['error']})")
            continue
        print(f"{r['path']:8} {r['prompt']:>5} + {r['response']:<5} {r['peak_above_model_gb']:>14.2f} GB "
              f"{r['bytes_per_token'] / 1e6:>7.2f} MB {r['seconds']:>7.2f}s  {r['loss']:.6g}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
