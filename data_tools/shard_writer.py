"""Writing shard folders in the ``a2v-het-shards/1`` format (see the shard-format spec).

A folder holds ``manifest.json`` and tar shards ``{name}-{split}-{index:06d}.tar``; each sample is two members,
``{key}.flac`` then ``{key}.json``. Guarantees:

* A shard only ever appears under its final name complete: it is written to a hidden temporary file in the same
  folder and renamed (``os.replace``) once closed and synced.
* ``manifest.json`` is written last, atomically, and only when the writer closes without an error; an interrupted
  run (exception, Ctrl-C) removes what it wrote, so a folder either holds a complete data set or none of ours.
* Output is deterministic: same samples in the same order give byte-identical shards (fixed tar metadata, member
  order, JSON field order) and manifest (no timestamps).
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

import numpy as np
import soundfile as sf

from a2v_het import __version__
from a2v_het.atomic import atomic_write_bytes, create_temp
from a2v_het.data.manifest import FORMAT, MANIFEST_NAME, SPLITS, ManifestError, read_manifest, sha256_file

__all__ = [
    "DEFAULT_TARGET_SHARD_BYTES",
    "FORMAT",
    "ManifestError",
    "ShardFile",
    "ShardStats",
    "ShardWriter",
    "atomic_write_bytes",
    "build_manifest",
    "encode_flac",
    "read_manifest",
    "sample_key",
    "sanitize_key",
    "shard_name",
]

DEFAULT_TARGET_SHARD_BYTES = 128 * 2**20
SUBTYPES = ("PCM_16", "PCM_24")
SAMPLE_FIELDS = ("recording_id", "source", "channel", "offset_s", "group", "labelled", "events", "meta")
EVENT_FIELDS = ("onset_s", "offset_s", "label", "low_hz", "high_hz")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_PLAIN_TAR_RE = re.compile(r"^[A-Za-z0-9_-]+\.tar$")
# Fixed tar metadata: the same content gives the same bytes (no wall-clock mtime, no local user names).
_MTIME = 0
_MODE = 0o644


def sanitize_key(text: str) -> str:
    """Replace every character outside ``[A-Za-z0-9_-]`` with ``_`` (webdataset splits keys at dots and slashes)."""
    return _UNSAFE.sub("_", text)


def sample_key(recording_id: str, channel: int, offset_s: float) -> str:
    """``{recording_id}_c{channel}_{offset_ms:09d}``, sanitised; offset_s in seconds, rounded to milliseconds."""
    offset_ms = int(round(offset_s * 1000.0))
    return sanitize_key(f"{recording_id}_c{channel}_{offset_ms:09d}")


def shard_name(name: str, split: str, index: int) -> str:
    """``{name}-{split}-{index:06d}.tar``, the spec's shard file name."""
    return f"{name}-{split}-{index:06d}.tar"


def encode_flac(audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> bytes:
    """Encode mono audio (T,) float in [-1, 1] at ``sample_rate`` Hz to FLAC bytes (in memory)."""
    buf = io.BytesIO()
    try:
        sf.write(buf, audio, int(sample_rate), format="FLAC", subtype=subtype)
    except Exception as exc:  # libsndfile rejects e.g. rates FLAC cannot store
        message = f"cannot encode {audio.shape[0]} samples at {sample_rate} Hz as FLAC {subtype}: {exc}"
        raise ValueError(message) from exc
    return buf.getvalue()


def _json_default(obj: Any) -> Any:
    """numpy scalars and arrays in ``meta`` become plain JSON numbers and lists."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _check_audio(audio: Any) -> np.ndarray:
    wave = np.asarray(audio)
    if wave.ndim != 1 or wave.shape[0] == 0:
        raise ValueError(f"sample_audio must be a non-empty 1-D array (T,), got shape {wave.shape}")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"sample_audio must be float in [-1, 1], got dtype {wave.dtype}")
    if not np.all(np.isfinite(wave)):
        raise ValueError("sample_audio contains NaN or Inf")
    peak = float(np.max(np.abs(wave)))
    if peak > 1.0:
        # PCM encoding would clip (or wrap); the caller must decide how to scale.
        raise ValueError(f"sample_audio peaks at {peak:.4g} > 1.0; normalise it before writing")
    return wave if wave.dtype == np.float64 else wave.astype(np.float32, copy=False)


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float, or a ValueError naming ``what`` (float() alone would say little, or TypeError)."""
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _check_events(events: Any, duration_s: float, sample_rate: int, classes: Sequence[str] | None) -> list[dict]:
    """Validate events against the window (times in [0, duration_s], frequencies in [0, Nyquist]) -> clean copies."""
    if not isinstance(events, list):
        raise ValueError(f"'events' must be a list, got {type(events).__name__}")
    tolerance = 1.0 / sample_rate  # one sample: windows are cut on sample boundaries
    out = []
    for i, event in enumerate(events):
        if not isinstance(event, Mapping):
            raise ValueError(f"event {i} must be an object, got {event!r}")
        unknown = set(event) - set(EVENT_FIELDS)
        missing = {"onset_s", "offset_s", "label"} - set(event)
        if unknown or missing:
            raise ValueError(f"event {i} {dict(event)}: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
        onset = _number(event["onset_s"], f"event {i} onset_s")
        offset = _number(event["offset_s"], f"event {i} offset_s")
        label = event["label"]
        if not isinstance(label, str) or not label:
            raise ValueError(f"event {i}: label must be a non-empty string, got {label!r}")
        if classes is not None and label not in classes:
            raise ValueError(f"event {i}: label {label!r} is not one of the classes {list(classes)}")
        if not (-tolerance <= onset <= offset <= duration_s + tolerance):
            raise ValueError(f"event {i}: need 0 <= onset_s <= offset_s <= {duration_s:g} s, got {onset}..{offset}")
        clean: dict[str, Any] = {"onset_s": min(max(onset, 0.0), duration_s), "offset_s": min(offset, duration_s),
                                 "label": label}
        if ("low_hz" in event) != ("high_hz" in event):
            raise ValueError(f"event {i}: give both low_hz and high_hz or neither")
        if "low_hz" in event:
            low = _number(event["low_hz"], f"event {i} low_hz")
            high = _number(event["high_hz"], f"event {i} high_hz")
            if not 0.0 <= low <= high <= sample_rate / 2.0:
                raise ValueError(f"event {i}: need 0 <= low_hz <= high_hz <= {sample_rate / 2:g} Hz, got {low}..{high}")
            clean["low_hz"], clean["high_hz"] = low, high
        out.append(clean)
    return out


def build_sample_json(wave_len: int, sample_rate: int, fields: Mapping[str, Any],
                      classes: Sequence[str] | None = None) -> dict[str, Any]:
    """The sample's JSON object (spec field order) from its per-sample ``fields``.

    ``fields`` may hold ``recording_id`` (required), ``source`` (default: recording_id), ``channel`` (0),
    ``offset_s`` (0.0), ``group`` (recording_id), ``labelled`` (False), ``events`` ([]), ``meta`` ({}).
    ``sample_rate`` and ``duration_s`` come from the audio. Unknown fields raise (a typo would lose data silently).
    """
    if not isinstance(fields, Mapping):
        raise ValueError(f"meta must be a dict of sample fields, got {type(fields).__name__}")
    unknown = set(fields) - set(SAMPLE_FIELDS)
    if unknown:
        raise ValueError(f"unknown sample field(s) {sorted(unknown)}; allowed: {list(SAMPLE_FIELDS)}")
    recording_id = fields.get("recording_id")
    if not isinstance(recording_id, str) or not recording_id:
        raise ValueError(f"'recording_id' must be a non-empty string, got {recording_id!r}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    sample_rate = int(sample_rate)
    channel = fields.get("channel", 0)
    if isinstance(channel, bool) or not isinstance(channel, (int, np.integer)) or channel < 0:
        raise ValueError(f"'channel' must be an integer >= 0, got {channel!r}")
    offset_s = _number(fields.get("offset_s", 0.0), "'offset_s'")
    if offset_s < 0.0:
        raise ValueError(f"'offset_s' must be >= 0, got {offset_s!r}")
    labelled = fields.get("labelled", False)
    if not isinstance(labelled, bool):
        raise ValueError(f"'labelled' must be true/false, got {labelled!r}")
    meta = fields.get("meta", {})
    if not isinstance(meta, Mapping):
        raise ValueError(f"'meta' must be a dict, got {type(meta).__name__}")
    duration_s = wave_len / sample_rate
    return {
        "sample_rate": sample_rate,
        "duration_s": duration_s,
        "recording_id": recording_id,
        "source": str(fields.get("source", recording_id)),
        "channel": int(channel),
        "offset_s": offset_s,
        "group": str(fields.get("group", recording_id)),
        "labelled": labelled,
        "events": _check_events(fields.get("events", []), duration_s, sample_rate, classes),
        "meta": dict(meta),
    }


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, _MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def encode_sample(sample_audio: np.ndarray, sample_rate: int, fields: Mapping[str, Any], subtype: str,
                  classes: Sequence[str] | None = None) -> tuple[str, dict[str, Any], bytes, bytes]:
    """Validate one sample and encode its members: returns ``(key, json object, flac bytes, json bytes)``.

    Raises ValueError on bad audio or fields (see :func:`build_sample_json`).
    """
    wave = _check_audio(sample_audio)
    info = build_sample_json(wave.shape[0], sample_rate, fields, classes)
    key = sample_key(info["recording_id"], info["channel"], info["offset_s"])
    try:
        # allow_nan=False: NaN/Infinity are not JSON, and strict readers would reject the sample
        payload = json.dumps(info, ensure_ascii=False, allow_nan=False, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sample {key!r}: fields are not JSON serialisable: {exc}") from exc
    return key, info, encode_flac(wave, info["sample_rate"], subtype), payload


@dataclass
class ShardStats:
    """What one finished shard holds: its file ``name``, ``split``, ``samples``, ``seconds`` of audio,
    ``seconds_by_rate`` (Hz -> seconds), the event ``labels`` seen, its ``sha256`` and size in ``bytes``."""

    name: str
    split: str
    samples: int = 0
    seconds: float = 0.0
    seconds_by_rate: dict[int, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    sha256: str = ""
    bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split, "samples": self.samples, "seconds": self.seconds,
                "seconds_by_rate": {str(k): v for k, v in sorted(self.seconds_by_rate.items())},
                "labels": sorted(self.labels), "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ShardStats:
        return cls(name=str(obj["name"]), split=str(obj["split"]), samples=int(obj["samples"]),
                   seconds=float(obj["seconds"]),
                   seconds_by_rate={int(k): float(v) for k, v in obj["seconds_by_rate"].items()},
                   labels=[str(x) for x in obj["labels"]], sha256=str(obj["sha256"]), bytes=int(obj["bytes"]))


class ShardFile:
    """One tar shard, written to a hidden temporary file in ``folder`` and renamed to ``final_name`` by
    :meth:`finish`; :meth:`abort` (or an exception inside a ``with`` block) removes the temporary file, so a shard
    never appears under its final name unless it is complete.

    Args:
        folder: the shard folder (must exist).
        final_name: plain file name ``{name}-{split}-{index:06d}.tar``.
        split: the split the shard belongs to (recorded in its :class:`ShardStats`).
        subtype: FLAC sample format, ``"PCM_16"`` or ``"PCM_24"``.
        classes: if given, every event label must be one of them.
    """

    def __init__(self, folder: str | os.PathLike, final_name: str, split: str, subtype: str = "PCM_16",
                 classes: Sequence[str] | None = None):
        if not _PLAIN_TAR_RE.match(final_name):
            raise ValueError(f"shard file name {final_name!r} must match [A-Za-z0-9_-]+.tar")
        if subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
        self.final = Path(folder) / final_name
        self.subtype = subtype
        self.classes = classes
        self.stats = ShardStats(name=final_name, split=split)
        self._labels: set[str] = set()
        self._keys: set[str] = set()
        self.tmp, self._fileobj = create_temp(Path(folder), final_name)
        self._tar: tarfile.TarFile | None = tarfile.open(fileobj=self._fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def __enter__(self) -> ShardFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    @property
    def size(self) -> int:
        """Bytes written so far (the end-of-archive blocks come on finish)."""
        return self._fileobj.tell()

    def write(self, sample_audio: np.ndarray, sample_rate: int, fields: Mapping[str, Any],
              subtype: str | None = None) -> str:
        """Append one sample (see :meth:`ShardWriter.write`); returns its key. ``subtype`` overrides the shard's
        FLAC sample format for this sample. ValueError on bad input or a key already in this shard; nothing is
        added then."""
        if self._tar is None:
            raise RuntimeError(f"shard {self.final.name} is closed")
        subtype = subtype or self.subtype
        if subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
        key, info, flac, payload = encode_sample(sample_audio, sample_rate, fields, subtype, self.classes)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} (recording_id/channel/offset_s must be unique)")
        self.add_encoded(key, info, flac, payload)
        return key

    def add_encoded(self, key: str, info: Mapping[str, Any], flac: bytes, payload: bytes) -> None:
        """Append members already built by :func:`encode_sample`. An I/O error aborts the shard (half a member
        may be on disk)."""
        if self._tar is None:
            raise RuntimeError(f"shard {self.final.name} is closed")
        try:
            _add_member(self._tar, f"{key}.flac", flac)
            _add_member(self._tar, f"{key}.json", payload)
        except BaseException:
            self.abort()
            raise
        self._keys.add(key)
        self._labels.update(e["label"] for e in info["events"])
        stats = self.stats
        stats.samples += 1
        stats.seconds += info["duration_s"]
        rate = info["sample_rate"]
        stats.seconds_by_rate[rate] = stats.seconds_by_rate.get(rate, 0.0) + info["duration_s"]

    def finish(self) -> ShardStats:
        """Close, sync, hash and rename the shard to its final name; returns its stats."""
        if self._tar is None:
            raise RuntimeError(f"shard {self.final.name} is closed")
        try:
            self._tar.close()  # writes the end-of-archive blocks; the file object stays open
            self._tar = None
            self._fileobj.flush()
            os.fsync(self._fileobj.fileno())
            self.stats.bytes = self._fileobj.tell()
            self._fileobj.close()
            self.stats.sha256 = sha256_file(self.tmp)
            os.replace(self.tmp, self.final)
        except BaseException:
            self.abort()
            raise
        self.stats.labels = sorted(self._labels)
        return self.stats

    def abort(self) -> None:
        """Drop the temporary file (a finished shard is left alone)."""
        self._tar = None
        try:
            self._fileobj.close()
        finally:
            self.tmp.unlink(missing_ok=True)


def build_manifest(shards: Sequence[ShardStats], classes: Sequence[str] | None, command: str) -> dict[str, Any]:
    """The ``manifest.json`` object for finished shards (listed per split in the given order).

    ``classes`` None: the sorted labels seen in the shards. Hours are seconds / 3600, summed per split and per
    sample rate (keys are the rates in Hz as strings, sorted numerically).
    """
    splits = {}
    for split in SPLITS:
        mine = [s for s in shards if s.split == split and s.samples > 0]
        if not mine:
            continue
        by_rate: dict[int, float] = {}
        for s in mine:
            for rate, seconds in s.seconds_by_rate.items():
                by_rate[rate] = by_rate.get(rate, 0.0) + seconds
        splits[split] = {
            "shards": [s.name for s in mine],
            "samples": sum(s.samples for s in mine),
            "hours": sum(s.seconds for s in mine) / 3600.0,
            "hours_by_sample_rate": {str(sr): sec / 3600.0 for sr, sec in sorted(by_rate.items())},
        }
    labels = sorted({label for s in shards for label in s.labels})
    return {
        "format": FORMAT,
        "classes": list(classes) if classes is not None else labels,
        "splits": splits,
        "sha256": dict(sorted((s.name, s.sha256) for s in shards if s.samples > 0)),
        "created_by": {"tool": "data_tools", "version": __version__, "command": command},
    }


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as written to disk: indented JSON and a final newline (no timestamps: reruns are identical)."""
    return (json.dumps(manifest, indent=2) + "\n").encode("utf-8")


class ShardWriter:
    """Write samples into a shard folder; use as a context manager.

    Args:
        out_dir: the shard folder (created if absent). Nothing is written outside it.
        name: shard name prefix, ``[A-Za-z0-9_-]+``.
        target_shard_bytes: a shard is closed once it reaches this size (bytes), so shards end up slightly larger.
        classes: the label list of the manifest; every event label must be in it. None: the sorted labels seen.
        command: the command line recorded in ``created_by``; default ``sys.argv``.
        subtype: FLAC sample format, ``"PCM_16"`` or ``"PCM_24"``.
        overwrite: replace a data set already in ``out_dir`` (its manifest and shards are deleted first, so a
            failed rewrite never leaves a manifest pointing at a mix of old and new shards). Without it such a
            folder is an error.

    One writer per folder at a time. ``close()`` (or leaving the ``with`` block normally) finishes the open shards
    and writes the manifest; an exception in the block calls ``abort()`` instead.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        name: str,
        target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
        classes: Sequence[str] | None = None,
        command: str | None = None,
        subtype: str = "PCM_16",
        overwrite: bool = False,
    ):
        if not _NAME_RE.match(name):
            raise ValueError(f"shard name {name!r} must match [A-Za-z0-9_-]+")
        if subtype not in SUBTYPES:
            raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
        if target_shard_bytes <= 0:
            raise ValueError(f"target_shard_bytes must be > 0, got {target_shard_bytes}")
        if classes is not None and len(set(classes)) != len(classes):
            raise ValueError(f"classes must be unique, got {list(classes)}")
        self.out_dir = Path(out_dir)
        self.name = name
        self.target_shard_bytes = int(target_shard_bytes)
        self.classes = list(classes) if classes is not None else None
        self.command = command if command is not None else shlex.join(sys.argv)
        self.subtype = subtype
        self._open: dict[str, ShardFile] = {}
        self._next_index: dict[str, int] = {}
        self._done: list[ShardStats] = []
        self._keys: set[str] = set()
        self._closed = False
        self._prepare_folder(overwrite)

    # -- folder handling --------------------------------------------------------------------------------------------

    def _existing(self) -> list[Path]:
        """Our earlier output in the folder: the manifest, the shards it lists, shards named like ours."""
        found: set[Path] = set()
        manifest = self.out_dir / MANIFEST_NAME
        if manifest.exists():
            found.add(manifest)
            try:
                listed = json.loads(manifest.read_text(encoding="utf-8")).get("splits", {})
                for info in listed.values():
                    # only plain names: a manifest must not make us delete anything outside the folder
                    found.update(self.out_dir / s for s in info.get("shards", []) if _PLAIN_TAR_RE.match(str(s)))
            except (OSError, ValueError, AttributeError, TypeError):
                pass  # an unreadable manifest still counts as existing data; its shards fall under the pattern below
        pattern = re.compile(rf"^{re.escape(self.name)}-({'|'.join(SPLITS)})-\d{{6}}\.tar$")
        found.update(p for p in self.out_dir.iterdir() if pattern.match(p.name))
        return sorted(p for p in found if p.is_file())

    def _prepare_folder(self, overwrite: bool) -> None:
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise NotADirectoryError(f"{self.out_dir} exists and is not a folder")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        existing = self._existing()
        if existing and not overwrite:
            shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
            raise FileExistsError(f"{self.out_dir} already holds shard data ({shown}); pass overwrite=True "
                                  "(CLI: --overwrite) to replace it")
        # Manifest first: from here on the folder is no longer claimed to be a complete data set.
        for path in sorted(existing, key=lambda p: p.name != MANIFEST_NAME):
            path.unlink()

    # -- writing ----------------------------------------------------------------------------------------------------

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, sample_audio: np.ndarray, sample_rate: int, meta: Mapping[str, Any], split: str) -> str:
        """Append one sample to the open shard of ``split``.

        Args:
            sample_audio: float (T,) in [-1, 1], mono, at ``sample_rate`` Hz.
            sample_rate: Hz.
            meta: the sample's JSON fields except ``sample_rate``/``duration_s`` (see :func:`build_sample_json`):
                ``recording_id`` (required), ``source``, ``channel``, ``offset_s``, ``group``, ``labelled``,
                ``events`` (times in seconds from the window start), ``meta``.
            split: ``train``, ``val``, ``test`` or ``all``.
        Returns: the sample key.
        Raises: ValueError on bad audio/fields or a duplicate key; RuntimeError after close/abort.
        """
        if self._closed:
            raise RuntimeError("ShardWriter is closed")
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        key, info, flac, payload = encode_sample(sample_audio, sample_rate, meta, self.subtype, self.classes)
        if key in self._keys:
            raise ValueError(f"duplicate sample key {key!r} (recording_id/channel/offset_s must be unique)")
        try:
            shard = self._open.get(split) or self._open_shard(split)
            # an I/O error (disk full, ...) can leave half a member in the shard: nothing written so far is trusted
            shard.add_encoded(key, info, flac, payload)
            self._keys.add(key)
            if shard.size >= self.target_shard_bytes:
                self._finish_shard(split)
        except BaseException:
            self.abort()
            raise
        return key

    def _open_shard(self, split: str) -> ShardFile:
        index = self._next_index.get(split, 0)
        self._next_index[split] = index + 1
        shard = ShardFile(self.out_dir, shard_name(self.name, split, index), split, self.subtype, self.classes)
        self._open[split] = shard
        return shard

    def _finish_shard(self, split: str) -> None:
        """Close the open shard of ``split``, sync it, hash it and rename it to its final name."""
        shard = self._open[split]  # stays listed until renamed, so abort() removes its temp file on failure
        self._done.append(shard.finish())
        del self._open[split]

    def manifest(self) -> dict[str, Any]:
        """The manifest of the shards finished so far (shards still open are not counted)."""
        return build_manifest(self._done, self.classes, self.command)

    def close(self) -> Path:
        """Finish every open shard and write ``manifest.json`` atomically; returns the manifest path."""
        if self._closed:
            raise RuntimeError("ShardWriter is already closed")
        try:
            for split in sorted(self._open):
                self._finish_shard(split)
            path = self.out_dir / MANIFEST_NAME
            atomic_write_bytes(path, manifest_bytes(self.manifest()))
        except BaseException:
            self.abort()
            raise
        self._closed = True
        return path

    def abort(self) -> None:
        """Drop everything this writer wrote: open temp files and finished shards; no manifest is written."""
        self._closed = True
        for shard in self._open.values():
            shard.abort()
        self._open.clear()
        for stats in self._done:
            (self.out_dir / stats.name).unlink(missing_ok=True)
        self._done.clear()
