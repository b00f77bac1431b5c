"""``a2v-het probe --embeddings DIR --labels LABELS.csv``: a linear probe on frozen embeddings, BEANS-style.

The rows of an ``a2v-het embed`` folder (one per window and channel) get the label of their file from
``LABELS.csv`` (columns ``file`` or ``name``, ``label``, optional ``group`` (default: the file) and ``split`` =
train | test; files without a label are left out). Without a split column the groups are split per class, seeded:
``test_fraction`` of each class's groups (at least one when it has two or more) go to test, so the windows of one
recording (or the calls cut from one recording, with ``group``) never sit on both sides.

Probe: standardisation + multinomial logistic regression (scikit-learn, lbfgs), the inverse regularisation C picked
from ``C_GRID`` by grouped, stratified 3-fold cross-validation on the train files (macro F1) when every class has
at least two train files, else C = 1. Reported on test: accuracy, macro F1 and the mean (mAP) of the average
precision per class (one vs rest, from the predicted probabilities), both over the classes with test rows (a class
seen only in training can still be predicted, and then counts as an error). Embeddings from ``--pool none`` are
mean-pooled over their valid tokens first.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, average_precision_score, f1_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from a2v_het.config import atomic_write_text
from a2v_het.eval.embed import load_embeddings

C_GRID = (0.01, 0.1, 1.0, 10.0)


def read_labels(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "label" not in rows[0] or not ({"file", "name"} & rows[0].keys()):
        raise ValueError(f"{path}: needs a 'label' column and a 'file' or 'name' column")
    return rows


def split_groups(labels: Sequence[str], groups: Sequence[str], test_fraction: float = 0.3, seed: int = 0
                 ) -> np.ndarray:
    """(R,) bool, True = test. When every group holds one label: per class, ``round(test_fraction * n_groups)``
    groups (>= 1 when the class has two or more). Otherwise (groups holding several labels, e.g. the calls of one
    recording): ``round(test_fraction * n_groups)`` of all groups, drawn at random."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[str]] = {}
    labels_of: dict[str, set[str]] = {}
    for lab, g in zip(labels, groups):
        labels_of.setdefault(g, set()).add(lab)
        if g not in by_class.setdefault(lab, []):
            by_class[lab].append(g)
    if any(len(v) > 1 for v in labels_of.values()):
        gs = sorted(labels_of)
        test_groups = set(rng.permutation(gs)[: int(round(test_fraction * len(gs)))].tolist())
        return np.array([g in test_groups for g in groups])
    test_groups = set()
    for lab in sorted(by_class):
        gs = sorted(by_class[lab])
        k = min(len(gs) - 1, max(1, int(round(test_fraction * len(gs))))) if len(gs) >= 2 else 0
        test_groups.update(rng.permutation(gs)[:k].tolist())
    return np.array([g in test_groups for g in groups])


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    return clf.fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> tuple[float, dict[str, float]]:
    """C from C_GRID by grouped stratified CV (macro F1); (1.0, {}) when a class has fewer than 2 train files."""
    per_class = {lab: len(set(groups[y == lab])) for lab in np.unique(y)}
    folds = min(3, min(per_class.values()))
    if folds < 2 or len(per_class) < 2:
        return 1.0, {}
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = {}
    for c in C_GRID:
        f1s = []
        for tr, va in cv.split(x, y, groups):
            if len(np.unique(y[tr])) < 2:
                continue
            pred = _fit(x[tr], y[tr], c, seed).predict(x[va])
            f1s.append(f1_score(y[va], pred, average="macro", labels=np.unique(y[tr]), zero_division=0))
        scores[c] = float(np.mean(f1s)) if f1s else float("nan")
    best = max(C_GRID, key=lambda c: (scores[c] if not math.isnan(scores[c]) else -1, -abs(math.log10(c))))
    return best, {str(k): v for k, v in scores.items()}


def linear_probe(x: np.ndarray, labels: Sequence[str], groups: Sequence[str], is_test: np.ndarray | None = None,
                 test_fraction: float = 0.3, seed: int = 0) -> dict[str, Any]:
    """x (R, D) embeddings, labels (R,), groups (R,) file ids; is_test (R,) bool or None (split per class) ->
    {accuracy, macro_f1, mAP, per_class: {label: {ap, n_test, n_train}}, C, cv_macro_f1, n_train, n_test, ...}."""
    x = np.asarray(x, np.float64)
    y = np.asarray(labels)
    groups = np.asarray(groups)
    test = split_groups(y, groups, test_fraction, seed) if is_test is None else np.asarray(is_test, bool)
    train = ~test
    classes = sorted(np.unique(y[train]).tolist())
    if len(classes) < 2 or not test.any():
        raise ValueError(f"a probe needs >= 2 classes in train and some test rows (train classes {classes}, "
                         f"{int(test.sum())} test rows)")
    keep = test & np.isin(y, classes)  # a class never seen in training cannot be predicted: left out of test
    c, cv = choose_c(x[train], y[train], groups[train], seed)
    clf = _fit(x[train], y[train], c, seed)
    pred = clf.predict(x[keep])
    proba = clf.predict_proba(x[keep])
    order = list(clf.classes_)
    per_class = {}
    aps = []
    for lab in classes:
        pos = y[keep] == lab
        ap = float(average_precision_score(pos, proba[:, order.index(lab)])) if pos.any() else float("nan")
        if pos.any():
            aps.append(ap)
        per_class[lab] = {"ap": ap, "n_test": int(pos.sum()), "n_train": int((y[train] == lab).sum()),
                          "test_files": int(len(set(groups[keep][pos]))),
                          "train_files": int(len(set(groups[train][y[train] == lab])))}
    tested = [c for c in classes if per_class[c]["n_test"] > 0]
    return {"accuracy": float(accuracy_score(y[keep], pred)),
            "macro_f1": float(f1_score(y[keep], pred, average="macro", labels=tested, zero_division=0)),
            "mAP": float(np.mean(aps)), "per_class": per_class, "classes": classes, "C": c, "cv_macro_f1": cv,
            "n_train": int(train.sum()), "n_test": int(keep.sum()), "dim": int(x.shape[1]),
            "unseen_test_rows": int((test & ~keep).sum())}


def probe_folder(embeddings: str | Path, labels_csv: str | Path, test_fraction: float = 0.3, seed: int = 0
                 ) -> dict[str, Any]:
    """An ``a2v-het embed`` folder + a labels table -> :func:`linear_probe`'s report (+ "embeddings", "labels")."""
    x, index = load_embeddings(embeddings)
    if x.ndim == 3:  # --pool none: mean over the valid tokens
        n = np.array([max(r["n_tokens"], 1) for r in index])
        x = x.sum(1) / n[:, None]
    table = read_labels(labels_csv)
    by_name = {r["name"]: r for r in table if r.get("name")}
    by_file = {str(Path(r["file"]).resolve()): r for r in table if r.get("file")}
    rows, y, groups, split = [], [], [], []
    for i, r in enumerate(index):
        lab = by_name.get(r["name"]) or by_file.get(str(Path(r["file"]).resolve()))
        if lab is None or not lab["label"]:
            continue
        rows.append(i)
        y.append(lab["label"])
        groups.append(lab.get("group") or r["file"])
        split.append(lab.get("split", ""))
    if not rows:
        raise ValueError(f"no row of {embeddings}/index.csv has a label in {labels_csv}")
    is_test = np.array([s == "test" for s in split]) if any(split) else None
    report = linear_probe(x[rows], y, groups, is_test, test_fraction, seed)
    return {**report, "embeddings": str(embeddings), "labels": str(labels_csv)}


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def pykanto_labels(root: str | Path, out_csv: str | Path) -> Path:
    """Per-recording labels of pykanto's bundled recordings (``pykanto/data``): the great tits by individual
    (``great_tit_B32``, ``great_tit_SW83`` from the file names), the others by their folder (species); group = file.
    Writes ``out_csv`` (file, label, group)."""
    root = Path(root)
    rows = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() != ".wav":
            continue
        rel = p.relative_to(root).parts
        if "great_tit" in rel:
            label = "great_tit_" + p.stem.split("-")[1]
        else:
            label = rel[1].lower()
        rows.append((str(p), label))
    atomic_write_text(out_csv, _csv_text(("file", "label", "group"), [(f, lab, f) for f, lab in rows]))
    return Path(out_csv)


def format_report(r: dict[str, Any]) -> str:
    lines = [f"probe: {r['n_train']} train / {r['n_test']} test rows, D={r['dim']}, C={r['C']:g}: accuracy "
             f"{r['accuracy']:.3f}, macro F1 {r['macro_f1']:.3f}, mAP {r['mAP']:.3f}",
             "| class | AP | test rows (files) | train rows (files) |", "|---|---|---|---|"]
    for c, v in r["per_class"].items():
        ap = "  -  " if math.isnan(v["ap"]) else f"{v['ap']:.3f}"
        lines.append(f"| {c} | {ap} | {v['n_test']} ({v['test_files']}) | {v['n_train']} ({v['train_files']}) |")
    return "\n".join(lines)


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def add_args(parser) -> None:
    parser.add_argument("--embeddings", required=True, help="an `a2v-het embed` output folder")
    parser.add_argument("--labels", required=True, help="CSV: file or name, label[, split=train|test]")
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--json", action="store_true")


def run(args) -> int:
    try:
        report = probe_folder(args.embeddings, args.labels, args.test_fraction, args.seed)
    except (OSError, ValueError, KeyError) as e:
        print(f"a2v-het probe: error: {e}", file=sys.stderr)
        return 2
    if args.out:
        atomic_write_text(args.out, json.dumps(_clean(report), indent=2) + "\n")
    print(json.dumps(_clean(report), indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(prog="a2v-het probe")
    add_args(p)
    sys.exit(run(p.parse_args()))
