"""Benchmark evaluation: exact aggregation with scripted completions, and the real files end to end."""

from pathlib import Path

import pytest

from srft.evaluation.benchmarks import PROTOCOLS, Protocol, aggregate, dedupe, limit_per_benchmark, run_benchmarks
from srft.evaluation.sampling import pass_at_k
from srft.rewards import Verifier

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
needs_bench = pytest.mark.skipif(not (BENCH / "math.parquet").exists(), reason=f"benchmark files not found in {BENCH}")


def test_pass_at_k_by_hand():
    # n = 4 samples, c = 1 correct: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 0, 4) == 0.0 and pass_at_k(4, 3, 2) == 1.0


def test_aggregate_by_hand():
    results = [
        {"data_source": "aime", "rewards": [1, 0, 0, 0]},  # avg 0.25, pass@4 1
        {"data_source": "aime", "rewards": [0, 0, 0, 0]},  # avg 0, pass@4 0
        {"data_source": "math", "rewards": [1]},
        {"data_source": "math", "rewards": [0]},
        {"data_source": "math", "rewards": [1]},  # avg 2/3
        {"data_source": "gpqa", "rewards": [0]},
    ]
    s = aggregate(results)
    assert s["benchmarks"]["aime"] == {"n": 2, "k": 4, "avg@k": 0.125, "pass@k": 0.5}
    assert s["benchmarks"]["math"]["avg@k"] == pytest.approx(2 / 3)
    # math average: mean of aime 0.125 and math 0.6667 = 0.39583 ; ood average: gpqa 0
    assert s["math_avg"] == pytest.approx((0.125 + 2 / 3) / 2)
    assert s["ood_avg"] == 0.0


class ScriptedEngine:
    """Answers each prompt with a fixed list of completions, cycling: the gold answer or a wrong one."""

    def __init__(self, tokenizer, script):
        self.tok, self.script = tokenizer, script

    def generate(self, prompts, n, max_new_tokens, temperature=1.0, top_p=1.0):
        out = []
        for p in prompts:
            texts = self.script[tuple(p)]
            out.append([self.tok(texts[i % len(texts)], add_special_tokens=False)["input_ids"] for i in range(n)])
        return out

    def sync_weights(self, model):
        pass


@needs_bench
def test_scripted_completions_on_real_rows_aggregate_exactly():
    from srft.data.loading import load_rows
    from srft.models.loading import encode_prompt
    from srft.models.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    rows = load_rows(BENCH / "math.parquet")
    assert len(dedupe([r for r in rows if r["data_source"] == "aime"])) == 30
    assert len(dedupe([r for r in rows if r["data_source"] == "amc"])) == 83
    rows = limit_per_benchmark(dedupe(rows), 4)
    # the first two questions of each benchmark get the gold answer, the others a wrong one;
    # on AIME/AMC (k = 4) the first question gets the gold answer in 1 of its 4 samples
    script, seen = {}, {}
    for r in rows:
        i = seen[r["data_source"]] = seen.get(r["data_source"], -1) + 1
        gold = f"so the answer is \\boxed{{{r['answer']}}}."
        wrong = "so the answer is \\boxed{\\text{no idea}}."
        ids = tuple(encode_prompt(tok, r["prompt"]))
        if r["data_source"] in ("aime", "amc"):
            script[ids] = [gold, wrong, wrong, wrong] if i == 0 else [wrong]
        else:
            script[ids] = [gold] if i < 2 else [wrong]
    protocol = Protocol(k={"aime": 4, "amc": 4}, max_new_tokens=8)
    with Verifier(kind="auto", workers=1, timeout_s=10) as v:
        summary, records = run_benchmarks(ScriptedEngine(tok, script), tok, rows, v, protocol)
    b = summary["benchmarks"]
    for name in ("math", "minerva", "olympiad_bench"):
        assert b[name]["n"] == 4 and b[name]["k"] == 1 and b[name]["avg@k"] == 0.5, name
    for name in ("aime", "amc"):
        # one question with 1/4 correct, three with 0: avg@4 = 0.25 / 4 = 0.0625; pass@4 = 1/4
        assert b[name]["k"] == 4 and b[name]["avg@k"] == pytest.approx(0.0625) and b[name]["pass@k"] == 0.25
    assert summary["math_avg"] == pytest.approx((0.5 * 3 + 0.0625 * 2) / 5)
    assert all(len(r["completions"]) == len(r["rewards"]) for r in records)


@needs_bench
@pytest.mark.slow
def test_tiny_model_end_to_end_on_real_files(tiny_model_dir, tmp_path):
    """The whole pipeline on the real files: template, generation, extraction, verification, aggregation."""
    import json

    from srft.cli import main

    out = tmp_path / "bench.json"
    rc = main(["benchmark", str(BENCH / "math.parquet"), str(BENCH / "arc_c.parquet"),
               str(BENCH / "gpqa_diamond.parquet"), f"model.path={tiny_model_dir}", "--limit", "3",
               "data.max_response_tokens=16", "data.template=reasoning", "--out", str(out), "data.verifier_workers=1"])
    assert rc == 0
    data = json.loads(out.read_text())
    bench = data["summary"]["benchmarks"]
    assert set(bench) == {"aime", "amc", "math", "minerva", "olympiad_bench", "arc_c", "gpqa"}
    assert bench["aime"]["k"] == 32 and bench["math"]["k"] == 1 and bench["gpqa"]["n"] == 3
    assert data["summary"]["protocol"]["temperature"] == 0.6
    assert len(data["records"]) == 21 and all(0 <= r <= 1 for rec in data["records"] for r in rec["rewards"])


def test_paper_protocol_settings():
    p = PROTOCOLS["paper"]
    assert p.temperature == 0.6 and p.max_new_tokens == 8192
    assert p.k == {"aime": 32, "amc": 32} and p.default_k == 1
