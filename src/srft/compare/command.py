"""The ``srft compare`` command: check the plan, build base models, run, report."""

from __future__ import annotations

import shlex
from pathlib import Path

from srft.compare.plan import (
    RunSpec,
    Selection,
    base_model_recipes,
    check_existing,
    load_plan,
    plan_runs,
    save_plan,
    scan_runs,
    select,
    task_plugins,
    validate_configs,
)
from srft.compare.report import build_report, tables_text
from srft.compare.runner import (
    run_all,
    run_state,
    running_elsewhere,
    threads_per_run,
    train_command,
)
from srft.compare.suite import Suite, SuiteError, list_suites, load_suite

DESCRIPTION = """\
Train every (regime, method, seed) of a comparison suite with 'srft train' and report them
side by side. Positional section.key=value arguments after the suite are overrides for every
run, applied after the suite's common ones. Lists are comma-separated. Suites: built-in names
({suites}; files in srft/presets/compare/) or a path to a suite YAML file.
Runs go to OUT/REGIME/METHOD/seedS (train.log, run_status.json and what 'srft train' writes);
the report to OUT/compare.md, OUT/compare.json and OUT/curves-REGIME.png.

Rerunning the same command continues: finished runs (eval.json) are skipped, stopped ones
resume from their checkpoint. A failed run is reported and the others go on. Ctrl-C stops
the running runs after they save a checkpoint.

examples:
  srft compare quick --dry-run                         # the planned commands
  srft compare quick run.steps=10 --methods srft,grpo --seeds 0
  srft compare entropy --regimes strong --jobs 2
  srft compare --report-only runs/compare-quick        # report the finished runs
  srft compare --report-only runs/compare-quick --reference grpo   # paired gaps against grpo
""".format(suites=", ".join(list_suites()))


def _csv(text: str | None, kind=str) -> list | None:
    if not text:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise SuiteError(f"'{text}' is not a comma-separated list of {kind.__name__}s") from e


def suite_meta(suite: Suite, sel: Selection) -> dict:
    """What the report says about the comparison."""
    return {"suite": suite.name, "description": suite.description, "suite_file": suite.path,
            "seeds": sel.seeds, "common": suite.common, "extra": sel.extra,
            "regimes": {r: suite.regimes[r] for r in sel.regimes},
            "methods": [{"name": m.name, "preset": m.preset, "overrides": m.overrides}
                        for m in suite.methods if m.name in sel.methods]}


def check_reference(reference: str | None, methods: list[str]) -> None:
    if reference is not None and reference not in methods:
        raise SuiteError(f"--reference {reference}: not among the compared methods ({', '.join(methods)}); "
                         f"give one of them")


def report(out_dir: Path, say=print, reference: str | None = None) -> int:
    """``--report-only``: the report of what ``out_dir`` holds (paired differences against ``reference``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise FileNotFoundError(f"{out_dir} is not a directory")
    planned = load_plan(out_dir)
    if planned:
        suite, sel = planned
        runs, meta = plan_runs(suite, sel, out_dir), suite_meta(suite, sel)
    else:  # a directory without plan.json: whatever run directories it holds
        runs = scan_runs(out_dir)
        meta = {"suite": out_dir.name, "seeds": sorted({r.seed for r in runs})}
    if not runs:
        raise FileNotFoundError(f"{out_dir} holds no runs (OUT/REGIME/METHOD/seedS)")
    check_reference(reference, list(dict.fromkeys(r.method for r in runs)))
    doc = build_report(out_dir, runs, meta, reference=reference)
    say(tables_text(doc))
    say(f"wrote {out_dir / 'compare.md'}, {out_dir / 'compare.json'} and the curves-*.png plots")
    return 0


def ensure_base_models(runs: list[RunSpec], configs: dict, say=print) -> None:
    """Build each built-in base model the runs need, once, here: parallel runs must not race to build it."""
    import os

    from srft.models.base_model import BaseModelConfig, ensure_base_model

    for cache, task, seed, steps in base_model_recipes(runs, configs):
        say(f"base model: {task}, seed {seed}, {steps} pre-training steps (built if not cached in {cache})")
        ensure_base_model(Path(os.path.expanduser(cache)), task_name=task, seed=seed,
                          config=BaseModelConfig(steps=steps))


def check_not_running(runs: list[RunSpec]) -> None:
    """Fail if an earlier, killed ``srft compare`` left some of these runs running."""
    busy = [f"{r.key} (pid {pid})" for r in runs if (pid := running_elsewhere(r.run_dir))]
    if busy:
        raise SuiteError("these runs are still running, started by an earlier srft compare: " + ", ".join(busy)
                         + "; wait for them or stop them (kill PID) first")


def announce_plugins(runs: list[RunSpec], configs: dict, say=print) -> None:
    """Say which task plugin code the runs will import (and so run), before anything runs."""
    plugins = task_plugins(runs, configs)
    if not plugins:
        return
    say("these runs import task plugin code, which runs as your user; check it is code you trust:")
    for what, keys in plugins.items():
        say(f"  {what}: {len(keys)} run(s), e.g. {keys[0]}")


def dry_run(runs: list[RunSpec], threads: int, say=print) -> None:
    for run in runs:
        state = run_state(run.run_dir)
        if state == "finished":
            say(f"# {run.key}: finished, skipped")
            continue
        say(f"# {run.key}{': resumes from its checkpoint' if state == 'resume' else ''}")
        say(shlex.join(train_command(run, state == "resume", threads)) + f" > {run.run_dir / 'train.log'} 2>&1")


def run_compare(args, say=print) -> int:
    """``srft compare``: 0 when every run finished, 1 when some failed."""
    reference = getattr(args, "reference", None)
    if args.report_only:
        return report(Path(args.report_only), say, reference)
    if not args.suite:
        raise SuiteError("give a suite (built-in name or YAML file), or --report-only DIR")
    suite = load_suite(args.suite)
    sel = select(suite, _csv(args.seeds, int), _csv(args.methods), _csv(args.regimes), args.overrides)
    out_dir = Path(args.out or f"runs/compare-{suite.name}")
    runs = plan_runs(suite, sel, out_dir)
    check_reference(reference, sel.methods)
    configs = validate_configs(runs)  # every run's config, before anything runs
    check_existing(runs, configs)
    check_not_running(runs)
    jobs = max(1, args.jobs)
    threads = threads_per_run(jobs)
    announce_plugins(runs, configs, say)
    if args.dry_run:
        dry_run(runs, threads, say)
        return 0
    save_plan(out_dir, suite, sel)  # the report covers this and earlier invocations' selections
    pending = [r for r in runs if run_state(r.run_dir) != "finished"]
    say(f"suite {suite.name}: {len(runs)} runs ({len(sel.regimes)} regimes x {len(sel.methods)} methods x "
        f"{len(sel.seeds)} seeds), {len(pending)} to run, {jobs} at a time with {threads} thread(s) each; "
        f"output in {out_dir}")
    ensure_base_models(pending, configs, say)
    results = run_all(runs, jobs=jobs, threads=threads, say=say)
    say("")
    report(out_dir, say, reference)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        say(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.run.key} (log: {r.run.run_dir / 'train.log'})"
                                                         for r in failed))
        return 1
    return 0
