"""Reading, filtering and writing training / evaluation rows.

Accepted file formats: ``.parquet``, ``.jsonl`` and ``.json`` (a JSON list of
objects, or JSON lines). Two row schemas are understood:

* the verl/LUFFY schema: ``prompt`` (chat messages, or a string), optional
  ``target`` (a list holding one assistant message: the demonstration),
  ``reward_model.ground_truth`` (the gold answer), ``data_source``;
* a flat schema: ``prompt``, ``answer``, optional ``demonstration``.

Every row becomes ``{"prompt": str | list[{"role", "content"}], "answer": str,
"demonstration": str | None, "data_source": str, "index": int}`` where
``index`` is the row's position in the file.

Memory: files are read in record batches (parquet) or line by line (JSON
lines) and only the columns above are decoded, so the peak is the size of the
resulting Python rows plus one batch. The strings of the rows are shared, not
copied, by :func:`filter_rows`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

__all__ = [
    "DataError",
    "FilterReport",
    "Rows",
    "export_rows",
    "filter_rows",
    "iter_rows",
    "load_rows",
    "prompt_text",
]

log = logging.getLogger(__name__)

# the columns read from a file; anything else (extra_info, ability, pandas index) is skipped
_COLUMNS = ("prompt", "target", "reward_model", "data_source", "answer", "demonstration")

REASON_NO_ANSWER = "no answer"
REASON_BAD_PROMPT = "malformed prompt"
REASON_PROMPT_TOO_LONG = "prompt too long"
REASON_DEMO_TOO_LONG = "demonstration too long"


class DataError(ValueError):
    """A data file cannot be used as it is; the message says why and what to change."""


class Rows(list):
    """A list of normalised rows, plus the rows of the file that could not be used.

    ``problems`` is a list of ``(index, reason, detail)`` for rows dropped at load
    time (``reason`` is ``"no answer"`` or ``"malformed prompt"``); ``n_read`` is
    the number of rows read from the file.
    """

    def __init__(self, rows: Iterable[dict] = (), problems=None, n_read: int = 0, source: str = ""):
        super().__init__(rows)
        self.problems: list[tuple[int, str, str]] = list(problems or [])
        self.n_read = n_read
        self.source = source


# ---------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------


def _norm_prompt(prompt) -> tuple[str | list[dict] | None, str]:
    """(normalised prompt, "") or (None, what is wrong)."""
    if isinstance(prompt, str):
        return (prompt, "") if prompt.strip() else (None, "empty prompt string")
    if prompt is None:
        return None, "no prompt"
    if hasattr(prompt, "tolist") and not isinstance(prompt, (list, tuple)):  # numpy array from pandas
        prompt = prompt.tolist()
    if not isinstance(prompt, (list, tuple)) or not prompt:
        return None, f"prompt is neither a string nor a non-empty list of messages ({type(prompt).__name__})"
    out = []
    for j, m in enumerate(prompt):
        if not isinstance(m, dict):
            return None, f"message {j} is a {type(m).__name__}, not a dict"
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return None, f"message {j} lacks a string role/content"
        out.append({"role": role, "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        return None, "no non-empty user message"
    return out, ""


def _norm_answer(row: dict) -> str | None:
    ans = row.get("answer")
    if ans is None:
        rm = row.get("reward_model")
        if isinstance(rm, str):  # some exports store it as a JSON string
            try:
                rm = json.loads(rm)
            except ValueError:
                rm = None
        if isinstance(rm, dict):
            ans = rm.get("ground_truth")
    if ans is None:
        return None
    if isinstance(ans, (list, tuple)):  # a list of acceptable answers: keep the first
        ans = ans[0] if ans else None
        if ans is None:
            return None
    ans = str(ans).strip()
    return ans or None


def _norm_demo(row: dict) -> str | None:
    demo = row.get("demonstration")
    if demo is None:
        target = row.get("target")
        if hasattr(target, "tolist") and not isinstance(target, (list, tuple, str)):
            target = target.tolist()
        if isinstance(target, str):
            demo = target
        elif isinstance(target, (list, tuple)):
            for m in target:
                if isinstance(m, dict) and m.get("role", "assistant") == "assistant":
                    demo = m.get("content")
                    break
        elif isinstance(target, dict):
            demo = target.get("content")
    if demo is None:
        return None
    demo = str(demo)
    return demo if demo.strip() else None


def normalize_row(raw: dict, index: int, default_source: str = "") -> tuple[dict | None, tuple | None]:
    """One raw record -> (normalised row, None) or (None, (index, reason, detail))."""
    prompt, why = _norm_prompt(raw.get("prompt"))
    if prompt is None:
        return None, (index, REASON_BAD_PROMPT, why)
    answer = _norm_answer(raw)
    if answer is None:
        return None, (index, REASON_NO_ANSWER, "no 'answer' or 'reward_model.ground_truth'")
    extra = raw.get("extra_info")
    if isinstance(extra, dict) and extra.get("prompt_is_text") and isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]["content"]  # written from a string prompt by export_rows
    source = raw.get("data_source")
    return {
        "prompt": prompt,
        "answer": answer,
        "demonstration": _norm_demo(raw),
        "data_source": default_source if source is None else str(source),
        "index": index,
    }, None


def prompt_text(prompt: str | list[dict]) -> str:
    """The text of a prompt: the string, or the message contents joined by newlines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt)


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "json")):
        if name.endswith(suffix):
            return fmt
    raise DataError(f"{path}: unknown file type; use .parquet, .jsonl or .json")


def _one_line(e: BaseException) -> str:
    """An exception's message on one line, without a trailing full stop."""
    return " ".join(str(e).split()).rstrip(".") or type(e).__name__


_FIX_FILE = "re-create it (e.g. re-export or re-download it) or give another file"


def _iter_parquet(path: Path, batch_size: int) -> Iterator[dict]:
    import pyarrow.parquet as pq
    from pyarrow.lib import ArrowException

    size = path.stat().st_size
    try:
        # pre_buffer=False: with read coalescing on, Arrow buffers most of the file
        # ahead of the batches (the whole file, for a few-row-group file)
        pf = pq.ParquetFile(path, pre_buffer=False)
    except (ArrowException, OSError, ValueError) as e:
        if size == 0:
            why = "0 bytes"
        elif "magic bytes" in str(e):
            why = f"no parquet footer in its {size} bytes: the file is truncated or is not parquet"
        else:
            why = _one_line(e)
        raise DataError(f"{path}: not a readable parquet file ({why}); {_FIX_FILE}") from e
    names = set(pf.schema_arrow.names)
    cols = [c for c in _COLUMNS if c in names]
    if "extra_info" in names:
        # only the flag written by export_rows, not whatever else is in there
        extra_type = pf.schema_arrow.field("extra_info").type
        if hasattr(extra_type, "get_field_index") and extra_type.get_field_index("prompt_is_text") >= 0:
            cols.append("extra_info")
    n = 0
    try:
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            records = batch.to_pylist()
            del batch
            n += len(records)
            yield from records
    except (ArrowException, OSError, ValueError, NotImplementedError) as e:
        raise DataError(f"{path}: corrupt parquet data after row {n} of {pf.metadata.num_rows} "
                        f"({_one_line(e)}); {_FIX_FILE}") from e


def _not_utf8(path: Path, lineno: int, raw: bytes, e: UnicodeDecodeError) -> DataError:
    hint = ""
    if lineno == 1 and raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        hint = " (it looks like UTF-16)"
    return DataError(f"{path}: line {lineno} is not UTF-8 text{hint}: byte 0x{raw[e.start]:02x} at byte "
                     f"{e.start + 1} of the line; re-save the file as UTF-8")


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line; a UTF-8 BOM is dropped; bytes that are not UTF-8 raise DataError."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise _not_utf8(path, lineno, raw, e) from e


def _iter_jsonl(path: Path) -> Iterator[dict]:
    for lineno, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else _one_line(e)
            raise DataError(f"{path}: line {lineno} is not valid JSON ({why}); "
                            f"a .jsonl file holds one JSON object per line") from e
        yield obj


def _check_utf8(path: Path) -> None:
    for _ in _utf8_lines(path):
        pass


def _load_json(path: Path):
    with open(path, encoding="utf-8-sig") as f:
        try:
            return json.load(f)
        except UnicodeDecodeError as e:
            _check_utf8(path)  # raises naming the line of the bad byte
            raise DataError(f"{path}: not UTF-8 text ({_one_line(e)}); re-save the file as UTF-8") from e
        except ValueError as e:
            where = f" at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
            msg = e.msg if isinstance(e, json.JSONDecodeError) else _one_line(e)
            raise DataError(f"{path}: not valid JSON ({msg}{where}); a .json file holds a JSON list of "
                            f"objects, or one JSON object per line") from e


def _iter_json(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        head = f.read(4096).decode("utf-8-sig", errors="replace").lstrip()
    if not head:
        raise DataError(f"{path}: the file is empty; it should hold a JSON list of objects or JSON lines")
    if not head.startswith("["):
        # JSON lines under a .json name, or a dict of columns / {"data": [...]}
        if head.startswith("{"):
            lines = _utf8_lines(path)
            first = next(lines)[1]
            lines.close()
            try:
                one_line = isinstance(json.loads(first), dict)
            except ValueError:
                one_line = False
            if one_line:
                yield from _iter_jsonl(path)
                return
            obj = _load_json(path)
            if isinstance(obj.get("data"), list):
                yield from obj["data"]
                return
            if obj and all(isinstance(v, list) for v in obj.values()):  # columns
                lengths = {k: len(v) for k, v in obj.items()}
                if len(set(lengths.values())) > 1:
                    raise DataError(f"{path}: the columns have different lengths ({lengths}); "
                                    f"every column needs one value per row")
                n = len(next(iter(obj.values())))
                for i in range(n):
                    yield {k: v[i] for k, v in obj.items()}
                return
            yield obj
            return
        raise DataError(f"{path}: expected a JSON list of objects or JSON lines")
    data = _load_json(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects or JSON lines")
    yield from data


def _guarded(records: Iterator[dict], path: Path) -> Iterator[dict]:
    """``records``, with a failure to read the file turned into a DataError naming it."""
    try:
        yield from records
    except DataError:
        raise
    except PermissionError as e:
        raise DataError(f"{path}: cannot be read (permission denied); fix its permissions or copy it") from e
    except UnicodeDecodeError as e:  # pragma: no cover - the readers name the line themselves
        raise DataError(f"{path}: not UTF-8 text ({_one_line(e)}); re-save the file as UTF-8") from e
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {_one_line(e)}); {_FIX_FILE}") from e


def iter_raw(path: str | os.PathLike, batch_size: int = 256) -> Iterator[dict]:
    """The raw records of a file, one dict at a time; a file that cannot be read raises DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a .parquet, .jsonl or .json file")
    fmt = _format_of(path)
    if fmt == "parquet":
        return _guarded(_iter_parquet(path, batch_size), path)
    if fmt == "jsonl":
        return _guarded(_iter_jsonl(path), path)
    return _guarded(_iter_json(path), path)


def iter_rows(path: str | os.PathLike, *, max_rows: int | None = None, problems: list | None = None) -> Iterator[dict]:
    """Normalised rows of a file, streamed; unusable rows are appended to ``problems``.

    A file that cannot be read (missing, not parquet/JSON, corrupt, not UTF-8) raises
    :class:`DataError` naming the file and what is wrong.
    """
    path = Path(path)
    source = path.name.split(".")[0]
    for i, raw in enumerate(iter_raw(path)):
        if max_rows is not None and i >= max_rows:
            return
        if not isinstance(raw, dict):
            if problems is not None:
                problems.append((i, REASON_BAD_PROMPT, f"record is a {type(raw).__name__}, not an object"))
            continue
        row, problem = normalize_row(raw, i, source)
        if row is not None:
            yield row
        elif problems is not None:
            problems.append(problem)


def _describe_problems(problems: list, limit: int = 5) -> str:
    """'2 no answer (rows 1, 4: no 'answer' or ...), 1 malformed prompt (row 3: ...)': the first
    ``limit`` rows of each reason, those with the same detail said once."""
    counts = Counter(p[1] for p in problems)
    parts = []
    for reason, n in counts.most_common():
        first = [p for p in problems if p[1] == reason][:limit]
        by_detail: dict[str, list[int]] = {}
        for i, _, d in first:
            by_detail.setdefault(d, []).append(i)
        where = "; ".join(f"{'rows' if len(idx) > 1 else 'row'} {', '.join(map(str, idx))}: {d}"
                          for d, idx in by_detail.items())
        more = f"; ... ({n - len(first)} more)" if n > len(first) else ""
        parts.append(f"{n} {reason} ({where}{more})")
    return ", ".join(parts)


def load_rows(path: str | os.PathLike, *, max_rows: int | None = None, strict: bool = False,
              label: str | None = None) -> Rows:
    """Read a .parquet / .jsonl / .json file into normalised rows (see the module doc).

    Rows without an answer or with a malformed prompt are left out and listed,
    with their index in the file, in ``rows.problems`` (and logged); with
    ``strict=True`` they raise :class:`DataError` instead. ``max_rows`` reads
    only the first rows of the file. A file that cannot be read, or has no usable
    row, raises :class:`DataError`; its message starts with ``label`` (where the
    path came from, e.g. ``"data.train_file"``) when one is given.
    """
    path = Path(path)
    name = f"{label} {path}" if label else str(path)
    problems: list = []
    rows = Rows(source=str(path))
    try:
        for row in iter_rows(path, max_rows=max_rows, problems=problems):
            rows.append(row)
    except DataError as e:
        if label:
            raise DataError(f"{label} {e}") from e
        raise
    rows.problems = problems
    rows.n_read = len(rows) + len(problems)
    if not rows:
        hint = (
            "each row needs a prompt (a string or a list of {role, content} messages) and an answer "
            "(column 'answer' or 'reward_model.ground_truth')"
        )
        if rows.n_read == 0:
            raise DataError(f"{name}: the file holds no rows")
        raise DataError(f"{name}: none of the {rows.n_read} rows is usable ({_describe_problems(problems)}); {hint}")
    if problems:
        msg = f"{name}: {len(problems)} of {rows.n_read} rows unusable: {_describe_problems(problems)}"
        if strict:
            raise DataError(msg)
        log.warning(msg)
    return rows


# ---------------------------------------------------------------------------
# filtering
# ---------------------------------------------------------------------------


@dataclass
class FilterReport:
    """What :func:`filter_rows` kept, dropped and why."""

    total: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)  # reason -> count
    truncated: int = 0  # kept rows whose demonstration is marked for truncation
    examples: dict = field(default_factory=dict)  # reason -> first few row indices
    max_prompt_tokens: int | None = None
    max_response_tokens: int | None = None

    @property
    def summary(self) -> str:
        parts = [f"{n} {reason}" for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1])]
        if self.truncated:
            parts.append(f"{self.truncated} demonstrations marked for truncation to {self.max_response_tokens} tokens")
        s = f"kept {self.kept} of {self.total} rows"
        return s + (": " + ", ".join(parts) if parts else "")

    def __str__(self) -> str:
        return self.summary

    def _drop(self, reason: str, index) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(index)


def filter_rows(
    rows: Iterable[dict],
    tokenize_len: Callable[[str], int],
    max_prompt_tokens: int | None,
    max_response_tokens: int | None,
    too_long: str = "drop",
) -> tuple[list[dict], FilterReport]:
    """Keep the rows that fit the length limits.

    ``tokenize_len(text)`` gives a text's length in tokens; a chat prompt is
    measured as its message contents joined by newlines (the chat template's
    own tokens are not counted: leave a margin in ``max_prompt_tokens``).
    A limit of None means no limit.

    Dropped: rows without an answer, rows whose prompt is over the limit, and
    with ``too_long="drop"`` rows whose demonstration is over the response
    limit. With ``too_long="truncate"`` such rows are kept, shallow-copied, with
    ``"truncate_demonstration_to": max_response_tokens`` and
    ``"demonstration_tokens": n`` so the caller cuts the tokens. Rows without a
    demonstration (RL-only rows) are kept. Rows that :func:`load_rows` left out
    (``rows.problems``) are counted in the report too.

    Returns (kept rows, :class:`FilterReport`); raises :class:`DataError` if
    nothing is left.
    """
    if too_long not in ("drop", "truncate"):
        raise ValueError(f"too_long must be 'drop' or 'truncate', not {too_long!r}")
    report = FilterReport(max_prompt_tokens=max_prompt_tokens, max_response_tokens=max_response_tokens)
    for index, reason, _ in getattr(rows, "problems", ()):
        report.total += 1
        report._drop(reason, index)
    kept: list[dict] = []
    for pos, row in enumerate(rows):
        report.total += 1
        index = row.get("index", pos)
        if not row.get("answer"):
            report._drop(REASON_NO_ANSWER, index)
            continue
        prompt = row.get("prompt")
        if not prompt:
            report._drop(REASON_BAD_PROMPT, index)
            continue
        if max_prompt_tokens is not None and tokenize_len(prompt_text(prompt)) > max_prompt_tokens:
            report._drop(REASON_PROMPT_TOO_LONG, index)
            continue
        demo = row.get("demonstration")
        if demo is not None and max_response_tokens is not None:
            n = tokenize_len(demo)
            if n > max_response_tokens:
                if too_long == "drop":
                    report._drop(REASON_DEMO_TOO_LONG, index)
                    continue
                row = {**row, "truncate_demonstration_to": max_response_tokens, "demonstration_tokens": n}
                report.truncated += 1
        kept.append(row)
    report.kept = len(kept)
    if not kept:
        raise DataError(_empty_message(report, too_long))
    return kept, report


def _empty_message(report: FilterReport, too_long: str) -> str:
    if report.total == 0:
        return "no rows to filter: the data is empty"
    why = ", ".join(f"{n} {r} (e.g. rows {report.examples.get(r, [])})" for r, n in report.dropped.items())
    hints = []
    if report.dropped.get(REASON_PROMPT_TOO_LONG):
        hints.append(f"raise max_prompt_tokens (now {report.max_prompt_tokens})")
    if report.dropped.get(REASON_DEMO_TOO_LONG):
        hints.append(f"raise max_response_tokens (now {report.max_response_tokens}) or use too_long='truncate'")
    if report.dropped.get(REASON_NO_ANSWER):
        hints.append("give every row an answer ('answer' or 'reward_model.ground_truth')")
    if report.dropped.get(REASON_BAD_PROMPT):
        hints.append("give every row a prompt (a string or a list of {role, content} messages)")
    return f"no rows left after filtering {report.total} rows: {why}. To fix: " + "; ".join(hints) + "."


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _export_record(row: dict, i: int, split: str, ability: str) -> dict:
    prompt = row["prompt"]
    is_text = isinstance(prompt, str)
    messages = [{"role": "user", "content": prompt}] if is_text else [
        {"role": m["role"], "content": m["content"]} for m in prompt
    ]
    demo = row.get("demonstration")
    return {
        "data_source": row.get("data_source") or "",
        "prompt": messages,
        "target": None if demo is None else [{"role": "assistant", "content": demo}],
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": str(row["answer"])},
        "extra_info": {"index": i, "split": split, "prompt_is_text": is_text},
    }


def _export_schema():
    import pyarrow as pa

    msg = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
    return pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", msg),
            ("target", msg),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string()), ("prompt_is_text", pa.bool_())])),
        ]
    )


def export_rows(
    rows: Iterable[dict],
    path: str | os.PathLike,
    *,
    split: str = "train",
    ability: str = "math",
    batch_size: int = 1024,
) -> int:
    """Write rows in the verl/LUFFY schema to ``.parquet`` or ``.jsonl``; returns the row count.

    The prompt is always written as chat messages (a string prompt becomes one
    user message, flagged ``extra_info.prompt_is_text`` so that
    :func:`load_rows` gives the string back); the demonstration becomes
    ``target = [{"role": "assistant", "content": demo}]`` (null without one);
    the answer becomes ``reward_model = {"style": "rule", "ground_truth": answer}``.
    """
    path = Path(path)
    fmt = _format_of(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    try:
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            schema = _export_schema()
            with pq.ParquetWriter(tmp, schema) as writer:
                buf: list[dict] = []
                for row in rows:
                    buf.append(_export_record(row, n, split, ability))
                    n += 1
                    if len(buf) >= batch_size:
                        writer.write_table(pa.Table.from_pylist(buf, schema=schema))
                        buf = []
                if buf or n == 0:
                    writer.write_table(pa.Table.from_pylist(buf, schema=schema))
        else:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(_export_record(row, n, split, ability), ensure_ascii=False))
                    f.write("\n")
                    n += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return n
