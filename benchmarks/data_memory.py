"""Peak memory and time of loading + filtering a training file of the paper's size.

Writes (once, in batches) a synthetic parquet file shaped like
OpenR1-Math-46k-8192 in the verl/LUFFY schema: 46k rows, each with a chat
prompt, a ~27k-character demonstration (about 8k tokens) in ``target`` and a
gold answer; a few percent of the demonstrations are longer than the
8192-token limit. Then, in a fresh process, runs ``load_rows`` +
``filter_rows`` and prints the file size, the size of the text held by the
rows, the peak RSS increase over the process's baseline and the time.

Token lengths use ``len(text) // 4`` (about 4 characters per token for English
math text with a BPE tokenizer), so the figure measures the data path, not a
tokenizer.

    python benchmarks/data_memory.py [--rows 46000] [--path /tmp/srft_synth_46k.parquet]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

WORDS = (
    "the of and to we is let so then therefore since thus equation solve find value sum product "
    "x y z n k a b c f g integer prime divisible modulo triangle angle circle radius area "
    "= + - * / ^ ( ) \\frac{1}{2} \\sqrt{3} 0 1 2 3 4 5 6 7 8 9 10 12 15 24 36 100 wait check "
    "hmm maybe alternatively compute substitute factor expand simplify case suppose assume"
).split()


def make_file(path: str, rows: int, demo_chars: int, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    base = " ".join(rng.choice(WORDS) for _ in range(1_500_000))  # ~7 MB to slice from
    msg = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", msg),
            ("target", msg),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
        ]
    )
    system = "Your task is to follow a systematic, thorough reasoning process ... \\boxed{} ..." * 3
    tmp = path + ".tmp"
    with pq.ParquetWriter(tmp, schema) as writer:
        batch: list[dict] = []
        for i in range(rows):
            # 3% are over the 8192-token limit (> 32768 chars)
            n = rng.randint(34000, 40000) if rng.random() < 0.03 else rng.randint(int(demo_chars * 0.8), int(demo_chars * 1.2))
            off = rng.randrange(0, len(base) - n)
            demo = "<think>\n" + base[off : off + n] + "\n</think>\nSo the answer is \\boxed{" + str(i % 997) + "}."
            q_off = rng.randrange(0, len(base) - 400)
            batch.append(
                {
                    "data_source": "synthetic_openr1",
                    "prompt": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": f"Problem {i}: " + base[q_off : q_off + rng.randint(100, 400)]},
                    ],
                    "target": [{"role": "assistant", "content": demo}],
                    "ability": "math",
                    "reward_model": {"ground_truth": str(i % 997), "style": "rule"},
                    "extra_info": {"index": i, "split": "train"},
                }
            )
            if len(batch) == 500:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    os.replace(tmp, path)


def _status_mb(key: str) -> float:
    """VmRSS / VmHWM of this process in MiB (VmHWM is the peak RSS; it starts afresh at exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(path: str) -> dict:
    """Runs in a fresh process: load + filter, report memory and time."""
    import pyarrow.parquet  # noqa: F401  (imported before the baseline: not part of the data's cost)

    from srft.data import filter_rows, load_rows

    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    rows = load_rows(path)
    t1 = time.perf_counter()
    kept, report = filter_rows(rows, lambda s: len(s) // 4, max_prompt_tokens=1024, max_response_tokens=8192)
    t2 = time.perf_counter()
    peak = _status_mb("VmHWM")
    text_mb = sum(len(r["demonstration"] or "") + sum(len(m["content"]) for m in r["prompt"]) for r in rows) / 2**20
    return {
        "rows": len(rows),
        "summary": report.summary,
        "text_mb": round(text_mb, 1),
        "baseline_rss_mb": round(base, 1),
        "peak_rss_increase_mb": round(peak - base, 1),
        "rss_after_mb": round(_status_mb("VmRSS") - base, 1),
        "load_s": round(t1 - t0, 1),
        "filter_s": round(t2 - t1, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=46000)
    ap.add_argument("--demo-chars", type=int, default=27000)
    ap.add_argument("--path", default="/tmp/srft_synth_46k.parquet")
    ap.add_argument("--regenerate", action="store_true")
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.path)))
        return
    if args.regenerate or not os.path.exists(args.path):
        t = time.perf_counter()
        make_file(args.path, args.rows, args.demo_chars)
        print(f"wrote {args.path} in {time.perf_counter() - t:.0f} s")
    size = os.path.getsize(args.path) / 2**20
    out = subprocess.run(
        [sys.executable, __file__, "--measure", "--path", args.path], capture_output=True, text=True, check=True
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"file: {args.path}, {size:.0f} MiB on disk (snappy parquet)")
    print(f"rows: {res['rows']}; text held by the rows: {res['text_mb']:.0f} MiB (ASCII: 1 byte per character)")
    print(f"filter: {res['summary']}")
    print(
        f"peak RSS increase while loading + filtering: {res['peak_rss_increase_mb']:.0f} MiB "
        f"(baseline {res['baseline_rss_mb']:.0f} MiB; still held after: {res['rss_after_mb']:.0f} MiB)"
    )
    print(f"time: load {res['load_s']} s, filter {res['filter_s']} s (token length = chars // 4)")


if __name__ == "__main__":
    main()
