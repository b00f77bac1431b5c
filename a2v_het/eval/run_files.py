"""Models for inference from a run folder or an ``a2v-het export`` folder, read safely (safetensors + YAML only).

Two kinds of checkpoint, told apart by their ``config.yaml``:

- a **pretraining** run / export (no ``finetune`` section) -> :class:`~a2v_het.model.backbone.Backbone`: frontend
  -> token norm/projection -> encoder, the student weights of ``model.safetensors`` (decoder, mask embedding and
  teacher are neither built nor loaded);
- a **fine-tune** run / export (``finetune`` section) -> :class:`~a2v_het.model.classifier.CallDetector` with its
  head; ``model.classes`` holds the class names.

Both expose ``cfg`` (ModelConfig), ``token_rate`` (tokens/s) and ``encoder``; :func:`encode` runs the backbone (the
model itself, or the detector's ``backbone``). The run folder layout (``checkpoints/latest``
-> ``checkpoints/<tag>/COMPLETE``) comes from :mod:`a2v_het.runs`, so inference does not import the training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from a2v_het.config import config_from_dict
from a2v_het.frontend.config import FrontendConfig
from a2v_het.model.backbone import Backbone
from a2v_het.model.classifier import CallDetector
from a2v_het.model.config import ModelConfig
from a2v_het.runs import checkpoint_root, latest_tag


class CheckpointError(ValueError):
    """A checkpoint path that is not a usable run or export folder (one-line message for the command line)."""


def resolve_checkpoint(checkpoint: str | Path) -> tuple[Path, Path]:
    """(model.safetensors, config.yaml) of an export folder, or of a run folder's latest complete checkpoint."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if (path / "model.safetensors").is_file() and (path / "config.yaml").is_file():
        return path / "model.safetensors", path / "config.yaml"
    tag = latest_tag(path)
    weights = checkpoint_root(path) / (tag or "") / "model.safetensors"
    if tag is None or not weights.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is neither an export folder (config.yaml + model.safetensors)"
                              " nor a run folder with a complete checkpoint (checkpoints/latest)")
    if not (path / "config.yaml").is_file():
        raise CheckpointError(f"run folder {str(path)!r} has no config.yaml")
    return weights, path / "config.yaml"


def read_config_tree(config_path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{config_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(tree, dict) or "model" not in tree or "frontend" not in tree:
        raise CheckpointError(f"{config_path} has no model/frontend sections: not an a2v-het run config")
    return tree


def _load_strict(model: nn.Module, state: dict[str, Tensor], source: Path, ignore_prefixes: tuple[str, ...] = ()
                 ) -> None:
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(ignore_prefixes)}
    missing = sorted(own.keys() - state.keys())
    if missing:
        raise CheckpointError(f"{source} lacks {len(missing)} tensors of this model, e.g. {missing[:3]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch for {bad[:3]} (weights of another model config?)")
    model.load_state_dict({k: state[k] for k in own}, strict=False)


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu", random_init: bool = False,
               seed: int = 0) -> nn.Module:
    """Backbone (pretraining run/export) or CallDetector (fine-tune run/export) in eval mode on ``device``.

    ``random_init=True`` builds the same architecture from the config with seeded random weights and loads nothing
    (the random-initialisation baseline of a probe). The returned module carries ``checkpoint`` (str), ``kind``
    ("encoder" | "detector"), ``token_rate`` (tokens/s), ``config_tree`` (the run's config as a dict) and, for a
    detector, ``classes`` and ``finetune`` (the config's finetune section as a dict).
    """
    weights, config_path = resolve_checkpoint(checkpoint)
    tree = read_config_tree(config_path)
    try:
        model_cfg = config_from_dict(ModelConfig, tree["model"])
        frontend_cfg = config_from_dict(FrontendConfig, tree["frontend"])
    except ValueError as e:
        raise CheckpointError(f"{config_path}: {e}") from None
    torch.manual_seed(seed)
    if "finetune" in tree:
        f = dict(tree["finetune"])
        classes = list(f.get("classes") or [])
        if not classes:
            raise CheckpointError(f"{config_path}: finetune.classes is empty")
        model: nn.Module = CallDetector(model_cfg, frontend_cfg, len(classes), int(f.get("top_k", 1)),
                                        float(f.get("dropout", 0.0)))
        model.classes = classes
        model.finetune = f
        model.kind = "detector"
        ignore: tuple[str, ...] = ()
    else:
        model = Backbone.from_config(model_cfg, frontend_cfg)
        model.kind = "encoder"
        ignore = ()
    if not random_init:
        try:
            state = load_file(str(weights))
        except Exception as e:  # a cut-off or foreign file: safetensors raises its own error types
            raise CheckpointError(f"{weights}: cannot read safetensors ({e})") from None
        _load_strict(model, state, weights, ignore)
    model.checkpoint = str(checkpoint)
    model.config_tree = tree
    return model.to(device).eval()


def encode(model: nn.Module, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
    """Unmasked student encoder of a Backbone or CallDetector.

    Args: wave (B, T) float, zero-padded after ``lengths`` (B,) samples; sample_rate (B,) Hz (mixed rates allowed).
    Returns: final (B, N, D) (the encoder's final LayerNorm of the last residual stream), streams (``depth`` x
        (B, N, D): the residual stream after each block, un-normalised), padding_mask (B, N) True = pad; N tokens at
        ``model.token_rate``.
    """
    backbone = model if isinstance(model, Backbone) else model.backbone
    return backbone.encode(wave, sample_rate, lengths, outputs="residual")
