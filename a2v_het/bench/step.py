"""``a2v-het bench step``: one data2vec training step with the heterodyne frontend vs the conv extractor.

Same encoder, same decoder, same masking and clone batch; only the frontend differs. For each input rate, a batch
of ``--batch`` clips of ``--seconds`` s (noise + tones) goes through forward (teacher + student), backward and an
AdamW step. Reported: tokens per clip, median step time, time per clip, and the conv/heterodyne ratio, all measured
in the same run. The encoder is smaller than the base model by default so the conv rows finish on a CPU; pass
``--embed-dim 768 --depth 12 --heads 12`` on a GPU for the base model.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

import torch

from a2v_het.bench.frontend import describe_machine, make_batch, time_step
from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.model.config import ModelConfig
from a2v_het.model.data2vec import Data2VecModel


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rates", type=str, default="16000,48000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--clone-batch", type=int, default=4)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--bf16", action="store_true", help="autocast bf16 (GPU)")


def model_config(args: argparse.Namespace) -> ModelConfig:
    return ModelConfig(embed_dim=args.embed_dim, depth=args.depth, num_heads=args.heads, decoder_dim=args.embed_dim // 2,
                       clone_batch=args.clone_batch, average_top_k_layers=min(8, args.depth))


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rates = [int(r) for r in str(args.rates).split(",") if r]
    rows = []
    for sr in rates:
        wave = torch.from_numpy(make_batch(args.batch, args.seconds, sr)).to(device)
        srs = torch.full((args.batch,), sr, device=device)
        lengths = torch.full((args.batch,), wave.shape[1], device=device)
        times = {}
        for name in ("heterodyne", "conv"):
            torch.manual_seed(0)
            frontend = build_frontend(FrontendConfig(name=name, dim=args.embed_dim))
            model = Data2VecModel(model_config(args), frontend).to(device)
            opt = torch.optim.AdamW(model.param_groups(0.01), lr=1e-4)

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(args.bf16)):
                    loss, _ = model(wave, srs, lengths, 0)
                loss.backward()
                opt.step()
                model.ema_step(0)

            t = statistics.median(time_step(step, device, args.repeats))
            times[name] = t
            rows.append({"sample_rate": sr, "frontend": name,
                         "tokens_per_clip": frontend.num_tokens(args.seconds, sr),
                         "step_s": t, "s_per_clip": t / args.batch})
        for r in rows:
            if r["sample_rate"] == sr:
                r["ratio_to_heterodyne"] = r["step_s"] / times["heterodyne"]
    result = {"benchmark": "step", "machine": describe_machine(device.type),
              "settings": {"batch": args.batch, "seconds": args.seconds, "embed_dim": args.embed_dim,
                           "depth": args.depth, "heads": args.heads, "clone_batch": args.clone_batch,
                           "bf16": bool(args.bf16), "repeats": args.repeats},
              "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_markdown(result))
    return result


def format_markdown(result: dict[str, Any]) -> str:
    lines = ["| rate (Hz) | frontend | tokens/clip | step (s) | s/clip | x heterodyne |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['sample_rate']} | {r['frontend']} | {r['tokens_per_clip']} | {r['step_s']:.3f} | "
                     f"{r['s_per_clip']:.3f} | {r['ratio_to_heterodyne']:.1f} |")
    return "\n".join(lines)
