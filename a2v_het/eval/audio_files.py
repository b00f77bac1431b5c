"""Robust, resumable, parallel processing of many audio files (shared by ``a2v-het predict`` and ``a2v-het embed``).

- :func:`find_audio`: files and folders (searched recursively) -> a sorted list of (path, name); ``name`` is the
  output name (the path relative to the folder given, without suffix; a file given directly: its stem).
- :func:`audio_info` / :func:`read_windows`: soundfile, block-wise (only ``batch_size`` windows in memory), every
  failure turned into :class:`UnreadableAudio` with a one-line reason (not an audio file, empty, 0 samples,
  decoding error part-way). A WAV whose header promises more samples than the file holds (cut-off copy) is read up
  to the cut and reported as a warning.
- :func:`run_files`: the driver. Files are split over SLURM array tasks / processes by position in the sorted list
  (task ``i`` of ``N`` takes files ``k`` with ``k % N == i``), so each file is processed exactly once while every
  task sees the same inputs. A finished file has a done record ``OUT/.a2v-state/done/<name>.json`` (written
  atomically after its outputs, also atomic): a rerun or a requeued task skips it unless the audio file changed
  (size or mtime). Failures are recorded in ``OUT/.a2v-state/failed/`` and retried by the next run.
  ``OUT/report.json`` (every file: done / failed with its reason / pending) is rebuilt under a file lock by each task
  when it ends, together with the command's merged table (events.csv, index.csv).
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import multiprocessing as mp
import os
import signal
import struct
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from a2v_het.config import atomic_write_text

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".w64", ".rf64",
                  ".caf", ".au", ".snd")
STATE_DIR = ".a2v-state"
EXIT_SOME_FAILED = 3


class InputError(ValueError):
    """An input path that does not exist (one-line message for the command line)."""


class UnreadableAudio(Exception):
    """A file that cannot be (fully) decoded; ``str(e)`` is the reason written to the report."""


@dataclass(frozen=True)
class AudioInfo:
    """sample_rate Hz, frames (samples per channel), channels, duration_s = frames / sample_rate; warning: a
    problem that did not stop reading (e.g. a cut-off WAV), else None."""

    sample_rate: int
    frames: int
    channels: int
    duration_s: float
    warning: str | None = None


def find_audio(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """Files given directly (any suffix) and the audio files under folders (suffix in :data:`AUDIO_SUFFIXES`,
    case-insensitive, hidden files skipped), each once, sorted by name. Raises InputError for a missing path."""
    found: dict[Path, str] = {}
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"input {str(p)!r} does not exist")
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                rel = f.relative_to(p)
                if (f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
                        and not any(part.startswith(".") for part in rel.parts)):
                    found.setdefault(f.resolve(), rel.with_suffix("").as_posix())
        else:
            found.setdefault(p.resolve(), p.stem)
    counts: dict[str, int] = {}
    for name in found.values():
        counts[name] = counts.get(name, 0) + 1
    items = []
    for path, name in found.items():
        if counts[name] > 1:  # same name from two places: make it unique with the path's hash
            name = f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        items.append((path, name))
    return sorted(items, key=lambda t: (t[1], str(t[0])))


def _wav_declared_frames(path: Path, block_align: int) -> int | None:
    """Frames the RIFF/WAVE header's data chunk declares (None when not a plain RIFF WAV or size unknown)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while True:
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    return None if size in (0, 0xFFFFFFFF) else size // max(block_align, 1)
                fh.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def _reason(e: Exception, path: Path) -> str:
    msg = str(e).replace(f"Error opening {str(path)!r}: ", "").strip()
    return msg.splitlines()[0] if msg else type(e).__name__


def audio_info(path: str | Path) -> AudioInfo:
    """Header of an audio file; raises UnreadableAudio (reason) for a non-file, an empty file, an unknown format
    or 0 samples."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableAudio("not a file")
    if path.stat().st_size == 0:
        raise UnreadableAudio("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile's errors: Format not recognised, System error, ...
        raise UnreadableAudio(f"cannot open: {_reason(e, path)}") from None
    sr, frames, channels = int(info.samplerate), int(info.frames), int(info.channels)
    if frames <= 0 or sr <= 0 or channels <= 0:
        raise UnreadableAudio(f"no audio ({frames} samples at {sr} Hz)")
    warning = None
    if path.suffix.lower() == ".wav" or info.format == "WAV":
        bits = {"PCM_16": 16, "PCM_24": 24, "PCM_32": 32, "FLOAT": 32, "DOUBLE": 64, "PCM_U8": 8}.get(info.subtype)
        if bits:
            declared = _wav_declared_frames(path, channels * bits // 8)
            if declared is not None and declared > frames:
                warning = (f"truncated: the header declares {declared} samples ({declared / sr:.2f} s), the file "
                           f"holds {frames} ({frames / sr:.2f} s); read up to the cut")
    return AudioInfo(sr, frames, channels, frames / sr, warning)


def window_starts(n_samples: int, win: int, hop: int) -> list[int]:
    """Window starts (samples) covering [0, n_samples) every ``hop``; the last window may run past the end
    (zero-padded); a recording shorter than one window is one (padded) window."""
    if n_samples <= win:
        return [0]
    starts = list(range(0, n_samples - win + 1, hop))
    if starts[-1] + win < n_samples:
        starts.append(starts[-1] + hop)
    return starts


def read_windows(path: str | Path, info: AudioInfo, starts: Sequence[int], win: int, batch_size: int
                 ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
    """Yield (window starts, wave (b, channels, win) float32 zero-padded, lengths (b,) valid samples) for
    ``batch_size`` windows at a time; ``starts`` must increase. The file is decoded once, front to back, never
    seeked (a FLAC without a seek table would be decoded from its start at every seek: quadratic in its length);
    memory: one window plus one batch. Raises UnreadableAudio (with the time reached) when decoding fails."""
    path = Path(path)
    sr, c = info.sample_rate, info.channels
    try:
        fh = sf.SoundFile(str(path))
    except Exception as e:
        raise UnreadableAudio(f"cannot open: {_reason(e, path)}") from None
    buf = np.zeros((0, c), np.float32)  # samples [pos - len(buf), pos) of the file
    pos = 0
    with fh:
        for i in range(0, len(starts), batch_size):
            chunk = list(starts[i:i + batch_size])
            wave = np.zeros((len(chunk), c, win), np.float32)
            lengths = np.zeros(len(chunk), np.int64)
            for j, s in enumerate(chunk):
                end = min(s + win, info.frames)
                try:
                    if s > pos:  # a gap between windows (hop > window): decode and drop it
                        while pos < s:
                            n = len(fh.read(min(s - pos, 1 << 20), dtype="float32", always_2d=True))
                            if n == 0:
                                break
                            pos += n
                        buf = np.zeros((0, c), np.float32)
                    if end > pos:
                        x = fh.read(end - pos, dtype="float32", always_2d=True)
                        buf = np.concatenate([buf, x]) if len(buf) else x
                        pos += len(x)
                except Exception as e:
                    raise UnreadableAudio(f"decoding failed at {max(s, pos) / sr:.2f} s: {_reason(e, path)}") from None
                first = s - (pos - len(buf))
                seg = buf[max(first, 0):]
                if not np.isfinite(seg).all():
                    raise UnreadableAudio(f"non-finite samples at {s / sr:.2f} s")
                seg = seg[: win]
                wave[j, :, : len(seg)] = seg.T
                lengths[j] = len(seg)
                nxt = chunk[j + 1] if j + 1 < len(chunk) else (starts[i + batch_size] if i + batch_size < len(starts)
                                                                 else pos)
                buf = buf[max(0, nxt - (pos - len(buf))):]  # keep only what the next window needs
            yield chunk, wave, lengths


# ------------------------------------------------------------------------------------------------ the driver


def _stat_key(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def state_path(out: Path, kind: str, name: str) -> Path:
    return out / STATE_DIR / kind / f"{name}.json"


def read_record(out: Path, kind: str, name: str) -> dict[str, Any] | None:
    p = state_path(out, kind, name)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(out: Path, path: Path, name: str) -> bool:
    """A done record exists for ``name`` and the audio file is unchanged since (size, mtime)."""
    rec = read_record(out, "done", name)
    if rec is None:
        return False
    try:
        return rec.get("source") == _stat_key(path)
    except OSError:
        return False


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Exclusive lock (flock on OUT/.a2v-state/lock) shared by every task writing into ``out``."""
    p = out / STATE_DIR / "lock"
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class FileProcessor(abc.ABC):
    """What a command does to one file. Subclasses implement :meth:`process` (write the file's outputs atomically
    under ``out``; return a JSON-able record) and may override :meth:`merge` (the folder's combined outputs from
    all done records, in file order). Built once per process by ``factory(**spec)`` (picklable, for workers)."""

    @abc.abstractmethod
    def process(self, path: Path, name: str, info: AudioInfo, out: Path, bar: tqdm | None) -> dict[str, Any]:
        """Write the outputs of one file under ``out``; return its record (JSON-able)."""

    @staticmethod
    def merge(out: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {}


def process_one(processor: FileProcessor, path: Path, name: str, out: Path, bar: tqdm | None = None
                ) -> dict[str, Any]:
    """Process one file and record the outcome: {"file", "name", "status": done | failed, "reason"?, ...}."""
    t0 = time.perf_counter()
    try:
        source = _stat_key(path)
        info = audio_info(path)
        rec = processor.process(path, name, info, out, bar)
    except UnreadableAudio as e:
        rec = {"file": str(path), "name": name, "status": "failed", "reason": str(e)}
        atomic_write_text(state_path(out, "failed", name), json.dumps(rec) + "\n")
        return rec
    except FileNotFoundError:
        rec = {"file": str(path), "name": name, "status": "failed", "reason": "file disappeared"}
        atomic_write_text(state_path(out, "failed", name), json.dumps(rec) + "\n")
        return rec
    rec = {"file": str(path), "name": name, "status": "done", "source": source, "sample_rate": info.sample_rate,
           "channels": info.channels, "duration_s": info.duration_s, "seconds": time.perf_counter() - t0,
           "task": os.environ.get("SLURM_ARRAY_TASK_ID", ""), "pid": os.getpid(),
           **({"warning": info.warning} if info.warning else {}), **rec}
    atomic_write_text(state_path(out, "done", name), json.dumps(rec) + "\n")
    failed = state_path(out, "failed", name)
    if failed.exists():
        failed.unlink()
    return rec


_WORKER: dict[str, Any] = {}


def _worker_init(factory: Callable[..., FileProcessor], spec: dict[str, Any], threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    _WORKER["processor"] = factory(**spec)


def _worker_run(path: Path, name: str, out: Path) -> dict[str, Any]:
    return process_one(_WORKER["processor"], path, name, out, None)


def shard_index_from_env(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """(index, count): explicit values, else SLURM's array variables, else (0, 1)."""
    if shard_count is None:
        env_count = os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if env_count and shard_index is None:
            lo = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
            return int(os.environ["SLURM_ARRAY_TASK_ID"]) - lo, int(env_count)
        shard_count = 1
    shard_index = 0 if shard_index is None else shard_index
    if not 0 <= shard_index < shard_count:
        raise InputError(f"shard index {shard_index} is not in [0, {shard_count})")
    return shard_index, shard_count


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run_files(factory: Callable[..., FileProcessor], spec: dict[str, Any], inputs: Sequence[str | Path],
              out: str | Path, workers: int = 1, shard_index: int | None = None, shard_count: int | None = None,
              progress: bool = True, desc: str = "files", settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Process this task's share of ``inputs`` into ``out`` (see the module docstring).

    Returns {"files": all files, "mine": this task's, "done": processed now, "skipped": finished before,
    "failed": [records], "warnings": [records], "report": path, "exit_code": 0 or 3, **merged outputs}.
    ``workers`` > 1 runs that many processes (spawned, each loading the model once, torch threads split).
    """
    out = Path(out)
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # scancel / a requeue sends SIGTERM: unwind, so that the file being written leaves no temporary behind
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    items = find_audio(inputs)
    index, count = shard_index_from_env(shard_index, shard_count)
    mine = [it for k, it in enumerate(items) if k % count == index]
    out.mkdir(parents=True, exist_ok=True)
    todo = [(p, n) for p, n in mine if not is_done(out, p, n)]
    skipped = len(mine) - len(todo)
    if skipped:
        print(f"[a2v-het] {skipped} of {len(mine)} files already done in {out}: skipped", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    processor = factory(**spec) if todo and workers <= 1 else None  # before the bar: its errors are one line
    bar = tqdm(total=len(todo), desc=desc, unit="file", disable=not progress, file=sys.stderr)

    def finished(rec: dict[str, Any]) -> None:
        results.append(rec)
        bar.update(1)
        if not progress and rec["status"] == "done":  # a log line per file where there is no bar (batch jobs)
            print(f"[a2v-het] done {rec['name']}: {rec['duration_s']:.1f} s of audio in {rec['seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    if workers <= 1 or len(todo) <= 1:
        if processor is None and todo:
            processor = factory(**spec)
        for p, n in todo:
            finished(process_one(processor, p, n, out, None))
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(factory, spec, threads)) as pool:
            futures = [pool.submit(_worker_run, p, n, out) for p, n in todo]
            for fut in as_completed(futures):
                finished(fut.result())
    bar.close()
    failed = [r for r in results if r["status"] == "failed"]
    for r in failed:
        print(f"[a2v-het] skipped {r['file']}: {r['reason']}", file=sys.stderr, flush=True)
    warnings = [r for r in results if r.get("warning")]
    for r in warnings:
        print(f"[a2v-het] warning {r['file']}: {r['warning']}", file=sys.stderr, flush=True)
    merged = finalize(factory, out, items, settings or {})
    return {"files": len(items), "mine": len(mine), "done": len(results) - len(failed), "skipped": skipped,
            "failed": failed, "warnings": warnings, "exit_code": EXIT_SOME_FAILED if failed or warnings else 0,
            **merged}


def finalize(factory, out: Path, items: list[tuple[Path, str]], settings: dict[str, Any]) -> dict[str, Any]:
    """Under the folder lock: OUT/report.json for every file of ``items`` and the command's merged outputs."""
    with folder_lock(out):
        rows, done = [], []
        for p, n in items:
            rec = read_record(out, "done", n)
            if rec is not None:
                done.append(rec)
                row = {"file": str(p), "name": n, "status": "done"}
                if rec.get("warning"):
                    row["warning"] = rec["warning"]
            else:
                fail = read_record(out, "failed", n)
                row = ({"file": str(p), "name": n, "status": "failed", "reason": fail["reason"]} if fail
                       else {"file": str(p), "name": n, "status": "pending"})
            rows.append(row)
        merged = factory.merge(out, done)
        counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "pending")}
        report = {"counts": counts, "problems": [r for r in rows if r["status"] == "failed" or r.get("warning")],
                  "settings": settings, "files": rows}
        atomic_write_text(out / "report.json", json.dumps(report, indent=1) + "\n")
    return {"report": str(out / "report.json"), "counts": counts, **merged}
