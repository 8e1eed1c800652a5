"""The task plugin interface.

A task is anything with a ``name``, a ``generate`` and a ``verify`` method:

    generate(split, n, seed) -> list of rows {"prompt": str, "answer": str, "demonstration": str | None}
    verify(completion, answer) -> Score

``split`` is one of ``train``, ``test_id`` (held-out instances of the training
difficulties) and ``test_ood`` (harder or shifted instances never trained on).
``generate`` must be deterministic given (split, n, seed), and the test splits
must not overlap the train split.

The completion handed to ``verify`` is the model's response text only (the
prompt is not included, the end-of-sequence token is stripped).

Optional: ``answer_response(answer) -> str``, a response that states ``answer`` in the
format ``verify`` expects (``#### 632``, ``\\boxed{632}``). ``srft doctor`` uses it to
check that the verifier accepts the data's own gold answers; a task without it skips
that check.

Optional: ``hinted_prompt(prompt, answer)``, the prompt with its answer given as a hint
(for rationalisation: the model writes a solution that reaches a known answer). Without
it, :func:`hinted_prompt` appends "The answer is X." to a text prompt, or to the last
user message of a chat prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import numbers
from typing import Protocol, runtime_checkable

from srft.scoring import Score  # re-exported: plugins import it from here

SPLITS = ("train", "test_id", "test_ood")

log = logging.getLogger(__name__)


@runtime_checkable
class Task(Protocol):
    name: str

    def generate(self, split: str, n: int, seed: int) -> list[dict]: ...

    def verify(self, completion: str, answer: str) -> Score: ...


def answer_response(task: Task, answer: str) -> str | None:
    """``task.answer_response(answer)``: a response stating ``answer`` in the task's format, or None
    when the task has no such method (it is optional for plugins)."""
    fn = getattr(task, "answer_response", None)
    return fn(str(answer)) if callable(fn) else None


def hinted_prompt(task: Task, prompt, answer: str):
    """The prompt (text or chat messages) with ``answer`` given as a hint: ``task.hinted_prompt``
    when the task has one, else "The answer is X." appended to the text or to the last user
    message (a new user message when there is none). The prompt itself is not changed."""
    fn = getattr(task, "hinted_prompt", None)
    if callable(fn):
        return fn(prompt, str(answer))
    hint = f"The answer is {answer}."
    if isinstance(prompt, str):
        return f"{prompt.rstrip()} {hint}" if prompt.strip() else hint
    messages = [dict(m) for m in prompt]
    users = [j for j, m in enumerate(messages) if m.get("role") == "user"]
    if users:
        last = messages[users[-1]]
        last["content"] = f"{str(last.get('content', '')).rstrip()}\n\n{hint}"
    else:
        messages.append({"role": "user", "content": hint})
    return messages


def _finite(x) -> float | None:
    # numbers.Real covers bool, int, float and numpy scalars; not None, str or tensors
    if isinstance(x, numbers.Real):
        x = float(x)
        return x if math.isfinite(x) else None
    return None


def _as_score(value) -> Score:
    """A task's verdict as a Score with a finite float reward; anything else is an error scoring 0.

    A plain number is taken as the reward (some plugins return just that).
    """
    reward = _finite(value.reward if isinstance(value, Score) else value)
    if reward is None:
        got = f"the reward {value.reward!r:.100}" if isinstance(value, Score) else f"{value!r:.100}"
        return _error_score(f"verify returned {got}, not a finite number")
    if not isinstance(value, Score):
        return Score(reward, None, True, reward > 0)
    return value if type(value.reward) is float else dataclasses.replace(value, reward=reward)


def _error_score(message: str) -> Score:
    # "error" is what the training loop counts as verify_errors
    return Score(0.0, None, False, False, {"error": message[:300]})


def _verify_one(task: Task, completion: str, answer: str) -> Score:
    try:
        return _as_score(task.verify(completion, answer))
    except Exception as e:  # a plugin's bug must cost one sample, not the run
        return _error_score(f"verify raised {e!r}")


def verify_all(task: Task, completions: list[str], answers: list[str]) -> list[Score]:
    """Score many completions: in one batch when the task has ``verify_batch`` (e.g. a process pool).

    Never raises for a task's fault: a sample whose verification raises or gives
    no finite reward scores 0 with ``info["error"]``, and the others are scored.
    A ``verify_batch`` that raises or returns the wrong number of scores is
    replaced by ``verify`` sample by sample.
    """
    batch = getattr(task, "verify_batch", None)
    if callable(batch):
        try:
            scores = list(batch(completions, answers))
        except Exception as e:
            log.warning("verify_all: %s.verify_batch raised %r; verifying one sample at a time", type(task).__name__, e)
        else:
            if len(scores) == len(completions):
                return [_as_score(s) for s in scores]
            log.warning("verify_all: %s.verify_batch returned %d scores for %d samples; verifying one at a time",
                        type(task).__name__, len(scores), len(completions))
    return [_verify_one(task, c, a) for c, a in zip(completions, answers)]
