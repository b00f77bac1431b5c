"""Our collar-rule event metrics against sed_eval's EventBasedMetrics (the reference implementation of that rule).

sed_eval ("optimal" matching = maximum bipartite matching per file and class) counts a system event as a true
positive when its onset lies within ``t_collar`` of a reference onset and its offset within
``max(t_collar, percentage_of_length * reference duration)`` of the reference offset. ``event_prf(rule="collar")``
claims the same rule; these tests compare the per-class TP/FP/FN counts and F1 on random annotation sets built to
sit near the tolerance edges (jittered, split, merged, dropped and spurious events).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from a2v_het.eval.events import event_prf

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # dcase_util imports pkg_resources, which warns on import
    sed_eval = pytest.importorskip("sed_eval")
    dcase_util = pytest.importorskip("dcase_util")

CLASSES = ["trill", "chirp", "bark"]


def _random_file(rng: np.random.Generator, duration_s: float = 30.0) -> tuple[list[dict], list[dict]]:
    """(reference events, system events) of one file: each reference is jittered by up to ~0.4 s at each end,
    sometimes split in two, dropped, or relabelled; a few spurious events are added."""
    ref, est = [], []
    t = 0.0
    while True:
        t += rng.uniform(0.3, 3.0)
        dur = rng.uniform(0.05, 2.5)
        if t + dur > duration_s:
            break
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        ref.append({"onset_s": t, "offset_s": t + dur, "label": label})
        fate = rng.uniform()
        if fate < 0.1:
            pass  # missed
        elif fate < 0.2:  # split into two halves
            cut = t + dur * rng.uniform(0.3, 0.7)
            est.append({"onset_s": t, "offset_s": cut, "label": label})
            est.append({"onset_s": cut + 0.01, "offset_s": t + dur, "label": label})
        else:
            lab = label if fate < 0.9 else CLASSES[int(rng.integers(len(CLASSES)))]
            on = max(0.0, t + rng.normal(0.0, 0.15))
            off = max(on + 0.02, t + dur + rng.normal(0.0, 0.25))
            est.append({"onset_s": on, "offset_s": off, "label": lab})
        t += dur
    for _ in range(int(rng.integers(0, 4))):  # spurious detections
        on = rng.uniform(0, duration_s - 1)
        est.append({"onset_s": on, "offset_s": on + rng.uniform(0.05, 1.0),
                    "label": CLASSES[int(rng.integers(len(CLASSES)))]})
    return ref, est


def _container(events: list[dict], filename: str):
    rows = [{"filename": filename, "event_label": e["label"], "onset": e["onset_s"], "offset": e["offset_s"]}
            for e in events]
    return dcase_util.containers.MetaDataContainer(rows)


def _sed_eval_counts(refs, ests, t_collar: float, percentage: float) -> dict[str, dict[str, float]]:
    metrics = sed_eval.sound_event.EventBasedMetrics(event_label_list=CLASSES, t_collar=t_collar,
                                                     percentage_of_length=percentage, event_matching_type="optimal")
    for i, (ref, est) in enumerate(zip(refs, ests)):
        # One call per file, as sed_eval's own examples do (it matches within a file only).
        metrics.evaluate(_container(ref, f"file{i}.wav"), _container(est, f"file{i}.wav"))
    return {c: dict(metrics.class_wise[c]) for c in CLASSES}


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("t_collar,percentage", [(0.2, 0.5), (0.2, 0.2), (0.1, 0.0), (0.5, 0.5)])
def test_collar_rule_counts_match_sed_eval(seed, t_collar, percentage):
    rng = np.random.default_rng(1000 * seed + int(t_collar * 100) + int(percentage * 10))
    files = [_random_file(rng) for _ in range(8)]
    refs, ests = [f[0] for f in files], [f[1] for f in files]
    ours = event_prf(refs, ests, CLASSES, rule="collar", collar_s=t_collar, offset_collar_ratio=percentage)
    theirs = _sed_eval_counts(refs, ests, t_collar, percentage)
    total_tp = 0
    for c in CLASSES:
        o, t = ours["per_class"][c], theirs[c]
        assert (o["n_ref"], o["n_est"]) == (t["Nref"], t["Nsys"]), c
        assert (o["tp"], o["fp"], o["fn"]) == (t["Ntp"], t["Nfp"], t["Nfn"]), c
        if t["Nref"] > 0 and t["Nsys"] > 0:
            p, r = t["Ntp"] / t["Nsys"], t["Ntp"] / t["Nref"]
            f = 2 * p * r / (p + r) if p + r > 0 else 0.0
            assert math.isclose(o["f1"], f, abs_tol=1e-12), c
        total_tp += o["tp"]
    # The scenarios must exercise both outcomes, or the comparison proves little.
    assert 0 < total_tp < sum(ours["per_class"][c]["n_ref"] for c in CLASSES)


def test_edge_cases_match_sed_eval():
    """Hand-built edges: onset exactly at / just past the collar, offset collar from the percentage rule, one
    system event that could match two references (bipartite: only one TP), and an empty system output."""
    ref = [
        {"onset_s": 1.0, "offset_s": 2.0, "label": "trill"},
        {"onset_s": 5.0, "offset_s": 9.0, "label": "trill"},    # long: offset collar = 0.5 * 4 s = 2 s
        {"onset_s": 12.0, "offset_s": 12.5, "label": "chirp"},
        {"onset_s": 12.1, "offset_s": 12.6, "label": "chirp"},
    ]
    est = [
        {"onset_s": 1.19, "offset_s": 2.0, "label": "trill"},   # onset within 0.2 s
        {"onset_s": 5.0, "offset_s": 10.9, "label": "trill"},   # offset 1.9 s late, inside the 2 s collar
        {"onset_s": 12.05, "offset_s": 12.55, "label": "chirp"},  # fits both chirps; matches one
        {"onset_s": 20.0, "offset_s": 20.3, "label": "bark"},   # class absent from the reference
    ]
    ours = event_prf([ref, []], [est, []], CLASSES, rule="collar", collar_s=0.2, offset_collar_ratio=0.5)
    theirs = _sed_eval_counts([ref, []], [est, []], 0.2, 0.5)
    for c in CLASSES:
        o, t = ours["per_class"][c], theirs[c]
        assert (o["tp"], o["fp"], o["fn"]) == (t["Ntp"], t["Nfp"], t["Nfn"]), c
    assert ours["per_class"]["trill"]["tp"] == 2 and ours["per_class"]["chirp"]["tp"] == 1
