"""Raven Pro selection tables (tab-separated text, one row per selection, opened with File > Open Selection Table).

Columns: Selection, View, Channel, Begin Time (s), End Time (s), Low Freq (Hz), High Freq (Hz), label, score.
View is "Spectrogram 1" and Channel 1 (Raven numbers channels from 1); times are seconds from the file start.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable

from a2v_het.atomic import atomic_write_text

COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
           "label", "score")


def _clean(text: str) -> str:
    return str(text).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def format_selection_table(events: Iterable[dict[str, Any]], low_hz: float = 0.0, high_hz: float | None = None,
                           channel: int = 1) -> str:
    """Events (``onset_s``, ``offset_s``, ``label``, optional ``score`` / ``low_hz`` / ``high_hz``) -> table text,
    selections numbered from 1 in onset order."""
    rows = ["\t".join(COLUMNS)]
    ordered = sorted(events, key=lambda e: (float(e["onset_s"]), str(e["label"])))
    for i, e in enumerate(ordered, 1):
        lo = e.get("low_hz", low_hz)
        hi = e.get("high_hz", high_hz)
        rows.append("\t".join([
            str(i), "Spectrogram 1", str(channel), f"{float(e['onset_s']):.4f}", f"{float(e['offset_s']):.4f}",
            f"{float(lo or 0.0):.1f}", f"{float(hi or 0.0):.1f}", _clean(e["label"]),
            f"{float(e.get('score', 1.0)):.4f}"]))
    return "\n".join(rows) + "\n"


def write_selection_table(path: str | os.PathLike, events: Iterable[dict[str, Any]], low_hz: float = 0.0,
                          high_hz: float | None = None, channel: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, format_selection_table(events, low_hz, high_hz, channel))
    return path


def read_selection_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a selection table as events (``onset_s``, ``offset_s``, ``label``, ``score``, ``low_hz``,
    ``high_hz``, ``selection``). The label column may be named ``label``, ``Annotation`` or ``Species``."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            label = row.get("label", row.get("Annotation", row.get("Species", "")))
            out.append({"selection": int(row["Selection"]), "onset_s": float(row["Begin Time (s)"]),
                        "offset_s": float(row["End Time (s)"]), "label": label,
                        "score": float(row["score"]) if row.get("score") not in (None, "") else None,
                        "low_hz": float(row.get("Low Freq (Hz)") or 0.0),
                        "high_hz": float(row.get("High Freq (Hz)") or 0.0)})
    return out
