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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

SPLITS = ("train", "test_id", "test_ood")


@dataclass(frozen=True)
class Score:
    """A verifier's verdict with its parts, so that metrics can say *why*."""

    reward: float  # 1.0 for a correct final answer in the required format, else 0.0
    extracted: str | None  # the final answer found in the completion, None if none
    format_ok: bool  # an answer in the required format was found
    correct: bool  # the extracted answer equals the gold answer
    info: dict = field(default_factory=dict)  # anything else (timeouts, errors)


@runtime_checkable
class Task(Protocol):
    name: str

    def generate(self, split: str, n: int, seed: int) -> list[dict]: ...

    def verify(self, completion: str, answer: str) -> Score: ...


def verify_all(task: Task, completions: list[str], answers: list[str]) -> list[Score]:
    """Score many completions: in one batch when the task has ``verify_batch`` (e.g. a process pool)."""
    batch = getattr(task, "verify_batch", None)
    if callable(batch):
        return batch(completions, answers)
    return [task.verify(c, a) for c, a in zip(completions, answers)]
