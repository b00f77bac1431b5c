"""The training entry point end to end, through the real parts: WebDataset shards, DeepSpeed (CPU, gloo), wandb
(offline), safetensors. Each run is a subprocess, as on the cluster."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "smoke.yaml"

pytestmark = pytest.mark.slow


def run_cli(args, cwd, timeout=900, env_extra=None, check=True):
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env.pop("MASTER_ADDR", None)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "a2v_het.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """A small mixed-rate synthetic set (train + unseen-rate eval) shared by the fast runs."""
    from data_tools.synth import write_synth_shards

    root = tmp_path_factory.mktemp("shards")
    write_synth_shards(root / "synth", "field", 24, [8000, 16000, 22050, 48000], 1.0, seed=3, split="train")
    write_synth_shards(root / "synth-eval", "field", 8, [12000, 96000], 1.0, seed=4, split="val")
    return root / "synth"


def fast_overrides(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [str(SMOKE), f"data.shards={shards}", f"train.run_dir={run_dir}", "data.duration_s=1.0",
            "data.batch_size=4", "data.num_workers=0", "data.samples_per_epoch=16", "logging.wandb=disabled",
            "train.eval_every=0", "train.log_every=1", *extra]


def test_smoke_recipe_is_the_main_job(tmp_path):
    """README command one, as written: synthesises shards, trains, checkpoints, coverage table, plots, wandb."""
    proc = run_cli(["pretrain", str(SMOKE)], cwd=tmp_path, timeout=900)
    run_dir = tmp_path / "runs" / "smoke"
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert len(rows) >= 10 and all(math.isfinite(r["loss"]) for r in rows)
    first, last = rows[0]["regression"], sum(r["regression"] for r in rows[-3:]) / 3
    assert last < 0.8 * first, f"regression loss did not fall: {first:.3f} -> {last:.3f}"
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    ckpt = run_dir / "checkpoints" / latest
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "model.safetensors").is_file()
    assert (ckpt / "teacher.safetensors").is_file()
    assert (run_dir / "config.yaml").is_file() and (run_dir / "coverage.md").is_file()
    report = json.loads((run_dir / "coverage.json").read_text())
    assert {r["sample_rate"] for r in report["by_sample_rate"]} == {6000, 12000, 18000, 24000, 38000, 64000, 96000}
    pngs = list((run_dir / "plots").glob("bands_*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert list((run_dir / "wandb").glob("offline-run-*")), "no offline wandb run"
    assert "All Cov" in proc.stdout
    # keep at most train.keep_last checkpoints
    assert len(list((run_dir / "checkpoints").glob("step_*"))) <= 3

    # export -> safetensors + config, then the coverage command reads it
    out = tmp_path / "export"
    run_cli(["export", str(run_dir), str(out)], cwd=tmp_path)
    weights = load_file(str(out / "model.safetensors"))
    assert any(k.startswith("frontend.picker.") for k in weights)
    cov = run_cli(["coverage", "--checkpoint", str(out), "--data", str(tmp_path / "data" / "synth-smoke-eval"),
                   "--json"], cwd=tmp_path)
    table = json.loads(cov.stdout)
    assert table["overall"]["samples"] == 70


def test_resume_gives_the_same_run(tiny_shards, tmp_path):
    """N steps straight vs N/2 + resume: same losses and the same parameters (CPU, fp32)."""
    straight = tmp_path / "straight"
    run_cli(["pretrain", *fast_overrides(tiny_shards, straight, "train.max_steps=6", "train.save_every=100",
                                         "train.zero_stage=2")],
            cwd=tmp_path)
    resumed = tmp_path / "resumed"
    args = fast_overrides(tiny_shards, resumed, "train.max_steps=6", "train.save_every=100", "train.zero_stage=2")
    first = run_cli(["pretrain", *args, "train.stop_after_steps=3"], cwd=tmp_path)
    assert "stopping at step 3" in first.stdout
    assert (resumed / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    second = run_cli(["pretrain", *args], cwd=tmp_path)
    assert "resumed from step_00000003" in second.stdout

    a = {r["step"]: r for r in metrics(straight) if "loss" in r}
    b = {r["step"]: r for r in metrics(resumed) if "loss" in r}
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in a:
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=1e-5, abs=1e-6), step
    wa = load_file(str(straight / "checkpoints" / "step_00000006" / "model.safetensors"))
    wb = load_file(str(resumed / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() <= 1e-5, k
    ta = load_file(str(straight / "checkpoints" / "step_00000006" / "teacher.safetensors"))
    tb = load_file(str(resumed / "checkpoints" / "step_00000006" / "teacher.safetensors"))
    for k in ta:
        assert (ta[k] - tb[k]).abs().max().item() <= 1e-5, k


def test_two_process_gloo_run_keeps_ranks_in_sync(tiny_shards, tmp_path):
    run_dir = tmp_path / "ddp"
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "a2v_het.cli",
           "pretrain", *fast_overrides(tiny_shards, run_dir, "train.max_steps=4", "train.save_every=2",
                                           "data.bc_mixup=true", "train.zero_stage=2")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digests = json.loads((run_dir / "rank_sync.json").read_text())["param_sha256_by_rank"]
    assert len(digests) == 2 and digests[0] == digests[1]
    rows = [r for r in metrics(run_dir) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    # rank 0 alone logs; both ranks' data count (2 ranks x 4 clips x 1 s per step)
    assert (run_dir / "checkpoints" / "step_00000004" / "COMPLETE").is_file()

    # Resuming the 2-rank ZeRO-2 checkpoint in 1 process: stop before any work, saying what to do ...
    more = fast_overrides(tiny_shards, run_dir, "train.max_steps=5", "train.save_every=100", "train.zero_stage=2")
    refused = run_cli(["pretrain", *more], cwd=tmp_path, check=False, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "written by 2 ranks" in refused.stderr and "train.resume_weights_only=true" in refused.stderr
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2, 3, 4]  # nothing ran
    # ... or continue from the weights, teacher and step with fresh optimizer moments when asked to
    resumed = run_cli(["pretrain", *more, "train.resume_weights_only=true"], cwd=tmp_path)
    assert "resumed from step_00000004" in resumed.stdout
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2, 3, 4, 5]


def test_pretrain_makes_the_recipes_synthetic_data_before_the_loop(tmp_path):
    """data.synthesize_if_missing: the CLI's data step writes train + unseen-rate eval shards, then the loop trains;
    a rerun finds them and writes nothing. Without it, missing shards are an error saying how to make them."""
    shards = tmp_path / "fresh" / "synth"
    run_dir = tmp_path / "run"
    args = ["pretrain", str(SMOKE), f"data.shards={shards}", f"train.run_dir={run_dir}", "data.synth_clips=8",
            "data.synth_eval_clips=4", "data.duration_s=1.0", "data.batch_size=4", "data.num_workers=0",
            "data.samples_per_epoch=8", "logging.wandb=disabled", "train.eval_every=0", "train.log_every=1",
            "train.max_steps=2", "train.save_every=100"]
    proc = run_cli(args, cwd=tmp_path)
    assert f"writing synthetic 'field' training shards to {shards}" in proc.stdout
    assert f"eval shards (unseen rates) to {shards}-eval" in proc.stdout
    assert json.loads((shards / "manifest.json").read_text())["splits"]["train"]["samples"] == 8
    assert json.loads((Path(f"{shards}-eval") / "manifest.json").read_text())["splits"]["val"]["samples"] == 4
    assert [r["step"] for r in metrics(run_dir) if "loss" in r] == [1, 2]
    again = run_cli([*args, "train.max_steps=3"], cwd=tmp_path)
    assert "writing synthetic" not in again.stdout and "resumed from step_00000002" in again.stdout

    missing = tmp_path / "nowhere"
    proc = run_cli(["pretrain", str(SMOKE), f"data.shards={missing}", f"train.run_dir={tmp_path / 'r2'}",
                    "data.synthesize_if_missing=false", "logging.wandb=disabled"], cwd=tmp_path, check=False,
                   timeout=300)
    assert proc.returncode != 0 and not missing.exists()
    assert f"no manifest.json in data.shards={str(missing)!r}" in proc.stderr
    assert "python -m data_tools shard" in proc.stderr and "data.synthesize_if_missing=true" in proc.stderr


def test_unknown_recipe_key_is_a_clear_error(tmp_path):
    proc = run_cli(["pretrain", str(SMOKE), "train.max_step=3"], cwd=tmp_path, check=False, timeout=300)
    assert proc.returncode == 2
    assert "'train.max_step'" in proc.stderr and "'train.max_steps'" in proc.stderr
    assert not (tmp_path / "runs").exists()
