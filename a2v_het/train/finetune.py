"""Fine-tuning for call detection through the pretraining loop (``a2v_het.train.loop.pretrain``).

``FinetuneConfig`` (:mod:`a2v_het.recipe`) holds the run sections a pretraining recipe has plus ``finetune``;
:func:`a2v_het.train.objective.build_objective` gives the loop a :class:`FinetuneObjective` (it holds a
:class:`CallDetector`; its ``forward`` returns the masked frame loss from the batch's events), so checkpoints,
resume, preemption, logging and export are the pretraining ones. After the last step, rank 0 evaluates on the val
split (tuning per-class thresholds) and the test split when present and writes ``eval.json`` / ``eval.md`` to the
run folder.

    a2v-het finetune recipes/synthetic_finetune.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import Tensor, nn

from a2v_het.atomic import atomic_write_text
from a2v_het.config import ConfigError, config_from_dict, load_config
from a2v_het.data.manifest import read_manifest
from a2v_het.data.targets import events_to_frame_targets
from a2v_het.eval.evaluate import evaluate_checkpoint, format_report
from a2v_het.frontend import Frontend
from a2v_het.frontend.heterodyne_frontend import HeterodyneFrontend
from a2v_het.model.backbone import adopt_parts
from a2v_het.model.classifier import CallDetector, sigmoid_focal_loss
from a2v_het.model.mixup import bc_mixup
from a2v_het.model.param_groups import weight_decay_groups
from a2v_het.recipe import FinetuneConfig, FinetuneSection, PretrainConfig  # noqa: F401  (re-exported)
from a2v_het.runs import is_finished
from a2v_het.train.distributed import default_to_cpu_accelerator, dist_env_from


def build_finetune_objective(cfg: FinetuneConfig) -> "FinetuneObjective":
    """The loop's objective for a fine-tuning config: the detector, with the pretrained backbone when
    ``finetune.init`` names an export."""
    if not cfg.finetune.classes:
        raise ConfigError("finetune.classes is empty: resolve it from the manifest first (finetune() does)")
    obj = FinetuneObjective(cfg)
    if cfg.finetune.init:
        obj.detector.load_pretrained(cfg.finetune.init)
    return obj


def mix_targets(targets: Tensor, partner: Tensor, ratio: Tensor) -> Tensor:
    """Soft mixup targets: targets (B, N, C) in [0, 1], partner (B,) int64, ratio (B,) the primary clip's share
    -> r * y + (1 - r) * y[partner] (B, N, C) fp32. The union (max) would call a frame fully positive for a call
    that makes up a quarter of the mixture; r = 1 (no partner) gives y exactly."""
    r = ratio.float().to(targets.device)[:, None, None]
    return r * targets.float() + (1.0 - r) * targets.float()[partner]


class FinetuneObjective(nn.Module):
    """The loop's objective (:class:`a2v_het.train.objective.Objective`) around a :class:`CallDetector`
    (``self.detector``): ``forward(wave, rates, lengths, step, events=, labelled=)`` -> (loss, logs)."""

    def __init__(self, cfg: FinetuneConfig):
        super().__init__()
        f = cfg.finetune
        # The detector's parts are registered here too (adopt_parts): the names and order of its parameters are the
        # detector's, so a fine-tune checkpoint loads into a bare CallDetector.
        adopt_parts(self, "detector", CallDetector(cfg.model, cfg.frontend, len(f.classes), f.top_k, f.dropout,
                                                   f.freeze_frontend))
        self.classes = list(f.classes)
        self.ft = f

    # ---- the loop's contract (a2v_het.train.objective.Objective)
    has_teacher = False

    @property
    def coverage_frontend(self) -> Frontend | None:
        frontend = self.detector.frontend
        return frontend if isinstance(frontend, HeterodyneFrontend) else None

    def batch_inputs(self, batch: dict, device: torch.device) -> dict:
        return {"events": batch["events"], "labelled": batch["labelled"]}

    def lr_scale(self, group: dict, step: int) -> float:
        return 0.0 if group.get("name") == "backbone" and step < self.ft.warmup_classifier_steps else 1.0

    def param_groups(self, weight_decay: float) -> list[dict]:
        return (weight_decay_groups(self.detector.backbone_parameters(), weight_decay, name="backbone")
                + weight_decay_groups(self.detector.head.parameters(), weight_decay, name="head"))

    def ema_step(self, step: int) -> float:
        return 0.0  # no teacher

    def check_collapse(self, logs: dict, step: int) -> None:
        return None  # supervised: no student-teacher pair to collapse

    def teacher_state_dict(self) -> dict[str, Tensor]:
        raise TypeError("the fine-tune objective has no teacher")

    def load_teacher_state_dict(self, state: dict[str, Tensor]) -> None:
        raise TypeError("the fine-tune objective has no teacher")

    # ---- loss
    def frame_targets(self, events: list, n_frames: int, device: torch.device) -> Tensor:
        t = np.stack([events_to_frame_targets(ev, self.classes, n_frames, self.detector.token_rate, unknown="ignore")
                      for ev in events]) if events else np.zeros((0, n_frames, len(self.classes)), np.float32)
        return torch.from_numpy(t).to(device)

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0, events: list | None = None,
                labelled=None) -> tuple[Tensor, dict]:
        b = wave.shape[0]
        events = events if events is not None else [[] for _ in range(b)]
        labelled = torch.as_tensor(labelled if labelled is not None else [True] * b, dtype=torch.bool,
                                   device=wave.device)
        partner = ratio = None
        if self.ft.bc_mixup and self.training:
            wave, lengths, partner, ratio = bc_mixup(wave, lengths, sample_rate, None)
        warmup = self.training and step < self.ft.warmup_classifier_steps
        logits, pad = self.detector.logits(wave, sample_rate, lengths, step, backbone_grad=not warmup)
        targets = self.frame_targets(events, logits.shape[1], logits.device)
        valid = ~pad & labelled[:, None]
        if partner is not None:
            targets = mix_targets(targets, partner, ratio)
            valid = valid & labelled[partner][:, None]
        with torch.autocast(device_type=wave.device.type, enabled=False):
            lf = logits.float()
            if self.ft.loss == "focal":
                per = sigmoid_focal_loss(lf, targets, self.ft.focal_alpha, self.ft.focal_gamma)
            else:
                pw = torch.full((lf.shape[-1],), self.ft.pos_weight, device=lf.device)
                per = torch.nn.functional.binary_cross_entropy_with_logits(lf, targets, reduction="none",
                                                                           pos_weight=pw)
            m = valid.float()[..., None]
            n = valid.sum().clamp_min(1)
            loss = (per * m).sum() / n  # summed over classes, mean over valid frames
            logs = {"loss": loss.detach(), "tokens": (~pad).sum().float(),
                    "pos_frac": ((targets * m).sum() / (n * max(len(self.classes), 1))).detach(),
                    "labelled_frac": labelled.float().mean()}
        return loss, logs


# ---------------------------------------------------------------------------------------------------- running
def resolve_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """Classes from the manifest when not given; model/frontend from the init export's config.yaml."""
    f = cfg.finetune
    if f.init:
        export_cfg = Path(f.init) / "config.yaml"
        if not export_cfg.is_file():
            raise ConfigError(f"finetune.init={f.init!r} has no config.yaml (make it with `a2v-het export`)")
        tree = yaml.safe_load(export_cfg.read_text())
        tree = {k: v for k, v in tree.items() if k in ("frontend", "model")}

        pre = config_from_dict(PretrainConfig, tree)
        cfg = dataclasses.replace(cfg, model=pre.model, frontend=pre.frontend)
    if not f.classes:
        from a2v_het.train.loop import ensure_shards  # lazy: the loop imports train.objective, which imports us

        if _rank() == 0:
            ensure_shards(cfg, True)  # the process group is not up yet: the other ranks wait for the manifest
        else:
            _wait_for(Path(cfg.data.shards) / "manifest.json")
        classes = tuple(read_manifest(cfg.data.shards)["classes"])
        if not classes:
            raise ConfigError(f"the manifest of {cfg.data.shards} lists no classes; set finetune.classes")
        cfg = dataclasses.replace(cfg, finetune=dataclasses.replace(f, classes=classes))
    return cfg


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return dist_env_from().rank


def _wait_for(path: Path, timeout_s: float = 3600.0) -> None:
    t0 = time.time()
    while not path.is_file():
        if time.time() - t0 > timeout_s:
            raise FileNotFoundError(f"{path} did not appear within {timeout_s:.0f} s")
        time.sleep(2.0)


def finetune(cfg: FinetuneConfig, evaluate: bool = True) -> Path:
    from a2v_het.train.loop import eval_shards, pretrain  # lazy: see resolve_config

    cfg = resolve_config(cfg)
    cfg.validate()
    run_dir = pretrain(cfg)
    if evaluate and is_finished(run_dir, cfg.train.max_steps) and _rank() == 0:
        data_dir = cfg.data.shards
        splits = read_manifest(data_dir).get("splits", {})
        val_dir = data_dir if cfg.finetune.val_split in splits else eval_shards(cfg)
        report = evaluate_checkpoint(run_dir, data_dir, split=cfg.finetune.test_split, val_split=cfg.finetune.val_split,
                                     val_data=val_dir, plot_dir=run_dir / "plots")
        atomic_write_text(run_dir / "eval.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(run_dir / "eval.md", format_report(report) + "\n")
        print(format_report(report), flush=True)
    return run_dir


def main_from_cli(recipe: str | None, overrides: list[str]) -> Path:
    from a2v_het.train.loop import shutdown_distributed  # lazy: see resolve_config

    default_to_cpu_accelerator()
    run_dir = finetune(load_config(FinetuneConfig, recipe, overrides))

    shutdown_distributed()
    return run_dir


def add_args(parser) -> None:
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/synthetic_finetune.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. finetune.init=exports/base")


def run(args) -> int:
    try:
        run_dir = main_from_cli(args.recipe, args.overrides)
    except ConfigError as e:
        print(f"a2v-het finetune: {e}", file=sys.stderr)
        return 2
    print(f"[a2v-het] run folder: {run_dir}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="a2v-het finetune")
    add_args(p)
    sys.exit(run(p.parse_args()))
