"""``a2v-het embed --checkpoint RUN_OR_EXPORT AUDIO_OR_DIR... --out DIR``: frozen embeddings of recordings.

Every channel of every recording (any sample rate, any length, any channel count; the model reads each rate
natively, nothing is resampled) is cut into windows of ``window_s`` every ``hop_s`` (the last one zero-padded; a
recording shorter than a window is one window) and read block-wise: only ``batch_size`` windows of audio are in
memory. Each window goes through the frozen student encoder on its own (its embedding does not depend on the other
clips of its batch, on padding, or on the sample rates next to it) and is reduced to:

- ``--layers final`` (default): the encoder output, its final LayerNorm of the residual stream after the last
  block; ``--layers=-2,-1`` (or ``1,2,3``; 1-based, negative from the top, ``=`` before a negative list): the final
  LayerNorm of the mean of the residual streams after those blocks (what a fine-tuned detector's head reads with
  top_k = 2; ``-1`` = final);
- ``--pool mean`` (default) / ``max`` over the window's valid tokens -> one (D,) vector, or ``--pool none`` -> the
  tokens at ``token_rate`` (50/s), (N, D) per window, zero after the ``n_tokens`` valid ones.

Output folder (``name`` = the file's path relative to the folder given, without suffix; a file given directly:
its stem)::

    DIR/embeddings/<name>.npy   float32, pooled: (rows, D); --pool none: (rows, N, D); row r = window r // C,
                                channel r % C (C channels), written whole or not at all
    DIR/embeddings/<name>.csv   that file's index: row, channel, start_s, end_s, n_tokens
    DIR/index.csv               every file's rows: file, name, array, row, channel, start_s, end_s, sample_rate,
                                n_tokens (rebuilt when a task ends)
    DIR/report.json             every file: done / failed (with the reason) / pending; settings

Works from a pretraining run/export (the student encoder) and from a fine-tuned detector (its backbone).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from a2v_het.atomic import atomic_open
from a2v_het.config import atomic_write_text
from a2v_het.eval.audio_files import (
    AudioInfo,
    FileProcessor,
    InputError,
    read_windows,
    run_files,
    window_starts,
)
from a2v_het.eval.run_files import CheckpointError, encode, load_model, read_config_tree, resolve_checkpoint

POOLS = ("mean", "max", "none")
INDEX_COLUMNS = ("file", "name", "array", "row", "channel", "start_s", "end_s", "sample_rate", "n_tokens")


def parse_layers(spec: str | Sequence[int] | None, depth: int) -> list[int] | None:
    """``"final"``/None -> None (the encoder output); ``"-2,-1"`` / ``"1,3"`` / [..] -> 0-based block indices."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "final")):
        return None
    items = [int(s) for s in spec.split(",")] if isinstance(spec, str) else [int(s) for s in spec]
    out = []
    for k in items:
        if k == 0 or not -depth <= k <= depth:
            raise ValueError(f"layer {k} is not a block of this encoder (1..{depth}, or -1..-{depth} from the top)")
        out.append(k - 1 if k > 0 else depth + k)
    return sorted(set(out))


@torch.no_grad()
def embed_batch(model: nn.Module, wave: Tensor, sample_rate: Tensor, lengths: Tensor, layers: list[int] | None = None,
                pool: str = "mean") -> tuple[Tensor, Tensor]:
    """wave (B, T) zero-padded after lengths (B,) samples, sample_rate (B,) Hz ->
    (pooled (B, D) fp32 and n_tokens (B,)) or, with pool="none", (tokens (B, N, D) zero at padding, n_tokens)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    final, streams, pad = encode(model, wave, sample_rate, lengths)
    x = final if layers is None else model.encoder.norm(torch.stack([streams[i] for i in layers], 0).mean(0))
    x = x.float()
    valid = ~pad
    n_tokens = valid.sum(1)
    if pool == "none":
        return x.masked_fill(pad[..., None], 0.0), n_tokens
    if pool == "mean":
        return (x * valid[..., None]).sum(1) / n_tokens.clamp_min(1)[:, None], n_tokens
    return x.masked_fill(pad[..., None], float("-inf")).amax(1).nan_to_num(neginf=0.0), n_tokens


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def embed_clips(model: nn.Module, waves: Sequence[np.ndarray | Tensor], sample_rates: Sequence[int],
                layers: str | Sequence[int] | None = None, pool: str = "mean") -> list[np.ndarray]:
    """Embed clips of any lengths and sample rates in one batch (zero-padded to the longest).

    waves: mono (T_i,) float arrays; sample_rates: Hz per clip. Returns per clip pooled (D,) or, with pool="none",
    (N_i, D) float32. A clip's result does not depend on the other clips of the batch.
    """
    dev = _device_of(model)
    xs = [torch.as_tensor(np.asarray(w, np.float32)).reshape(-1) for w in waves]
    lengths = torch.tensor([x.numel() for x in xs])
    batch = torch.zeros(len(xs), int(lengths.max()))
    for i, x in enumerate(xs):
        batch[i, : x.numel()] = x
    emb, n = embed_batch(model, batch.to(dev), torch.as_tensor(list(sample_rates)).to(dev), lengths.to(dev),
                         parse_layers(layers, model.cfg.depth), pool)
    emb = emb.cpu().numpy()
    return [emb[i] if pool != "none" else emb[i, : int(n[i])] for i in range(len(xs))]


def embed_waveform(model: nn.Module, wave: np.ndarray | Tensor, sample_rate: int, window_s: float = 10.0,
                   hop_s: float | None = None, layers: str | Sequence[int] | None = None, pool: str = "mean",
                   batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A recording in memory -> (embeddings (W, C, D) [pool none: (W, C, N, D)], window times (W, 2) seconds).

    wave: (T,) mono or (C, T) channels-first, float, at ``sample_rate`` Hz (any rate). Windows as
    :func:`a2v-het embed <embed_files>`: ``window_s`` every ``hop_s`` (default: window_s), the last zero-padded.
    """
    x = torch.as_tensor(np.asarray(wave, np.float32))
    x = x[None] if x.dim() == 1 else x
    c, t = x.shape
    win, hop = int(round(window_s * sample_rate)), int(round((hop_s or window_s) * sample_rate))
    starts = window_starts(t, win, hop)
    dev = _device_of(model)
    lay = parse_layers(layers, model.cfg.depth)
    out = []
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        w = torch.zeros(len(chunk), c, win)
        lens = torch.zeros(len(chunk), dtype=torch.long)
        for j, s in enumerate(chunk):
            seg = x[:, s:s + win]
            w[j, :, : seg.shape[1]] = seg
            lens[j] = seg.shape[1]
        emb, _ = embed_batch(model, w.reshape(-1, win).to(dev), torch.full((len(chunk) * c,), sample_rate).to(dev),
                             lens.repeat_interleave(c).to(dev), lay, pool)
        out.append(emb.cpu().numpy().reshape(len(chunk), c, *emb.shape[1:]))
    times = np.array([[s / sample_rate, min(s + win, t) / sample_rate] for s in starts])
    return np.concatenate(out, 0), times


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue()


class EmbedProcessor(FileProcessor):
    """One recording -> DIR/embeddings/<name>.npy + .csv (see the module docstring)."""

    def __init__(self, checkpoint: str, window_s: float = 10.0, hop_s: float | None = None,
                 layers: str | None = None, pool: str = "mean", batch_size: int = 8, device: str = "cpu",
                 random_init: bool = False, progress: bool = False):
        self.model = load_model(checkpoint, device, random_init=random_init)
        self.layers = parse_layers(layers, self.model.cfg.depth)
        self.window_s, self.hop_s = float(window_s), float(hop_s or window_s)
        if self.window_s <= 0 or self.hop_s <= 0:
            raise ValueError("window_s and hop_s must be > 0")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.pool, self.batch_size, self.device, self.progress = pool, int(batch_size), device, progress

    def process(self, path: Path, name: str, info: AudioInfo, out: Path, bar=None) -> dict[str, Any]:
        sr, c = info.sample_rate, info.channels
        win, hop = max(1, int(round(self.window_s * sr))), max(1, int(round(self.hop_s * sr)))
        starts = window_starts(info.frames, win, hop)
        rows = len(starts) * c
        array = out / "embeddings" / f"{name}.npy"
        index_rows = []
        fh_ctx = None
        fh = None
        wbar = None
        if self.progress:
            wbar = tqdm(total=len(starts), desc=Path(name).name, unit="win", leave=False, file=sys.stderr)
        try:
            for chunk, wave, lengths in read_windows(path, info, starts, win, self.batch_size):
                b = len(chunk)
                emb, n_tok = embed_batch(self.model, torch.from_numpy(wave.reshape(b * c, win)).to(self.device),
                                         torch.full((b * c,), sr, device=self.device),
                                         torch.from_numpy(np.repeat(lengths, c)).to(self.device), self.layers,
                                         self.pool)
                emb = emb.cpu().numpy().astype("<f4", copy=False)
                if fh is None:  # the shape is known once the first batch has run (N tokens per window)
                    fh_ctx = atomic_open(array, "wb")
                    fh = fh_ctx.__enter__()
                    fh.write(_npy_header((rows, *emb.shape[1:])))
                fh.write(np.ascontiguousarray(emb).tobytes())
                for j, s in enumerate(chunk):
                    for ch in range(c):
                        index_rows.append((len(index_rows), ch, s / sr, (s + int(lengths[j])) / sr,
                                           int(n_tok[j * c + ch])))
                if wbar is not None:
                    wbar.update(b)
        except BaseException:
            if fh_ctx is not None:
                fh_ctx.__exit__(*sys.exc_info())
            raise
        finally:
            if wbar is not None:
                wbar.close()
        fh_ctx.__exit__(None, None, None)
        text = io.StringIO()
        w = csv.writer(text, lineterminator="\n")
        w.writerow(["row", "channel", "start_s", "end_s", "n_tokens"])
        for r in index_rows:
            w.writerow([r[0], r[1], f"{r[2]:.6f}", f"{r[3]:.6f}", r[4]])
        atomic_write_text(out / "embeddings" / f"{name}.csv", text.getvalue())
        return {"array": f"embeddings/{name}.npy", "index": f"embeddings/{name}.csv", "rows": rows,
                "shape": [rows, *emb.shape[1:]]}

    @staticmethod
    def merge(out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
        with atomic_open(out / "index.csv", "w") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(INDEX_COLUMNS)
            n = 0
            for rec in records:
                with open(out / rec["index"], newline="") as f:
                    for row in csv.DictReader(f):
                        w.writerow([rec["file"], rec["name"], rec["array"], row["row"], row["channel"],
                                    row["start_s"], row["end_s"], rec["sample_rate"], row["n_tokens"]])
                        n += 1
        return {"index": str(out / "index.csv"), "rows": n}


def read_index(out: str | Path) -> list[dict[str, Any]]:
    """DIR/index.csv as dicts (numbers parsed)."""
    with open(Path(out) / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        r["row"], r["channel"], r["n_tokens"] = int(r["row"]), int(r["channel"]), int(r["n_tokens"])
        r["start_s"], r["end_s"], r["sample_rate"] = float(r["start_s"]), float(r["end_s"]), int(r["sample_rate"])
    return rows


def load_embeddings(out: str | Path) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(embeddings (rows, D) or (rows, N, D), index rows) of an embed output folder, in index order."""
    out = Path(out)
    index = read_index(out)
    arrays: dict[str, np.ndarray] = {}
    parts = []
    for r in index:
        if r["array"] not in arrays:
            arrays[r["array"]] = np.load(out / r["array"], mmap_mode="r", allow_pickle=False)
        parts.append(arrays[r["array"]][r["row"]])
    return (np.stack(parts).astype(np.float32) if parts else np.zeros((0, 0), np.float32)), index


def embed_files(checkpoint: str | Path, inputs: Sequence[str | Path], out: str | Path, window_s: float = 10.0,
                hop_s: float | None = None, layers: str | None = None, pool: str = "mean", batch_size: int = 8,
                device: str = "cpu", random_init: bool = False, workers: int = 1, shard_index: int | None = None,
                shard_count: int | None = None, progress: bool = True) -> dict[str, Any]:
    """The ``a2v-het embed`` command as a function; see :func:`a2v_het.eval.audio_files.run_files` for the return."""
    # Fail fast, with one-line errors, before any file or worker: the checkpoint, the layers, the windows.
    tree = read_config_tree(resolve_checkpoint(checkpoint)[1])
    parse_layers(layers, int(tree["model"].get("depth", 12)))
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if window_s <= 0 or (hop_s is not None and hop_s <= 0) or batch_size < 1 or workers < 1:
        raise ValueError("window_s and hop_s must be > 0, batch_size and workers >= 1")
    spec = dict(checkpoint=str(checkpoint), window_s=window_s, hop_s=hop_s, layers=layers, pool=pool,
                batch_size=batch_size, device=device, random_init=random_init, progress=progress and workers <= 1)
    settings = {k: v for k, v in spec.items() if k != "progress"}
    return run_files(EmbedProcessor, spec, inputs, out, workers, shard_index, shard_count, progress, "embed",
                     settings)


def add_args(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="pretraining or fine-tune run folder, or an export")
    parser.add_argument("inputs", nargs="+", help="audio files and folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (embeddings/, index.csv, report.json)")
    parser.add_argument("--window-s", type=float, default=10.0, help="window length (s)")
    parser.add_argument("--hop-s", type=float, default=None, help="hop between windows (s; default: --window-s)")
    parser.add_argument("--layers", default="final", help="'final' (encoder output) or blocks, e.g. --layers=-2,-1 "
                        "(final norm of the mean of their residual streams; 1-based, negative from the top)")
    parser.add_argument("--pool", choices=POOLS, default="mean", help="per-window mean/max, or none = per token")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument("--random-init", action="store_true", help="the same architecture at random init")
    add_parallel_args(parser)


def add_parallel_args(parser) -> None:
    parser.add_argument("--workers", type=int, default=1, help="processes (each loads the model)")
    parser.add_argument("--shard-index", type=int, default=None, help="this task's share (default: "
                        "SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN inside an array job)")
    parser.add_argument("--shard-count", type=int, default=None, help="number of shares (default: "
                        "SLURM_ARRAY_TASK_COUNT inside an array job, else 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")


def run(args) -> int:
    try:
        res = embed_files(args.checkpoint, args.inputs, args.out, args.window_s, args.hop_s, args.layers, args.pool,
                          args.batch_size, args.device, args.random_init, args.workers, args.shard_index,
                          args.shard_count, progress=not args.no_progress)
    except (CheckpointError, InputError, ValueError) as e:
        print(f"a2v-het embed: error: {e}", file=sys.stderr)
        return 2
    c = res["counts"]
    print(f"[a2v-het] embed: {res['done']} files embedded, {res['skipped']} already done, {len(res['failed'])} "
          f"failed (this task); folder: {c['done']} done, {c['failed']} failed, {c['pending']} pending; "
          f"index: {res['index']} ({res['rows']} rows); report: {res['report']}")
    return res["exit_code"]


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="a2v-het embed")
    add_args(p)
    sys.exit(run(p.parse_args()))
