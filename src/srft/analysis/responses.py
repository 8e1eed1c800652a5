"""A fixed response set: the token sequences on which every checkpoint of a regime is scored.

For ``n_prompts`` prompts of the task's ``test_id`` split (the task generator's seed from the
run config, so they are the first of the runs' own evaluation prompts), the set holds

- ``expert``: the prompt's expert demonstration, tokenised as the training loop does
  (``srft.training.data.encode_rows``: the prompt template, EOS at the end, the same length limits);
- ``base``: one sample of the base model at temperature 1 (seeded), through the rollout engine,
  i.e. a response of the kind on-policy methods train on at their first step.

Scoring every model on the same tokens makes their per-token log-probabilities comparable
position by position. The set is saved as JSONL (one sequence per line: ``prompt_ids``,
``response_ids``, ``kind``) with a ``.meta.json`` beside it saying how it was made; an existing
file made the same way is reused.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from srft.config import DataConfig
from srft.rollout.engine import HFEngine
from srft.training.data import encode_rows

KINDS = ("expert", "base")


class AnalysisError(ValueError):
    """An analysis cannot be made from these inputs; the message says why."""


@dataclass
class ResponseSet:
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    kind: list[str]  # "expert" | "base", per sequence
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kind)

    @property
    def n_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)

    def counts(self) -> dict[str, int]:
        """Sequences and response tokens of each kind."""
        out = {}
        for k in KINDS:
            idx = [i for i, x in enumerate(self.kind) if x == k]
            out[f"{k}_sequences"] = len(idx)
            out[f"{k}_tokens"] = sum(len(self.response_ids[i]) for i in idx)
        return out


def save_response_set(rs: ResponseSet, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for p, r, k in zip(rs.prompt_ids, rs.response_ids, rs.kind):
            f.write(json.dumps({"kind": k, "prompt_ids": p, "response_ids": r}) + "\n")
    meta_path(path).write_text(json.dumps(rs.meta, indent=1))


def load_response_set(path: Path) -> ResponseSet:
    path = Path(path)
    prompts, responses, kinds = [], [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("kind") not in KINDS or not row.get("response_ids"):
            raise AnalysisError(f"{path}:{n}: a row needs kind (expert|base), prompt_ids and non-empty response_ids")
        prompts.append([int(t) for t in row["prompt_ids"]])
        responses.append([int(t) for t in row["response_ids"]])
        kinds.append(row["kind"])
    meta = json.loads(meta_path(path).read_text()) if meta_path(path).exists() else {}
    return ResponseSet(prompts, responses, kinds, meta)


def meta_path(path: Path) -> Path:
    return Path(path).with_suffix(".meta.json")


def context_window(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def build_response_set(model, tokenizer, task, data_cfg: DataConfig, n_prompts: int, seed: int,
                       say: Callable[[str], None] = print) -> ResponseSet:
    """Expert demonstrations and one base-model sample for ``n_prompts`` test_id prompts.

    Sequences that do not fit the model's context window (prompt + response over
    ``max_position_embeddings``) are left out, and the base samples are limited so that they
    fit; both are said through ``say``.
    """
    try:
        rows = task.generate("test_id", n_prompts, data_cfg.seed)
    except ValueError as e:  # e.g. a file task without data.test_id_file
        raise AnalysisError(f"task {getattr(task, 'name', task)!r} has no test_id prompts: {e}") from e
    examples, report = encode_rows(list(rows)[:n_prompts], tokenizer, data_cfg, name="test_id")
    if report.kept < report.total:
        say(f"  response set: test_id {report.summary}")
    window = context_window(model)
    prompts = [e.prompt_ids for e in examples]
    demos = [e.demo_ids for e in examples]
    if window is not None:
        fits = [len(p) < window for p in prompts]
        if not all(fits):
            say(f"  response set: {fits.count(False)} of {len(prompts)} prompts are at least as long as the "
                f"model's context window (max_position_embeddings={window}); left out")
            prompts = [p for p, ok in zip(prompts, fits) if ok]
            demos = [d for d, ok in zip(demos, fits) if ok]
    if not prompts:
        raise AnalysisError("no test_id prompt is usable for the response set (see the messages above)")

    # Base samples: as long as training's rollouts (data.max_response_tokens), but within the window.
    max_new = data_cfg.max_response_tokens
    if window is not None:
        max_new = min(max_new, window - max(len(p) for p in prompts))
    engine = HFEngine(model, tokenizer.pad_token_id, tokenizer.eos_token_id)
    # A private random stream: the same seed gives the same samples, whatever ran before.
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        samples = [s[0] for s in engine.generate(prompts, 1, max_new, temperature=1.0)]

    out = ResponseSet([], [], [])
    n_no_demo = n_too_long = 0
    for p, d, s in zip(prompts, demos, samples):
        if d is None:
            n_no_demo += 1
        elif window is not None and len(p) + len(d) > window:
            n_too_long += 1
        else:
            out.prompt_ids.append(p)
            out.response_ids.append(d)
            out.kind.append("expert")
        if s:
            out.prompt_ids.append(p)
            out.response_ids.append(s)
            out.kind.append("base")
    if n_no_demo:
        say(f"  response set: {n_no_demo} prompts have no expert demonstration; only their base sample is used")
    if n_too_long:
        say(f"  response set: {n_too_long} expert demonstrations do not fit the model's context window with their "
            f"prompts (max_position_embeddings={window}); left out (shorten data.max_response_tokens or use a "
            f"model with a longer context to keep them)")
    return out


def load_or_build(path: Path, meta: dict, build: Callable[[], ResponseSet],
                  say: Callable[[str], None] = print) -> ResponseSet:
    """The response set in ``path`` if it was made as ``meta`` says (or has no meta file), else a new one."""
    path = Path(path)
    if path.exists():
        existing = json.loads(meta_path(path).read_text()) if meta_path(path).exists() else None
        if existing is None or all(existing.get(k) == v for k, v in meta.items()):
            rs = load_response_set(path)
            say(f"  response set: reusing {path} ({len(rs)} sequences, {rs.n_tokens} tokens)")
            return rs
        changed = [k for k, v in meta.items() if existing.get(k) != v]
        say(f"  response set: {path} was made with other settings ({', '.join(changed)}); making a new one")
    rs = build()
    rs.meta = {**meta, **rs.counts()}
    save_response_set(rs, path)
    say(f"  response set: wrote {path} ({len(rs)} sequences, {rs.n_tokens} tokens)")
    return rs
