"""Multi-digit addition, solved column by column.

Prompt and response
-------------------
The prompt is the bare problem, e.g. ``"347+285="``. The response works the
columns from the right and ends with the answer line ``#### <integer>``::

    7+5=12 >2 4+8+1=13 >32 3+2+1=6 >632 #### 632

Each column step is ``<digit>+<digit>[+1]=<sum>`` (the ``+1`` is the carry
from the previous column; a missing digit of the shorter operand is written
``0``), followed by ``>`` and the digits of the answer found so far. Every
step only needs a few nearby characters: the two digits of the current
column, the carry (visible in the previous sum) and the previous partial
answer, to which one digit is prepended.

Answer format (what ``verify`` scores): the response must END with
``#### <integer>`` (optional surrounding whitespace). Reward 1.0 when that
integer equals the gold answer, else 0.0. See :func:`score_final_answer`.

Styles
------
* ``explicit`` (the expert demonstrations, above): with the running partial
  answer after each column.
* ``terse`` (most of the pre-training "web" text): the same column steps
  without the running partial answer, so the final answer must be assembled
  at the end by reading the steps backwards::

      7+5=12 4+8+1=13 3+2+1=6 #### 632

  Pre-training text in this style is noisy (see :meth:`AdditionTask.pretraining_documents`),
  so demonstrations are off-policy for a model pre-trained on it: cleaner and
  more explicit than what the model itself writes. Both styles are accepted
  by the verifier.

Difficulty and splits
---------------------
The difficulty level is the number of digits of an operand. ``train`` and
``test_id`` draw each operand's digit count uniformly from ``digits``
(default 2-3); ``test_ood`` uses ``ood_digits`` (default 4-4), a genuine
length shift: a tiny model fine-tuned on 2-3 digit sums is not expected to do
well there. Problems are assigned to the train side or the held-out side by a
hash of the problem text (``heldout_fraction`` of them held out), so
``test_id`` and ``test_ood`` never overlap ``train`` for any seed, and
pre-training text only uses train-side problems.
"""

from __future__ import annotations

import hashlib
import random
import re

from srft.scoring import Score
from srft.tasks.base import SPLITS

ANSWER_RE = re.compile(r"####[ \t]*(-?\d+)")
ANSWER_AT_END_RE = re.compile(r"####[ \t]*(-?\d+)\s*\Z")


# --------------------------------------------------------------------------- shared helpers
def score_final_answer(completion: str, answer: str) -> Score:
    """Score a completion that must end with ``#### <integer>``.

    Pure extraction + comparison. ``extracted`` is the last ``#### <int>`` found
    anywhere (so a metric can tell "right number, bad format" apart);
    ``format_ok`` is true only when that answer line ends the completion.
    """
    completion = completion or ""
    matches = ANSWER_RE.findall(completion)
    extracted = matches[-1] if matches else None
    format_ok = ANSWER_AT_END_RE.search(completion) is not None
    correct = extracted is not None and _canon_int(extracted) == _canon_int(str(answer))
    if extracted is None:
        reason = "no_answer"
    elif not format_ok:
        reason = "answer_not_at_end"
    elif not correct:
        reason = "wrong_answer"
    else:
        reason = "ok"
    reward = 1.0 if (format_ok and correct) else 0.0
    return Score(reward=reward, extracted=extracted, format_ok=format_ok, correct=correct, info={"reason": reason})


def _canon_int(s: str) -> int | None:
    try:
        return int(s.strip())
    except ValueError:
        return None


def is_heldout(key: str, fraction: float) -> bool:
    """Stable assignment of a problem to the held-out side (independent of seeds)."""
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")
    return (h % 1_000_000) < round(fraction * 1_000_000)


def split_rng(task_name: str, split: str, seed: int) -> random.Random:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    # String seeds are hashed with SHA-512 by `random`, so this is stable across runs.
    return random.Random(f"{task_name}/{split}/{seed}")


def sample_unique(rng: random.Random, n: int, draw, keep, max_tries_per_item: int = 200) -> list:
    """Draw ``n`` distinct items (by their key) that pass ``keep``."""
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > max_tries_per_item * (n + 10):
            raise ValueError(f"could not draw {n} distinct problems (space too small for this split)")
        item = draw(rng)
        key = item[0]
        if key in seen or not keep(key):
            continue
        seen.add(key)
        out.append(item)
    return out


# --------------------------------------------------------------------------- the solver
def column_steps(a: int, b: int) -> list[tuple[int, int, int, int]]:
    """Columns from the right as (digit_a, digit_b, carry_in, column_sum)."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append((x, y, carry, s))
        carry = s // 10
    return steps


def render_solution(steps, style: str = "explicit") -> tuple[str, str]:
    """Render column steps (possibly containing mistakes) consistently.

    The carry of each step is taken from the *written* sum of the previous one
    and the final answer is assembled from the written sums, so a mistake
    propagates the way it would on paper. Returns (response, final_answer).
    """
    parts, partial = [], ""
    for i, (x, y, c, s) in enumerate(steps):
        last = i == len(steps) - 1
        term = f"{x}+{y}" + ("+1" if c else "") + f"={s}"
        partial = (str(s) if last else str(s % 10)) + partial
        if style == "explicit":
            term += f" >{partial}"
        parts.append(term)
    final = str(int(partial))
    return " ".join(parts) + f" #### {final}", final


class AdditionTask:
    """Column addition of two non-negative integers (see module docstring)."""

    name = "addition"

    def __init__(
        self,
        digits: tuple[int, int] = (2, 3),
        ood_digits: tuple[int, int] = (4, 4),
        heldout_fraction: float = 0.1,
        style: str = "explicit",
    ):
        if style not in ("explicit", "terse"):
            raise ValueError("style must be 'explicit' or 'terse'")
        self.digits = tuple(digits)
        self.ood_digits = tuple(ood_digits)
        self.heldout_fraction = heldout_fraction
        self.style = style

    # ----------------------------------------------------------------- problems
    @staticmethod
    def prompt(a: int, b: int) -> str:
        return f"{a}+{b}="

    @staticmethod
    def _rand_int(rng: random.Random, n_digits: int) -> int:
        lo = 0 if n_digits == 1 else 10 ** (n_digits - 1)
        return rng.randint(lo, 10**n_digits - 1)

    def _draw(self, rng: random.Random, digit_range) -> tuple[str, int, int]:
        a = self._rand_int(rng, rng.randint(*digit_range))
        b = self._rand_int(rng, rng.randint(*digit_range))
        return self.prompt(a, b), a, b

    def _draw_pretraining(self, rng: random.Random, digits) -> tuple[str, int, int]:
        """A problem for the pre-training text (a subclass may restrict it to its train side)."""
        return self._draw(rng, digits)

    def solve(self, a: int, b: int, style: str | None = None) -> str:
        """The expert's step-by-step solution (always correct)."""
        response, final = render_solution(column_steps(a, b), style or self.style)
        assert int(final) == a + b
        return response

    def generate(self, split: str, n: int, seed: int) -> list[dict]:
        rng = split_rng(self.name, split, seed)
        digit_range = self.ood_digits if split == "test_ood" else self.digits
        heldout = split != "train"
        items = sample_unique(
            rng,
            n,
            lambda r: self._draw(r, digit_range),
            lambda key: is_heldout(key, self.heldout_fraction) == heldout,
        )
        return [
            {"prompt": p, "answer": str(a + b), "demonstration": self.solve(a, b)}
            for p, a, b in items
        ]

    def verify(self, completion: str, answer: str) -> Score:
        return score_final_answer(completion, answer)

    @staticmethod
    def answer_response(answer: str) -> str:
        """A response that states ``answer`` as ``verify`` expects (see :func:`srft.tasks.base.answer_response`)."""
        return f"#### {answer}"

    # ----------------------------------------------------------------- pre-training text
    def pretraining_documents(
        self,
        n: int,
        seed: int,
        digits: tuple[int, int] = (1, 3),
        step_error: float = 0.3,
        final_error: float = 0.1,
        explicit_fraction: float = 0.15,
        explicit_step_error: float = 0.1,
        fact_fraction: float = 0.15,
    ) -> list[str]:
        """Noisy "web-like" text about addition, from train-side problems only.

        A mix of (1) worked solutions, mostly in the terse style, where each
        column sum is wrong with probability ``step_error`` (a forgotten carry or
        an off-by-one) and the final answer has a typo with probability
        ``final_error``; a fraction ``explicit_fraction`` in the explicit style
        with fewer mistakes; and (2) answer-only lines written differently from
        the prompt format (``"347 + 285 = 632"``), sometimes wrong. A model
        pre-trained on it knows the format and the procedure but makes mistakes
        at a rate set by these knobs.
        """
        rng = random.Random(f"{self.name}/pretrain/{seed}")
        docs = []
        while len(docs) < n:
            prompt, a, b = self._draw_pretraining(rng, digits)
            if is_heldout(prompt, self.heldout_fraction):
                continue
            u = rng.random()
            if u < fact_fraction:
                total = a + b
                if rng.random() < step_error:
                    total = _typo(rng, total)
                docs.append(f"{a} + {b} = {total}")
                continue
            explicit = u < fact_fraction + explicit_fraction
            p_err = explicit_step_error if explicit else step_error
            steps = _noisy_steps(rng, a, b, p_err)
            response, final = render_solution(steps, "explicit" if explicit else "terse")
            if rng.random() < final_error:
                response = response[: response.rindex("####")] + f"#### {_typo(rng, int(final))}"
            docs.append(prompt + response)
        return docs


def _noisy_steps(rng: random.Random, a: int, b: int, p_err: float):
    """Column steps where each written sum is wrong with probability p_err."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        c = carry
        s = x + y + c
        if rng.random() < p_err:
            kind = rng.random()
            if c and kind < 0.4:
                c, s = 0, x + y  # forgot the carry
            else:
                s = max(0, min(19, s + rng.choice((-1, 1))))
        steps.append((x, y, c, s))
        carry = s // 10
    return steps


def _typo(rng: random.Random, value: int) -> int:
    digits = list(str(value))
    i = rng.randrange(len(digits))
    choices = [d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0" and len(digits) > 1)]
    digits[i] = rng.choice(choices)
    return int("".join(digits))
