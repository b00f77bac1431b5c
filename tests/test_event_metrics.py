"""Event extraction and event/frame metrics against hand-made cases."""

import numpy as np
import pytest

from a2v_het.eval.events import (average_precision, event_prf, frame_map, iou_matrix, match_events, probs_to_events,
                                 smooth_probs, tune_thresholds)


def ev(on, off, label="a", **kw):
    return {"onset_s": on, "offset_s": off, "label": label, **kw}


def test_probs_to_events_runs_min_duration_and_merge():
    rate = 10.0
    p = np.zeros((30, 2))
    p[2:5, 0] = 0.9   # 0.2-0.5
    p[6:9, 0] = 0.9   # 0.6-0.9 (gap 0.1 s)
    p[20:21, 0] = 0.9  # 2.0-2.1: 0.1 s long
    p[10:15, 1] = 0.6
    e = probs_to_events(p, ["a", "b"], rate, 0.5)
    assert [(x["label"], x["onset_s"], x["offset_s"]) for x in e] == [
        ("a", 0.2, 0.5), ("a", 0.6, 0.9), ("b", 1.0, 1.5), ("a", 2.0, 2.1)]
    e = probs_to_events(p, ["a", "b"], rate, {"a": 0.5, "b": 0.7}, merge_gap_s=0.15, min_duration_s=0.2)
    assert [(x["label"], x["onset_s"], x["offset_s"]) for x in e] == [("a", 0.2, 0.9)]
    assert e[0]["score"] == pytest.approx(0.9 * 6 / 7)
    # offset shifts times
    assert probs_to_events(p, ["a", "b"], rate, 0.5, offset_s=100.0)[0]["onset_s"] == pytest.approx(100.2)
    assert probs_to_events(np.zeros((0, 2)), ["a", "b"], rate) == []


def test_smoothing_is_a_centred_moving_average():
    p = np.zeros((10, 1))
    p[5] = 1.0
    s = smooth_probs(p, 10.0, 0.3)
    np.testing.assert_allclose(s[4:7, 0], 1 / 3)
    assert s[:4].sum() == 0 and s[7:].sum() == 0
    np.testing.assert_allclose(smooth_probs(np.ones((5, 1)), 10.0, 0.3), 1.0)  # edges stay unbiased


def test_exact_match_and_empty_cases():
    ref = [[ev(1, 2), ev(3, 4)]]
    r = event_prf(ref, ref, ["a"])
    assert r["per_class"]["a"]["f1"] == 1 and r["per_class"]["a"]["tp"] == 2
    r = event_prf(ref, [[]], ["a"])  # empty predictions
    assert r["per_class"]["a"]["recall"] == 0 and r["per_class"]["a"]["f1"] == 0 and r["per_class"]["a"]["fn"] == 2
    r = event_prf([[]], ref, ["a"])  # empty ground truth
    assert r["per_class"]["a"]["precision"] == 0 and r["per_class"]["a"]["fp"] == 2
    assert np.isnan(r["macro_f1"])


def test_class_absent_from_ground_truth_is_left_out_of_macro():
    refs = [[ev(1, 2, "a")]]
    ests = [[ev(1, 2, "a")]]
    r = event_prf(refs, ests, ["a", "b"])
    assert r["per_class"]["b"]["f1"] == 1.0 and r["per_class"]["b"]["n_ref"] == 0
    assert r["macro_f1"] == 1.0
    r = event_prf(refs, [[ev(1, 2, "a"), ev(5, 6, "b")]], ["a", "b"])
    assert r["per_class"]["b"]["precision"] == 0 and r["macro_f1"] == 1.0 and r["micro"]["fp"] == 1
    # labels never cross-match
    assert event_prf(refs, [[ev(1, 2, "b")]], ["a", "b"])["micro"]["tp"] == 0


def test_split_event_counts_one_tp_one_fp():
    ref = [[ev(0, 2)]]
    est = [[ev(0, 0.9), ev(1.1, 2)]]
    r = event_prf(ref, est, ["a"], rule="iou", iou_threshold=0.3)["per_class"]["a"]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 0)
    r = event_prf(ref, est, ["a"], rule="collar")["per_class"]["a"]  # onset ok but offset off / onset off
    assert (r["tp"], r["fp"], r["fn"]) == (0, 2, 1)


def test_merged_events_count_one_tp_one_fn():
    ref = [[ev(0, 1), ev(1.2, 2.2)]]
    est = [[ev(0, 2.2)]]
    r = event_prf(ref, est, ["a"], iou_threshold=0.3)["per_class"]["a"]
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)


def test_iou_exactly_at_threshold_and_any_overlap():
    ref = [ev(0, 1)]
    assert iou_matrix(ref, [ev(0, 0.3)])[0, 0] == pytest.approx(0.3)
    assert match_events(ref, [ev(0, 0.3)], "iou", 0.3) == [(0, 0)]
    assert match_events(ref, [ev(0, 0.29)], "iou", 0.3) == []
    assert match_events(ref, [ev(0.99, 5)], "iou", 0.0) == [(0, 0)]
    assert match_events(ref, [ev(1.0, 5)], "iou", 0.0) == []  # touching is no overlap


def test_collar_edges():
    ref = [ev(1.0, 2.0)]
    assert match_events(ref, [ev(1.2, 2.0)], "collar") == [(0, 0)]      # onset just inside (0.2)
    assert match_events(ref, [ev(1.21, 2.0)], "collar") == []           # just outside
    assert match_events(ref, [ev(1.0, 2.2)], "collar") == [(0, 0)]      # offset collar max(0.2, 0.2*1)
    assert match_events(ref, [ev(1.0, 2.21)], "collar") == []
    long = [ev(0.0, 5.0)]                                               # offset collar = 0.2 * 5 = 1.0
    assert match_events(long, [ev(0.1, 6.0)], "collar") == [(0, 0)]
    assert match_events(long, [ev(0.1, 6.05)], "collar") == []


def test_bipartite_matching_maximises_pairs():
    # greedy-by-IoU would pair est0 with ref1 and leave ref0 unmatched
    ref = [ev(0, 1), ev(0.5, 1.5)]
    est = [ev(0.4, 1.4), ev(0.0, 0.8)]
    assert sorted(match_events(ref, est, "iou", 0.3)) == [(0, 1), (1, 0)]


def test_average_precision_matches_sklearn_definition():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert average_precision(y, s) == pytest.approx(0.8333333333)  # sklearn docs example
    assert average_precision(np.array([1, 0, 1]), np.array([0.5, 0.5, 0.5])) == pytest.approx(2 / 3)  # ties
    assert np.isnan(average_precision(np.zeros(3), np.arange(3)))
    t = np.array([[1, 0], [0, 0], [1, 0]])
    p = np.array([[0.9, 0.1], [0.1, 0.2], [0.8, 0.3]])
    r = frame_map(t, p, ["a", "b"])
    assert r["per_class"]["a"] == 1.0 and np.isnan(r["per_class"]["b"]) and r["mAP"] == 1.0


def test_threshold_tuning_picks_the_best_f1():
    rate = 10.0
    p = np.zeros((40, 1))
    p[5:15, 0] = 0.7    # true call
    p[25:30, 0] = 0.4   # distractor below 0.45
    refs = [[ev(0.5, 1.5)]]
    thr = tune_thresholds(refs, [p], ["a"], rate, candidates=[0.3, 0.5, 0.8])
    assert thr == {"a": 0.5}
