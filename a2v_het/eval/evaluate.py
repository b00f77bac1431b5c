"""``a2v-het evaluate --checkpoint C --data DIR [--split test] [--val-split val] [--json]``: a fine-tuned call detector
on labelled shards.

Frame-level AP per class + macro mAP; event-level P/R/F1 per class under one-to-one IoU matching and under
onset/offset collars (:mod:`a2v_het.eval.events`). Per-class thresholds are tuned on the val split (max event F1)
and applied unchanged to the test split. PNGs: per-class PR curves, example clips with true vs predicted events.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from a2v_het.config import config_from_dict
from a2v_het.data.manifest import read_manifest
from a2v_het.data.stream import make_eval_loader
from a2v_het.data.targets import events_to_frame_targets
from a2v_het.eval import events as E
from a2v_het.model.classifier import CallDetector
from a2v_het.recipe import FinetuneConfig
from a2v_het.runs import load_weights, resolve_weights


def load_detector(checkpoint: str | Path, device: str | torch.device = "cpu"):
    """(CallDetector in eval mode, FinetuneConfig) from a fine-tune run folder (latest checkpoint) or its export."""
    weights, config_path = resolve_weights(checkpoint)
    tree = yaml.safe_load(config_path.read_text())
    if "finetune" not in tree:
        raise ValueError(f"{config_path} is not a fine-tuning config (no 'finetune' section)")
    cfg = config_from_dict(FinetuneConfig, tree)
    f = cfg.finetune
    model = CallDetector(cfg.model, cfg.frontend, len(f.classes), f.top_k, f.dropout)
    model.load_state_dict(load_weights(weights), strict=True)
    model.classes = list(f.classes)
    return model.to(device).eval(), cfg


@torch.no_grad()
def collect(model, data: str, split: str, classes: list[str], batch_size: int = 8, max_clips: int = 0,
            keep_waves: int = 0, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """Per labelled clip: probs (N, C), targets (N, C), events (reference, classes only), key; the first
    ``keep_waves`` clips also keep wave and sample_rate (for plots)."""
    out: list[dict[str, Any]] = []
    # One process reads the whole split: after a multi-rank fine-tune rank 0 evaluates alone, with RANK and
    # WORLD_SIZE still set, and must not take only its 1 / world_size share.
    loader = make_eval_loader(data, batch_size, 0, split=split, rank=0, world_size=1)
    for batch in loader:
        probs, pad = model.predict_proba(batch["wave"].to(device), batch["sample_rate"].to(device),
                                         batch["lengths"].to(device))
        probs, pad = probs.float().cpu().numpy(), pad.cpu().numpy()
        for i in range(probs.shape[0]):
            if not bool(batch["labelled"][i]):
                continue
            n = int((~pad[i]).sum())
            ev = [e for e in batch["events"][i] if e["label"] in classes]
            clip = {"probs": probs[i, :n], "key": batch["keys"][i], "events": ev,
                    "targets": events_to_frame_targets(ev, classes, n, model.token_rate)}
            if len(out) < keep_waves:
                clip["wave"] = batch["wave"][i, : int(batch["lengths"][i])].numpy()
                clip["sample_rate"] = int(batch["sample_rate"][i])
            out.append(clip)
            if max_clips and len(out) >= max_clips:
                return out
    return out


def _clean(x: Any) -> Any:
    """NaN -> None for JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


def score_clips(clips: list[dict], classes: list[str], token_rate: float, thresholds: dict[str, float],
                smooth_s: float, min_duration_s: float, merge_gap_s: float, iou: float, collar_s: float) -> dict:
    fm = E.frame_map(np.concatenate([c["targets"] for c in clips]) if clips else np.zeros((0, len(classes))),
                     np.concatenate([c["probs"] for c in clips]) if clips else np.zeros((0, len(classes))), classes)
    ests = [E.probs_to_events(c["probs"], classes, token_rate, thresholds, smooth_s, min_duration_s, merge_gap_s)
            for c in clips]
    refs = [c["events"] for c in clips]
    return {"clips": len(clips), "frame_map": fm["mAP"], "frame_ap": fm["per_class"],
            "event_iou": E.event_prf(refs, ests, classes, "iou", iou, collar_s),
            "event_collar": E.event_prf(refs, ests, classes, "collar", iou, collar_s)}, ests


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, split: str = "test", val_split: str = "val",
                        val_data: str | Path | None = None, plot_dir: str | Path | None = None,
                        device: str = "cpu") -> dict[str, Any]:
    """Thresholds tuned on ``val_data``/``val_split`` (default: ``data``), applied to ``data``/``split`` when that
    split exists (else the report holds val only, which is optimistic: its thresholds were tuned on it)."""
    model, cfg = load_detector(checkpoint, device)
    f = cfg.finetune
    classes, rate = list(f.classes), model.token_rate
    val_data = str(val_data or data)
    kw = dict(batch_size=f.eval_batch_size, max_clips=f.eval_max_clips, device=device)
    val = collect(model, val_data, val_split, classes, keep_waves=f.eval_plots, **kw)
    thresholds = E.tune_thresholds([c["events"] for c in val], [c["probs"] for c in val], classes, rate,
                                   rule="iou", iou_threshold=f.match_iou, collar_s=f.collar_s, smooth_s=f.smooth_s,
                                   min_duration_s=f.min_duration_s, merge_gap_s=f.merge_gap_s)
    score_kw = dict(smooth_s=f.smooth_s, min_duration_s=f.min_duration_s, merge_gap_s=f.merge_gap_s,
                    iou=f.match_iou, collar_s=f.collar_s)
    report: dict[str, Any] = {"classes": classes, "thresholds": thresholds, "token_rate": rate,
                              "settings": score_kw, "val": None, "test": None}
    report["val"], val_ests = score_clips(val, classes, rate, thresholds, **score_kw)
    report["val"]["split"] = f"{val_data}:{val_split}"
    shown, shown_ests = val, val_ests
    if split in read_manifest(str(data)).get("splits", {}):
        test = collect(model, str(data), split, classes, keep_waves=f.eval_plots, **kw)
        report["test"], test_ests = score_clips(test, classes, rate, thresholds, **score_kw)
        report["test"]["split"] = f"{data}:{split}"
        shown, shown_ests = test, test_ests
    if plot_dir is not None and shown:
        report["plots"] = write_plots(Path(plot_dir), shown, shown_ests, classes)
    return _clean(report)


def format_report(report: dict[str, Any]) -> str:
    part = report["test"] or report["val"]
    which = "test" if report["test"] else "val (thresholds tuned on it: optimistic)"

    def f(x):
        return "  -  " if x is None else f"{x:.3f}"

    lines = [f"call detection on {which}: {part['clips']} clips, frame mAP {f(part['frame_map'])}, "
             f"event F1 (IoU>={report['settings']['iou']}) macro {f(part['event_iou']['macro_f1'])}, "
             f"(collar {report['settings']['collar_s']} s) macro {f(part['event_collar']['macro_f1'])}",
             "| class | thr | frame AP | P (IoU) | R (IoU) | F1 (IoU) | F1 (collar) | n_ref | n_est |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in report["classes"]:
        a, b = part["event_iou"]["per_class"][c], part["event_collar"]["per_class"][c]
        lines.append(f"| {c} | {report['thresholds'][c]:.2f} | {f(part['frame_ap'][c])} | {f(a['precision'])} | "
                     f"{f(a['recall'])} | {f(a['f1'])} | {f(b['f1'])} | {a['n_ref']} | {a['n_est']} |")
    return "\n".join(lines)


def write_plots(plot_dir: Path, clips: list[dict], ests: list[list[dict]], classes: list[str]) -> dict[str, str]:
    # lazy: matplotlib takes 0.3-0.45 s to import and only the plots need it
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle  # lazy: as above

    from a2v_het.eval.plots import _save_png, spectrogram_db  # lazy: eval.plots imports matplotlib at its top

    out = {}
    t = np.concatenate([c["targets"] for c in clips])
    p = np.concatenate([c["probs"] for c in clips])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    for i, c in enumerate(classes):
        if t[:, i].sum() == 0:
            continue
        prec, rec, _ = E.pr_curve(t[:, i], p[:, i])
        ax.plot(np.concatenate([[0], rec]), np.concatenate([[1], prec]),
                label=f"{c} (AP {E.average_precision(t[:, i], p[:, i]):.2f})")
    ax.set_xlabel("recall (frames)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    out["pr_curves"] = str(_save_png(fig, plot_dir / "pr_curves.png", 100))

    shown = [(c, e) for c, e in zip(clips, ests) if "wave" in c]
    if shown:
        fig = Figure(figsize=(6, 2.6 * len(shown)))
        colors = {c: f"C{i % 10}" for i, c in enumerate(classes)}
        for k, (clip, est) in enumerate(shown):
            ax = fig.add_subplot(len(shown), 1, k + 1)
            s_db, dur = spectrogram_db(clip["wave"], clip["sample_rate"])
            nyq = clip["sample_rate"] / 2
            ax.imshow(s_db, origin="lower", aspect="auto", extent=(0, dur, 0, nyq), cmap="magma")
            for e in clip["events"]:  # truth: outlined box in the call's band (or the top strip)
                lo, hi = e.get("low_hz") or 0.55 * nyq, e.get("high_hz") or 0.75 * nyq
                ax.add_patch(Rectangle((e["onset_s"], lo), e["offset_s"] - e["onset_s"], hi - lo, fill=False,
                                       ec=colors[e["label"]], lw=1.5))
            for e in est:  # predictions: filled strip along the bottom
                ax.add_patch(Rectangle((e["onset_s"], 0.02 * nyq), e["offset_s"] - e["onset_s"], 0.08 * nyq,
                                       color=colors[e["label"]], alpha=0.8))
            ax.set_title(f"{clip['key']} (boxes: truth, bottom bars: predicted)", fontsize=8)
            ax.set_ylabel("Hz")
        out["examples"] = str(_save_png(fig, plot_dir / "examples.png", 80))
    return out


def add_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="fine-tune run folder or its export")
    parser.add_argument("--data", required=True, help="shard folder with manifest.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--val-split", default="val")
    parser.add_argument("--val-data", default=None, help="shard folder of the val split (default: --data)")
    parser.add_argument("--plot-dir", default=None)
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    report = evaluate_checkpoint(args.checkpoint, args.data, args.split, args.val_split, args.val_data,
                                 args.plot_dir)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="a2v-het evaluate")
    add_args(p)
    sys.exit(run(p.parse_args()))
