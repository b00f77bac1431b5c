"""Coverage of the heterodyne frontend: does it look where the calls are, at every sample rate?

Metrics (per clip, then averaged per sample rate; the seed's table plus two fractions):

- a call is **covered** when at least 50 % of its frequency extent [low_hz, high_hz] lies where the soft band mask
  M(f) >= 0.5 (M evaluated at 65 evenly spaced points of the extent; a zero-width call is one point). With Cauchy
  tails M >= 0.5 reaches ``cauchy_width_hz`` beyond each passband edge, so the stricter **pass** variant counts
  only the hard passbands [f_k, f_k + W], i.e. what the heterodyne actually hands to the encoder;
- **All Cov**: every call of the clip is covered (the seed's "Both Cov"); **Any Cov**: at least one is;
  clips without calls do not enter these two;
- **Energy Overlap**: the bin of maximum temporal variance sigma^2(f) lies where M >= 0.5;
- **Surprise Overlap**: the same for the bin of maximum surprise S(f) = -p(f) log p(f);
- **captured variance / captured surprise**: sum_f M sigma^2 / sum_f sigma^2 and sum_f M S / sum_f S.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from a2v_het.config import config_from_dict
from a2v_het.data.stream import make_eval_loader
from a2v_het.frontend import build_frontend
from a2v_het.frontend.band_masks import cauchy_band_masks, soft_or
from a2v_het.frontend.coverage_losses import EPS, captured_fractions, surprise, variance_distribution
from a2v_het.eval.transients import transient_capture, transient_energy
from a2v_het.frontend.spectrum import grid_power_spectrogram, grid_power_statistics
from a2v_het.recipe import PretrainConfig
from a2v_het.runs import load_weights, resolve_weights

COVERED_FRACTION = 0.5
MASK_THRESHOLD = 0.5
POINTS_PER_CALL = 65


def call_coverage(band_start_hz: torch.Tensor, band_width_hz: float | torch.Tensor, gamma_hz: float, low_hz: float,
                  high_hz: float) -> tuple[float, float]:
    """Fractions of [low_hz, high_hz] under M >= 0.5 and inside the passbands. band_start_hz: (K,) Hz;
    band_width_hz: W or (K,) widths W_k, Hz."""
    lo, hi = min(low_hz, high_hz), max(low_hz, high_hz)
    pts = torch.linspace(lo, hi, POINTS_PER_CALL if hi > lo else 1, dtype=torch.float64)
    starts = band_start_hz.detach().double().cpu()[None]
    widths = torch.as_tensor(band_width_hz, dtype=torch.float64).detach().cpu().expand(starts.shape[1])[None]
    m = soft_or(cauchy_band_masks(pts, starts, widths, gamma_hz))[0]
    inside = ((pts[None, :] >= starts[0, :, None]) & (pts[None, :] <= (starts + widths)[0, :, None])).any(0)
    return float((m >= MASK_THRESHOLD).double().mean()), float(inside.double().mean())


def clip_metrics(band_start_hz: torch.Tensor, variance: torch.Tensor, mask: torch.Tensor, freq_valid: torch.Tensor,
                 events: list[dict], band_width_hz: float | torch.Tensor, gamma_hz: float,
                 num_detail: int | None = None) -> dict[str, Any]:
    """Metrics of one clip. band_start_hz (K + J,) and band_width_hz (W or (K + J,)) in Hz, variance/mask/freq_valid
    (G,) on the analysis grid; the first ``num_detail`` bands are the picked detail bands (default: all), whose own
    coverage is ``all_cov_detail``."""
    calls = [e for e in events if e.get("low_hz") is not None and e.get("high_hz") is not None]
    k = band_start_hz.shape[0] if num_detail is None else num_detail
    widths = torch.as_tensor(band_width_hz, dtype=torch.float64).expand(band_start_hz.shape[0])
    soft, hard, detail = [], [], []
    for e in calls:
        lo, hi = float(e["low_hz"]), float(e["high_hz"])
        s, p = call_coverage(band_start_hz, widths, gamma_hz, lo, hi)
        soft.append(s >= COVERED_FRACTION)
        hard.append(p >= COVERED_FRACTION)
        detail.append(call_coverage(band_start_hz[:k], widths[:k], gamma_hz, lo, hi)[0] >= COVERED_FRACTION)
    v, m, fv = variance[None], mask[None], freq_valid[None]
    p = variance_distribution(v, fv)[0]
    s_f = surprise(p[None], EPS)[0] * fv[0]
    var_frac, s_frac = captured_fractions(v, m, fv)
    has_signal = bool(p.sum() > 0)
    covered_at = lambda x: bool(mask[int(torch.argmax(x))] >= MASK_THRESHOLD)  # noqa: E731
    return {
        "n_calls": len(calls),
        "calls": [(str(e.get("label", "")), c) for e, c in zip(calls, soft)],
        "all_cov": all(soft) if calls else None,
        "any_cov": any(soft) if calls else None,
        "all_cov_pass": all(hard) if calls else None,
        "all_cov_detail": all(detail) if calls else None,
        "energy_overlap": covered_at(p) if has_signal else None,
        "surprise_overlap": covered_at(s_f) if has_signal else None,
        "captured_variance": float(var_frac[0]),
        "captured_surprise": float(s_frac[0]),
    }


def aggregate(per_clip: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
    """Rows per sample rate and overall: fractions of clips (None entries skipped), means of the fractions."""
    keys = ["all_cov", "any_cov", "all_cov_pass", "all_cov_detail", "energy_overlap", "surprise_overlap", "captured_variance",
            "captured_surprise", "transient_capture"]
    groups: dict[int, list[dict]] = defaultdict(list)
    for sr, m in per_clip:
        groups[sr].append(m)

    def row(ms: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"samples": len(ms), "calls": sum(m["n_calls"] for m in ms)}
        for k in keys:
            vals = [float(m[k]) for m in ms if m.get(k) is not None]
            out[k] = float(np.mean(vals)) if vals else math.nan
        return out

    rows = [{"sample_rate": sr, **row(ms)} for sr, ms in sorted(groups.items())]
    by_label: dict[str, list[bool]] = defaultdict(list)
    for _, m in per_clip:
        for label, covered in m.get("calls", []):
            by_label[label].append(covered)
    labels = [{"label": k, "calls": len(v), "covered": float(np.mean(v))} for k, v in sorted(by_label.items())]
    return {"by_sample_rate": rows, "overall": row([m for _, m in per_clip]), "by_label": labels}


@torch.no_grad()
def coverage_report(frontend, shard_dir: str, split: str, batch_size: int = 16, max_batches: int | None = None,
                    device: torch.device | str = "cpu", plot_dir: Path | None = None, plot_tag: str = "final",
                    num_workers: int = 0, n_plot: int = 8, progress: bool = False,
                    transient_hz: tuple[float, float] | None = None) -> dict[str, Any]:
    """Run the frontend's band picker over an eval split; returns the table (and writes PNGs to ``plot_dir``).

    ``transient_hz = (low, high)``: also the share of each clip's transient energy in [low, high] Hz that the hard
    passbands hold (:mod:`a2v_het.eval.transients`), the measure for recordings nobody annotated (bat detectors:
    15-120 kHz)."""
    h = frontend.h
    loader = make_eval_loader(shard_dir, batch_size, num_workers, split=split, rank=0, world_size=1)
    per_clip: list[tuple[int, dict]] = []
    examples: dict[int, tuple] = {}
    it = loader
    if progress:
        it = tqdm(loader, total=None if loader.num_samples is None else math.ceil(loader.num_samples / batch_size),
                  desc="coverage", unit="batch")
    for i, batch in enumerate(it):
        if max_batches is not None and i >= max_batches:
            break
        wave = batch["wave"].to(device)
        rates = batch["sample_rate"].to(device)
        lengths = batch["lengths"].to(device)
        a = frontend.analyze(wave, rates, lengths)
        variance = a.variance
        if h.power_exponent != 1.0:
            # The metrics are defined on the seed's statistic, Var_t of the power, whatever the frontend trains on.
            variance = grid_power_statistics(wave, rates, lengths, h.stft_window_s, h.stft_hop_s,
                                             variance.shape[1], a.stats.grid_hz).variance
        captured = None
        if transient_hz is not None:
            spec = grid_power_spectrogram(wave, rates, lengths, h.stft_window_s, h.stft_hop_s, variance.shape[1],
                                          a.stats.grid_hz)
            captured = transient_capture(transient_energy(spec.power, spec.frame_valid), spec.freqs_hz,
                                         a.band_start_hz, a.band_width_hz, *transient_hz)
        for b in range(wave.shape[0]):
            sr = int(rates[b])
            m = clip_metrics(a.band_start_hz[b].cpu(), variance[b].cpu(), a.all_mask[b].cpu(),
                             a.stats.freq_valid[b].cpu(), batch["events"][b], a.band_width_hz[b].cpu(),
                             h.cauchy_width_hz, a.num_detail)
            m["transient_capture"] = None if captured is None else float(captured[b])
            per_clip.append((sr, m))
            if sr not in examples:
                examples[sr] = (wave[b, : int(lengths[b])].float().cpu().numpy(), sr,
                                a.band_start_hz[b].cpu().numpy(), batch["events"][b], a.band_width_hz[b].cpu().numpy())
    report = aggregate(per_clip)
    report["definitions"] = {
        "covered": f">= {COVERED_FRACTION:.0%} of [low_hz, high_hz] where M(f) >= {MASK_THRESHOLD}",
        "all_cov_pass": "as all_cov, but counting only the hard passbands [f_k, f_k + W]",
        "all_cov_detail": "as all_cov, counting only the K picked detail bands (not the context bands)",
    }
    if transient_hz is not None:
        report["definitions"]["transient_capture"] = (
            f"share of the transient energy (> 6 dB above each bin's median) in {transient_hz[0]:g}-"
            f"{transient_hz[1]:g} Hz inside the hard passbands, mean over clips")
    report["config"] = {"num_bands": h.num_bands, "band_width_hz": h.band_width_hz, "context_bands": h.context_bands,
                        "cauchy_width_hz": h.cauchy_width_hz, "mixing": h.mixing}
    if plot_dir is not None and per_clip:
        # lazy: eval.plots imports matplotlib (0.4 s), needed only when PNGs are asked for
        from a2v_het.eval.plots import plot_bands_over_spectrograms, plot_coverage_by_rate

        plot_dir = Path(plot_dir)
        plot_dir.mkdir(parents=True, exist_ok=True)
        ex = [examples[sr] for sr in sorted(examples)][:n_plot]
        bands_png = plot_bands_over_spectrograms(
            plot_dir / f"bands_{plot_tag}.png", [e[0] for e in ex], [e[1] for e in ex], [e[2] for e in ex],
            [e[4] for e in ex], events=[e[3] for e in ex], detail_bands=h.num_bands)
        cov_png = plot_coverage_by_rate(plot_dir / f"coverage_by_rate_{plot_tag}.png", report["by_sample_rate"])
        report["plots"] = {"bands": str(bands_png), "coverage_by_rate": str(cov_png)}
    return report


def format_table(report: dict[str, Any]) -> str:
    """The seed's table (plus the stricter pass variant and the captured fractions) as Markdown."""
    t = report["overall"].get("transient_capture")
    transients = t is not None and not math.isnan(t)  # asked for and measured
    head = ("| SR (Hz) | Samples | All Cov | All Cov (detail) | Any Cov | Energy Overlap | Surprise Overlap "
            "| All Cov (pass) | Captured var | Captured surprise |" + (" Transient capture |" if transients else ""))
    lines = [head, "|" + "---|" * (11 if transients else 10)]

    def pct(x: float) -> str:
        return "n/a" if x != x else f"{100 * x:.1f}%"

    for r in report["by_sample_rate"] + [{"sample_rate": "all", **report["overall"]}]:
        lines.append(f"| {r['sample_rate']} | {r['samples']} | {pct(r['all_cov'])} | {pct(r['all_cov_detail'])} | "
                     f"{pct(r['any_cov'])} | "
                     f"{pct(r['energy_overlap'])} | {pct(r['surprise_overlap'])} | {pct(r['all_cov_pass'])} | "
                     f"{r['captured_variance']:.3f} | {r['captured_surprise']:.3f} |"
                     + (f" {pct(r['transient_capture'])} |" if transients else ""))
    if report.get("by_label"):
        lines += ["", "| call type | calls | covered |", "|---|---|---|"]
        lines += [f"| {r['label']} | {r['calls']} | {pct(r['covered'])} |" for r in report["by_label"]]
    return "\n".join(lines)


def load_frontend(checkpoint: str | Path, device: torch.device | str = "cpu"):
    """A frontend from an export folder (config.yaml + model.safetensors) or a run folder (its ``latest``)."""
    weights, config_path = resolve_weights(checkpoint)
    cfg = config_from_dict(PretrainConfig, yaml.safe_load(config_path.read_text()))
    frontend = build_frontend(cfg.frontend)
    state = load_weights(weights, prefix="frontend.")
    missing, unexpected = frontend.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ValueError(f"checkpoint {weights} does not match the frontend: missing {missing}, unexpected {unexpected}")
    return frontend.to(device).eval(), cfg
