"""``a2v-het bench probe`` on a tiny budget: one checkpoint and its random initialisation, every task, two seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inference_helpers import write_encoder_export

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_probe_table(tmp_path):
    exp = write_encoder_export(tmp_path / "exp")
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    (tmp_path / "work").mkdir()
    proc = subprocess.run([sys.executable, "-m", "a2v_het.cli", "bench", "probe", "--checkpoint", f"smoke={exp}",
                           "--synthetic-recordings", "12", "--seeds", "0,1", "--json", "--tmp-dir",
                           str(tmp_path / "work")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert [(r["name"], r["random_init"]) for r in res["rows"]] == [("smoke", False), ("smoke", True)]
    for r in res["rows"]:
        for task in res["tasks"]:
            for m in ("accuracy", "macro_f1", "mAP"):
                assert 0.0 <= r[task][m] <= 1.0 and r[task][m + "_sd"] >= 0.0
            assert len(r[task]["n_test"]) == 2 and min(r[task]["n_test"]) > 0
    if "great_tit_id" in res["tasks"]:
        assert set(res["rows"][0]["great_tit_id"]["per_class_ap"]) == {"great_tit_B32", "great_tit_SW83"}
    assert list((tmp_path / "work").iterdir()) == []
