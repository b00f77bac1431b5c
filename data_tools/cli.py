"""``python -m data_tools <command>``: tools that write shard folders (format ``a2v-het-shards/1``).

Each subcommand is registered by an ``_add_<command>(subparsers)`` function that builds its parser and sets
``func`` to the function running it; adding ``shard``, ``annotations`` or ``inspect`` means one more such pair.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Callable, Sequence

from a2v_het.data.manifest import SPLITS

from data_tools.shard_writer import DEFAULT_TARGET_SHARD_BYTES


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
    from data_tools.synth import parse_sample_rates

    try:
        return parse_sample_rates(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_writer_options(parser: argparse.ArgumentParser) -> None:
    """Options every shard-writing subcommand shares."""
    parser.add_argument("--shard-size-mb", type=_positive_float, default=DEFAULT_TARGET_SHARD_BYTES / 2**20,
                        help="close a shard once it reaches this many MiB (default %(default)g)")
    parser.add_argument("--pcm", choices=("16", "24"), default="16", help="FLAC sample format in bits (default 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT_DIR")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_synth(args: argparse.Namespace, command: str) -> int:
    from data_tools.synth import write_synth_shards

    manifest = write_synth_shards(
        args.out_dir,
        args.preset,
        args.clips,
        sample_rates=args.sample_rates,
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
    from data_tools.synth import DEFAULT_SAMPLE_RATES, PRESETS

    parser = subparsers.add_parser(
        "synth",
        help="synthetic bioacoustic clips with ground-truth events",
        description="Write synthetic clips (calls over backgrounds, one sample rate per clip) as shards with exact "
                    "events.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="shard folder to write")
    parser.add_argument("--preset", choices=PRESETS, default="basic",
                        help="basic: clean non-overlapping bursts; field: all call types over noise, hum and wind")
    parser.add_argument("--clips", type=_positive_int, default=1000, help="number of clips (default %(default)s)")
    parser.add_argument("--duration", type=_positive_float, default=3.0, help="seconds per clip (default %(default)s)")
    parser.add_argument("--sample-rates", type=_sample_rates, default=list(DEFAULT_SAMPLE_RATES),
                        help="comma-separated rates in Hz, one drawn per clip (default "
                             f"{','.join(map(str, DEFAULT_SAMPLE_RATES))})")
    parser.add_argument("--split", choices=SPLITS, default="train", help="split to write (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same arguments give identical shards")
    parser.add_argument("--name", default=None, help="shard name prefix (default synth-PRESET)")
    parser.add_argument("--workers", type=_positive_int, default=min(8, os.cpu_count() or 1),
                        help="processes synthesising clips (default %(default)s); the output does not depend on it")
    _add_writer_options(parser)
    parser.set_defaults(func=_run_synth)


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_synth]


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
