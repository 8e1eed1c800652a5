"""The verdict type shared by tasks and reward functions.

It lives apart from both so that neither has to import the other for it: ``srft.rewards``
returns it, ``srft.tasks`` returns and checks it (``srft.tasks.base`` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Score:
    """A verifier's verdict with its parts, so that metrics can say *why*."""

    reward: float  # 1.0 for a correct final answer in the required format, else 0.0
    extracted: str | None  # the final answer found in the completion, None if none
    format_ok: bool  # an answer in the required format was found
    correct: bool  # the extracted answer equals the gold answer
    info: dict = field(default_factory=dict)  # anything else (timeouts, errors)
