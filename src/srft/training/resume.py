"""What a resumed run may change, and the check that it changes nothing else.

A checkpoint holds state made under its config: the optimiser's moments, the data
position, the method's buffers and controllers. A resume that changed, say,
``rollout.n`` or the preset would continue neither run, so it is refused with the keys
that differ. The keys below only steer what happens next, and may change.
"""

from __future__ import annotations

from srft.config import Config, ConfigError

MAY_CHANGE = {
    "run.steps": "extend (or shorten) the run; schedules over the run (the learning rate's, and step "
                 "schedules given as fractions, e.g. a two-stage run's SFT stage) stretch to the new length",
    "run.eval_every": "how often to evaluate",
    "run.save_every": "how often to save",
    "run.keep_checkpoints": "how many checkpoints to keep",
    "run.checkpoint_format": "the layout of the checkpoints saved from here on (either loads)",
    "run.progress": "progress output",
    "run.plots": "plots at the end",
    "run.report_to": "the experiment trackers that get the records from here on",
    "run.tracking_project": "the trackers' project",
    "optim.lr": "the peak learning rate from the resumed step on (e.g. after a divergence)",
    "optim.max_bad_steps": "the divergence guard's patience",
    "model.threads": "CPU threads",
    "model.device": "where to run",
    "data.verifier_workers": "verifier processes",
    "rollout.engine": "the generation engine (the same policy, sampled by other code)",
    "rollout.vllm_max_num_seqs": "vLLM's batch",
    "rollout.vllm_kv_cache_gib": "vLLM's cache",
    "rollout.vllm_gpu_memory_utilization": "vLLM's memory share",
}


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted keys whose values differ, with (old, new)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def fixed_part(config: dict) -> dict:
    """The config without the keys a resume may change: what a checkpoint must match."""
    return {k: v for k, v in flatten(config).items() if k not in MAY_CHANGE}


def check_resume_changes(saved: Config | dict, new: Config | dict, where: str) -> dict[str, tuple]:
    """Raise ``ConfigError`` if ``new`` changes a key outside ``MAY_CHANGE``; return the allowed changes."""
    old_d = saved.to_dict() if isinstance(saved, Config) else saved
    new_d = new.to_dict() if isinstance(new, Config) else new
    changes = config_changes(old_d, new_d)
    refused = {k: v for k, v in changes.items() if k not in MAY_CHANGE}
    if refused:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise ConfigError(f"a resumed run keeps its config, but {where} changes {listed}; keys that may change on "
                          f"resume: {', '.join(MAY_CHANGE)}. To train with other values, start a new run "
                          f"(e.g. srft train --config RUN_DIR/config.yaml KEY=VALUE)")
    return {k: v for k, v in changes.items() if k in MAY_CHANGE}
