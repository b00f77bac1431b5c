"""Evaluation figures: picked bands over spectrograms, coverage by input rate, loss curves.

Figures are built on matplotlib's object API with the Agg canvas (``Figure`` + ``FigureCanvasAgg``): no pyplot
global state, no GUI backend, nothing to ``show``, safe in worker processes and on headless nodes. Every PNG is
written to a temporary file in the destination folder and then ``os.replace``-d into place, so a reader (a
dashboard, a sync job) never sees a half-written image. Sizes are fixed (no ``bbox_inches="tight"``), so a figure's
pixel size is ``figsize * dpi`` as documented per function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from scipy import signal

from a2v_het.atomic import atomic_open

PANEL_W_IN = 5.0
"""Width of one spectrogram panel in inches."""
PANEL_H_IN = 3.0
"""Height of one spectrogram panel in inches."""
MAX_COLS = 3
"""Spectrogram panels per row."""
CHART_SIZE_IN = (8.0, 4.5)
"""Size of the coverage and loss-curve charts in inches."""
SPEC_WINDOW_S = 0.02
"""Spectrogram window for display (50 Hz resolution); 75 % overlap."""
DYNAMIC_RANGE_DB = 80.0
"""Colour scale spans [max - 80 dB, max] per panel, so quiet clips still show structure and silence gives no NaN."""


def _to_numpy(x: Any) -> np.ndarray:
    """Tensors (any device, with grad) and array-likes -> float64 numpy."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _save_png(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    """Render ``fig`` with Agg and atomically replace ``path`` with the PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attach an Agg canvas: no dependence on the process-wide backend
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi)
    return path


def spectrogram_db(wave: np.ndarray, sample_rate: float, window_s: float = SPEC_WINDOW_S
                   ) -> tuple[np.ndarray, float]:
    """Display spectrogram of one clip.

    Args: wave (T,) samples; sample_rate Hz; window_s Hann window in seconds.
    Returns: (S_db (F, N) power in dB, clipped to ``DYNAMIC_RANGE_DB`` below its max; frequency rows run from 0 to
    the Nyquist), and the duration in seconds. Clips shorter than 2 samples give a (1, 1) array of -inf-free zeros.
    """
    x = np.nan_to_num(_to_numpy(wave).reshape(-1))
    duration = len(x) / float(sample_rate)
    if len(x) < 2:
        return np.zeros((1, 1)), duration
    nperseg = int(min(len(x), max(16, round(window_s * sample_rate))))
    _, _, s = signal.spectrogram(x, fs=sample_rate, window="hann", nperseg=nperseg, noverlap=(3 * nperseg) // 4,
                                 scaling="spectrum", mode="psd")
    s_db = 10.0 * np.log10(s + 1e-20)  # the floor keeps silence finite
    top = float(s_db.max())
    return np.clip(s_db, top - DYNAMIC_RANGE_DB, top), duration


def plot_bands_over_spectrograms(
    path: str | os.PathLike,
    waves: Sequence[np.ndarray],
    sample_rates: Sequence[float],
    band_start_hz: Sequence[np.ndarray],
    band_width_hz: float | Sequence[float],
    events: Sequence[Sequence[Mapping[str, Any]]] | None = None,
    titles: Sequence[str] | None = None,
    *,
    detail_bands: int | Sequence[int] | None = None,
    dpi: int = 100,
) -> Path:
    """Grid of spectrograms with each clip's picked bands and ground-truth events drawn on top; writes a PNG.

    Args:
        path: destination PNG (written atomically).
        waves: C clips, each (T_c,) samples (numpy or torch).
        sample_rates: C rates in Hz; each panel's y axis runs from 0 to that clip's Nyquist, in kHz.
        band_start_hz: C arrays (K,) of band starts f_k in Hz; band k is drawn as a translucent horizontal span over
            [f_k, f_k + W] (the part above the Nyquist falls outside the axis).
        band_width_hz: W in Hz: one for all clips, or per clip one W or (K,) widths.
        detail_bands: per clip (or for all) how many of the first bands are detail bands, drawn filled; the rest
            (context bands) are drawn as dashed edges. Default: every band is a detail band.
        events: optional C lists of dicts with ``onset_s``, ``offset_s``, ``low_hz``, ``high_hz`` and optional
            ``label``, drawn as outlined rectangles (time x frequency).
        titles: optional C panel titles (default: "clip c, <rate> kHz").
        dpi: pixels per inch.
    Returns: the path. Pixel size: (min(C, MAX_COLS) * PANEL_W_IN * dpi) x (ceil(C / MAX_COLS) * PANEL_H_IN * dpi).
    """
    n = len(waves)
    if n == 0:
        raise ValueError("plot_bands_over_spectrograms needs at least one clip")
    if len(sample_rates) != n or len(band_start_hz) != n:
        raise ValueError(f"waves, sample_rates and band_start_hz must have the same length, got "
                         f"{n}, {len(sample_rates)}, {len(band_start_hz)}")
    if events is not None and len(events) != n:
        raise ValueError(f"events must have one list per clip ({n}), got {len(events)}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles must have one entry per clip ({n}), got {len(titles)}")
    if np.isscalar(band_width_hz) or getattr(band_width_hz, "ndim", None) == 0:
        widths = [float(band_width_hz)] * n
    else:
        widths = list(band_width_hz)
        if len(widths) != n:
            raise ValueError(f"band_width_hz must be a scalar or have {n} entries, got {len(widths)}")
    widths = [np.broadcast_to(_to_numpy(w).astype(float).reshape(-1), _to_numpy(f).reshape(-1).shape)
              for w, f in zip(widths, band_start_hz)]  # per clip: one width per band
    if detail_bands is None:
        detail_bands = [len(w) for w in widths]
    elif np.ndim(detail_bands) == 0:
        detail_bands = [int(detail_bands)] * n

    ncols = min(n, MAX_COLS)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(ncols * PANEL_W_IN, nrows * PANEL_H_IN), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    band_colors = [f"C{i}" for i in range(10)]
    for c in range(nrows * ncols):
        ax = axes[c // ncols][c % ncols]
        if c >= n:
            ax.set_axis_off()
            continue
        sr = float(sample_rates[c])
        nyq_khz = sr / 2000.0
        s_db, duration = spectrogram_db(waves[c], sr)
        im = ax.imshow(s_db, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                       extent=(0.0, max(duration, 1e-9), 0.0, nyq_khz))
        for k, f in enumerate(_to_numpy(band_start_hz[c]).reshape(-1)):
            lo_khz, hi_khz = f / 1000.0, (f + widths[c][k]) / 1000.0
            if k < detail_bands[c]:  # detail bands: filled spans
                ax.axhspan(lo_khz, hi_khz, color=band_colors[k % len(band_colors)], alpha=0.25, linewidth=0)
                ax.axhline(lo_khz, color=band_colors[k % len(band_colors)], linewidth=0.6, alpha=0.8)
            else:  # context bands: their edges only, dashed
                for edge in (lo_khz, hi_khz):
                    ax.axhline(edge, color="white", linewidth=0.6, alpha=0.6, linestyle="--")
        for ev in (events[c] if events is not None else ()):
            on, off = float(ev["onset_s"]), float(ev["offset_s"])
            lo, hi = float(ev["low_hz"]) / 1000.0, float(ev["high_hz"]) / 1000.0
            ax.add_patch(Rectangle((on, lo), off - on, hi - lo, fill=False, edgecolor="cyan", linewidth=1.2))
            if ev.get("label"):
                ax.text(on, min(hi, nyq_khz), str(ev["label"]), color="cyan", fontsize=7, va="bottom", ha="left",
                        clip_on=True)
        ax.set_xlim(0.0, max(duration, 1e-9))
        ax.set_ylim(0.0, nyq_khz)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
        ax.set_title(titles[c] if titles is not None else f"clip {c}, {sr / 1000:g} kHz", fontsize=9)
        fig.colorbar(im, ax=ax, label="dB", fraction=0.05, pad=0.01)
    return _save_png(fig, path, dpi)


COVERAGE_KEYS = ("all_cov", "any_cov", "energy_overlap", "surprise_overlap")


def plot_coverage_by_rate(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], *, dpi: int = 100) -> Path:
    """Grouped bar chart of coverage metrics per input sample rate; writes a PNG.

    Args:
        path: destination PNG.
        rows: dicts with ``sample_rate`` (Hz) and the fractions in [0, 1] ``all_cov``, ``any_cov``,
            ``energy_overlap``, ``surprise_overlap`` (missing or None values are left out of the group).
        dpi: pixels per inch.
    Returns: the path. Pixel size: CHART_SIZE_IN * dpi.
    """
    rows = sorted(rows, key=lambda r: float(r["sample_rate"]))
    fig = Figure(figsize=CHART_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(rows))
    width = 0.8 / len(COVERAGE_KEYS)
    for j, key in enumerate(COVERAGE_KEYS):
        vals = np.array([np.nan if r.get(key) is None else float(r[key]) for r in rows])
        ax.bar(x + (j - (len(COVERAGE_KEYS) - 1) / 2) * width, np.nan_to_num(vals), width, label=key,
               color=f"C{j}")
    ax.set_xticks(x, [f"{float(r['sample_rate']) / 1000:g} kHz" for r in rows])
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_xlabel("input sample rate")
    ax.set_title("event coverage by input sample rate")
    ax.grid(axis="y", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _save_png(fig, path, dpi)


def plot_loss_curves(path: str | os.PathLike, curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], *,
                     dpi: int = 100) -> Path:
    """One line per named curve against the training step; writes a PNG.

    Args:
        path: destination PNG.
        curves: name -> (steps (S,), values (S,)). Non-finite values are not drawn (gaps). The y axis is
            logarithmic when every finite value is positive and they span more than two decades.
        dpi: pixels per inch.
    Returns: the path. Pixel size: CHART_SIZE_IN * dpi.
    """
    fig = Figure(figsize=CHART_SIZE_IN, layout="constrained")
    ax = fig.subplots()
    finite_all = []
    for i, (name, (steps, values)) in enumerate(curves.items()):
        s, v = _to_numpy(steps).reshape(-1), _to_numpy(values).reshape(-1)
        if len(s) != len(v):
            raise ValueError(f"curve {name!r}: {len(s)} steps but {len(v)} values")
        v = np.where(np.isfinite(v), v, np.nan)
        ax.plot(s, v, label=str(name), color=f"C{i % 10}", linewidth=1.2)
        finite_all.append(v[np.isfinite(v)])
    finite = np.concatenate(finite_all) if finite_all else np.zeros(0)
    if finite.size and finite.min() > 0 and finite.max() / finite.min() > 100:
        ax.set_yscale("log")
    if curves:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    return _save_png(fig, path, dpi)


__all__ = [
    "plot_bands_over_spectrograms",
    "plot_coverage_by_rate",
    "plot_loss_curves",
    "spectrogram_db",
]
