"""The frontend-only objective (train.objective=coverage)."""

import numpy as np
import torch

from a2v_het.frontend import FrontendConfig, HeterodyneConfig, build_frontend
from a2v_het.train.objective import CoverageObjective


def test_coverage_objective_is_the_weighted_terms_and_trains_only_the_picker():
    torch.manual_seed(0)
    h = HeterodyneConfig(energy_weight=2.0, surprise_weight=0.5)  # the frontend holds its losses' weights
    objective = CoverageObjective(build_frontend(FrontendConfig(dim=32, heterodyne=h)))
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



def test_every_objective_implements_the_loops_contract():
    """The loop asks an objective only for the members of train.objective.Objective; all three implement them."""
    from pathlib import Path

    from a2v_het.config import load_config
    from a2v_het.recipe import FinetuneConfig, PretrainConfig
    from a2v_het.train.objective import Objective, build_objective

    tiny = ["model.embed_dim=32", "model.depth=2", "model.num_heads=2", "model.decoder_dim=16",
            "model.average_top_k_layers=2", "frontend.dim=32"]
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "synthetic_finetune.yaml"
    data2vec = build_objective(load_config(PretrainConfig, None, tiny))
    logmel = build_objective(load_config(PretrainConfig, None, tiny + ["frontend.name=logmel"]))
    coverage = build_objective(load_config(PretrainConfig, None, tiny + ["train.objective=coverage"]))
    finetune = build_objective(load_config(FinetuneConfig, str(recipe), tiny + ["finetune.classes=[tone]"]))
    batch = {"events": [[]], "labelled": [True]}
    for obj in (data2vec, logmel, coverage, finetune):
        assert isinstance(obj, Objective), type(obj).__name__
        assert obj.lr_scale({"name": "head"}, 0) == 1.0
        assert obj.batch_inputs(batch, torch.device("cpu")) == (batch if obj is finetune else {})
    assert [o.has_teacher for o in (data2vec, logmel, coverage, finetune)] == [True, True, False, False]
    assert data2vec.coverage_frontend is data2vec.frontend and coverage.coverage_frontend is coverage.frontend
    assert logmel.coverage_frontend is None  # no bands: the loop reports no coverage
