"""Source recordings: finding them, checking them block by block, planning windows, reading windows.

Nothing here holds a whole recording in memory: :func:`scan_file` reads ``SCAN_BLOCK_FRAMES`` frames at a time and
:func:`read_window` reads one window (plus a few milliseconds of context when resampling), so a 12 h 96 kHz file
costs what one 10 s window costs.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import soundfile as sf
import soxr

MIN_SAMPLE_RATE = 1000
"""Hz; anything lower is a broken header rather than a recording (the spec names 8 kHz as the lowest real rate)."""
MAX_SAMPLE_RATE = 1_000_000
"""Hz; above this no microphone exists, the header is broken."""
SCAN_BLOCK_FRAMES = 1 << 18
"""Frames per block when checking a file (about 2.7 s at 96 kHz; 8 MiB for 8 channels of float32)."""
RESAMPLE_CONTEXT_S = 0.01
"""Seconds of source read on each side of a window before resampling, so the window matches what resampling the
whole recording would give (soxr HQ needs about 2 ms; measured difference below 1e-6 with 2 ms)."""

# Extensions libsndfile reads (soundfile.available_formats() plus their usual aliases).
SOUNDFILE_EXTENSIONS = frozenset({
    ".wav", ".wave", ".bwf", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".snd",
    ".caf", ".w64", ".rf64", ".sd2", ".voc", ".htk", ".nist", ".sph", ".ircam", ".sf", ".paf", ".pvf", ".svx",
    ".8svx", ".xi", ".mat", ".mpc", ".avr", ".wve", ".sds",
})
# Audio extensions libsndfile cannot read: reported as unsupported rather than silently ignored.
UNSUPPORTED_AUDIO_EXTENSIONS = frozenset({
    ".m4a", ".mp4", ".aac", ".wma", ".ape", ".alac", ".wv", ".amr", ".mka", ".webm", ".3gp", ".dsf", ".dff", ".ac3",
})
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | UNSUPPORTED_AUDIO_EXTENSIONS
TAILS = ("keep", "pad", "drop")
_LOSSY_SUBTYPES = frozenset({"VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III"})
_HIGH_RES_SUBTYPES = frozenset({"PCM_24", "PCM_32", "FLOAT", "DOUBLE"})


class SourceReadError(RuntimeError):
    """A source file could not be read as it was when it was scanned (changed, vanished, short read)."""


@dataclass(frozen=True)
class SourceInfo:
    """A readable source recording, as checked by :func:`scan_file`.

    ``frames`` is the number of frames actually decoded (not the header's promise); ``clipped`` counts float
    samples beyond +-1.0 (they are clipped when written as PCM); ``size``/``mtime_ns`` identify the file version.
    """

    path: str
    size: int
    mtime_ns: int
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    clipped: int = 0

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SourceSkip:
    """A file that cannot be used, and why (one line, for ``report.json``)."""

    path: str
    size: int
    mtime_ns: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def scan_result_from_json(obj: dict[str, Any]) -> SourceInfo | SourceSkip:
    return SourceSkip(**obj) if "reason" in obj else SourceInfo(**obj)


# ---------------------------------------------------------------------------------------------------------------------
# Finding files.


def is_inside(path: Path, folder: Path) -> bool:
    """True when resolved ``path`` is ``folder`` or below it (both resolved, symlinks followed)."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def discover(root: str | os.PathLike, exclude: str | os.PathLike | None = None) -> tuple[list[str], dict[str, int]]:
    """Candidate audio files under ``root``.

    Hidden files and folders (``.name``, including macOS ``._name`` resource forks) are skipped, folder symlinks are
    not followed (no walking out of ``root`` or in circles), and ``exclude`` (the output folder, when it sits inside
    the input) is pruned.

    Returns: (relative POSIX paths of files with an audio extension, sorted; {extension: count} of other files).
    """
    root = Path(root)
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: list[str] = []
    ignored: dict[str, int] = {}
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (excluded is None or (here / d).resolve() != excluded))
        for name in files:
            if name.startswith("."):
                continue
            ext = Path(name).suffix.lower()
            if ext in AUDIO_EXTENSIONS:
                found.append((here / name).relative_to(root).as_posix())
            else:
                ignored[ext or "(none)"] = ignored.get(ext or "(none)", 0) + 1
    return sorted(found), dict(sorted(ignored.items()))


# ---------------------------------------------------------------------------------------------------------------------
# Checking files.


def _checks_values(subtype: str) -> bool:
    """Whether decoded samples can be non-finite or beyond +-1 (float and lossy formats); integer PCM cannot."""
    return subtype in ("FLOAT", "DOUBLE") or subtype in _LOSSY_SUBTYPES


def scan_file(root: str | os.PathLike, relpath: str, block_frames: int = SCAN_BLOCK_FRAMES
              ) -> SourceInfo | SourceSkip:
    """Open and decode ``root/relpath`` block by block; never raises for bad audio.

    Skipped (with the reason): empty files, formats libsndfile cannot open, sample rates outside
    [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz, files without frames, decoding errors, NaN/Inf samples, and files that
    decode to fewer frames than their header promises (truncated; not checked for lossy formats, whose headers
    only estimate). Memory: one block of ``block_frames`` frames.
    """
    path = Path(root) / relpath
    st = path.stat()

    def skip(reason: str) -> SourceSkip:
        return SourceSkip(relpath, st.st_size, st.st_mtime_ns, reason)

    ext = path.suffix.lower()
    if ext in UNSUPPORTED_AUDIO_EXTENSIONS:
        return skip(f"unsupported format {ext} (libsndfile cannot read it; convert it to FLAC or WAV)")
    if st.st_size == 0:
        return skip("empty file (0 bytes)")
    try:
        fh = sf.SoundFile(path)
    except Exception as exc:  # LibsndfileError, RuntimeError, TypeError: whatever libsndfile says is the reason
        return skip(f"cannot open as audio: {_one_line(exc)}")
    with fh:
        sample_rate, channels, header_frames = int(fh.samplerate), int(fh.channels), int(fh.frames)
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            return skip(f"sample rate {sample_rate} Hz is outside [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz")
        if channels < 1:
            return skip(f"{channels} channels")
        if header_frames == 0:
            return skip("zero-length: no audio frames")
        check = _checks_values(fh.subtype)
        frames = clipped = 0
        try:
            for block in fh.blocks(blocksize=block_frames, dtype="float32", always_2d=True):
                if check:
                    finite = np.isfinite(block)
                    if not finite.all():
                        row, col = np.argwhere(~finite)[0]
                        at = frames + int(row)
                        return skip(f"non-finite sample (NaN/Inf) at frame {at} ({at / sample_rate:.3f} s), "
                                    f"channel {int(col)}")
                    clipped += int(np.count_nonzero(np.abs(block) > 1.0))
                frames += block.shape[0]
        except Exception as exc:
            return skip(f"decoding failed after frame {frames} ({frames / sample_rate:.3f} s): {_one_line(exc)}")
        if frames == 0:
            return skip("zero-length: no audio frames could be decoded")
        if frames < header_frames and fh.subtype not in _LOSSY_SUBTYPES:
            return skip(f"truncated: header promises {header_frames} frames, only {frames} decode "
                        f"({frames / sample_rate:.3f} of {header_frames / sample_rate:.3f} s)")
        return SourceInfo(relpath, st.st_size, st.st_mtime_ns, sample_rate, channels, frames, fh.format, fh.subtype,
                          clipped)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def output_subtype(source_subtype: str, pcm: str) -> str:
    """FLAC sample format for a source: ``pcm`` "16"/"24", or "auto" = PCM_24 for 24/32-bit and float sources (their
    quiet passages would lose resolution in 16 bits), PCM_16 otherwise."""
    if pcm == "auto":
        return "PCM_24" if source_subtype in _HIGH_RES_SUBTYPES else "PCM_16"
    if pcm in ("16", "24"):
        return f"PCM_{pcm}"
    raise ValueError(f"pcm must be auto, 16 or 24, got {pcm!r}")


def output_rate(sample_rate: int, max_sr: int | None) -> int:
    """The rate a source is written at (Hz): its own, or ``max_sr`` when it is higher."""
    return sample_rate if max_sr is None or sample_rate <= max_sr else int(max_sr)


def resampled_frames(frames: int, rate_in: int, rate_out: int) -> int:
    """Frames available at ``rate_out`` from ``frames`` at ``rate_in``: floor, so every output frame has input."""
    return frames if rate_in == rate_out else frames * rate_out // rate_in


# ---------------------------------------------------------------------------------------------------------------------
# Windows.


@dataclass(frozen=True)
class WindowGrid:
    """Fixed windows over ``frames`` samples (all counts in samples at the output rate).

    Window i < ``full`` starts at ``i * hop`` and holds ``length`` samples; when ``tail`` > 0 a last window starts
    at ``full * hop`` with ``tail`` real samples followed by ``pad`` zeros (``pad`` = 0 for the ``keep`` policy).
    """

    frames: int
    length: int
    hop: int
    full: int
    tail: int
    pad: int

    @property
    def count(self) -> int:
        return self.full + (1 if self.tail > 0 else 0)

    def window(self, i: int) -> tuple[int, int, int]:
        """(start, real samples, padding samples) of window i."""
        if not 0 <= i < self.count:
            raise IndexError(f"window {i} of {self.count}")
        if i < self.full:
            return i * self.hop, self.length, 0
        return self.full * self.hop, self.tail, self.pad


def window_grid(frames: int, sample_rate: int, window_s: float, hop_s: float, tail: str) -> WindowGrid:
    """Plan windows of ``round(window_s * sample_rate)`` samples every ``round(hop_s * sample_rate)`` samples.

    Full windows start at 0, hop, 2 hop, ... while they fit. Samples after the last full window (and not in a gap
    when hop > window) form the tail, which ``tail`` decides: ``keep`` a shorter last window, ``pad`` it with
    zeros to the full length, or ``drop`` it. A recording shorter than one window is all tail.
    """
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    length = max(1, int(round(window_s * sample_rate)))
    hop = max(1, int(round(hop_s * sample_rate)))
    full = (frames - length) // hop + 1 if frames >= length else 0
    covered = (full - 1) * hop + length if full else 0
    start = full * hop
    rest = frames - start if covered < frames and start < frames else 0
    if tail == "drop" or rest == 0:
        return WindowGrid(frames, length, hop, full, 0, 0)
    return WindowGrid(frames, length, hop, full, rest, length - rest if tail == "pad" else 0)


# ---------------------------------------------------------------------------------------------------------------------
# Reading.


def read_window(fh: sf.SoundFile, start: int, length: int, rate_out: int) -> np.ndarray:
    """Frames ``[start, start + length)`` at ``rate_out`` Hz from an open source file: float32 (length, channels).

    At the file's own rate this is a seek and a read. Otherwise the window is resampled with soxr (HQ, anti-aliased)
    from a stretch of source that reaches ``RESAMPLE_CONTEXT_S`` beyond it on both sides and starts on a frame where
    the source and output sample grids coincide (multiples of rate_in / gcd), so window k of the output equals the
    same stretch of the whole resampled recording (to ~1e-7) whichever window or shard it is read for.
    Raises SourceReadError on a short read.
    """
    rate_in = int(fh.samplerate)
    if rate_out == rate_in:
        fh.seek(start)
        data = fh.read(length, dtype="float32", always_2d=True)
        if data.shape[0] != length:
            raise SourceReadError(f"short read: {data.shape[0]} of {length} frames at frame {start}")
        # float sources may exceed full scale (counted by the scan); PCM cannot hold it
        return np.clip(data, -1.0, 1.0, out=data)
    g = math.gcd(rate_in, rate_out)
    step_in, step_out = rate_in // g, rate_out // g  # step_in source frames <-> step_out output frames, exactly
    context = math.ceil(max(64, RESAMPLE_CONTEXT_S * rate_in) / step_in)
    first_block = max(0, start // step_out - context)
    begin = first_block * step_in
    end = min(fh.frames, (-(-(start + length) // step_out) + context) * step_in)
    fh.seek(begin)
    source = fh.read(end - begin, dtype="float32", always_2d=True)
    if source.shape[0] != end - begin:
        raise SourceReadError(f"short read: {source.shape[0]} of {end - begin} frames at frame {begin}")
    out = soxr.resample(source, rate_in, rate_out)
    offset = start - first_block * step_out
    window = out[offset : offset + length]
    if window.shape[0] != length:  # cannot happen for start + length <= resampled_frames(); a guard, not a policy
        raise SourceReadError(f"resampling gave {window.shape[0]} of {length} frames at output frame {start}")
    # Resampling can overshoot full-scale input by a little; PCM cannot hold it.
    return np.clip(window, -1.0, 1.0, out=np.ascontiguousarray(window, dtype=np.float32))


def iter_windows(fh: sf.SoundFile, grid: WindowGrid, first: int, stop: int, rate_out: int
                 ) -> Iterator[tuple[int, np.ndarray, int]]:
    """(start, audio float32 (length + pad, channels), pad) for windows ``first..stop-1`` of ``grid``."""
    for i in range(first, stop):
        start, real, pad = grid.window(i)
        audio = read_window(fh, start, real, rate_out)
        if pad:
            audio = np.concatenate([audio, np.zeros((pad, audio.shape[1]), dtype=np.float32)])
        yield start, audio, pad
