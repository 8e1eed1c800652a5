"""Arithmetic expressions, evaluated one operation at a time.

Prompt and response
-------------------
The prompt is an expression over single-digit numbers with ``+ - *`` and at
most one pair of parentheses, followed by ``=``, e.g. ``"(3+4)*2-5="``. The
response rewrites the expression after each single operation, separated by
``=``, and ends with the answer line ``#### <integer>``::

    7*2-5=14-5=9 #### 9

Order of operations: the innermost parentheses first (a parenthesised single
number loses its parentheses in the same step), then the leftmost ``*``, then
the leftmost ``+`` or ``-``. Each step copies the previous expression with one
local change, so it needs only nearby characters. Problems are drawn so that
no intermediate value is negative or larger than ``max_value``.

Answer format (what ``verify`` scores): the response must END with
``#### <integer>``; reward 1.0 when that integer equals the gold answer, else
0.0 (shared with the addition task, see
:func:`srft.tasks.addition.score_final_answer`).

Difficulty and splits
---------------------
The difficulty level is the number of operators: ``train``/``test_id`` draw it
from ``ops`` (default 2-3), ``test_ood`` from ``ood_ops`` (default 4-5, longer
expressions with more steps). The held-out side is chosen by a hash of the
prompt, as in the addition task, so test splits never overlap ``train``.
"""

from __future__ import annotations

import random

from srft.scoring import Score
from srft.tasks.addition import is_heldout, sample_unique, score_final_answer, split_rng


def render(tokens: list) -> str:
    return "".join(str(t) for t in tokens)


def _apply(op: str, x: int, y: int) -> int:
    return x + y if op == "+" else x - y if op == "-" else x * y


def _pick_op(tokens: list, lo: int, hi: int, rng: random.Random | None = None, slip: bool = False) -> int:
    """Index of the operator to apply in tokens[lo:hi] (a flat stretch)."""
    ops = [i for i in range(lo, hi) if tokens[i] in ("+", "-", "*")]
    if slip:  # a precedence mistake: just take the leftmost operator
        return ops[0]
    for i in ops:
        if tokens[i] == "*":
            return i
    return ops[0]


def reduce_once(tokens: list, rng: random.Random | None = None, p_err: float = 0.0) -> list:
    """Apply one operation (possibly wrongly, with probability p_err)."""
    tokens = list(tokens)
    if "(" in tokens:
        # innermost pair: the last "(" before the first ")"
        close = tokens.index(")")
        open_ = max(i for i in range(close) if tokens[i] == "(")
        lo, hi = open_ + 1, close
    else:
        open_ = close = None
        lo, hi = 0, len(tokens)
    err = rng is not None and rng.random() < p_err
    slip = err and rng.random() < 0.3
    i = _pick_op(tokens, lo, hi, rng, slip=slip)
    value = _apply(tokens[i], tokens[i - 1], tokens[i + 1])
    if err and not slip:
        value = max(0, value + rng.choice((-2, -1, 1, 2)))
    tokens[i - 1 : i + 2] = [value]
    if open_ is not None and close - open_ - 1 - 2 == 1:  # the parentheses now hold one number
        del tokens[open_ + 2]
        del tokens[open_]
    return tokens


def solve_steps(tokens: list, rng: random.Random | None = None, p_err: float = 0.0) -> list[list]:
    steps = []
    while len(tokens) > 1:
        tokens = reduce_once(tokens, rng, p_err)
        steps.append(tokens)
    return steps


class ExpressionTask:
    """Step-by-step evaluation of small arithmetic expressions (see module docstring)."""

    name = "expression"

    def __init__(
        self,
        ops: tuple[int, int] = (2, 3),
        ood_ops: tuple[int, int] = (4, 5),
        max_value: int = 99,
        paren_prob: float = 0.4,
        heldout_fraction: float = 0.1,
    ):
        self.ops = tuple(ops)
        self.ood_ops = tuple(ood_ops)
        self.max_value = max_value
        self.paren_prob = paren_prob
        self.heldout_fraction = heldout_fraction

    def _draw_tokens(self, rng: random.Random, op_range) -> list:
        while True:
            k = rng.randint(*op_range)
            nums = [rng.randint(1, 9) for _ in range(k + 1)]
            ops = [rng.choice("+-*") for _ in range(k)]
            tokens: list = [nums[0]]
            for o, x in zip(ops, nums[1:]):
                tokens += [o, x]
            if k >= 2 and rng.random() < self.paren_prob:
                # wrap operands s..e (at least two, not all of them)
                s = rng.randint(0, k - 1)
                e = rng.randint(s + 1, k)
                if not (s == 0 and e == k):
                    tokens = tokens[: 2 * s] + ["("] + tokens[2 * s : 2 * e + 1] + [")"] + tokens[2 * e + 1 :]
            if self._valid(tokens):
                return tokens

    def _valid(self, tokens: list) -> bool:
        for step in solve_steps(tokens):
            if any(isinstance(t, int) and not (0 <= t <= self.max_value) for t in step):
                return False
        return True

    def _draw(self, rng: random.Random, op_range):
        tokens = self._draw_tokens(rng, op_range)
        return render(tokens) + "=", tokens

    @staticmethod
    def _response(steps: list[list]) -> str:
        return "=".join(render(s) for s in steps) + f" #### {steps[-1][0]}"

    def solve(self, tokens: list) -> str:
        """The expert's step-by-step solution (always correct)."""
        return self._response(solve_steps(tokens))

    def generate(self, split: str, n: int, seed: int) -> list[dict]:
        rng = split_rng(self.name, split, seed)
        op_range = self.ood_ops if split == "test_ood" else self.ops
        heldout = split != "train"
        items = sample_unique(
            rng, n, lambda r: self._draw(r, op_range), lambda key: is_heldout(key, self.heldout_fraction) == heldout
        )
        rows = []
        for prompt, tokens in items:
            steps = solve_steps(tokens)
            rows.append({"prompt": prompt, "answer": str(steps[-1][0]), "demonstration": self._response(steps)})
        return rows

    def verify(self, completion: str, answer: str) -> Score:
        return score_final_answer(completion, answer)

    @staticmethod
    def answer_response(answer: str) -> str:
        """A response that states ``answer`` as ``verify`` expects (see :func:`srft.tasks.base.answer_response`)."""
        return f"#### {answer}"

    def pretraining_documents(
        self,
        n: int,
        seed: int,
        ops: tuple[int, int] = (1, 3),
        step_error: float = 0.12,
        final_error: float = 0.05,
        fact_fraction: float = 0.15,
    ) -> list[str]:
        """Noisy "web-like" text: worked evaluations where each step is wrong with
        probability ``step_error`` (an arithmetic slip or a precedence mistake),
        the final answer has a typo with probability ``final_error``, mixed with
        answer-only lines (``"3 + 4 * 2 = 11"``). Train-side problems only."""
        rng = random.Random(f"{self.name}/pretrain/{seed}")
        docs = []
        while len(docs) < n:
            prompt, tokens = self._draw(rng, ops)
            if is_heldout(prompt, self.heldout_fraction):
                continue
            if rng.random() < fact_fraction:
                value = solve_steps(tokens)[-1][0]
                if rng.random() < step_error:
                    value = max(0, value + rng.choice((-2, -1, 1, 2)))
                docs.append(" ".join(str(t) for t in tokens) + f" = {value}")
                continue
            steps = solve_steps(tokens, rng, step_error)
            final = steps[-1][0]
            if rng.random() < final_error:
                final = max(0, final + rng.choice((-1, 1)))
            docs.append(prompt + "=".join(render(s) for s in steps) + f" #### {final}")
        return docs
