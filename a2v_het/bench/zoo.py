"""``a2v-het bench zoo``: every frontend under one budget, pretraining -> fine-tuning -> call detection.

For each frontend (``--frontends``) the same tiny data2vec model (``--recipe``, default ``recipes/smoke.yaml``) is
pretrained for ``--pretrain-steps`` on synthetic ``field`` clips at the seen rates (8-48 kHz), exported, fine-tuned
for ``--finetune-steps`` as a call-type detector (``--finetune-recipe``), and evaluated with per-class thresholds
tuned on a validation split at the seen rates and applied unchanged to two test splits: clips at the seen rates and
clips at rates never seen in training: 6-96 kHz (``test_unseen``) and 192-500 kHz (``test_high``, bat detectors'
rates). ``--scratch`` frontends are also fine-tuned from a random
initialisation with the same fine-tuning budget (no pretraining), the baseline the pretraining must beat.

"Equal compute" here means the same encoder, batch, clip length and number of optimiser steps for every frontend;
the wall time of each stage is reported beside the scores so the real cost differences stay visible. The conv
extractor's 512 channels are scaled to ``--conv-channels`` (default 64, like the tiny model's width) so that row
finishes on a CPU. Every stage runs as its own ``a2v-het`` process, exactly as a user runs it, and is skipped when
its output already exists, so an interrupted zoo resumes where it stopped.

Outputs in ``--out``: ``zoo.json`` (everything), ``zoo.md`` (the tables), ``pretrain_loss.png`` (the data2vec
regression loss of every frontend against the step), one folder per run with its logs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from a2v_het.atomic import atomic_path, atomic_write_text
from a2v_het.data.manifest import read_manifest
from a2v_het.data.sample_rates import TRAIN_SAMPLE_RATES, ULTRASONIC_SAMPLE_RATES, UNSEEN_SAMPLE_RATES
from a2v_het.data.stream import make_eval_loader
from a2v_het.data.targets import events_to_frame_targets
from a2v_het.eval.evaluate import evaluate_checkpoint
from a2v_het.eval.events import event_prf, frame_map
from a2v_het.frontend.config import FRONTEND_NAMES as FRONTENDS
from a2v_het.train.checkpoint import checkpoint_root, latest_tag

SEEN_RATES, UNSEEN_RATES, HIGH_RATES = TRAIN_SAMPLE_RATES, UNSEEN_SAMPLE_RATES, ULTRASONIC_SAMPLE_RATES
TEST_SPLITS = ("test_seen", "test_unseen", "test_high")
"""The test shard folders: seen rates, unseen 6-96 kHz, unseen 192-500 kHz."""
ROOT = Path(__file__).resolve().parents[2]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/zoo", help="output folder (default runs/zoo); reruns resume")
    parser.add_argument("--frontends", default=",".join(FRONTENDS), help=f"comma-separated subset of {FRONTENDS}")
    parser.add_argument("--scratch", default="heterodyne",
                        help="frontends also fine-tuned from scratch (comma-separated; '' for none)")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "smoke.yaml"), help="pretraining recipe")
    parser.add_argument("--finetune-recipe", default=str(ROOT / "recipes" / "synthetic_finetune.yaml"))
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--finetune-steps", type=int, default=120)
    parser.add_argument("--clips", type=int, default=300, help="training clips (seen rates)")
    parser.add_argument("--eval-clips", type=int, default=70, help="clips per val / test split")
    parser.add_argument("--seconds", type=float, default=2.0, help="clip duration")
    parser.add_argument("--conv-channels", type=int, default=64, help="channels of the conv extractor row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every pretraining and fine-tuning run (e.g. "
                             "frontend.heterodyne.band_picker=uniform); use a separate --out per setting")
    parser.add_argument("--json", action="store_true", help="print zoo.json instead of the tables")


# ------------------------------------------------------------------------------------------------------------ data


def make_data(out: Path, clips: int, eval_clips: int, seconds: float, seed: int) -> dict[str, Path]:
    """Synthetic ``field`` shard folders (made once): train (seen rates) with its ``-eval`` folder (unseen rates,
    split ``val``, read by the pretraining loop's coverage table), val (seen), test_seen, test_unseen, test_high."""
    # lazy: data_tools.synth (+80 ms: scipy.signal) would load with every `a2v-het` command, --help too
    from data_tools.synth import write_synth_shards

    plan = {
        "train": (clips, SEEN_RATES, seed, "train"),
        "train-eval": (eval_clips, UNSEEN_RATES, seed + 1, "val"),
        "val": (eval_clips, SEEN_RATES, seed + 2, "val"),
        "test_seen": (eval_clips, SEEN_RATES, seed + 3, "test"),
        "test_unseen": (eval_clips, UNSEEN_RATES, seed + 4, "test"),
        "test_high": (eval_clips, HIGH_RATES, seed + 5, "test"),
    }
    paths = {}
    for name, (n, rates, s, split) in plan.items():
        path = out / "data" / name
        if not (path / "manifest.json").is_file():
            write_synth_shards(path, "field", n, list(rates), seconds, seed=s, split=split)
        paths[name] = path
    return paths


# ------------------------------------------------------------------------------------------------------- running


def run_stage(argv: list[str], log: Path) -> float:
    """Run ``python -m a2v_het.cli *argv`` with stdout+stderr to ``log``; return its wall time in seconds.
    Raises RuntimeError with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("WANDB_MODE", "offline")
    pythonpath = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + pythonpath if pythonpath else "")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # one process per stage, never a leftover rank
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "a2v_het.cli", *argv], stdout=fh, stderr=subprocess.STDOUT,
                              env=env, cwd=str(log.parent))
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"a2v-het {' '.join(argv[:2])} failed (exit {proc.returncode}); log {log}:\n{tail}")
    return wall


def frontend_overrides(name: str, conv_channels: int) -> list[str]:
    over = [f"frontend.name={name}"]
    if name == "conv":
        c = int(conv_channels)
        layers = [[c, 10, 5]] + [[c, 3, 2]] * 4 + [[c, 2, 2]] * 2
        over.append("frontend.conv.layers=" + json.dumps(layers).replace(" ", ""))
    return over


def loss_curve(run_dir: Path, key: str = "regression") -> list[tuple[int, float]]:
    """(step, value) of ``key`` from the run's metrics.jsonl (the data2vec regression loss by default, without the
    heterodyne's coverage terms, so every frontend's curve measures the same thing)."""
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if key in r and "step" in r:
                rows.append((int(r["step"]), float(r[key])))
    return rows


def _finished(run_dir: Path, steps: int) -> bool:
    tag = latest_tag(run_dir) if run_dir.is_dir() else None
    if tag is None:
        return False
    return int(json.loads((checkpoint_root(run_dir) / tag / "COMPLETE").read_text())["step"]) >= steps


def _timed(state: dict, key: str, fn) -> float:
    """Run ``fn()`` unless ``state`` already holds its wall time (a resumed zoo keeps the first measurement)."""
    if key not in state:
        state[key] = fn()
    return state[key]


def evaluate_splits(run_dir: Path, data: dict[str, Path], done: dict[str, Any] | None = None) -> dict[str, Any]:
    """Thresholds tuned on val (seen rates), applied unchanged to every test split; the splits in ``done`` are kept
    (a zoo folder from before a split existed gains only the new one)."""
    out = dict(done or {})
    for which in TEST_SPLITS:
        if which in out:
            continue
        rep = evaluate_checkpoint(run_dir, data[which], split="test", val_split="val", val_data=data["val"])
        out[which] = {"frame_map": rep["test"]["frame_map"], "event_f1_iou": rep["test"]["event_iou"]["macro_f1"],
                      "event_f1_collar": rep["test"]["event_collar"]["macro_f1"],
                      "per_class_f1_iou": {c: v["f1"] for c, v in rep["test"]["event_iou"]["per_class"].items()},
                      "thresholds": rep["thresholds"]}
    return out


def whole_clip_reference(data: Path, token_rate: float = 50.0) -> dict[str, Any]:
    """Scores of a detector that knows nothing: every class as one event spanning every clip, constant frame
    scores. The floor any trained row must clear; on short clips with few calls it is not small."""
    classes = list(read_manifest(str(data))["classes"])
    refs, ests, targets = [], [], []
    for batch in make_eval_loader(str(data), 8, 0, split="test", rank=0, world_size=1):
        for i in range(len(batch["keys"])):
            if not bool(batch["labelled"][i]):
                continue
            duration = float(batch["lengths"][i]) / float(batch["sample_rate"][i])
            ev = [e for e in batch["events"][i] if e["label"] in classes]
            refs.append(ev)
            ests.append([{"onset_s": 0.0, "offset_s": duration, "label": c} for c in classes])
            n = int(np.ceil(duration * token_rate - 1e-9))
            targets.append(events_to_frame_targets(ev, classes, n, token_rate))
    t = np.concatenate(targets)
    return {"frame_map": frame_map(t, np.ones_like(t, dtype=np.float32), classes)["mAP"],
            "event_f1_iou": event_prf(refs, ests, classes, "iou", 0.3)["macro_f1"],
            "event_f1_collar": event_prf(refs, ests, classes, "collar")["macro_f1"],
            "per_class_f1_iou": {c: v["f1"] for c, v in event_prf(refs, ests, classes, "iou", 0.3)["per_class"].items()}}


def run_zoo(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "zoo_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}

    def save_state() -> None:
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")

    names = [n for n in args.frontends.split(",") if n]
    unknown = [n for n in names if n not in FRONTENDS]
    if unknown:
        raise SystemExit(f"unknown frontend(s) {unknown}; choose from {FRONTENDS}")
    scratch = [n for n in args.scratch.split(",") if n]
    data = make_data(out, args.clips, args.eval_clips, args.seconds, args.seed)
    common = [f"data.duration_s={args.seconds}", "data.synthesize_if_missing=false", "logging.wandb=disabled",
              f"train.seed={args.seed}", *args.overrides]
    results: dict[str, Any] = {}
    rows = [(n, True) for n in names] + [(n, False) for n in scratch]
    for name, pretrained in tqdm(rows, desc="zoo", unit="run"):
        key = name if pretrained else f"{name}/scratch"
        st = state.setdefault(key, {})
        fe = frontend_overrides(name, args.conv_channels)
        run_root = out / name
        res: dict[str, Any] = {"frontend": name, "pretrained": pretrained}
        init = []
        if pretrained:
            pre = run_root / "pretrain"
            if not _finished(pre, args.pretrain_steps):
                st.pop("pretrain_s", None)
            _timed(st, "pretrain_s", lambda: run_stage(
                ["pretrain", args.recipe, f"data.shards={data['train']}", f"train.run_dir={pre}",
                 f"train.max_steps={args.pretrain_steps}", *common, *fe], run_root / "pretrain.log"))
            save_state()
            export = run_root / "export"
            if not (export / "model.safetensors").is_file():
                run_stage(["export", str(pre), str(export)], run_root / "export.log")
            init = [f"finetune.init={export}"]
            res["pretrain_s"] = st["pretrain_s"]
            res["pretrain_curve"] = loss_curve(pre)
        ft = run_root / ("finetune" if pretrained else "finetune_scratch")
        if not _finished(ft, args.finetune_steps):
            st.pop("finetune_s", None)
        _timed(st, "finetune_s", lambda: run_stage(
            ["finetune", args.finetune_recipe, f"data.shards={data['train']}", f"train.run_dir={ft}",
             f"train.max_steps={args.finetune_steps}", "finetune.test_split=none", "finetune.eval_plots=0",
             *common, *([] if init else fe), *init], ft.with_suffix(".log")))
        save_state()
        res["finetune_s"] = st["finetune_s"]
        if any(which not in st.get("scores", {}) for which in TEST_SPLITS):
            st["scores"] = evaluate_splits(ft, data, st.get("scores"))
            save_state()
        res.update(st["scores"])
        results[key] = res

    reference = state.setdefault("reference", {})
    if any(which not in reference for which in TEST_SPLITS):
        reference.update({which: whole_clip_reference(data[which]) for which in TEST_SPLITS if which not in reference})
        save_state()
    results["reference"] = {"frontend": "whole-clip detector", "pretrained": None, "finetune_s": None,
                            **state["reference"]}
    report = {"frontends": names, "scratch": scratch, "settings": {k: v for k, v in vars(args).items()
                                                                    if k not in ("func", "bench_run")},
              "seen_rates": SEEN_RATES, "unseen_rates": UNSEEN_RATES, "high_rates": HIGH_RATES, "results": results}
    atomic_write_text(out / "zoo.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "zoo.md", format_tables(report) + "\n")
    plot_curves(report, out / "pretrain_loss.png")
    return report


# ------------------------------------------------------------------------------------------------------- reports


def _init(r: dict[str, Any]) -> str:
    return "-" if r["pretrained"] is None else ("pretrained" if r["pretrained"] else "scratch")


def format_tables(report: dict[str, Any]) -> str:
    def f(x: Any) -> str:
        return "-" if x is None or x != x else f"{x:.3f}"

    lines = ["| frontend | init | pretrain s | finetune s | regression loss first -> last | frame mAP seen | "
             "event F1 seen | event F1 unseen | event F1 > 96 kHz | frame mAP unseen | frame mAP > 96 kHz | "
             "collar F1 seen | collar F1 unseen |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in report["results"].items():
        curve = r.get("pretrain_curve") or []
        loss = f"{curve[0][1]:.2f} -> {curve[-1][1]:.2f}" if curve else "-"
        pre_s = f"{r['pretrain_s']:.0f}" if "pretrain_s" in r else "-"
        ft_s = f"{r['finetune_s']:.0f}" if r.get("finetune_s") is not None else "-"
        s, u, hi = r["test_seen"], r["test_unseen"], r["test_high"]
        lines.append(f"| {r['frontend']} | {_init(r)} | {pre_s} | {ft_s} | {loss} | {f(s['frame_map'])} | "
                     f"{f(s['event_f1_iou'])} | {f(u['event_f1_iou'])} | {f(hi['event_f1_iou'])} | "
                     f"{f(u['frame_map'])} | {f(hi['frame_map'])} | {f(s['event_f1_collar'])} | "
                     f"{f(u['event_f1_collar'])} |")
    classes = sorted({c for r in report["results"].values() for c in r["test_seen"]["per_class_f1_iou"]})
    lines += ["", "Per-class event F1 (IoU >= 0.3), seen / unseen / > 96 kHz rates:", "",
              "| frontend | init | " + " | ".join(classes) + " |", "|---|---|" + "---:|" * len(classes)]
    for r in report["results"].values():
        cells = [" / ".join(f(r[which]["per_class_f1_iou"].get(c)) for which in TEST_SPLITS) for c in classes]
        lines.append(f"| {r['frontend']} | {_init(r)} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def plot_curves(report: dict[str, Any], path: Path) -> None:
    import matplotlib  # lazy: matplotlib takes 0.3-0.45 s to import and only the zoo's figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: as above, after the backend is chosen

    fig, ax = plt.subplots(figsize=(7, 4))
    for key, r in report["results"].items():
        curve = r.get("pretrain_curve")
        if curve:
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=r["frontend"])
    ax.set_xlabel("step")
    ax.set_ylabel("data2vec regression loss")
    ax.set_yscale("log")
    ax.set_title("pretraining loss, same encoder and budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    report = run_zoo(args)
    print(json.dumps(report, indent=2) if args.json else format_tables(report))
    return 0
