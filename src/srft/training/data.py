"""Rows -> examples the loop can use: length filtering with a report, tokenisation on use.

The filtering pass (:func:`srft.data.loading.filter_rows`) measures every prompt and
demonstration once and keeps only the text; token ids are made when a step or an
evaluation needs them. A 46k-row file of 8k-token demonstrations therefore costs its
text in memory, not its text plus a Python list of ids per row.
"""

from __future__ import annotations

from dataclasses import dataclass

from srft.config import DataConfig
from srft.data.loading import DataError, FilterReport, filter_rows
from srft.models.loading import encode_prompt, encode_response


@dataclass
class Example:
    prompt: object  # str or chat messages, as the task or file gave it
    answer: str
    demonstration: str | None
    source: str
    tokenizer: object
    template: str = "auto"
    max_response_tokens: int | None = None  # demonstrations are cut to this (too_long=truncate)

    @property
    def prompt_ids(self) -> list[int]:
        return encode_prompt(self.tokenizer, self.prompt, self.template)

    @property
    def demo_ids(self) -> list[int] | None:
        """Demonstration tokens ending with EOS (no EOS when it was cut to the limit), or None."""
        if not self.demonstration:
            return None
        ids = encode_response(self.tokenizer, self.demonstration)
        if self.max_response_tokens is not None and len(ids) > self.max_response_tokens:
            ids = ids[:self.max_response_tokens]
        return ids


def encode_rows(rows: list[dict], tokenizer, cfg: DataConfig, *, name: str,
                need_demo: bool = False) -> tuple[list[Example], FilterReport]:
    """Filter rows by the config's limits and wrap them as examples.

    Dropped and counted: rows without an answer or a prompt, prompts over
    ``max_prompt_tokens``, demonstrations over ``max_response_tokens`` (EOS included;
    cut instead with ``too_long=truncate``) and, with ``need_demo``, rows without a
    demonstration. Raises DataError, saying what to change, when nothing is left.
    """
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{name}: row {i} is not a mapping with a 'prompt' (got {str(row)[:80]!r}); "
                            f"a row needs 'prompt', 'answer' and optionally 'demonstration'")

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # The response limit counts the EOS token that ends a demonstration.
    kept, report = filter_rows(rows, n_tokens, cfg.max_prompt_tokens, cfg.max_response_tokens - 1, cfg.too_long)
    if need_demo:
        with_demo = [r for r in kept if r.get("demonstration")]
        for r in kept:
            if not r.get("demonstration"):
                report._drop("without a demonstration", r.get("index"))
        kept = with_demo
        report.kept = len(kept)
        if not kept:
            raise DataError(f"{name}: {report.summary}: no row has a demonstration, which this method needs; "
                            f"add demonstrations or use a method without them (--preset grpo)")
    examples = [Example(r["prompt"], str(r["answer"]), r.get("demonstration"), str(r.get("data_source", "")),
                        tokenizer, cfg.template, cfg.max_response_tokens) for r in kept]
    return examples, report
