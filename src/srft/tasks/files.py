"""A task backed by data files (parquet or jsonl, verl/LUFFY or flat schema) and a math verifier.

Used when ``data.task=file``: the train split comes from ``data.train_file``, the test splits
from ``data.test_id_file`` / ``data.test_ood_file`` (either may be absent), and rewards from
:class:`srft.rewards.Verifier` (math-verify in a process pool with a hard timeout per sample).
"""

from __future__ import annotations

import random
from pathlib import Path

from srft.scoring import Score

# the config key each split's file comes from, named in error messages
CONFIG_KEYS = {"train": "data.train_file", "test_id": "data.test_id_file", "test_ood": "data.test_ood_file"}


class FileTask:
    name = "file"

    def __init__(self, train_file: str | None, test_files: dict[str, str | None] | None = None,
                 reward: str = "auto", workers: int = 2, timeout_s: float = 5.0, think_answers: bool = False):
        from srft.data.loading import DataError

        if train_file is None and not any((test_files or {}).values()):
            raise DataError("data.task=file needs data.train_file (a .parquet, .jsonl or .json file), or for "
                            "evaluation data.test_id_file or data.test_ood_file")
        # without a training file (evaluation only) the task has its test splits alone
        self.files = {**({"train": train_file} if train_file is not None else {}), **(test_files or {})}
        for split, path in self.files.items():
            if path is not None and not Path(path).exists():
                raise DataError(f"{self.key(split)} {path} does not exist; give the path of a .parquet, "
                                f".jsonl or .json file")
        self.test_splits = tuple(s for s, p in self.files.items() if s != "train" and p is not None)
        self.reward = reward
        self.workers = workers
        self.timeout_s = timeout_s
        self.think_answers = think_answers
        self._rows: dict[str, list[dict]] = {}
        self._verifier = None
        # Read every file now: a corrupt or unusable file fails here, before a model is
        # loaded (or a base model built) and before a run directory exists.
        for split, path in self.files.items():
            if path is not None:
                self._load(split)

    @staticmethod
    def key(split: str) -> str:
        """Where a split's file is configured (``data.train_file``, ...), for messages."""
        return CONFIG_KEYS.get(split, f"the {split} file")

    def _load(self, split: str) -> list[dict]:
        from srft.data.loading import load_rows

        if split not in self._rows:
            path = self.files.get(split)
            if path is None:
                raise ValueError(f"no data file for split '{split}'")
            self._rows[split] = load_rows(path, label=self.key(split))
        return self._rows[split]

    def generate(self, split: str, n: int, seed: int) -> list[dict]:
        """The split's rows; with 0 < n < rows, a seeded random subset of n of them.

        The result keeps the file's unusable rows in ``.problems`` so that they are reported.
        """
        from srft.data.loading import Rows

        rows = self._load(split)
        if 0 < n < len(rows):
            idx = sorted(random.Random(seed).sample(range(len(rows)), n))
            return Rows([rows[i] for i in idx], problems=rows.problems, source=rows.source)
        return Rows(rows, problems=rows.problems, source=rows.source)

    @property
    def verifier(self):
        if self._verifier is None:
            from srft.rewards import Verifier

            self._verifier = Verifier(kind=self.reward, workers=self.workers, timeout_s=self.timeout_s,
                                      think_answers=self.think_answers)
        return self._verifier

    def verify(self, completion: str, answer: str) -> Score:
        return self.verifier.score_batch([completion], [answer])[0]

    def verify_batch(self, completions: list[str], answers: list[str]) -> list[Score]:
        return self.verifier.score_batch(completions, answers)

    @staticmethod
    def answer_response(answer: str) -> str:
        """A response that states ``answer`` in ``\\boxed{}``, which both the math and the choice verifier
        take as the final answer (see :func:`srft.tasks.base.answer_response`)."""
        return f"The answer is \\boxed{{{answer}}}."

    def close(self) -> None:
        if self._verifier is not None:
            self._verifier.close()
            self._verifier = None

