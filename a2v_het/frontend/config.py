"""Frontend configs. Every frequency is in Hz and every duration in seconds, so one recipe means the same thing at
every input sample rate."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

from a2v_het.config import ConfigError


@dataclass(frozen=True)
class HeterodyneConfig:
    num_bands: int = 8
    """K: detail bands per clip, each ``band_width_hz`` wide, placed by the band picker (the hypernetwork) where the
    calls are. They give the encoder frequency resolution."""
    band_width_hz: float = 2000.0
    """W: each detail band is [band_start_hz, band_start_hz + W]; also the complex sample rate of every band signal
    the projection reads (a context band wider than W is cut into sub-bands of W, a2v_het/frontend/band_widths.py)."""
    context_bands: int = 4
    """J: context bands per clip that tile its whole band evenly, so nothing a clip holds is ever outside every band
    (coverage from 6 to 500 kHz). Their width is the narrowest of ``context_widths_hz`` with
    J * W_c >= nyquist - band_min_hz: 1 kHz at 8 kHz, 8 kHz at 48 kHz, 64 kHz at 384-500 kHz. 0 = detail bands only
    (the model before issue 13, and what run folders saved before this key load as). Design and measurements:
    docs/frontends/heterodyne.md "Band widths"."""
    context_widths_hz: tuple[float, ...] = (1000.0, 2000.0, 4000.0, 8000.0, 16000.0, 32000.0, 64000.0)
    """The widths a context band can take (Hz)."""
    sub_band_pooling: Literal["fold", "max", "mean"] = "fold"
    """How a wide (context) band's sub-bands become the band's features (a2v_het/frontend/projection.py). fold
    (default): the sub-band signals summed into one band-rate signal (its spectrum aliased onto 2 kHz) before the
    convs, so each band costs the convs once. max / mean: each sub-band through the convs, then the element-wise
    maximum / mean per token; max detects as well as fold and costs 1.3-1.9x the frontend (BENCHMARKS.md)."""
    band_min_hz: float = 50.0
    """f_min: lowest allowed band start (keeps bands off DC)."""
    mixing: Literal["quadrature", "cosine"] = "quadrature"
    """quadrature = complex I/Q mixing (no image folding); cosine = the seed's real mixing (for the ablation)."""
    band_extraction: Literal["fft", "stft"] = "stft"
    """How each band becomes a signal at the band rate. stft (default): read from the STFT that the picker's
    statistics compute anyway, frame by frame, overlap-added (a2v_het/frontend/stft_bands.py): no FFT of the
    whole clip; quadrature mixing only, ``stft_hop_s`` = ``stft_window_s`` / 2; clips at rates whose window is not a
    whole even number of samples (22.05 kHz: 441) go the fft way. fft: one long rfft per clip and a brick-wall band
    of its bins (a2v_het/frontend/heterodyne.py), the design before; configs saved without this key load as fft.
    The two detect alike in the zoo (3 seeds); stft takes 0.88x the instructions at 500 kHz
    (docs/frontends/heterodyne.md, "Band extraction")."""
    cauchy_width_hz: float = 200.0
    """gamma: half-width of the Cauchy tails of the soft band masks (M_k = 0.5 at gamma outside an edge)."""
    max_sample_rate: int = 500000
    """Highest supported input rate; the hypernetwork's absolute frequency grid reaches its Nyquist. The band
    embedding reads each band's start against this Nyquist, so it is part of the model. A batch's grid is cut at
    its own highest Nyquist, so a high value costs nothing on low-rate batches."""
    stft_window_s: float = 0.02
    """STFT window for the summary and the coverage losses; grid spacing = 1 / window (50 Hz)."""
    stft_hop_s: float = 0.01
    power_exponent: float = 1.0
    """The coverage statistics use P(f, t)^power_exponent. 1.0 is the seed (power); 0.5 (magnitude) weighs a call
    20 dB below the loudest one 100x less instead of 10^4x less (an ablation, see BENCHMARKS.md)."""
    coverage_statistic: Literal["call_evidence", "power_variance"] = "call_evidence"
    """What the coverage losses and the picker's evidence measure per frequency bin. call_evidence: how far and how
    long the bin's smoothed log power rises above its own temporal median (nats; level-free, so a quiet call counts
    like a loud one and stationary noise of any colour counts nothing; a2v_het/frontend/call_evidence.py).
    power_variance: the seed's sigma^2(f) = Var_t P(f, t)^power_exponent (kept for the ablation in BENCHMARKS.md:
    loud low-frequency noise dominates it)."""
    evidence_smooth_hz: float = 150.0
    """call_evidence: frequency extent of the moving average of the power before the log (Hz)."""
    evidence_smooth_s: float = 0.05
    """call_evidence: time extent of the moving average (seconds)."""
    evidence_margin_nats: float = 1.0
    """call_evidence: rises smaller than this above a bin's median count nothing (1 nat = 4.3 dB)."""
    evidence_common_mode_hz: float = 1000.0
    """call_evidence: a rise counts above the mean rise of the bins within +-this many Hz in the same frame, so rain
    and wind gusts (which lift whole neighbourhoods) count little and calls (their own bins) fully; 0 = off."""
    band_picker: Literal["learned", "uniform"] = "learned"
    """learned: the hypernetwork picks each clip's band starts (trained by the coverage losses). uniform: no
    hypernetwork; the K bands tile each clip's band evenly (starts from band_min_hz to nyquist - W), the
    non-learned ablation that asks what the picker adds to a detector (BENCHMARKS.md, the zoo). The coverage
    objective has nothing to train then."""
    picker_inputs: Literal["local", "global"] = "local"
    """local: every picker input is a per-bin or local quantity (the evidence, log power against its +-1 kHz
    neighbourhood), so the same call looks the same in an 8 kHz and a 96 kHz clip. global: the earlier inputs,
    log power against the mean over the clip's valid bins and log p(f) normalised over them, which shift with the
    clip's bandwidth (the ablation)."""
    picker_init: Literal["greedy", "random"] = "greedy"
    """greedy: the head's output layer starts at zero, so the untrained picker is exactly the greedy "most
    uncaptured evidence" picker and training learns corrections to it. random: the default PyTorch init (the
    ablation)."""
    rate_augment_prob: float = 0.0
    """Coverage training: the chance that a training clip is re-sampled to a higher rate (up to max_sample_rate) with
    its content shifted up (a2v_het/data/augment.py). Off by default: measured on field and field_hard at unseen
    rates it lowered coverage (BENCHMARKS.md, three seeds); the per-bin inputs already make the picker see the same
    thing at every rate."""
    picker_channels: int = 16
    picker_layers: int = 5
    picker_kernel: int = 5
    """The picker's body: picker_layers dilated convolutions (dilation 1, 2, 4, ...) along frequency. 5 layers of
    kernel 5 see +-62 bins (+-3.1 kHz) like 4 of kernel 9, at a seventh of the cost with 16 channels (it learns a
    correction to the greedy start, not the picking itself)."""
    picker_window_hz: float = 1000.0
    """Half-width of the local soft-argmax around each band's arg-max (keeps the soft-argmax off the midpoint
    between two distant peaks)."""
    energy_weight: float = 1.0
    """Weight of the energy-variance coverage loss L_energy (log of the statistic's total over its part inside the
    bands) wherever the picker trains. The frontend applies it itself: its aux losses, which the data2vec loss adds
    and logs as ``energy``, come weighted, and the coverage objective minimises the weighted sum (logging the
    unweighted ``loss_energy``). 0 drops the term. Was ``model.lambda_energy`` (still read, with a warning)."""
    surprise_weight: float = 1.0
    """Weight of the surprise coverage loss L_surprise (the same log-ratio over the statistic's spectral entropy),
    applied like ``energy_weight``. Was ``model.lambda_surprise`` (still read, with a warning)."""
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
        if self.context_bands < 0:
            raise ConfigError(f"frontend.heterodyne.context_bands must be >= 0, got {self.context_bands}")
        if self.context_bands and (not self.context_widths_hz or any(w <= 0 for w in self.context_widths_hz)):
            raise ConfigError(f"frontend.heterodyne.context_widths_hz must be positive widths in Hz, got "
                              f"{list(self.context_widths_hz)}")
        if self.max_sample_rate < self.min_sample_rate:
            raise ConfigError(
                "frontend.heterodyne.max_sample_rate must be >= 2 * (band_min_hz + band_width_hz) "
                f"= {self.min_sample_rate:g} Hz"
            )
        if self.stft_hop_s <= 0 or self.stft_window_s <= 0:
            raise ConfigError("frontend.heterodyne.stft_window_s and stft_hop_s must be > 0")
        if self.evidence_smooth_hz <= 0 or self.evidence_smooth_s <= 0 or self.evidence_margin_nats < 0:
            raise ConfigError("frontend.heterodyne.evidence_smooth_hz and evidence_smooth_s must be > 0 and "
                              "evidence_margin_nats >= 0")
        if self.evidence_common_mode_hz < 0 or not 0 <= self.rate_augment_prob <= 1:
            raise ConfigError("frontend.heterodyne.evidence_common_mode_hz must be >= 0 and rate_augment_prob in "
                              "[0, 1]")
        if self.energy_weight < 0 or self.surprise_weight < 0:
            raise ConfigError("frontend.heterodyne.energy_weight and surprise_weight must be >= 0")
        if self.band_extraction not in ("fft", "stft"):
            raise ConfigError(f"frontend.heterodyne.band_extraction must be 'fft' or 'stft', got "
                              f"{self.band_extraction!r}")
        if self.band_extraction == "stft":
            bins = self.band_width_hz * self.stft_window_s
            if self.mixing != "quadrature":
                raise ConfigError("frontend.heterodyne.band_extraction: stft needs mixing: quadrature")
            if abs(2 * self.stft_hop_s - self.stft_window_s) > 1e-9 * self.stft_window_s:
                raise ConfigError(f"frontend.heterodyne.band_extraction: stft needs stft_hop_s = stft_window_s / 2, "
                                  f"got {self.stft_hop_s} and {self.stft_window_s}")
            if abs(bins - round(bins)) > 1e-6 or round(bins) % 2:
                raise ConfigError(f"frontend.heterodyne.band_extraction: stft needs band_width_hz x stft_window_s to "
                                  f"be an even whole number of STFT bins, got {bins:g}")

    @property
    def evidence_args(self) -> tuple[float, float, float, float]:
        """(smooth_hz, smooth_s, margin_nats, common_mode_hz) for :func:`a2v_het.frontend.spectrum.grid_power_statistics`."""
        return (self.evidence_smooth_hz, self.evidence_smooth_s, self.evidence_margin_nats,
                self.evidence_common_mode_hz)

    @property
    def total_bands(self) -> int:
        """K + J: the bands every clip's tokens are made of."""
        return self.num_bands + self.context_bands

    @property
    def min_sample_rate(self) -> float:
        """Lowest input rate that still fits one detail band: 2 * (f_min + W)."""
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
    """AST-style log-mel + patch embedding; see logmel_patch.py and docs/frontends/logmel_patch.md. Times in seconds,
    frequencies in absolute Hz, levels in dB re the log-mel's power unit (a full-scale sine reads -6 dB in its mel
    channel), so every field means the same at every input sample rate."""

    n_mels: int = 64
    """M: mel channels (HTK mel from 0 Hz to f_max_hz on the absolute-Hz grid)."""
    window_s: float = 0.025
    """STFT window of the log-mel (seconds)."""
    f_max_hz: float = 96000.0
    """Top of the mel scale (absolute Hz); filters above a clip's Nyquist are silenced for that clip."""
    patch_mels: int = 8
    """Mel channels per patch (AST: 16 of 128); n_mels / patch_mels frequency patches per time step."""
    patch_frames: int = 2
    """Frames per patch = frames per token: the log-mel runs at patch_frames x token_rate frames/s (100/s = 10 ms
    hop at 50 tokens/s)."""
    channels: int = 16
    """E: embedding channels per patch (the Conv2d's outputs); a token concatenates the n_mels / patch_mels patch
    embeddings of its time step (E x n_mels / patch_mels = 128 features) before the Linear to D."""
    normalization: Literal["clip", "fixed"] = "clip"
    """clip: level relative to the clip's own mean and standard deviation over its sounding cells; fixed: level
    above silence_db in units of fixed_scale_db (AST-like fixed statistics). Both map silence to exactly 0."""
    silence_db: float = -90.0
    """Silence level (dB): cells below it (digital silence, bands above the Nyquist, which hold -100 dB) are left
    out of the per-clip statistics and always read 0. Must lie above -100 dB, the log(eps) floor."""
    floor_std: float = 4.0
    """clip: a cell reads (level - floor) / std with floor = max(mean - floor_std x std, silence_db), clamped at
    0: cells more than floor_std standard deviations below the clip's mean count as silence."""
    min_std_db: float = 3.0
    """clip: lower bound of the per-clip standard deviation (dB), so a near-constant clip (DC, hum, dither) is not
    blown up to unit variance."""
    fixed_scale_db: float = 20.0
    """fixed: a cell reads max(level - silence_db, 0) / fixed_scale_db (dB per unit)."""

    def logmel_config(self) -> LogMelConfig:
        return LogMelConfig(n_mels=self.n_mels, window_s=self.window_s, f_max_hz=self.f_max_hz)

    def validate(self, prefix: str = "frontend.logmel_patch") -> None:
        for key in ("n_mels", "patch_mels", "patch_frames", "channels"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{prefix}.{key} must be >= 1, got {getattr(self, key)}")
        if self.n_mels % self.patch_mels:
            raise ConfigError(f"{prefix}.patch_mels ({self.patch_mels}) must divide {prefix}.n_mels "
                              f"({self.n_mels})")
        for key in ("window_s", "f_max_hz", "floor_std", "min_std_db", "fixed_scale_db"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"{prefix}.{key} must be > 0, got {getattr(self, key)}")
        if self.normalization not in ("clip", "fixed"):
            raise ConfigError(f"{prefix}.normalization must be 'clip' or 'fixed', got {self.normalization!r}")
        if not -100.0 < self.silence_db < 0.0:  # -100 dB = 10 log10(LOG_EPS), the level of silenced filters
            raise ConfigError(f"{prefix}.silence_db must lie in (-100, 0) dB, got {self.silence_db}")


@dataclass(frozen=True)
class AaPEConfig(LogMelPatchConfig):
    """AaPE-style adaptive stem: the logmel_patch tokens fused with the responses of input-dependent complex
    sinusoidal kernels (decay alpha in 1/s, modulation frequency omega in Hz) on each subband's log-mel trajectory;
    see aape.py and docs/frontends/aape.md. The inherited fields configure the patch-token branch and mean what they
    mean in LogMelPatchConfig; two defaults differ."""

    window_s: float = 0.0125
    """STFT window (seconds). Shorter than logmel_patch's: the kernels read temporal modulations up to
    frame_rate / 2 = 100 Hz, which a 25 ms window would smear."""
    patch_frames: int = 4
    """Frames per patch = per token (>= 2): the log-mel runs at patch_frames x token_rate frames/s (200/s by
    default); the patch embedding samples each subband at token_rate, the kernels read modulations between
    token_rate / 2 and patch_frames x token_rate / 2 that this stride aliases. Each row of patches (patch_mels mel
    channels) is one subband of the adaptive branch."""
    kernel_half_width_s: float = 0.04
    """Support of each kernel beyond its patch on either side (seconds): a kernel spans the patch plus
    round(kernel_half_width_s x frame_rate) frames each side (20 frames = 100 ms by default); exp(-alpha |t|) is
    cut there."""
    alpha_min_per_s: float = 5.0
    """Lowest decay alpha (1/s) the Lambda encoder may predict: a long window, fine modulation resolution."""
    alpha_max_per_s: float = 200.0
    """Highest decay alpha (1/s): a short window (1/e at 5 ms), fine time resolution."""
    lambda_hidden: int = 32
    """Hidden channels of the Lambda encoder (convs over the log-mel of each subband)."""

    def patch_config(self) -> LogMelPatchConfig:
        """The patch-token branch: a LogMelPatchConfig with this config's inherited fields."""
        return LogMelPatchConfig(**{f.name: getattr(self, f.name) for f in fields(LogMelPatchConfig)})

    def validate(self, prefix: str = "frontend.aape") -> None:
        super().validate(prefix)
        if self.patch_frames < 2:
            raise ConfigError(f"{prefix}.patch_frames must be >= 2 (the kernels read modulations above the token "
                              f"rate's Nyquist, which needs frames finer than tokens), got {self.patch_frames}")
        if not self.kernel_half_width_s >= 0:
            raise ConfigError(f"{prefix}.kernel_half_width_s must be >= 0 seconds, got {self.kernel_half_width_s}")
        if not self.alpha_min_per_s > 0:
            raise ConfigError(f"{prefix}.alpha_min_per_s must be > 0 (1/s), got {self.alpha_min_per_s}")
        if not self.alpha_max_per_s >= self.alpha_min_per_s:
            raise ConfigError(f"{prefix}.alpha_max_per_s must be >= {prefix}.alpha_min_per_s "
                              f"({self.alpha_min_per_s} 1/s), got {self.alpha_max_per_s}")
        if self.lambda_hidden < 1:
            raise ConfigError(f"{prefix}.lambda_hidden must be >= 1, got {self.lambda_hidden}")


@dataclass(frozen=True)
class FrontendSpec:
    """One row of the frontend registry: where the module lives and which config section it reads."""

    builder: str
    """``module:Class`` of the :class:`~a2v_het.frontend.base.Frontend`; imported only when that frontend is built,
    so a run pays for the modules it uses."""
    section: str | None
    """The ``FrontendConfig`` field holding its options (``frontend.<section>.*``), None if it has none."""


FRONTENDS: dict[str, FrontendSpec] = {
    "heterodyne": FrontendSpec("a2v_het.frontend.heterodyne_frontend:HeterodyneFrontend", "heterodyne"),
    "conv": FrontendSpec("a2v_het.frontend.conv_extractor:ConvExtractor", "conv"),
    "logmel": FrontendSpec("a2v_het.frontend.logmel:LogMelFrontend", "logmel"),
    "logmel_patch": FrontendSpec("a2v_het.frontend.logmel_patch:LogMelPatchFrontend", "logmel_patch"),
    "sincnet": FrontendSpec("a2v_het.frontend.sincnet:SincNetFrontend", "sincnet"),
    "gabor_strf": FrontendSpec("a2v_het.frontend.gabor_strf:GaborStrfFrontend", "gabor_strf"),
    "aape": FrontendSpec("a2v_het.frontend.aape:AaPEFrontend", "aape"),
}
"""The one table of frontends: name -> builder and config section. ``FrontendConfig.name`` accepts exactly these
names, :func:`a2v_het.frontend.build_frontend` builds from it, and the benchmarks iterate over it."""

FRONTEND_NAMES: tuple[str, ...] = tuple(FRONTENDS)

FrontendName = Literal[FRONTEND_NAMES]  # type: ignore[valid-type]  # built from the table: one list of names
"""The names ``frontend.name`` accepts; the recipe loader turns a typo into "did you mean ...?"."""


@dataclass(frozen=True)
class FrontendConfig:
    name: FrontendName = "heterodyne"
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
        if self.name not in FRONTENDS:
            raise ConfigError(f"frontend.name {self.name!r} is not one of {list(FRONTENDS)}")
        section = FRONTENDS[self.name].section
        options = getattr(self, section) if section else None
        if options is not None and hasattr(options, "validate"):
            options.validate()
        ratio = self.heterodyne.band_width_hz / self.token_rate
        if self.name == "heterodyne" and abs(ratio - round(ratio)) > 1e-9:
            raise ConfigError(
                f"frontend.heterodyne.band_width_hz ({self.heterodyne.band_width_hz:g}) must be a whole multiple "
                f"of frontend.token_rate ({self.token_rate:g}): each band is sampled at W Hz and pooled to tokens"
            )
