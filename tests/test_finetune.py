"""Fine-tuning: the head and loss pieces in-process, and one tiny fine-tune through the real DeepSpeed loop that must
overfit its few training clips (subprocess, as on the cluster)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from a2v_het.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "synthetic_finetune.yaml"


def _np_focal(logits, targets, alpha, gamma):
    p = 1 / (1 + np.exp(-logits))
    ce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    p_t = p * targets + (1 - p) * (1 - targets)
    a_t = alpha * targets + (1 - alpha) * (1 - targets)
    return a_t * (1 - p_t) ** gamma * ce


def test_focal_loss_matches_numpy():
    from a2v_het.model.classifier import sigmoid_focal_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 7, 3))
    targets = (rng.random((4, 7, 3)) > 0.7).astype(np.float64)
    got = sigmoid_focal_loss(torch.tensor(logits), torch.tensor(targets), 0.25, 2.0).numpy()
    np.testing.assert_allclose(got, _np_focal(logits, targets, 0.25, 2.0), rtol=1e-5, atol=1e-7)
    # gamma 0, alpha < 0 = plain BCE
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(targets),
                                                               reduction="none")
    np.testing.assert_allclose(sigmoid_focal_loss(torch.tensor(logits), torch.tensor(targets), -1, 0.0).numpy(),
                               bce.numpy(), rtol=1e-5)


FT_RECIPES = sorted((ROOT / "recipes").glob("*_finetune.yaml"))


def test_there_are_finetune_recipes():
    assert {p.name for p in FT_RECIPES} >= {"synthetic_finetune.yaml", "meerkat_finetune.yaml"}


@pytest.mark.parametrize("recipe", FT_RECIPES, ids=lambda p: p.name)
def test_recipes_load(recipe):
    from a2v_het.train.finetune import FinetuneConfig

    cfg = load_config(FinetuneConfig, str(recipe))
    cfg.validate()
    assert cfg.finetune.loss == "focal"


def _tiny_cfg(*extra):
    from a2v_het.train.finetune import FinetuneConfig

    return load_config(FinetuneConfig, str(RECIPE), ["finetune.classes=[tone,up_sweep]", *extra])


def test_objective_masks_padding_and_unlabelled_clips_and_warmup_groups():
    from a2v_het.train.finetune import FinetuneObjective

    torch.manual_seed(0)
    obj = FinetuneObjective(_tiny_cfg("finetune.warmup_classifier_steps=5", "finetune.freeze_frontend=true"))
    obj.eval()
    sr = 8000
    wave = torch.randn(2, sr) * 0.1
    lengths = torch.tensor([sr, sr // 2])
    ev = [[{"onset_s": 0.1, "offset_s": 0.3, "label": "tone"}], [{"onset_s": 0.1, "offset_s": 0.2, "label": "x"}]]
    loss_both, logs = obj(wave, torch.full((2,), sr), lengths, 0, events=ev, labelled=[True, True])
    loss_one, _ = obj(wave[:1], torch.full((1,), sr), lengths[:1], 0, events=ev[:1], labelled=[True])
    # clip 1 unlabelled: the loss is clip 0's alone
    loss_masked, _ = obj(wave, torch.full((2,), sr), lengths, 0, events=ev, labelled=[True, False])
    assert float(loss_masked.detach()) == pytest.approx(float(loss_one.detach()), rel=1e-5)
    assert float(loss_both.detach()) != pytest.approx(float(loss_one.detach()), rel=1e-3)
    assert float(logs["tokens"]) == 50 + 25  # padding of the half-length clip is not counted
    # groups: frozen frontend left out; backbone lr scaled to 0 during the classifier warm-up
    groups = obj.param_groups(0.01)
    names = {id(p): g["name"] for g in groups for p in g["params"]}
    assert all(names[id(p)] == "head" for p in obj.detector.head.parameters())
    assert not any(id(p) in names for p in obj.detector.frontend.parameters())
    bb = next(g for g in groups if g["name"] == "backbone")
    head = next(g for g in groups if g["name"] == "head")
    assert obj.lr_scale(bb, 4) == 0.0 and obj.lr_scale(bb, 5) == 1.0 and obj.lr_scale(head, 0) == 1.0


def test_head_reads_the_encoders_final_norm():
    """K = 1: the head's features are the encoder's final output (LayerNorm of the residual stream), not the last
    block's un-normalised FFN output; K > 1: the final norm of the mean of the top-K residual streams."""
    from a2v_het.train.finetune import FinetuneObjective

    torch.manual_seed(0)
    sr = 8000
    wave, lengths = torch.randn(2, sr) * 0.1, torch.tensor([sr, sr // 2])
    rates = torch.full((2,), sr)
    det = FinetuneObjective(_tiny_cfg("finetune.top_k=1")).eval().detector
    with torch.no_grad():
        feats, pad = det.features(wave, rates, lengths)
        tokens, padding_mask, _ = det.backbone.tokens(wave, rates, lengths)
        final, layers = det.encoder(det.encoder.add_position(tokens, padding_mask), padding_mask)
    assert torch.equal(feats, final)
    valid = ~pad
    # normalised per token: mean ~0, var ~1 over channels (the FFN output is nowhere near)
    assert feats[valid].mean(-1).abs().max() < 1e-4 and (feats[valid].var(-1, correction=0) - 1).abs().max() < 1e-2
    det3 = FinetuneObjective(_tiny_cfg("finetune.top_k=2")).eval().detector
    with torch.no_grad():
        feats3, _ = det3.features(wave, rates, lengths)
        tokens, padding_mask, _ = det3.backbone.tokens(wave, rates, lengths)
        _, streams = det3.encoder(det3.encoder.add_position(tokens, padding_mask), padding_mask, outputs="residual")
    assert torch.allclose(feats3, det3.encoder.norm((streams[-1] + streams[-2]) / 2), atol=1e-6)


def test_classifier_warmup_runs_no_backward_through_the_backbone():
    """Warm-up steps: only the head gets gradients (nothing of the backbone's enters the global clip norm and no
    backward pass runs through it); after the warm-up, the backbone does."""
    from a2v_het.train.finetune import FinetuneObjective

    torch.manual_seed(0)
    obj = FinetuneObjective(_tiny_cfg("finetune.warmup_classifier_steps=3")).train()
    sr = 8000
    args = (torch.randn(2, sr) * 0.1, torch.full((2,), sr), torch.tensor([sr, sr]))
    ev = [[{"onset_s": 0.1, "offset_s": 0.3, "label": "tone"}], []]
    loss, _ = obj(*args, 2, events=ev, labelled=[True, True])
    loss.backward()
    assert all(p.grad is not None for p in obj.detector.head.parameters())
    assert all(p.grad is None for p in obj.detector.backbone_parameters())
    obj.zero_grad(set_to_none=True)
    loss, _ = obj(*args, 3, events=ev, labelled=[True, True])
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in obj.detector.encoder.parameters())


def test_mixup_targets_are_soft():
    from a2v_het.train.finetune import FinetuneObjective, mix_targets

    y = torch.zeros(2, 3, 1)
    y[0] = 1.0
    mixed = mix_targets(y, torch.tensor([1, 0]), torch.tensor([0.7, 0.6]))
    assert torch.allclose(mixed[:, 0, 0], torch.tensor([0.7, 0.4]))
    assert torch.equal(mix_targets(y, torch.tensor([0, 1]), torch.tensor([1.0, 1.0])), y)
    # through forward: clip 0 is a call over its whole length, clip 1 has none (same rate, so they are paired);
    # a union would make every frame of both clips fully positive (pos_frac = 1 / C). Soft targets give clip 0 its
    # share r0 and clip 1 its partner's share 1 - r1, with r ~ U(0.5, 1): pos_frac = (r0 + 1 - r1) / 2 / C, in
    # [0.25 / C, 0.75 / C] whatever the draws (which follow the model's initialisation)
    torch.manual_seed(0)
    obj = FinetuneObjective(_tiny_cfg("finetune.bc_mixup=true")).train()
    sr = 8000
    ev = [[{"onset_s": 0.0, "offset_s": 1.0, "label": "tone"}], []]
    _, logs = obj(torch.randn(2, sr) * 0.1, torch.full((2,), sr), torch.tensor([sr, sr]), 0, events=ev,
                  labelled=[True, True])
    c = len(obj.classes)
    assert 0.25 / c - 1e-6 <= float(logs["pos_frac"]) <= 0.75 / c + 1e-6


def test_load_pretrained_is_strict_about_the_backbone(tmp_path):
    from safetensors.torch import save_file

    from a2v_het.frontend import build_frontend
    from a2v_het.model.classifier import CallDetector
    from a2v_het.model.data2vec import Data2VecModel

    cfg = _tiny_cfg()
    torch.manual_seed(1)
    pre = Data2VecModel(cfg.model, build_frontend(cfg.frontend))
    state = {k: v.detach().contiguous() for k, v in pre.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    det = CallDetector(cfg.model, cfg.frontend, 2, top_k=2)
    report = det.load_pretrained(tmp_path, verbose=False)
    assert report["new"] == ["head.bias", "head.weight"]
    assert any(k.startswith("decoder.") for k in report["ignored"])
    for k, v in det.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, state[k]), k
    del state[next(k for k in state if k.startswith("encoder."))]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 backbone"):
        det.load_pretrained(tmp_path, verbose=False)


@pytest.mark.slow
def test_tiny_finetune_overfits_through_the_deepspeed_loop(tmp_path):
    from data_tools.synth import write_synth_shards

    write_synth_shards(tmp_path / "synth", "basic", 8, [8000], 1.0, seed=3, split="train")
    run_dir = tmp_path / "run"
    args = [str(RECIPE), f"data.shards={tmp_path / 'synth'}", f"train.run_dir={run_dir}", "data.duration_s=1.0",
            "data.batch_size=8", "data.num_workers=0", "data.samples_per_epoch=8", "data.synthesize_if_missing=false",
            "logging.wandb=disabled", "train.max_steps=80", "train.log_every=5", "train.save_every=3", "train.keep_last=40",
            "optim.warmup_steps=5", "optim.lr=3e-3", "finetune.loss=bce", "finetune.dropout=0.0",
            "finetune.top_k=3", "finetune.val_split=train", "finetune.test_split=none", "finetune.eval_plots=2",
            "finetune.warmup_classifier_steps=3", "finetune.classes=[tone,up_sweep,noise_burst]"]
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2",
               PYTHONPATH=str(ROOT))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-m", "a2v_het.train.finetune", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < 0.2 * losses[0], losses
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["classes"] == ["tone", "up_sweep", "noise_burst"]
    assert report["test"] is None and report["val"]["clips"] == 8
    assert report["val"]["frame_map"] > 0.8, report["val"]["frame_ap"]
    assert (run_dir / "eval.md").is_file()
    assert (run_dir / "plots" / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "checkpoints" / "step_00000080" / "model.safetensors").is_file()
    # classifier-only warm-up (3 steps): the backbone is still the initial one at step 3, the head moved
    import yaml
    from safetensors.torch import load_file

    from a2v_het.config import config_from_dict
    from a2v_het.train.finetune import FinetuneConfig
    from a2v_het.train.objective import build_objective

    cfg = config_from_dict(FinetuneConfig, yaml.safe_load((run_dir / "config.yaml").read_text()))
    torch.manual_seed(cfg.train.seed)  # as the loop does before building the objective
    init = build_objective(cfg).state_dict()
    at3 = load_file(str(run_dir / "checkpoints" / "step_00000003" / "model.safetensors"))
    assert all(torch.equal(init[k], at3[k]) for k in at3 if not k.startswith("head.")), "backbone moved in warm-up"
    assert not torch.equal(init["head.weight"], at3["head.weight"])
    at6 = load_file(str(run_dir / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert any(not torch.equal(at3[k], at6[k]) for k in at3 if k.startswith("encoder."))
    # the evaluate command reads the run folder
    ev = subprocess.run([sys.executable, "-c", "import sys, argparse; from a2v_het.eval import evaluate as e;"
                         "p = argparse.ArgumentParser(); e.add_args(p); sys.exit(e.run(p.parse_args()))",
                         "--checkpoint", str(run_dir), "--data", str(tmp_path / "synth"), "--split", "train",
                         "--val-split", "train", "--json"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    out = json.loads(ev.stdout)
    assert out["test"]["clips"] == 8 and out["test"]["frame_map"] == pytest.approx(report["val"]["frame_map"])
