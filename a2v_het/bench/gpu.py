"""``a2v-het bench gpu``: the check to run the moment a GPU is lent, in <= 5 min on one GPU; one markdown table.

1. **smoke bf16**: the smoke recipe through the real CLI (``a2v-het pretrain``: WebDataset shards, DeepSpeed,
   checkpoints) on the device with ``train.precision=bf16``, fewer steps; every logged step must say
   ``encoder_bf16 = 1`` (the student's blocks really computed in bf16: DeepSpeed's forward wrapper once turned
   autocast off unseen) and every loss must be finite.
2. **2-rank NCCL**: the same recipe under ``torchrun --nproc_per_node=2`` when two or more GPUs are visible
   (ZeRO-2, as the cluster default); both ranks' parameter hashes must agree (``rank_sync.json``).
3. **bench step** and **bench frontend** on the device (bf16 on CUDA), summarised to one line each.

``--device cpu`` is the dry run (tiny shards and steps, gloo, no NCCL row) that CI runs, so the command cannot rot
while no GPU is around. Exit status 1 when a check fails; the table says which.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from a2v_het.bench import frontend as bench_frontend
from a2v_het.bench import step as bench_step
from a2v_het.bench.frontend import describe_machine

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "recipes" / "smoke.yaml"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("cuda", "cpu"), default=None,
                        help="cuda (default when available) or cpu (the dry run CI uses)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of the smoke run (default 40 on cuda, 2 on cpu)")
    parser.add_argument("--out", default=None, help="folder for shards and run folders (default: a temp folder)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds per training subprocess")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")


def _recipe_overrides(out: Path, device: str, steps: int) -> list[str]:
    """Overrides of recipes/smoke.yaml: its model and data, fewer steps; on the CPU a tiny data set too."""
    common = [f"data.shards={out / 'data' / 'synth-smoke'}", "train.precision=bf16", f"train.max_steps={steps}",
              "train.save_every=1000000", "logging.wandb=disabled", "train.log_every=1"]
    if device == "cuda":
        return common + ["optim.warmup_steps=10", "train.eval_every=0"]
    return common + ["data.synth_clips=8", "data.synth_eval_clips=4", "data.duration_s=1.0", "data.batch_size=2",
                     "data.num_workers=0", "data.samples_per_epoch=8", "train.eval_every=0", "optim.warmup_steps=1"]


def _env(device: str) -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        env.pop(k, None)
    if device == "cpu":
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def _train(cmd: list[str], run_dir: Path, device: str, timeout: float) -> dict[str, Any]:
    """Run one training subprocess; -> {ok, seconds, steps, regression, bf16_steps, detail}."""
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=run_dir.parent, env=_env(device), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": time.time() - t0, "detail": f"timed out after {timeout:.0f} s"}
    seconds = time.time() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-600:].replace("\n", " ")
        return {"ok": False, "seconds": seconds, "detail": f"exit {proc.returncode}: {tail}"}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    bf16 = [r.get("encoder_bf16", 0.0) for r in rows]
    finite = all(math.isfinite(r["loss"]) for r in rows)
    ok = bool(rows) and finite and all(v == 1.0 for v in bf16)
    detail = "" if ok else f"finite={finite}, encoder_bf16 per step={bf16}"
    return {"ok": ok, "seconds": seconds, "steps": len(rows), "regression": rows[-1]["regression"] if rows else None,
            "audio_s_per_s": rows[-1].get("audio_s_per_s") if rows else None,
            "bf16_steps": int(sum(v == 1.0 for v in bf16)), "detail": detail}


def smoke_check(out: Path, device: str, steps: int, timeout: float) -> dict[str, Any]:
    run_dir = out / "smoke"
    cmd = [sys.executable, "-m", "a2v_het.cli", "pretrain", str(SMOKE), f"train.run_dir={run_dir}",
           *_recipe_overrides(out, device, steps)]
    return {"check": f"smoke recipe, bf16, {steps} steps", **_train(cmd, run_dir, device, timeout)}


def nccl_check(out: Path, device: str, steps: int, timeout: float) -> dict[str, Any]:
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if gpus < 2:
        return {"check": "2-rank NCCL", "ok": None, "detail": f"skipped: {gpus} GPU(s) visible"}
    run_dir = out / "nccl"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "a2v_het.cli",
           "pretrain", str(SMOKE), f"train.run_dir={run_dir}", "train.zero_stage=2",
           *_recipe_overrides(out, device, steps)]
    result = {"check": f"2-rank NCCL, ZeRO-2, {steps} steps", **_train(cmd, run_dir, device, timeout)}
    if result["ok"]:
        digests = json.loads((run_dir / "rank_sync.json").read_text())["param_sha256_by_rank"]
        if len(digests) != 2 or len(set(digests)) != 1:
            result.update(ok=False, detail=f"ranks diverged: {digests}")
    return result


def step_check(device: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    bench_step.add_args(parser)
    argv = ["--device", device, "--json"]
    argv += ["--bf16"] if device == "cuda" else ["--rates", "8000", "--seconds", "0.5", "--batch", "1", "--repeats",
                                                 "1", "--embed-dim", "32", "--depth", "1", "--heads", "2",
                                                 "--clone-batch", "1"]
    t0 = time.time()
    result = _quiet(bench_step.run, parser.parse_args(argv))
    cells = ", ".join(f"{r['frontend']} {r['sample_rate'] // 1000} kHz {r['step_s'] * 1e3:.0f} ms"
                      for r in result["rows"])
    return {"check": "bench step" + (" (bf16)" if device == "cuda" else ""), "ok": bool(result["rows"]),
            "seconds": time.time() - t0, "detail": cells, "result": result}


def frontend_check(device: str) -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    bench_frontend.add_args(parser)
    argv = ["--device", device, "--json"]
    if device == "cpu":
        argv += ["--rates", "8000", "--seconds", "0.5", "--batch", "1", "--repeats", "1",
                 "--frontends", "heterodyne,conv"]
    t0 = time.time()
    result = _quiet(bench_frontend.run, parser.parse_args(argv))
    rows = result["rows"]
    timed = [r for r in rows if r.get("time_ms") is not None]
    errors = [f"{r['frontend']}@{r['sample_rate']}: {r['error']}" for r in rows if r.get("error")]
    detail = f"{len(timed)}/{len(rows)} cells timed"
    if timed:
        slowest = max(timed, key=lambda r: r["time_ms"])
        detail += f"; slowest {slowest['frontend']} at {slowest['sample_rate']} Hz, {slowest['time_ms']:.1f} ms"
    if errors:
        detail += "; errors: " + ", ".join(errors)
    return {"check": "bench frontend", "ok": bool(timed) and not errors, "seconds": time.time() - t0,
            "detail": detail, "result": result}


def _quiet(fn, args):
    """Run a bench whose ``run`` prints its own JSON; keep only the returned result (one table is printed)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(args)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("a2v-het bench gpu: --device cuda but no GPU is visible")
    steps = args.steps or (40 if device == "cuda" else 2)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="a2v_bench_gpu_") as tmp:
        out = Path(args.out or tmp).resolve()
        out.mkdir(parents=True, exist_ok=True)
        checks = [smoke_check(out, device, steps, args.timeout), nccl_check(out, device, max(steps // 4, 2),
                                                                            args.timeout),
                  step_check(device), frontend_check(device)]
    result = {"benchmark": "gpu", "device": device, "machine": describe_machine(device),
              "total_s": time.time() - t0, "checks": checks,
              "ok": all(c["ok"] is not False for c in checks)}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(format_markdown(result))
    return result


def format_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    name = m.get("cuda_device") if result["device"] == "cuda" else m.get("cpu")
    lines = [f"`a2v-het bench gpu --device {result['device']}` on {name}, {result['total_s']:.0f} s in all", "",
             "| check | result | time (s) | figures |", "|---|---|---|---|"]
    for c in result["checks"]:
        verdict = {True: "pass", False: "FAIL", None: "skipped"}[c["ok"]]
        figures = []
        if c.get("steps") is not None:
            figures.append(f"{c['bf16_steps']}/{c['steps']} steps with encoder_bf16 = 1")
            if c.get("regression") is not None:
                figures.append(f"regression {c['regression']:.3f} at the end")
            if c.get("audio_s_per_s"):
                figures.append(f"{c['audio_s_per_s']:.0f} audio s/s")
        if c.get("detail"):
            figures.append(c["detail"])
        secs = f"{c['seconds']:.1f}" if c.get("seconds") is not None else ""
        lines.append(f"| {c['check']} | {verdict} | {secs} | {'; '.join(figures)} |")
    return "\n".join(lines)


def cli(args: argparse.Namespace) -> int:
    """``a2v-het bench gpu``: exit 0 when every check passed or was skipped, 1 otherwise."""
    return 0 if run(args)["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="a2v-het bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_args(parser)
    return 0 if run(parser.parse_args(argv))["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
