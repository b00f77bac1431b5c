"""What the training loop optimises, and what it asks of it.

:class:`Objective` is the loop's whole contract with an objective; three implement it: the data2vec model
(:class:`~a2v_het.model.data2vec.Data2VecModel`), the frontend alone on its coverage losses (:class:`CoverageObjective`)
and the call detector being fine-tuned (:class:`~a2v_het.train.finetune.FinetuneObjective`, which holds a
:class:`~a2v_het.model.classifier.CallDetector`; the detector and the data2vec model share the
:class:`~a2v_het.model.backbone.Backbone`). The loop calls these
members and nothing else (no ``hasattr`` dispatch, no test of the frontend's name); ``build_objective`` picks one.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from a2v_het.data.augment import rate_augment
from a2v_het.frontend import Frontend, build_frontend
from a2v_het.model.data2vec import Data2VecModel
from a2v_het.model.param_groups import weight_decay_groups
from a2v_het.recipe import FinetuneConfig, PretrainConfig
from a2v_het.train.finetune import build_finetune_objective


@runtime_checkable
class Objective(Protocol):
    """What the training loop (:func:`a2v_het.train.loop.pretrain`) needs of the ``nn.Module`` it trains."""

    has_teacher: bool
    """True: an EMA teacher outside the optimizer, saved as ``teacher.safetensors`` and restored on resume."""

    @property
    def coverage_frontend(self) -> Frontend | None:
        """The heterodyne frontend whose band coverage the loop evaluates and plots; None: nothing to report."""

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0, **batch_inputs
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """(B, T) waves, (B,) rates and lengths, the optimizer step, :meth:`batch_inputs` -> (loss, detached logs)."""

    def batch_inputs(self, batch: dict, device: torch.device) -> dict:
        """What ``forward`` needs from the loader's batch besides wave, sample rate and lengths."""

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups (:func:`a2v_het.model.param_groups.weight_decay_groups`)."""

    def lr_scale(self, group: dict, step: int) -> float:
        """Factor on the scheduled learning rate of ``group`` at ``step``."""

    def ema_step(self, step: int) -> float:
        """After an applied optimizer step: update the teacher; returns the decay used (0.0 without a teacher)."""

    def check_collapse(self, logs: dict[str, Tensor], step: int) -> None:
        """Raise (on every rank alike) when the window's mean logs show a collapsed run."""

    def teacher_state_dict(self) -> dict[str, Tensor]:
        """The teacher's weights to checkpoint (only called when ``has_teacher``)."""

    def load_teacher_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the teacher on resume (only called when ``has_teacher``)."""


class CoverageObjective(nn.Module):
    """Frontend-only training on the heterodyne frontend's weighted coverage losses
    (:meth:`~a2v_het.frontend.heterodyne_frontend.HeterodyneFrontend.coverage_loss`; the frontend's config holds
    the weights). Only the hypernetwork receives gradients, so the heterodyning and projection are skipped
    (``analyze`` stops before them)."""

    def __init__(self, frontend: Frontend):
        super().__init__()
        if getattr(frontend, "picker", True) is None:
            raise ValueError("train.objective=coverage trains the band picker, but frontend.heterodyne.band_picker "
                             "is 'uniform' (no picker to train); use band_picker: learned")
        self.frontend = frontend
        # Only the hypernetwork is trained here; frozen parts keep DeepSpeed from waiting for gradients that the
        # coverage losses never produce.
        for name, p in frontend.named_parameters():
            p.requires_grad_(name.startswith("picker."))

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0) -> tuple[Tensor, dict]:
        h = self.frontend.h
        if self.training and h.rate_augment_prob > 0:
            wave, sample_rate, lengths = rate_augment(wave, sample_rate, lengths, h.rate_augment_prob,
                                                      h.max_sample_rate)
        analysis = self.frontend.analyze(wave, sample_rate, lengths)
        aux, stats = self.frontend.coverage_losses(analysis)
        loss = self.frontend.coverage_loss(aux)
        logs = {"loss": loss.detach(), "loss_energy": aux["energy"].detach(), "loss_surprise": aux["surprise"].detach()}
        logs.update({k: v.detach() for k, v in stats.items()})
        return loss, logs

    # ---- the loop's contract (Objective)
    has_teacher = False

    @property
    def coverage_frontend(self) -> Frontend:
        return self.frontend  # always the heterodyne frontend (PretrainConfig.validate)

    def batch_inputs(self, batch: dict, device: torch.device) -> dict:
        return {}  # the waves, rates and lengths are all it reads

    def param_groups(self, weight_decay: float) -> list[dict]:
        return weight_decay_groups(self.parameters(), weight_decay)

    def lr_scale(self, group: dict, step: int) -> float:
        return 1.0  # one schedule for the picker

    def ema_step(self, step: int) -> float:
        return 0.0  # no teacher

    def check_collapse(self, logs: dict, step: int) -> None:
        return None  # no student-teacher pair to collapse

    def teacher_state_dict(self) -> dict[str, Tensor]:
        raise TypeError("the coverage objective has no teacher")

    def load_teacher_state_dict(self, state: dict[str, Tensor]) -> None:
        raise TypeError("the coverage objective has no teacher")


def build_objective(cfg: PretrainConfig | FinetuneConfig) -> Objective:
    """The loop's objective for ``cfg``: the fine-tune detector for a FinetuneConfig, else ``train.objective``."""
    if isinstance(cfg, FinetuneConfig):
        return build_finetune_objective(cfg)
    frontend = build_frontend(cfg.frontend)
    if cfg.train.objective == "coverage":
        return CoverageObjective(frontend)
    return Data2VecModel(cfg.model, frontend)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
