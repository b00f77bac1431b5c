"""Frontend configs. Every frequency is in Hz and every duration in seconds, so one recipe means the same thing at
every input sample rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from a2v_het.config import ConfigError


@dataclass(frozen=True)
class HeterodyneConfig:
    num_bands: int = 8
    """K: bands picked per clip."""
    band_width_hz: float = 2000.0
    """W: each band is [band_start_hz, band_start_hz + W]; also the complex output rate of each band."""
    band_min_hz: float = 50.0
    """f_min: lowest allowed band start (keeps bands off DC)."""
    mixing: Literal["quadrature", "cosine"] = "quadrature"
    """quadrature = complex I/Q mixing (no image folding); cosine = the seed's real mixing (for the ablation)."""
    cauchy_width_hz: float = 200.0
    """gamma: half-width of the Cauchy tails of the soft band masks (M_k = 0.5 at gamma outside an edge)."""
    max_sample_rate: int = 192000
    """Highest supported input rate; the hypernetwork's absolute frequency grid reaches its Nyquist."""
    stft_window_s: float = 0.02
    """STFT window for the summary and the coverage losses; grid spacing = 1 / window (50 Hz)."""
    stft_hop_s: float = 0.01
    power_exponent: float = 1.0
    """The coverage statistics use P(f, t)^power_exponent. 1.0 is the seed (power); 0.5 (magnitude) weighs a call
    20 dB below the loudest one 100x less instead of 10^4x less (an ablation, see BENCHMARKS.md)."""
    picker_channels: int = 32
    picker_layers: int = 4
    picker_kernel: int = 9
    picker_window_hz: float = 1000.0
    """Half-width of the local soft-argmax around each band's arg-max (keeps the soft-argmax off the midpoint
    between two distant peaks)."""
    band_grad_from_ssl: bool = False
    """If false (default) the self-supervised loss cannot move the bands: only the coverage losses train the
    hypernetwork (otherwise the student can lower its loss by pointing the bands at silence)."""
    edge_taper_s: float = 0.005
    """Raised-cosine fade at both clip ends before the FFT: limits the leakage of the clip's hard edges."""
    conv_channels: int = 32
    """Channels of the per-band conv stack of the projecting module."""
    band_embedding_dim: int = 32

    def validate(self) -> None:
        if self.num_bands < 1:
            raise ConfigError("frontend.heterodyne.num_bands must be >= 1")
        if self.band_width_hz <= 0 or self.band_min_hz < 0:
            raise ConfigError("frontend.heterodyne.band_width_hz must be > 0 and band_min_hz >= 0")
        if self.max_sample_rate < 2 * (self.band_min_hz + self.band_width_hz):
            raise ConfigError(
                "frontend.heterodyne.max_sample_rate must be >= 2 * (band_min_hz + band_width_hz) "
                f"= {2 * (self.band_min_hz + self.band_width_hz):g} Hz"
            )
        if self.stft_hop_s <= 0 or self.stft_window_s <= 0:
            raise ConfigError("frontend.heterodyne.stft_window_s and stft_hop_s must be > 0")

    @property
    def min_sample_rate(self) -> float:
        """Lowest input rate that still fits one band: 2 * (f_min + W)."""
        return 2.0 * (self.band_min_hz + self.band_width_hz)


@dataclass(frozen=True)
class ConvExtractorConfig:
    """The wav2vec 2.0 / data2vec conv feature extractor: (channels, kernel, stride) per layer."""

    layers: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class LogMelConfig:
    n_mels: int = 128
    window_s: float = 0.025
    f_max_hz: float = 96000.0
    """Top of the mel scale (absolute Hz). Filters above a clip's Nyquist are zero for that clip."""


# ------------------------------------------------------------------------------------------ frontend zoo
# Each zoo frontend owns one dataclass below (fields added by its module's author); every one of them produces
# tokens at FrontendConfig.token_rate at every input sample rate.


@dataclass(frozen=True)
class SincNetConfig:
    """SincNet band-pass stem (animal2vec) followed by its conv stack; see a2v_het/frontend/sincnet.py."""

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class GaborStrfConfig:
    """Learnable spectro-temporal Gabor filters on a log-mel spectrogram (Riad et al.); see gabor_strf.py."""

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class LogMelPatchConfig:
    """AST-style log-mel + patch embedding; see logmel_patch.py."""

    def validate(self) -> None:
        return None


@dataclass(frozen=True)
class AaPEConfig:
    """AaPE-style adaptive stem (adaptive complex-sinusoid kernels fused with log-mel patch tokens); see aape.py."""

    def validate(self) -> None:
        return None


FRONTEND_NAMES = ("heterodyne", "conv", "logmel", "sincnet", "gabor_strf", "logmel_patch", "aape")
"""Every name ``FrontendConfig.name`` accepts (build_frontend dispatches on it)."""


@dataclass(frozen=True)
class FrontendConfig:
    name: Literal["heterodyne", "conv", "logmel", "sincnet", "gabor_strf", "logmel_patch", "aape"] = "heterodyne"
    dim: int = 256
    """D: width of the tokens handed to the encoder."""
    token_rate: float = 50.0
    """Tokens per second (heterodyne and log-mel: at every input rate; the conv extractor: sample_rate / 320)."""
    heterodyne: HeterodyneConfig = field(default_factory=HeterodyneConfig)
    conv: ConvExtractorConfig = field(default_factory=ConvExtractorConfig)
    logmel: LogMelConfig = field(default_factory=LogMelConfig)
    sincnet: SincNetConfig = field(default_factory=SincNetConfig)
    gabor_strf: GaborStrfConfig = field(default_factory=GaborStrfConfig)
    logmel_patch: LogMelPatchConfig = field(default_factory=LogMelPatchConfig)
    aape: AaPEConfig = field(default_factory=AaPEConfig)

    def validate(self) -> None:
        if self.token_rate <= 0 or self.dim < 1:
            raise ConfigError("frontend.token_rate must be > 0 and frontend.dim >= 1")
        zoo = {"sincnet": self.sincnet, "gabor_strf": self.gabor_strf, "logmel_patch": self.logmel_patch,
               "aape": self.aape}
        if self.name in zoo:
            zoo[self.name].validate()
        ratio = self.heterodyne.band_width_hz / self.token_rate
        if self.name == "heterodyne" and abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"frontend.heterodyne.band_width_hz ({self.heterodyne.band_width_hz:g}) must be a whole multiple "
                f"of frontend.token_rate ({self.token_rate:g}): each band is sampled at W Hz and pooled to tokens"
            )
