"""``a2v-het bench pickers``: every band picker's coverage by sample rate, in one run, on the same clips.

Rows: each ``--checkpoint``'s learned hypernetwork, its untrained start (same config, fresh weights), and the
non-learned selectors of :mod:`a2v_het.eval.pickers` (greedy on the call evidence and on the seed's variance,
uniform tiling, random bands, multiband-audio's spectral-flux and entropy selectors), each placing the K detail
bands (every row has the same context bands). Columns: the detail bands' All Cov per sample rate of each
``--data`` split and overall, and the All Cov of all bands. Without ``--checkpoint`` the default heterodyne config is used.

    a2v-het bench pickers --data data/synth-field-eval [--checkpoint runs/synthetic_frontend_field ...] [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from a2v_het.eval.coverage import coverage_report, load_frontend
from a2v_het.eval.pickers import PICKERS, build_picker
from a2v_het.frontend import FrontendConfig, build_frontend


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, nargs="+", help="shard folders (each with manifest.json)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--checkpoint", nargs="*", default=[], help="run or export folders with learned pickers")
    parser.add_argument("--pickers", default=",".join(p for p in PICKERS if p not in ("learned", "untrained")),
                        help="comma-separated non-learned pickers (default: all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--plot-dir", default=None, help="band PNGs per picker and data set")
    parser.add_argument("--json", action="store_true")


def _row(name: str, data: str, report: dict[str, Any]) -> dict[str, Any]:
    """All Cov of the K detail bands (where the pickers differ) by rate and overall; ``overall_all_bands`` adds the
    context bands (the same for every picker)."""
    return {"picker": name, "data": data, "overall": report["overall"]["all_cov_detail"],
            "by_rate": {int(r["sample_rate"]): r["all_cov_detail"] for r in report["by_sample_rate"]},
            "overall_all_bands": report["overall"]["all_cov"],
            "captured_variance": report["overall"]["captured_variance"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_grad_enabled(False)
    frontends: list[tuple[str, Any]] = []
    for ckpt in args.checkpoint:
        frontend, _ = load_frontend(ckpt)
        tag = Path(ckpt).name
        frontends += [(f"learned:{tag}", frontend), (f"untrained:{tag}", build_picker("untrained", frontend))]
    base = frontends[0][1] if frontends else build_frontend(FrontendConfig()).eval()
    names = [p for p in str(args.pickers).split(",") if p]
    for name in names:
        frontends.append((name, build_picker(name, base)))
    rows = []
    for data in args.data:
        for name, picker in frontends:
            plot_dir = Path(args.plot_dir) / Path(data).name if args.plot_dir else None
            report = coverage_report(picker, data, args.split, batch_size=args.batch_size,
                                     max_batches=args.max_batches, plot_dir=plot_dir,
                                     plot_tag=name.replace(":", "_"))
            rows.append(_row(name, data, report))
    result = {"rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(rows))
    return result


def format_table(rows: list[dict[str, Any]]) -> str:
    """One Markdown table per data set: the detail bands' All Cov by rate, one row per picker, and the All Cov of
    every band (detail and context) overall."""
    out = []
    for data in dict.fromkeys(r["data"] for r in rows):
        sub = [r for r in rows if r["data"] == data]
        rates = sorted({sr for r in sub for sr in r["by_rate"]})
        out += [f"**{data}** (All Cov of the detail bands)", "",
                "| picker | " + " | ".join(f"{sr / 1000:g} kHz" for sr in rates) + " | all | all bands |",
                "|---|" + "---|" * (len(rates) + 2)]
        for r in sub:
            cells = [f"{100 * r['by_rate'][sr]:.1f}%" if sr in r["by_rate"] else "-" for sr in rates]
            out.append(f"| {r['picker']} | " + " | ".join(cells) + f" | {100 * r['overall']:.1f}% | "
                       f"{100 * r['overall_all_bands']:.1f}% |")
        out.append("")
    return "\n".join(out)
