"""Grouping recordings and assigning groups to splits.

A split is decided per *group* (a recording, a recorder, a site or a date), never per window, so windows of one
group can never straddle train/val/test: a model evaluated on val has not heard that recorder (or site, or day).
The decision is a hash of the group name alone, so it does not depend on which other files are in the run: adding
recordings later never moves an existing group to another split.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Mapping

GROUP_BY = ("recording", "recorder", "site", "date")
SPLIT_NAMES = ("train", "val", "test")


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> train/val/test fractions; they must be three numbers >= 0 summing to 1 (+-1e-6)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--split {text!r}: need three numbers train,val,test such as 0.8,0.1,0.1") from None
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(f"--split {text!r}: need three numbers >= 0 (train,val,test)")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"--split {text!r}: fractions sum to {sum(values):g}, not 1")
    return values  # type: ignore[return-value]


def split_for_group(group: str, fractions: tuple[float, float, float] | None, seed: int = 0) -> str:
    """The split of ``group``: ``all`` without fractions; else u = first 8 bytes of sha256("{seed}/{group}") read as
    a fraction of 2^64, and train when u < f_train, val when u < f_train + f_val, else test.

    With few groups the realised proportions can be far from the fractions (5 groups cannot make 80/10/10); the
    run's report shows the hours each split got.
    """
    if fractions is None:
        return "all"
    digest = hashlib.sha256(f"{seed}/{group}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for name, fraction in zip(SPLIT_NAMES, fractions):
        edge += fraction
        if u < edge:
            return name
    # rounding at the top edge: the last split with a non-zero share
    return next(n for n, f in zip(reversed(SPLIT_NAMES), reversed(fractions)) if f > 0)


def compile_path_regex(pattern: str | None) -> re.Pattern[str] | None:
    """Compile ``--path-regex`` (named groups become metadata); ValueError names the problem."""
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"--path-regex {pattern!r} is not a valid regular expression: {exc}") from None
    if not regex.groupindex:
        raise ValueError(f"--path-regex {pattern!r} has no named groups such as (?P<site>[^/]+)")
    return regex


def path_fields(relpath: str, regex: re.Pattern[str] | None) -> dict[str, str] | None:
    """Named groups of ``regex`` searched in the POSIX relative path ({} without a regex, None when it does not
    match). Groups that did not take part in the match are left out."""
    if regex is None:
        return {}
    match = regex.search(relpath)
    if match is None:
        return None
    return {k: v for k, v in match.groupdict().items() if v is not None}


def group_of(group_by: str, recording_id: str, fields: Mapping[str, str]) -> str:
    """The grouping key: the recording id for ``recording``, else the field of that name (from the path regex or
    the annotation table). KeyError when the field is missing."""
    if group_by == "recording":
        return recording_id
    value = fields.get(group_by)
    if value is None or value == "":
        raise KeyError(group_by)
    return str(value)
