"""``python -m data_tools shard IN_DIR OUT_DIR``: field recordings -> a shard folder (format ``a2v-het-shards/1``).

How a run goes:

1. **Find** audio files under IN_DIR (hidden entries skipped, folder symlinks not followed, OUT_DIR pruned when it
   lies inside IN_DIR) and **check** each one block by block (:func:`data_tools.sources.scan_file`): corrupt,
   truncated, empty, unsupported, NaN-holding files and absurd sample rates are skipped and reported. Results are
   cached in ``OUT_DIR/.a2v-shard/scan.json`` by (size, mtime), so a rerun does not decode them again.
2. **Plan**: every good file gets a recording id (its relative path, sanitised), a group (``--group-by``) and the
   split of that group (:func:`data_tools.grouping.split_for_group`), its annotations (``--annotations``) and a
   window grid at its output rate. Each split's windows, in file order, are cut into shards of about
   ``--shard-mb`` MiB of *uncompressed* PCM (FLAC then makes them 30-60 % smaller), named
   ``{name}-{split}-{index:06d}.tar``. A shard's content is a pure function of its plan entry, whose SHA-256 is
   its fingerprint.
3. **Write** the shards that are not done yet, one job per shard (``--workers`` processes; a job reads only its
   windows, so memory is one window per worker whatever the file length). A shard is written under a hidden
   temporary name and renamed when complete; then its stats go to ``OUT_DIR/.a2v-shard/shards/{shard}.json``
   with its fingerprint. A rerun skips every shard whose stats file has the same fingerprint and whose tar has
   the recorded size, rewrites the rest, and removes shards that are no longer planned. Output bytes do not
   depend on ``--workers`` or on where a run was interrupted.
4. **Finish**: ``report.json`` and ``report.txt`` (every skipped file with its reason, warnings), then
   ``manifest.json`` last: a folder with a manifest is complete.

Exit status: 0 when every file was used; 3 when some input was skipped (files, or annotation-table entries that
match no audio file), see ``report.txt``; 2 for usage errors (bad options, unusable annotation table, OUT_DIR
holding other data without ``--overwrite``); 1 when some shard could not be written (a source changed or
vanished during the run, disk full): no manifest is written and a rerun redoes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import soundfile as sf
from tqdm import tqdm

from a2v_het.data.manifest import MANIFEST_NAME, SPLITS
from data_tools.annotations import FileAnnotations, read_table
from data_tools.grouping import GROUP_BY, compile_path_regex, group_of, path_fields, split_for_group
from data_tools.shard_writer import (
    DEFAULT_TARGET_SHARD_BYTES,
    ShardFile,
    ShardStats,
    atomic_write_bytes,
    build_manifest,
    manifest_bytes,
    sanitize_key,
    shard_name,
)
from data_tools.sources import (
    AUDIO_EXTENSIONS,
    SourceInfo,
    SourceReadError,
    SourceSkip,
    TAILS,
    WindowGrid,
    discover,
    is_inside,
    iter_windows,
    output_rate,
    output_subtype,
    resampled_frames,
    scan_file,
    scan_result_from_json,
    window_grid,
)

STATE_DIR = ".a2v-shard"
REPORT_JSON = "report.json"
REPORT_TXT = "report.txt"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_SKIPPED = 0, 1, 2, 3
PLAN_VERSION = 1
"""Part of every shard fingerprint: bump it when a code change alters shard bytes, so reruns rewrite them."""
CHANNEL_MODES = ("split", "mix")
SAMPLE_OVERHEAD_BYTES = 2048
"""Planning allowance per sample beyond its PCM bytes: two tar headers, member padding, the JSON."""
FLAC_MAX_SAMPLE_RATE = 655_350
"""Hz; the highest rate libFLAC (through libsndfile) writes. Faster sources need --max-sr."""
SCAN_SAVE_INTERVAL_S = 30.0
"""Seconds between saves of the check cache during the check pass (a save rewrites the whole cache)."""
MIN_HOP_S = 0.001
"""Keys hold the offset in whole milliseconds, so windows must start at least 1 ms apart."""
_TAR_RE = re.compile(rf"^[A-Za-z0-9_-]+-({'|'.join(SPLITS)})-\d{{6}}\.tar$")
# temporary files of our atomic writes (shards, manifest, reports, stats) that a killed run can leave behind
_TMP_RE = re.compile(rf"^\.([A-Za-z0-9_-]+-({'|'.join(SPLITS)})-\d{{6}}\.tar|manifest\.json|report\.json|report\.txt"
                     rf"|scan\.json|[A-Za-z0-9_-]+\.tar\.json)\.[0-9a-f]+\.tmp$")


class ShardUsageError(ValueError):
    """Bad options or folders: nothing was written (exit status 2)."""


@dataclass(frozen=True)
class ShardOptions:
    """Options of :func:`shard_folder` (the CLI's flags; times in s, rates in Hz, sizes in bytes).

    Only ``window_s`` .. ``split_seed`` (and the annotation table's content) decide the output bytes; ``workers``,
    ``progress`` and ``command`` do not (``command`` is recorded in the manifest).
    """

    window_s: float = 10.0
    hop_s: float | None = None
    tail: str = "keep"
    channels: str = "split"
    max_sr: int | None = None
    pcm: str = "auto"
    shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES
    name: str | None = None
    group_by: str = "recording"
    path_regex: str | None = None
    split: tuple[float, float, float] | None = None
    split_seed: int = 0
    annotations: str | os.PathLike | None = None
    workers: int = 1
    overwrite: bool = False
    progress: bool | None = None
    command: str = ""

    def check(self) -> None:
        """ShardUsageError naming the first bad option."""
        if not (self.window_s > 0 and self.window_s == self.window_s):
            raise ShardUsageError(f"--window-s must be > 0, got {self.window_s}")
        if self.hop_s is not None and not self.hop_s >= MIN_HOP_S:
            raise ShardUsageError(f"--hop-s must be >= {MIN_HOP_S} s, got {self.hop_s}")
        if self.tail not in TAILS:
            raise ShardUsageError(f"--tail must be one of {TAILS}, got {self.tail!r}")
        if self.channels not in CHANNEL_MODES:
            raise ShardUsageError(f"--channels must be one of {CHANNEL_MODES}, got {self.channels!r}")
        if self.max_sr is not None and not 1000 <= self.max_sr <= FLAC_MAX_SAMPLE_RATE:
            raise ShardUsageError(f"--max-sr must be in [1000, {FLAC_MAX_SAMPLE_RATE}] Hz, got {self.max_sr}")
        if self.pcm not in ("auto", "16", "24"):
            raise ShardUsageError(f"--pcm must be auto, 16 or 24, got {self.pcm!r}")
        if self.shard_bytes < 1:
            raise ShardUsageError(f"--shard-mb must be > 0, got {self.shard_bytes} bytes")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            raise ShardUsageError(f"--name {self.name!r} must match [A-Za-z0-9_-]+")
        if self.group_by not in GROUP_BY:
            raise ShardUsageError(f"--group-by must be one of {GROUP_BY}, got {self.group_by!r}")
        if self.workers < 1:
            raise ShardUsageError(f"--workers must be >= 1, got {self.workers}")

    def plan_fields(self) -> dict[str, Any]:
        """The options that decide shard bytes (part of every shard fingerprint)."""
        return {"window_s": self.window_s, "hop_s": self.hop_s, "tail": self.tail, "channels": self.channels,
                "max_sr": self.max_sr, "pcm": self.pcm}


@dataclass
class Recording:
    """A good source file, planned: where its windows go and what they carry."""

    info: SourceInfo
    recording_id: str
    group: str
    split: str
    meta: dict[str, Any]
    rate_out: int
    subtype: str
    grid: WindowGrid
    out_channels: int
    annotated: bool
    events: list[dict[str, Any]]


@dataclass
class ShardResult:
    """What :func:`shard_folder` did: exit status, the report dict, the manifest path (None when not written)."""

    exit_code: int
    report: dict[str, Any]
    manifest: Path | None


# ---------------------------------------------------------------------------------------------------------------------
# Pure planning helpers.


def recording_ids(relpaths: Iterable[str]) -> dict[str, str]:
    """Relative path -> recording id: the path without its extension, sanitised (``site A/x.wav`` ->
    ``site_A_x``); when two paths sanitise alike, both get ``-`` and 8 hex digits of their path's SHA-256."""
    base = {r: sanitize_key(str(PurePosixPath(r).with_suffix(""))) for r in relpaths}
    counts = Counter(base.values())
    return {r: b if counts[b] == 1 else f"{b}-{hashlib.sha256(r.encode()).hexdigest()[:8]}"
            for r, b in base.items()}


def match_annotations(table: Mapping[str, FileAnnotations], relpaths: Sequence[str]
                      ) -> tuple[dict[str, list[FileAnnotations]], list[dict[str, Any]]]:
    """Match table ``file`` entries to audio files: by relative path, else by file name, else by stem.

    Returns ({relpath: [entries]}, [{file, rows, reason}] for entries matching no file or several).
    """
    rels = set(relpaths)
    by_name: dict[str, list[str]] = {}
    by_stem: dict[str, list[str]] = {}
    for r in relpaths:
        p = PurePosixPath(r)
        by_name.setdefault(p.name, []).append(r)
        by_stem.setdefault(p.stem, []).append(r)
    matched: dict[str, list[FileAnnotations]] = {}
    unmatched: list[dict[str, Any]] = []
    for file_id, entry in sorted(table.items()):
        key = file_id.replace("\\", "/")
        key = key[2:] if key.startswith("./") else key
        name = PurePosixPath(key).name
        if key in rels:
            hits = [key]
        else:
            has_ext = PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS
            hits = ((by_name.get(name) if has_ext else None)
                    or by_stem.get(PurePosixPath(name).stem if has_ext else name) or [])
        if len(hits) == 1:
            matched.setdefault(hits[0], []).append(entry)
        else:
            reason = ("no audio file in IN_DIR matches it (by path, name or stem)" if not hits
                      else f"matches {len(hits)} audio files ({', '.join(hits[:3])}); give the relative path")
            unmatched.append({"file": file_id, "rows": entry.rows[:10], "reason": reason})
    return matched, unmatched


def window_events(events: Iterable[Mapping[str, Any]], start_s: float, end_s: float, nyquist_hz: float,
                  channel: int | None) -> tuple[list[dict[str, Any]], int]:
    """Events of a window [start_s, end_s) (file time, s) in window time, clipped to it.

    Kept: events overlapping the window (an event touching its edge is not), of this ``channel`` or of every
    channel (``channel`` None: a mix-down, every event counts). Frequencies above ``nyquist_hz`` are clipped to it;
    an event whose whole band lies above it is dropped (it cannot be heard at this rate). Returns (events, number
    dropped for their band).
    """
    out: list[dict[str, Any]] = []
    dropped = 0
    for e in events:
        if channel is not None and e.get("channel") is not None and e["channel"] != channel:
            continue
        if not (e["onset_s"] < end_s and e["offset_s"] > start_s):
            continue
        clipped = {"onset_s": max(e["onset_s"], start_s) - start_s, "offset_s": min(e["offset_s"], end_s) - start_s,
                   "label": e["label"]}
        if e.get("low_hz") is not None:
            if e["low_hz"] >= nyquist_hz:
                dropped += 1
                continue
            clipped["low_hz"], clipped["high_hz"] = float(e["low_hz"]), float(min(e["high_hz"], nyquist_hz))
        out.append(clipped)
    return out, dropped


def _window_bytes(samples: int, channels: int, subtype: str) -> int:
    return channels * (samples * (3 if subtype == "PCM_24" else 2) + SAMPLE_OVERHEAD_BYTES)


def _segment_spec(rec: Recording, first: int, stop: int, options: ShardOptions) -> dict[str, Any]:
    """The plan of windows ``first..stop-1`` of one recording inside one shard (JSON-able, deterministic)."""
    g = rec.grid
    t0 = g.window(first)[0] / rec.rate_out
    last_start, last_real, _ = g.window(stop - 1)
    t1 = (last_start + last_real) / rec.rate_out
    events = [e for e in rec.events if e["onset_s"] < t1 and e["offset_s"] > t0]
    info = rec.info
    return {
        "source": info.path, "size": info.size, "mtime_ns": info.mtime_ns, "sample_rate": info.sample_rate,
        "channels": info.channels, "frames": info.frames, "rate_out": rec.rate_out, "subtype": rec.subtype,
        "grid": [g.frames, g.length, g.hop, g.full, g.tail, g.pad], "first": first, "stop": stop,
        "mode": options.channels, "recording_id": rec.recording_id, "group": rec.group,
        "labelled": rec.annotated, "events": events, "meta": rec.meta,
    }


def plan_shards(recordings: Sequence[Recording], options: ShardOptions, name: str) -> list[dict[str, Any]]:
    """Cut each split's windows (recordings in path order, windows in time order) into shard plans of at most
    ``options.shard_bytes`` planned bytes (a single larger window gets a shard of its own).

    Each plan: ``{"version", "options", "name", "split", "seconds", "segments": [...], "fingerprint"}``.
    """
    plans: list[dict[str, Any]] = []
    for split in SPLITS:
        recs = sorted((r for r in recordings if r.split == split), key=lambda r: r.info.path)
        segments: list[dict[str, Any]] = []
        size = seconds = 0.0
        index = 0

        def flush() -> None:
            nonlocal segments, size, seconds, index
            if segments:
                plan = {"version": PLAN_VERSION, "options": options.plan_fields(),
                        "name": shard_name(name, split, index), "split": split, "seconds": seconds,
                        "segments": segments}
                blob = json.dumps(plan, sort_keys=True, separators=(",", ":")).encode("utf-8")
                plan["fingerprint"] = hashlib.sha256(blob).hexdigest()
                plans.append(plan)
                index += 1
            segments, size, seconds = [], 0.0, 0.0

        for rec in recs:
            first = 0
            for i in range(rec.grid.count):
                _, real, pad = rec.grid.window(i)
                cost = _window_bytes(real + pad, rec.out_channels, rec.subtype)
                if size > 0 and size + cost > options.shard_bytes:
                    if i > first:
                        segments.append(_segment_spec(rec, first, i, options))
                    first = i
                    flush()
                size += cost
                seconds += rec.out_channels * (real + pad) / rec.rate_out
            if rec.grid.count > first:
                segments.append(_segment_spec(rec, first, rec.grid.count, options))
        flush()
    return plans


# ---------------------------------------------------------------------------------------------------------------------
# Writing one shard (runs in a worker process).


def _sidecar(out_dir: Path, shard: str) -> Path:
    return out_dir / STATE_DIR / "shards" / f"{shard}.json"


def write_planned_shard(in_dir: str, out_dir: str, plan: dict[str, Any]) -> dict[str, Any]:
    """Write one planned shard and its stats file; returns ``{"stats", "warnings", "fingerprint"}``.

    Raises SourceReadError when a source no longer matches its scan (size, mtime, rate, channels, frames) or reads
    short; the temporary file is removed and nothing appears under the shard's name.
    """
    root, out = Path(in_dir), Path(out_dir)
    warnings: Counter[str] = Counter()
    with ShardFile(out, plan["name"], plan["split"]) as shard:
        for seg in plan["segments"]:
            _write_segment(shard, root / seg["source"], seg, warnings)
        stats = shard.finish()
    record = {"fingerprint": plan["fingerprint"], "stats": stats.to_json(),
              "warnings": [{"file": f, "reason": r, "count": n} for (f, r), n in sorted(warnings.items())]}
    atomic_write_bytes(_sidecar(out, plan["name"]), (json.dumps(record, indent=1) + "\n").encode("utf-8"))
    return record


def _write_segment(shard: ShardFile, path: Path, seg: Mapping[str, Any], warnings: Counter) -> None:
    st = path.stat()
    if (st.st_size, st.st_mtime_ns) != (seg["size"], seg["mtime_ns"]):
        raise SourceReadError(f"{seg['source']} changed since it was checked (size/mtime); rerun to re-plan it")
    grid = WindowGrid(*seg["grid"])
    rate = seg["rate_out"]
    with sf.SoundFile(path) as fh:
        if (fh.samplerate, fh.channels) != (seg["sample_rate"], seg["channels"]) or fh.frames < seg["frames"]:
            raise SourceReadError(f"{seg['source']} no longer has the rate/channels/length it was checked with")
        for start, audio, pad in iter_windows(fh, grid, seg["first"], seg["stop"], rate):
            real = audio.shape[0] - pad
            t0, t1 = start / rate, (start + real) / rate
            meta = dict(seg["meta"])
            if pad:
                meta["pad_s"] = pad / rate
            if seg["mode"] == "mix":
                columns = [(0, audio.mean(axis=1))]
                if audio.shape[1] > 1:
                    meta["mixdown"] = True
            else:
                columns = [(c, audio[:, c]) for c in range(audio.shape[1])]
            for channel, wave in columns:
                events, dropped = window_events(seg["events"], t0, t1, rate / 2.0,
                                                None if seg["mode"] == "mix" else channel)
                if dropped:
                    warnings[(seg["source"], f"events above the Nyquist frequency of {rate} Hz dropped")] += dropped
                fields = {"recording_id": seg["recording_id"], "source": seg["source"], "channel": channel,
                          "offset_s": t0, "group": seg["group"], "labelled": seg["labelled"], "events": events,
                          "meta": meta}
                try:
                    shard.write(wave, rate, fields, subtype=seg["subtype"])
                except ValueError as exc:
                    raise ValueError(f"{seg['source']} window at {t0:.3f} s channel {channel}: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------------------
# The run.


def _check_folders(in_dir: Path, out_dir: Path) -> None:
    if not in_dir.is_dir():
        raise ShardUsageError(f"IN_DIR {in_dir} is not a folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardUsageError(f"OUT_DIR {out_dir} exists and is not a folder")
    if is_inside(in_dir, out_dir):
        raise ShardUsageError(f"IN_DIR {in_dir} is OUT_DIR or inside it; pick an OUT_DIR outside the recordings")
    if (out_dir / STATE_DIR).is_symlink():
        raise ShardUsageError(f"{out_dir / STATE_DIR} is a symlink; refusing to write through it")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Create OUT_DIR; with ``overwrite`` remove our earlier output; refuse a folder holding shards we did not
    write (no state folder) without it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = out_dir / STATE_DIR
    ours = [p for p in out_dir.iterdir() if p.name == MANIFEST_NAME or _TAR_RE.match(p.name)]
    if overwrite:
        for p in sorted(ours, key=lambda p: p.name != MANIFEST_NAME):  # manifest first: no longer complete
            p.unlink()
        for p in out_dir.iterdir():
            if _TMP_RE.match(p.name) or p.name in (REPORT_JSON, REPORT_TXT):
                p.unlink()
        if state.is_dir():
            shutil.rmtree(state)
    elif ours and not state.is_dir():
        shown = ", ".join(sorted(p.name for p in ours)[:3])
        raise ShardUsageError(f"OUT_DIR {out_dir} already holds shard data not written by `data_tools shard` "
                              f"({shown}); pass --overwrite to replace it")
    (state / "shards").mkdir(parents=True, exist_ok=True)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # absent or half-written by a killed run: treated as not done


def _pool(workers: int) -> ProcessPoolExecutor | None:
    # spawn: workers start clean (forking a process with threads, e.g. a trainer or tqdm's monitor, can deadlock)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1 else None


def _run_all(pool: ProcessPoolExecutor | None, fn: Callable, jobs: Sequence[tuple], max_pending: int
             ) -> Iterator[tuple[tuple, Any, BaseException | None]]:
    """Run ``fn(*job)`` for every job, in this process or the pool with at most ``max_pending`` jobs queued;
    yields (job, result, error) as jobs finish. Stopping the iteration cancels what has not started."""
    if pool is None:
        for job in jobs:
            try:
                result = fn(*job)
            except (OSError, ValueError, RuntimeError) as exc:
                yield job, None, exc
                continue
            yield job, result, None
        return
    pending: dict[Future, tuple[int, tuple]] = {}
    queue = enumerate(jobs)
    try:
        while True:
            while len(pending) < max_pending:
                item = next(queue, None)
                if item is None:
                    break
                pending[pool.submit(fn, *item[1])] = item
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: pending[f][0]):  # submission order among those done
                _, job = pending.pop(fut)
                exc = fut.exception()
                if exc is not None and not isinstance(exc, (OSError, ValueError, RuntimeError)):
                    raise exc
                yield job, (None if exc else fut.result()), exc
    finally:
        for fut in pending:
            fut.cancel()


def _scan_all(in_dir: Path, out_dir: Path, relpaths: Sequence[str], pool: ProcessPoolExecutor | None,
              workers: int, progress: bool | None) -> dict[str, SourceInfo | SourceSkip]:
    """Check every file (cached by size and mtime in ``.a2v-shard/scan.json``, saved as it goes)."""
    cache_path = out_dir / STATE_DIR / "scan.json"
    cache = _load_json(cache_path)
    cached = cache.get("files", {}) if isinstance(cache, dict) and cache.get("version") == PLAN_VERSION else {}
    results: dict[str, SourceInfo | SourceSkip] = {}
    todo = []
    for rel in relpaths:
        st = (in_dir / rel).stat()
        hit = cached.get(rel)
        if isinstance(hit, dict) and (hit.get("size"), hit.get("mtime_ns")) == (st.st_size, st.st_mtime_ns):
            results[rel] = scan_result_from_json(hit)
        else:
            todo.append((str(in_dir), rel))

    def save() -> None:
        files = {r: results[r].to_json() for r in sorted(results)}
        atomic_write_bytes(cache_path, json.dumps({"version": PLAN_VERSION, "files": files}).encode("utf-8"))

    bar = tqdm(total=len(todo), desc="check", unit="file", disable=None if progress is None else not progress)
    saved = time.monotonic()
    with bar:
        for (_, rel), result, error in _run_all(pool, scan_file, todo, 4 * workers):
            if error is not None:  # the file vanished or cannot be stat'ed: report it like a bad file
                result = SourceSkip(rel, 0, 0, f"cannot read: {error}")
            results[rel] = result
            bar.update(1)
            if time.monotonic() - saved > SCAN_SAVE_INTERVAL_S:  # an interrupted check keeps most of its work
                save()
                saved = time.monotonic()
    if todo:
        save()
    return results


def _plan_recordings(scans: Mapping[str, SourceInfo | SourceSkip], options: ShardOptions,
                     annotations: Mapping[str, list[FileAnnotations]]
                     ) -> tuple[list[Recording], list[dict[str, Any]], list[dict[str, Any]]]:
    """Recordings for the good files, plus (skipped, warnings) report entries."""
    regex = compile_path_regex(options.path_regex)
    hop_s = options.hop_s if options.hop_s is not None else options.window_s
    ids = recording_ids(sorted(scans))
    recordings: list[Recording] = []
    skipped: list[dict[str, Any]] = []
    warnings: list[dict[str, Any]] = []
    for rel in sorted(scans):
        scan = scans[rel]
        if isinstance(scan, SourceSkip):
            skipped.append({"file": rel, "reason": scan.reason})
            continue
        entries = annotations.get(rel, [])
        fields: dict[str, Any] = {}
        for entry in entries:
            for k, v in entry.extra.items():
                fields.setdefault(k, v)
        from_path = path_fields(rel, regex)
        if from_path is None:
            warnings.append({"file": rel, "reason": "path does not match --path-regex (no path metadata)"})
        else:
            fields.update(from_path)  # the path wins over the table
        try:
            group = group_of(options.group_by, ids[rel], fields)
        except KeyError:
            skipped.append({"file": rel, "reason": f"no {options.group_by!r} to group by: not in the path "
                                                   "(--path-regex) nor in the annotation table"})
            continue
        rate_out = output_rate(scan.sample_rate, options.max_sr)
        if rate_out > FLAC_MAX_SAMPLE_RATE:
            skipped.append({"file": rel, "reason": f"{rate_out} Hz: FLAC stores at most {FLAC_MAX_SAMPLE_RATE} Hz; "
                                                   "pass --max-sr to resample it"})
            continue
        grid = window_grid(resampled_frames(scan.frames, scan.sample_rate, rate_out), rate_out, options.window_s,
                           hop_s, options.tail)
        if grid.count == 0:
            skipped.append({"file": rel, "reason": f"shorter ({scan.duration_s:.3f} s) than one window "
                                                   f"({options.window_s:g} s) and --tail drop"})
            continue
        if scan.clipped:
            warnings.append({"file": rel, "reason": f"{scan.clipped} float sample(s) beyond +-1.0 clipped"})
        events = sorted((e for entry in entries for e in entry.events),
                        key=lambda e: (e["onset_s"], e["offset_s"], e["label"]))
        late = sum(e["offset_s"] > scan.duration_s + 1e-3 for e in events)
        if late:
            warnings.append({"file": rel, "reason": f"{late} event(s) reach past the end of the recording "
                                                    f"({scan.duration_s:.3f} s): clipped or lost"})
        if options.channels == "split":
            bad = [e for e in events if e.get("channel") is not None and e["channel"] >= scan.channels]
            if bad:
                warnings.append({"file": rel, "reason": f"{len(bad)} event(s) on a channel the file does not have"})
        meta = {**{k: fields[k] for k in sorted(fields)}, "source_sample_rate": scan.sample_rate,
                "source_channels": scan.channels}
        recordings.append(Recording(
            info=scan, recording_id=ids[rel], group=group,
            split=split_for_group(group, options.split, options.split_seed), meta=meta, rate_out=rate_out,
            subtype=output_subtype(scan.subtype, options.pcm), grid=grid,
            out_channels=scan.channels if options.channels == "split" else 1,
            annotated=bool(entries), events=events))
    return recordings, skipped, warnings


def _stale(out_dir: Path, plans: Sequence[dict[str, Any]]) -> list[Path]:
    """Shards and stats files that are not in the plan, and temporary files of killed runs."""
    planned = {p["name"] for p in plans}
    found = []
    for side in sorted((out_dir / STATE_DIR / "shards").glob("*.json")):
        shard = side.name[: -len(".json")]
        if shard not in planned:
            found.append(side)
            if _TAR_RE.match(shard):  # a shard of an earlier run under another --name
                found.append(out_dir / shard)
    for folder in (out_dir, out_dir / STATE_DIR, out_dir / STATE_DIR / "shards"):
        for p in sorted(folder.iterdir()):
            if (folder == out_dir and _TAR_RE.match(p.name) and p.name not in planned) or _TMP_RE.match(p.name):
                found.append(p)
    return sorted(set(found))


def _is_done(out_dir: Path, plan: Mapping[str, Any]) -> dict[str, Any] | None:
    record = _load_json(_sidecar(out_dir, plan["name"]))
    if not isinstance(record, dict) or record.get("fingerprint") != plan["fingerprint"]:
        return None
    tar = out_dir / plan["name"]
    try:
        if not tar.is_file() or tar.stat().st_size != int(record["stats"]["bytes"]):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return record


def shard_folder(in_dir: str | os.PathLike, out_dir: str | os.PathLike, options: ShardOptions,
                 on_shard_done: Callable[[ShardStats], None] | None = None) -> ShardResult:
    """Shard every recording under ``in_dir`` into ``out_dir`` (see the module docstring).

    ``on_shard_done(stats)`` is called in this process after each shard is written (tests use it to interrupt a
    run). Raises ShardUsageError for bad options or folders; every problem with the input data ends in the report.
    """
    options.check()
    in_path, out_path = Path(in_dir), Path(out_dir)
    _check_folders(in_path, out_path)
    try:
        compile_path_regex(options.path_regex)
        table = read_table(options.annotations) if options.annotations is not None else {}
    except ValueError as exc:
        raise ShardUsageError(str(exc)) from None
    name = options.name or sanitize_key(in_path.resolve().name) or "shards"
    relpaths, ignored = discover(in_path, exclude=out_path if is_inside(out_path, in_path) else None)
    if not relpaths:
        raise ShardUsageError(f"no audio files under {in_path} (other files: {dict(ignored) or 'none'})")
    _prepare_out_dir(out_path, options.overwrite)

    matched, unmatched = match_annotations(table, relpaths)
    pool = _pool(options.workers)
    try:
        scans = _scan_all(in_path, out_path, relpaths, pool, options.workers, options.progress)
        recordings, skipped, warnings = _plan_recordings(scans, options, matched)
        plans = plan_shards(recordings, options, name)
        records: dict[str, dict[str, Any]] = {}
        todo = []
        for plan in plans:
            done = _is_done(out_path, plan)
            if done is None:
                todo.append(plan)
            else:
                records[plan["name"]] = done
        reused = len(records)
        stale = _stale(out_path, plans)
        if todo or stale:
            # manifest first: from here on the folder no longer claims to be complete (the old manifest may list
            # shards about to be removed or rewritten)
            (out_path / MANIFEST_NAME).unlink(missing_ok=True)
        for path in stale:
            path.unlink(missing_ok=True)
        failed = _write_all(in_path, out_path, todo, pool, options, records, on_shard_done)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    warnings += [w for name_ in sorted(records) for w in records[name_].get("warnings", [])]
    stats = [ShardStats.from_json(records[p["name"]]["stats"]) for p in plans if p["name"] in records]
    classes = sorted({e["label"] for rec in recordings for e in rec.events})
    report = _report(in_path, out_path, options, relpaths, ignored, skipped, warnings, unmatched, recordings,
                     stats, failed, reused, len(plans))
    atomic_write_bytes(out_path / REPORT_JSON, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
    atomic_write_bytes(out_path / REPORT_TXT, format_report(report).encode("utf-8"))
    if failed:
        return ShardResult(EXIT_FAILED, report, None)
    manifest = out_path / MANIFEST_NAME
    atomic_write_bytes(manifest, manifest_bytes(build_manifest(stats, classes, options.command)))
    return ShardResult(report["exit_code"], report, manifest)


def _write_all(in_dir: Path, out_dir: Path, todo: Sequence[dict[str, Any]], pool: ProcessPoolExecutor | None,
               options: ShardOptions, records: dict[str, dict[str, Any]],
               on_shard_done: Callable[[ShardStats], None] | None) -> list[dict[str, str]]:
    """Write the shards of ``todo``; returns [{shard, reason}] for those that failed."""
    failed: list[dict[str, str]] = []
    total = sum(p["seconds"] for p in todo)
    bar = tqdm(total=round(total / 3600.0, 3), desc="shard", unit="h audio",
               disable=None if options.progress is None else not options.progress)
    jobs = [(str(in_dir), str(out_dir), plan) for plan in todo]
    with bar:
        for (_, _, plan), record, error in _run_all(pool, write_planned_shard, jobs, 2 * options.workers):
            if error is not None:
                failed.append({"shard": plan["name"], "reason": " ".join(str(error).split())})
                continue
            records[plan["name"]] = record
            bar.update(round(plan["seconds"] / 3600.0, 3))
            if on_shard_done is not None:
                on_shard_done(ShardStats.from_json(record["stats"]))
    return failed


# ---------------------------------------------------------------------------------------------------------------------
# Report.


def _report(in_dir: Path, out_dir: Path, options: ShardOptions, relpaths: Sequence[str], ignored: Mapping[str, int],
            skipped: list[dict[str, Any]], warnings: list[dict[str, Any]], unmatched: list[dict[str, Any]],
            recordings: Sequence[Recording], stats: Sequence[ShardStats], failed: list[dict[str, str]],
            reused: int, planned: int) -> dict[str, Any]:
    hours: dict[str, dict[str, float]] = {}
    for s in stats:
        for rate, sec in s.seconds_by_rate.items():
            split = hours.setdefault(s.split, {})
            split[str(rate)] = split.get(str(rate), 0.0) + sec / 3600.0
    groups: dict[str, set[str]] = {}
    for rec in recordings:
        groups.setdefault(rec.split, set()).add(rec.group)
    exit_code = EXIT_FAILED if failed else EXIT_SKIPPED if (skipped or unmatched) else EXIT_OK
    return {
        "in_dir": str(in_dir), "out_dir": str(out_dir), "command": options.command,
        "exit_code": exit_code,
        "files": {"audio_found": len(relpaths), "used": len(recordings), "skipped": len(skipped),
                  "ignored_not_audio": dict(ignored)},
        "skipped": skipped,
        "annotations": {"table": None if options.annotations is None else str(options.annotations),
                        "files_annotated": sum(r.annotated for r in recordings),
                        "events": sum(len(r.events) for r in recordings), "unmatched": unmatched},
        "warnings": warnings,
        "failed_shards": failed,
        "output": {"shards": len(stats), "planned": planned, "reused": reused, "written": len(stats) - reused,
                   "samples": sum(s.samples for s in stats),
                   "hours": sum(s.seconds for s in stats) / 3600.0,
                   "hours_by_split_and_rate": {k: dict(sorted(v.items(), key=lambda kv: int(kv[0])))
                                               for k, v in sorted(hours.items())},
                   "groups_by_split": {k: len(v) for k, v in sorted(groups.items())}},
    }


def format_report(report: Mapping[str, Any]) -> str:
    """The readable summary written to ``report.txt`` (and printed by the CLI)."""
    f, o = report["files"], report["output"]
    lines = [f"data_tools shard: {report['in_dir']} -> {report['out_dir']}",
             f"audio files: {f['audio_found']} found, {f['used']} used, {f['skipped']} skipped"
             + (f"; not audio, ignored: {', '.join(f'{k} x{v}' for k, v in f['ignored_not_audio'].items())}"
                if f["ignored_not_audio"] else ""),
             f"shards: {o['shards']} ({o['written']} written now, {o['reused']} kept from an earlier run), "
             f"{o['samples']} samples, {o['hours']:.3f} h"]
    for split, rates in o["hours_by_split_and_rate"].items():
        per = ", ".join(f"{int(r) / 1000:g} kHz {h:.3f} h" for r, h in rates.items())
        lines.append(f"  {split}: {o['groups_by_split'].get(split, 0)} group(s); {per}")
    a = report["annotations"]
    if a["table"]:
        lines.append(f"annotations: {a['table']}: {a['files_annotated']} file(s) labelled, {a['events']} events")
    for title, items, fmt in (
        ("SKIPPED FILES", report["skipped"], lambda s: f"{s['file']}: {s['reason']}"),
        ("ANNOTATIONS NOT USED", a["unmatched"], lambda s: f"{s['file']} (table rows {s['rows']}): {s['reason']}"),
        ("FAILED SHARDS (rerun to retry)", report["failed_shards"], lambda s: f"{s['shard']}: {s['reason']}"),
        ("warnings", report["warnings"],
         lambda s: f"{s['file']}: {s['reason']}" + (f" (x{s['count']})" if s.get("count") else "")),
    ):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.extend(f"  {fmt(s)}" for s in items)
    lines.append(f"exit status {report['exit_code']}"
                 + {0: "", 1: " (some shards failed: no manifest written)", 3: " (some input skipped)"}.get(
                     report["exit_code"], ""))
    return "\n".join(lines) + "\n"
