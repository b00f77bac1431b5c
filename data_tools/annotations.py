"""Importing event annotations into one normalised table that ``python -m data_tools shard --annotations`` reads.

Formats:

* ``raven``: Raven Pro selection tables (tab-separated; ``Begin Time (s)``, ``End Time (s)``, optional ``Low Freq
  (Hz)``/``High Freq (Hz)``, a label column). The audio file comes from ``Begin Path`` or ``Begin File`` when the
  table has them, else from the table's name (``XC1.Table.1.selections.txt`` -> stem ``XC1``). With ``Begin File``
  and a ``File Offset (s)`` column (tables over several files, whose Begin Time runs on across the files) the onset
  is the file offset. Raven lists a selection once per view (waveform and spectrogram): rows are de-duplicated by
  ``Selection``, preferring the spectrogram row.
* ``audacity``: label tracks exported as text (``start<TAB>end<TAB>label``, optionally followed by a line
  ``\\<TAB>low<TAB>high`` with the label's frequency range); the audio file is the one with the label file's stem.
* ``sonic-visualiser``: ``.svl``/session XML with sparse layers whose points carry ``frame`` and ``duration``;
  box layers (``subtype="box"``) also give the frequency band: ``value`` (low, Hz) and ``extent`` (height, Hz).
  Frames are converted with the sample rate *of the audio file* when it is found: the ``sampleRate`` attribute is
  not trustworthy (pykanto's files say 44100 for 48 kHz and 32 kHz audio, whose frames run at the true rate). Only
  when no audio is found is ``sampleRate`` used, with a note.
* ``csv``: a header row and columns ``file, onset[_s], offset[_s], label[, low[_hz], high[_hz]][, channel]``
  (comma, tab or semicolon separated; a few aliases such as start/end are accepted). Other columns (recorder, site,
  date, ...) are kept per file; ``shard`` can group by them. The normalised table itself is such a CSV.

The normalised table (:data:`TABLE_COLUMNS`, plus any extra per-file columns): one row per event, times in seconds
from the start of the audio file, frequencies in Hz (empty when unknown), ``channel`` 0-based or empty for all
channels. A row with only ``file`` filled in says "this file is annotated and has no events" (so its windows are
``labelled`` negatives); the importers write one for every annotation file that holds no events.

Checks, each reported with the annotation file and row (1-based line; "point N" for XML): numbers parse and are
finite, ``0 <= onset < offset``, ``offset <= duration`` of the audio when it is found (within
:data:`DURATION_TOLERANCE_S`, then clipped to it), both or neither of low/high with ``0 <= low < high``, labels that
the class map knows. Empty labels (Sonic Visualiser boxes often have none) become ``--empty-label``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Mapping, Sequence

import soundfile as sf
import yaml

from a2v_het.atomic import atomic_open
from data_tools.sources import AUDIO_EXTENSIONS, SOUNDFILE_EXTENSIONS, discover

FORMATS = ("raven", "audacity", "sonic-visualiser", "csv")
TABLE_COLUMNS = ("file", "onset_s", "offset_s", "label", "low_hz", "high_hz", "channel")
DEFAULT_EMPTY_LABEL = "event"
DURATION_TOLERANCE_S = 0.001
"""An event may end this many seconds past the end of its audio (tools round times); it is clipped to the end."""
RAVEN_LABEL_COLUMNS = ("Annotation", "Label", "Species", "Class", "Call Type", "Sound Type")
_RAVEN_TABLE_SUFFIX = re.compile(r"\.Table\.\d+\.selections$", re.IGNORECASE)
_CSV_ALIASES = {
    "file": ("file", "filename", "file_name", "path", "audio", "audio_file", "sound_file", "begin_file"),
    "onset_s": ("onset_s", "onset", "start", "start_s", "begin", "begin_s", "begin_time", "begin_time_s"),
    "offset_s": ("offset_s", "offset", "end", "end_s", "stop", "stop_s", "end_time", "end_time_s"),
    "label": ("label", "class", "species", "annotation"),
    "low_hz": ("low_hz", "low", "low_freq", "low_freq_hz", "fmin", "f_low", "freq_low"),
    "high_hz": ("high_hz", "high", "high_freq", "high_freq_hz", "fmax", "f_high", "freq_high"),
    "channel": ("channel",),
}


class AnnotationError(ValueError):
    """One bad annotation row: ``origin`` (annotation file), ``row`` (1-based line, or "point N") and why."""

    def __init__(self, origin: str | os.PathLike, row: int | str, message: str):
        self.origin, self.row, self.message = str(origin), row, message
        where = f"row {row}" if isinstance(row, int) else str(row)  # XML rows are "point N"
        super().__init__(f"{origin}: {where}: {message}")


@dataclass(frozen=True)
class AudioFacts:
    """What the importer knows about an annotated audio file: its path, rate (Hz), duration (s) and channels."""

    path: Path
    sample_rate: int
    duration_s: float
    channels: int


@dataclass
class Annotation:
    """One event of the normalised table (times in s from the start of ``file``, Hz), or a marker (``onset_s`` is
    None) saying ``file`` is annotated and has no events. ``origin``/``row`` say where it came from."""

    file: str
    onset_s: float | None
    offset_s: float | None
    label: str | None
    low_hz: float | None = None
    high_hz: float | None = None
    channel: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    origin: str = ""
    row: int | str = 0
    facts: AudioFacts | None = field(default=None, repr=False, compare=False)
    """The audio the row refers to, when the importer found it (used by the checks, not written)."""

    @property
    def is_marker(self) -> bool:
        return self.onset_s is None


@dataclass
class ImportResult:
    """Rows that passed (``annotations``), rows that did not (``errors``), and notes for the user."""

    annotations: list[Annotation] = field(default_factory=list)
    errors: list[AnnotationError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped_by_map: int = 0


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers.


def _read_text(path: Path) -> str:
    """Text of an annotation file: UTF-8 (with or without BOM), else Latin-1 (old Raven tables on Windows)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_number(text: Any, what: str) -> float:
    """A finite float from a table cell; a lone decimal comma is accepted (European locales). ValueError names
    ``what`` and the text."""
    raw = str(text).strip()
    candidate = raw.replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw
    try:
        value = float(candidate)
    except ValueError:
        raise ValueError(f"{what} {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {raw!r} is not finite")
    return value


def _optional_number(text: Any, what: str) -> float | None:
    return None if text is None or str(text).strip() == "" else parse_number(text, what)


def _file_name(hint: str) -> str:
    """The last component of a path written on any system (Raven's Begin Path is often a Windows path)."""
    return PureWindowsPath(hint).name if "\\" in hint else PurePosixPath(hint).name


def format_number(value: float | None) -> str:
    """Shortest text that reads back as the same float (repr), or empty for None."""
    return "" if value is None else repr(float(value))


# ---------------------------------------------------------------------------------------------------------------------
# Finding the audio an annotation file refers to.


class AudioLocator:
    """Finds audio files by relative path, file name or stem: under ``audio_dir`` (searched recursively, once) and
    next to the annotation file. The table's ``file`` is the path relative to ``audio_dir`` when found there, else
    the file name when found next to the annotation file, else the hint as given."""

    def __init__(self, audio_dir: str | os.PathLike | None = None):
        self.audio_dir = Path(audio_dir) if audio_dir is not None else None
        self._by_name: dict[str, list[str]] = {}
        self._by_stem: dict[str, list[str]] = {}
        self._facts: dict[Path, AudioFacts | None] = {}
        if self.audio_dir is not None:
            if not self.audio_dir.is_dir():
                raise ValueError(f"--audio-dir {self.audio_dir} is not a folder")
            for rel in discover(self.audio_dir)[0]:
                if PurePosixPath(rel).suffix.lower() in SOUNDFILE_EXTENSIONS:
                    p = PurePosixPath(rel)
                    self._by_name.setdefault(p.name, []).append(rel)
                    self._by_stem.setdefault(p.stem, []).append(rel)

    def find(self, hint: str, near: Path | None) -> tuple[str, Path | None]:
        """(table file id, audio path or None). ValueError when the hint matches several files."""
        name = _file_name(hint)
        has_ext = PurePosixPath(name).suffix.lower() in AUDIO_EXTENSIONS
        if self.audio_dir is not None:
            rel = hint.replace("\\", "/").lstrip("/")
            if has_ext and "/" in rel and (self.audio_dir / rel).is_file():
                return rel, self.audio_dir / rel
            # by name, then by stem (a table may name x.wav for audio converted to x.flac, or differ in case)
            matches = self._by_name.get(name, []) if has_ext else []
            matches = matches or self._by_stem.get(PurePosixPath(name).stem if has_ext else name, [])
            if len(matches) > 1:
                raise ValueError(f"{hint!r} matches several audio files under {self.audio_dir}: {matches[:4]}")
            if matches:
                return matches[0], self.audio_dir / matches[0]
        if near is not None:
            if has_ext and (near / name).is_file():
                return name, near / name
            else:
                stem = PurePosixPath(name).stem if has_ext else name
                found = sorted(p for p in near.glob(f"{glob_escape(stem)}.*")
                               if p.suffix.lower() in SOUNDFILE_EXTENSIONS and p.is_file())
                if len(found) > 1:
                    raise ValueError(f"{hint!r} matches several audio files next to the annotations: "
                                     f"{[p.name for p in found]}")
                if found:
                    return found[0].name, found[0]
        return name, None

    def facts(self, path: Path | None) -> AudioFacts | None:
        """Rate, duration and channels from the audio header (None when there is no path or it cannot be read)."""
        if path is None:
            return None
        if path not in self._facts:
            try:
                info = sf.info(str(path))
                self._facts[path] = AudioFacts(path, int(info.samplerate), info.frames / info.samplerate,
                                               int(info.channels))
            except Exception:
                self._facts[path] = None
        return self._facts[path]


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]])", r"[\1]", text)


# ---------------------------------------------------------------------------------------------------------------------
# Parsers: each returns (annotations, errors, notes) for one annotation file. Labels may still be empty here.

Parsed = tuple[list[Annotation], list[AnnotationError], list[str]]


def _locate(locator: AudioLocator, path: Path, hint: str, row: int | str
            ) -> tuple[str, AudioFacts | None, AnnotationError | None]:
    try:
        file_id, audio = locator.find(hint, path.parent)
    except ValueError as exc:
        return _file_name(hint), None, AnnotationError(path, row, str(exc))
    return file_id, locator.facts(audio), None


def raven_audio_stem(table: Path) -> str:
    """Audio stem a Raven table's name refers to: ``XC1.Table.1.selections.txt`` -> ``XC1``."""
    stem = table.name[:-4] if table.name.lower().endswith(".txt") else table.stem
    return _RAVEN_TABLE_SUFFIX.sub("", stem)


def _dedupe_raven(header: list[str], rows: list[tuple[int, list[str]]]) -> list[tuple[int, list[str]]]:
    """One row per Selection (Raven repeats it per view), preferring a Spectrogram view; file order is kept."""
    if "Selection" not in header:
        return rows
    sel, view = header.index("Selection"), header.index("View") if "View" in header else None
    chosen: dict[str, tuple[int, list[str]]] = {}
    order: list[str] = []
    for line, row in rows:
        key = row[sel].strip() if sel < len(row) else ""
        if key not in chosen:
            chosen[key] = (line, row)
            order.append(key)
        elif view is not None and view < len(row) and row[view].strip().lower().startswith("spectrogram"):
            old = chosen[key][1]
            if not (view < len(old) and old[view].strip().lower().startswith("spectrogram")):
                chosen[key] = (line, row)
    return [chosen[k] for k in order]


def parse_raven(path: Path, locator: AudioLocator, label_column: str | None = None) -> Parsed:
    table = list(csv.reader(io.StringIO(_read_text(path)), delimiter="\t"))
    if not table or not any(c.strip() for c in table[0]):
        return [], [AnnotationError(path, 1, "empty file: no Raven header")], []
    header = [h.strip() for h in table[0]]
    need = ("Begin Time (s)", "End Time (s)")
    missing = [c for c in need if c not in header]
    if missing:
        return [], [AnnotationError(path, 1, f"not a Raven selection table: missing column(s) {missing}; "
                                             f"columns are {header}")], []
    notes: list[str] = []
    if label_column is not None:
        if label_column not in header:
            return [], [AnnotationError(path, 1, f"no label column {label_column!r}; columns are {header}")], []
        label_col = label_column
    else:
        label_col = next((c for c in RAVEN_LABEL_COLUMNS if c in header), None)
        if label_col is None:
            notes.append(f"{path}: no label column (tried {list(RAVEN_LABEL_COLUMNS)}); every selection gets the "
                         "empty label (see --empty-label, --label-column)")
    file_col = next((c for c in ("Begin Path", "Begin File") if c in header), None)
    use_file_offset = file_col is not None and "File Offset (s)" in header
    rows = [(i, r) for i, r in enumerate(table[1:], start=2) if any(c.strip() for c in r)]
    rows = _dedupe_raven(header, rows)
    out: list[Annotation] = []
    errors: list[AnnotationError] = []
    table_file = None
    if file_col is None:
        table_file = _locate(locator, path, raven_audio_stem(path), 1)
        if table_file[2] is not None:
            return [], [table_file[2]], notes
        if not rows:
            out.append(Annotation(table_file[0], None, None, None, origin=str(path), row=1))
    for line, row in rows:
        cells = dict(zip(header, (c.strip() for c in row)))
        try:
            if len(row) > len(header):
                raise ValueError(f"{len(row)} cells for {len(header)} columns")
            if table_file is not None:
                file_id, facts = table_file[0], table_file[1]
            else:
                hint = cells.get(file_col, "")
                if not hint:
                    raise ValueError(f"empty {file_col!r}")
                file_id, facts, error = _locate(locator, path, hint, line)
                if error is not None:
                    raise ValueError(error.message)
            begin = parse_number(cells.get("Begin Time (s)", ""), "Begin Time (s)")
            end = parse_number(cells.get("End Time (s)", ""), "End Time (s)")
            if use_file_offset:
                onset = parse_number(cells.get("File Offset (s)", ""), "File Offset (s)")
                begin, end = onset, onset + (end - begin)
            channel = _optional_number(cells.get("Channel"), "Channel")
            out.append(Annotation(
                file_id, begin, end, cells.get(label_col, "") if label_col else "",
                _optional_number(cells.get("Low Freq (Hz)"), "Low Freq (Hz)"),
                _optional_number(cells.get("High Freq (Hz)"), "High Freq (Hz)"),
                None if channel is None else int(channel) - 1,  # Raven counts channels from 1
                origin=str(path), row=line))
            out[-1].facts = facts
        except ValueError as exc:
            errors.append(AnnotationError(path, line, str(exc)))
    return out, errors, notes


def parse_audacity(path: Path, locator: AudioLocator) -> Parsed:
    file_id, facts, error = _locate(locator, path, path.stem, 1)
    if error is not None:
        return [], [error], []
    out: list[Annotation] = []
    errors: list[AnnotationError] = []
    last: Annotation | None = None
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        parts = text.split("\t")
        try:
            if parts[0].strip() == "\\":
                # the frequency line of the label just above: "\<TAB>low<TAB>high"
                if last is None or last.row != line - 1:
                    raise ValueError("frequency line '\\' without a label line just above it")
                if len(parts) < 3:
                    raise ValueError(f"frequency line needs low and high, got {text!r}")
                last.low_hz = parse_number(parts[1], "low frequency")
                last.high_hz = parse_number(parts[2], "high frequency")
                continue
            if len(parts) < 2:
                raise ValueError(f"need start<TAB>end<TAB>label, got {text!r}")
            last = Annotation(file_id, parse_number(parts[0], "start"), parse_number(parts[1], "end"),
                              "\t".join(parts[2:]).strip(), origin=str(path), row=line)
            last.facts = facts
            out.append(last)
        except ValueError as exc:
            last = None
            errors.append(AnnotationError(path, line, str(exc)))
    if not out and not errors:
        out.append(Annotation(file_id, None, None, None, origin=str(path), row=1))
    return out, errors, []


def parse_sonic_visualiser(path: Path, locator: AudioLocator) -> Parsed:
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        return [], [AnnotationError(path, getattr(exc, "position", ("?",))[0], f"not readable XML: {exc}")], []
    file_id, facts, error = _locate(locator, path, path.stem, 1)
    if error is not None:
        return [], [error], []
    datasets = {d.get("id"): d for d in root.iter("dataset")}
    out: list[Annotation] = []
    errors: list[AnnotationError] = []
    notes: list[str] = []
    layers = 0
    for model in root.iter("model"):
        dataset = datasets.get(model.get("dataset"))
        if model.get("type") != "sparse" or dataset is None:
            continue
        layers += 1
        if facts is not None:
            rate = float(facts.sample_rate)
        else:
            try:
                rate = parse_number(model.get("sampleRate"), "sampleRate")
            except ValueError as exc:
                errors.append(AnnotationError(path, 1, f"model {model.get('id')}: {exc}"))
                continue
            notes.append(f"{path}: audio for {file_id!r} not found; frames converted with the XML sampleRate "
                         f"{rate:g} Hz, which Sonic Visualiser files often get wrong (pass --audio-dir)")
        box = model.get("subtype") == "box"
        for k, point in enumerate(dataset.iter("point"), start=1):
            row = f"point {k}"
            try:
                if point.get("duration") is None:
                    raise ValueError(f"time instant (frame={point.get('frame')}) has no duration; only layers "
                                     "with durations (boxes, regions, notes) make events")
                frame = parse_number(point.get("frame"), "frame")
                duration = parse_number(point.get("duration"), "duration")
                low = high = None
                if box:
                    low = parse_number(point.get("value"), "value")
                    # rounded: value + extent in binary floats gives 8707.630000000001 for 4317.89 + 4389.74
                    high = round(low + parse_number(point.get("extent"), "extent"), 6)
                out.append(Annotation(file_id, frame / rate, (frame + duration) / rate, point.get("label") or "",
                                      low, high, origin=str(path), row=row))
                out[-1].facts = facts
            except ValueError as exc:
                errors.append(AnnotationError(path, row, str(exc)))
    if layers == 0:
        errors.append(AnnotationError(path, 1, "no sparse annotation layer (boxes, regions, notes) in the XML"))
    elif not out and not errors:
        out.append(Annotation(file_id, None, None, None, origin=str(path), row=1))
    return out, errors, notes


def _csv_dialect(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    return max(",\t;", key=first.count) if first else ","


def parse_csv(path: Path, locator: AudioLocator | None, label_column: str | None = None) -> Parsed:
    """A CSV with a header. ``locator`` None: ``file`` is taken as written (reading a normalised table)."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text), delimiter=_csv_dialect(text))
    table = list(reader)
    if not table:
        return [], [AnnotationError(path, 1, "empty file: no header")], []
    header = [h.strip() for h in table[0]]
    canon: dict[int, str] = {}
    for i, name in enumerate(header):
        key = name.lower().replace(" ", "_").replace("(s)", "s").replace("(hz)", "hz").strip("_")
        if label_column is not None and name == label_column:
            canon[i] = "label"
            continue
        for column, aliases in _CSV_ALIASES.items():
            if key in aliases and column not in canon.values() and not (column == "label" and label_column):
                canon[i] = column
                break
    missing = [c for c in ("file", "onset_s", "offset_s") if c not in canon.values()]
    if label_column is not None and "label" not in canon.values():
        missing.append(label_column)
    if missing:
        return [], [AnnotationError(path, 1, f"missing column(s) {missing}; columns are {header} (need file, "
                                             "onset, offset, label[, low, high, channel])")], []
    extras = {i: h for i, h in enumerate(header) if i not in canon and h}
    out: list[Annotation] = []
    errors: list[AnnotationError] = []
    for line, row in enumerate(table[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        try:
            if len(row) > len(header):
                raise ValueError(f"{len(row)} cells for {len(header)} columns")
            cells = {canon[i]: row[i].strip() for i in canon if i < len(row)}
            hint = cells.get("file", "")
            if not hint:
                raise ValueError("empty 'file'")
            facts = None
            if locator is not None:
                found, audio = locator.find(hint, path.parent)
                facts = locator.facts(audio)
                # not found: keep the path as written (shard matches it by path, name or stem)
                hint = found if audio is not None else hint.replace("\\", "/")
            extra = {name: row[i].strip() for i, name in extras.items() if i < len(row) and row[i].strip()}
            times = (cells.get("onset_s", ""), cells.get("offset_s", ""), cells.get("label", ""))
            if not any(times):
                out.append(Annotation(hint, None, None, None, extra=extra, origin=str(path), row=line))
                continue
            channel = _optional_number(cells.get("channel"), "channel")
            if channel is not None and channel != int(channel):
                raise ValueError(f"channel {cells['channel']!r} is not an integer")
            out.append(Annotation(
                hint, parse_number(times[0], "onset"), parse_number(times[1], "offset"), times[2],
                _optional_number(cells.get("low_hz"), "low"), _optional_number(cells.get("high_hz"), "high"),
                None if channel is None else int(channel), extra=extra, origin=str(path), row=line))
            out[-1].facts = facts
        except ValueError as exc:
            errors.append(AnnotationError(path, line, str(exc)))
    return out, errors, []


# ---------------------------------------------------------------------------------------------------------------------
# Checks, class map, the whole import.


def check_annotation(a: Annotation, facts: AudioFacts | None, empty_label: str) -> Annotation:
    """The annotation with its label defaulted and its offset clipped to the audio; ValueError says what is wrong.

    Rules: 0 <= onset < offset; offset <= duration + DURATION_TOLERANCE_S when the audio is known; low/high both or
    neither, 0 <= low < high; channel >= 0 and below the audio's channel count when known.
    """
    if a.is_marker:
        return a
    onset, offset = a.onset_s, a.offset_s
    assert onset is not None and offset is not None
    if onset < 0:
        raise ValueError(f"onset {onset:g} s is negative")
    if not onset < offset:
        raise ValueError(f"onset {onset:g} s is not before offset {offset:g} s" +
                         (" (a point label? events need a duration)" if onset == offset else ""))
    if facts is not None:
        if onset >= facts.duration_s:
            raise ValueError(f"onset {onset:g} s is past the end of {facts.path.name} ({facts.duration_s:g} s)")
        if offset > facts.duration_s + DURATION_TOLERANCE_S:
            raise ValueError(f"offset {offset:g} s is past the end of {facts.path.name} ({facts.duration_s:g} s)")
        offset = min(offset, facts.duration_s)
    if (a.low_hz is None) != (a.high_hz is None):
        raise ValueError(f"low/high frequency: give both or neither, got {a.low_hz}/{a.high_hz}")
    if a.low_hz is not None and a.high_hz is not None:
        if a.low_hz < 0:
            raise ValueError(f"low frequency {a.low_hz:g} Hz is negative")
        if not a.low_hz < a.high_hz:
            raise ValueError(f"low frequency {a.low_hz:g} Hz is not below high frequency {a.high_hz:g} Hz")
    if a.channel is not None:
        if a.channel < 0:
            raise ValueError(f"channel {a.channel} is negative")
        if facts is not None and a.channel >= facts.channels:
            raise ValueError(f"channel {a.channel} but {facts.path.name} has {facts.channels} channel(s)")
    label = (a.label or "").strip() or empty_label
    return replace(a, offset_s=offset, label=label)


def load_class_map(path: str | os.PathLike) -> dict[str, str | None]:
    """Raw label -> class (None: drop the event). YAML/YML: a mapping (null or "" drops); CSV: header
    ``label,class`` (an empty class drops). ValueError names the file and entry."""
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(_read_text(path))
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the class map must be a mapping raw label -> class (or null to drop)")
        items = list(data.items())
    elif path.suffix.lower() in (".csv", ".tsv", ".txt"):
        text = _read_text(path)
        rows = list(csv.reader(io.StringIO(text), delimiter=_csv_dialect(text)))
        if not rows or [c.strip().lower() for c in rows[0][:2]] != ["label", "class"]:
            raise ValueError(f"{path}: a CSV class map needs the header 'label,class'")
        items = []
        for line, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) < 1 or len(row) > 2:
                raise ValueError(f"{path}: row {line}: need label,class; got {row}")
            items.append((row[0].strip(), row[1].strip() if len(row) > 1 else ""))
    else:
        raise ValueError(f"{path}: class map must be .yaml/.yml or .csv")
    out: dict[str, str | None] = {}
    for raw, target in items:
        if target is not None and not isinstance(target, (str, int, float)):
            raise ValueError(f"{path}: entry {raw!r}: class must be a string or null, got {target!r}")
        target = None if target is None or str(target).strip() == "" else str(target).strip()
        out["" if raw is None else str(raw).strip()] = target
    return out


def import_annotations(
    paths: Sequence[str | os.PathLike],
    fmt: str,
    *,
    audio_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
    class_map: Mapping[str, str | None] | None = None,
    empty_label: str = DEFAULT_EMPTY_LABEL,
) -> ImportResult:
    """Parse every annotation file (folders are searched for ``.txt``/``.xml``/``.svl``/``.csv``), check every row
    against its audio (when found under ``audio_dir`` or next to the annotation file), apply ``class_map``.

    Labels are checked against the class map after ``empty_label`` is applied (so ``"event"`` can be mapped too).
    Returns every good row and every error; nothing is dropped silently (``dropped_by_map`` counts map drops).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if not empty_label.strip():
        raise ValueError("--empty-label must not be empty")
    locator = AudioLocator(audio_dir)
    parsers: dict[str, Callable[[Path], Parsed]] = {
        "raven": lambda p: parse_raven(p, locator, label_column),
        "audacity": lambda p: parse_audacity(p, locator),
        "sonic-visualiser": lambda p: parse_sonic_visualiser(p, locator),
        "csv": lambda p: parse_csv(p, locator, label_column),
    }
    result = ImportResult()
    for path in expand_inputs(paths, fmt):
        rows, errors, notes = parsers[fmt](path)
        result.errors.extend(errors)
        result.notes.extend(notes)
        for a in rows:
            try:
                a = check_annotation(a, a.facts, empty_label)
                if class_map is not None and not a.is_marker:
                    if a.label not in class_map:
                        raise ValueError(f"label {a.label!r} is not in the class map")
                    target = class_map[a.label]  # type: ignore[index]
                    if target is None:
                        result.dropped_by_map += 1
                        # the file is still annotated (for the classes kept): a marker keeps it labelled
                        a = replace(a, onset_s=None, offset_s=None, label=None, low_hz=None, high_hz=None,
                                    channel=None)
                    else:
                        a = replace(a, label=target)
                result.annotations.append(a)
            except ValueError as exc:
                result.errors.append(AnnotationError(a.origin, a.row, str(exc)))
    return result


_FORMAT_SUFFIXES = {"raven": (".txt",), "audacity": (".txt",), "sonic-visualiser": (".xml", ".svl"),
                    "csv": (".csv", ".tsv", ".txt")}


def expand_inputs(paths: Iterable[str | os.PathLike], fmt: str) -> list[Path]:
    """Files as given; folders replaced by their files with the format's suffixes (recursive, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in _FORMAT_SUFFIXES[fmt]
                              and not q.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise ValueError(f"annotation input {p} does not exist")
    if not out:
        raise ValueError(f"no {fmt} annotation files in {[str(p) for p in paths]}")
    return out


def _sort_key(a: Annotation) -> tuple:
    return (a.file, not a.is_marker, a.onset_s or 0.0, a.offset_s or 0.0, a.label or "",
            -1.0 if a.low_hz is None else a.low_hz, -1.0 if a.high_hz is None else a.high_hz,
            -1 if a.channel is None else a.channel)


def normalise(annotations: Iterable[Annotation]) -> list[Annotation]:
    """Sorted rows, one marker kept only for files without events, exact duplicates removed."""
    rows = sorted(annotations, key=_sort_key)
    with_events = {a.file for a in rows if not a.is_marker}
    out: list[Annotation] = []
    seen: set[tuple] = set()
    for a in rows:
        key = _sort_key(a) + (tuple(sorted(a.extra.items())),)
        if (a.is_marker and a.file in with_events) or key in seen:
            continue
        seen.add(key)
        if a.is_marker and any(b.is_marker and b.file == a.file for b in out):
            continue
        out.append(a)
    return out


def write_table(annotations: Iterable[Annotation], path: str | os.PathLike) -> int:
    """Write the normalised table atomically (see the module docstring); returns the number of event rows."""
    rows = normalise(annotations)
    extra_columns = sorted({k for a in rows for k in a.extra} - set(TABLE_COLUMNS))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(list(TABLE_COLUMNS) + extra_columns)
    for a in rows:
        writer.writerow([a.file, format_number(a.onset_s), format_number(a.offset_s), a.label or "",
                         format_number(a.low_hz), format_number(a.high_hz),
                         "" if a.channel is None else str(a.channel)] + [a.extra.get(k, "") for k in extra_columns])
    with atomic_open(path, "w") as fh:
        fh.write(buf.getvalue())
    return sum(not a.is_marker for a in rows)


@dataclass
class FileAnnotations:
    """All rows of one audio file in a normalised table: events (file time) and per-file extra columns."""

    file: str
    events: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)


class AnnotationTableError(ValueError):
    """A normalised table that ``shard`` cannot use; the message lists the bad rows."""


def read_table(path: str | os.PathLike, empty_label: str = DEFAULT_EMPTY_LABEL) -> dict[str, FileAnnotations]:
    """Read a normalised annotation table: {file: FileAnnotations}, events as dicts ``onset_s, offset_s, label
    [, low_hz, high_hz][, channel]`` in seconds from the start of the file.

    Raises AnnotationTableError listing the rows that break the table checks (times, frequencies, a per-file
    column that changes between rows of one file).
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationTableError(f"annotation table {path} does not exist")
    rows, errors, _ = parse_csv(path, None)
    files: dict[str, FileAnnotations] = {}
    for a in rows:
        try:
            a = check_annotation(a, None, empty_label)
            entry = files.setdefault(a.file, FileAnnotations(a.file))
            for key, value in a.extra.items():
                if entry.extra.setdefault(key, value) != value:
                    raise ValueError(f"column {key!r} is {value!r} here but {entry.extra[key]!r} in row "
                                     f"{entry.rows[0]} of the same file")
            entry.rows.append(int(a.row))
            if not a.is_marker:
                event: dict[str, Any] = {"onset_s": a.onset_s, "offset_s": a.offset_s, "label": a.label}
                if a.low_hz is not None:
                    event["low_hz"], event["high_hz"] = a.low_hz, a.high_hz
                if a.channel is not None:
                    event["channel"] = a.channel
                entry.events.append(event)
        except ValueError as exc:
            errors.append(AnnotationError(path, a.row, str(exc)))
    if errors:
        shown = "\n  ".join(str(e) for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise AnnotationTableError(f"{len(errors)} bad row(s) in annotation table {path}:\n  {shown}{more}")
    return files
