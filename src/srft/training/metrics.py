"""Timing of named phases, and the metrics file."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def timed(name: str, times: dict):
    """Add the wall time of the block to ``times['t_' + name]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[f"t_{name}"] = times.get(f"t_{name}", 0.0) + time.perf_counter() - start


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object a line."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_from(self, step: int) -> None:
        """Drop records of ``step`` and later (written after the checkpoint a resumed run starts from)."""
        kept = [r for r in self.read() if r.get("step", -1) < step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
