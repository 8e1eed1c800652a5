"""The Python API: ``from srft import load_config, train, evaluate``.

The ``srft`` commands are thin layers over these three functions, so a script that calls
them gets what the command line gets: the same checks, the same run directory, the same
figures. ``import srft`` stays cheap: ``srft/__init__.py`` loads this module (and torch)
on first use of one of the names.

    cfg = load_config("srft", overrides={"run.steps": 10})
    run_dir = train(cfg)
    print(evaluate(load_config(overrides=[f"model.path={run_dir / 'model'}"])))
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

from srft.config import Config, ConfigError
from srft.config import load_config as _load_config


def _override_list(overrides: Iterable[str] | Mapping[str, object] | None) -> list[str]:
    """``["run.steps=10"]`` or ``{"run.steps": 10}`` -> ``["run.steps=10"]``."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'section.key=value' strings or a dict, not the string "
                          f"{overrides!r}; write [{overrides!r}]")
    if isinstance(overrides, Mapping):
        import yaml

        out = []
        for key, value in overrides.items():
            if not isinstance(key, str):
                raise ConfigError(f"overrides: key {key!r} must be a string 'section.key'")
            # YAML text of the value, so that the dict goes through the same parsing and checks as the list
            text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
            if text.endswith("\n..."):
                text = text[:-4].strip()
            out.append(f"{key}={text}")
        return out
    out = list(overrides)
    bad = [o for o in out if not isinstance(o, str)]
    if bad:
        raise ConfigError(f"overrides: {bad[0]!r} is not a 'section.key=value' string")
    return out


def load_config(preset: str | None = "srft", config: str | Path | None = None,
                overrides: Iterable[str] | Mapping[str, object] | None = None) -> Config:
    """The checked config of a preset, then a YAML file, then overrides (as ``srft train`` builds it).

    ``preset``: a preset name (``srft``, ``grpo``, ... ``srft config --keys`` lists them), or None
    for the dataclass defaults alone. ``config``: a YAML file of sections, applied after the preset.
    ``overrides``: ``["run.steps=10", "rollout.n=4"]`` or ``{"run.steps": 10, "rollout.n": 4}``;
    list values as YAML lists or comma-separated (``"run.report_to=tensorboard,wandb"``).
    A wrong section, key or value raises :class:`srft.config.ConfigError` naming it.
    """
    return _load_config(preset, str(config) if config is not None else None, _override_list(overrides))


def train(config: Config, run_dir: str | Path | None = None, resume: bool = False) -> Path:
    """Train as ``config`` says and return the run directory (``RUN_DIR/model`` is the trained model).

    ``run_dir``: where the run goes (default: ``run.out_dir``). ``resume``: continue ``run_dir``
    from its last checkpoint (``srft train --resume RUN_DIR``). Under torchrun every rank calls it.
    """
    from srft.training.loop import train as _train

    if not isinstance(config, Config):
        raise ConfigError(f"train: expected a Config (from srft.load_config), got {type(config).__name__}")
    if resume and run_dir is None:
        raise ConfigError("train(resume=True) needs run_dir, the directory of the run to continue")
    return _train(config, run_dir=Path(run_dir) if run_dir is not None else None, resume=resume)


def _split_list(splits: Iterable[str] | str | None) -> list[str] | None:
    if splits is None:
        return None
    if isinstance(splits, str):
        splits = splits.split(",")
    out = [s.strip() for s in splits if s.strip()]
    if not out:
        raise ConfigError("evaluate: no split given; give e.g. test_id,test_ood")
    return out


def evaluate(config: Config, splits: Iterable[str] | str | None = ("test_id", "test_ood"),
             out: str | Path | None = None, say: Callable[[str], None] | None = None) -> dict:
    """Sample ``run.eval_k`` completions per test prompt of ``model.path`` and score them.

    What it reads from ``config``: the model (``model.path``, null = the built-in base model;
    ``model.dtype``, ``model.device``, ``model.threads``), the data (``data.task``, with
    ``data.task=file`` the ``data.test_id_file``/``data.test_ood_file``; ``data.seed``,
    ``data.test_size`` prompts per split, ``data.max_prompt_tokens``, ``data.max_response_tokens``,
    ``data.template``) and the sampling (``run.eval_k``, ``run.eval_temperature``, ``run.seed``).
    ``splits``: the test splits, in order (a list or ``"test_id,test_ood"``); None = all the task has.
    ``out``: also write the result with every completion and its score to this JSON file.
    ``say``: called with one line per split as it finishes (``srft evaluate`` prints them).

    Returns ``{"model", "task", "k", "temperature", "splits": {split: {"avg@K", "pass@K",
    "format_ok", "n_prompts", ...}}}``, the figures ``srft evaluate`` prints.
    """
    import torch

    from srft.evaluation.sampling import evaluate_splits
    from srft.models.loading import check_context, load_model_and_tokenizer
    from srft.rollout.engine import HFEngine
    from srft.tasks import make_task
    from srft.training.data import encode_rows

    if not isinstance(config, Config):
        raise ConfigError(f"evaluate: expected a Config (from srft.load_config), got {type(config).__name__}")
    # Evaluation uses the prompts and answers only: a demonstration over the response limit is cut,
    # not a reason to drop its prompt (as data.too_long=drop would in training).
    cfg = dataclasses.replace(config, data=dataclasses.replace(config.data, too_long="truncate"))
    wanted = _split_list(splits)
    task = make_task(cfg, need_train=False)  # a bad task or data file fails before a model is loaded
    try:
        available = list(getattr(task, "test_splits", ("test_id", "test_ood")))
        wanted = wanted or available
        unknown = [s for s in wanted if s not in available]
        if unknown:
            raise ConfigError(f"evaluate: task '{task.name}' has no split {unknown[0]}; its test splits: "
                              f"{', '.join(available) or 'none (give data.test_id_file or data.test_ood_file)'}")
        if cfg.model.threads:
            torch.set_num_threads(cfg.model.threads)
        torch.manual_seed(cfg.run.seed)
        model, tok, path = load_model_and_tokenizer(cfg.model, task_name=cfg.data.task)
        check_context(model, cfg.data.max_prompt_tokens, cfg.data.max_response_tokens,
                      "data.max_prompt_tokens + data.max_response_tokens")
        engine = HFEngine(model, tok.pad_token_id, tok.eos_token_id, max_batch=256)
        k, temperature = cfg.run.eval_k, cfg.run.eval_temperature
        results = {"model": str(path), "task": task.name, "k": k, "temperature": temperature, "splits": {}}
        for split in wanted:
            rows = task.generate(split, cfg.data.test_size, cfg.data.seed)
            examples, _ = encode_rows(rows, tok, cfg.data, name=split)
            # One split at a time; no seed: sampling continues the stream that run.seed started
            # above, split after split.
            res = evaluate_splits(engine, tok, task, {split: examples}, k, temperature, cfg.data.max_response_tokens,
                                  keep_completions=out is not None)[split]
            results["splits"][split] = res
            if say is not None:
                say(f"{split:<10} avg@{k} {res[f'avg@{k}']:.3f}  pass@{k} {res[f'pass@{k}']:.3f}  "
                    f"format {res['format_ok']:.3f}  ({res['n_prompts']} prompts)")
    finally:
        close = getattr(task, "close", None)  # the file task's verifier processes
        if callable(close):
            close()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
        for res in results["splits"].values():  # the completions went to the file; the figures are returned
            res.pop("samples", None)
    return results
