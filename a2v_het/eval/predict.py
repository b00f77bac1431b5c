"""``a2v-het predict --checkpoint C INPUT... --out DIR [--window-s 10 --hop-s 5]``: detect calls in long recordings.

Each recording (any sample rate, any length; the first channel) is read from disk block-wise with soundfile in
overlapping windows of ``window_s`` every ``hop_s``; only ``batch_size`` windows of audio are in memory at a time.
Frame probabilities (token rate, 50 Hz) of overlapping windows are averaged, then turned into events with the
fine-tune run's settings (smoothing, per-class thresholds tuned on val from the run's ``eval.json`` when present,
minimum duration, merge gap). Writes ``DIR/<name>.selections.txt`` (a Raven Pro selection table) per recording and
``DIR/events.csv`` with every event. The probabilities of a recording are kept in memory: C x 4 bytes x 50 per
second (0.7 MB per hour and class); the audio is not.

Inputs are files and folders (searched recursively; ``name`` = the path relative to the folder, without suffix; a
file given directly: its stem). One bad file never stops the run: an unreadable, empty or cut-off file is listed
with its reason in ``DIR/report.json``, the others are processed, and the exit status is 3. A rerun (or a requeued
SLURM array task) skips the files already done. ``--workers N`` runs N processes; ``--shard-index/--shard-count``
(default: the SLURM array variables) take one share of the sorted file list (see
:mod:`a2v_het.eval.audio_files`).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from a2v_het.atomic import atomic_open
from a2v_het.eval import events as E
from a2v_het.eval.audio_files import (
    AudioInfo,
    FileProcessor,
    InputError,
    audio_info,
    read_windows,
    run_files,
    window_starts,
)
from a2v_het.eval.embed import add_parallel_args
from a2v_het.eval.raven import write_selection_table
from a2v_het.eval.run_files import CheckpointError, load_model, read_config_tree, resolve_checkpoint

_windows = window_starts  # the old name


def _check_windows(rate: float, window_s: float, hop_s: float) -> None:
    for name, v in (("window_s", window_s), ("hop_s", hop_s)):
        if v <= 0 or abs(v * rate - round(v * rate)) > 1e-6:
            raise ValueError(f"{name}={v} must be a positive multiple of 1/token_rate = {1 / rate:g} s")
    if hop_s > window_s:
        raise ValueError(f"hop_s={hop_s} > window_s={window_s} would leave gaps")


def _accumulate(model, batches, sr: int, n_samples: int, device, bar=None) -> np.ndarray:
    """Overlap-average the frame probabilities of (starts, wave (b, win), lengths) batches -> (T, C) float32."""
    rate = model.token_rate
    n_frames = int(math.ceil(n_samples / sr * rate - 1e-9))
    acc = np.zeros((n_frames, model.num_classes), np.float32)
    cnt = np.zeros(n_frames, np.float32)
    for chunk, wave, lengths in batches:
        probs, pad = model.predict_proba(torch.from_numpy(wave).to(device),
                                         torch.full((len(chunk),), sr, dtype=torch.long, device=device),
                                         torch.from_numpy(lengths).to(device))
        probs, pad = probs.float().cpu().numpy(), pad.cpu().numpy()
        for j, s in enumerate(chunk):
            off = int(round(s / sr * rate))
            k = min(int((~pad[j]).sum()), n_frames - off)
            if k > 0:
                acc[off:off + k] += probs[j, :k]
                cnt[off:off + k] += 1
        if bar is not None:
            bar.update(len(chunk))
    return acc / np.maximum(cnt, 1)[:, None]


@torch.no_grad()
def predict_file(model, path: str | Path, window_s: float = 10.0, hop_s: float = 5.0, batch_size: int = 4,
                 device: str | torch.device = "cpu", progress: bool = True, info: AudioInfo | None = None
                 ) -> tuple[np.ndarray, int, float]:
    """-> (probs (T, C) float32 at the token rate averaged over overlapping windows, sample_rate Hz, duration_s).
    Raises :class:`~a2v_het.eval.audio_files.UnreadableAudio` for a file that cannot be decoded."""
    _check_windows(model.token_rate, window_s, hop_s)
    info = info or audio_info(path)
    sr, n = info.sample_rate, info.frames
    win, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    starts = window_starts(n, win, hop)
    bar = None
    if progress:
        bar = tqdm(total=len(starts), desc=Path(path).name, unit="win", leave=False, file=sys.stderr)
    first = ((c, w[:, 0], lens) for c, w, lens in read_windows(path, info, starts, win, batch_size))
    try:
        probs = _accumulate(model, first, sr, n, device, bar)
    finally:
        if bar is not None:
            bar.close()
    return probs, sr, n / sr


def detector_settings(model) -> dict[str, float]:
    f = getattr(model, "finetune", {}) or {}
    return {"smooth_s": float(f.get("smooth_s", 0.1)), "min_duration_s": float(f.get("min_duration_s", 0.0)),
            "merge_gap_s": float(f.get("merge_gap_s", 0.0))}


@torch.no_grad()
def detect_waveform(model, wave: np.ndarray | torch.Tensor, sample_rate: int, window_s: float = 10.0,
                    hop_s: float = 5.0, thresholds: float | dict[str, float] | None = None, batch_size: int = 4
                    ) -> list[dict[str, Any]]:
    """Calls in a mono recording in memory: wave (T,) float at ``sample_rate`` Hz (any rate) -> events
    ``{onset_s, offset_s, label, score}`` (seconds). ``model``: a detector from
    :func:`a2v_het.eval.run_files.load_model`; thresholds: one for all classes, per class, or None = the run's
    tuned ones (its eval.json) else 0.5."""
    if getattr(model, "kind", "") != "detector":
        raise ValueError("detect_waveform needs a fine-tuned detector (a fine-tune run or its export)")
    _check_windows(model.token_rate, window_s, hop_s)
    x = np.asarray(wave, np.float32).reshape(-1)
    win, hop = int(round(window_s * sample_rate)), int(round(hop_s * sample_rate))
    starts = window_starts(x.size, win, hop)

    def batches():
        for i in range(0, len(starts), batch_size):
            chunk = starts[i:i + batch_size]
            w = np.zeros((len(chunk), win), np.float32)
            lens = np.zeros(len(chunk), np.int64)
            for j, s in enumerate(chunk):
                seg = x[s:s + win]
                w[j, : seg.size] = seg
                lens[j] = seg.size
            yield chunk, w, lens

    device = next(model.parameters()).device
    probs = _accumulate(model, batches(), sample_rate, x.size, device)
    classes = list(model.classes)
    if thresholds is None:
        thresholds = load_thresholds(model.checkpoint, classes)
    events = E.probs_to_events(probs, classes, model.token_rate, thresholds, **detector_settings(model))
    for e in events:
        e["offset_s"] = min(e["offset_s"], x.size / sample_rate)
    return events


def load_thresholds(checkpoint: str | Path, classes: Sequence[str]) -> dict[str, float]:
    """Per-class thresholds from the run's eval.json (tuned on val), else 0.5."""
    p = Path(checkpoint) / "eval.json"
    if p.is_file():
        tuned = json.loads(p.read_text()).get("thresholds", {})
        return {c: float(tuned.get(c, 0.5)) for c in classes}
    return {c: 0.5 for c in classes}


class PredictProcessor(FileProcessor):
    """One recording -> DIR/<name>.selections.txt; its events go into the done record (merged to events.csv)."""

    def __init__(self, checkpoint: str, window_s: float = 10.0, hop_s: float = 5.0, batch_size: int = 4,
                 threshold: float | None = None, device: str = "cpu", progress: bool = False):
        self.model = load_model(checkpoint, device)
        if self.model.kind != "detector":
            raise CheckpointError(f"{checkpoint} is a pretraining checkpoint: predict needs a fine-tuned detector "
                                  "(use `a2v-het embed` for embeddings)")
        _check_windows(self.model.token_rate, window_s, hop_s)
        self.classes = list(self.model.classes)
        self.thresholds = ({c: threshold for c in self.classes} if threshold is not None
                           else load_thresholds(checkpoint, self.classes))
        self.window_s, self.hop_s, self.batch_size = window_s, hop_s, batch_size
        self.device, self.progress = device, progress

    def process(self, path: Path, name: str, info: AudioInfo, out: Path, bar=None) -> dict[str, Any]:
        probs, sr, duration = predict_file(self.model, path, self.window_s, self.hop_s, self.batch_size,
                                           self.device, self.progress, info)
        events = E.probs_to_events(probs, self.classes, self.model.token_rate, self.thresholds,
                                   **detector_settings(self.model))
        for e in events:
            e["offset_s"] = min(e["offset_s"], duration)
        table = write_selection_table(out / f"{name}.selections.txt", events, 0.0, sr / 2)
        if self.progress:
            print(f"[a2v-het] {path.name}: {duration:.1f} s at {sr} Hz -> {len(events)} events", file=sys.stderr,
                  flush=True)
        return {"table": str(table), "events": [{k: e[k] for k in ("onset_s", "offset_s", "label", "score")}
                                                 for e in events]}

    @staticmethod
    def merge(out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
        n = 0
        with atomic_open(out / "events.csv", "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["file", "onset_s", "offset_s", "label", "score"])
            for rec in records:
                for e in rec.get("events", []):
                    w.writerow([rec["file"], f"{e['onset_s']:.4f}", f"{e['offset_s']:.4f}", e["label"],
                                f"{e['score']:.4f}"])
                    n += 1
        return {"csv": str(out / "events.csv"), "events": n, "tables": [r["table"] for r in records]}


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, window_s: float = 10.0,
            hop_s: float = 5.0, batch_size: int = 4, threshold: float | None = None, device: str = "cpu",
            progress: bool = True, workers: int = 1, shard_index: int | None = None,
            shard_count: int | None = None) -> dict[str, Any]:
    """The ``a2v-het predict`` command as a function. Returns :func:`~a2v_het.eval.audio_files.run_files`'s
    summary plus "csv", "events" (rows of events.csv), "tables" (every done file's table) and "thresholds"."""
    _, config_path = resolve_checkpoint(checkpoint)  # one-line errors before any file is touched
    tree = read_config_tree(config_path)
    if "finetune" not in tree:
        raise CheckpointError(f"{checkpoint} is a pretraining checkpoint: predict needs a fine-tuned detector "
                              "(use `a2v-het embed` for embeddings)")
    _check_windows(float(tree["frontend"].get("token_rate", 50.0)), window_s, hop_s)
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be >= 1")
    classes = list(tree["finetune"].get("classes") or [])
    thresholds = {c: threshold for c in classes} if threshold is not None else load_thresholds(checkpoint, classes)
    spec = dict(checkpoint=str(checkpoint), window_s=window_s, hop_s=hop_s, batch_size=batch_size,
                threshold=threshold, device=device, progress=progress and workers <= 1)
    res = run_files(PredictProcessor, spec, inputs, out, workers, shard_index, shard_count, progress, "predict",
                    {k: v for k, v in spec.items() if k != "progress"})
    return {**res, "thresholds": thresholds}


def add_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="fine-tune run folder or its export")
    parser.add_argument("inputs", nargs="+", help="audio files and folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for selection tables + events.csv")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--hop-s", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=None, help="one threshold for all classes "
                        "(default: the run's tuned eval.json thresholds, else 0.5)")
    add_parallel_args(parser)


def run(args) -> int:
    try:
        res = predict(args.checkpoint, args.inputs, args.out, args.window_s, args.hop_s, args.batch_size,
                      args.threshold, args.device, progress=not args.no_progress, workers=args.workers,
                      shard_index=args.shard_index, shard_count=args.shard_count)
    except (CheckpointError, InputError, ValueError) as e:
        print(f"a2v-het predict: error: {e}", file=sys.stderr)
        return 2
    c = res["counts"]
    print(f"[a2v-het] predict: {res['done']} files processed, {res['skipped']} already done, {len(res['failed'])} "
          f"failed (this task); folder: {c['done']} done, {c['failed']} failed, {c['pending']} pending; "
          f"{res['events']} events in {res['csv']}; report: {res['report']}")
    return res["exit_code"]


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="a2v-het predict")
    add_args(p)
    sys.exit(run(p.parse_args()))
