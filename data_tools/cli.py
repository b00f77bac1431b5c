"""``python -m data_tools <command>``: tools that write shard folders (format ``a2v-het-shards/1``).

    python -m data_tools shard IN_DIR OUT_DIR [--window-s 10] [--split 0.8,0.1,0.1] [--annotations table.csv] ...
    python -m data_tools annotations IN... --format raven|audacity|sonic-visualiser|csv --out table.csv
    python -m data_tools inspect DIR [--png out.png] [--json]
    python -m data_tools synth OUT_DIR [--preset basic|field] [--clips N]
    python -m data_tools synth-calls OUT_DIR [--recordings N]   one labelled clip per synthetic call (a probe set)

Exit status: 0 success; 2 usage error (bad option or input that stops the run); 3 done, but some input was skipped
(listed in OUT_DIR/report.txt for ``shard``, on stderr for ``annotations``); 1 ``shard`` could not write some shards
(rerun it).

Each subcommand is registered by an ``_add_<command>(subparsers)`` function that builds its parser and sets
``func`` to the function running it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Callable, Sequence

from a2v_het.data.manifest import SPLITS

from data_tools.annotations import DEFAULT_EMPTY_LABEL, FORMATS, import_annotations, load_class_map, write_table
from data_tools.grouping import GROUP_BY, parse_split
from data_tools.inspect_shards import format_summary, inspect_folder, plot_summary
from data_tools.shard import CHANNEL_MODES, ShardOptions, ShardUsageError, format_report, shard_folder
from data_tools.shard_writer import DEFAULT_TARGET_SHARD_BYTES
from data_tools.sources import TAILS
from data_tools.synth import (DEFAULT_SAMPLE_RATES, PRESETS, parse_sample_rates, preset_sample_rates,
                              write_synth_shards, write_synthetic_calls)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _sample_rates(text: str) -> list[int]:
    try:
        return parse_sample_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_writer_options(parser: argparse.ArgumentParser) -> None:
    """Options every shard-writing subcommand shares."""
    parser.add_argument("--shard-mb", "--shard-size-mb", dest="shard_size_mb", type=_positive_float,
                        default=DEFAULT_TARGET_SHARD_BYTES / 2**20,
                        help="close a shard once it reaches this many MiB (default %(default)g)")
    parser.add_argument("--pcm", choices=("16", "24"), default="16", help="FLAC sample format in bits (default 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_synth(args: argparse.Namespace, command: str) -> int:
    manifest = write_synth_shards(
        args.out_dir,
        args.preset,
        args.clips,
        sample_rates=args.sample_rates or preset_sample_rates(args.preset),
        duration_s=args.duration,
        seed=args.seed,
        split=args.split,
        name=args.name,
        target_shard_bytes=int(args.shard_size_mb * 2**20),
        subtype=f"PCM_{args.pcm}",
        overwrite=args.overwrite,
        workers=args.workers,
        progress=False if args.quiet else None,
        command=command,
    )
    print(manifest)
    return 0


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="synthetic bioacoustic clips with ground-truth events",
        description="Write synthetic clips (calls over backgrounds, one sample rate per clip) as shards with exact "
                    "events.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="shard folder to write")
    parser.add_argument("--preset", choices=PRESETS, default="basic",
                        help="basic: clean non-overlapping bursts; field: all call types over noise, hum and wind; "
                             "field_hard: calls 10-30 dB below wind and rain, overlapping, wide harmonic stacks; "
                             "ultrasonic: field plus bat-like FM pulse trains (2-8 ms sweeps up to 130 kHz)")
    parser.add_argument("--clips", type=_positive_int, default=1000, help="number of clips (default %(default)s)")
    parser.add_argument("--duration", type=_positive_float, default=3.0, help="seconds per clip (default %(default)s)")
    parser.add_argument("--sample-rates", type=_sample_rates, default=None,
                        help="comma-separated rates in Hz, one drawn per clip (default "
                             f"{','.join(map(str, DEFAULT_SAMPLE_RATES))}; for ultrasonic "
                             f"{','.join(map(str, preset_sample_rates('ultrasonic')))})")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split to write (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same arguments give identical shards")
    parser.add_argument("--name", default=None, help="shard name prefix (default synth-PRESET)")
    parser.add_argument("--workers", type=_positive_int, default=min(8, os.cpu_count() or 1),
                        help="processes synthesising clips (default %(default)s); the output does not depend on it")
    _add_writer_options(parser)
    parser.set_defaults(func=_run_synth)


def _optional_split(text: str) -> tuple[float, float, float]:
    try:
        return parse_split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _run_shard(args: argparse.Namespace, command: str) -> int:
    options = ShardOptions(
        window_s=args.window_s, hop_s=args.hop_s, tail=args.tail, channels=args.channels, max_sr=args.max_sr,
        pcm=args.pcm, shard_bytes=max(1, int(args.shard_size_mb * 2**20)), name=args.name, group_by=args.group_by,
        path_regex=args.path_regex, split=args.split, split_seed=args.split_seed, annotations=args.annotations,
        workers=args.workers, overwrite=args.overwrite, progress=False if args.quiet else None, command=command)
    try:
        result = shard_folder(args.in_dir, args.out_dir, options)
    except ShardUsageError as exc:
        print(f"python -m data_tools shard: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(result.report), end="")
    if result.manifest is not None:
        print(result.manifest)
    return result.exit_code


def _add_shard(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "shard",
        help="cut field recordings into windows and write them as shards",
        description="Cut every audio file under IN_DIR (any rate, any channel count) into fixed windows at its own "
                    "sample rate and write FLAC + JSON samples into tar shards with a manifest. Bad files are "
                    "skipped and listed in OUT_DIR/report.txt (exit status 3); a rerun resumes where a run stopped "
                    "and gives the same shards.",
    )
    parser.add_argument("in_dir", metavar="IN_DIR", help="folder of recordings (searched recursively)")
    parser.add_argument("out_dir", metavar="OUT_DIR", help="shard folder to write (created; nothing is written "
                                                           "outside it)")
    parser.add_argument("--window-s", type=_positive_float, default=10.0, help="window length in s (default 10)")
    parser.add_argument("--hop-s", type=_positive_float, default=None,
                        help="window start every HOP s (default: the window length, no overlap; >= 0.001)")
    parser.add_argument("--tail", choices=TAILS, default="keep",
                        help="audio after the last full window: keep a shorter window (default), pad it with zeros "
                             "(meta.pad_s says how much), or drop it")
    parser.add_argument("--channels", choices=CHANNEL_MODES, default="split",
                        help="multi-channel files: split = one sample per channel (default), mix = mean of channels")
    parser.add_argument("--max-sr", type=_positive_int, default=None, metavar="HZ",
                        help="resample (soxr, anti-aliased) files above HZ down to HZ; default: keep every rate")
    parser.add_argument("--pcm", choices=("auto", "16", "24"), default="auto",
                        help="FLAC bits: auto = 24 for 24/32-bit and float sources, 16 otherwise (default)")
    parser.add_argument("--shard-mb", "--shard-size-mb", dest="shard_size_mb", type=_positive_float,
                        default=DEFAULT_TARGET_SHARD_BYTES / 2**20,
                        help="shard size in MiB of uncompressed PCM (FLAC shards come out 30-60%% smaller; "
                             "default %(default)g)")
    parser.add_argument("--name", default=None, help="shard name prefix (default: IN_DIR's name, sanitised)")
    parser.add_argument("--group-by", choices=GROUP_BY, default="recording",
                        help="what may not straddle splits: the recording (default), or the recorder/site/date "
                             "named group of --path-regex (or a column of that name in the annotation table)")
    parser.add_argument("--path-regex", default=None, metavar="REGEX",
                        help="regex searched in each file's path relative to IN_DIR; named groups become metadata, "
                             r"e.g. '(?P<site>[^/]+)/(?P<recorder>[^/]+)/(?P<date>\d{8})_'")
    parser.add_argument("--split", type=_optional_split, default=None, metavar="TRAIN,VAL,TEST",
                        help="fractions of groups per split, e.g. 0.8,0.1,0.1 (hash of the group name); default: "
                             "one split named 'all'")
    parser.add_argument("--split-seed", type=int, default=0, help="salt of the split hash (default 0)")
    parser.add_argument("--annotations", default=None, metavar="TABLE.csv",
                        help="normalised table from `python -m data_tools annotations`; windows of files in it are "
                             "labelled and carry their events")
    parser.add_argument("--workers", type=_positive_int, default=min(4, os.cpu_count() or 1),
                        help="processes (default %(default)s); the output does not depend on it")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: remove an earlier data set in OUT_DIR first (default: resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_run_shard)


def _run_annotations(args: argparse.Namespace, command: str) -> int:
    out = os.path.abspath(args.out)
    if any(os.path.abspath(p) == out for p in args.inputs):
        raise ValueError(f"--out {args.out} is one of the inputs")
    class_map = load_class_map(args.class_map) if args.class_map else None
    result = import_annotations(args.inputs, args.format, audio_dir=args.audio_dir, label_column=args.label_column,
                                class_map=class_map, empty_label=args.empty_label)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    if result.errors and args.on_error == "fail":
        print(f"python -m data_tools annotations: {len(result.errors)} bad row(s); no table written "
              "(--on-error skip writes the good rows)", file=sys.stderr)
        return 2
    events = write_table(result.annotations, args.out)
    files = len({a.file for a in result.annotations})
    dropped = f", {result.dropped_by_map} dropped by the class map" if result.dropped_by_map else ""
    skipped = f", {len(result.errors)} bad row(s) skipped" if result.errors else ""
    print(f"{events} events of {files} file(s){dropped}{skipped} -> {args.out}")
    return 3 if result.errors else 0


def _add_annotations(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "annotations",
        help="import Raven / Audacity / Sonic Visualiser / CSV annotations into one table",
        description="Read annotation files and write the normalised table (file, onset_s, offset_s, label, low_hz, "
                    "high_hz, channel) that `shard --annotations` uses. Every bad row is reported with its file "
                    "and row.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="annotation files or folders of them")
    parser.add_argument("--format", required=True, choices=FORMATS, help="format of the inputs")
    parser.add_argument("--out", required=True, metavar="TABLE.csv", help="table to write (atomically)")
    parser.add_argument("--audio-dir", default=None, metavar="DIR",
                        help="folder of the recordings (usually shard's IN_DIR): files are named by their path in "
                             "it, checked against their duration, and Sonic Visualiser frames get their true rate. "
                             "Audio next to the annotation file is always found")
    parser.add_argument("--label-column", default=None, metavar="NAME",
                        help="Raven/CSV column holding the label (Raven default: the first of Annotation, Label, "
                             "Species, Class, Call Type, Sound Type)")
    parser.add_argument("--class-map", default=None, metavar="MAP",
                        help="YAML mapping or CSV (label,class): raw label -> class; null/empty drops the label; "
                             "labels not in the map are errors")
    parser.add_argument("--empty-label", default=DEFAULT_EMPTY_LABEL,
                        help="label for events that have none (default %(default)s)")
    parser.add_argument("--on-error", choices=("skip", "fail"), default="fail",
                        help="bad rows: fail = write nothing, exit 2 (default); skip = write the good rows, exit 3")
    parser.set_defaults(func=_run_annotations)


def _run_inspect(args: argparse.Namespace, command: str) -> int:
    summary = inspect_folder(args.dir, verify=args.verify)
    if args.png:
        plot_summary(summary, args.png)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary), end="\n" if args.json else "")
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="hours by rate and split, events by class of a shard folder")
    parser.add_argument("dir", metavar="DIR", help="shard folder with manifest.json")
    parser.add_argument("--png", default=None, metavar="OUT.png", help="also draw both as a PNG (written atomically)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument("--verify", action="store_true", help="check every shard's sha256 against the manifest")
    parser.set_defaults(func=_run_inspect)


def _run_synth_calls(args: argparse.Namespace, command: str) -> int:  # noqa: ARG001

    print(write_synthetic_calls(args.out_dir, args.recordings, args.seed, args.sample_rates, args.duration))
    return 0


def _add_synth_calls(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth-calls",
        help="a call-type classification set: one labelled FLAC clip per call of synthetic field recordings",
        description="Cut every call of synthetic field recordings into its own FLAC clip (OUT_DIR/audio) and write "
                    "OUT_DIR/labels.csv (file, label = call type, group = recording) for `a2v-het probe --labels`.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write (audio/ and labels.csv)")
    parser.add_argument("--recordings", type=_positive_int, default=100,
                        help="synthetic field recordings to cut (default %(default)s)")
    parser.add_argument("--duration", type=_positive_float, default=3.0,
                        help="seconds per recording (default %(default)s)")
    parser.add_argument("--sample-rates", type=_sample_rates, default=list(DEFAULT_SAMPLE_RATES),
                        help="comma-separated rates in Hz, one drawn per recording (default "
                             f"{','.join(map(str, DEFAULT_SAMPLE_RATES))})")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same arguments give identical clips")
    parser.set_defaults(func=_run_synth_calls)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_shard, _add_annotations, _add_inspect,
                                                                   _add_synth, _add_synth_calls]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_tools", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns the exit status (2 with a one-line message for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "data_tools", *argv])
    try:
        return args.func(args, command)
    except (ValueError, OSError) as exc:  # bad input, existing data set, unwritable folder: no traceback needed
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
