"""``a2v-het bench infer``: predict and embed on a real FLAC recording with the smoke-size model; the throughput
figures are consistent with the timed runs and the outputs are complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_infer_smoke_model(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "a2v_het.cli", "bench", "infer", "--json", "--recipes",
                           "recipes/smoke.yaml:40", "--rate", "22050", "--tmp-dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    (r,) = res["results"]
    assert r["model"]["depth"] == 3 and r["model"]["embed_dim"] == 64 and r["audio_s"] == 40
    assert r["sample_rate"] == 22050 and res["torch_threads"] >= 1 and res["machine"]["cpu_cores"] >= 1
    for cmd in ("predict", "embed"):
        v = r["runs"][cmd]
        assert v["wall_s"] > 0
        assert abs(v["audio_h_per_wall_h"] - 40 / v["wall_s"]) < 1e-6 * v["audio_h_per_wall_h"]
    assert list(tmp_path.iterdir()) == []  # the temporary exports and recording are removed
