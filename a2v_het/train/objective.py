"""What the training loop optimises: the full data2vec model, or the frontend alone on its coverage losses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2v_het.data.augment import rate_augment
from a2v_het.frontend import Frontend, build_frontend
from a2v_het.model.data2vec import Data2VecModel
from a2v_het.model.param_groups import weight_decay_groups
from a2v_het.recipe import FinetuneConfig, PretrainConfig
from a2v_het.train.finetune import build_finetune_objective


class CoverageObjective(nn.Module):
    """Frontend-only training: lambda_energy * L_energy + lambda_surprise * L_surprise. Only the hypernetwork
    receives gradients, so the heterodyning and projection are skipped (``analyze`` stops before them)."""

    def __init__(self, frontend: Frontend, lambda_energy: float, lambda_surprise: float):
        super().__init__()
        self.frontend = frontend
        # Only the hypernetwork is trained here; frozen parts keep DeepSpeed from waiting for gradients that the
        # coverage losses never produce.
        for name, p in frontend.named_parameters():
            p.requires_grad_(name.startswith("picker."))
        self.lambda_energy = lambda_energy
        self.lambda_surprise = lambda_surprise

    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0) -> tuple[Tensor, dict]:
        h = self.frontend.h
        if self.training and h.rate_augment_prob > 0:
            wave, sample_rate, lengths = rate_augment(wave, sample_rate, lengths, h.rate_augment_prob,
                                                      h.max_sample_rate)
        analysis = self.frontend.analyze(wave, sample_rate, lengths)
        aux, stats = self.frontend.coverage_losses(analysis)
        loss = self.lambda_energy * aux["energy"] + self.lambda_surprise * aux["surprise"]
        logs = {"loss": loss.detach(), "loss_energy": aux["energy"].detach(), "loss_surprise": aux["surprise"].detach()}
        logs.update({k: v.detach() for k, v in stats.items()})
        return loss, logs

    def param_groups(self, weight_decay: float) -> list[dict]:
        return weight_decay_groups(self.parameters(), weight_decay)

    def ema_step(self, step: int) -> float:
        return 0.0  # no teacher

    def check_collapse(self, logs: dict, step: int) -> None:
        return None


def build_objective(cfg: PretrainConfig) -> nn.Module:
    """The loop's objective for ``cfg``: the fine-tune detector for a FinetuneConfig, else ``train.objective``."""
    if isinstance(cfg, FinetuneConfig):
        return build_finetune_objective(cfg)
    frontend = build_frontend(cfg.frontend)
    if cfg.train.objective == "coverage":
        return CoverageObjective(frontend, cfg.model.lambda_energy, cfg.model.lambda_surprise)
    return Data2VecModel(cfg.model, frontend)


def has_teacher(objective: nn.Module) -> bool:
    return hasattr(objective, "teacher_state_dict")


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}
