"""``a2v-het bench data``: how fast audio gets from shards to batches, and from recordings to shards.

**Loader.** ``--clips`` synthetic clips of ``--clip-s`` s (``data_tools.synth``, preset ``basic``; each clip's rate
drawn from ``--rates``, default 8-96 kHz) are written to a temporary shard folder (FLAC PCM_16, 32 MiB shards).
For each worker count in ``--workers``, :func:`a2v_het.data.stream.make_train_loader` (crop ``--crop-s``,
shuffle buffer 64) yields ``--batches`` batches of ``--batch-size`` clips. The first batch is not timed (worker
start-up and the shuffle buffer filling); the others are. Reported: audio seconds delivered per wall second
(= times real time) in total and per worker (decode + crop + collate happen in the workers; the main process only
receives batches).

**Sharding.** ``--shard-files`` WAV files of ``--shard-minutes`` min each (PCM_16 white noise at -26 dBFS, the
hardest case for FLAC; rates cycling through 16, 48 and 96 kHz) are written block-wise, then
``data_tools.shard`` (10 s windows, 128 MiB shards) runs on them with ``--shard-workers`` processes, timed from
start to manifest, check pass included. Reported: hours of audio sharded per minute of wall time.

The figures depend on the CPU and on what else runs on it; the machine is described in the result.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from a2v_het.bench.frontend import describe_machine
from a2v_het.data.stream import make_train_loader

DEFAULT_RATES = "8000,16000,22050,32000,44100,48000,96000"


def add_args(parser: argparse.ArgumentParser) -> None:
    """Options of ``a2v-het bench data`` (see the module docstring)."""
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--clips", type=int, default=300, help="synthetic clips in the shard set (default 300)")
    parser.add_argument("--clip-s", type=float, default=10.0, help="seconds per clip (default 10)")
    parser.add_argument("--rates", type=str, default=DEFAULT_RATES, help=f"clip rates in Hz (default {DEFAULT_RATES})")
    parser.add_argument("--crop-s", type=float, default=10.0, help="training crop in seconds (default 10: whole clips)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8)")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per worker count (default 40)")
    parser.add_argument("--workers", type=str, default="1,2", help="DataLoader worker counts (default 1,2)")
    parser.add_argument("--shard-files", type=int, default=3, help="WAV files to shard (default 3)")
    parser.add_argument("--shard-minutes", type=float, default=10.0, help="minutes per WAV file (default 10)")
    parser.add_argument("--shard-workers", type=int, default=2, help="processes for the sharding run (default 2)")
    parser.add_argument("--tmp-dir", type=str, default=None, help="where to write the temporary data")


def _int_list(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def bench_loader(shard_dir: Path, workers: int, batches: int, batch_size: int, crop_s: float) -> dict[str, Any]:
    """Time ``batches`` batches (after one untimed) of the training loader with ``workers`` processes."""
    loader = make_train_loader(str(shard_dir), batch_size, crop_s, num_workers=workers, seed=0,
                               samples_per_epoch=(batches + 1 + workers) * batch_size, shuffle_buffer=64, rank=0,
                               world_size=1)
    it = iter(loader)
    next(it)  # start-up: workers spawn, shuffle buffers fill
    audio_s = 0.0
    by_rate: dict[int, float] = {}
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        seconds = (batch["lengths"].double() / batch["sample_rate"].double()).tolist()
        audio_s += sum(seconds)
        for sr, s in zip(batch["sample_rate"].tolist(), seconds):
            by_rate[int(sr)] = by_rate.get(int(sr), 0.0) + s
    wall = time.perf_counter() - t0
    del it, loader  # stop the workers before the next measurement
    return {"workers": workers, "batches": batches, "audio_s": audio_s, "wall_s": wall,
            "audio_s_per_s": audio_s / wall, "audio_s_per_s_per_worker": audio_s / wall / max(1, workers),
            "audio_s_by_rate": {str(k): v for k, v in sorted(by_rate.items())}}


def write_noise_wavs(folder: Path, files: int, minutes: float, rates: tuple[int, ...] = (16000, 48000, 96000)
                     ) -> float:
    """``files`` PCM_16 WAVs of white noise at -26 dBFS, written in 60 s blocks; returns their hours of audio."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    seconds = 0.0
    for i in range(files):
        rate = rates[i % len(rates)]
        total = int(minutes * 60 * rate)
        with sf.SoundFile(folder / f"rec{i:03d}.wav", "w", rate, 1, subtype="PCM_16") as fh:
            for start in range(0, total, 60 * rate):
                n = min(60 * rate, total - start)
                fh.write(np.clip(rng.standard_normal(n) * 0.05, -1, 1).astype(np.float32))
        seconds += total / rate
    return seconds / 3600.0


def bench_sharding(tmp: Path, files: int, minutes: float, workers: int) -> dict[str, Any]:
    """Shard freshly written WAVs; hours of audio per wall minute."""
    # lazy: data_tools.shard (+30 ms: soxr, xml) would load with every `a2v-het` command, --help too
    from data_tools.shard import ShardOptions, shard_folder

    hours = write_noise_wavs(tmp / "wav", files, minutes)
    t0 = time.perf_counter()
    result = shard_folder(tmp / "wav", tmp / "wav-shards", ShardOptions(workers=workers, progress=False,
                                                                       command="a2v-het bench data"))
    wall = time.perf_counter() - t0
    if result.exit_code != 0:
        raise RuntimeError(f"sharding failed: {result.report}")
    return {"files": files, "minutes_per_file": minutes, "workers": workers, "hours": hours, "wall_s": wall,
            "hours_per_minute": hours / (wall / 60.0), "x_real_time": hours * 3600.0 / wall,
            "shards": result.report["output"]["shards"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run both measurements; prints a table (or JSON with ``--json``) and returns the result dict."""
    # lazy: data_tools.synth (+80 ms: scipy.signal) would load with every `a2v-het` command, --help too
    from data_tools.synth import write_synth_shards

    rates = _int_list(args.rates)
    # other processes on the CPU slow every figure here: the 1-minute load average before and after says how busy
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="a2v-bench-data-", dir=args.tmp_dir) as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        write_synth_shards(tmp / "synth", "basic", args.clips, sample_rates=rates, duration_s=args.clip_s,
                           target_shard_bytes=32 * 2**20, workers=2, progress=False, command="a2v-het bench data")
        synth_s = time.perf_counter() - t0
        loader_rows = [bench_loader(tmp / "synth", w, args.batches, args.batch_size, args.crop_s)
                       for w in _int_list(args.workers)]
        sharding = bench_sharding(tmp, args.shard_files, args.shard_minutes, args.shard_workers)
    result = {
        "machine": {**describe_machine("cpu"), "load_avg_1m": [load_before, os.getloadavg()[0]]},
        "settings": {"clips": args.clips, "clip_s": args.clip_s, "rates": rates, "crop_s": args.crop_s,
                     "batch_size": args.batch_size, "batches": args.batches, "synth_wall_s": synth_s,
                     "flac": "PCM_16"},
        "loader": loader_rows,
        "sharding": sharding,
    }
    print(json.dumps(result, indent=2) if getattr(args, "json", False) else format_table(result))
    return result


def _machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    load = m.get("load_avg_1m") or [float("nan")] * 2
    return (f"CPU {m['cpu']}; {m['cpu_cores']} cores; torch {m['torch']}; python {m['python']}; "
            f"1-min load average {load[0]:.1f} before, {load[1]:.1f} after")


def format_table(result: dict[str, Any]) -> str:
    """Plain text: machine, loader rows, the sharding rate."""
    s = result["settings"]
    lines = [_machine_line(result),
             f"loader: {s['clips']} synthetic clips of {s['clip_s']:g} s at {','.join(map(str, s['rates']))} Hz, "
             f"FLAC {s['flac']}; batches of {s['batch_size']}, crop {s['crop_s']:g} s, {s['batches']} timed batches",
             f"{'workers':>7} {'audio s':>9} {'wall s':>8} {'x real time':>12} {'per worker':>11}"]
    for r in result["loader"]:
        lines.append(f"{r['workers']:>7} {r['audio_s']:>9.0f} {r['wall_s']:>8.2f} {r['audio_s_per_s']:>12.0f} "
                     f"{r['audio_s_per_s_per_worker']:>11.0f}")
    sh = result["sharding"]
    lines.append(f"sharding: {sh['files']} WAV x {sh['minutes_per_file']:g} min (16/48/96 kHz noise) = "
                 f"{sh['hours']:.2f} h in {sh['wall_s']:.1f} s with {sh['workers']} workers: "
                 f"{sh['hours_per_minute']:.2f} h of audio per minute ({sh['x_real_time']:.0f}x real time)")
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    """Markdown section for BENCHMARKS.md."""
    s, sh = result["settings"], result["sharding"]
    out = [f"**Machine:** {_machine_line(result)}.", "",
           f"Loader (`make_train_loader`, shard -> batch): {s['clips']} synthetic clips of {s['clip_s']:g} s at "
           f"{', '.join(f'{r / 1000:g}' for r in s['rates'])} kHz (FLAC {s['flac']}), batches of {s['batch_size']}, "
           f"crop {s['crop_s']:g} s, {s['batches']} timed batches after one untimed.", "",
           "| workers | audio s | wall s | audio s / s (x real time) | per worker |", "|---:|---:|---:|---:|---:|"]
    out += [f"| {r['workers']} | {r['audio_s']:.0f} | {r['wall_s']:.2f} | {r['audio_s_per_s']:.0f} | "
            f"{r['audio_s_per_s_per_worker']:.0f} |" for r in result["loader"]]
    out += ["", f"Sharding (`python -m data_tools shard`, 10 s windows, check pass included): {sh['files']} WAV files "
                f"x {sh['minutes_per_file']:g} min of 16/48/96 kHz noise ({sh['hours']:.2f} h) in {sh['wall_s']:.1f} s "
                f"with {sh['workers']} workers: **{sh['hours_per_minute']:.2f} h of audio per minute** "
                f"({sh['x_real_time']:.0f}x real time)."]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Stand-alone entry (``python -m a2v_het.bench.data``) until the CLI wires it in."""
    parser = argparse.ArgumentParser(prog="a2v-het bench data", description=__doc__.split("\n")[0])
    add_args(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
