"""``a2v-het bench infer``: inference throughput of ``a2v-het predict`` and ``a2v-het embed``, in hours of audio per
hour of wall time, for the model sizes of the given recipes.

For each recipe (default: recipes/smoke.yaml, the 3 x 64 smoke model, and recipes/meerkat.yaml, the 12 x 768
data2vec-base model), a detector export (the recipe's model + frontend, a one-class head) and an encoder export are
written at random initialisation into a temporary folder: throughput depends on the architecture, not on the weight
values. One recording of ``--seconds`` (per recipe) of noise with tones at ``--rate`` Hz (FLAC, PCM_16) is then run
through :func:`a2v_het.eval.predict.predict` (``--window-s`` windows every ``--hop-s``, overlap-averaged) and
:func:`a2v_het.eval.embed.embed_files` (``--window-s`` windows every ``--window-s``, mean-pooled), each timed from
the call to its return, model loading included (reported apart as ``load_s``); ``--repeats`` runs, the fastest
kept. Reported: audio hours per wall hour (= times real time), seconds of wall time per hour of audio, torch
threads, the machine and its 1-minute load average after each model (other processes on the CPU slow it down).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from safetensors.torch import save_file

from a2v_het.bench.frontend import describe_machine
from a2v_het.config import load_config, save_config
from a2v_het.eval.embed import embed_files
from a2v_het.eval.predict import predict
from a2v_het.eval.run_files import load_model
from a2v_het.frontend import build_frontend
from a2v_het.model.data2vec import Data2VecModel
from a2v_het.train.config import PretrainConfig
from a2v_het.train.finetune import FinetuneConfig, FinetuneObjective

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RECIPES = "recipes/smoke.yaml:600,recipes/meerkat.yaml:60"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help=f"RECIPE:SECONDS,... model sizes and seconds of audio each (default {DEFAULT_RECIPES})")
    parser.add_argument("--rate", type=int, default=48000, help="sample rate of the recording, Hz (default 48000)")
    parser.add_argument("--window-s", type=float, default=10.0, help="window, s (default 10)")
    parser.add_argument("--hop-s", type=float, default=5.0, help="predict's hop, s (default 5; embed: the window)")
    parser.add_argument("--batch-size", type=int, default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per measurement, fastest kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tmp-dir", default=None, help="where to write the exports and the recording")


def write_exports(recipe: str | Path, folder: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(detector export, encoder export, model summary) of ``recipe``'s model at random initialisation."""
    torch.manual_seed(0)
    det_cfg = load_config(FinetuneConfig, str(recipe), ["finetune.classes=[call]"])
    det = FinetuneObjective(det_cfg)
    det_dir = folder / "detector"
    det_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in det.state_dict().items()}, str(det_dir / "model.safetensors"))
    save_config(det_cfg, det_dir / "config.yaml")
    n_params = sum(p.numel() for n, p in det.named_parameters() if not n.startswith("head."))
    del det
    enc_cfg = load_config(PretrainConfig, str(recipe))
    enc = Data2VecModel(enc_cfg.model, build_frontend(enc_cfg.frontend))
    enc_dir = folder / "encoder"
    enc_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in enc.state_dict().items()}, str(enc_dir / "model.safetensors"))
    save_config(enc_cfg, enc_dir / "config.yaml")
    m = enc_cfg.model
    return det_dir, enc_dir, {"depth": m.depth, "embed_dim": m.embed_dim, "num_heads": m.num_heads,
                              "frontend": enc_cfg.frontend.name, "frontend_dim": enc_cfg.frontend.dim,
                              "backbone_params_m": round(n_params / 1e6, 2)}


def write_recording(path: Path, seconds: float, rate: int, seed: int = 0) -> Path:
    """Noise at -26 dBFS with a 0.3 s tone every 2 s, written block-wise (FLAC PCM_16)."""
    rng = np.random.default_rng(seed)
    with sf.SoundFile(str(path), "w", rate, 1, subtype="PCM_16", format="FLAC") as fh:
        for start in range(0, int(seconds), 10):
            n = int(min(10, seconds - start) * rate)
            x = 0.05 * rng.standard_normal(n)
            t = np.arange(n) / rate
            x += 0.2 * np.sin(2 * np.pi * 2000 * t) * ((t % 2.0) < 0.3)
            fh.write(x.astype(np.float32))
    return path


def _timed(fn, repeats: int) -> tuple[float, Any]:
    best, res = float("inf"), None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        res = fn()
        best = min(best, time.perf_counter() - t0)
    return best, res


def bench_recipe(recipe: str, seconds: float, args, tmp: Path) -> dict[str, Any]:
    folder = tmp / Path(recipe).stem
    det, enc, summary = write_exports(ROOT / recipe if not Path(recipe).is_file() else recipe, folder)
    rec = write_recording(folder / "recording.flac", seconds, args.rate)
    load_s, _ = _timed(lambda: load_model(det, args.device), 1)
    runs = {}
    k = [0]

    def fresh(name: str) -> Path:  # a new output folder per run: nothing is skipped as already done
        k[0] += 1
        return folder / f"{name}-{k[0]}"

    wall, res = _timed(lambda: predict(det, [rec], fresh("pred"), args.window_s, args.hop_s, args.batch_size,
                                       threshold=0.5, device=args.device, progress=False), args.repeats)
    assert res["exit_code"] == 0, res
    runs["predict"] = {"wall_s": wall, "windows_per_audio_s": 1 / args.hop_s}
    wall, res = _timed(lambda: embed_files(enc, [rec], fresh("emb"), args.window_s, args.window_s,
                                           batch_size=args.batch_size, device=args.device, progress=False),
                       args.repeats)
    assert res["exit_code"] == 0, res
    runs["embed"] = {"wall_s": wall, "windows_per_audio_s": 1 / args.window_s}
    for r in runs.values():
        r["audio_h_per_wall_h"] = seconds / r["wall_s"]
        r["wall_s_per_audio_h"] = r["wall_s"] * 3600 / seconds
    return {"recipe": recipe, "model": summary, "audio_s": seconds, "sample_rate": args.rate, "load_s": load_s,
            "runs": runs, "load_average_1min": os.getloadavg()[0]}


def run_bench(args) -> dict[str, Any]:
    out: dict[str, Any] = {"machine": describe_machine(args.device), "torch_threads": torch.get_num_threads(),
                           "device": args.device, "window_s": args.window_s, "hop_s": args.hop_s,
                           "batch_size": args.batch_size, "results": []}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="a2v-bench-infer-") as tmp:
        for item in args.recipes.split(","):
            recipe, _, seconds = item.partition(":")
            out["results"].append(bench_recipe(recipe, float(seconds or 60), args, Path(tmp)))
    return out


def format_table(res: dict[str, Any]) -> str:
    lines = [f"inference throughput on {res['device']} ({res['torch_threads']} torch threads; {res['machine']['cpu']}, "
             f"{res['machine']['cpu_cores']} cores{', ' + res['machine']['cuda_device'] if res['machine'].get('cuda_device') else ''}), "
             f"{res['window_s']:g} s windows, predict hop {res['hop_s']:g} s, embed hop {res['window_s']:g} s, "
             f"batch {res['batch_size']}",
             "| model | backbone params | audio | command | wall | audio h / wall h | wall s / audio h | load avg |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        m = r["model"]
        for cmd, v in r["runs"].items():
            lines.append(f"| {Path(r['recipe']).stem} ({m['depth']} x {m['embed_dim']}, {m['frontend']}) | "
                         f"{m['backbone_params_m']:.1f} M | {r['audio_s']:g} s at {r['sample_rate'] / 1000:g} kHz | "
                         f"{cmd} | {v['wall_s']:.1f} s | {v['audio_h_per_wall_h']:.1f} | "
                         f"{v['wall_s_per_audio_h']:.0f} | {r['load_average_1min']:.1f} |")
    return "\n".join(lines)


def run(args) -> int:
    res = run_bench(args)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
