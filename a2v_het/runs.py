"""Run folders: the names of the files a run leaves and the reading of them, for every package that needs them.

Training writes a run folder; export, evaluation, coverage, launch and fine-tuning read it. All of them take the
layout from here, so eval/ and model/ never import train/ to find a checkpoint.

Layout of ``RUN_DIR``::

    config.yaml               the full config tree of the run
    checkpoints/
        step_00001000/        DeepSpeed's files (every rank writes its part) +
            model.safetensors     the trained module's weights (rank 0)
            teacher.safetensors   the EMA teacher (data2vec objective only)
            COMPLETE              written last, after a barrier: the checkpoint is whole
        latest                the tag of the newest COMPLETE checkpoint, replaced by an atomic rename

A checkpoint that was cut off half-way has no COMPLETE and is never named by ``latest``; the previous one stays.
An export folder (``a2v-het export``) holds ``config.yaml`` + ``model.safetensors`` (+ ``teacher.safetensors``).
Anything meant to leave the run folder is safetensors, never a pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from a2v_het.atomic import atomic_path, atomic_write_text

COMPLETE = "COMPLETE"
LATEST = "latest"
MODEL_WEIGHTS = "model.safetensors"
TEACHER_WEIGHTS = "teacher.safetensors"
CONFIG = "config.yaml"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def tag_step(tag: str) -> int:
    """``step_00001000`` -> 1000."""
    return int(tag.split("_")[-1])


def latest_tag(run_dir: str | Path) -> str | None:
    """The tag named by ``latest`` if that checkpoint is complete, else None."""
    root = checkpoint_root(run_dir)
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not tag or not (root / tag / COMPLETE).is_file():
        return None
    return tag


def completed_step(run_dir: str | Path) -> int | None:
    """The step of the run's newest complete checkpoint (``latest``), None without one."""
    tag = latest_tag(run_dir)
    return None if tag is None else tag_step(tag)


def is_finished(run_dir: str | Path, max_steps: int) -> bool:
    """Has the run a complete checkpoint at (or past) ``max_steps``?"""
    step = completed_step(run_dir)
    return step is not None and step >= max_steps


def publish_checkpoint(run_dir: str | Path, tag: str, step: int) -> None:
    """Mark ``checkpoints/<tag>`` whole (COMPLETE) and point ``latest`` at it, in that order (rank 0, after the
    barrier that ends the writing)."""
    root = checkpoint_root(run_dir)
    atomic_write_text(root / tag / COMPLETE, json.dumps({"step": step}) + "\n")
    atomic_write_text(root / LATEST, tag + "\n")


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names)."""
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    tags = sorted(p.name for p in root.glob("step_*") if (p / COMPLETE).is_file())
    for tag in tags[: max(0, len(tags) - keep_last)]:
        if tag != latest:
            shutil.rmtree(root / tag, ignore_errors=True)


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
                            ) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, optionally only those under ``prefix`` (with the prefix removed)."""
    tensors = load_file(str(path))
    if not prefix:
        return tensors
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resolve_weights(checkpoint: str | Path) -> tuple[Path, Path]:
    """(model.safetensors, config.yaml) of an export folder, or of a run folder's ``latest`` checkpoint."""
    path = Path(checkpoint)
    if (path / MODEL_WEIGHTS).is_file() and (path / CONFIG).is_file():
        return path / MODEL_WEIGHTS, path / CONFIG
    tag = latest_tag(path)
    if tag is None:
        raise FileNotFoundError(f"{path} is neither an export folder (config.yaml + model.safetensors) nor a run "
                                "folder with a complete checkpoint")
    return checkpoint_root(path) / tag / MODEL_WEIGHTS, path / CONFIG
