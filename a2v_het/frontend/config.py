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
    """SincNet band-pass stem (animal2vec) followed by its conv stack; see a2v_het/frontend/sincnet.py and
    docs/frontends/sincnet.md. Every frequency is in Hz and every duration in seconds, so the filters mean the same
    at every input rate."""

    num_filters: int = 32
    """C: learnable band-pass filters. The stem's cost is linear in C (32 at 48 kHz: 0.3 s forward+backward for
    4 x 3 s on 2 CPU cores, docs/frontends/sincnet.md); SincNet uses 80."""
    kernel_s: float = 0.01
    """Length of each Hamming-windowed sinc kernel (seconds): an odd number of taps at every rate (81 at 8 kHz,
    481 at 48 kHz, 961 at 96 kHz). Band edges are resolved to about 3.3 / kernel_s Hz (330 Hz)."""
    min_low_hz: float = 50.0
    """Lowest allowed lower cutoff (Hz): f1 = min_low_hz + |low_hz_|."""
    min_band_hz: float = 50.0
    """Narrowest allowed band (Hz): f2 = f1 + min_band_hz + |band_hz_|."""
    init_low_hz: float = 100.0
    """Lower edge of the lowest initial band (Hz)."""
    init_high_hz: float = 48000.0
    """Upper edge of the highest initial band (Hz). The C initial bands tile [init_low_hz, init_high_hz] evenly on
    the mel scale (SincNet's initialisation); 48 kHz is the Nyquist of 96 kHz recordings. A filter whose lower
    cutoff lies above a clip's Nyquist is silent for that clip (and gets no gradient from it)."""
    frames_per_token: int = 4
    """The rectified band outputs are averaged over frames of 1 / (frames_per_token x token_rate) seconds (5 ms at
    the default 50 tokens/s); everything after that runs on these rate-independent frames. A power of two: the
    conv stack halves the frame rate log2(frames_per_token) times to reach the token rate."""
    conv_channels: int = 64
    """Channels of the conv stack after the band envelopes."""
    conv_layers: int = 1
    """Stride-1 conv layers (kernel 3 frames, GELU) before the stride-2 layers."""

    def validate(self, prefix: str = "frontend.sincnet") -> None:
        if self.num_filters < 1:
            raise ConfigError(f"{prefix}.num_filters must be >= 1, got {self.num_filters}")
        if self.conv_channels < 1:
            raise ConfigError(f"{prefix}.conv_channels must be >= 1, got {self.conv_channels}")
        if self.conv_layers < 1:
            raise ConfigError(f"{prefix}.conv_layers must be >= 1, got {self.conv_layers}")
        if not self.kernel_s > 0:
            raise ConfigError(f"{prefix}.kernel_s must be > 0 (seconds), got {self.kernel_s}")
        if not self.min_low_hz >= 0:
            raise ConfigError(f"{prefix}.min_low_hz must be >= 0 (Hz), got {self.min_low_hz}")
        if not self.min_band_hz > 0:
            raise ConfigError(f"{prefix}.min_band_hz must be > 0 (Hz), got {self.min_band_hz}")
        if not 0 <= self.init_low_hz < self.init_high_hz:
            raise ConfigError(f"{prefix}.init_low_hz must be >= 0 and < {prefix}.init_high_hz, got "
                              f"{self.init_low_hz} and {self.init_high_hz}")
        fpt = self.frames_per_token
        if fpt < 1 or fpt & (fpt - 1):
            raise ConfigError(f"{prefix}.frames_per_token must be a power of two (1, 2, 4, ...), got {fpt}")


@dataclass(frozen=True)
class GaborStrfConfig:
    """Learnable spectro-temporal Gabor filters on a log-mel spectrogram (Riad et al. 2021); see gabor_strf.py and
    docs/frontends/gabor_strf.md. Times in seconds, rates in Hz, spectral extents in mel channels of this log-mel
    (an absolute-Hz grid), so every parameter means the same at every input sample rate."""

    n_mels: int = 64
    """M: mel channels of the STRFs' own log-mel (HTK mel, 0 Hz to f_max_hz). sigma_f and Omega are counted in these
    channels. 64 rather than the baseline's 128: the conv costs M x frames x C x kernel taps."""
    window_s: float = 0.025
    """STFT window of the log-mel (seconds)."""
    f_max_hz: float = 96000.0
    """Top of the mel scale (absolute Hz); channels above a clip's Nyquist carry nothing for that clip."""
    frames_per_token: int = 2
    """The log-mel runs at frames_per_token x token_rate frames/s (100/s = 10 ms at 50 tokens/s, as in Riad et al.);
    the frames of one token are concatenated into its feature vector."""
    num_filters: int = 16
    """C: learnable STRFs, each a complex kernel (real and imaginary part) whose modulus is the feature map."""
    kernel_half_s: float = 0.1
    """Temporal half-extent of every kernel (seconds): round(kernel_half_s x frame rate) frames each side."""
    kernel_half_mels: int = 6
    """Spectral half-extent of every kernel (mel channels each side; 0 = purely temporal kernels)."""
    min_sigma_t_s: float = 0.01
    """Lower bound of the temporal Gaussian width sigma_t (seconds)."""
    max_sigma_t_s: float = 0.05
    """Upper bound of sigma_t (seconds); <= kernel_half_s so the envelope fits the kernel to at least 1 sigma."""
    min_sigma_f_mels: float = 0.5
    """Lower bound of the spectral Gaussian width sigma_f (mel channels)."""
    max_sigma_f_mels: float = 3.0
    """Upper bound of sigma_f (mel channels)."""
    max_rate_hz: float = 25.0
    """Bound of the temporal modulation rate |omega| (Hz), below the frame Nyquist frames_per_token x token_rate / 2;
    the sign of omega is the orientation (upward / downward ripples)."""
    max_scale_cyc_per_mel: float = 0.5
    """Bound of the spectral modulation Omega (cycles per mel channel, 0 < Omega < bound; 0.5 is the Nyquist of
    the mel axis)."""
    frequency_groups: int = 8
    """G: the C modulus maps are averaged over G equal groups of mel channels; a token's feature is then
    frames_per_token x C x G values (256 by default)."""
    level_scale_db: float = 20.0
    """The log-mel is divided by this level difference (dB) after removing the clip's mean, so a 20 dB contrast is
    1.0 at the kernels' input: a fixed scale, the same at every rate (no per-clip variance)."""

    def logmel_config(self) -> LogMelConfig:
        return LogMelConfig(n_mels=self.n_mels, window_s=self.window_s, f_max_hz=self.f_max_hz)

    def validate(self, prefix: str = "frontend.gabor_strf") -> None:
        for key in ("num_filters", "n_mels", "frames_per_token", "frequency_groups"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_mels % self.frequency_groups:
            raise ConfigError(f"{prefix}.frequency_groups ({self.frequency_groups}) must divide {prefix}.n_mels "
                              f"({self.n_mels})")
        for key in ("window_s", "f_max_hz", "kernel_half_s", "min_sigma_t_s", "min_sigma_f_mels", "max_rate_hz",
                    "level_scale_db"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{prefix}.{key} must be > 0, got {getattr(self, key)}")
        if self.kernel_half_mels < 0:
            raise ConfigError(f"{prefix}.kernel_half_mels must be >= 0, got {self.kernel_half_mels}")
        if not self.min_sigma_t_s <= self.max_sigma_t_s <= self.kernel_half_s:
            raise ConfigError(f"{prefix}.max_sigma_t_s must lie in [{prefix}.min_sigma_t_s, {prefix}.kernel_half_s] "
                              f"seconds, got {self.max_sigma_t_s}")
        if not self.min_sigma_f_mels <= self.max_sigma_f_mels:
            raise ConfigError(f"{prefix}.max_sigma_f_mels must be >= {prefix}.min_sigma_f_mels, got "
                              f"{self.max_sigma_f_mels}")
        if not 0 < self.max_scale_cyc_per_mel <= 0.5:
            raise ConfigError(f"{prefix}.max_scale_cyc_per_mel must lie in (0, 0.5] cycles per mel channel, got "
                              f"{self.max_scale_cyc_per_mel}")


@dataclass(frozen=True)
class LogMelPatchConfig:
    """AST-style log-mel + patch embedding; see logmel_patch.py and docs/frontends/logmel_patch.md."""

    n_mels: int = 64
    window_s: float = 0.025
    """STFT window of the log-mel (seconds)."""
    f_max_hz: float = 96000.0
    """Top of the mel scale (absolute Hz); filters above a clip's Nyquist are silenced for that clip."""
    patch_mels: int = 8
    """Mel channels per patch (AST: 16 of 128)."""
    patch_frames: int = 2
    """Frames per patch = frames per token: the log-mel runs at patch_frames x token_rate frames/s."""
    channels: int = 16
    """E: embedding channels per patch; a token concatenates the n_mels / patch_mels patches of its time step."""

    def logmel_config(self) -> LogMelConfig:
        return LogMelConfig(n_mels=self.n_mels, window_s=self.window_s, f_max_hz=self.f_max_hz)

    def validate(self, prefix: str = "frontend.logmel_patch") -> None:
        if self.n_mels < 1 or self.patch_mels < 1 or self.patch_frames < 1 or self.channels < 1:
            raise ConfigError(f"{prefix}.n_mels, patch_mels, patch_frames and channels must be >= 1")
        if self.n_mels % self.patch_mels:
            raise ConfigError(f"{prefix}.n_mels ({self.n_mels}) must be a multiple of {prefix}.patch_mels "
                              f"({self.patch_mels})")
        if self.window_s <= 0 or self.f_max_hz <= 0:
            raise ConfigError(f"{prefix}.window_s and {prefix}.f_max_hz must be > 0")


@dataclass(frozen=True)
class AaPEConfig:
    """AaPE-style adaptive stem (adaptive complex-sinusoid kernels fused with log-mel patch tokens); see aape.py and
    docs/frontends/aape.md."""

    n_mels: int = 64
    window_s: float = 0.0125
    """STFT window (seconds). Shorter than logmel_patch's: the adaptive kernels read temporal modulations up to
    frame_rate / 2 = 100 Hz, which a 25 ms window would smear."""
    f_max_hz: float = 96000.0
    patch_mels: int = 8
    """Mel channels per patch; each patch row is one subband of the adaptive branch."""
    patch_frames: int = 4
    """Frames per patch = per token: the log-mel runs at patch_frames x token_rate frames/s (200/s by default), the
    patch embedding down-samples it 4x in time; the adaptive branch looks at what that throws away."""
    channels: int = 16
    """E: embedding channels per patch."""
    kernel_half_width_s: float = 0.04
    """Support of each adaptive kernel beyond its patch on either side (seconds): exp(-alpha |t|) is cut there."""
    decay_min_per_s: float = 5.0
    """Lowest decay alpha (1/s) the Lambda encoder may predict (a long window, fine modulation resolution)."""
    decay_max_per_s: float = 200.0
    """Highest decay alpha (1/s) (a short window, fine time resolution)."""
    lambda_hidden: int = 32
    """Hidden channels of the Lambda encoder (a conv over tokens of the patch embeddings)."""

    def logmel_config(self) -> LogMelConfig:
        return LogMelConfig(n_mels=self.n_mels, window_s=self.window_s, f_max_hz=self.f_max_hz)

    def validate(self, prefix: str = "frontend.aape") -> None:
        if self.n_mels < 1 or self.patch_mels < 1 or self.patch_frames < 1 or self.channels < 1:
            raise ConfigError(f"{prefix}.n_mels, patch_mels, patch_frames and channels must be >= 1")
        if self.n_mels % self.patch_mels:
            raise ConfigError(f"{prefix}.n_mels ({self.n_mels}) must be a multiple of {prefix}.patch_mels "
                              f"({self.patch_mels})")
        if self.window_s <= 0 or self.f_max_hz <= 0 or self.kernel_half_width_s < 0:
            raise ConfigError(f"{prefix}.window_s and f_max_hz must be > 0, kernel_half_width_s >= 0")
        if not 0 < self.decay_min_per_s < self.decay_max_per_s:
            raise ConfigError(f"{prefix}.decay_min_per_s must be > 0 and < {prefix}.decay_max_per_s")
        if self.lambda_hidden < 1:
            raise ConfigError(f"{prefix}.lambda_hidden must be >= 1")


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
