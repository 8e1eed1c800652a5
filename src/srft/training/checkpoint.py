"""Resumable checkpoints: model, optimiser, scheduler, RNG states and the data position.

A checkpoint is written to a temporary directory and renamed into place, so that an
interrupted save never replaces the last good one.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

CKPT = "checkpoint"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, model, tokenizer, optimizer, scheduler, step: int, extra: dict) -> Path:
    final = run_dir / CKPT
    tmp = run_dir / f"{CKPT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # The exact parameters (adapters included), for resuming; the run's final model/ is the HF export.
    torch.save(model.state_dict(), tmp / "model_state.pt")
    tokenizer.save_pretrained(tmp / "tokenizer")
    torch.save({
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        "extra": extra,
    }, tmp / "trainer.pt")
    old = run_dir / f"{CKPT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / CKPT / "trainer.pt").exists()


def load_trainer_state(run_dir: Path) -> dict:
    return torch.load(run_dir / CKPT / "trainer.pt", weights_only=False)


def load_model_state(run_dir: Path, model) -> None:
    model.load_state_dict(torch.load(run_dir / CKPT / "model_state.pt", weights_only=True))
