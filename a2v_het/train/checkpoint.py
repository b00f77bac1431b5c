"""Checkpoints: DeepSpeed engine state + safetensors copies of the weights, published atomically.

Layout of ``RUN_DIR/checkpoints``::

    step_00001000/            DeepSpeed's files (every rank writes its part) +
        model.safetensors     the trained module's weights (rank 0)
        teacher.safetensors   the EMA teacher (data2vec objective only)
        COMPLETE              written last, after a barrier: the checkpoint is whole
    latest                    the tag of the newest COMPLETE checkpoint, replaced by an atomic rename

A checkpoint that was cut off half-way has no COMPLETE and is never named by ``latest``; the previous one stays.
Anything meant to leave the run folder (``a2v-het export``) is safetensors, never a pickle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from a2v_het.config import atomic_write_text

COMPLETE = "COMPLETE"


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)


def latest_tag(run_dir: str | Path) -> str | None:
    """The tag named by ``latest`` if that checkpoint is complete, else None."""
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    if not tag or not (root / tag / COMPLETE).is_file():
        return None
    return tag


def save_checkpoint(engine, objective, run_dir: Path, step: int, client_state: dict, keep_last: int,
                    is_main: bool, extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Collective: every rank must call it. Returns the checkpoint folder."""
    root = checkpoint_root(run_dir)
    tag = f"step_{step:08d}"
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    folder = root / tag
    if is_main:
        from a2v_het.train.objective import cpu_state_dict

        atomic_save_safetensors(cpu_state_dict(objective), folder / "model.safetensors", {"step": str(step)})
        for name, tensors in (extra_tensors or {}).items():
            atomic_save_safetensors(tensors, folder / f"{name}.safetensors", {"step": str(step)})
    torch.distributed.barrier()
    if is_main:
        atomic_write_text(folder / COMPLETE, json.dumps({"step": step}) + "\n")
        atomic_write_text(root / "latest", tag + "\n")
        prune(root, keep_last)
    torch.distributed.barrier()
    return folder


def prune(root: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` complete checkpoints (never the one ``latest`` names)."""
    latest = (root / "latest").read_text().strip() if (root / "latest").is_file() else None
    tags = sorted(p.name for p in root.glob("step_*") if (p / COMPLETE).is_file())
    for tag in tags[: max(0, len(tags) - keep_last)]:
        if tag != latest:
            shutil.rmtree(root / tag, ignore_errors=True)


def load_weights(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, optionally only those under ``prefix`` (with the prefix removed)."""
    tensors = load_file(str(path))
    if not prefix:
        return tensors
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def resolve_weights(checkpoint: str | Path) -> tuple[Path, Path]:
    """(model.safetensors, config.yaml) of an export folder, or of a run folder's ``latest`` checkpoint."""
    path = Path(checkpoint)
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return path / "model.safetensors", path / "config.yaml"
    tag = latest_tag(path)
    if tag is None:
        raise FileNotFoundError(f"{path} is neither an export folder (config.yaml + model.safetensors) nor a run "
                                "folder with a complete checkpoint")
    return checkpoint_root(path) / tag / "model.safetensors", path / "config.yaml"
