"""Run a comparison's runs as ``srft train`` subprocesses: resumable, a few at a time.

Per run directory:

- ``eval.json`` exists: the run is finished and skipped;
- a checkpoint but no ``eval.json``: the run continues with ``srft train --resume``;
- otherwise it starts from scratch.

Each run's output goes to ``train.log`` in its directory and its outcome to
``run_status.json`` (status, wall time, exit code, the log's last lines if it failed). A
failing run is recorded and the others go on. Ctrl-C (or SIGTERM) asks every running child
to stop (SIGTERM: the training loop finishes its step and saves a checkpoint), so running
the same command again continues where it stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from srft import rundir
from srft.compare.plan import RunSpec
from srft.rundir import has_checkpoint

STATUS_FILE = "run_status.json"
LOG_FILE = "train.log"
TAIL_LINES = 20

# (run, resume, threads) -> the command line of that run
CommandBuilder = Callable[[RunSpec, bool, int], list[str]]


def train_command(run: RunSpec, resume: bool, threads: int) -> list[str]:
    """``python -m srft train`` for ``run``; a resumed run takes its config from its own config.yaml."""
    local = ["run.progress=false"]
    # a model.threads the user set (an override on the command line) wins over the runner's share of the cores
    if not any(o.startswith("model.threads=") for o in run.overrides):
        local.append(f"model.threads={threads}")
    if resume:
        return [sys.executable, "-m", "srft", "train", "--resume", str(run.run_dir), *local]
    return [sys.executable, "-m", "srft", "train", "--preset", run.preset, *run.overrides, *local]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_run(jobs: int) -> int:
    return max(1, cpu_count() // max(jobs, 1))


def run_state(run_dir: Path) -> str:
    """``finished``, ``resume`` (a checkpoint to continue from) or ``new``."""
    if rundir.is_finished(run_dir):
        return "finished"
    if has_checkpoint(run_dir) and (run_dir / rundir.CONFIG).exists():
        return "resume"
    return "new"


def running_elsewhere(run_dir: Path) -> int | None:
    """The pid of a live process that an earlier ``srft compare`` started on this run, if any.

    Its runner may have been killed without stopping it; starting the run again would
    have two processes write one directory.
    """
    st = read_status(run_dir)
    pid = st.get("pid") if st.get("status") == "running" else None
    if not pid:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone (or no /proc: assume gone)
        return None
    return pid if str(run_dir) in cmdline else None


def read_status(run_dir: Path) -> dict:
    return rundir.read_json_object(run_dir / STATUS_FILE) or {}  # missing or unreadable: no status


def write_status(run_dir: Path, status: dict) -> None:
    tmp = run_dir / f"{STATUS_FILE}.tmp"
    tmp.write_text(json.dumps(status, indent=1))
    tmp.replace(run_dir / STATUS_FILE)


def log_tail(path: Path, n: int = TAIL_LINES) -> str:
    if not path.exists():
        return ""
    lines = path.read_text(errors="replace").splitlines()
    return "\n".join(lines[-n:])


def final_accuracy(run_dir: Path) -> dict:
    """``after`` accuracies of a finished run's eval.json, by split ({} if unreadable)."""
    after = (rundir.read_json_object(run_dir / "eval.json") or {}).get("after")
    return after if isinstance(after, dict) else {}


def fmt_duration(seconds: float | None) -> str:
    """``42 s``, ``4:12`` or ``1:02:03``."""
    if seconds is None:
        return "–"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class RunResult:
    run: RunSpec
    status: str  # ok, failed, interrupted, skipped
    wall_s: float | None = None
    returncode: int | None = None
    error: str = ""
    resumed: bool = False


@dataclass
class _Active:
    run: RunSpec
    index: int
    proc: subprocess.Popen
    log: object
    started: float
    status: dict = field(default_factory=dict)


class Progress:
    """One line per run start and end, with an ETA from finished runs' durations."""

    def __init__(self, total: int, jobs: int, say: Callable[[str], None], durations: list[float]):
        self.total, self.jobs, self.say = total, jobs, say
        self.durations = list(durations)  # of runs finished ok, earlier invocations' included
        self.done = 0
        self.t0 = time.monotonic()
        self.width = len(str(total))

    def started(self, index: int, run: RunSpec, resumed: bool) -> None:
        note = "  (resuming from its checkpoint)" if resumed else ""
        self.say(f"[{index:>{self.width}}/{self.total}] start   {run.key}{note}")

    def finished(self, index: int, result: RunResult, active: list[_Active], pending: int) -> None:
        self.done += 1
        if result.status == "ok" and result.wall_s is not None:
            self.durations.append(result.wall_s)
        acc = final_accuracy(result.run.run_dir)
        accs = "  ".join(f"{label} {acc[s]:.3f}" for label, s in (("ID", "test_id"), ("OOD", "test_ood")) if s in acc)
        self.say(f"[{index:>{self.width}}/{self.total}] {result.status:<7} {result.run.key}  "
                 f"{fmt_duration(result.wall_s)}  {accs}  | {self.done} done, {len(active)} running, "
                 f"{pending} waiting, elapsed {fmt_duration(time.monotonic() - self.t0)}, "
                 f"ETA {self.eta(active, pending)}")

    def eta(self, active: list[_Active], pending: int) -> str:
        if not self.durations:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        work = pending * mean + sum(max(mean - (now - a.started), 0.0) for a in active)
        return fmt_duration(work / self.jobs)


def run_all(runs: list[RunSpec], jobs: int = 1, threads: int | None = None,
            build_command: CommandBuilder = train_command, say: Callable[[str], None] = print,
            poll_s: float = 0.5, grace_s: float = 300.0) -> list[RunResult]:
    """Run every unfinished run, ``jobs`` at a time; return one result per run, in run order.

    ``build_command`` makes each run's command line (tests pass a fake). On Ctrl-C the
    running children get SIGTERM and ``grace_s`` seconds to save a checkpoint (a second
    Ctrl-C kills them at once); then KeyboardInterrupt propagates.
    """
    threads = threads or threads_per_run(jobs)
    results: dict[str, RunResult] = {}
    todo = []
    for run in runs:
        if run_state(run.run_dir) == "finished":
            results[run.key] = RunResult(run, "skipped", read_status(run.run_dir).get("wall_s"))
        else:
            todo.append(run)
    if results:
        say(f"{len(results)} of {len(runs)} runs already finished: skipped")
    earlier = [r.wall_s for r in results.values() if r.wall_s is not None]
    progress = Progress(len(todo), jobs, say, earlier)
    active: list[_Active] = []
    queue = list(enumerate(todo, 1))
    old_term = _sigterm_raises_interrupt()
    try:
        while queue or active:
            while queue and len(active) < jobs:
                index, run = queue.pop(0)
                active.append(_start(run, index, threads, build_command))
                progress.started(index, run, active[-1].status["resumed"])
            time.sleep(poll_s)
            for a in [a for a in active if a.proc.poll() is not None]:
                active.remove(a)
                results[a.run.key] = _finish(a)
                progress.finished(a.index, results[a.run.key], active, len(queue))
    except KeyboardInterrupt:
        say(f"\nstopping {len(active)} running run(s): each saves a checkpoint; run the same command again "
            f"to continue")
        for a in _stop(active, grace_s):
            results[a.run.key] = _finish(a, interrupted=True)
        raise
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return [results[r.key] for r in runs]


def _sigterm_raises_interrupt():
    """Treat SIGTERM like Ctrl-C (stop the children cleanly); return the old handler, None off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _start(run: RunSpec, index: int, threads: int, build_command: CommandBuilder) -> _Active:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    resume = run_state(run.run_dir) == "resume"
    previous = read_status(run.run_dir)
    cmd = build_command(run, resume, threads)
    log = (run.run_dir / LOG_FILE).open("a")
    log.write(f"=== srft compare, {datetime.now().isoformat(timespec='seconds')}: {' '.join(cmd)}\n")
    log.flush()
    # Own session: a terminal's Ctrl-C reaches only the runner, which stops the children in order.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    status = {
        "run": run.key, "status": "running", "started": datetime.now().isoformat(timespec="seconds"),
        "command": cmd, "resumed": resume, "pid": proc.pid,
        # a resumed run continues the work of its earlier attempts: their time counts
        "earlier_wall_s": float(previous.get("wall_s") or 0.0) if resume else 0.0,
    }
    write_status(run.run_dir, status)
    return _Active(run, index, proc, log, time.monotonic(), status)


def _finish(a: _Active, interrupted: bool = False) -> RunResult:
    a.log.close()
    rc = a.proc.returncode
    wall = a.status["earlier_wall_s"] + time.monotonic() - a.started
    finished = rc == 0 and (a.run.run_dir / "eval.json").exists()
    if finished:
        status, error = "ok", ""
    elif interrupted:
        status, error = "interrupted", ""
    else:
        status = "failed"
        error = log_tail(a.run.run_dir / LOG_FILE)
        if rc == 0:
            error += "\n(exited 0 but wrote no eval.json)"
    a.status.update(status=status, ended=datetime.now().isoformat(timespec="seconds"), wall_s=round(wall, 2),
                    returncode=rc, error=error)
    a.status.pop("pid", None)
    write_status(a.run.run_dir, a.status)
    return RunResult(a.run, status, wall, rc, error, a.status["resumed"])


def _stop(active: list[_Active], grace_s: float) -> list[_Active]:
    """SIGTERM every child, wait up to ``grace_s`` for them to save and exit, then kill what is left."""
    for a in active:
        _signal(a.proc, signal.SIGTERM, group=False)
    deadline = time.monotonic() + grace_s
    try:
        while any(a.proc.poll() is None for a in active) and time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: do not wait for the checkpoints
    for a in active:
        if a.proc.poll() is None:
            _signal(a.proc, signal.SIGKILL, group=True)
        a.proc.wait()
    return active


def _signal(proc: subprocess.Popen, sig: int, group: bool) -> None:
    try:
        if group:  # the child and anything it started (e.g. verifier workers)
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except ProcessLookupError:
        pass
