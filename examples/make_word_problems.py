"""Write the small word-problem data set of the README's real-model example.

One-step arithmetic word problems (add, take away, groups of), chat-message prompts that ask for a
``\\boxed{}`` answer, and a short worked demonstration for each training row, in the verl/LUFFY schema:

    python examples/make_word_problems.py        # writes examples/data/word-problems-{train,test}.jsonl

The rows are drawn from a fixed seed, so the files in the repository are what this script writes
(tests/test_docs.py checks it).
"""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena", "Mo", "Nia",
         "Omar", "Pia", "Raj", "Sara", "Tom", "Uma", "Vic", "Wen", "Yara", "Zoe"]
THINGS = ["apples", "stickers", "marbles", "books", "shells", "coins", "pencils", "cards"]
SUFFIX = " Put the final answer in \\boxed{}."


def problem(rng: random.Random) -> tuple[str, int, str]:
    """(question, answer, worked demonstration)"""
    name, thing, kind = rng.choice(NAMES), rng.choice(THINGS), rng.choice(["add", "take", "groups"])
    if kind == "add":
        a, b = rng.randint(2, 60), rng.randint(2, 40)
        q, ans = f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
        work = f"{name} starts with {a} and gets {b} more: {a} + {b} = {ans}."
    elif kind == "take":
        a = rng.randint(10, 90)
        b = rng.randint(1, a - 1)
        q, ans = f"{name} has {a} {thing} and gives {b} of them away. How many {thing} are left?", a - b
        work = f"{name} gives away {b} of {a}: {a} - {b} = {ans}."
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 12)
        q, ans = f"{name} has {a} boxes with {b} {thing} in each. How many {thing} are there in all?", a * b
        work = f"{a} boxes of {b} each: {a} x {b} = {ans}."
    return q + SUFFIX, ans, f"{work} The answer is \\boxed{{{ans}}}."


def rows(n: int, seed: int, demos: bool) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, ans, demo = problem(rng)
        row = {"prompt": [{"role": "user", "content": q}], "answer": str(ans), "data_source": "word-problems"}
        if demos:
            row["demonstration"] = demo
        out.append(row)
    return out


def write(out_dir: Path) -> list[Path]:
    from srft.data.loading import export_rows

    out_dir.mkdir(parents=True, exist_ok=True)
    train, test = out_dir / "word-problems-train.jsonl", out_dir / "word-problems-test.jsonl"
    export_rows(rows(256, seed=0, demos=True), train, split="train")
    export_rows(rows(64, seed=1, demos=False), test, split="test")  # evaluation needs no demonstrations
    return [train, test]


if __name__ == "__main__":
    for path in write(Path(__file__).resolve().parent / "data"):
        print(path)
