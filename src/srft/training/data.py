"""Turn task rows into token ids, with the filtering the config asks for and a report of it."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from srft.config import DataConfig
from srft.data.loading import DataError
from srft.models.loading import encode_prompt, encode_response


@dataclass
class Example:
    prompt: object  # str or chat messages, as the task or file gave it
    prompt_ids: list[int]
    answer: str
    demo_ids: list[int] | None  # demonstration tokens ending with EOS, or None
    source: str = ""


@dataclass
class DataReport:
    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    truncated: int = 0

    def summary(self, name: str) -> str:
        parts = [f"{n} {reason}" for reason, n in self.dropped.most_common()]
        if self.truncated:
            parts.append(f"{self.truncated} demonstrations truncated")
        tail = f": {', '.join(parts)}" if parts else ""
        return f"{name}: kept {self.kept} of {self.total} rows{tail}"


def encode_rows(rows: list[dict], tokenizer, cfg: DataConfig, *, name: str,
                need_demo: bool = False) -> tuple[list[Example], DataReport]:
    """Encode prompts and demonstrations; drop (and count) rows that cannot be used.

    A row needs a prompt and an answer. A prompt over ``max_prompt_tokens`` is dropped;
    a demonstration over ``max_response_tokens`` (EOS included) is dropped or truncated
    as ``too_long`` says. With ``need_demo``, rows without a demonstration are dropped.
    """
    # Rows a file loader already left out (no answer, malformed prompt) count here too.
    problems = getattr(rows, "problems", [])
    report = DataReport(total=len(rows) + len(problems))
    for _, reason, _ in problems:
        report.dropped["without an answer" if reason == "no answer" else reason] += 1
    out: list[Example] = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{name}: row {i} is not a mapping with a 'prompt' (got {str(row)[:80]!r}); "
                            f"a row needs 'prompt', 'answer' and optionally 'demonstration'")
        answer = row.get("answer")
        if answer is None or str(answer).strip() == "":
            report.dropped["without an answer"] += 1
            continue
        try:
            prompt_ids = encode_prompt(tokenizer, row["prompt"], cfg.template)
        except ValueError as e:
            raise DataError(f"{name}: row {i}: {e}") from e
        if len(prompt_ids) > cfg.max_prompt_tokens:
            report.dropped[f"prompt over {cfg.max_prompt_tokens} tokens"] += 1
            continue
        demo = row.get("demonstration")
        demo_ids = encode_response(tokenizer, demo) if demo else None
        if demo_ids is not None and len(demo_ids) > cfg.max_response_tokens:
            if cfg.too_long == "drop":
                report.dropped[f"demonstration over {cfg.max_response_tokens} tokens"] += 1
                continue
            demo_ids = demo_ids[:cfg.max_response_tokens]  # no EOS: the demonstration was cut
            report.truncated += 1
        if need_demo and demo_ids is None:
            report.dropped["without a demonstration"] += 1
            continue
        out.append(Example(row["prompt"], prompt_ids, str(answer), demo_ids, str(row.get("data_source", ""))))
    report.kept = len(out)
    if not out:
        raise DataError(f"{report.summary(name)}: nothing left to use. Raise data.max_prompt_tokens or "
                        f"data.max_response_tokens, set data.too_long=truncate, or check the rows' answers")
    return out, report
