"""AaPE-style adaptive stem (Yamamoto & Okusa, "Aliasing-aware Patch Embedding"): log-mel patch tokens fused with
features from input-dependent complex sinusoidal kernels that look at what the patch stride throws away.

A patch embedding with a stride of ``patch_frames`` frames samples each mel subband's trajectory at the token rate,
so temporal modulations above token_rate / 2 (25 Hz by default: wing beats, trills, pulse trains) alias. AaPE keeps
the patch tokens and adds, per token and per subband (a row of patches, ``patch_mels`` mel channels):

1. **Lambda encoder**: a conv over tokens of the patch embeddings predicts a decay alpha in
   [decay_min_per_s, decay_max_per_s] (1/s, log-scaled sigmoid) and a modulation frequency omega in
   [0, frame_rate / 2] Hz (sigmoid) for every (token, subband): where the alias-prone energy of that subband is.
2. **Adaptive SBLU** (structured bilateral Laplace unit): the kernel k(t) = exp(-alpha |t|) exp(i 2 pi omega t),
   a complex sinusoid under a two-sided exponential window, normalised by the window's sum and cut at
   ``kernel_half_width_s`` beyond the patch, is applied to the subband's trajectory at the full frame rate
   (patch_frames x token_rate) around the patch centre. Its response r (complex) gives [log(|r| + eps), Re r, Im r].
   omega <= frame_rate / 2 keeps the kernel band-limited on the frame grid.
3. **Patch fusion**: tokens = LayerNorm(Linear(patch embeddings) + Linear(SBLU features)).

Departures from the paper: the subbands are the patch rows (the paper's subband split is its own); the encoder's
input is 1-D (one token per time step, frequency patches concatenated as in ``logmel_patch``); the multi-mask
contrastive objective of the paper is not part of the stem (the data2vec loop provides the objective).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.logmel_patch import LogMelPatches

_MAG_EPS = 1e-4
"""Floor of |r| before the log: the trajectories are standardised (unit variance), so 1e-4 is -80 dB re them."""


def sblu_offsets_s(patch_frames: int, half_width_frames: int, frame_rate: float) -> Tensor:
    """(J,) seconds of each window frame relative to the patch centre, J = patch_frames + 2 * half_width_frames.
    The window of token n spans frames [n * P - H, n * P + P - 1 + H]; its centre is n * P + (P - 1) / 2."""
    j = torch.arange(patch_frames + 2 * half_width_frames, dtype=torch.float32)
    return (j - half_width_frames - (patch_frames - 1) / 2.0) / float(frame_rate)


def sblu_kernels(decay_per_s: Tensor, omega_hz: Tensor, offsets_s: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive SBLU kernels, vectorised over any leading shape.

    Args:
        decay_per_s: (...,) alpha > 0 in 1/s.
        omega_hz: (...,) modulation frequency in Hz.
        offsets_s: (J,) time of each tap relative to the kernel centre, seconds.
    Returns: (real, imag), each (..., J) fp32: exp(-alpha |t|) [cos, sin](2 pi omega t) / sum_t exp(-alpha |t|).
    """
    t = offsets_s.to(decay_per_s.device, torch.float32)
    window = torch.exp(-decay_per_s.float()[..., None] * t.abs())  # (..., J)
    window = window / window.sum(-1, keepdim=True)
    phase = 2.0 * math.pi * omega_hz.float()[..., None] * t
    return window * torch.cos(phase), window * torch.sin(phase)


def subband_windows(x: Tensor, patch_mels: int, patch_frames: int, half_width_frames: int, n_tokens: int) -> Tensor:
    """Subband trajectories cut into one window per token.

    x (B, M, Nf) standardised log-mel (zero outside each clip) -> (B, S, N, J): S = M / patch_mels subbands (mean
    of their mel channels), N = n_tokens windows of J = patch_frames + 2 * half_width_frames frames, window n
    starting at frame n * patch_frames - half_width_frames (zeros outside the clip).
    """
    b, m, nf = x.shape
    sub = x.reshape(b, m // patch_mels, patch_mels, nf).mean(2)  # (B, S, Nf)
    need = n_tokens * patch_frames + half_width_frames
    sub = F.pad(sub, (half_width_frames, max(0, need - nf)))[:, :, : need + half_width_frames]
    return sub.unfold(-1, patch_frames + 2 * half_width_frames, patch_frames)[:, :, :n_tokens]


class AaPEFrontend(Frontend):
    """``frontend.name: aape``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) -> tokens (B, N, D),
    N = max_b ceil(duration_b * token_rate), padding_mask (B, N); stats hold the mean predicted decay (1/s) and
    modulation frequency (Hz) over the valid (token, subband) cells."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.aape
        c.validate()
        self.cfg = cfg
        self.dim = cfg.dim
        self.c = c
        self.patches = LogMelPatches(c.logmel_config(), cfg.token_rate, c.patch_mels, c.patch_frames, c.channels)
        self.frame_rate = cfg.token_rate * c.patch_frames
        self.half_width = int(round(c.kernel_half_width_s * self.frame_rate))
        self.subbands = c.n_mels // c.patch_mels
        self.register_buffer("offsets_s", sblu_offsets_s(c.patch_frames, self.half_width, self.frame_rate),
                             persistent=False)
        feats = self.patches.out_features
        # Lambda encoder: sees each token's patches and its neighbours' (kernel 3 over tokens).
        self.lambda_encoder = nn.Sequential(nn.Conv1d(feats, c.lambda_hidden, 3, padding=1), nn.GELU(),
                                            nn.Conv1d(c.lambda_hidden, 2 * self.subbands, 1))
        self.patch_proj = nn.Linear(feats, cfg.dim)
        self.sblu_proj = nn.Linear(3 * self.subbands, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        return self.patches.num_tokens(duration_s, sample_rate)

    def predict_kernel_parameters(self, patches: Tensor) -> tuple[Tensor, Tensor]:
        """patches (B, N, F' * E) -> (decay (B, S, N) in 1/s, omega (B, S, N) in Hz)."""
        raw = self.lambda_encoder(patches.transpose(1, 2).float())  # (B, 2S, N)
        a, w = raw[:, : self.subbands], raw[:, self.subbands :]
        lo, hi = math.log(self.c.decay_min_per_s), math.log(self.c.decay_max_per_s)
        decay = torch.exp(lo + (hi - lo) * torch.sigmoid(a))
        omega = 0.5 * self.frame_rate * torch.sigmoid(w)
        return decay, omega

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        patches, x, n_tokens, _ = self.patches(wave, sample_rate, lengths)
        n = patches.shape[1]
        valid = torch.arange(n, device=wave.device)[None, :] < n_tokens[:, None]  # (B, N)
        # Past a clip's end the patches hold the conv bias only; zero them so the Lambda encoder's kernel-3 conv
        # reads there what it reads for the clip alone (its own zero padding).
        patches = patches * valid[:, :, None].to(patches.dtype)
        with torch.autocast(device_type=wave.device.type, enabled=False):
            decay, omega = self.predict_kernel_parameters(patches)
            real, imag = sblu_kernels(decay, omega, self.offsets_s)  # (B, S, N, J)
            win = subband_windows(x.float(), self.c.patch_mels, self.c.patch_frames, self.half_width, n)
            re, im = (win * real).sum(-1), (win * imag).sum(-1)  # (B, S, N)
            mag = torch.sqrt(re.square() + im.square() + _MAG_EPS**2)
            sblu = torch.stack([torch.log(mag), re, im], dim=-1)  # (B, S, N, 3)
            sblu = sblu.permute(0, 2, 1, 3).flatten(2)  # (B, N, 3S)
        tokens = self.norm(self.patch_proj(patches) + self.sblu_proj(sblu))
        cells = valid[:, None, :].expand_as(decay).float()
        count = cells.sum().clamp_min(1.0)
        stats = {"aape_decay_mean_per_s": ((decay * cells).sum() / count).detach(),
                 "aape_omega_mean_hz": ((omega * cells).sum() / count).detach()}
        return FrontendOutput(tokens=tokens, padding_mask=~valid, stats=stats)


__all__ = ["AaPEFrontend", "sblu_kernels", "sblu_offsets_s", "subband_windows"]
