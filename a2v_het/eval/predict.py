"""``a2v-het predict --checkpoint C INPUT... --out DIR [--window-s 10 --hop-s 5]``: detect calls in long recordings.

Each recording (any sample rate, any length; the first channel) is read from disk block-wise with soundfile in
overlapping windows of ``window_s`` every ``hop_s``; only ``batch_size`` windows of audio are in memory at a time.
Frame probabilities (token rate, 50 Hz) of overlapping windows are averaged, then turned into events with the
fine-tune run's settings (smoothing, per-class thresholds tuned on val from the run's ``eval.json`` when present,
minimum duration, merge gap). Writes ``DIR/<name>.selections.txt`` (a Raven Pro selection table) per recording and
``DIR/events.csv`` with every event. The probabilities of a recording are kept in memory: C x 4 bytes x 50 per
second (0.7 MB per hour and class); the audio is not.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from a2v_het.eval import events as E
from a2v_het.eval.raven import write_selection_table


def _windows(n_samples: int, win: int, hop: int) -> list[int]:
    """Window starts covering [0, n_samples); the last window may run past the end (zero-padded)."""
    if n_samples <= win:
        return [0]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:
        starts.append(starts[-1] + hop)
    return starts


def _read_blocks(path: Path, starts: Sequence[int], win: int, batch_size: int
                 ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    import soundfile as sf

    with sf.SoundFile(str(path)) as fh:
        for i in range(0, len(starts), batch_size):
            chunk = starts[i:i + batch_size]
            wave = np.zeros((len(chunk), win), np.float32)
            lengths = np.zeros(len(chunk), np.int64)
            for j, s in enumerate(chunk):
                fh.seek(s)
                x = fh.read(win, dtype="float32", always_2d=True)[:, 0]
                wave[j, : x.size] = x
                lengths[j] = x.size
            yield chunk, wave, lengths


@torch.no_grad()
def predict_file(model, path: str | Path, window_s: float = 10.0, hop_s: float = 5.0, batch_size: int = 4,
                 device: str | torch.device = "cpu", progress: bool = True) -> tuple[np.ndarray, int, float]:
    """-> (probs (T, C) float32 at the token rate averaged over overlapping windows, sample_rate, duration_s)."""
    import soundfile as sf

    rate = model.token_rate
    for name, v in (("window_s", window_s), ("hop_s", hop_s)):
        if v <= 0 or abs(v * rate - round(v * rate)) > 1e-6:
            raise ValueError(f"{name}={v} must be a positive multiple of 1/token_rate = {1 / rate:g} s")
    if hop_s > window_s:
        raise ValueError(f"hop_s={hop_s} > window_s={window_s} would leave gaps")
    info = sf.info(str(path))
    sr, n = int(info.samplerate), int(info.frames)
    win, hop = int(round(window_s * sr)), int(round(hop_s * sr))
    duration = n / sr
    n_frames = int(math.ceil(duration * rate - 1e-9))
    acc = np.zeros((n_frames, model.num_classes), np.float32)
    cnt = np.zeros(n_frames, np.float32)
    starts = _windows(n, win, hop)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(starts), desc=Path(path).name, unit="win", leave=False)
    for chunk, wave, lengths in _read_blocks(Path(path), starts, win, batch_size):
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
    if bar is not None:
        bar.close()
    return acc / np.maximum(cnt, 1)[:, None], sr, duration


def load_thresholds(checkpoint: str | Path, classes: Sequence[str]) -> dict[str, float]:
    """Per-class thresholds from the run's eval.json (tuned on val), else 0.5."""
    p = Path(checkpoint) / "eval.json"
    if p.is_file():
        tuned = json.loads(p.read_text()).get("thresholds", {})
        return {c: float(tuned.get(c, 0.5)) for c in classes}
    return {c: 0.5 for c in classes}


def predict(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, window_s: float = 10.0,
            hop_s: float = 5.0, batch_size: int = 4, threshold: float | None = None, device: str = "cpu",
            progress: bool = True) -> dict[str, Any]:
    from a2v_het.eval.evaluate import load_detector

    model, cfg = load_detector(checkpoint, device)
    f = cfg.finetune
    classes = list(f.classes)
    thresholds = {c: threshold for c in classes} if threshold is not None else load_thresholds(checkpoint, classes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, tables = [], []
    for path in inputs:
        path = Path(path)
        probs, sr, duration = predict_file(model, path, window_s, hop_s, batch_size, device, progress)
        events = E.probs_to_events(probs, classes, model.token_rate, thresholds, f.smooth_s, f.min_duration_s,
                                   f.merge_gap_s)
        for e in events:
            e["offset_s"] = min(e["offset_s"], duration)
        tables.append(str(write_selection_table(out / f"{path.stem}.selections.txt", events, 0.0, sr / 2)))
        rows += [{"file": str(path), **e} for e in events]
        if progress:
            print(f"[a2v-het] {path.name}: {duration:.1f} s at {sr} Hz -> {len(events)} events", flush=True)
    csv_path = out / "events.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "onset_s", "offset_s", "label", "score"])
        for r in rows:
            w.writerow([r["file"], f"{r['onset_s']:.4f}", f"{r['offset_s']:.4f}", r["label"], f"{r['score']:.4f}"])
    return {"tables": tables, "csv": str(csv_path), "events": len(rows), "thresholds": thresholds}


def add_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="fine-tune run folder or its export")
    parser.add_argument("inputs", nargs="+", help="audio files (any format soundfile reads)")
    parser.add_argument("--out", required=True, help="output folder for selection tables + events.csv")
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--hop-s", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threshold", type=float, default=None, help="one threshold for all classes "
                        "(default: the run's tuned eval.json thresholds, else 0.5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    res = predict(args.checkpoint, args.inputs, args.out, args.window_s, args.hop_s, args.batch_size, args.threshold,
                  args.device, progress=not args.no_progress)
    print(f"[a2v-het] {res['events']} events; tables: {', '.join(res['tables'])}; csv: {res['csv']}")
    return 0


if __name__ == "__main__":
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="a2v-het predict")
    add_args(p)
    sys.exit(run(p.parse_args()))
