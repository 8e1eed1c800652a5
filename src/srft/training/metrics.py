"""Timing of named phases, and the metrics file."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from srft.rundir import atomic_write_text, read_jsonl


@contextmanager
def timed(name: str, times: dict):
    """Add the wall time of the block to ``times['t_' + name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[f"t_{name}"] = times.get(f"t_{name}", 0.0) + time.perf_counter() - start


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object a line. ``write=False`` (ranks other than
    0 under torchrun): appends and truncations do nothing."""

    def __init__(self, path: Path, write: bool = True):
        self.path = path
        self.write = write

    def append(self, record: dict) -> None:
        if not self.write:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        return read_jsonl(self.path)

    def truncate_from(self, step: int) -> None:
        """Drop records of ``step`` and later (written after the checkpoint a resumed run starts
        from). The file is replaced through a temporary one: a kill leaves the old or the new file."""
        if not self.write:
            return
        kept = [r for r in self.read() if r.get("step", -1) < step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
