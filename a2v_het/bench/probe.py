"""``a2v-het bench probe --checkpoint NAME=RUN_OR_EXPORT ...``: linear probes (BEANS-style) of frozen embeddings, for
every checkpoint given and for the same architecture at random initialisation, on two tasks:

- **synthetic call types**: :func:`a2v_het.eval.probe.write_synthetic_calls` (``--synthetic-recordings`` field
  recordings of 3 s at 8-48 kHz -> one clip per call, 6 call types, grouped by recording), one window of
  ``--synthetic-window-s`` per clip (mean over its valid tokens);
- **pykanto**: the 25 bundled recordings (22.05-48 kHz), 1 s windows every 0.5 s, labelled per recording
  (:func:`a2v_het.eval.probe.pykanto_labels`: great-tit individuals, species), split by recording; skipped when
  pykanto is not installed.

Each cell: ``a2v-het embed`` (``--layers``, mean pool) then :func:`a2v_het.eval.probe.probe_folder` (logistic
regression, C by grouped CV, seeded split): accuracy, macro F1, mAP on the test files.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from a2v_het.bench.frontend import describe_machine


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", action="append", required=True,
                        help="NAME=RUN_OR_EXPORT (repeat); a pretraining run folder, export or fine-tune run")
    parser.add_argument("--no-random-init", action="store_true", help="skip the random-initialisation rows")
    parser.add_argument("--layers", default="final")
    parser.add_argument("--synthetic-recordings", type=int, default=100)
    parser.add_argument("--synthetic-window-s", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp-dir", default=None)
    parser.add_argument("--json", action="store_true")


def _pykanto_root() -> Path | None:
    try:
        root = Path(importlib.metadata.distribution("pykanto").locate_file("pykanto/data"))
    except importlib.metadata.PackageNotFoundError:
        return None
    return root if (root / "raw").is_dir() else None


def run_bench(args) -> dict[str, Any]:
    from a2v_het.eval.embed import embed_files
    from a2v_het.eval.probe import probe_folder, pykanto_labels, write_synthetic_calls

    res: dict[str, Any] = {"machine": describe_machine("cpu"), "layers": args.layers, "rows": []}
    with tempfile.TemporaryDirectory(dir=args.tmp_dir, prefix="a2v-bench-probe-") as tmp:
        tmp = Path(tmp)
        tasks = {"synthetic": (write_synthetic_calls(tmp / "synthetic", args.synthetic_recordings, args.seed),
                               [tmp / "synthetic" / "audio"], args.synthetic_window_s, args.synthetic_window_s)}
        root = _pykanto_root()
        if root is not None:
            tasks["pykanto"] = (pykanto_labels(root, tmp / "pykanto.csv"), [root], 1.0, 0.5)
        k = 0
        for item in args.checkpoint:
            name, _, path = item.partition("=")
            for random_init in ([False] if args.no_random_init else [False, True]):
                row: dict[str, Any] = {"name": name, "checkpoint": path, "random_init": random_init}
                for task, (labels, inputs, win, hop) in tasks.items():
                    k += 1
                    out = tmp / f"emb{k}"
                    e = embed_files(path, inputs, out, win, hop, layers=args.layers, random_init=random_init,
                                    progress=False)
                    r = probe_folder(out, labels, seed=args.seed)
                    row[task] = {key: r[key] for key in ("accuracy", "macro_f1", "mAP", "n_train", "n_test", "C")}
                    row[task]["per_class_ap"] = {c: v["ap"] for c, v in r["per_class"].items()}
                    row[task]["embed_failed"] = len(e["failed"])
                res["rows"].append(row)
    return res


def format_table(res: dict[str, Any]) -> str:
    tasks = [t for t in ("synthetic", "pykanto") if res["rows"] and t in res["rows"][0]]
    head = "| model | weights | " + " | ".join(f"{t} acc | {t} macro F1 | {t} mAP" for t in tasks) + " |"
    lines = [head, "|---|---|" + "---|" * (3 * len(tasks))]
    for r in res["rows"]:
        cells = []
        for t in tasks:
            cells += [f"{r[t]['accuracy']:.3f}", f"{r[t]['macro_f1']:.3f}", f"{r[t]['mAP']:.3f}"]
        lines.append(f"| {r['name']} | {'random init' if r['random_init'] else 'pretrained'} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines)


def run(args) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = run_bench(args)
    print(json.dumps(res, indent=2) if args.json else format_table(res))
    return 0
