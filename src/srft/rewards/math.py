"""Rule-based verification of final answers: math expressions and multiple choice.

Three layers:

* pure extraction functions (``last_boxed``, ``extract_math_answer``,
  ``extract_choice``): string scanning only, linear in the input length;
* ``score_math`` / ``score_choice``: turn a completion and a gold answer into a
  :class:`~srft.tasks.base.Score`. ``score_math`` compares with ``math_verify``
  (sympy) *without* any timeout of its own, so on adversarial input it can run
  for a very long time: call it directly only on trusted input;
* :class:`Verifier`: scores batches in a pool of worker processes with a hard
  per-sample deadline. A sample that runs past the deadline, or whose worker
  dies, scores 0 (``info={"timeout": True}`` / ``info={"error": ...}``), the
  worker is replaced, and nothing is raised to the caller.

Which text is searched: the answer part, i.e. the text after the last
``</think>`` (the whole completion without one), cut at a ``<think>`` that is
never closed. An answer that appears only inside the reasoning is not credited
(``info["how"] = "think_only"``) unless ``think_answers=True``
(``score_math``/``score_choice``/``Verifier`` argument), which credits it with
``info["from_think"] = True``.

How two math answers are compared (:func:`verify_math_answers`):

* strings: equal after removing presentation-only markup (:func:`normalize_answer`;
  a space is kept only between two digits, "1 2" is not "12", and after a
  control word before a letter, "\\pi r" is not "\\pir");
* units: one trailing unit (``\\text{ cm}``, ``\\mbox{ inches}^2``, or a common
  unit word after a number, "5 cm") is split off both sides. Different units
  (singular/plural aside) score 0; a unit on one side only is ignored ("5" for
  "5\\text{ cm}" scores 1). math_verify's own unit stripping is off: it deletes
  any trailing ``\\text{...}`` and words such as "m", "t", "ab". Lost with it:
  units not written as above ("5 furlongs", "2\\pi cm") are read as variables,
  and equivalent units in different words ("100 cm" vs "1 m") score 0;
* numbers (plain, ``6.73\\times 10^{-5}``, ``1.04e-3``): exactly for an integer
  gold, else at the gold's precision (within half a unit of its last decimal
  place: "3.1416" is "3.14", "12345.68" is not "12345.67"). The same rounding
  is handed to math_verify when the prediction needs sympy (``\\pi`` is "3.14");
* anything else: math_verify (sympy), which rounds floats to 6 places when the
  gold is not a number.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections import deque
from decimal import Decimal, InvalidOperation, localcontext
from multiprocessing.connection import wait as _conn_wait
from typing import NamedTuple

from srft.scoring import Score

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

log = logging.getLogger(__name__)

# An extracted answer longer than this is not a final answer (the longest gold
# in the benchmarks is a few hundred characters); it is scored 0 without sympy.
MAX_ANSWER_CHARS = 2000

# ---------------------------------------------------------------------------
# extraction
# ---------------------------------------------------------------------------



def split_think(text: str) -> tuple[str, str]:
    """Return (reasoning, answer part) of a completion.

    The answer part is the text after the last ``</think>`` (the whole text
    without one), cut at a ``<think>`` that is never closed: a truncated
    completion is still reasoning. The reasoning is everything else, in order.
    """
    end = text.rfind("</think>")
    start = end + len("</think>") if end >= 0 else 0
    opened = text.find("<think>", start)
    stop = opened if opened >= 0 else len(text)
    return text[:start] + text[stop:], text[start:stop]


_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.DOTALL)


def _brace_group(text: str, start: int) -> int:
    """Index just past the ``}`` closing the ``{`` at ``text[start]``, or -1 if unclosed.

    Escaped braces (``\\{``, ``\\}``) do not count.
    """
    depth = 0
    for m in _BRACE_TOKEN.finditer(text, start):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return m.end()
    return -1


def _all_brace_groups(text: str) -> dict[int, int]:
    """For every ``{`` that is closed: its index -> index just past its ``}``. One pass."""
    out: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE_TOKEN.finditer(text):
        c = m.group()
        if c == "{":
            stack.append(m.start())
        elif c == "}" and stack:
            out[stack.pop()] = m.end()
    return out


_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])[ \t]*")
_BOX_TOKEN = re.compile(r"[^\s$]+")


def _box_content(text: str, m: re.Match, groups: dict[int, int] | None) -> str | None:
    i = m.end()
    if i >= len(text):
        return None
    if text[i] == "{":
        end = groups.get(i, -1) if groups is not None else _brace_group(text, i)
        if end < 0:
            return None
        return text[i + 1 : end - 1].strip() or None
    # "\boxed 5": one token up to whitespace or a math delimiter
    t = _BOX_TOKEN.match(text, i)
    if t is None:
        return None
    tok = t.group(0)
    if tok.startswith("\\") and not tok[1:2].isalpha():
        return None
    return tok.strip() or None


def last_boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    Nested braces are matched; an unclosed box (truncated output) is skipped in
    favour of the previous one. Returns None when there is none (or it is empty).
    Linear in the length of the text.
    """
    boxes = list(_BOX_RE.finditer(text))
    if not boxes:
        return None
    # the common case: the last box is closed (one scan from it to the end)
    content = _box_content(text, boxes[-1], None)
    if content is not None or len(boxes) == 1:
        return content
    groups = _all_brace_groups(text)
    for m in reversed(boxes[:-1]):
        content = _box_content(text, m, groups)
        if content is not None:
            return content
    return None


# "The final answer is X", "the answer is: X", "Answer: X", "**Answer:** X".
# Quantifiers are bounded so the scan stays linear on adversarial whitespace.
_ANSWER_LINE = re.compile(
    r"(?:final\s{1,3}answer|the\s{1,3}answer|answer)\s{0,3}(?:\*\*)?\s{0,3}(?:is\s{0,3}:?|:)(?:\*\*)?[ \t]{0,5}([^\n]+)",
    re.IGNORECASE,
)
_HASH_LINE = re.compile(r"(?:^|[ \t])####[ \t]{0,8}([^\n]+)", re.MULTILINE)  # GSM8K style, also mid-line


def _clean_answer_line(ans: str) -> str | None:
    ans = ans.strip()
    # a box on the answer line wins
    boxed = last_boxed(ans)
    if boxed:
        return boxed
    for a, b in (("**", "**"), ("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        # strip one layer of markup around the whole line, or a trailing "$." etc.
        if ans.startswith(a):
            close = ans.find(b, len(a))
            if close > 0:
                ans = ans[len(a) : close]
            else:
                ans = ans[len(a) :]
            ans = ans.strip()
    ans = ans.rstrip(" .;,")
    ans = ans.strip("*").strip()
    if ans.endswith("$"):
        ans = ans.rstrip("$").strip()
    return ans or None


def _extract_math_in(text: str) -> tuple[str | None, str]:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    best_pos, best = -1, None
    for pat, how in ((_ANSWER_LINE, "answer_line"), (_HASH_LINE, "hash_line")):
        last = None
        for last in pat.finditer(text):
            pass
        if last is not None and last.start() > best_pos:
            cand = _clean_answer_line(last.group(1))
            if cand:
                best_pos, best = last.start(), (cand, how)
    if best is not None:
        return best
    return None, "none"


def _search_think(completion: str, find, think_answers: bool):
    """Run ``find`` (text -> (answer, how)) on the answer part, then on the reasoning.

    An answer found only in the reasoning is returned with how ``think:<how>``
    when ``think_answers``, else as (None, "think_only"): a guess written while
    thinking is not a final answer, and crediting it would teach the policy to
    stop before answering.
    """
    reasoning, tail = split_think(completion)
    ans, how = find(tail)
    if ans is not None or not reasoning:
        return ans, how
    ans, how = find(completion)
    if ans is None:
        return None, "none"
    return (ans, "think:" + how) if think_answers else (None, "think_only")


def extract_math_answer(completion: str, think_answers: bool = False) -> tuple[str | None, str]:
    """Final answer of a math completion and how it was found.

    Order: the last ``\\boxed{}``/``\\fbox{}``; else the last "The answer is X" /
    "Answer: X" / "#### X" line. Only the answer part (see :func:`split_think`)
    is searched unless ``think_answers``, which falls back to the whole completion.
    Returns (answer or None, how) with how in {"boxed", "answer_line",
    "hash_line", "none", "think_only"} (``think:`` prefixed when the answer
    came from the reasoning; "think_only": an answer exists only there, not taken).
    """
    return _search_think(completion, _extract_math_in, think_answers)


_LETTERS = "ABCDEFGHIJ"
_DIGITS = "123456789"
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s{0,3}\{([^{}]{0,200})\}")


def _labels_for(gold: str | None) -> str:
    if gold is not None and gold.strip() and gold.strip()[0] in _DIGITS:
        return _DIGITS
    return _LETTERS


def _choice_from_boxed(content: str, labels: str) -> str | None:
    s = content
    for _ in range(3):
        s2 = _TEXT_WRAP.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    s = s.replace("$", "").strip().strip("*").strip()
    cls = "[" + labels + "]"
    m = re.match(r"\(?(" + cls + r")\)?(?:$|[\s.:),])", s)
    if m:
        return m.group(1)
    return None


def _choice_patterns(labels: str) -> list[tuple[re.Pattern, str]]:
    """Phrases that state a choice, each capturing the label.

    A bare mention ("Option D: 5 is incorrect") is not a choice: a label counts
    only after "answer is/:" or "correct option is", before "is correct", after
    "choose", or alone on a line; and never when followed by "is wrong/not...".
    Quantifiers are bounded so that the scan stays linear.
    """
    cls = "[" + labels + "]"
    # the label with its usual markup: **C**, (C), $C$, \text{C}, \textbf{C}
    label = r"(?:\*\*|\$|\\text(?:bf)?\{)?[ \t]{0,2}\(?(" + cls + r")\)?(?![A-Za-z0-9])"
    after = r"(?:\*\*|\$|\})?"
    rejected = r"(?![ \t]{0,3}(?:\*\*|\$|\})?[ \t]{0,3}(?i:is|was)[ \t]{1,3}(?i:not|incorrect|wrong|false)\b)"
    lead = r"[ \t]{0,3}:?[ \t]{0,3}(?:\*\*)?[ \t]{0,3}(?:(?i:option|choice)[ \t]{1,3})?"
    return [
        # "the answer is (B)", "Answer: B", "**Answer:** D", "the final answer would be C"
        (re.compile(r"(?i:answer)(?:\*\*)?[ \t]{0,3}(?:(?i:is|would[ \t]{1,3}be|should[ \t]{1,3}be|must[ \t]{1,3}be)|:)"
                    + lead + label + after + rejected), "answer_line"),
        # "the correct option is C", "best choice: (B)"
        (re.compile(r"(?i:correct|right|best|final)[ \t]{1,3}(?i:option|choice|letter)(?:[ \t]{1,3}(?i:is))?"
                    + lead + label + after + rejected), "answer_line"),
        # "**C** is correct", "(C) is the right answer", "option C is the answer"
        (re.compile(r"(?<![A-Za-z0-9-])" + label + after
                    + r"[ \t]{1,3}(?i:is)[ \t]{1,3}(?:(?i:the)[ \t]{1,3})?(?i:correct|right|best|answer)\b"), "answer_line"),
        # "I choose B", "select (D)", "go with C"
        (re.compile(r"(?i:choose|select|pick|go[ \t]{1,3}with)" + lead + label + after + rejected), "answer_line"),
        # a line that is only the label: "B", "(B)", "**B**"
        (re.compile(r"^[ \t*]{0,5}\(?(" + cls + r")\)?[ \t*.]{0,5}$", re.MULTILINE), "label_line"),
    ]


_PATTERN_CACHE: dict[str, list[tuple[re.Pattern, str]]] = {}


def _last_match(pat: re.Pattern, text: str) -> re.Match | None:
    last = None
    for last in pat.finditer(text):
        pass
    return last


def _extract_choice_in(text: str, labels: str) -> tuple[str | None, str]:
    boxed = last_boxed(text)
    if boxed is not None:
        c = _choice_from_boxed(boxed, labels)
        if c is not None:
            return c, "boxed"
    pats = _PATTERN_CACHE.get(labels)
    if pats is None:
        pats = _PATTERN_CACHE[labels] = _choice_patterns(labels)
    # the final statement wins: a model that changes its mind says so last
    best, best_how = None, "none"
    for pat, how in pats:
        m = _last_match(pat, text)
        if m is not None and (best is None or m.start(1) > best.start(1)):
            best, best_how = m, how
    return (best.group(1), best_how) if best is not None else (None, "none")


def extract_choice(
    completion: str, labels: str = _LETTERS, think_answers: bool = False
) -> tuple[str | None, str]:
    """The chosen option label (``A``-``J``, or ``1``-``9`` with ``labels="123456789"``).

    The last ``\\boxed{}`` (``B``, ``(B)``, ``B) text``, ``\\text{B}``) wins;
    else the last explicit statement of a choice ("the answer is (B)",
    "Answer: B", "**C** is correct", "I choose C", a line holding only the
    label); mentions such as "Option D: ..." do not count. The reasoning
    inside ``<think>`` is searched only with ``think_answers`` (see
    :func:`extract_math_answer`).
    """
    return _search_think(completion, lambda t: _extract_choice_in(t, labels), think_answers)


# ---------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------

# Presentation-only markup: thin spaces (also digit-group separators, "1\,000"),
# \displaystyle, and \left/\right before a delimiter (never \leftarrow). "\\" is
# matched first so that the second backslash of a line break is not read as "\ ".
_MARKUP = re.compile(r"\\\\|\\[,!]|\\(?:left|right|displaystyle)(?![A-Za-z])|\\[;: ]|\\q?quad(?![A-Za-z])")
_WHITESPACE = re.compile(r"\s+")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:\.\d*)?|[+-]?\.\d+")


def _strip_math_delims(s: str) -> str:
    s = s.strip()
    for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
            s = s[len(a) : len(s) - len(b)].strip()
    return s


def _markup(m: re.Match) -> str:
    t = m.group()
    if t == "\\\\":
        return t
    return " " if t[1] in ";: q" else ""


def _space(m: re.Match) -> str:
    """Drop whitespace that math mode does not render ("2 i t" is "2it").

    Kept (as one space) only where deleting it changes the meaning: between two
    digits ("1 2" is not "12") and after a control word before a letter
    ("\\pi r" is not "\\pir").
    """
    s, i, j = m.string, m.start(), m.end()
    if i == 0 or j == len(s):
        return ""
    before, after = s[i - 1], s[j]
    if before.isdigit() and after.isdigit():
        return " "
    if before.isalpha() and after.isalpha():
        k = i - 1
        while k >= 0 and s[k].isalpha():
            k -= 1
        if k >= 0 and s[k] == "\\":
            return " "
    return ""


def _light(s: str) -> str:
    """Delimiters, ``\\dfrac`` and presentation-only markup removed, whitespace collapsed.

    This is what sympy reads: no space is dropped that could carry meaning.
    """
    s = _strip_math_delims(s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _MARKUP.sub(_markup, s)
    return _WHITESPACE.sub(" ", s).strip().rstrip(".").rstrip()


def _key(light: str) -> str:
    return _WHITESPACE.sub(_space, light)


def normalize_answer(s: str) -> str:
    """A light, conservative string normal form used only to accept exact matches fast.

    Removes math delimiters, spacing commands, ``\\left``/``\\right`` before a
    delimiter and ``\\displaystyle``; drops whitespace except between two
    digits and after a control word before a letter; maps ``\\dfrac``/``\\tfrac``
    to ``\\frac``; drops a trailing period.
    """
    return _key(_light(s))


# -- units --------------------------------------------------------------------

# A trailing unit in text markup, with an optional exponent: "5\text{ cm}", "864 \mbox{ inches}^2".
_TEXT_UNIT = re.compile(
    r"\\(?:text|textrm|mbox|mathrm|rm) ?\{ ?([A-Za-z][A-Za-z .\-/]{0,30})\} ?(\^ ?\{? ?-?\d ?\}?)?$"
)
# A bare unit word right after a number: "5 cm", "12 inches". A fixed list: a word
# after a number can also be a product of variables ("2 ab").
_WORD_UNITS = (
    "mm cm km meters? metres? inch(?:es)? feet foot ft yards? miles? "
    "seconds? sec minutes? min hours? hr days? weeks? months? years? "
    "degrees? dollars? cents? grams? kg pounds? lbs? ounces? liters? litres? ml units? square units"
)
_WORD_UNIT = re.compile(
    r"(?<=\d) ?((?:square |cubic |sq )?(?:" + "|".join(_WORD_UNITS.split()) + r"))(?: ?(\^ ?\{? ?-?\d ?\}?))?$"
)
# Text that is no unit: math-verify reads these itself (percent, "and" lists, constants).
_NOT_UNITS = {"and", "or", "percent", "percentage", "pct", "e", "i", "d", "T"}


def _singular(word: str) -> str:
    if len(word) > 4 and word.endswith(("ches", "shes", "xes", "sses")):
        return word[:-2]  # inches -> inch
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]  # cents -> cent, hours -> hour (not "ms", "s")
    return word


def split_unit(s: str) -> tuple[str, str | None]:
    """(value, unit key) of an answer (delimiters removed); the key is None without a trailing unit.

    The key is the unit's words in singular with its exponent ("inch^2"), so
    ``\\text{ inches}^2`` and ``\\mbox{inch}^{2}`` compare equal, ``cm`` and ``m`` do not.
    Only one trailing unit is split off: "3\\text{ hours and }20\\text{ minutes}"
    keeps its first part in the value.
    """
    m = _TEXT_UNIT.search(s) or _WORD_UNIT.search(s)
    if m is None or m.start() == 0:
        return s, None
    words = m.group(1).strip().rstrip(".").split()
    if not words or " ".join(words) in _NOT_UNITS or {"and", "or"} & set(words):
        return s, None
    exp = re.sub(r"[{} ]", "", m.group(2) or "")
    return s[: m.start()].rstrip(), " ".join(_singular(w) for w in words) + exp


# -- numbers ------------------------------------------------------------------

# 6.73\times 10^{-5}, 6.73\cdot10^{-5}, 10^{-5}, 1.04e-3 (math_verify reads the "e" as Euler's number)
_SCI_NUMBER = re.compile(
    r"(?:(?P<m>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\\(?:times|cdot) ?)?10\^(?:\{(?P<b>[+-]?\d{1,4})\}|(?P<c>\d))"
    r"|(?P<e_m>[+-]?(?:\d+(?:\.\d*)?|\.\d+)) ?[eE](?P<e_x>[+-]?\d{1,4})"
)


def parse_number(s: str) -> Decimal | None:
    """The exact value of a normalized plain or scientific number, else None."""
    try:
        if _PLAIN_NUMBER.fullmatch(s):
            return Decimal(s)
        m = _SCI_NUMBER.fullmatch(s)
        if m is None:
            return None
        if m.group("e_m") is not None:
            return Decimal(m.group("e_m")).scaleb(int(m.group("e_x")))
        exp = int(m.group("b") or m.group("c"))
        return Decimal(m.group("m") or "1").scaleb(exp)
    except (InvalidOperation, ValueError):
        return None


def _gold_places(g: Decimal) -> int | None:
    """Decimal places the gold is given to; None for an integer (compared exactly)."""
    if g == g.to_integral_value():
        return None
    return max(0, -g.as_tuple().exponent)


def numbers_equal(p: Decimal, g: Decimal) -> bool:
    """Integer gold: exactly equal. Else equal at the gold's precision: the
    prediction is within half a unit of the gold's last decimal place (3.1416
    is 3.14; 12345.68 is not 12345.67; 0.0000672 is not 0.0000673)."""
    places = _gold_places(g)
    if places is None:
        return p == g
    with localcontext() as ctx:
        ctx.prec = 200  # digits enough that rounding the difference cannot flip the comparison
        return abs(p - g) * 2 < Decimal(1).scaleb(-places)


# -- comparison ---------------------------------------------------------------

# a number written in a base: 52_8, 4210_{5}
_BASE_NUMBER = re.compile(r"(\d[0-9A-Za-z]*)_\{?(\d+)\}?")
_FAST_MAX_CHARS = 60


class _Pair(NamedTuple):
    """A prediction and a gold: keys of the whole answers, values (units split off)
    as sympy reads them and as keys, unit keys, numbers."""

    p: str
    g: str
    pv: str
    gv: str
    pk: str
    gk: str
    pu: str | None
    gu: str | None
    pn: Decimal | None
    gn: Decimal | None


def _pair(pred: str, gold: str) -> _Pair:
    p, g = _light(pred), _light(gold)
    (pv, pu), (gv, gu) = split_unit(p), split_unit(g)
    pk, gk = _key(pv), _key(gv)
    short = len(pk) <= _FAST_MAX_CHARS and len(gk) <= _FAST_MAX_CHARS
    pn = parse_number(pk) if short else None
    gn = parse_number(gk) if short else None
    return _Pair(_key(p), _key(g), pv, gv, pk, gk, pu, gu, pn, gn)


def _fast_verdict(x: _Pair) -> bool | None:
    """True/False when string or number comparison decides, else None (ask sympy)."""
    if x.p == x.g and x.p:
        return True
    if x.pu is not None and x.gu is not None and x.pu != x.gu:
        return False  # 5 m is not 5 cm; a unit on one side only is compared by value
    if x.pk == x.gk and x.pk:
        return True
    if len(x.pk) > _FAST_MAX_CHARS or len(x.gk) > _FAST_MAX_CHARS:
        return None
    gb = _BASE_NUMBER.fullmatch(x.gk)
    if gb:
        # math_verify drops the subscript: compare digits and base ourselves; the
        # base may be left out of the prediction
        pb = _BASE_NUMBER.fullmatch(x.pk)
        if pb:
            return pb.group(1).upper() == gb.group(1).upper() and int(pb.group(2)) == int(gb.group(2))
        return x.pk.upper() == gb.group(1).upper()
    if x.pn is not None and x.gn is not None:
        return numbers_equal(x.pn, x.gn)
    return None


def _fast_compare(pred: str, gold: str) -> bool | None:
    """True/False when the answer can be decided without sympy, else None."""
    return _fast_verdict(_pair(pred, gold))


_MV = None


def _math_verify():
    """Import math_verify lazily (it imports sympy, which takes a second)."""
    global _MV
    if _MV is None:
        import math_verify
        from latex2sympy2_extended import NormalizationConfig
        from math_verify import LatexExtractionConfig

        # math_verify warns once that its own timeouts are off: that is on purpose here.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        # The answer is extracted already and handed over boxed: read only the box
        # (no search for loose sub-expressions, which would compare a fragment).
        # Its unit stripping is off: it deletes any trailing \text{...} and words
        # such as "m", "t", "ab" (2 would equal 2ab); split_unit compares units instead.
        norm = NormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        )
        cfg = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False,
                                     normalization_config=norm)]
        reference = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
        _MV = (math_verify, cfg, reference)
    return _MV


def _parse_answer(s: str, reference: bool = False):
    mv, cfg, ref = _math_verify()
    s = _strip_math_delims(s)
    # the text is already one extracted answer: box it so the whole of it is read as LaTeX
    return mv.parse("\\boxed{" + s + "}", extraction_config=ref if reference else cfg, parsing_timeout=None)


# decimal places math_verify rounds floats to when the gold is not a number
_MV_ROUNDING = 6
# for an integer gold: enough places to tell any float prediction from it
_EXACT_ROUNDING = 12


def _sympy_verdict(x: _Pair) -> bool:
    """math_verify on the values (units split off), floats rounded at the gold's precision."""
    if x.pu is not None and x.gu is not None and x.pu != x.gu:
        return False
    mv, _, _ = _math_verify()
    # a number is handed over as a plain decimal: math_verify reads 1.04e-3 as 1.04*E - 3
    g = _parse_answer(format(x.gn, "f") if x.gn is not None else x.gv)
    p = _parse_answer(format(x.pn, "f") if x.pn is not None else x.pv)
    if not g or not p:
        return False
    if x.gn is None:
        rounding = _MV_ROUNDING
    else:
        places = _gold_places(x.gn)
        rounding = _EXACT_ROUNDING if places is None else places
    return bool(mv.verify(g, p, float_rounding=rounding, timeout_seconds=None))


def verify_math_answers(pred: str, gold: str) -> bool:
    """Equivalence of two extracted answers: the fast path, else math_verify. No timeout of its own."""
    x = _pair(pred, gold)
    fast = _fast_verdict(x)
    if fast is not None:
        return fast
    return _sympy_verdict(x)


def sympy_equal(pred: str, gold: str) -> bool:
    """The slow path alone (units compared, then math_verify; no string/number shortcut).

    No timeout of its own.
    """
    return _sympy_verdict(_pair(pred, gold))


def math_verify_equal(pred: str, gold: str) -> bool:
    """Plain math_verify: its own unit stripping and 6-place rounding, no rule of ours.

    The reference that the fast path is checked against in the tests. No timeout.
    """
    mv, _, _ = _math_verify()
    g, p = _parse_answer(gold, reference=True), _parse_answer(pred, reference=True)
    return bool(g and p and mv.verify(g, p, timeout_seconds=None))


def _no_answer(how: str = "none") -> Score:
    return Score(reward=0.0, extracted=None, format_ok=False, correct=False, info={"how": how})


def _info(how: str) -> dict:
    return {"how": how, "from_think": True} if how.startswith("think:") else {"how": how}


def _verdict(extracted: str, correct: bool, info: dict) -> Score:
    return Score(
        reward=1.0 if correct else 0.0, extracted=extracted, format_ok=True, correct=bool(correct), info=info
    )


def score_math(completion: str, gold: str, *, think_answers: bool = False) -> Score:
    """Score a math completion against a gold answer (LaTeX or plain).

    reward 1 iff an answer is extracted (see :func:`extract_math_answer`) and
    it is equivalent to ``gold`` (:func:`verify_math_answers`). No timeout: use
    :class:`Verifier` on untrusted completions.
    """
    extracted, how = extract_math_answer(completion, think_answers)
    if extracted is None:
        return _no_answer(how)
    info = _info(how)
    if len(extracted) > MAX_ANSWER_CHARS:
        return _verdict(extracted[:200], False, {**info, "too_long": True})
    try:
        ok = verify_math_answers(extracted, gold)
    except Exception as e:  # math_verify normally swallows its errors; be sure
        return _verdict(extracted, False, {**info, "error": repr(e)[:300]})
    return _verdict(extracted, ok, info)


def score_choice(completion: str, gold: str, *, think_answers: bool = False) -> Score:
    """Score a multiple-choice completion against a gold label (``A``-``J`` or ``1``-``9``)."""
    g = gold.strip().strip("()").strip().upper()
    labels = _labels_for(g)
    extracted, how = extract_choice(completion, labels, think_answers)
    if extracted is None:
        return _no_answer(how)
    return _verdict(extracted, extracted == g, _info(how))


_CHOICE_GOLD = re.compile(r"\(?[A-J]\)?")


def _is_choice_gold(gold: str) -> bool:
    return bool(_CHOICE_GOLD.fullmatch(gold.strip()))


# ---------------------------------------------------------------------------
# the process pool
# ---------------------------------------------------------------------------


class _SoftTimeout(BaseException):
    """Raised by the worker's interval timer; a BaseException so that no library swallows it."""


def _on_alarm(signum, frame):  # pragma: no cover - runs in the worker
    raise _SoftTimeout()


def _worker_main(conn, soft_timeout_s: float, memory_limit_mb: int | None) -> None:  # pragma: no cover
    """Worker loop: receive (job_id, pred, gold), answer (job_id, status, value)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb:
        try:
            import resource

            lim = int(memory_limit_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
        except (ImportError, ValueError, OSError):
            pass
    _math_verify()  # pay the sympy import before saying ready
    use_timer = soft_timeout_s and soft_timeout_s > 0 and hasattr(signal, "setitimer")
    if use_timer:
        signal.signal(signal.SIGALRM, _on_alarm)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        job_id, pred, gold = msg
        try:
            if use_timer:
                signal.setitimer(signal.ITIMER_REAL, soft_timeout_s)
            try:
                out = ("ok", verify_math_answers(pred, gold))
            finally:
                if use_timer:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            out = ("timeout", None)
        except MemoryError:
            out = ("error", "MemoryError")
        except Exception as e:
            out = ("error", repr(e)[:300])
        try:
            conn.send((job_id, *out))
        except (EOFError, OSError):
            return


def _worker_entry() -> None:  # pragma: no cover - runs in the worker process
    """``python -c`` entry point of a worker: argv = [fd, soft_timeout_s, memory_limit_mb]."""
    import sys
    from multiprocessing.connection import Connection

    fd, soft, mem = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    _worker_main(Connection(int(fd)), soft, mem or None)


def _worker_env() -> dict:
    """The parent's environment, with the directory holding ``srft`` first on PYTHONPATH."""
    import srft

    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(srft.__file__)))
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = root if not old else root + os.pathsep + old
    # one sympy per worker: no thread pools inside
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(k, "1")
    return env


class _Worker:
    """One worker: a fresh interpreter (``python -c``) talking over a socket pair.

    A plain subprocess rather than ``multiprocessing.Process``: it never
    re-imports the caller's ``__main__`` (scripts without a main guard,
    notebooks, ``python -c`` all work) and never forks a process holding
    torch threads.
    """

    __slots__ = ("proc", "conn", "ready", "job", "deadline", "started")

    def __init__(self, soft_timeout_s: float, memory_limit_mb: int | None, env: dict):
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        try:
            fd = theirs.fileno()
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from srft.rewards.math import _worker_entry; _worker_entry()",
                    str(fd),
                    repr(float(soft_timeout_s)),
                    str(int(memory_limit_mb or 0)),
                ],
                pass_fds=(fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                env=env,
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False
        self.job = None  # (index, pred, gold, how)
        self.deadline = 0.0
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def exitcode(self) -> int | None:
        try:
            return self.proc.wait(timeout=1)
        except Exception:
            return self.proc.poll()

    def kill(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # pragma: no cover
            pass
        try:
            self.conn.close()
        except Exception:  # pragma: no cover
            pass


class Verifier:
    """Batch scoring with a hard per-sample timeout, in worker processes.

    ``kind``: ``"math"`` (math_verify), ``"choice"`` (option letter) or
    ``"auto"`` (choice when the gold is a single letter A-J, else math).
    Choice scoring and answers decidable by string/number comparison are done
    in the calling process (linear-time string work only; ``fast_path=False``
    sends every extracted math answer to the workers); everything that needs
    sympy goes to a worker. Each sample sent to a worker has
    ``timeout_s`` seconds from dispatch: past that, the worker is killed and
    replaced and the sample scores 0 with ``info["timeout"] = True``. A worker
    that dies scores its sample 0 with ``info["error"]``. Workers also
    interrupt themselves after ``soft_timeout_frac * timeout_s`` (0 disables
    this) where Python code can be interrupted, which keeps them alive in the
    common slow-sympy case; ``memory_limit_mb`` caps each worker's address
    space (None: no cap). ``think_answers``: credit an answer found only inside
    ``<think>`` (off by default, see :func:`extract_math_answer`).

    ``score_batch`` never raises for bad completions, hangs or crashes (only
    for a caller error such as lists of different lengths).
    """

    def __init__(
        self,
        kind: str = "auto",
        workers: int = 2,
        timeout_s: float = 5.0,
        *,
        memory_limit_mb: int | None = 3072,
        soft_timeout_frac: float = 0.8,
        fast_path: bool = True,
        startup_timeout_s: float = 120.0,
        think_answers: bool = False,
    ):
        if kind not in ("math", "choice", "auto"):
            raise ValueError(f"kind must be 'math', 'choice' or 'auto', not {kind!r}")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.kind = kind
        self.n_workers = int(workers)
        self.timeout_s = float(timeout_s)
        self.memory_limit_mb = memory_limit_mb
        self.soft_timeout_frac = float(soft_timeout_frac)
        self.fast_path = bool(fast_path)
        self.startup_timeout_s = float(startup_timeout_s)
        self.think_answers = bool(think_answers)
        self._env: dict | None = None
        self._workers: list[_Worker] = []
        self._closed = False
        self.n_timeouts = 0
        self.n_errors = 0
        self.n_restarts = 0
        self.n_in_process = 0
        self.n_in_pool = 0

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> "Verifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Stop the workers. Idempotent."""
        self._closed = True
        workers, self._workers = self._workers, []
        for w in workers:
            try:
                if w.job is None and w.alive():
                    w.conn.send(None)
            except Exception:
                pass
        deadline = time.monotonic() + 2.0
        for w in workers:
            try:
                w.proc.wait(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:
                pass
            w.kill()

    def _spawn(self) -> _Worker | None:
        try:
            if self._env is None:
                self._env = _worker_env()
            return _Worker(self.soft_timeout_frac * self.timeout_s, self.memory_limit_mb, self._env)
        except Exception as e:  # pragma: no cover - cannot start processes at all
            log.error("verifier: cannot start a worker: %r", e)
            return None

    def _ensure_workers(self) -> None:
        alive = []
        for w in self._workers:
            if w.alive() or w.job is not None:
                alive.append(w)
            else:  # died while idle
                w.kill()
                self.n_restarts += 1
        self._workers = alive
        while len(self._workers) < self.n_workers:
            w = self._spawn()
            if w is None:
                break
            self._workers.append(w)

    # -- scoring -----------------------------------------------------------

    def _kind_for(self, gold: str, kind: str | None) -> str:
        k = kind or self.kind
        if k == "auto":
            return "choice" if _is_choice_gold(gold) else "math"
        return k

    def score(self, completion: str, gold: str, kind: str | None = None) -> Score:
        return self.score_batch([completion], [gold], kinds=None if kind is None else [kind])[0]

    def score_batch(
        self, completions: list[str], golds: list[str], kinds: list[str | None] | None = None
    ) -> list[Score]:
        """Score ``completions[i]`` against ``golds[i]``; ``kinds[i]`` overrides the verifier's kind."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        if kinds is not None and len(kinds) != len(golds):
            raise ValueError(f"{len(kinds)} kinds for {len(golds)} gold answers")
        results: list[Score | None] = [None] * len(golds)
        jobs: deque = deque()
        for i, (c, g) in enumerate(zip(completions, golds)):
            try:
                c = "" if c is None else str(c)
                g = "" if g is None else str(g)
                k = self._kind_for(g, kinds[i] if kinds is not None else None)
                if k == "choice":
                    results[i] = score_choice(c, g, think_answers=self.think_answers)
                    self.n_in_process += 1
                    continue
                extracted, how = extract_math_answer(c, self.think_answers)
                if extracted is None:
                    results[i] = _no_answer(how)
                    self.n_in_process += 1
                elif len(extracted) > MAX_ANSWER_CHARS:
                    results[i] = _verdict(extracted[:200], False, {**_info(how), "too_long": True})
                    self.n_in_process += 1
                else:
                    fast = _fast_compare(extracted, g) if self.fast_path else None
                    if fast is not None:
                        results[i] = _verdict(extracted, fast, _info(how))
                        self.n_in_process += 1
                    else:
                        jobs.append((i, extracted, g, how))
            except Exception as e:  # pragma: no cover - extraction is plain string work
                self.n_errors += 1
                results[i] = Score(0.0, None, False, False, {"error": repr(e)[:300]})
        if jobs:
            self.n_in_pool += len(jobs)
            try:
                self._run(jobs, results)
            except Exception as e:  # pragma: no cover - last line of defence
                log.error("verifier: pool failure: %r", e)
                for j in list(jobs):
                    i, extracted, _, how = j
                    if results[i] is None:
                        self.n_errors += 1
                        results[i] = _verdict(extracted, False, {**_info(how), "error": f"pool failure: {e!r}"[:300]})
                for w in self._workers:
                    w.kill()
                self._workers = []
        for i, r in enumerate(results):
            if r is None:  # pragma: no cover - defensive
                self.n_errors += 1
                results[i] = Score(0.0, None, False, False, {"error": "not scored"})
        return results  # type: ignore[return-value]

    def _fail(self, job, results, info: dict) -> None:
        i, extracted, _, how = job
        results[i] = _verdict(extracted, False, {**_info(how), **info})

    def _run(self, jobs: deque, results: list) -> None:
        if self._closed:
            # a closed verifier reopens on demand
            self._closed = False
        self._ensure_workers()
        failed_starts = 0
        while jobs or any(w.job is not None for w in self._workers):
            now = time.monotonic()
            # hand out work
            for w in self._workers:
                if jobs and w.ready and w.job is None:
                    job = jobs.popleft()
                    try:
                        w.conn.send((job[0], job[1], job[2]))
                    except (OSError, EOFError, ValueError):
                        jobs.appendleft(job)  # not the sample's fault: retry it elsewhere
                        w.ready = False
                        w.kill()
                        continue
                    w.job = job
                    w.deadline = now + self.timeout_s
            # wait for an answer, a ready message or a death
            waitables = [w.conn for w in self._workers]
            if not waitables:
                failed_starts += 1
                if failed_starts > 3:
                    while jobs:
                        self.n_errors += 1
                        self._fail(jobs.popleft(), results, {"error": "no verifier worker could be started"})
                    return
                self._ensure_workers()
                continue
            deadlines = [w.deadline for w in self._workers if w.job is not None]
            deadlines += [w.started + self.startup_timeout_s for w in self._workers if not w.ready]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else 1.0
            ready_conns = _conn_wait(waitables, timeout=min(wait_s, 5.0))
            by_conn = {id(w.conn): w for w in self._workers}
            dead: list[_Worker] = []
            for conn in ready_conns:
                w = by_conn.get(id(conn))
                if w is None:
                    continue
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    dead.append(w)
                    continue
                if not w.ready:
                    if isinstance(msg, tuple) and msg and msg[0] == "ready":
                        w.ready = True
                        failed_starts = 0
                    continue
                if w.job is None:  # pragma: no cover - stray message
                    continue
                job, w.job = w.job, None
                _, status, value = msg
                i, extracted, _, how = job
                if status == "ok":
                    results[i] = _verdict(extracted, bool(value), _info(how))
                elif status == "timeout":
                    self.n_timeouts += 1
                    self._fail(job, results, {"timeout": True})
                else:
                    self.n_errors += 1
                    self._fail(job, results, {"error": str(value)})
            now = time.monotonic()
            for w in self._workers:
                if w in dead:
                    continue
                if w.job is not None and now > w.deadline:
                    self.n_timeouts += 1
                    self._fail(w.job, results, {"timeout": True})
                    w.job = None
                    dead.append(w)
                elif not w.ready and now > w.started + self.startup_timeout_s:
                    dead.append(w)
            for w in dead:
                if w.job is not None:
                    self.n_errors += 1
                    code = w.exitcode()
                    self._fail(w.job, results, {"error": f"verifier worker died (exit code {code})"})
                    w.job = None
                elif not w.ready:
                    failed_starts += 1
                w.kill()
                self.n_restarts += 1
            if dead:
                self._workers = [w for w in self._workers if w not in dead]
                if failed_starts > 3:
                    while jobs:
                        self.n_errors += 1
                        self._fail(jobs.popleft(), results, {"error": "no verifier worker could be started"})
                    continue
                self._ensure_workers()
