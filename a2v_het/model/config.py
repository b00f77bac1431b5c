"""ModelConfig: the data2vec 2.0 / animal2vec student-teacher model (encoder, decoder, masking, targets, EMA, loss).

Defaults follow data2vec 2.0 base audio (12 x 768, 8 clones, block masks of 5 at 50 %, top-8 FFN targets, EMA
0.999 -> 0.99999 over 75k steps) with animal2vec's learned-scale ALiBi. Units: tokens for lengths and kernels,
optimizer steps for schedules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from a2v_het.config import ConfigError


def span_mask_coverage(mask_prob: float, mask_length: int) -> float:
    """Expected masked fraction of wav2vec 2.0 / animal2vec span masking.

    ``mask_prob * n / mask_length`` span starts are drawn, so each token is a start with probability
    ``q = min(1, mask_prob / mask_length)`` and is masked unless none of the ``mask_length`` starts that would
    cover it is drawn: ``1 - (1 - q) ** mask_length`` (animal2vec's 1.5 / 2 gives 0.9375).
    """
    q = min(1.0, mask_prob / mask_length)
    return 1.0 - (1.0 - q) ** mask_length


@dataclass(frozen=True)
class ModelConfig:
    # --- encoder (shared by student and EMA teacher) ---
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    """Dropout on the attention and FFN outputs (student only: the teacher runs in eval mode)."""
    attn_dropout: float = 0.0
    layerdrop: float = 0.0
    """Probability of skipping a whole student block during training."""
    pos_conv_kernel: int = 19
    """Kernel (tokens) of each layer of the grouped conv positional encoding."""
    pos_conv_groups: int = 16
    """Groups of the conv positional encoding; 0 disables it (then only ALiBi carries position)."""
    pos_conv_depth: int = 5
    """Conv layers of the positional encoding (data2vec 2.0 audio: 5 layers of kernel 95 // 5 = 19)."""
    alibi: bool = True
    """Symmetric ALiBi attention bias with a learnable scale per head (animal2vec)."""
    # --- decoder (student only) ---
    decoder_layers: int = 4
    decoder_kernel: int = 7
    decoder_groups: int = 16
    decoder_dim: int = 384
    # --- masking ---
    clone_batch: int = 8
    """M: each clip is encoded by the teacher once and by the student M times with independent masks."""
    mask_prob: float = 0.5
    """block: the masked fraction of each clip's tokens. span: wav2vec 2.0 semantics, span starts per token times
    mask_length (may exceed 1); the masked fraction is :func:`span_mask_coverage`."""
    mask_length: int = 5
    mask_type: Literal["block", "span"] = "block"
    # --- targets and loss ---
    average_top_k_layers: int = 8
    instance_norm_targets: bool = True
    """Instance-normalise the averaged target over time (each layer is always instance-normalised first)."""
    loss: Literal["mse", "smooth_l1"] = "mse"
    smooth_l1_beta: float = 0.25
    # --- EMA teacher ---
    ema_decay: float = 0.999
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 75000
    # --- input ---
    z_normalize: bool = True
    """Per-clip zero-mean / unit-variance waveform over the valid samples before the frontend."""
    # --- collapse guard ---
    collapse_min_target_var: float = 0.01
    collapse_min_pred_var: float = 0.01
    collapse_check_after: int = 5000
    """Steps before the guard is armed (early in training the variances can legitimately dip)."""

    @property
    def mask_ratio(self) -> float:
        """Fraction of each clip's valid tokens the student does not see."""
        if self.mask_type == "block":
            return self.mask_prob
        return span_mask_coverage(self.mask_prob, self.mask_length)

    def validate(self) -> None:
        if self.embed_dim < 1 or self.depth < 1 or self.num_heads < 1:
            raise ConfigError("model.embed_dim, model.depth and model.num_heads must be >= 1")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.num_heads "
                              f"({self.num_heads})")
        if self.mlp_ratio <= 0:
            raise ConfigError("model.mlp_ratio must be > 0")
        for name in ("dropout", "attn_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must lie in [0, 1)")
        if self.pos_conv_groups < 0:
            raise ConfigError("model.pos_conv_groups must be >= 0 (0 disables the conv positional encoding)")
        if self.pos_conv_groups > 0:
            if self.embed_dim % self.pos_conv_groups:
                raise ConfigError(f"model.embed_dim ({self.embed_dim}) must be divisible by model.pos_conv_groups "
                                  f"({self.pos_conv_groups})")
            if self.pos_conv_kernel < 1 or self.pos_conv_depth < 1:
                raise ConfigError("model.pos_conv_kernel and model.pos_conv_depth must be >= 1")
        if self.decoder_layers < 0 or self.decoder_dim < 1 or self.decoder_groups < 1 or self.decoder_kernel < 1:
            raise ConfigError("model.decoder_layers must be >= 0; decoder_dim, decoder_groups, decoder_kernel >= 1")
        if self.decoder_dim % self.decoder_groups:
            raise ConfigError(f"model.decoder_dim ({self.decoder_dim}) must be divisible by model.decoder_groups "
                              f"({self.decoder_groups})")
        if self.clone_batch < 1:
            raise ConfigError("model.clone_batch must be >= 1")
        if self.mask_length < 1:
            raise ConfigError("model.mask_length must be >= 1")
        if self.mask_type == "block" and not 0.0 < self.mask_prob < 1.0:
            raise ConfigError("model.mask_prob must lie in (0, 1) for block masking (it is the masked fraction)")
        if self.mask_type == "span" and not (self.mask_prob > 0 and self.mask_ratio < 1.0):
            raise ConfigError(f"model.mask_prob must be > 0 and < mask_length ({self.mask_length}) for span masking, "
                              "or every token would be masked")
        if not 1 <= self.average_top_k_layers <= self.depth:
            raise ConfigError(f"model.average_top_k_layers must lie in [1, depth={self.depth}]")
        if self.smooth_l1_beta <= 0:
            raise ConfigError("model.smooth_l1_beta must be > 0")
        if not (0.0 <= self.ema_decay <= 1.0 and 0.0 <= self.ema_end_decay <= 1.0):
            raise ConfigError("model.ema_decay and model.ema_end_decay must lie in [0, 1]")
        if self.ema_anneal_end_step < 0 or self.collapse_check_after < 0:
            raise ConfigError("model.ema_anneal_end_step and model.collapse_check_after must be >= 0")
