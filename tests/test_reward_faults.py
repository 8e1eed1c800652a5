"""A faulty verifier costs the samples it fails on, never the batch: they score 0 and are counted."""

from __future__ import annotations

import logging
import time

from srft.rewards import Verifier
from srft.tasks.base import Score, verify_all


def _ok(reward: float) -> Score:
    return Score(reward, "x", True, reward > 0)


# answer -> what the plugin's verify does with it
BEHAVIOUR = {
    "right": lambda: _ok(1.0),
    "wrong": lambda: _ok(0.0),
    "raise": lambda: 1 / 0,
    "none": lambda: None,
    "string": lambda: "1.0",
    "nan": lambda: _ok(float("nan")),
    "score-none": lambda: Score(None, "x", True, True),  # type: ignore[arg-type]
    "number": lambda: 1,  # a bare number is taken as the reward
}


class FaultyTask:
    """A plugin task whose verify misbehaves on some answers."""

    name = "faulty"

    def __init__(self):
        self.calls = 0

    def generate(self, split, n, seed):  # pragma: no cover - not used
        return []

    def verify(self, completion: str, answer: str) -> Score:
        self.calls += 1
        return BEHAVIOUR[answer]()


ANSWERS = ["right", "raise", "none", "wrong", "string", "nan", "score-none", "number", "right"]
# hand-checked: right 1, raise 0, None 0, wrong 0, "1.0" 0 (a string is no number), nan 0,
# reward None 0, bare 1 -> 1.0, right 1
EXPECTED = [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
ERRORS = [False, True, True, False, True, True, True, False, False]


def _errors(scores):
    return [bool((s.info or {}).get("error")) for s in scores]


def test_faulty_verify_scores_zero_counts_and_goes_on():
    task = FaultyTask()
    scores = verify_all(task, ["c"] * len(ANSWERS), ANSWERS)
    assert task.calls == len(ANSWERS)  # every sample was verified despite the faults
    assert [s.reward for s in scores] == EXPECTED
    assert all(type(s.reward) is float for s in scores)
    assert _errors(scores) == ERRORS
    assert "ZeroDivisionError" in scores[1].info["error"]
    # the training loop's verify_errors: 5 faulty samples (raise, None, string, nan, reward None)
    assert sum(1 for s in scores if (s.info or {}).get("error")) == 5


class RaisingBatchTask(FaultyTask):
    def verify_batch(self, completions, answers):
        raise RuntimeError("pool is gone")


class ShortBatchTask(FaultyTask):
    def verify_batch(self, completions, answers):
        return [_ok(1.0)]  # one score, whatever the number of samples


def test_broken_verify_batch_falls_back_to_verify(caplog):
    for task in (RaisingBatchTask(), ShortBatchTask()):
        with caplog.at_level(logging.WARNING, logger="srft.tasks.base"):
            scores = verify_all(task, ["c"] * len(ANSWERS), ANSWERS)
        # the batch result was not used: every sample went through verify, with its faults
        assert task.calls == len(ANSWERS)
        assert [s.reward for s in scores] == EXPECTED and _errors(scores) == ERRORS
        assert "one" in caplog.text  # "verifying one (sample) at a time" was logged


class BadItemsBatchTask(FaultyTask):
    def verify_batch(self, completions, answers):
        return [BEHAVIOUR[a]() if a != "raise" else None for a in answers]


def test_bad_items_of_verify_batch_score_zero():
    task = BadItemsBatchTask()
    scores = verify_all(task, ["c"] * len(ANSWERS), ANSWERS)
    assert task.calls == 0  # the batch result was used
    # as EXPECTED/ERRORS: the "raise" sample came back as None, also an error
    assert [s.reward for s in scores] == EXPECTED and _errors(scores) == ERRORS


class PoolTask:
    """A task scoring through the pooled Verifier, as the file task does."""

    name = "pool"

    def __init__(self, verifier: Verifier):
        self.verifier = verifier

    def verify(self, completion, answer):  # pragma: no cover - verify_batch is used
        return self.verifier.score(completion, answer)

    def verify_batch(self, completions, answers):
        return self.verifier.score_batch(completions, answers)


def test_hanging_check_in_the_pool_times_out_and_the_rest_is_scored():
    # Each of these needs sympy, so each goes to the one worker. The second never
    # finishes (a tower of powers) and the worker's own soft timer is off: only the
    # hard 1 s deadline stops it; the worker is replaced and scores the last two.
    completions = [r"\boxed{\frac{6}{4}}", r"\boxed{9^{9^{9^{9}}}}", r"\boxed{2\pi}", r"\boxed{\sqrt{2}}"]
    golds = ["1.5", "1", r"\pi+\pi", r"\sqrt{3}"]
    with Verifier(kind="math", workers=1, timeout_s=1.0, soft_timeout_frac=0.0) as v:
        t = time.monotonic()
        scores = verify_all(PoolTask(v), completions, golds)
        assert time.monotonic() - t < 30  # one deadline and one worker restart, not a hang
        assert v.n_in_pool == 4 and v.n_timeouts == 1
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0, 0.0]  # 6/4 = 1.5, hang, 2pi = pi+pi, sqrt2 != sqrt3
    assert [bool(s.info.get("timeout")) for s in scores] == [False, True, False, False]
    assert not any(s.info.get("error") for s in scores)
