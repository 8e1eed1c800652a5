"""Addition with an out-of-distribution split that shifts in kind, not in length.

The ``addition`` task's ``test_ood`` (four-digit sums) is a length shift that a tiny model does not
bridge: every method scores 0 there. This variant keeps the lengths (2-3 digit operands everywhere)
and moves one skill out of training instead: a *carry chain*, a column that receives a carry and
passes one on (in ``47+56=`` the tens column is ``4+5+1=10``). ``train`` and ``test_id`` have no
chain: every column step is either ``x+y=s`` with any sum or ``x+y+1=s`` with ``s`` below 10. Every
``test_ood`` problem has at least one chained column, ``x+y+1=1d``, a step whose two halves (adding
the carry, writing a two-digit sum) the model has practised only apart. The pre-training text is
drawn from the same chain-free train side, so the base model has not seen the combination either
(apart from its own noise). Prompt, response and verifier are the addition task's.
"""

from __future__ import annotations

import random

from srft.tasks.addition import AdditionTask, column_steps, is_heldout, sample_unique, split_rng


def has_carry_chain(a: int, b: int) -> bool:
    """Whether some column both receives a carry and produces one."""
    return any(c and s >= 10 for _, _, c, s in column_steps(a, b))


class CarryChainTask(AdditionTask):
    """Column addition; ``test_ood`` = the problems with a carry chain (see the module docstring)."""

    name = "addition-carry"

    def __init__(self, digits: tuple[int, int] = (2, 3), heldout_fraction: float = 0.1, style: str = "explicit"):
        super().__init__(digits=digits, ood_digits=digits, heldout_fraction=heldout_fraction, style=style)

    def _chained(self, split: str, rng: random.Random) -> bool:
        """Whether the next problem drawn for ``split`` has a carry chain."""
        return split == "test_ood"

    def generate(self, split: str, n: int, seed: int) -> list[dict]:
        # the test splits are addition-carry's in every variant, so that their figures compare
        rng = split_rng(CarryChainTask.name if split != "train" else self.name, split, seed)
        heldout = split != "train"

        def draw(r: random.Random):
            chained = self._chained(split, r)
            while True:
                item = self._draw(r, self.digits)
                if has_carry_chain(item[1], item[2]) == chained:
                    return item

        items = sample_unique(rng, n, draw, lambda key: is_heldout(key, self.heldout_fraction) == heldout)
        return [{"prompt": p, "answer": str(a + b), "demonstration": self.solve(a, b)} for p, a, b in items]

    def _draw_pretraining(self, rng: random.Random, digits) -> tuple[str, int, int]:
        while True:  # the train side only: no carry chain
            item = self._draw(rng, digits)
            if not has_carry_chain(item[1], item[2]):
                return item


class TaughtCarryTask(CarryChainTask):
    """``addition-carry`` whose ``train`` split also holds carry-chain problems (a fraction
    ``chain_fraction`` of it, 0.2 by default), each with its worked demonstration.

    The base model is ``addition-carry``'s, pre-trained on chain-free text: it solves about 1% of
    the chained ``test_ood`` problems. Training prompts with a chain show the missing step in
    their demonstrations, while the model's own rollouts on them are almost always wrong; so this
    is the regime where demonstrations carry what the model cannot find alone, and ``test_ood``
    (every problem chained) measures whether a method picks it up. ``test_id`` stays chain-free.
    """

    name = "addition-carry-taught"
    base_task = CarryChainTask.name  # the same chain-free pre-training text: share its base model

    def __init__(self, chain_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= chain_fraction <= 1.0:
            raise ValueError(f"chain_fraction must be in [0, 1], got {chain_fraction}")
        self.chain_fraction = chain_fraction

    def _chained(self, split: str, rng: random.Random) -> bool:
        return rng.random() < self.chain_fraction if split == "train" else split == "test_ood"
