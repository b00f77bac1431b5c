"""Frame-level targets from event annotations."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def events_to_frame_targets(
    events: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    n_frames: int,
    token_rate: float,
    unknown: str = "error",
) -> np.ndarray:
    """Multi-hot frame targets: frame i is positive for a class when one of its events overlaps the frame.

    Frame i covers the half-open interval [i / token_rate, (i + 1) / token_rate) seconds. An event [onset, offset)
    overlaps it when ``onset < (i + 1) / token_rate`` and ``offset > i / token_rate``, so an event that ends exactly on
    a frame boundary does not mark the next frame. A zero-length event (onset == offset) marks the frame holding
    that instant.

    Args:
        events: dicts with ``onset_s``, ``offset_s`` (seconds from the clip start) and ``label``.
        classes: the C class names; column c of the output is ``classes[c]``.
        n_frames: number of frames (tokens) N.
        token_rate: frames per second (Hz).
        unknown: ``"error"`` raises on a label outside ``classes``; ``"ignore"`` drops such events.
    Returns: float32 (N, C) of 0/1.
    Raises: ValueError on a bad argument, an unknown label (``unknown="error"``) or an event with offset < onset.
    """
    if n_frames < 0 or token_rate <= 0:
        raise ValueError(f"need n_frames >= 0 and token_rate > 0, got {n_frames} and {token_rate}")
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
    index = {name: c for c, name in enumerate(classes)}
    targets = np.zeros((n_frames, len(classes)), dtype=np.float32)
    starts = np.arange(n_frames, dtype=np.float64) / token_rate
    ends = (np.arange(n_frames, dtype=np.float64) + 1.0) / token_rate
    for event in events:
        label = event["label"]
        if label not in index:
            if unknown == "ignore":
                continue
            raise ValueError(f"event label {label!r} is not one of the classes {list(classes)}")
        onset, offset = float(event["onset_s"]), float(event["offset_s"])
        if offset < onset:
            raise ValueError(f"event {dict(event)} has offset_s < onset_s")
        if offset == onset:
            hit = (starts <= onset) & (onset < ends)
        else:
            hit = (onset < ends) & (offset > starts)
        targets[hit, index[label]] = 1.0
    return targets
