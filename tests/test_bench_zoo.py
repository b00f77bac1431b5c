"""``a2v-het bench zoo`` end to end on a tiny budget: every stage runs as the user's CLI, the report holds every row,
and a rerun resumes from the finished stages instead of training again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_zoo_tiny_run_reports_every_row_and_resumes(tmp_path):
    out = tmp_path / "zoo"
    argv = [sys.executable, "-m", "a2v_het.cli", "bench", "zoo", "--out", str(out), "--frontends",
            "heterodyne,logmel", "--scratch", "logmel", "--pretrain-steps", "3", "--finetune-steps", "3",
            "--clips", "12", "--eval-clips", "6", "--seconds", "1.0", "--json"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="2", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        env.pop(k, None)
    first = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    report = json.loads(first.stdout)
    assert set(report["results"]) == {"heterodyne", "logmel", "logmel/scratch", "reference"}
    classes = {"tone", "up_sweep", "down_sweep", "harmonic", "click_train", "noise_burst"}
    ref = report["results"].pop("reference")  # the whole-clip detector: no model, a floor for the others
    assert ref["pretrained"] is None and 0 < ref["test_seen"]["event_f1_iou"] < 1
    assert set(ref["test_unseen"]["per_class_f1_iou"]) == classes
    for key, r in report["results"].items():
        assert r["pretrained"] == ("scratch" not in key)
        for split in ("test_seen", "test_unseen", "test_high"):
            assert 0.0 <= r[split]["frame_map"] <= 1.0
            assert set(r[split]["per_class_f1_iou"]) == classes
            # one threshold set, tuned on val (seen rates), used for every test split
            assert r[split]["thresholds"] == r["test_seen"]["thresholds"]
        if r["pretrained"]:
            steps = [s for s, _ in r["pretrain_curve"]]
            assert steps and steps[-1] == 3
            assert (out / r["frontend"] / "export" / "model.safetensors").is_file()
        else:
            assert "pretrain_curve" not in r
    # the unseen-rate test split really holds rates outside the training set
    manifests = {n: json.loads((out / "data" / n / "manifest.json").read_text())
                 for n in ("train", "test_unseen", "test_high")}
    seen = set(manifests["train"]["splits"]["train"]["hours_by_sample_rate"])
    unseen = set(manifests["test_unseen"]["splits"]["test"]["hours_by_sample_rate"])
    high = {float(r) for r in manifests["test_high"]["splits"]["test"]["hours_by_sample_rate"]}
    assert unseen and not (seen & unseen)
    assert high and min(high) > 96000
    assert (out / "pretrain_loss.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "zoo.md").read_text()
    assert md.count("| heterodyne | pretrained |") == 2 and "| logmel | scratch |" in md
    assert md.count("| whole-clip detector | - |") == 2

    # Rerun: nothing retrains (the logs are not rewritten) and the report is the same.
    logs = {p: p.stat().st_mtime_ns for p in out.rglob("*.log")}
    second = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)["results"]
    assert again.pop("reference") == ref and again == report["results"]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.log")} == logs
