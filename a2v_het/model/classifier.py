"""CallDetector: the pretrained student's :class:`~a2v_het.model.backbone.Backbone` (frontend + token norm/projection
+ encoder) with a frame-level multi-label head at the token rate (animal2vec's fine-tuning head).

    wave --backbone (no teacher / decoder / mask embedding)--> mean of the residual streams after
         the top-K blocks --> the encoder's final LayerNorm --> dropout --> Linear(D -> C) per token
         --> logits (B, N, C)

Why the residual streams and the final norm: animal2vec averages the outputs of its (post-LN) blocks, which are
normalised. In this pre-LN stack a block's end-of-block output is an un-normalised running sum and its FFN output
(the pretraining target's choice) is only what the block adds; neither is what the stack was trained to hand on.
The encoder's own final LayerNorm is (it feeds the pretraining decoder). With K = 1 the features are exactly the
encoder's final output; with K > 1 the top-K streams are averaged first, then normalised, as animal2vec's layer
average is (up to its per-block norms).

Parameter names match the pretraining export (``frontend.*``, ``token_norm.*``, ``token_proj.*``, ``encoder.*``;
:func:`~a2v_het.model.backbone.adopt_parts`), so :meth:`CallDetector.load_pretrained` reads ``model.safetensors``
of ``a2v-het export`` directly; the head is ``head.*``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.config import FrontendConfig
from a2v_het.model.backbone import Backbone, adopt_parts
from a2v_het.model.config import ModelConfig
from a2v_het.runs import load_weights


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise sigmoid focal loss (Lin et al. 2017, torchvision's definition); alpha < 0 disables the
    alpha weighting. Returns a tensor shaped like ``logits`` (fp32)."""
    logits, targets = logits.float(), targets.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class CallDetector(nn.Module):
    """A :class:`Backbone` (``self.backbone``, built from the configs: nothing of pretraining's decoder, mask
    embedding or teacher is made) and its head. See the module docstring."""

    def __init__(self, model_cfg: ModelConfig, frontend_cfg: FrontendConfig, num_classes: int, top_k: int = 1,
                 dropout: float = 0.1, freeze_frontend: bool = False):
        super().__init__()
        if not 1 <= top_k <= model_cfg.depth:
            raise ValueError(f"top_k must be in [1, model.depth={model_cfg.depth}], got {top_k}")
        adopt_parts(self, "backbone", Backbone.from_config(model_cfg, frontend_cfg))  # self.frontend, ..., self.encoder
        self.top_k = top_k
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(model_cfg.embed_dim, num_classes)
        self.num_classes = num_classes
        if freeze_frontend:
            for p in self.frontend.parameters():
                p.requires_grad_(False)

    @property
    def cfg(self) -> ModelConfig:
        return self.backbone.cfg

    @property
    def token_rate(self) -> float:
        """Tokens (frames of the logits) per second."""
        return self.backbone.token_rate

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.logits(wave, sample_rate, lengths)

    def features(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0) -> tuple[Tensor, Tensor]:
        """-> features (B, N, D) = final LayerNorm of the mean of the top-K residual streams, padding_mask (B, N)
        True = pad. ``step`` seeds layerdrop (the same blocks on every rank)."""
        _, streams, padding_mask = self.backbone.encode(wave, sample_rate, lengths, layerdrop_seed=step,
                                                        outputs="residual")
        x = torch.stack(streams[-self.top_k:], 0).mean(0)
        return self.encoder.norm(x), padding_mask

    def logits(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0,
               backbone_grad: bool = True) -> tuple[Tensor, Tensor]:
        """-> logits (B, N, C), padding_mask (B, N) True = pad. ``backbone_grad=False`` runs the backbone without
        autograd (the classifier warm-up: only the head learns, so the backbone neither spends a backward pass nor
        adds gradients to the global clipping norm)."""
        with torch.set_grad_enabled(backbone_grad and torch.is_grad_enabled()):
            x, padding_mask = self.features(wave, sample_rate, lengths, step)
        return self.head(self.dropout(x)), padding_mask

    @torch.no_grad()
    def predict_proba(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        logits, pad = self.logits(wave, sample_rate, lengths)
        return torch.sigmoid(logits.float()), pad

    def backbone_parameters(self):
        return list(self.backbone.parameters())

    def load_pretrained(self, export_dir: str | Path, verbose: bool = True) -> dict[str, list[str]]:
        """Backbone weights from ``export_dir/model.safetensors`` (or a .safetensors path). Strict: every frontend /
        token / encoder parameter must be there; pretraining-only keys (decoder, mask embedding) are ignored and
        the head is new."""
        path = Path(export_dir)
        if path.is_dir():
            path = path / "model.safetensors"
        state = load_weights(path)
        own = self.state_dict()
        backbone = {k for k in own if not k.startswith("head.")}
        missing = sorted(backbone - state.keys())
        if missing:
            raise ValueError(f"{path} lacks {len(missing)} backbone tensors, e.g. {missing[:5]}")
        shape_bad = [k for k in backbone if tuple(state[k].shape) != tuple(own[k].shape)]
        if shape_bad:
            raise ValueError(f"{path}: shape mismatch for {shape_bad[:5]} (different model/frontend config?)")
        self.load_state_dict({k: state[k] for k in backbone}, strict=False)
        report = {"new": sorted(k for k in own if k.startswith("head.")),
                  "ignored": sorted(k for k in state if k not in own)}
        if verbose:
            print(f"[a2v-het] loaded {len(backbone)} pretrained tensors from {path}; new: {report['new']}; "
                  f"ignored {len(report['ignored'])} pretraining-only tensors", flush=True)
        return report
