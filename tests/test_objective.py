"""The frontend-only objective (train.objective=coverage)."""

import numpy as np
import torch

from a2v_het.frontend import FrontendConfig, build_frontend
from a2v_het.train.objective import CoverageObjective


def test_coverage_objective_is_the_weighted_terms_and_trains_only_the_picker():
    torch.manual_seed(0)
    objective = CoverageObjective(build_frontend(FrontendConfig(dim=32)), lambda_energy=2.0, lambda_surprise=0.5)
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    wave = torch.tensor(np.stack([0.01 * rng.standard_normal(16000) + (np.sin(2 * np.pi * 3 * t) > 0) *
                                  np.sin(2 * np.pi * f * t) for f in (900.0, 5100.0)]), dtype=torch.float32)
    loss, logs = objective(wave, torch.tensor([16000, 16000]), torch.tensor([16000, 16000]))
    assert torch.allclose(loss.detach(), 2.0 * logs["loss_energy"] + 0.5 * logs["loss_surprise"])
    loss.backward()
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("frontend.picker.") for n in trainable)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters() if p.requires_grad)
    assert {n for n, p in objective.named_parameters() if p.grad is not None} <= trainable
