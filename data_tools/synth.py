"""Synthetic bioacoustic clips with exact ground truth, written as shards.

Every clip has a fixed duration and its own sample rate; it holds short "calls" over a background:

* calls (50-800 ms, smooth Tukey onsets/offsets, all energy within [150 Hz, 0.9 * Nyquist]):
  ``tone``, ``up_sweep`` / ``down_sweep`` (linear FM over 300-2500 Hz), ``harmonic`` (2-4 harmonics of an f0 of
  300-1500 Hz with a vibrato or glide of a few percent), ``click_train`` (Gabor clicks, centre 1 kHz to 0.8 * Nyquist,
  1-2 kHz wide, 5-40 clicks/s) and ``noise_burst`` (band-limited noise, 200-1500 Hz wide);
* backgrounds: white or pink noise, hum (constant sinusoids: a 50/60 Hz mains family or a low-kHz whine, so its
  energy has zero temporal variance), wind (low-pass noise under a slow random gust envelope).

Presets: ``basic`` (the seed's idealised bursts: 1-3 non-overlapping tones/sweeps/noise bursts over white noise
40 dB below the calls), ``field`` (2-5 calls of every type, overlaps allowed, over a random mix of noise, hum and
wind, each call 0-20 dB above the background in its band) and ``field_hard`` (3-6 calls, at least two of them
overlapping in time, harmonic stacks of 3-6 harmonics of a 0.5-3 kHz f0 that spread over several bands, over noise
plus wind plus rain (and hum, p = 0.6), each call's RMS 10-30 dB *below* the whole background's RMS: a call shows
only where the background is weak in its band, as a quiet bird over wind and rain) and ``ultrasonic`` (``field``
with bat-like echolocation: 2-5 calls, each with p = 0.6 a train of 2-8 ms downward FM pulses every 50-150 ms
starting at up to 130 kHz, else a field call; for bat-detector rates of 192-500 kHz, valid at every rate).

Ground truth per call: ``onset_s``/``offset_s`` (the call's span in the clip) and ``low_hz``/``high_hz`` (where its
energy is: tonal calls get a margin of max(2 / duration, 5) Hz, the spectral spread of their envelope).
Frequencies are drawn log-uniformly, as animal calls spread over octaves rather than over hertz.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
from scipy.interpolate import PchipInterpolator
from scipy.signal.windows import tukey
from tqdm import tqdm

from a2v_het.atomic import atomic_open, atomic_write_text
from a2v_het.data.manifest import MANIFEST_NAME
from a2v_het.data.sample_rates import TRAIN_SAMPLE_RATES, ULTRASONIC_SAMPLE_RATES

from data_tools.shard_writer import DEFAULT_TARGET_SHARD_BYTES, ShardWriter

PRESETS = ("basic", "field", "field_hard", "ultrasonic")
CALL_TYPES = ("tone", "up_sweep", "down_sweep", "harmonic", "click_train", "noise_burst")
BASIC_CALL_TYPES = ("tone", "up_sweep", "down_sweep", "noise_burst")
DEFAULT_SAMPLE_RATES = TRAIN_SAMPLE_RATES


def preset_sample_rates(preset: str) -> tuple[int, ...]:
    """The rates ``data_tools synth --preset PRESET`` draws from when none are given: bat detectors' for
    ``ultrasonic`` (its sweeps reach 130 kHz), the training rates for the others."""
    return ULTRASONIC_SAMPLE_RATES if preset == "ultrasonic" else DEFAULT_SAMPLE_RATES
MIN_SAMPLE_RATE = 4000
"""Lowest rate at which every call type still fits (a click train needs its 1 kHz-wide band above 1 kHz)."""
MIN_DURATION_S = 0.25
F_MIN_HZ = 150.0
NYQUIST_FRACTION = 0.9
CALL_DURATION_S = (0.05, 0.8)
EDGE_MARGIN_S = 0.01
"""Calls keep this far from the clip ends, so no onset is cut by the clip edge."""
BASIC_GAP_S = 0.05
"""Minimum silence between calls in ``basic``, so calls never touch."""
BASIC_NOISE_DB = -40.0
FIELD_SNR_DB = (0.0, 20.0)
SNR_MIN_BANDWIDTH_HZ = 100.0
"""The band in which a call's SNR is measured is widened to at least this: a pure tone's own band is a few Hz wide,
and an SNR defined there would be far above what any spectrogram (a 20 ms window has 50 Hz bins) can show."""
HARD_BELOW_BACKGROUND_DB = (10.0, 30.0)
"""field_hard: each call's RMS over its duration lies this far below the background's RMS over the clip."""
HUM_DB = (10.0, 30.0)
"""Hum fundamental power over the rest of the background within SNR_MIN_BANDWIDTH_HZ around it."""
PEAK = 0.9


@dataclass
class Call:
    """One synthesised call before placement: ``wave`` (L,) float64 with unit RMS, its label and band (Hz)."""

    label: str
    wave: np.ndarray
    low_hz: float
    high_hz: float


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers.


def call_band_limits(sample_rate: int) -> tuple[float, float]:
    """(lowest, highest) frequency in Hz any call energy may reach at ``sample_rate``: [150 Hz, 0.9 * Nyquist]."""
    return F_MIN_HZ, NYQUIST_FRACTION * sample_rate / 2.0


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    if hi <= lo:
        return lo
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _tonal_margin_hz(duration_s: float) -> float:
    """Half-width of the band a tonal call's envelope smears a single frequency over (about 1 / duration Hz, doubled
    so the Tukey sidelobes stay inside), at least 5 Hz."""
    return max(2.0 / duration_s, 5.0)


def _envelope(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth onset/offset: a Tukey window tapering 30-60 % of the call."""
    return tukey(n, alpha=rng.uniform(0.3, 0.6))


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = math.sqrt(float(np.mean(x * x)))
    return x / rms if rms > 0 else x


def _bandpass_noise(rng: np.random.Generator, n: int, sample_rate: int, low_hz: float, high_hz: float) -> np.ndarray:
    """White noise of n samples with every FFT bin outside [low_hz, high_hz] zeroed."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum[(freqs < low_hz) | (freqs > high_hz)] = 0.0
    return np.fft.irfft(spectrum, n)


# ---------------------------------------------------------------------------------------------------------------------
# Calls. Each takes the requested length n (samples) and returns a Call of that length (click trains may be shorter).


def synth_tone(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    lo, hi = call_band_limits(sample_rate)
    margin = _tonal_margin_hz(n / sample_rate)
    freq = _log_uniform(rng, lo + margin, hi - margin)
    t = np.arange(n) / sample_rate
    x = np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi)) * _envelope(rng, n)
    return Call("tone", _unit_rms(x), freq - margin, freq + margin)


def synth_sweep(rng: np.random.Generator, sample_rate: int, n: int, up: bool) -> Call:
    """Linear FM from f1 to f2 over the call: phase = 2 pi (f1 t + (f2 - f1) t^2 / (2 d))."""
    lo, hi = call_band_limits(sample_rate)
    duration = n / sample_rate
    margin = _tonal_margin_hz(duration)
    span_max = min(2500.0, hi - lo - 2 * margin)
    span = rng.uniform(min(300.0, span_max), span_max)
    f_low = _log_uniform(rng, lo + margin, hi - margin - span)
    f1, f2 = (f_low, f_low + span) if up else (f_low + span, f_low)
    t = np.arange(n) / sample_rate
    phase = 2 * np.pi * (f1 * t + (f2 - f1) * t * t / (2 * duration))
    x = np.sin(phase + rng.uniform(0, 2 * np.pi)) * _envelope(rng, n)
    return Call("up_sweep" if up else "down_sweep", _unit_rms(x), f_low - margin, f_low + span + margin)


def _harmonic_stack(rng: np.random.Generator, sample_rate: int, n: int, harmonics: tuple[int, int],
                    f0_hz: tuple[float, float], ratio: tuple[float, float], fall_back: bool) -> Call:
    """Harmonics [harmonics[0], harmonics[1]) of a contoured f0 in f0_hz (sinusoidal vibrato or linear glide of
    1-5 %), amplitudes r^(k-1) with r in ``ratio``. Fewer harmonics at low rates, down to 2; if even 2 do not fit,
    the field preset's stack (``fall_back``) or a ValueError."""
    lo, hi = call_band_limits(sample_rate)
    duration = n / sample_rate
    margin = _tonal_margin_hz(duration)
    depth = rng.uniform(0.01, 0.05)
    n_harm = int(rng.integers(*harmonics))
    base_lo = max(f0_hz[0], (lo + margin) / (1 - depth))
    base_hi = min(f0_hz[1], (hi - margin) / (n_harm * (1 + depth)))
    while base_hi < base_lo and n_harm > 2:  # low sample rates: fewer harmonics fit below 0.9 * Nyquist
        n_harm -= 1
        base_hi = min(f0_hz[1], (hi - margin) / (n_harm * (1 + depth)))
    if base_hi < base_lo:
        if fall_back:
            return synth_harmonic(rng, sample_rate, n)
        raise ValueError(f"no harmonic stack fits below {hi:g} Hz at {sample_rate} Hz")
    base = _log_uniform(rng, base_lo, base_hi)
    t = np.arange(n) / sample_rate
    if rng.random() < 0.5:
        contour = depth * np.sin(2 * np.pi * rng.uniform(2.0, 8.0) * t + rng.uniform(0, 2 * np.pi))
    else:
        contour = depth * rng.choice([-1.0, 1.0]) * (2 * t / duration - 1)
    f0 = base * (1 + contour)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    r = rng.uniform(*ratio)
    x = sum(r**k * np.sin((k + 1) * phase + rng.uniform(0, 2 * np.pi)) for k in range(n_harm))
    x = x * _envelope(rng, n)
    return Call("harmonic", _unit_rms(x), float(f0.min()) - margin, n_harm * float(f0.max()) + margin)


def synth_harmonic(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    """2-4 harmonics of a contoured f0 of 300-1500 Hz (vibrato or glide of 1-5 %), amplitudes r^(k-1), r < 1."""
    return _harmonic_stack(rng, sample_rate, n, (2, 5), (300.0, 1500.0), (0.4, 0.8), fall_back=False)


def synth_harmonic_stack(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    """field_hard: 3-6 harmonics of an f0 of 500-3000 Hz: one call spread over several bands (a 2 kHz f0 with 5
    harmonics spans 2-10 kHz). At rates where not even 2 fit, the field preset's stack."""
    return _harmonic_stack(rng, sample_rate, n, (3, 7), (500.0, 3000.0), (0.6, 0.95), fall_back=True)


def synth_click_train(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    """Gabor clicks exp(-t^2 / 2 s^2) cos(2 pi fc t): the Gaussian spectrum has sigma_f = 1 / (2 pi s); s is chosen so
    the band [fc - bw/2, fc + bw/2] spans +-2.5 sigma_f (over 99.9 % of the energy). Clicks repeat at 5-40 /s
    (+-10 % jitter), at least two per train; the train runs from 4 s before its first click centre to 4 s after its
    last (so its length is at most n)."""
    lo, hi = call_band_limits(sample_rate)
    nyquist = sample_rate / 2.0
    bw_max = min(2000.0, 2 * (hi - max(1000.0, lo)))
    bw = rng.uniform(min(1000.0, bw_max), bw_max)
    c_lo, c_hi = max(1000.0, lo + bw / 2), min(0.8 * nyquist, hi - bw / 2)
    if c_hi < c_lo:
        raise ValueError(f"no click band fits below {hi:g} Hz at {sample_rate} Hz")
    fc = _log_uniform(rng, c_lo, c_hi)
    sigma = 5.0 / (2 * np.pi * bw)
    half = 4 * sigma
    duration = n / sample_rate
    period = 1.0 / rng.uniform(5.0, 40.0)
    period = min(period, duration - 2 * half)  # at least two clicks even in a short train
    count = int((duration - 2 * half) // period) + 1
    jitter = np.concatenate([[0.0], rng.uniform(-0.1, 0.1, count - 1)])
    centres = np.minimum(half + period * (np.arange(count) + jitter), duration - half)
    length = min(n, int(math.ceil((centres[-1] + half) * sample_rate)) + 1)
    x = np.zeros(length)
    t = np.arange(length) / sample_rate
    width = int(math.ceil(half * sample_rate)) + 1
    for centre, amp in zip(centres, rng.uniform(0.6, 1.0, count)):
        i0 = max(0, int(centre * sample_rate) - width)
        i1 = min(length, int(centre * sample_rate) + width + 1)
        dt = t[i0:i1] - centre
        x[i0:i1] += amp * np.exp(-0.5 * (dt / sigma) ** 2) * np.cos(2 * np.pi * fc * dt + rng.uniform(0, 2 * np.pi))
    return Call("click_train", _unit_rms(x), fc - bw / 2, fc + bw / 2)


def synth_noise_burst(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    lo, hi = call_band_limits(sample_rate)
    width = rng.uniform(min(200.0, hi - lo), min(1500.0, hi - lo))
    f_low = _log_uniform(rng, lo, hi - width)
    x = _bandpass_noise(rng, n, sample_rate, f_low, f_low + width) * _envelope(rng, n)
    return Call("noise_burst", _unit_rms(x), f_low, f_low + width)


FM_PULSE_S = (0.002, 0.008)
"""ultrasonic: duration of one echolocation pulse (seconds)."""
FM_INTERVAL_S = (0.05, 0.15)
"""ultrasonic: time from one pulse's start to the next's (seconds)."""
FM_TOP_HZ = 130000.0
"""ultrasonic: the highest start of a sweep (Hz): the top of most bats' echolocation."""


def synth_fm_pulse_train(rng: np.random.Generator, sample_rate: int, n: int) -> Call:
    """A bat-like echolocation sequence: steep downward linear FM pulses of 2-8 ms, one every 50-150 ms (at least
    two), each sweeping from f_start down to 30-70 % of it. f_start is log-uniform in [0.4, 1] of the clip's top
    (at most 130 kHz), so the sweeps are ultrasonic at 192-500 kHz and scale down into the band of lower rates. The
    event spans the whole sequence and [f_end, f_start] widened by 2 / pulse length (the envelope's smear)."""
    lo, hi = call_band_limits(sample_rate)
    pulse = int(rng.uniform(*FM_PULSE_S) * sample_rate)
    margin = 2.0 * sample_rate / pulse
    top = min(hi - margin, FM_TOP_HZ)
    f_start = _log_uniform(rng, max(0.4 * top, 4 * lo), top)
    f_end = max(f_start * rng.uniform(0.3, 0.7), lo + margin)
    interval = int(rng.uniform(*FM_INTERVAL_S) * sample_rate)
    count = max(2, (n - pulse) // interval + 1)
    interval = min(interval, (n - pulse) // (count - 1))
    x = np.zeros(min(n, (count - 1) * interval + pulse))
    t = np.arange(pulse) / sample_rate
    d = pulse / sample_rate
    chirp = np.sin(2 * np.pi * (f_start * t + (f_end - f_start) * t * t / (2 * d)))
    for k, amp in enumerate(rng.uniform(0.6, 1.0, count)):
        x[k * interval : k * interval + pulse] += amp * chirp * tukey(pulse, alpha=0.5)
    return Call("fm_pulse_train", _unit_rms(x), f_end - margin, f_start + margin)


CALL_SYNTHS: dict[str, Callable[[np.random.Generator, int, int], Call]] = {
    "tone": synth_tone,
    "up_sweep": lambda rng, sr, n: synth_sweep(rng, sr, n, up=True),
    "down_sweep": lambda rng, sr, n: synth_sweep(rng, sr, n, up=False),
    "harmonic": synth_harmonic,
    "click_train": synth_click_train,
    "noise_burst": synth_noise_burst,
}


# ---------------------------------------------------------------------------------------------------------------------
# Backgrounds: each (N,) float64 with unit RMS.


def white_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    return rng.standard_normal(n)


def pink_noise(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """1/f power spectrum (amplitude 1/sqrt(f), flat below 20 Hz, no DC)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    spectrum[0] = 0.0
    return _unit_rms(np.fft.irfft(spectrum, n))


def hum(rng: np.random.Generator, n: int, sample_rate: int) -> tuple[np.ndarray, list[float]]:
    """Constant sinusoids: a 50 or 60 Hz mains family (3-8 harmonics) or a 1-4 kHz whine with up to 2 overtones.

    Returns: (wave (N,) scaled so its fundamental has unit power, the component frequencies in Hz). Amplitudes and
    frequencies never change, so the hum's own spectrogram has zero temporal variance.
    """
    nyquist = sample_rate / 2.0
    if rng.random() < 0.5:
        f0, count = float(rng.choice([50.0, 60.0])), int(rng.integers(3, 9))
    else:
        f0, count = rng.uniform(1000.0, min(4000.0, 0.8 * nyquist)), int(rng.integers(1, 4))
    freqs = [f0 * k for k in range(1, count + 1) if f0 * k < 0.95 * nyquist]
    amps = math.sqrt(2.0) * rng.uniform(0.4, 0.8) ** np.arange(len(freqs))  # sqrt(2): unit-power fundamental
    t = np.arange(n) / sample_rate
    x = sum(a * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for a, f in zip(amps, freqs))
    return x, freqs


def wind(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Broadband noise under a first-order low-pass (corner 100-500 Hz), times a slow gust envelope in [0.1, 1]
    (monotone cubic through random points every 0.2-0.5 s)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    spectrum /= np.sqrt(1.0 + (freqs / rng.uniform(100.0, 500.0)) ** 2)
    noise = _unit_rms(np.fft.irfft(spectrum, n))
    duration = n / sample_rate
    step = rng.uniform(0.2, 0.5)
    knots = np.arange(0.0, duration + 2 * step, step)
    gusts = PchipInterpolator(knots, rng.uniform(0.1, 1.0, knots.size))(np.arange(n) / sample_rate)
    return _unit_rms(noise * gusts)


def rain(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Drops: 20-200 per second (Poisson), each a burst of noise with a 0.5-3 ms exponential decay and a log-normal
    amplitude, through a first-order high-pass at 500-2000 Hz: broadband transients in every bin at once."""
    duration = n / sample_rate
    count = int(rng.poisson(rng.uniform(20.0, 200.0) * duration))
    x = np.zeros(n)
    for _ in range(count):
        tau = rng.uniform(0.0005, 0.003)
        length = min(n, int(6 * tau * sample_rate) + 1)
        start = int(rng.integers(0, max(1, n - length)))
        drop = rng.standard_normal(length) * np.exp(-np.arange(length) / (tau * sample_rate))
        x[start : start + length] += drop * math.exp(rng.normal(0.0, 0.7))
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
    corner = rng.uniform(500.0, 2000.0)
    spectrum *= (freqs / corner) / np.sqrt(1.0 + (freqs / corner) ** 2)
    return _unit_rms(np.fft.irfft(spectrum, n))


def band_power(power_spectrum: np.ndarray, freqs: np.ndarray, n: int, low_hz: float, high_hz: float) -> float:
    """Mean power (per sample) of a length-n real signal within [low_hz, high_hz], from |rfft|^2 (Parseval)."""
    band = (freqs >= low_hz) & (freqs <= high_hz)
    return float(2.0 * power_spectrum[band].sum() / (n * n))


# ---------------------------------------------------------------------------------------------------------------------
# Clips.


def _check_rate_and_duration(sample_rate: int, duration_s: float) -> None:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < MIN_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be an integer >= {MIN_SAMPLE_RATE} Hz, got {sample_rate!r}")
    if not (duration_s >= MIN_DURATION_S and math.isfinite(duration_s)):
        raise ValueError(f"duration_s must be >= {MIN_DURATION_S} s, got {duration_s!r}")


def _basic_calls(rng: np.random.Generator, sample_rate: int, duration_s: float) -> list[tuple[int, Call]]:
    """1-3 calls in random order with at least BASIC_GAP_S between them; durations shrink to fit short clips."""
    n_calls = int(rng.integers(1, 4))
    types = [BASIC_CALL_TYPES[i] for i in rng.integers(0, len(BASIC_CALL_TYPES), n_calls)]
    durations = rng.uniform(*CALL_DURATION_S, n_calls)
    while True:
        room = duration_s - 2 * EDGE_MARGIN_S - (len(durations) - 1) * BASIC_GAP_S
        if durations.sum() > room:
            durations = durations * room / durations.sum()
        if durations.min() >= CALL_DURATION_S[0] or len(durations) == 1:
            break
        durations, types = durations[:-1], types[:-1]
    calls = [CALL_SYNTHS[kind](rng, sample_rate, int(d * sample_rate)) for kind, d in zip(types, durations)]
    busy = sum(c.wave.size for c in calls) / sample_rate + (len(calls) - 1) * BASIC_GAP_S
    free = duration_s - 2 * EDGE_MARGIN_S - busy
    cuts = np.sort(rng.uniform(0.0, max(free, 0.0), len(calls)))
    placed, t = [], EDGE_MARGIN_S
    for i, call in enumerate(calls):
        start_s = t + cuts[i]
        placed.append((int(round(start_s * sample_rate)), call))
        t += call.wave.size / sample_rate + BASIC_GAP_S
    return placed


def _field_calls(rng: np.random.Generator, sample_rate: int, duration_s: float) -> list[tuple[int, Call]]:
    """2-5 calls of every type at independent random times (overlaps allowed)."""
    placed = []
    max_len = min(CALL_DURATION_S[1], duration_s - 2 * EDGE_MARGIN_S)
    for _ in range(int(rng.integers(2, 6))):
        kind = CALL_TYPES[int(rng.integers(0, len(CALL_TYPES)))]
        call = CALL_SYNTHS[kind](rng, sample_rate, int(rng.uniform(CALL_DURATION_S[0], max_len) * sample_rate))
        start_s = rng.uniform(EDGE_MARGIN_S, duration_s - EDGE_MARGIN_S - call.wave.size / sample_rate)
        placed.append((int(round(start_s * sample_rate)), call))
    return placed


def _field_background(rng: np.random.Generator, n: int, sample_rate: int, hard: bool = False
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """White and/or pink noise, plus wind (p = 0.5; always when ``hard``), rain (only when ``hard``) and hum
    (p = 0.6), at random relative levels."""
    noise_kinds = [("white",), ("pink",), ("white", "pink")][int(rng.choice(3, p=[0.3, 0.4, 0.3]))]
    background = np.zeros(n)
    kinds: list[str] = []
    meta: dict[str, Any] = {}
    for kind in noise_kinds:
        gen = white_noise if kind == "white" else pink_noise
        background += gen(rng, n, sample_rate) * 10 ** (rng.uniform(-3.0, 3.0) / 20)
        kinds.append(kind)
    if hard or rng.random() < 0.5:
        background += wind(rng, n, sample_rate) * 10 ** (rng.uniform(-6.0, 6.0) / 20)
        kinds.append("wind")
    if hard:
        background += rain(rng, n, sample_rate) * 10 ** (rng.uniform(-6.0, 6.0) / 20)
        kinds.append("rain")
    if rng.random() < 0.6:
        wave, freqs = hum(rng, n, sample_rate)
        # A spectral line HUM_DB above the rest of the background around its fundamental, as mains hum or a
        # whine shows in a spectrogram (a level relative to the broadband total would drown it at low rates).
        power = np.abs(np.fft.rfft(background)) ** 2
        floor = band_power(power, np.fft.rfftfreq(n, 1.0 / sample_rate), n,
                           freqs[0] - SNR_MIN_BANDWIDTH_HZ / 2, freqs[0] + SNR_MIN_BANDWIDTH_HZ / 2)
        background += wave * math.sqrt(floor * 10 ** (rng.uniform(*HUM_DB) / 10))
        kinds.append("hum")
        meta["hum_hz"] = freqs
    meta["background"] = kinds
    return background, meta


def preset_classes(preset: str) -> list[str]:
    """The labels a preset's events can carry (the shard manifest's ``classes``)."""
    return list(CALL_TYPES) + (["fm_pulse_train"] if preset == "ultrasonic" else [])


def _ultrasonic_calls(rng: np.random.Generator, sample_rate: int, duration_s: float) -> list[tuple[int, Call]]:
    """2-5 calls at independent random times: each an FM pulse train (p = 0.6) or one of the field call types."""
    placed = []
    max_len = min(CALL_DURATION_S[1], duration_s - 2 * EDGE_MARGIN_S)
    for _ in range(int(rng.integers(2, 6))):
        n_call = int(rng.uniform(CALL_DURATION_S[0], max_len) * sample_rate)
        if rng.random() < 0.6:
            call = synth_fm_pulse_train(rng, sample_rate, max(n_call, int(0.2 * sample_rate)))
        else:
            call = CALL_SYNTHS[CALL_TYPES[int(rng.integers(0, len(CALL_TYPES)))]](rng, sample_rate, n_call)
        start_s = rng.uniform(EDGE_MARGIN_S, duration_s - EDGE_MARGIN_S - call.wave.size / sample_rate)
        placed.append((int(round(start_s * sample_rate)), call))
    return placed


HARD_CALL_TYPES = ("tone", "up_sweep", "down_sweep", "harmonic", "click_train", "noise_burst")


def _hard_calls(rng: np.random.Generator, sample_rate: int, duration_s: float) -> list[tuple[int, Call]]:
    """3-6 calls; the second starts inside the first (so at least two overlap in time); harmonics are stacks."""
    placed = []
    max_len = min(CALL_DURATION_S[1], duration_s - 2 * EDGE_MARGIN_S)
    for i in range(int(rng.integers(3, 7))):
        kind = HARD_CALL_TYPES[int(rng.integers(0, len(HARD_CALL_TYPES)))]
        synth = synth_harmonic_stack if kind == "harmonic" else CALL_SYNTHS[kind]
        call = synth(rng, sample_rate, int(rng.uniform(CALL_DURATION_S[0], max_len) * sample_rate))
        latest = duration_s - EDGE_MARGIN_S - call.wave.size / sample_rate
        if i == 1:
            first_start, first = placed[0]
            lo_s = first_start / sample_rate
            hi_s = min(lo_s + 0.9 * first.wave.size / sample_rate, latest)
            start_s = rng.uniform(lo_s, max(lo_s, hi_s)) if hi_s > EDGE_MARGIN_S else rng.uniform(EDGE_MARGIN_S, latest)
            start_s = min(max(start_s, EDGE_MARGIN_S), latest)
        else:
            start_s = rng.uniform(EDGE_MARGIN_S, latest)
        placed.append((int(round(start_s * sample_rate)), call))
    return placed


def make_clip(
    rng: np.random.Generator, preset: str, sample_rate: int, duration_s: float = 3.0
) -> tuple[np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """One synthetic clip; everything random comes from ``rng``, so the same generator state gives the same clip.

    Args:
        rng: numpy Generator.
        preset: ``"basic"``, ``"field"``, ``"field_hard"`` or ``"ultrasonic"`` (field backgrounds, bat-like FM
            pulse trains beside the field call types; meant for 192-500 kHz, valid at every rate).
        sample_rate: Hz, >= MIN_SAMPLE_RATE.
        duration_s: clip length in seconds (>= MIN_DURATION_S); the clip has round(duration_s * sample_rate) samples.
    Returns:
        ``(audio, events, meta)``: audio float32 (T,) peak-normalised to 0.9; events sorted by onset, each
        ``{onset_s, offset_s, low_hz, high_hz, label}`` (seconds, Hz; high_hz <= 0.9 * sample_rate / 2);
        meta ``{preset, background: [kinds], hum_hz?: [Hz], snr_db?: [per event, field], noise_db?: basic}``.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    _check_rate_and_duration(sample_rate, duration_s)
    sample_rate = int(sample_rate)
    n = int(round(duration_s * sample_rate))
    if preset == "basic":
        placed = _basic_calls(rng, sample_rate, duration_s)
        gains = 10 ** (rng.uniform(-12.0, 0.0, len(placed)) / 20)  # calls have unit RMS, so gain = RMS
        noise_rms = math.sqrt(float(np.mean(gains**2))) * 10 ** (BASIC_NOISE_DB / 20)
        audio = white_noise(rng, n, sample_rate) * noise_rms
        meta: dict[str, Any] = {"preset": preset, "background": ["white"], "noise_db": BASIC_NOISE_DB}
        snrs = None
    elif preset == "field_hard":
        audio, meta = _field_background(rng, n, sample_rate, hard=True)
        meta = {"preset": preset, **meta}
        placed = _hard_calls(rng, sample_rate, duration_s)
        background_rms = math.sqrt(float(np.mean(audio * audio)))
        below = rng.uniform(*HARD_BELOW_BACKGROUND_DB, len(placed))
        gains = [background_rms * 10 ** (-db / 20) for db in below]
        power = np.abs(np.fft.rfft(audio)) ** 2
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        snrs = []  # each call's level over the background in its own band (what a spectrogram shows), in dB
        for (_, call), gain in zip(placed, gains):
            centre, half = (call.low_hz + call.high_hz) / 2, max(call.high_hz - call.low_hz, SNR_MIN_BANDWIDTH_HZ) / 2
            floor = band_power(power, freqs, n, centre - half, centre + half)
            snrs.append(10 * math.log10(gain**2 / max(floor, 1e-30)))
        snrs = np.asarray(snrs)
    else:  # field, ultrasonic: each call 0-20 dB above the background in its own band
        audio, meta = _field_background(rng, n, sample_rate)
        meta = {"preset": preset, **meta}
        placed = (_ultrasonic_calls if preset == "ultrasonic" else _field_calls)(rng, sample_rate, duration_s)
        power = np.abs(np.fft.rfft(audio)) ** 2
        freqs = np.fft.rfftfreq(n, 1.0 / sample_rate)
        snrs = rng.uniform(*FIELD_SNR_DB, len(placed))
        gains = []
        for (_, call), snr in zip(placed, snrs):
            centre, half = (call.low_hz + call.high_hz) / 2, max(call.high_hz - call.low_hz, SNR_MIN_BANDWIDTH_HZ) / 2
            gains.append(math.sqrt(band_power(power, freqs, n, centre - half, centre + half) * 10 ** (snr / 10)))
    lo, hi = call_band_limits(sample_rate)
    rows = []  # (event, snr_db or None), sorted together so meta["snr_db"] stays aligned with events
    for i, ((start, call), gain) in enumerate(zip(placed, gains)):
        audio[start : start + call.wave.size] += gain * call.wave
        event = {
            "onset_s": start / sample_rate,
            "offset_s": (start + call.wave.size) / sample_rate,
            # the calls are built inside [lo, hi]; the clamp only removes float rounding at the limits
            "low_hz": max(call.low_hz, lo),
            "high_hz": min(call.high_hz, hi),
            "label": call.label,
        }
        rows.append((event, None if snrs is None else float(snrs[i])))
    rows.sort(key=lambda row: (row[0]["onset_s"], row[0]["label"]))
    events = [event for event, _ in rows]
    if snrs is not None:
        meta["snr_db"] = [snr for _, snr in rows]
    _check_events_fit(events, sample_rate, n / sample_rate)
    audio = audio * (PEAK / np.max(np.abs(audio)))
    return audio.astype(np.float32), events, meta


def _check_events_fit(events: list[dict[str, Any]], sample_rate: int, duration_s: float) -> None:
    """Internal invariant: every event lies in the clip and in [150 Hz, 0.9 * Nyquist]."""
    lo, hi = call_band_limits(sample_rate)
    for e in events:
        ok = 0.0 <= e["onset_s"] < e["offset_s"] <= duration_s and lo <= e["low_hz"] < e["high_hz"] <= hi
        if not ok:
            raise RuntimeError(f"synthesised event {e} does not fit a {duration_s} s clip at {sample_rate} Hz")


# ---------------------------------------------------------------------------------------------------------------------
# Shards.


def parse_sample_rates(text: str) -> list[int]:
    """``"8000,16000"`` -> [8000, 16000]; raises ValueError naming the bad entry."""
    rates = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"sample rate {part!r} is not a positive integer (Hz)")
        rates.append(int(part))
    return rates


def synth_clip(preset: str, seed: int, index: int, sample_rates: Sequence[int], duration_s: float
               ) -> tuple[int, np.ndarray, list[dict[str, Any]], dict[str, Any]]:
    """Clip ``index`` of a synthetic data set: ``np.random.default_rng([seed, index])`` draws its sample rate from
    ``sample_rates``, then :func:`make_clip` runs. Returns (sample_rate, audio, events, meta)."""
    rng = np.random.default_rng([seed, index])
    sample_rate = int(sample_rates[int(rng.integers(0, len(sample_rates)))])
    return (sample_rate, *make_clip(rng, preset, sample_rate, duration_s))


def _synth_job(job: tuple[str, int, int, Sequence[int], float]):
    return synth_clip(*job)


def _synth_clips(preset: str, seed: int, n_clips: int, sample_rates: Sequence[int], duration_s: float,
                 workers: int) -> Iterator[tuple[int, np.ndarray, list[dict[str, Any]], dict[str, Any]]]:
    """Clips 0..n_clips-1 in order. Worker processes get blocks of indices, so at most one block of clips waits in
    memory however long the run (each clip depends only on its index, so the output does not depend on workers)."""
    jobs = [(preset, seed, i, tuple(sample_rates), duration_s) for i in range(n_clips)]
    if workers <= 1:
        yield from map(_synth_job, jobs)
        return
    block = 32 * workers
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for start in range(0, n_clips, block):
            yield from pool.map(_synth_job, jobs[start : start + block], chunksize=4)


def write_synth_shards(
    out_dir: str | os.PathLike,
    preset: str,
    n_clips: int,
    sample_rates: Sequence[int] = DEFAULT_SAMPLE_RATES,
    duration_s: float = 3.0,
    seed: int = 0,
    split: str = "train",
    *,
    name: str | None = None,
    target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
    subtype: str = "PCM_16",
    overwrite: bool = False,
    workers: int = 1,
    progress: bool | None = None,
    command: str | None = None,
) -> Path:
    """Synthesise ``n_clips`` clips into a shard folder; returns the path of its ``manifest.json``.

    Clip i is :func:`synth_clip` ``(preset, seed, i, sample_rates, duration_s)``, so the same arguments give
    byte-identical shards, whatever ``workers``. Keys are ``synth-{preset}-{i:06d}_c0_000000000``; every sample is
    ``labelled``, ``group`` = recording id; the classes are :data:`CALL_TYPES` (plus ``fm_pulse_train`` for
    ``ultrasonic``), whatever the preset, so the field presets' class lists stay comparable.

    Args:
        out_dir: shard folder (see :class:`ShardWriter` for ``overwrite``).
        preset: ``"basic"`` or ``"field"``.
        n_clips: number of clips (>= 1).
        sample_rates: rates in Hz (each >= MIN_SAMPLE_RATE), one drawn uniformly per clip.
        duration_s: seconds per clip (>= MIN_DURATION_S).
        seed: base seed.
        split: ``train``, ``val``, ``test`` or ``all``.
        name: shard name prefix, default ``synth-{preset}``.
        target_shard_bytes, subtype, command: passed to :class:`ShardWriter`.
        workers: processes synthesising clips (1 = in this process).
        progress: tqdm bar; None shows it only on a terminal.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if n_clips < 1:
        raise ValueError(f"n_clips must be >= 1, got {n_clips}")
    rates = [int(r) for r in sample_rates]
    if not rates:
        raise ValueError("sample_rates is empty")
    for rate in rates:
        _check_rate_and_duration(rate, duration_s)
    clips = _synth_clips(preset, seed, n_clips, rates, duration_s, workers)
    with ShardWriter(out_dir, name or f"synth-{preset}", target_shard_bytes=target_shard_bytes,
                     classes=preset_classes(preset), command=command, subtype=subtype, overwrite=overwrite) as writer:
        bar = tqdm(clips, total=n_clips, desc=f"synth {preset}", unit="clip",
                   disable=None if progress is None else not progress)
        for i, (sample_rate, audio, events, meta) in enumerate(bar):
            fields = {"recording_id": f"synth-{preset}-{i:06d}", "labelled": True, "events": events, "meta": meta}
            writer.write(audio, sample_rate, fields, split)
    return Path(out_dir) / "manifest.json"


def ensure_synth_shards(
    train_dir: str | os.PathLike,
    eval_dir: str | os.PathLike,
    preset: str,
    n_clips: int,
    n_eval_clips: int,
    sample_rates: Sequence[int],
    eval_sample_rates: Sequence[int],
    duration_s: float,
    seed: int = 0,
    train_split: str = "train",
    eval_split: str = "val",
    *,
    is_main: bool = True,
    wait_s: float = 3600.0,
    poll_s: float = 2.0,
) -> None:
    """The data step of a recipe with ``data.synthesize_if_missing``: write the synthetic training shards
    (``n_clips`` at ``sample_rates``, ``seed``) into ``train_dir`` and the eval shards (``n_eval_clips`` at the
    unseen ``eval_sample_rates``, ``seed + 1``) into ``eval_dir``, each only where its ``manifest.json`` is missing
    (a folder that has one is left as it is). ``a2v-het pretrain | finetune | launch`` run it before training starts.

    Several processes of one job may call it (srun tasks, torchrun ranks, all on a shared file system): the one
    with ``is_main`` writes, the others wait (up to ``wait_s``) until both manifests exist. The writer puts the
    manifest last, so a folder with one is complete."""
    train_dir, eval_dir = Path(train_dir), Path(eval_dir)
    manifests = (train_dir / MANIFEST_NAME, eval_dir / MANIFEST_NAME)
    if not is_main:
        t0 = time.time()
        while not all(m.is_file() for m in manifests):
            if time.time() - t0 > wait_s:
                missing = [str(m) for m in manifests if not m.is_file()]
                raise FileNotFoundError(f"{', '.join(missing)} did not appear within {wait_s:.0f} s (rank 0 writes "
                                        "the synthetic shards; see its log)")
            time.sleep(poll_s)
        return
    if not manifests[0].is_file():
        print(f"[a2v-het] writing synthetic '{preset}' training shards to {train_dir}", flush=True)
        write_synth_shards(train_dir, preset, n_clips, list(sample_rates), duration_s, seed=seed, split=train_split)
    if not manifests[1].is_file():
        print(f"[a2v-het] writing synthetic '{preset}' eval shards (unseen rates) to {eval_dir}", flush=True)
        write_synth_shards(eval_dir, preset, n_eval_clips, list(eval_sample_rates), duration_s, seed=seed + 1,
                           split=eval_split)


def write_synthetic_calls(out: str | os.PathLike, n_recordings: int = 100, seed: int = 0,
                          sample_rates: Sequence[int] = DEFAULT_SAMPLE_RATES, duration_s: float = 3.0,
                          context_s: float = 0.05) -> Path:
    """A call-type classification set from the synthetic field recordings (preset ``field``: 2-5 calls of the 6
    types per recording at 0-20 dB SNR, overlaps allowed): every call of ``n_recordings`` recordings
    (:func:`synth_clip` ``("field", seed, i, sample_rates, duration_s)``) becomes a clip from its onset -
    ``context_s`` to its offset + ``context_s`` (seconds, inside the recording), written as FLAC at the recording's
    rate and labelled with its call type; group = the recording. Writes OUT/audio/rec<i>_<k>.flac and
    OUT/labels.csv (file, label, group), the labels table ``a2v-het probe --labels`` reads; returns OUT/labels.csv."""
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    table = csv.writer(buf, lineterminator="\n")
    table.writerow(("file", "label", "group"))
    for i in range(n_recordings):
        sr, audio, events, _ = synth_clip("field", seed, i, list(sample_rates), duration_s)
        for k, e in enumerate(events):
            a = max(0, int(round((e["onset_s"] - context_s) * sr)))
            b = min(audio.size, int(round((e["offset_s"] + context_s) * sr)))
            path = out / "audio" / f"rec{i:04d}_{k}.flac"
            with atomic_open(path, "wb") as fh:
                sf.write(fh, audio[a:b], sr, format="FLAC", subtype="PCM_24")
            table.writerow((str(path), e["label"], f"rec{i:04d}"))
    atomic_write_text(out / "labels.csv", buf.getvalue())
    return out / "labels.csv"
