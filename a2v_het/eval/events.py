"""Frame probabilities -> events, and event-level / frame-level metrics (pure numpy + scipy).

    probs (T, C) at the token rate --smooth (moving average)--> threshold per class --> contiguous runs
    --> drop runs shorter than min_duration_s --> merge runs separated by < merge_gap_s --> events

Event matching rules (per class, predictions vs references):

* ``"iou"``: one-to-one bipartite matching that maximises the number of pairs with IoU >= ``iou_threshold``
  (DCASE few-shot bioacoustics style; ties broken by larger IoU). ``iou_threshold=0`` means "any overlap" (IoU > 0).
* ``"collar"``: sed_eval's event-based rule: onset within ``collar_s`` and offset within
  ``max(collar_s, offset_collar_ratio * reference duration)``; one-to-one (bipartite) as well.

Events are dicts with ``onset_s``, ``offset_s``, ``label`` (+ ``score`` for predictions).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

Event = dict[str, Any]


# ------------------------------------------------------------------------------------------------- extraction
def smooth_probs(probs: np.ndarray, token_rate: float, window_s: float) -> np.ndarray:
    """Centred moving average over ``round(window_s * token_rate)`` frames (edges averaged over the valid part)."""
    probs = np.asarray(probs, dtype=np.float64)
    k = int(round(window_s * token_rate))
    if k <= 1 or probs.shape[0] == 0:
        return probs
    kernel = np.ones(k)
    left = (k - 1) // 2
    out = np.empty_like(probs)
    counts = np.convolve(np.ones(probs.shape[0]), kernel, mode="full")[left:left + probs.shape[0]]
    for c in range(probs.shape[1]):
        out[:, c] = np.convolve(probs[:, c], kernel, mode="full")[left:left + probs.shape[0]] / counts
    return out


def _runs(active: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous True runs of a 1-D bool array as [start, stop) frame pairs."""
    a = np.concatenate([[False], np.asarray(active, bool), [False]])
    d = np.diff(a.astype(np.int8))
    starts, stops = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), stops.tolist()))


def probs_to_events(probs: np.ndarray, classes: Sequence[str], token_rate: float,
                    thresholds: float | Sequence[float] | Mapping[str, float] = 0.5, smooth_s: float = 0.0,
                    min_duration_s: float = 0.0, merge_gap_s: float = 0.0, offset_s: float = 0.0) -> list[Event]:
    """Frame probabilities (T, C) -> events sorted by onset. Frame i spans [i, i+1) / token_rate seconds.

    Runs closer than ``merge_gap_s`` (gap strictly smaller) are merged first, then runs shorter than
    ``min_duration_s`` are dropped. ``score`` = mean smoothed probability over the event's frames.
    ``offset_s`` shifts all times (e.g. the start of a window in a long recording).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(f"probs must be (T, {len(classes)}), got {probs.shape}")
    thr = thresholds_array(thresholds, classes)
    sm = smooth_probs(probs, token_rate, smooth_s)
    events: list[Event] = []
    eps = 1e-9
    for c, name in enumerate(classes):
        runs = _runs(sm[:, c] >= thr[c])
        merged: list[list[int]] = []
        for start, stop in runs:
            if merged and (start - merged[-1][1]) / token_rate < merge_gap_s - eps:
                merged[-1][1] = stop
            else:
                merged.append([start, stop])
        for start, stop in merged:
            if (stop - start) / token_rate < min_duration_s - eps:
                continue
            events.append({"onset_s": offset_s + start / token_rate, "offset_s": offset_s + stop / token_rate,
                           "label": name, "score": float(sm[start:stop, c].mean())})
    events.sort(key=lambda e: (e["onset_s"], e["label"]))
    return events


def thresholds_array(thresholds: float | Sequence[float] | Mapping[str, float], classes: Sequence[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        return np.array([float(thresholds.get(c, 0.5)) for c in classes])
    if np.isscalar(thresholds):
        return np.full(len(classes), float(thresholds))
    arr = np.asarray(thresholds, dtype=np.float64)
    if arr.shape != (len(classes),):
        raise ValueError(f"need {len(classes)} thresholds, got {arr.shape}")
    return arr


# ------------------------------------------------------------------------------------------------- matching
def iou_matrix(ref: Sequence[Event], est: Sequence[Event]) -> np.ndarray:
    """(R, E) temporal intersection over union."""
    if not ref or not est:
        return np.zeros((len(ref), len(est)))
    r = np.array([[e["onset_s"], e["offset_s"]] for e in ref], dtype=np.float64)
    s = np.array([[e["onset_s"], e["offset_s"]] for e in est], dtype=np.float64)
    inter = np.clip(np.minimum(r[:, None, 1], s[None, :, 1]) - np.maximum(r[:, None, 0], s[None, :, 0]), 0, None)
    union = np.maximum(r[:, None, 1], s[None, :, 1]) - np.minimum(r[:, None, 0], s[None, :, 0])
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _valid_pairs(ref: Sequence[Event], est: Sequence[Event], rule: str, iou_threshold: float, collar_s: float,
                 offset_collar_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(valid (R, E) bool, preference (R, E) float) for the bipartite matching."""
    iou = iou_matrix(ref, est)
    tol = 1e-9
    if rule == "iou":
        valid = iou > 0 if iou_threshold <= 0 else iou >= iou_threshold - tol
        return valid, iou
    if rule == "collar":
        if not ref or not est:
            return np.zeros((len(ref), len(est)), bool), iou
        r_on = np.array([e["onset_s"] for e in ref])[:, None]
        r_off = np.array([e["offset_s"] for e in ref])[:, None]
        s_on = np.array([e["onset_s"] for e in est])[None, :]
        s_off = np.array([e["offset_s"] for e in est])[None, :]
        off_collar = np.maximum(collar_s, offset_collar_ratio * (r_off - r_on))
        valid = (np.abs(s_on - r_on) <= collar_s + tol) & (np.abs(s_off - r_off) <= off_collar + tol)
        return valid, iou
    raise ValueError(f"rule must be 'iou' or 'collar', got {rule!r}")


def match_events(ref: Sequence[Event], est: Sequence[Event], rule: str = "iou", iou_threshold: float = 0.3,
                 collar_s: float = 0.2, offset_collar_ratio: float = 0.2) -> list[tuple[int, int]]:
    """Maximum one-to-one matching (ref index, est index) among valid pairs (labels are not checked here)."""
    if not ref or not est:
        return []
    valid, pref = _valid_pairs(ref, est, rule, iou_threshold, collar_s, offset_collar_ratio)
    if not valid.any():
        return []
    # Maximise #matches first (weight 1 per valid pair), then total IoU (< 1 in total so it never trades a pair).
    n = max(len(ref), len(est))
    weight = np.where(valid, 1.0 + pref / (n + 1), 0.0)
    rows, cols = linear_sum_assignment(-weight)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if valid[r, c]]


def _group(events: Iterable[Event], cls: str) -> list[Event]:
    return [e for e in events if e["label"] == cls]


def _prf(tp: int, n_ref: int, n_est: int) -> dict[str, float]:
    fp, fn = n_est - tp, n_ref - tp
    p = tp / n_est if n_est else (1.0 if n_ref == 0 else 0.0)
    r = tp / n_ref if n_ref else (1.0 if n_est == 0 else 0.0)
    f = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn, "n_ref": n_ref, "n_est": n_est}


def event_prf(refs: Sequence[Sequence[Event]], ests: Sequence[Sequence[Event]], classes: Sequence[str],
              rule: str = "iou", iou_threshold: float = 0.3, collar_s: float = 0.2,
              offset_collar_ratio: float = 0.2) -> dict[str, Any]:
    """Event P/R/F1 per class over many files/clips (``refs[i]``, ``ests[i]`` = events of clip i).

    Returns ``{"per_class": {cls: {precision, recall, f1, tp, fp, fn, n_ref, n_est}}, "micro": {...},
    "macro_f1": mean F1 over the classes that occur in the references (NaN if none)}``. A class with neither
    references nor predictions scores P = R = F1 = 1 and is left out of ``macro_f1``.
    """
    if len(refs) != len(ests):
        raise ValueError(f"{len(refs)} reference lists vs {len(ests)} estimate lists")
    counts = {c: [0, 0, 0] for c in classes}  # tp, n_ref, n_est
    for ref, est in zip(refs, ests):
        for c in classes:
            r, e = _group(ref, c), _group(est, c)
            counts[c][0] += len(match_events(r, e, rule, iou_threshold, collar_s, offset_collar_ratio))
            counts[c][1] += len(r)
            counts[c][2] += len(e)
    per = {c: _prf(*v) for c, v in counts.items()}
    tot = np.sum([v for v in counts.values()], axis=0) if counts else np.zeros(3, int)
    present = [per[c]["f1"] for c in classes if counts[c][1] > 0]
    return {"per_class": per, "micro": _prf(int(tot[0]), int(tot[1]), int(tot[2])),
            "macro_f1": float(np.mean(present)) if present else float("nan")}


# ------------------------------------------------------------------------------------------------- frame AP
def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` (AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds);
    NaN when there is no positive."""
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s)) if s.size > 1 else np.array([], int)
    idx = np.concatenate([distinct, [s.size - 1]])
    tps = np.cumsum(y)[idx]
    fps = (idx + 1) - tps
    precision = tps / (tps + fps)
    recall = tps / n_pos
    recall_prev = np.concatenate([[0.0], recall[:-1]])
    return float(np.sum((recall - recall_prev) * precision))


def pr_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) at each distinct score, thresholds decreasing."""
    y = np.asarray(y_true).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    if s.size == 0:
        return np.array([1.0]), np.array([0.0]), np.array([])
    idx = np.concatenate([np.flatnonzero(np.diff(s)), [s.size - 1]])
    tps = np.cumsum(y)[idx]
    precision = tps / (idx + 1)
    recall = tps / max(int(y.sum()), 1)
    return precision, recall, s[idx]


def frame_map(targets: np.ndarray, probs: np.ndarray, classes: Sequence[str],
              mask: np.ndarray | None = None) -> dict[str, Any]:
    """Frame-level AP per class and macro mAP (over classes with positives). targets/probs (T, C); mask (T,) True
    = frame counts."""
    targets, probs = np.asarray(targets), np.asarray(probs)
    if mask is not None:
        m = np.asarray(mask, bool)
        targets, probs = targets[m], probs[m]
    ap = {c: average_precision(targets[:, i], probs[:, i]) for i, c in enumerate(classes)}
    vals = [v for v in ap.values() if not np.isnan(v)]
    return {"per_class": ap, "mAP": float(np.mean(vals)) if vals else float("nan")}


# ------------------------------------------------------------------------------------------------- thresholds
def tune_thresholds(refs: Sequence[Sequence[Event]], probs_list: Sequence[np.ndarray], classes: Sequence[str],
                    token_rate: float, candidates: Sequence[float] | None = None, rule: str = "iou",
                    iou_threshold: float = 0.3, collar_s: float = 0.2, smooth_s: float = 0.0,
                    min_duration_s: float = 0.0, merge_gap_s: float = 0.0) -> dict[str, float]:
    """Per class, the threshold with the best event F1 on validation clips (ties -> the lower threshold).
    Apply the result unchanged to the test split."""
    cands = list(candidates) if candidates is not None else [round(x, 2) for x in np.arange(0.05, 0.96, 0.05)]
    best: dict[str, float] = {}
    for ci, c in enumerate(classes):
        refs_c = [_group(r, c) for r in refs]
        scores = []
        for t in cands:
            ests = [probs_to_events(p[:, ci:ci + 1], [c], token_rate, t, smooth_s, min_duration_s, merge_gap_s)
                    for p in probs_list]
            scores.append(event_prf(refs_c, ests, [c], rule, iou_threshold, collar_s)["per_class"][c]["f1"])
        best[c] = float(cands[int(np.argmax(scores))])
    return best
