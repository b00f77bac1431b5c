"""AaPE-style adaptive stem, after Yamamoto & Okusa, "AaPE: Aliasing-aware Patch Embedding for Self-Supervised Audio
Representation Learning". ``frontend.name: aape``; doc: docs/frontends/aape.md.

A patch embedding whose stride is ``patch_frames`` frames samples every subband's log-mel trajectory at the token
rate, so temporal modulations between token_rate / 2 and frame_rate / 2 (25-100 Hz by default: wing beats, trills,
pulse trains, fast AM) alias into the tokens. AaPE keeps the patch tokens and adds, for every token n and subband s
(a row of patches: ``patch_mels`` mel channels), the response of an input-dependent complex kernel:

    wave -> LogMelPatches (logmel_patch's body, shared code) -> normalised log-mel u (B, M, Nf) at frame_rate =
         patch_frames x token_rate frames/s, and the patch features (B, N, F' E)
    1. Lambda encoder  u -> (alpha, omega) (B, S, N):  Conv2d (patch_mels x 5 frames, stride patch_mels: one row
       per subband) -> GELU -> Conv2d (1 x patch_frames, stride patch_frames: frames -> tokens) -> GELU ->
       Conv2d 3 x 3 (neighbouring subbands and tokens) -> GELU -> Conv2d 1 x 1 -> 2 raw values + per-subband bias;
       alpha = alpha_min (alpha_max / alpha_min)^sigmoid(a) in 1/s, omega = frame_rate / 2 x sigmoid(w) in Hz.
    2. Adaptive SBLU   k(t) = 2 w(t) (exp(i 2 pi omega t) - c),  w(t) = exp(-alpha |t|) / sum_t exp(-alpha |t|),
       c = sum_t w(t) exp(i 2 pi omega t)  on the J = patch_frames + 2 H frame offsets t (seconds) around the
       patch centre (H = round(kernel_half_width_s x frame_rate)); subtracting c makes sum_t k = 0, so the kernel
       answers to modulation and not to level (the role of the paper's zero-phase high-pass). r_{m,n} =
       sum_t u_m(t_n + t) k(t) for every mel channel m of the subband.
    3. Features per (n, s): log of the RMS over the subband's channels of |r|, and Re / Im of their mean r.
    4. Patch fusion: tokens = LayerNorm(Linear([LayerNorm(patch features), LayerNorm(SBLU features)])) (the paper:
       normalise both independently, concatenate, project to D).

With the factor 2 and w summing to 1, |r| is the amplitude of a modulation u = A cos(2 pi omega t + phi) (in
normalised level units) when the window is long against 1 / omega. omega <= frame_rate / 2 keeps the kernel
band-limited on the frame grid; alpha, omega and t are in 1/s, Hz and seconds, so one set of parameters is the
same filter at every input sample rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.frontend.base import Frontend, FrontendOutput
from a2v_het.frontend.config import AaPEConfig, FrontendConfig
from a2v_het.frontend.logmel_patch import LogMelPatches

MAG_EPS = 1e-2
"""Added (squared) under the RMS before the log: the level u is in units of the clip's std, so 0.01 is a modulation
40 dB below a one-std one; it keeps log |r| >= -4.6 and its gradient finite on silence."""

LAMBDA_FRAME_KERNEL = 5
"""Frames (temporal taps) of the Lambda encoder's first conv: 25 ms at 200 frames/s, enough to see one period of a
40 Hz modulation inside the layer and longer ones through the later layers."""


# ------------------------------------------------------------------------------------------------ pure math


def sblu_offsets_s(patch_frames: int, half_width_frames: int, frame_rate: float) -> Tensor:
    """(J,) float32 seconds of each kernel tap relative to the patch centre, J = patch_frames + 2 x half_width_frames.

    Token n's kernel reads frames [n P - H, n P + P - 1 + H] (P = patch_frames, H = half_width_frames), whose centre
    n P + (P - 1) / 2 is the patch centre, so the offsets are symmetric about 0.
    """
    j = torch.arange(patch_frames + 2 * half_width_frames, dtype=torch.float64)
    return ((j - half_width_frames - (patch_frames - 1) / 2.0) / float(frame_rate)).float()


def log_uniform(raw: Tensor, lo: float, hi: float) -> Tensor:
    """lo (hi / lo)^sigmoid(raw): a positive value in [lo, hi], uniform in log, so a step of ``raw`` changes it by
    a fixed ratio anywhere in the range."""
    if hi <= lo:
        return torch.full_like(raw, lo)
    return torch.exp(math.log(lo) + torch.sigmoid(raw) * (math.log(hi) - math.log(lo)))


def sblu_kernels(alpha_per_s: Tensor, omega_hz: Tensor, offsets_s: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive SBLU kernels for any number of (alpha, omega) pairs at once (one broadcast, no loop).

    Args:
        alpha_per_s: (...,) decay alpha > 0 of the two-sided exponential window, 1/s.
        omega_hz: (...,) modulation frequency, Hz (same shape as alpha).
        offsets_s: (J,) tap times relative to the kernel centre, seconds (:func:`sblu_offsets_s`).
    Returns: (real, imag), each (..., J), fp32 (fp64 for fp64 inputs): k(t) = 2 w(t) (exp(i 2 pi omega t) - c) with
    w(t) = exp(-alpha |t|) / sum_t exp(-alpha |t|) and c = sum_t w(t) exp(i 2 pi omega t), so sum_t k(t) = 0.
    """
    dtype = torch.promote_types(torch.promote_types(alpha_per_s.dtype, omega_hz.dtype), torch.float32)
    with torch.autocast(device_type=alpha_per_s.device.type, enabled=False):
        t = offsets_s.to(device=alpha_per_s.device, dtype=dtype)
        window = torch.exp(-alpha_per_s.to(dtype)[..., None] * t.abs())  # (..., J), in (0, 1]: no overflow
        window = window / window.sum(-1, keepdim=True)
        phase = (2.0 * math.pi) * omega_hz.to(dtype)[..., None] * t
        cos, sin = torch.cos(phase), torch.sin(phase)
        c_re = (window * cos).sum(-1, keepdim=True)
        c_im = (window * sin).sum(-1, keepdim=True)  # 0 for symmetric taps, kept for generality
        return 2.0 * window * (cos - c_re), 2.0 * window * (sin - c_im)


def frame_windows(level: Tensor, patch_frames: int, half_width_frames: int, n_tokens: int) -> Tensor:
    """Every channel's trajectory cut into one window per token.

    Args:
        level: (B, M, Nf) normalised log-mel (0 = silence, also past each clip's end).
        patch_frames, half_width_frames: P and H (frames).
        n_tokens: N windows to cut.
    Returns: (B, M, N, J) with J = P + 2 H; window n holds frames n P - H .. n P + P - 1 + H, zeros (silence)
    outside [0, Nf). A strided view where possible (no copy of the J-fold overlap).
    """
    nf = level.shape[-1]
    j = patch_frames + 2 * half_width_frames
    right = max(0, (n_tokens - 1) * patch_frames + j - half_width_frames - nf)
    padded = F.pad(level, (half_width_frames, right))
    return padded.unfold(-1, j, patch_frames)[..., :n_tokens, :]


def sblu_response(windows: Tensor, real: Tensor, imag: Tensor) -> tuple[Tensor, Tensor]:
    """Response of each subband's kernel to each of its channels' windows.

    Args:
        windows: (B, S, C, N, J) frames of the C = patch_mels channels of subband s around token n.
        real, imag: (B, S, N, J) kernels of (subband, token).
    Returns: (re, im), each (B, S, C, N): r = sum_j windows[..., j] k[..., j].
    """
    re = torch.einsum("bscnj,bsnj->bscn", windows, real)
    im = torch.einsum("bscnj,bsnj->bscn", windows, imag)
    return re, im


def sblu_features(re: Tensor, im: Tensor) -> Tensor:
    """(B, S, C, N) channel responses -> (B, N, 3 S) token features [log RMS_c |r|, Re mean_c r, Im mean_c r] per
    subband (subband-major: feature 3 s + k). The RMS keeps modulations whose phase differs between channels, the
    mean keeps the phase (where in the patch the modulation peaks)."""
    power = (re.square() + im.square()).mean(2)  # (B, S, N)
    log_mag = 0.5 * torch.log(power + MAG_EPS**2)
    feats = torch.stack([log_mag, re.mean(2), im.mean(2)], dim=-1)  # (B, S, N, 3)
    return feats.permute(0, 2, 1, 3).flatten(2)


# ------------------------------------------------------------------------------------------------ modules


class LambdaEncoder(nn.Module):
    """Predicts the SBLU parameters of every (subband, token) from the normalised log-mel.

    forward(level (B, M, N P) at frame_rate, token_valid (B, N) bool) -> (alpha (B, S, N) in
    [alpha_min, alpha_max] 1/s, omega (B, S, N) in [0, frame_rate / 2] Hz), fp32, differentiable. Hidden activations
    past each clip's end are zeroed after every token-rate layer, so the 3 x 3 conv reads there exactly the zero
    padding it reads for the clip alone (valid outputs do not depend on the batch).
    """

    def __init__(self, cfg: AaPEConfig, frame_rate: float):
        super().__init__()
        h, pm, pf = cfg.lambda_hidden, cfg.patch_mels, cfg.patch_frames
        self.subbands = cfg.n_mels // pm
        self.alpha_range = (float(cfg.alpha_min_per_s), float(cfg.alpha_max_per_s))
        self.omega_max_hz = 0.5 * float(frame_rate)
        self.frames = nn.Conv2d(1, h, (pm, LAMBDA_FRAME_KERNEL), stride=(pm, 1), padding=(0, LAMBDA_FRAME_KERNEL // 2))
        self.pool = nn.Conv2d(h, h, (1, pf), stride=(1, pf))
        self.context = nn.Conv2d(h, h, 3, padding=1)
        self.head = nn.Conv2d(h, 2, 1)
        # Per-subband offsets of the raw (alpha, omega): low and high subbands may prefer different ranges.
        self.subband_bias = nn.Parameter(torch.zeros(2, self.subbands, 1))
        with torch.no_grad():  # start at the middle of both ranges (sigmoid's steepest part): omega ~ frame_rate / 4
            self.head.bias.zero_()

    def forward(self, level: Tensor, token_valid: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(device_type=level.device.type, enabled=False):
            keep = token_valid[:, None, None, :].float()  # (B, 1, 1, N)
            x = F.gelu(self.frames(level.float()[:, None]))  # (B, H, S, N P)
            x = F.gelu(self.pool(x)) * keep  # (B, H, S, N)
            x = F.gelu(self.context(x)) * keep
            raw = self.head(x) + self.subband_bias  # (B, 2, S, N)
            alpha = log_uniform(raw[:, 0], *self.alpha_range)
            omega = self.omega_max_hz * torch.sigmoid(raw[:, 1])
        return alpha, omega


class AaPEFrontend(Frontend):
    """``frontend.name: aape``. forward(wave (B, T), sample_rate (B,) Hz, lengths (B,) samples) -> FrontendOutput:
    tokens (B, N, D), N = max_b ceil(duration_b x token_rate); padding_mask (B, N) True past each clip's count;
    stats (0-dim, detached): aape_alpha_mean_per_s, aape_omega_mean_hz, aape_omega_std_hz over the valid
    (token, subband) cells (subbands with at least one mel filter below the clip's Nyquist).
    ``last_alpha`` / ``last_omega`` (B, S, N) keep the last batch's predictions (detached) for inspection."""

    def __init__(self, cfg: FrontendConfig):
        super().__init__()
        c = cfg.aape
        c.validate()
        self.cfg = cfg
        self.dim = cfg.dim
        self.c = c
        self.patches = LogMelPatches(c.patch_config(), cfg.token_rate)
        self.frame_rate = self.patches.frame_rate
        self.half_width = int(round(c.kernel_half_width_s * self.frame_rate))
        self.subbands = c.n_mels // c.patch_mels
        self.register_buffer("offsets_s", sblu_offsets_s(c.patch_frames, self.half_width, self.frame_rate),
                             persistent=False)
        self.lambda_encoder = LambdaEncoder(c, self.frame_rate)
        n_patch, n_sblu = self.patches.out_features, 3 * self.subbands
        self.patch_norm = nn.LayerNorm(n_patch)
        self.sblu_norm = nn.LayerNorm(n_sblu)
        self.fuse = nn.Linear(n_patch + n_sblu, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim)
        self.last_alpha: Tensor | None = None
        self.last_omega: Tensor | None = None

    def num_tokens(self, duration_s: float, sample_rate: int) -> int:
        return self.patches.num_tokens(duration_s, sample_rate)

    def sblu(self, level: Tensor, alpha: Tensor, omega: Tensor) -> Tensor:
        """level (B, M, N P), alpha / omega (B, S, N) -> SBLU token features (B, N, 3 S), fp32."""
        b, m, _ = level.shape
        n = alpha.shape[-1]
        with torch.autocast(device_type=level.device.type, enabled=False):
            real, imag = sblu_kernels(alpha, omega, self.offsets_s)  # (B, S, N, J)
            win = frame_windows(level.float(), self.c.patch_frames, self.half_width, n)  # (B, M, N, J)
            win = win.reshape(b, self.subbands, m // self.subbands, n, win.shape[-1])
            return sblu_features(*sblu_response(win, real, imag))

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> FrontendOutput:
        p = self.patches(wave, sample_rate, lengths)
        valid = p.token_valid  # (B, N)
        alpha, omega = self.lambda_encoder(p.level, valid)
        sblu = self.sblu(p.level, alpha, omega)
        fused = torch.cat([self.patch_norm(p.features), self.sblu_norm(sblu)], dim=-1)
        tokens = self.norm(self.fuse(fused))
        self.last_alpha, self.last_omega = alpha.detach(), omega.detach()
        return FrontendOutput(tokens=tokens, padding_mask=~valid, stats=self._stats(alpha, omega, valid,
                                                                                   p.band_valid))

    def _stats(self, alpha: Tensor, omega: Tensor, valid: Tensor, band_valid: Tensor) -> dict[str, Tensor]:
        """Means over the (subband, token) cells that carry signal: token inside the clip, subband not wholly above
        the clip's Nyquist (there the prediction reads only silence)."""
        with torch.no_grad():
            sub_valid = band_valid.reshape(band_valid.shape[0], self.subbands, -1).any(-1)  # (B, S)
            w = (sub_valid[:, :, None] & valid[:, None, :]).float()
            n = w.sum().clamp_min(1.0)
            omega_mean = (omega * w).sum() / n
            omega_std = torch.sqrt(((omega - omega_mean).square() * w).sum() / n)
            return {"aape_alpha_mean_per_s": (alpha * w).sum() / n, "aape_omega_mean_hz": omega_mean,
                    "aape_omega_std_hz": omega_std}


__all__ = [
    "AaPEFrontend",
    "LambdaEncoder",
    "frame_windows",
    "log_uniform",
    "sblu_features",
    "sblu_kernels",
    "sblu_offsets_s",
    "sblu_response",
]
