"""``python -m data_tools inspect DIR``: what a shard folder holds.

Hours by sample rate and split come from the manifest; samples, labelled windows, recordings, groups and events
per class come from the samples' JSON members (the FLAC members are skipped over, not decoded). ``--png`` draws
both: stacked hours per rate for each split, and event counts per class for each split.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, Mapping

from a2v_het.atomic import atomic_open
from a2v_het.data.manifest import read_manifest


def inspect_folder(shard_dir: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Summary of a shard folder (raises ManifestError for a bad manifest; ``verify`` checks every sha256).

    Returns ``{"folder", "classes", "splits": {split: {"shards", "samples", "hours", "hours_by_sample_rate",
    "labelled_samples", "recordings", "groups", "events", "events_by_class", "unreadable"}}, "total": {...}}``;
    hours in h, rates as strings of Hz.
    """
    root = Path(shard_dir)
    manifest = read_manifest(root, verify=verify)
    splits: dict[str, Any] = {}
    for split, info in manifest["splits"].items():
        counts = _count_members(root, info["shards"])
        splits[split] = {"shards": len(info["shards"]), "samples": int(info["samples"]), "hours": float(info["hours"]),
                         "hours_by_sample_rate": dict(info["hours_by_sample_rate"]), **counts}
    total_by_class: dict[str, int] = {}
    for s in splits.values():
        for label, n in s["events_by_class"].items():
            total_by_class[label] = total_by_class.get(label, 0) + n
    total = {key: sum(s[key] for s in splits.values())
             for key in ("shards", "samples", "hours", "labelled_samples", "events", "unreadable")}
    total["events_by_class"] = dict(sorted(total_by_class.items()))
    return {"folder": str(root), "format": manifest["format"], "classes": manifest["classes"],
            "command": manifest["created_by"].get("command", ""), "splits": splits, "total": total}


def _count_members(root: Path, shards: list[str]) -> dict[str, Any]:
    labelled = events = unreadable = 0
    recordings: set[str] = set()
    groups: set[str] = set()
    by_class: dict[str, int] = {}
    for shard in shards:
        try:
            with tarfile.open(root / shard) as tar:
                for member in tar:
                    if not member.name.endswith(".json"):
                        continue
                    try:
                        info = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
                        sample_events = info.get("events", [])
                        labels = [e["label"] for e in sample_events]
                    except (ValueError, AttributeError, KeyError, TypeError):
                        unreadable += 1
                        continue
                    labelled += bool(info.get("labelled"))
                    recordings.add(str(info.get("recording_id")))
                    groups.add(str(info.get("group")))
                    events += len(labels)
                    for label in labels:
                        by_class[label] = by_class.get(label, 0) + 1
        except (OSError, tarfile.TarError):
            unreadable += 1  # a whole shard that is not a tar counts once
    return {"labelled_samples": labelled, "recordings": len(recordings), "groups": len(groups), "events": events,
            "events_by_class": dict(sorted(by_class.items())), "unreadable": unreadable}


def format_summary(summary: Mapping[str, Any]) -> str:
    """Plain-text tables: one row per split and rate, then events per class."""
    lines = [f"{summary['folder']} ({summary['format']})"]
    rates = sorted({int(r) for s in summary["splits"].values() for r in s["hours_by_sample_rate"]})
    header = f"{'split':<6} {'shards':>6} {'samples':>8} {'hours':>9} {'labelled':>8} {'recs':>6} {'groups':>6}"
    lines.append(header + "".join(f" {r / 1000:>7g}k" for r in rates))
    for split, s in summary["splits"].items():
        row = (f"{split:<6} {s['shards']:>6} {s['samples']:>8} {s['hours']:>9.3f} {s['labelled_samples']:>8} "
               f"{s['recordings']:>6} {s['groups']:>6}")
        lines.append(row + "".join(f" {s['hours_by_sample_rate'].get(str(r), 0.0):>8.3f}" for r in rates))
    t = summary["total"]
    lines.append(f"{'total':<6} {t['shards']:>6} {t['samples']:>8} {t['hours']:>9.3f} {t['labelled_samples']:>8}")
    if t["events_by_class"]:
        lines.append("events by class: " + ", ".join(f"{k} {v}" for k, v in t["events_by_class"].items())
                     + f" (total {t['events']})")
    else:
        lines.append("no events")
    if t["unreadable"]:
        lines.append(f"unreadable samples/shards: {t['unreadable']}")
    return "\n".join(lines) + "\n"


def plot_summary(summary: Mapping[str, Any], png: str | os.PathLike) -> Path:
    """Two panels (hours by rate per split, events by class per split) saved atomically as a PNG."""
    import matplotlib  # lazy: matplotlib takes 0.3-0.45 s to import and only `inspect --png` needs it

    matplotlib.use("Agg")  # no display on clusters
    import matplotlib.pyplot as plt  # lazy: as above, after the backend is chosen

    splits = list(summary["splits"])
    rates = sorted({int(r) for s in summary["splits"].values() for r in s["hours_by_sample_rate"]})
    classes = list(summary["total"]["events_by_class"])
    fig, (ax_h, ax_e) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    bottom = [0.0] * len(splits)
    for rate in rates:
        values = [summary["splits"][s]["hours_by_sample_rate"].get(str(rate), 0.0) for s in splits]
        ax_h.bar(splits, values, bottom=bottom, label=f"{rate / 1000:g} kHz")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax_h.set_ylabel("hours")
    ax_h.set_title("audio by split and sample rate")
    if rates:
        ax_h.legend(fontsize="small")
    if classes:
        width = 0.8 / max(1, len(splits))
        for k, split in enumerate(splits):
            counts = [summary["splits"][split]["events_by_class"].get(c, 0) for c in classes]
            ax_e.barh([i + k * width for i in range(len(classes))], counts, height=width, label=split)
        ax_e.set_yticks([i + width * (len(splits) - 1) / 2 for i in range(len(classes))], classes)
        ax_e.legend(fontsize="small")
    else:
        ax_e.text(0.5, 0.5, "no events", ha="center", va="center", transform=ax_e.transAxes)
    ax_e.set_xlabel("events")
    ax_e.set_title("events by class and split")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    with atomic_open(png, "wb") as fh:
        fh.write(buf.getvalue())
    return Path(png)
