"""Backbone: what pretraining and fine-tuning share -- the frontend, the token LayerNorm / projection and the
encoder.

    wave --z-norm--> frontend --LayerNorm (+Linear to embed_dim)--> tokens --encoder.add_position--> blocks
         --> final LayerNorm

:class:`~a2v_het.model.data2vec.Data2VecModel` owns one as its student (the EMA teacher, decoder and mask embedding
sit around it); :class:`~a2v_het.model.classifier.CallDetector` owns one and its head; inference from a pretraining
run or export (:func:`a2v_het.eval.run_files.load_model`) uses one on its own.

Names: the backbone's parameters are ``frontend.*``, ``token_norm.*``, ``token_proj.*`` and ``encoder.*``, in the
backbone and in its owners alike (:func:`adopt_parts`: no ``backbone.`` prefix), so checkpoints and exports keep one
format: the pretraining export loads into the detector and into a bare Backbone, and runs written before the
backbone was its own module still load and resume.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2v_het.data.collate import normalize_wave
from a2v_het.frontend import build_frontend
from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import FrontendConfig
from a2v_het.model.config import ModelConfig
from a2v_het.model.encoder import Encoder


class Backbone(nn.Module):
    """frontend -> token norm / projection -> encoder. ``cfg`` is validated here; ``token_rate`` (tokens/s) is
    known when built from the configs (:meth:`from_config`), None when handed a frontend."""

    def __init__(self, cfg: ModelConfig, frontend: Frontend, token_rate: float | None = None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.token_rate = None if token_rate is None else float(token_rate)
        self.frontend = frontend
        d = cfg.embed_dim
        # Always normalise the tokens: their scale is whatever the frontend makes, and it feeds the teacher directly.
        self.token_norm = nn.LayerNorm(frontend.dim)
        self.token_proj = nn.Linear(frontend.dim, d) if frontend.dim != d else nn.Identity()
        self.encoder = Encoder(cfg)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, frontend_cfg: FrontendConfig) -> "Backbone":
        """The frontend built from ``frontend_cfg`` (its parameters are drawn first, then the projection's and the
        encoder's: the order of a pretraining model's construction, so a seed gives the same backbone weights)."""
        return cls(model_cfg, build_frontend(frontend_cfg), frontend_cfg.token_rate)

    def tokens(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, FrontendOutput]:
        """wave (B, T) zero-padded after ``lengths`` (B,) samples, sample_rate (B,) Hz -> tokens (B, N, D) before the
        positional encoding, padding_mask (B, N) bool True = pad, the raw frontend output (losses, stats)."""
        lengths = torch.as_tensor(lengths, device=wave.device).long()
        if self.cfg.z_normalize:
            wave = normalize_wave(wave, lengths).to(wave.dtype)
        out = self.frontend(wave, sample_rate, lengths)
        tokens = self.token_proj(self.token_norm(out.tokens))
        return tokens, out.padding_mask.bool(), out

    def encode(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, layerdrop_seed: int = 0,
               outputs: str = "ffn") -> tuple[Tensor, list[Tensor], Tensor]:
        """The encoder on the unmasked clips: final (B, N, D) (the encoder's final LayerNorm), layer outputs
        (``depth`` x (B, N, D): ``outputs="ffn"`` the blocks' FFN outputs, ``"residual"`` the residual stream
        after each block), padding_mask (B, N) True = pad. ``layerdrop_seed`` picks the dropped blocks."""
        tokens, padding_mask, _ = self.tokens(wave, sample_rate, lengths)
        final, layers = self.encoder(self.encoder.add_position(tokens, padding_mask), padding_mask,
                                     layerdrop_seed=layerdrop_seed, outputs=outputs)
        return final, layers, padding_mask


# --------------------------------------------------------------------------------------------- composition
def adopt_parts(owner: nn.Module, name: str, part: nn.Module) -> None:
    """``owner.<name> = part`` by composition, with ``part``'s submodules registered on ``owner`` under their own
    names (``frontend``, ``token_norm``, ...): parameter names, state-dict keys and parameter order are those of a
    module that holds the parts itself, i.e. the format of checkpoints, exports and DeepSpeed's optimizer and frozen
    parameter state, before and after the backbone became its own module. ``part`` is not registered a second time
    (no ``<name>.`` keys, no duplicate parameters); it holds no parameters of its own, only its submodules, which
    move, switch train / eval and save with the owner (``part.training`` itself does not follow: nothing in a part
    reads it). A name ``owner`` already has is an error."""
    if part._parameters or part._buffers:
        raise ValueError(f"adopt_parts: {type(part).__name__} has parameters or buffers of its own")
    for child_name, child in part.named_children():
        if hasattr(owner, child_name):
            raise ValueError(f"adopt_parts: {type(owner).__name__} already has {child_name!r}")
        owner.add_module(child_name, child)
    object.__setattr__(owner, name, part)  # a plain attribute: nn.Module would register it (and its keys) again
