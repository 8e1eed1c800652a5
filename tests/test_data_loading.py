"""Tests of reading, filtering and writing data files."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from srft.data import DataError, export_rows, filter_rows, load_rows

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"

SYSTEM = "Think step by step and put the final answer in \\boxed{}."


def _luffy_record(i: int, demo: str | None = "so the answer is \\boxed{%d}", answer: str | None = None) -> dict:
    return {
        "data_source": "openr1",
        "prompt": [{"content": SYSTEM, "role": "system"}, {"content": f"What is {i}+0?", "role": "user"}],
        "target": None if demo is None else [{"content": demo.replace("%d", str(i)), "role": "assistant"}],
        "ability": "math",
        "reward_model": {"ground_truth": str(i) if answer is None else answer, "style": "rule"},
        "extra_info": {"index": i, "split": "train"},
    }


def _write_parquet(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def _chars(n: int):
    return lambda text: len(text) // n


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "json"])
def test_luffy_schema(tmp_path, fmt):
    records = [_luffy_record(i) for i in range(5)]
    records.append(_luffy_record(5, demo=None))
    path = tmp_path / f"train.{fmt}"
    if fmt == "parquet":
        _write_parquet(path, records)
    elif fmt == "jsonl":
        _write_jsonl(path, records)
    else:
        path.write_text(json.dumps(records))
    rows = load_rows(path)
    assert len(rows) == 6 and rows.problems == []
    r = rows[2]
    assert r["prompt"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is 2+0?"}]
    assert r["answer"] == "2"
    assert r["demonstration"] == "so the answer is \\boxed{2}"
    assert r["data_source"] == "openr1"
    assert r["index"] == 2
    assert rows[5]["demonstration"] is None
    assert len(load_rows(path, max_rows=3)) == 3


def test_flat_schema(tmp_path):
    records = [
        {"prompt": "What is 1+1?", "answer": "2", "demonstration": "1+1=2, \\boxed{2}"},
        {"prompt": "What is 2+2?", "answer": 4},  # numbers are turned into strings
    ]
    rows = load_rows(_write_jsonl(tmp_path / "flat.jsonl", records))
    assert rows[0] == {
        "prompt": "What is 1+1?",
        "answer": "2",
        "demonstration": "1+1=2, \\boxed{2}",
        "data_source": "flat",
        "index": 0,
    }
    assert rows[1]["answer"] == "4" and rows[1]["demonstration"] is None
    pq.write_table(pa.Table.from_pylist(records[:1]), tmp_path / "flat.parquet")
    assert load_rows(tmp_path / "flat.parquet")[0]["prompt"] == "What is 1+1?"


def test_benchmark_file_loads():
    path = BENCH / "math.parquet"
    if not path.exists():
        pytest.skip(f"benchmark file {path} not found")
    rows = load_rows(path)
    assert len(rows) == 2019 and not rows.problems
    assert {r["data_source"] for r in rows} == {"aime", "amc", "math", "minerva", "olympiad_bench"}
    assert all(isinstance(r["prompt"], list) and r["answer"] and r["demonstration"] is None for r in rows)


def test_missing_answer_and_bad_prompt_are_reported(tmp_path):
    records = [_luffy_record(i) for i in range(6)]
    records[1]["reward_model"] = {"ground_truth": "", "style": "rule"}
    records[3]["prompt"] = [{"content": "no user message here", "role": "system"}]
    records[4]["reward_model"] = {"ground_truth": None, "style": "rule"}
    path = _write_jsonl(tmp_path / "bad.jsonl", records)
    rows = load_rows(path)
    assert [r["index"] for r in rows] == [0, 2, 5]
    assert sorted((i, reason) for i, reason, _ in rows.problems) == [
        (1, "no answer"),
        (3, "malformed prompt"),
        (4, "no answer"),
    ]
    kept, report = filter_rows(rows, _chars(4), 1000, 1000)
    assert len(kept) == 3
    assert report.summary == "kept 3 of 6 rows: 2 no answer, 1 malformed prompt"
    assert report.examples["no answer"] == [1, 4]
    with pytest.raises(DataError, match=r"2 no answer \(rows 1, 4: .*1 malformed prompt \(row 3: "):
        load_rows(path, strict=True)


def test_no_usable_rows(tmp_path):
    path = _write_jsonl(tmp_path / "none.jsonl", [{"prompt": "q", "answer": ""}, {"question": "q", "answer": "1"}])
    with pytest.raises(DataError, match="none of the 2 rows is usable"):
        load_rows(path)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match="no rows"):
        load_rows(tmp_path / "empty.jsonl")
    (tmp_path / "x.csv").write_text("prompt,answer\nq,1\n")
    with pytest.raises(DataError, match="unknown file type"):
        load_rows(tmp_path / "x.csv")
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "missing.parquet")


def test_utf8_bom_and_json_columns(tmp_path):
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "q", "answer": "1"}).encode() + b"\n")
    assert load_rows(tmp_path / "bom.jsonl")[0]["answer"] == "1"
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps([{"prompt": "q", "answer": "1"}]).encode())
    assert load_rows(tmp_path / "bom.json")[0]["answer"] == "1"
    (tmp_path / "cols.json").write_text('{\n"prompt": ["a", "b"],\n"answer": ["1"]\n}')
    with pytest.raises(DataError, match="columns have different lengths"):
        load_rows(tmp_path / "cols.json")
    (tmp_path / "cols.json").write_text('{\n"prompt": ["a", "b"],\n"answer": ["1", "2"]\n}')
    assert [r["answer"] for r in load_rows(tmp_path / "cols.json")] == ["1", "2"]


def test_label_names_where_the_path_came_from(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"prompt": "q"}\n')
    with pytest.raises(DataError) as e:
        load_rows(tmp_path / "x.jsonl", label="data.train_file")
    assert str(e.value).startswith(f"data.train_file {tmp_path / 'x.jsonl'}: none of the 1 rows is usable")


def _sized_rows():
    rows = []
    for i in range(10):
        demo = "d" * (40 if i < 6 else 400)  # 10 vs 100 "tokens" at 4 chars each
        prompt = "p" * (20 if i != 9 else 4000)
        rows.append({"prompt": prompt, "answer": str(i), "demonstration": demo, "data_source": "s", "index": i})
    rows.append({"prompt": "q", "answer": "", "demonstration": None, "data_source": "s", "index": 10})
    rows.append({"prompt": "q", "answer": "7", "demonstration": None, "data_source": "s", "index": 11})
    return rows


def test_filter_drop():
    kept, report = filter_rows(_sized_rows(), _chars(4), max_prompt_tokens=100, max_response_tokens=50)
    assert [r["index"] for r in kept] == [0, 1, 2, 3, 4, 5, 11]
    assert report.dropped == {"demonstration too long": 3, "prompt too long": 1, "no answer": 1}
    assert report.summary == "kept 7 of 12 rows: 3 demonstration too long, 1 prompt too long, 1 no answer"
    assert report.examples["demonstration too long"] == [6, 7, 8]


def test_filter_truncate():
    rows = _sized_rows()
    kept, report = filter_rows(rows, _chars(4), max_prompt_tokens=100, max_response_tokens=50, too_long="truncate")
    assert [r["index"] for r in kept] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 11]
    assert report.truncated == 3
    marked = [r for r in kept if "truncate_demonstration_to" in r]
    assert [(r["index"], r["truncate_demonstration_to"], r["demonstration_tokens"]) for r in marked] == [
        (6, 50, 100),
        (7, 50, 100),
        (8, 50, 100),
    ]
    assert "truncate_demonstration_to" not in rows[6]  # the input rows are not changed
    assert kept[0] is rows[0]  # untouched rows are shared, not copied
    assert "3 demonstrations marked for truncation" in report.summary
    # chat prompts are measured by their message contents
    chat = [{"prompt": [{"role": "user", "content": "x" * 400}], "answer": "1", "demonstration": None}]
    with pytest.raises(DataError):
        filter_rows(chat, _chars(4), max_prompt_tokens=50, max_response_tokens=None)
    assert len(filter_rows(chat, _chars(4), max_prompt_tokens=None, max_response_tokens=None)[0]) == 1


def test_filter_empty_result_says_what_to_change():
    rows = _sized_rows()[6:9]
    with pytest.raises(DataError) as e:
        filter_rows(rows, _chars(4), max_prompt_tokens=100, max_response_tokens=50)
    msg = str(e.value)
    assert "3 demonstration too long" in msg and "max_response_tokens" in msg and "truncate" in msg
    with pytest.raises(ValueError):
        filter_rows(rows, _chars(4), 100, 50, too_long="cut")


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_export_round_trip(tmp_path, fmt):
    rows = [
        {"prompt": "plain text prompt", "answer": "\\frac{1}{2}", "demonstration": "half: \\boxed{\\frac{1}{2}}"},
        {
            "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "ünïcode ∑ question"}],
            "answer": "B",
            "demonstration": None,
            "data_source": "arc_c",
        },
        {"prompt": [{"role": "user", "content": "q3"}], "answer": "3", "demonstration": "d3", "data_source": "x"},
    ]
    path = tmp_path / f"out.{fmt}"
    assert export_rows(rows, path, split="test") == 3
    back = load_rows(path)
    for a, b in zip(rows, back):
        assert b["prompt"] == a["prompt"]
        assert b["answer"] == a["answer"]
        assert b["demonstration"] == a["demonstration"]
    assert back[1]["data_source"] == "arc_c"
    # the file itself is in the verl/LUFFY schema
    if fmt == "parquet":
        rec = pq.read_table(path).to_pylist()[0]
    else:
        rec = json.loads(path.read_text().splitlines()[0])
    assert rec["prompt"] == [{"content": "plain text prompt", "role": "user"}]
    assert rec["target"] == [{"content": "half: \\boxed{\\frac{1}{2}}", "role": "assistant"}]
    assert rec["reward_model"] == {"ground_truth": "\\frac{1}{2}", "style": "rule"}
    assert rec["extra_info"]["index"] == 0 and rec["extra_info"]["split"] == "test"
    assert rec["ability"] == "math"


def test_export_of_loaded_luffy_file_round_trips(tmp_path):
    records = [_luffy_record(i) for i in range(1500)]  # more than one write batch
    rows = load_rows(_write_parquet(tmp_path / "in.parquet", records))
    export_rows(rows, tmp_path / "out.parquet")
    back = load_rows(tmp_path / "out.parquet")
    assert [(r["prompt"], r["answer"], r["demonstration"], r["data_source"]) for r in back] == [
        (r["prompt"], r["answer"], r["demonstration"], r["data_source"]) for r in rows
    ]
