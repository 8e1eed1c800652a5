"""The ``srft analyze`` pipeline: every analysis of every regime, written as Markdown, JSON and PNGs.

For each regime of a comparison directory (or for a list of plain model directories with
``--models``): a fixed response set is made from the base model once, the base and every
finished run's final model are scored on it once, and the token-shift and checkpoint-map
analyses both use those scores; entropy dynamics come from the runs' ``metrics.jsonl``.
A run that cannot be analysed (no ``model/``, unreadable files, another tokenizer) is
reported in ``analysis.md`` and left out; the rest go on.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from srft.analysis import ckpt_map, entropy, token_shift
from srft.analysis.responses import (
    AnalysisError,
    ResponseSet,
    build_response_set,
    context_window,
    load_or_build,
)
from srft.analysis.runs import Run, data_config, discover_runs, group_by, read_metrics
from srft.analysis.score import (
    Layout,
    check_vocab,
    load_model_for_scoring,
    score_logprobs,
)
from srft.config import DataConfig

ANALYSES = ("shift", "entropy", "map")


@dataclass
class Options:
    n_prompts: int = 64
    threshold: float | None = None  # None: the measure's default (0.1 for prob, ln 2 for logratio)
    measure: str = "prob"
    only: tuple[str, ...] = ANALYSES
    seed: int = 0  # base-model sampling seed of the response set
    batch_size: int = 16
    device: str = "auto"
    smooth: int | None = None  # entropy moving-average window in steps; None: 1/20 of the run


@dataclass
class Scored:
    """One regime's models scored on its response set."""

    base_path: str
    rs: ResponseSet
    rs_path: Path
    layout: Layout
    logp_base_N: torch.Tensor
    logp_N: dict[str, torch.Tensor]  # run label -> [N]
    runs: list[Run]  # the runs that were scored, in order


def method_colors(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every figure of a report."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, m in enumerate(methods)}


# --------------------------------------------------------------------------- scoring


def score_regime(regime: str, runs: list[Run], base_path: str, data_cfg: DataConfig, out_dir: Path, opts: Options,
                 problems: list[str], say: Callable[[str], None]) -> Scored:
    """Make (or reuse) the regime's response set with the base model, and score the base and every run on it."""
    from srft.models.loading import load_tokenizer, resolve_device
    from srft.tasks import make_task

    device = resolve_device(opts.device)
    base = load_model_for_scoring(Path(base_path), device)
    tokenizer = load_tokenizer(Path(base_path))
    # make_task only reads cfg.data: the run's data section is enough, whatever else its config holds.
    task = make_task(SimpleNamespace(data=data_cfg))
    meta = {"base_model": str(base_path), "task": data_cfg.task, "split": "test_id", "data_seed": data_cfg.seed,
            "n_prompts": opts.n_prompts, "sample_seed": opts.seed, "temperature": 1.0,
            "max_response_tokens": data_cfg.max_response_tokens, "template": data_cfg.template}
    rs_path = out_dir / f"responses-{regime}.jsonl"
    try:
        rs = load_or_build(rs_path, meta, lambda: build_response_set(base, tokenizer, task, data_cfg, opts.n_prompts,
                                                                     opts.seed, say), say)
    finally:
        close = getattr(task, "close", None)  # e.g. the file task's verifier processes
        if callable(close):
            close()
    if not len(rs):
        raise AnalysisError(f"the response set {rs_path} is empty")
    window = context_window(base)
    if window is not None and max(len(p) + len(r) for p, r in zip(rs.prompt_ids, rs.response_ids)) > window:
        raise AnalysisError(f"{rs_path} has sequences longer than the base model's context window ({window}); "
                            f"delete it to make a new one")
    check_vocab(base, rs, f"base model {base_path}")
    t0 = time.perf_counter()
    logp_base_N = score_logprobs(base, rs, opts.batch_size)
    say(f"  scored base model on {rs.n_tokens} tokens ({time.perf_counter() - t0:.1f} s)")
    base = None  # free it before the runs' models are loaded
    logp_N, scored_runs = {}, []
    for run in runs:
        try:
            model = load_model_for_scoring(run.model_dir, device)
            check_vocab(model, rs, f"{run.label}")
            logp_N[run.label] = score_logprobs(model, rs, opts.batch_size)
            scored_runs.append(run)
            del model
        except Exception as e:  # noqa: BLE001 -- one bad run must not stop the others: report it and go on
            problems.append(f"{regime}/{run.label}: {type(e).__name__}: {e}; left out of the token-shift and map "
                            f"analyses")
            say(f"  {run.label}: skipped ({e})")
    return Scored(str(base_path), rs, rs_path, Layout.of(rs), logp_base_N, logp_N, scored_runs)


def choose_base(regime: str, runs: list[Run], problems: list[str]) -> tuple[str | None, list[Run]]:
    """The regime's base model (the one most of its runs started from) and the runs that started from it."""
    counts = Counter(r.base_model for r in runs if r.base_model)
    if not counts:
        problems.append(f"{regime}: no run's eval.json names its base model (base_model); token shift and map skipped")
        return None, []
    base = counts.most_common(1)[0][0]
    same = [r for r in runs if r.base_model == base]
    for r in runs:
        if r.base_model != base:
            problems.append(f"{regime}/{r.label}: started from {r.base_model}, not the regime's base model {base}; "
                            f"left out of the token-shift and map analyses")
    return base, same


# --------------------------------------------------------------------------- one regime


def analyze_regime(regime: str, runs: list[Run], out_dir: Path, opts: Options, problems: list[str],
                   say: Callable[[str], None], base_path: str | None = None,
                   data_cfg: DataConfig | None = None) -> tuple[list[str], dict]:
    """The Markdown lines and JSON results of one regime's analyses."""
    by_method = group_by(runs, "method")
    colors = method_colors(list(by_method))
    md = [f"## Regime `{regime}`", "",
          "Runs: " + ", ".join(f"{m} ({len(rs)} seed{'s' if len(rs) != 1 else ''})" if rs[0].seed else m
                               for m, rs in by_method.items()) + ".", ""]
    res: dict = {"runs": [{"label": r.label, "method": r.method, "seed": r.seed, "path": str(r.path)} for r in runs]}

    scored, cfg = None, data_cfg
    if "shift" in opts.only or "map" in opts.only:
        if base_path is None:
            base_path, runs_same = choose_base(regime, runs, problems)
        else:
            runs_same = runs
        if base_path is not None and runs_same:
            cfg = data_cfg or data_config(runs_same[0].data)
            if data_cfg is None and ":" in cfg.task:  # named by a run directory: say so before its code runs
                say(f"  importing task plugin {cfg.task} (named by {runs_same[0].path / 'config.yaml'}): "
                    f"its code runs as your user")
            try:
                scored = score_regime(regime, runs_same, base_path, cfg, out_dir, opts, problems, say)
            except Exception as e:  # noqa: BLE001 -- e.g. the base model is not on this machine: the other regimes go on
                problems.append(f"{regime}: token shift and map skipped: {type(e).__name__}: {e}")
                say(f"  token shift and map skipped: {e}")
        if scored is None or not scored.runs:
            md += ["### Token-probability shift and checkpoint map", "",
                   "Skipped: no run could be scored (see Problems).", ""]
            scored = None
        else:
            md += response_set_lines(scored, cfg)
            res["response_set"] = {"path": scored.rs_path.name, **scored.rs.meta}
    # Sections in the order of the paper's argument: what moved, how entropy went, where the models ended up.
    if scored is not None and "shift" in opts.only:
        md += shift_section(regime, scored, out_dir, opts, colors, res)
    if "entropy" in opts.only:
        md += entropy_section(regime, by_method, out_dir, opts, colors, problems, res)
    if scored is not None and "map" in opts.only:
        md += map_section(regime, scored, out_dir, colors, res)
    return md, res


def response_set_lines(scored: Scored, cfg: DataConfig) -> list[str]:
    c = scored.rs.counts()
    return [(f"Response set [`{scored.rs_path.name}`]({scored.rs_path.name}): test_id prompts of task "
            f"`{cfg.task}` (data seed {cfg.seed}), each with its expert demonstration "
            f"({c['expert_sequences']} sequences, {c['expert_tokens']} tokens) and one sample of the base model at "
            f"temperature 1 (sampling seed {scored.rs.meta.get('sample_seed')}; {c['base_sequences']} sequences, "
            f"{c['base_tokens']} tokens). Base model: `{scored.base_path}`. Every model is scored on these same "
            f"tokens."), ""]


def shift_section(regime: str, scored: Scored, out_dir: Path, opts: Options, colors: dict, res: dict) -> list[str]:
    masks = {k: scored.layout.kind_mask_N(k) for k in ("expert", "base")}
    results: dict[str, list[dict]] = {}
    per_run = {}
    for run in scored.runs:
        r = token_shift.token_shift(scored.logp_base_N, scored.logp_N[run.label], masks, opts.threshold, opts.measure)
        results.setdefault(run.method, []).append(r)
        per_run[run.label] = r
    first = next(iter(per_run.values()))
    png = token_shift.plot_histograms(results, out_dir / f"shift-{regime}.png",
                                      f"{regime}: token-probability change from the base model", colors)
    res["shift"] = {"per_run": per_run, "per_method": token_shift.summarize(results)}
    what = ("absolute change in probability |p_model − p_base|" if opts.measure == "prob"
            else "absolute change in log-probability |log p_model − log p_base|")
    diff = "p_model − p_base" if opts.measure == "prob" else "log p_model − log p_base"
    return ["### Token-probability shift", "",
            (f"Fraction of response tokens whose {what} exceeds {first['threshold']:.3g}, mean ± std over seeds, "
            f"on the expert demonstrations and on the base model's own samples."), "",
            token_shift.markdown_table(results), "",
            f"![token shift]({png.name})", "",
            (f"*{png.name}*: histograms of {diff} per token ({token_shift.HIST_BINS} bins over "
            f"{list(token_shift.HIST_RANGES[opts.measure])}, values outside clipped into the end bins), each "
            f"method's seeds pooled, as a fraction of the kind's tokens on a log scale; dotted lines at "
            f"±threshold."), ""]


def map_section(regime: str, scored: Scored, out_dir: Path, colors: dict, res: dict) -> list[str]:
    labels = ["base"] + [r.label for r in scored.runs]
    vectors = [scored.logp_base_N] + [scored.logp_N[r.label] for r in scored.runs]
    m = ckpt_map.checkpoint_map(labels, vectors, base_index=0)
    base_mask_N = scored.layout.kind_mask_N("base")
    rows = []
    for i, run in enumerate(scored.runs, start=1):
        logp_N = scored.logp_N[run.label]
        rows.append({"label": run.label, "method": run.method,
                     "rms": ckpt_map.rms_distance(logp_N, scored.logp_base_N),
                     "kl": ckpt_map.kl_estimate(scored.logp_base_N, logp_N, base_mask_N),
                     "x": m["coords"][i][0], "y": m["coords"][i][1],
                     "test_id_after": (run.eval.get("after") or {}).get("test_id")})
    png = ckpt_map.plot_map(rows, out_dir / f"map-{regime}.png", f"{regime}: final checkpoints around the base model",
                            colors, m["explained"])
    res["map"] = {"runs": rows, **m}
    return ["### Checkpoint map", "",
            ("Distance of each final model from the base model on the response set: RMS difference of per-token "
            "log-probabilities over all tokens, and mean log p_base − log p_model over the base model's own samples "
            "(an estimate of KL(base‖model) per token)."), "",
            ckpt_map.markdown_table(rows), "",
            f"![checkpoint map]({png.name})", "",
            (f"*{png.name}*: classical MDS of the pairwise RMS log-prob distances between all {len(labels)} models "
            f"(base and runs), translated so that the base model is at the origin; the two axes keep "
            f"{m['explained']:.0%} of the variance, so distances in the plane are "
            f"{'exact' if m['explained'] > 0.999 else 'approximate (the table has the exact ones)'}."), ""]


def entropy_section(regime: str, by_method: dict[str, list[Run]], out_dir: Path, opts: Options, colors: dict,
                    problems: list[str], res: dict) -> list[str]:
    records_by_method: dict[str, list[list[dict]]] = {}
    for method, runs in by_method.items():
        for run in runs:
            records = read_metrics(run.path)
            if records:
                records_by_method.setdefault(method, []).append(records)
            else:
                problems.append(f"{regime}/{run.label}: no metrics.jsonl records; left out of the entropy plot")
    if not records_by_method:
        return ["### Entropy dynamics", "", "Skipped: no run has metrics.jsonl records.", ""]
    png = entropy.plot_entropy(records_by_method, out_dir / f"entropy-{regime}.png",
                               f"{regime}: token entropy over training", colors, opts.smooth)
    curves = {key: {m: {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in c.items()}
                    for m, c in entropy.method_curves(records_by_method, key, opts.smooth).items()}
              for key in entropy.KEYS}
    res["entropy"] = curves
    lines = ["### Entropy dynamics", "",
             ("Mean token entropy (nats) logged by the training loop: over each step's rollouts, and over its "
             "demonstrations for the methods that train on them; mean ± std over seeds."), "",
             entropy.markdown_table(records_by_method), "",
             ("What else moved, from the same logs (mean over seeds of the first -> the last 10 steps): accuracy of "
              "the step's own rollouts, the share of prompts none of whose rollouts is correct, response length in "
              "tokens, and SRFT's entropy-scaled weights where logged."), "",
             entropy.dynamics_table(records_by_method), ""]
    if png is not None:
        lines += [f"![entropy]({png.name})", "",
                  (f"*{png.name}*: from each run's metrics.jsonl, `entropy_rollout` (left) and `entropy_demo` (right, "
                  f"where logged) per step; per method the mean over seeds of each seed's trailing moving average "
                  f"(window in the title), with a band from the lowest to the highest seed."), ""]
    return lines


# --------------------------------------------------------------------------- whole reports


def analyze_compare_dir(compare_dir: Path, out_dir: Path | None = None, opts: Options | None = None,
                        command: str = "", say: Callable[[str], None] = print) -> dict:
    """Analyse every regime of a comparison directory; write analysis.md, analysis.json and PNGs to ``out_dir``."""
    opts = opts or Options()
    compare_dir = Path(compare_dir)
    if not compare_dir.is_dir():
        raise AnalysisError(f"{compare_dir} is not a directory")
    runs, problems = discover_runs(compare_dir)
    if not runs:
        raise AnalysisError(f"no finished runs in {compare_dir} (looked for REGIME/METHOD/seedS/eval.json)")
    out_dir = Path(out_dir) if out_dir else compare_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    regimes = group_by(runs, "regime")
    say(f"{len(runs)} finished runs in {len(regimes)} regime(s) under {compare_dir}")
    md = [f"# Analysis of `{compare_dir}`", "", f"Made with `{command}`." if command else "", ""]
    result: dict = {"compare_dir": str(compare_dir), "command": command, "options": asdict(opts), "regimes": {}}
    for regime, rruns in regimes.items():
        say(f"regime {regime}: {len(rruns)} runs")
        lines, res = analyze_regime(regime, rruns, out_dir, opts, problems, say)
        md += lines
        result["regimes"][regime] = res
    return _write(out_dir, md, result, problems, say)


def analyze_models(base_dir: Path, model_dirs: list[Path], task: str, out_dir: Path, opts: Options | None = None,
                   data_seed: int = 1234, max_response_tokens: int = 96, command: str = "",
                   say: Callable[[str], None] = print) -> dict:
    """Token shift and checkpoint map of plain model directories against a base model directory."""
    opts = opts or Options()
    if not model_dirs:
        raise AnalysisError("--models needs a base model directory and at least one model directory to compare")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, seen = [], Counter()
    for d in model_dirs:
        d = Path(d)
        # runs/<name>/model is named after its run, a plain directory after itself
        label = d.parent.name if d.name == "model" and d.parent.name else d.name
        seen[label] += 1
        if seen[label] > 1:
            label = f"{label}-{seen[label]}"
        runs.append(Run("models", label, "", d, model_path=d))
    problems: list[str] = []
    cfg = DataConfig(task=task, seed=data_seed, max_response_tokens=max_response_tokens)
    md = [f"# Analysis of models against `{base_dir}`", "", f"Made with `{command}`." if command else "", ""]
    opts.only = tuple(a for a in opts.only if a != "entropy")  # plain model directories have no training logs
    if not opts.only:
        raise AnalysisError("--models makes the token-shift and map analyses only (no training logs for entropy)")
    lines, res = analyze_regime("models", runs, out_dir, opts, problems, say, base_path=str(base_dir), data_cfg=cfg)
    result = {"base_model": str(base_dir), "command": command, "options": asdict(opts), "regimes": {"models": res}}
    return _write(out_dir, md + lines, result, problems, say)


def _write(out_dir: Path, md: list[str], result: dict, problems: list[str], say: Callable[[str], None]) -> dict:
    if problems:
        md += ["## Problems", "", *[f"- {p}" for p in problems], ""]
    result["problems"] = problems
    (out_dir / "analysis.md").write_text("\n".join(md).rstrip() + "\n")
    (out_dir / "analysis.json").write_text(json.dumps(_finite(result), indent=1))
    for p in problems:
        say(f"problem: {p}")
    say(f"wrote {out_dir / 'analysis.md'}, {out_dir / 'analysis.json'} and the figures in {out_dir}")
    return result


def _finite(x):
    """NaN and infinities as null, so that analysis.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


# --------------------------------------------------------------------------- the command


def run_cli(args) -> int:
    """``srft analyze``: check the arguments, run the analyses, print where the report is."""
    only = tuple(a.strip() for a in args.only.split(",") if a.strip())
    bad = [a for a in only if a not in ANALYSES]
    if bad or not only:
        print(f"error: --only takes a comma-separated list of {', '.join(ANALYSES)}; got {args.only!r}", file=sys.stderr)
        return 2
    if args.measure not in token_shift.MEASURES:
        print(f"error: --measure must be one of {', '.join(token_shift.MEASURES)}", file=sys.stderr)
        return 2
    if args.n_prompts <= 0:
        print("error: --n-prompts must be > 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per model would drown the report's messages
    opts = Options(n_prompts=args.n_prompts, threshold=args.threshold, measure=args.measure, only=only,
                   seed=args.seed, batch_size=args.batch_size, device=args.device, smooth=args.smooth)
    command = "srft analyze " + shlex.join(_argv(args))
    try:
        if args.models:
            if args.compare_dir:
                print("error: give either COMPARE_DIR or --models BASE_DIR MODEL_DIR..., not both", file=sys.stderr)
                return 2
            if len(args.models) < 2:
                print("error: --models needs BASE_DIR and at least one MODEL_DIR", file=sys.stderr)
                return 2
            analyze_models(Path(args.models[0]), [Path(m) for m in args.models[1:]], args.task,
                           Path(args.out or "analysis"), opts, args.data_seed, args.max_new_tokens, command)
        else:
            if not args.compare_dir:
                print("error: give COMPARE_DIR (made by srft compare) or --models BASE_DIR MODEL_DIR...",
                      file=sys.stderr)
                return 2
            analyze_compare_dir(Path(args.compare_dir), Path(args.out) if args.out else None, opts, command)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _argv(args) -> list[str]:
    """The arguments that reproduce this analysis (defaults written out, so the line says what was used)."""
    out = []
    if args.models:
        out += ["--models", *args.models, f"data.task={args.task}", f"data.seed={args.data_seed}",
                f"data.max_response_tokens={args.max_new_tokens}"]
    else:
        out.append(args.compare_dir)
    if args.out:
        out += ["--out", args.out]
    out += ["--n-prompts", str(args.n_prompts), "--measure", args.measure]
    if args.threshold is not None:
        out += ["--threshold", str(args.threshold)]
    out += ["--only", args.only, f"run.seed={args.seed}"]
    if args.smooth:
        out += ["--smooth", str(args.smooth)]
    return out
