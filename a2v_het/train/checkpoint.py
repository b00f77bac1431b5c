"""Checkpoints: DeepSpeed engine state + safetensors copies of the weights, published atomically.

The run folder's layout (tags, ``COMPLETE``, ``latest``) and its readers live in :mod:`a2v_het.runs`; this module
adds the collective save, which needs the DeepSpeed engine and the process group.
"""

from __future__ import annotations

from pathlib import Path

import torch

from a2v_het.runs import (  # noqa: F401  (re-exported for the training code)
    COMPLETE,
    atomic_save_safetensors,
    checkpoint_root,
    checkpoint_tag,
    latest_tag,
    load_weights,
    prune,
    publish_checkpoint,
    resolve_weights,
)
from a2v_het.train.objective import cpu_state_dict


def save_checkpoint(engine, objective, run_dir: Path, step: int, client_state: dict, keep_last: int,
                    is_main: bool, extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Collective: every rank must call it. Returns the checkpoint folder."""
    root = checkpoint_root(run_dir)
    tag = checkpoint_tag(step)
    engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
    folder = root / tag
    if is_main:
        atomic_save_safetensors(cpu_state_dict(objective), folder / "model.safetensors", {"step": str(step)})
        for name, tensors in (extra_tensors or {}).items():
            atomic_save_safetensors(tensors, folder / f"{name}.safetensors", {"step": str(step)})
    torch.distributed.barrier()
    if is_main:
        publish_checkpoint(run_dir, tag, step)
        prune(root, keep_last)
    torch.distributed.barrier()
    return folder
