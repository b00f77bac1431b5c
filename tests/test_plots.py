"""Evaluation plots: valid PNGs of the documented pixel size, written atomically."""

from __future__ import annotations

import struct
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from a2v_het.eval import plots
from a2v_het.eval.plots import (
    plot_bands_over_spectrograms,
    plot_coverage_by_rate,
    plot_loss_curves,
    spectrogram_db,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def only_file(folder: Path, name: str) -> None:
    """The PNG is there and nothing else (no leftover temp file)."""
    assert sorted(p.name for p in folder.iterdir()) == [name]


def _tone(sr: int, f: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return 0.5 * np.sin(2 * np.pi * f * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))


def _bands_args(n: int):
    rates = [8000, 16000, 48000, 96000, 22050][:n]
    waves = [_tone(sr, 1000.0 + 500 * i) for i, sr in enumerate(rates)]
    bands = [np.array([100.0, 1500.0, 3000.0]) for _ in rates]
    events = [[{"onset_s": 0.1, "offset_s": 0.3, "low_hz": 800.0, "high_hz": 1200.0, "label": "call"}]
              for _ in rates]
    return waves, rates, bands, events


@pytest.mark.parametrize("n,cols,rows", [(1, 1, 1), (3, 3, 1), (5, 3, 2)])
def test_bands_over_spectrograms_png(tmp_path, n, cols, rows):
    waves, rates, bands, events = _bands_args(n)
    out = tmp_path / "bands.png"
    ret = plot_bands_over_spectrograms(out, waves, rates, bands, 2000.0, events=events,
                                       titles=[f"t{i}" for i in range(n)])
    assert Path(ret) == out
    assert png_size(out) == (int(cols * plots.PANEL_W_IN * 100), int(rows * plots.PANEL_H_IN * 100))
    only_file(tmp_path, "bands.png")


def test_bands_and_events_are_drawn(tmp_path):
    waves, rates, bands, events = _bands_args(2)
    plain = tmp_path / "plain.png"
    with_bands = tmp_path / "bands.png"
    with_events = tmp_path / "events.png"
    plot_bands_over_spectrograms(plain, waves, rates, [np.zeros(0), np.zeros(0)], 2000.0)
    plot_bands_over_spectrograms(with_bands, waves, rates, bands, 2000.0)
    plot_bands_over_spectrograms(with_events, waves, rates, [np.zeros(0), np.zeros(0)], 2000.0, events=events)
    a, b, c = (mpimg.imread(p) for p in (plain, with_bands, with_events))
    assert a.shape == b.shape == c.shape
    assert np.abs(a - b).max() > 0.1 and np.abs(a - c).max() > 0.1


def test_bands_overwrite_and_odd_inputs(tmp_path):
    import torch

    out = tmp_path / "sub" / "x.png"  # missing folder is created
    # silence, a 1-sample clip, torch inputs with grad, per-clip widths, a band above the Nyquist
    waves = [np.zeros(4000), np.zeros(1), torch.randn(8000, requires_grad=True)]
    bands = [np.array([100.0]), np.array([50.0]), torch.tensor([6000.0], requires_grad=True)]
    plot_bands_over_spectrograms(out, waves, [8000, 8000, 16000], bands, [1000.0, 500.0, 4000.0])
    first = out.read_bytes()
    plot_bands_over_spectrograms(out, waves[:1], [8000], bands[:1], 1000.0)  # replaces, not appends
    assert out.read_bytes() != first
    assert png_size(out) == (int(plots.PANEL_W_IN * 100), int(plots.PANEL_H_IN * 100))
    only_file(out.parent, "x.png")


def test_bands_input_validation(tmp_path):
    with pytest.raises(ValueError):
        plot_bands_over_spectrograms(tmp_path / "a.png", [np.zeros(10)], [8000, 16000], [np.zeros(1)], 100.0)
    with pytest.raises(ValueError):
        plot_bands_over_spectrograms(tmp_path / "a.png", [], [], [], 100.0)
    assert list(tmp_path.iterdir()) == []


def test_spectrogram_db_tone_and_silence():
    sr = 16000
    s_db, dur = spectrogram_db(_tone(sr, 3000.0, 1.0), sr)
    assert dur == pytest.approx(1.0)
    # rows run 0..Nyquist evenly: the peak row sits at 3 kHz
    peak_hz = np.argmax(s_db.mean(1)) * (sr / 2) / (s_db.shape[0] - 1)
    assert abs(peak_hz - 3000.0) <= 50.0
    assert s_db.max() - s_db.min() <= plots.DYNAMIC_RANGE_DB + 1e-9
    silent, _ = spectrogram_db(np.zeros(sr), sr)
    assert np.isfinite(silent).all()


def test_coverage_by_rate_png(tmp_path):
    rows = [
        {"sample_rate": 96000, "all_cov": 0.5, "any_cov": 0.9, "energy_overlap": 0.7, "surprise_overlap": 0.4},
        {"sample_rate": 8000, "all_cov": 0.8, "any_cov": 1.0, "energy_overlap": 0.95, "surprise_overlap": None},
    ]
    out = tmp_path / "cov.png"
    plot_coverage_by_rate(out, rows, dpi=80)
    assert png_size(out) == (int(plots.CHART_SIZE_IN[0] * 80), int(plots.CHART_SIZE_IN[1] * 80))
    only_file(tmp_path, "cov.png")
    # Different values draw different bars.
    out2 = tmp_path / "cov2.png"
    plot_coverage_by_rate(out2, [dict(r, all_cov=0.0) for r in rows], dpi=80)
    assert np.abs(mpimg.imread(out) - mpimg.imread(out2)).max() > 0.1


def test_loss_curves_png(tmp_path):
    steps = np.arange(100)
    curves = {"ssl": (steps, np.exp(-steps / 20.0) * 10), "energy": (steps, np.full(100, np.nan)),
              "surprise": (list(range(0, 100, 10)), [1.0, 0.8, float("inf")] + [0.5] * 7)}
    out = tmp_path / "loss.png"
    plot_loss_curves(out, curves)
    assert png_size(out) == (int(plots.CHART_SIZE_IN[0] * 100), int(plots.CHART_SIZE_IN[1] * 100))
    plot_loss_curves(tmp_path / "empty.png", {})
    assert png_size(tmp_path / "empty.png")[0] == int(plots.CHART_SIZE_IN[0] * 100)
    with pytest.raises(ValueError):
        plot_loss_curves(tmp_path / "bad.png", {"x": ([1, 2, 3], [1.0])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "loss.png"]
