"""Tests of the answer verifier: extraction, equivalences, benchmark golds, hang safety."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from pathlib import Path

import pytest

from srft.rewards import (
    Verifier,
    extract_choice,
    extract_math_answer,
    last_boxed,
    normalize_answer,
    score_choice,
    score_math,
)
from srft.rewards.math import _fast_compare, math_verify_equal, sympy_equal

BENCH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"


def _golds(name: str) -> list[str]:
    path = BENCH / name
    if not path.exists():
        pytest.skip(f"benchmark file {path} not found (the shared data folder is not next to the repo)")
    import pyarrow.parquet as pq

    # only the answer column: the questions are never read here
    return [r["ground_truth"] for r in pq.read_table(path, columns=["reward_model"]).column("reward_model").to_pylist()]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(kind="auto", workers=2, timeout_s=5.0) as v:
        yield v


# ---------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------


def test_last_boxed_nested_and_fbox():
    assert last_boxed(r"x \boxed{1} y \boxed{\frac{a^{2}}{b_{1}}}") == r"\frac{a^{2}}{b_{1}}"
    assert last_boxed(r"\fbox{7} and then") == "7"
    assert last_boxed(r"\boxed{\{1,2\}}") == r"\{1,2\}"
    assert last_boxed(r"\boxed 5$") == "5"
    # a truncated last box falls back to the previous one
    assert last_boxed(r"\boxed{3} ... \boxed{\frac{1}{") == "3"
    assert last_boxed("no box here") is None
    assert last_boxed(r"\boxed{}") is None
    assert last_boxed(r"\boxedfoo{3}") is None


def test_answer_line_fallbacks():
    assert extract_math_answer("blah. The answer is $\\frac{1}{2}$.") == ("\\frac{1}{2}", "answer_line")
    assert extract_math_answer("work\nFinal answer: 42") == ("42", "answer_line")
    assert extract_math_answer("**Answer:** 17") == ("17", "answer_line")
    assert extract_math_answer("steps\n#### 1,234") == ("1,234", "hash_line")
    assert extract_math_answer("nothing to see") == (None, "none")
    # the box wins over answer lines
    assert extract_math_answer("The answer is 3. Hence \\boxed{4}")[0] == "4"


def test_think_is_searched_last():
    c = "<think>maybe \\boxed{1}</think> The answer is \\boxed{2}."
    assert extract_math_answer(c) == ("2", "boxed")
    # an answer only inside <think> is not taken unless asked for
    c = "<think>so \\boxed{5}</think> I am done."
    assert extract_math_answer(c) == (None, "think_only")
    assert extract_math_answer(c, think_answers=True) == ("5", "think:boxed")


@pytest.mark.parametrize(
    "completion",
    [
        "<think>so \\boxed{5}</think>",  # nothing after </think>
        "<think>so \\boxed{5}</think> I am done.",  # no answer after </think>
        "<think>so \\boxed{5}",  # truncated: <think> never closed
        "Sure. <think>so \\boxed{5} and then",  # same, after some text
    ],
)
def test_think_answers_not_credited(completion):
    s = score_math(completion, "5")
    assert (s.reward, s.extracted, s.info) == (0.0, None, {"how": "think_only"})
    s = score_math(completion, "5", think_answers=True)
    assert s.reward == 1.0 and s.info == {"how": "think:boxed", "from_think": True}


def test_think_answers_in_choice_and_verifier():
    assert score_choice("<think>the answer is B</think>", "B").reward == 0.0
    s = score_choice("<think>the answer is B</think>", "B", think_answers=True)
    assert s.reward == 1.0 and s.info["from_think"]
    comps, golds = ["<think>\\boxed{5}</think>", "<think>Answer: B</think>", "<think>x</think>\\boxed{5}"], ["5", "B", "5"]
    # decided in the calling process: no worker is started
    with Verifier(kind="auto", workers=1) as v:
        assert [s.reward for s in v.score_batch(comps, golds)] == [0.0, 0.0, 1.0]
    with Verifier(kind="auto", workers=1, think_answers=True) as v:
        scores = v.score_batch(comps, golds)
        assert [s.reward for s in scores] == [1.0, 1.0, 1.0]
        assert [s.info.get("from_think", False) for s in scores] == [True, True, False]


@pytest.mark.parametrize(
    "text,letter",
    [
        (r"so \boxed{B}", "B"),
        (r"\boxed{(C)}", "C"),
        (r"\boxed{\text{D}}", "D"),
        (r"\boxed{A) Planetary days}", "A"),
        ("The answer is (B).", "B"),
        ("Therefore the correct answer is: C", "C"),
        ("Answer: **D**", "D"),
        ("Answer: J", "J"),
        ("reasoning...\n(B)\n", "B"),
        ("no choice at all", None),
        # the final explicit choice wins over earlier mentions of options
        ("Option A: wrong... Option D: 5 is incorrect. Therefore, **C** is correct.", "C"),
        ("The answer is A. Wait, A is wrong; I choose B.", "B"),
        ("Let us see which of A-D is correct. Answer: (B)", "B"),
        ("(C) is the right answer.", "C"),
        ("Answer: A is incorrect", None),  # a rejection, not a choice
        ("Option D: 5 is incorrect.", None),  # a mention, not a choice
        ("Answer: Because it is heavier", None),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text)[0] == letter


def test_score_choice_digits_and_letters():
    assert score_choice(r"\boxed{2}", "2").reward == 1.0
    assert score_choice("Answer: 3", "2").reward == 0.0
    assert score_choice(r"\boxed{B}", "B").correct
    s = score_choice("I am not sure", "B")
    assert s.reward == 0.0 and not s.format_ok and s.extracted is None


# ---------------------------------------------------------------------------
# equivalences: a table of (prediction, gold, why), scored as \boxed{prediction}
# ---------------------------------------------------------------------------

ACCEPTED = [
    (r"\frac{1}{2}", "0.5", "same value"),
    ("0.5", r"\frac{1}{2}", "same value"),
    (r"\dfrac{1}{2}", r"\frac{1}{2}", "\\dfrac is \\frac"),
    (r"\tfrac12", r"\frac{1}{2}", "\\tfrac is \\frac"),
    ("1/2", r"\frac{1}{2}", "same value"),
    (r"\frac {1} {2}", r"\frac{1}{2}", "spaces between groups mean nothing"),
    ("2it", "2 i t", "math mode does not render spaces between letters"),
    (r"\frac{e^{2it}}{(2+2i)}", r"\frac{e^{2 i t}}{(2+2 i)}", "same (a Minerva gold)"),
    (r"\sqrt 2", r"\sqrt2", "nor after a control word before a digit"),
    ("x=3", "3", "an assignment to a variable gives its value"),
    ("x = 3", "3", "same"),
    ("x=5", "5", "same"),
    ("4", "4.0", "integer gold written with a zero decimal"),
    ("12", "12.0", "same"),
    ("12.0", "12", "same value"),
    ("-3", "-3.00", "same value"),
    ("12345.670", "12345.67", "same value, one more zero"),
    (r"[1,2)", r"[1, 2)", "interval, spacing"),
    (r"\left[ 1, 2 \right)", "[1,2)", "\\left/\\right before a delimiter are sizing only"),
    (r"(-\infty, 3]", r"(-\infty,3]", "interval, spacing"),
    (r"(1, 2)", r"(1,2)", "spacing"),
    (r"(-\infty, 0) \cup (1, \infty)", r"(-\infty,0)\cup(1,\infty)", "union of intervals, spacing"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"\left( 3, \frac{\pi}{2} \right)", "identical"),
    (r"(3,\frac{\pi}{2})", r"\left( 3, \frac{\pi}{2} \right)", "\\left( is ("),
    ("3,2,1", "$1,2,3$", "a list of solutions in another order"),
    (r"\{2, 1\}", r"\{1,2\}", "a set in another order"),
    (r"2\sqrt{3}", r"\sqrt{12}", "same value"),
    (r"$\sqrt{15}$", r"\sqrt{15}", "math delimiters"),
    (r"137\frac{1}{2}", r"137 \frac{1}{2}", "a mixed number, spacing"),
    (r"10\%", "10", "percent sign dropped (as math_verify does)"),
    ("10", r"10\%", "same"),
    ("0.1", r"10\%", "10% is 0.1 (as math_verify does)"),
    ("0.175", "17.5%", "same"),
    (r"90^\circ", "90", "degree sign dropped"),
    ("52_8", "52_8", "identical"),
    ("52", "52_8", "the base may be left out"),
    (r"\$5", "5", "dollar sign dropped"),
    (r"1\,000", "1000", "\\, is a thin space, LaTeX's digit-group separator"),
    ("0.0000673", r"6.73\times 10^{-5}", "same number in another notation"),
    (r"6.73 \cdot 10^{-5}", "0.0000673", "same"),
    ("1000000", "10^6", "same"),
    ("0.00104", "1.04e-3", "e-notation is a number (Minerva golds use it)"),
    ("3.1416", "3.14", "the gold's precision: 3.1416 is 3.14 to the gold's 2 places"),
    (r"\pi", "3.14", "the gold's precision, through sympy: pi is 3.14 to 2 places"),
    (r"5\text{ cm}", r"5\text{ cm}", "identical"),
    (r"5 \text{cm}", r"5\text{ cm}", "spacing in the unit"),
    ("5 cm", r"5\text{ cm}", "a bare unit word is the same unit"),
    ("5", r"5\text{ cm}", "a unit on one side only is ignored: the number is right"),
    (r"5\text{ cm}", "5", "same"),
    ("864", r"864 \mbox{ inches}^2", "same"),
    (r"864\text{ inch}^{2}", r"864 \mbox{ inches}^2", "singular/plural and exponent braces"),
    (r"\frac{270}{7}^\circ", r"\frac{270}7\text{ degrees}", "degrees as a unit or as a sign"),
]

REJECTED = [
    (r"\frac{1}{3}", "0.5", "different value"),
    ("5", "4.0", "different value"),
    ("3,2,4", "$1,2,3$", "different solutions"),
    ("52_9", "52_8", "different base"),
    (".0000673", ".0000672", "differ in the gold's last place"),
    (r"\frac{1}{3} E_{1}+\frac{2}{3} E_{3}", r"\frac{1}{3} E_{1}+\frac{2}{3} E_{2}", "different subscript"),
    ("[1,2]", "[1,2)", "closed vs half-open"),
    ("12345678901234568", "12345678901234567", "integers beyond float precision"),
    (r"A \rightarrow B", r"A \leftarrow B", "\\left inside \\leftarrow is no delimiter"),
    ("1 2", "12", "a space between digits separates two numbers"),
    ("2 1/2", "21/2", "a mixed number (2.5) is not 10.5"),
    ("1 000", "1000", "same: a plain space is no digit separator"),
    ("12345.68", "12345.67", "differ in the gold's last place"),
    ("1000000.5", "1000000", "an integer gold is compared exactly"),
    ("12.4", "12", "same"),
    ("0.0000672", r"6.73\times 10^{-5}", "the gold is 0.0000673: differs in its 7th place"),
    ("0.000067", "0.0000672", "math_verify rounds both to 6 places (0.000067); the gold has 7"),
    ("3.15", "3.14", "differs in the gold's last place"),
    ("3.145", "3.14", "exactly half a unit off: not within"),
    (r"5\text{ m}", r"5\text{ cm}", "different units"),
    (r"864 \mbox{ inches}^3", r"864 \mbox{ inches}^2", "different unit exponents"),
    ("5 feet", r"5\text{ m}", "different units"),
    (r"3\text{ hours and }20\text{ minutes}", "3", "3 h 20 min is not 3: only the last unit is split off"),
    ("2", "2ab", "ab is no unit (math_verify's unit list strips it)"),
    ("4", "4 t", "t is a variable (math_verify's unit list strips it)"),
    ("17.5", "17.5%", "a decimal against a percent is compared as a fraction (as math_verify does)"),
]

# Accepted pairs that plain math_verify (its unit stripping, 6-place rounding) rejects,
# each with why accepting is right. The fast path may accept nothing else it rejects.
MATH_VERIFY_REJECTS = {
    (r"1\,000", "1000"): "math_verify reads 1\\,000 as the product 1*000",
    ("2it", "2 i t"): "both parse to 2*i*t, yet math_verify's comparison fails on them",
    (r"\frac{e^{2it}}{(2+2i)}", r"\frac{e^{2 i t}}{(2+2 i)}"): "same",
    ("0.00104", "1.04e-3"): "math_verify reads 1.04e-3 as 1.04*E - 3 (Euler's number)",
    ("3.1416", "3.14"): "math_verify compares at 6 places, finer than the gold",
    (r"\pi", "3.14"): "same",
}


@pytest.mark.parametrize(
    "text,key",
    [
        ("1 2", "1 2"),  # two numbers, not 12
        (r"\pi r", r"\pi r"),  # "\pir" would be another command
        ("2 i t", "2it"),  # math mode does not render these spaces
        (r"6.73 \times 10^{-5}", r"6.73\times10^{-5}"),  # a control word ends before a digit
        (r"A \rightarrow B", r"A\rightarrow B"),  # \right inside a longer command stays
        (r"\left( x \right)", "(x)"),  # \left( is a sized "("
        (r"1\,000", "1000"),  # thin space: a digit-group separator
        (r"$\dfrac{1}{2}$", r"\frac{1}{2}"),  # delimiters, \dfrac
        ("x = 5.", "x=5"),  # a sentence's final period
    ],
)
def test_normalize_answer(text, key):
    assert normalize_answer(text) == key


def _ids(rows):
    return [f"{p} | {g}" for p, g, _ in rows]


@pytest.mark.parametrize("pred,gold,why", ACCEPTED, ids=_ids(ACCEPTED))
def test_accepted(pred, gold, why):
    s = score_math(f"Thus the final answer is \\boxed{{{pred}}}.", gold)
    assert s.reward == 1.0, (why, s)


@pytest.mark.parametrize("pred,gold,why", REJECTED, ids=_ids(REJECTED))
def test_rejected(pred, gold, why):
    s = score_math(f"\\boxed{{{pred}}}", gold)
    assert s.reward == 0.0 and s.format_ok, (why, s)


@pytest.mark.parametrize("pred,gold,why", ACCEPTED, ids=_ids(ACCEPTED))
def test_fast_path_accepts_only_what_math_verify_accepts(pred, gold, why):
    if _fast_compare(pred, gold) is True and (pred, gold) not in MATH_VERIFY_REJECTS:
        assert math_verify_equal(pred, gold), why


@pytest.mark.parametrize("pair", sorted(MATH_VERIFY_REJECTS))
def test_math_verify_rejects_what_the_table_says(pair):
    # keeps MATH_VERIFY_REJECTS honest: each entry really is a disagreement
    assert not math_verify_equal(*pair), MATH_VERIFY_REJECTS[pair]


def test_table_through_the_pool():
    # the worker (every answer through sympy, no in-process shortcut) agrees with the table
    rows = ACCEPTED + REJECTED
    with Verifier(kind="math", workers=2, timeout_s=20.0, fast_path=False) as v:
        scores = v.score_batch([f"\\boxed{{{p}}}" for p, _, _ in rows], [g for _, g, _ in rows])
    got = [s.reward for s in scores]
    assert got == [1.0] * len(ACCEPTED) + [0.0] * len(REJECTED), [
        (p, g, s.info) for (p, g, _), s, want in zip(rows, scores, [1.0] * len(ACCEPTED) + [0.0] * len(REJECTED))
        if s.reward != want
    ]


def test_score_fields():
    s = score_math(r"The final answer is \boxed{\frac{1}{2}}", "0.5")
    assert (s.reward, s.extracted, s.format_ok, s.correct) == (1.0, r"\frac{1}{2}", True, True)
    s = score_math("I give up", "0.5")
    assert (s.reward, s.extracted, s.format_ok, s.correct) == (0.0, None, False, False)
    s = score_math(r"\boxed{7}", "0.5")
    assert (s.reward, s.extracted, s.format_ok, s.correct) == (0.0, "7", True, False)


# ---------------------------------------------------------------------------
# benchmark golds
# ---------------------------------------------------------------------------

def _alter(gold: str) -> str | None:
    """The gold with its last digit changed, or None if it has no digit."""
    digits = [m.start() for m in re.finditer(r"\d", gold)]
    if not digits:
        return None
    k = digits[-1]
    return gold[:k] + str((int(gold[k]) + 1) % 10) + gold[k + 1 :]


def _check_golds(verifier, golds):
    comps = [f"Let me think step by step. ... so the final answer is \\boxed{{{g}}}." for g in golds]
    scores = verifier.score_batch(comps, golds)
    failures = [(i, g, s.info) for i, (g, s) in enumerate(zip(golds, scores)) if s.reward != 1.0]
    assert not failures, failures


def test_math_golds_score_one(verifier):
    # end to end through extraction; identical answers are settled without sympy
    _check_golds(verifier, _golds("math.parquet"))


def _sympy_self_check(golds):
    failures = [g for g in golds if not sympy_equal(g, g)]
    assert not failures, failures


def test_math_golds_sympy_sample():
    golds = sorted(set(_golds("math.parquet")))
    _sympy_self_check(random.Random(0).sample(golds, 60))


@pytest.mark.slow
def test_math_golds_sympy_all():
    # every distinct gold also equals itself through math_verify's parser (about 20 s)
    _sympy_self_check(sorted(set(_golds("math.parquet"))))


def test_choice_golds_score_one(verifier):
    for name in ("arc_c.parquet", "gpqa_diamond.parquet"):
        golds = _golds(name)
        comps = [f"After weighing the options, the answer is \\boxed{{{g}}}." for g in golds]
        # ARC-C has a few questions labelled 1-4: say they are multiple choice
        scores = verifier.score_batch(comps, golds, kinds=["choice"] * len(golds))
        assert all(s.reward == 1.0 for s in scores), name
        wrong = [("ABCD" if g.isalpha() else "1234")[(("ABCD" if g.isalpha() else "1234").index(g) + 1) % 4] for g in golds]
        comps = [f"the answer is \\boxed{{{w}}}" for w in wrong]
        assert all(s.reward == 0.0 for s in verifier.score_batch(comps, golds, kinds=["choice"] * len(golds)))


def _check_altered(verifier, n: int | None):
    golds = _golds("math.parquet")
    pairs = []
    for g in sorted(set(golds)):
        a = _alter(g)
        # every gold, also those whose last digit is a unit's exponent (864 \mbox{ inches}^2)
        if a is not None:
            pairs.append((g, a))
    if n is not None:
        pairs = random.Random(1).sample(pairs, n)
    scores = verifier.score_batch([f"so the answer is \\boxed{{{a}}}" for _, a in pairs], [g for g, _ in pairs])
    wrong = [(g, a, s.info) for (g, a), s in zip(pairs, scores) if s.reward != 0.0]
    assert not wrong, wrong


def test_altered_golds_score_zero_sample(verifier):
    _check_altered(verifier, 40)


@pytest.mark.slow
def test_altered_golds_score_zero_all(verifier):
    _check_altered(verifier, None)


# ---------------------------------------------------------------------------
# the pool: hangs, crashes, huge inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "\\boxed{" * 20000,  # many unclosed boxes: each must not rescan the rest
        "{" * 100000 + "\\boxed{" * 20000,
        "\\boxed {" * 20000,
        "answer " * 20000,
        "answer is " * 15000,
        "(B" * 50000,
        "#### " * 20000,
        "The answer is" + " " * 100000,
        "\\boxed{" + "\\\\" * 50000,
        "**B** is " * 20000,  # the "is correct" phrase, never completed
        "I choose " * 20000,
        "Answer: B is " * 10000,
    ],
)
def test_extraction_is_linear_on_adversarial_text(text):
    # extraction and choice scoring run in the caller's process: they must stay fast
    t = time.monotonic()
    extract_math_answer(text)
    score_choice(text, "B")
    assert time.monotonic() - t < 2.0


def test_pathological_inputs_finish_and_score_zero():
    cases = [
        (r"\boxed{9^{9^{9^{9}}}}", "1"),
        (r"\boxed{10^{10^{10}}}", "10"),
        ("\\boxed{" + "{" * 900 + "1" + "}" * 900 + "}", "2"),
        ("\\boxed{" + "{" * 50000 + "1" + "}" * 50000 + "}", "1"),
        ("\\boxed{" + "\\frac{" * 300 + "1" + "}{2}" * 300 + "}", "1"),
        ("(" * 100_000, "1"),
        ("x" * 100_000, "1"),
        ("The answer is " + " " * 100_000 + "x", "1"),
        ("answer" + " " * 50_000 + ":" * 50_000, "1"),
    ]
    timeout = 2.0
    with Verifier(kind="math", workers=2, timeout_s=timeout) as v:
        t = time.monotonic()
        scores = v.score_batch([c for c, _ in cases], [g for _, g in cases])
        elapsed = time.monotonic() - t
        assert all(s.reward == 0.0 for s in scores), [s.info for s in scores]
        # worst case: every sample runs to its deadline on one of two workers, plus restarts
        assert elapsed < len(cases) * timeout / 2 + 30, elapsed
        # a 100 kB completion with a normal answer at its end is scored right
        s = v.score_batch(["y" * 100_000 + r" so \boxed{\frac{2}{4}}"], ["0.5"])[0]
        assert s.reward == 1.0


def test_hard_timeout_kills_and_replaces_worker():
    # no soft timer in the worker: only the parent's deadline can stop the sample
    with Verifier(kind="math", workers=1, timeout_s=1.0, soft_timeout_frac=0.0) as v:
        v.score_batch([r"\boxed{\sqrt{2}}"], [r"\sqrt{2}+0"])  # start the worker
        pid = v._workers[0].proc.pid
        t = time.monotonic()
        s = v.score_batch([r"\boxed{9^{9^{9^{9}}}}"], ["1"])[0]
        assert time.monotonic() - t < 5
        assert s.reward == 0.0 and s.info.get("timeout") is True
        assert v.n_timeouts == 1 and v.n_restarts == 1
        # the next batch runs on a new worker
        s = v.score_batch([r"\boxed{\frac{6}{4}}"], ["1.5"])[0]
        assert s.reward == 1.0
        s = v.score_batch([r"\boxed{2\pi}"], [r"\pi+\pi"])[0]
        assert s.reward == 1.0
        assert v._workers[0].proc.pid != pid


def test_worker_crash_scores_zero_with_error():
    with Verifier(kind="math", workers=1, timeout_s=30.0) as v:
        v.score_batch([r"\boxed{\sqrt{2}}"], [r"\sqrt{2}+0"])
        w = v._workers[0]
        out = {}

        def run():
            out["scores"] = v.score_batch([r"\boxed{10^{10^{10}}}"], ["10"])

        th = threading.Thread(target=run)
        th.start()
        time.sleep(1.0)
        w.proc.kill()  # the worker dies in the middle of the sample
        th.join(timeout=20)
        assert not th.is_alive()
        s = out["scores"][0]
        assert s.reward == 0.0 and "died" in s.info.get("error", ""), s
        assert v.n_errors == 1
        # an idle worker that died is replaced on the next batch
        v._workers[0].proc.kill()
        v._workers[0].proc.wait()
        assert v.score_batch([r"\boxed{\sqrt{4}}"], [r"2+0\pi"])[0].reward == 1.0


def test_auto_kind_and_fast_path():
    with Verifier(kind="auto", workers=1, timeout_s=5.0) as v:
        scores = v.score_batch([r"\boxed{B}", r"\boxed{C}", r"\boxed{4}", "no answer"], ["B", "B", "4.0", "7"])
        assert [s.reward for s in scores] == [1.0, 0.0, 1.0, 0.0]
        # none of these needed a worker
        assert v.n_in_pool == 0 and not v._workers
        with pytest.raises(ValueError):
            v.score_batch(["a"], ["b", "c"])


def test_closed_verifier_reopens():
    v = Verifier(kind="math", workers=1, timeout_s=5.0)
    assert v.score_batch([r"\boxed{\frac{3}{6}}"], ["0.5"])[0].reward == 1.0
    v.close()
    assert v.score_batch([r"\boxed{\frac{3}{6}}"], ["0.5"])[0].reward == 1.0
    v.close()


def test_file_task_credits_think_answers_only_when_configured(tmp_path):
    from srft.config import load_config
    from srft.training.loop import make_task

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    completion = "<think>so \\boxed{2}</think> done."
    for flag, reward in (("false", 0.0), ("true", 1.0)):
        cfg = load_config("srft", None, ["data.task=file", f"data.train_file={data}", "data.verifier_workers=1",
                                         f"data.verifier_think_answers={flag}"])
        task = make_task(cfg)
        try:
            assert task.verify(completion, "2").reward == reward, flag
        finally:
            task.close()
