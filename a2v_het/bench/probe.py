"""``a2v-het bench probe --checkpoint NAME=RUN_OR_EXPORT ...``: linear probes (BEANS-style) of frozen embeddings, for
every checkpoint given and for the same architecture at random initialisation, on two tasks:

- **synthetic call types**: :func:`data_tools.synth.write_synthetic_calls` (``--synthetic-recordings`` field
  recordings of 3 s at 8-48 kHz -> one clip per call, 6 call types, grouped by recording), one window of
  ``--synthetic-window-s`` per clip (mean over its valid tokens);
- **pykanto**: the 25 bundled recordings (22.05-48 kHz), 1 s windows every 0.5 s, labelled per recording
  (:func:`a2v_het.eval.probe.pykanto_labels`: great-tit individuals, species), split by recording; skipped when
  pykanto is not installed.

- **great-tit ID**: the same windows, only the 19 great-tit recordings (two individuals, B32 and SW83, all at
  22.05 kHz): on the full pykanto task the species also differ in sample rate, which a rate-aware model can read
  off the input.

Each cell: ``a2v-het embed`` (``--layers``, mean pool) then :func:`a2v_het.eval.probe.probe_folder` (logistic
regression, C by grouped CV) for each split seed in ``--seeds``: mean ± sd of accuracy, macro F1, mAP on test.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from a2v_het.bench.frontend import describe_machine
from a2v_het.eval.embed import embed_files
from a2v_het.eval.probe import probe_folder, pykanto_labels


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="NAME=RUN_OR_EXPORT (repeat); a pretraining run folder, export or fine-tune run")
    parser.add_argument("--no-random-init", action="store_true", help="skip the random-initialisation rows")
    parser.add_argument("--layers", default="final")
    parser.add_argument("--synthetic-recordings", type=int, default=100)
    parser.add_argument("--synthetic-window-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic recordings")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the train/test split; mean ± sd over them")
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--json", action="store_true")


def _pykanto_root() -> Path | None:
    try:
        root = Path(importlib.metadata.distribution("pykanto").locate_file("pykanto/data"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return root if (root / "raw").is_dir() else None


def _great_tit_labels(pykanto_csv: Path, out_csv: Path) -> Path:
    """The great tits only (two individuals, all at 22.05 kHz): the pykanto task a sample rate cannot give away."""
    with open(pykanto_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"].startswith("great_tit_")]
    with open(out_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    return out_csv


def run_bench(args) -> dict[str, Any]:
    # lazy: data_tools.synth (+80 ms: scipy.signal) would load with every `a2v-het` command, --help too
    from data_tools.synth import write_synthetic_calls

    seeds = [int(x) for x in str(args.seeds).split(",")]
    res: dict[str, Any] = {"machine": describe_machine("cpu"), "layers": args.layers, "seeds": seeds, "rows": []}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="a2v-bench-probe-") as tmp:
        tmp = Path(tmp)
        # task -> (labels, embedding set); embedding set -> (inputs, window_s, hop_s)
        sets = {"synthetic": ([tmp / "synthetic" / "audio"], args.synthetic_window_s, args.synthetic_window_s)}
        tasks = {"synthetic": (write_synthetic_calls(tmp / "synthetic", args.synthetic_recordings, args.seed),
                               "synthetic")}
        root = _pykanto_root()
        if root is not None:
            sets["pykanto"] = ([root], 1.0, 0.5)
            tasks["pykanto"] = (pykanto_labels(root, tmp / "pykanto.csv"), "pykanto")
            tasks["great_tit_id"] = (_great_tit_labels(tmp / "pykanto.csv", tmp / "great_tit.csv"), "pykanto")
        res["tasks"] = list(tasks)
        k = 0
        for item in args.checkpoint:
            name, _, path = item.partition("=")
            for random_init in ([False] if args.no_random_init else [False, True]):
                row: dict[str, Any] = {"name": name, "checkpoint": path, "random_init": random_init}
                folders = {}
                for key, (inputs, win, hop) in sets.items():
                    k += 1
                    folders[key] = tmp / f"emb{k}"
                    e = embed_files(path, inputs, folders[key], win, hop, layers=args.layers,
                                    random_init=random_init, progress=False)
                    row[f"{key}_embed_failed"] = len(e["failed"])
                for task, (labels, key) in tasks.items():
                    runs = [probe_folder(folders[key], labels, seed=s) for s in seeds]
                    row[task] = {m: float(np.mean([r[m] for r in runs])) for m in ("accuracy", "macro_f1", "mAP")}
                    row[task].update({f"{m}_sd": float(np.std([r[m] for r in runs]))
                                      for m in ("accuracy", "macro_f1", "mAP")})
                    row[task]["n_test"] = [r["n_test"] for r in runs]
                    row[task]["n_train"] = [r["n_train"] for r in runs]
                    aps = {c: [r["per_class"][c]["ap"] for r in runs if r["per_class"][c]["n_test"]]
                           for c in runs[0]["per_class"]}
                    row[task]["per_class_ap"] = {c: float(np.mean(v)) if v else None for c, v in aps.items()}
                res["rows"].append(row)
    return res


def format_table(res: dict[str, Any]) -> str:
    tasks = res.get("tasks", [])
    head = "| model | weights | " + " | ".join(f"{t} acc | {t} macro F1 | {t} mAP" for t in tasks) + " |"
    lines = [head, "|---|---|" + "---|" * (3 * len(tasks))]
    for r in res["rows"]:
        cells = []
        for t in tasks:
            cells += [f"{r[t][m]:.3f} ± {r[t][m + '_sd']:.3f}" for m in ("accuracy", "macro_f1", "mAP")]
        lines.append(f"| {r['name']} | {'random init' if r['random_init'] else 'pretrained'} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def run(args) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = run_bench(args)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
