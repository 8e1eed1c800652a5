"""Reward functions: rule-based verification of final answers."""

from srft.rewards.math import (
    Verifier,
    extract_choice,
    extract_math_answer,
    last_boxed,
    normalize_answer,
    score_choice,
    score_math,
    split_think,
)

__all__ = [
    "Verifier",
    "extract_choice",
    "extract_math_answer",
    "last_boxed",
    "normalize_answer",
    "score_choice",
    "score_math",
    "split_think",
]
