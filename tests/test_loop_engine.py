"""The loop's pieces around the real DeepSpeed engine (CPU accelerator, gloo): bf16 autocast really on inside the
engine's forward, a skipped optimizer step moving neither the teacher nor the step counter, the collapse guard
deciding the same on every rank, GPU RNG states that restore with fewer GPUs. Engine checks run in spawned
processes so the process group never leaks into other tests."""

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from a2v_het.frontend import FrontendConfig, HeterodyneConfig
from a2v_het.model.config import ModelConfig
from a2v_het.train.config import DataConfig, OptimConfig, PretrainConfig, TrainConfig
from a2v_het.train.distributed import DistEnv

TINY = ModelConfig(embed_dim=32, depth=2, num_heads=2, decoder_dim=16, decoder_groups=4, clone_batch=2,
                   average_top_k_layers=2, pos_conv_groups=4, pos_conv_depth=2, pos_conv_kernel=5,
                   decoder_layers=2, collapse_check_after=0)


def _cfg(precision: str, zero_stage: int = 2) -> PretrainConfig:
    return PretrainConfig(data=DataConfig(batch_size=2), model=TINY,
                          frontend=FrontendConfig(dim=32, heterodyne=HeterodyneConfig(num_bands=2)),
                          optim=OptimConfig(lr=1e-3, warmup_steps=1),
                          train=TrainConfig(precision=precision, zero_stage=zero_stage))


def _batch():
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(2, 8000, generator=g)
    return wave, torch.tensor([8000, 8000]), torch.tensor([8000, 6000])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from a2v_het.train.distributed import init_distributed

    init_distributed(DistEnv(rank, world, rank, "127.0.0.1", port, "torchrun"))


def _engine_worker(rank: int, port: int, out: str) -> None:
    from a2v_het.train.loop import build_engine, finish_optimizer_step
    from a2v_het.train.objective import build_objective

    _init(rank, 1, port)
    result = {}
    # 1. bf16: what the encoder sees inside engine(...). The call is wrapped in an autocast that is switched *off*,
    #    which is what DeepSpeed's forward wrapper does on a GPU when its torch_autocast section is off (on a CPU
    #    accelerator it leaves autocast alone, so without this the test could not see the GPU behaviour).
    torch.manual_seed(0)
    cfg = _cfg("bf16")
    objective = build_objective(cfg)
    engine, _ = build_engine(cfg, objective, 1, "bf16", torch.device("cpu"))
    seen = {}

    def probe(module, args, output):
        seen.update(enabled=torch.is_autocast_enabled("cpu"), dtype=str(output[0].dtype))

    objective.encoder.blocks[0].register_forward_hook(probe)
    with torch.autocast("cpu", enabled=False):
        loss, _ = engine(*_batch(), 0)
    result["bf16"] = dict(seen, loss_dtype=str(loss.dtype))

    # 2. A non-finite gradient under ZeRO-2: DeepSpeed skips the step; the teacher and the step counter stay.
    torch.manual_seed(0)
    cfg = _cfg("fp32", zero_stage=2)
    objective = build_objective(cfg)
    engine, _ = build_engine(cfg, objective, 1, "fp32", torch.device("cpu"))
    teacher = {k: v.clone() for k, v in objective.teacher_state_dict().items()}
    student = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    loss, _ = engine(*_batch(), 0)
    engine.backward(loss * float("nan"))
    engine.step()
    step, ema = finish_optimizer_step(engine, objective, 0)
    result["skipped"] = {
        "step": step, "ema": ema,
        "teacher_same": all(torch.equal(v, objective.teacher_state_dict()[k]) for k, v in teacher.items()),
        "student_same": all(torch.equal(v, objective.state_dict()[k]) for k, v in student.items())}
    loss, _ = engine(*_batch(), 0)
    engine.backward(loss)
    engine.step()
    step, ema = finish_optimizer_step(engine, objective, 0)
    result["applied"] = {
        "step": step, "ema": ema,
        "teacher_same": all(torch.equal(v, objective.teacher_state_dict()[k]) for k, v in teacher.items())}

    # 3. Fine-tuning warm-up under ZeRO-2: the backbone produces no gradients (no autograd through it); DeepSpeed
    #    must still step the head, and the backbone must stay where it was.
    from a2v_het.config import load_config
    from a2v_het.train.finetune import FinetuneConfig

    torch.manual_seed(0)
    ft = load_config(FinetuneConfig, str(Path(__file__).resolve().parents[1] / "recipes" / "synthetic_finetune.yaml"),
                     ["finetune.classes=[tone]", "finetune.warmup_classifier_steps=2", "train.zero_stage=2",
                      "data.batch_size=2", "model.embed_dim=32", "model.depth=2", "model.num_heads=2",
                      "model.decoder_dim=16", "model.average_top_k_layers=2", "frontend.dim=32"])
    objective = build_objective(ft)
    engine, optimizer = build_engine(ft, objective, 1, "fp32", torch.device("cpu"))
    for group in optimizer.param_groups:  # as the loop does: the backbone's lr is 0 in the warm-up
        group["lr"] = 1e-3 * objective.lr_scale(group, 0)
    before = {k: v.detach().clone() for k, v in objective.state_dict().items()}
    wave, rates, lengths = _batch()
    events = [[{"onset_s": 0.1, "offset_s": 0.4, "label": "tone"}], []]
    loss, _ = engine(wave, rates, lengths, 0, events=events, labelled=[True, True])
    engine.backward(loss)
    engine.step()
    after = objective.state_dict()
    result["warmup"] = {
        "applied": engine.was_step_applied(),
        "backbone_same": all(torch.equal(v, after[k]) for k, v in before.items() if not k.startswith("head.")),
        "head_moved": not torch.equal(before["head.weight"], after["head.weight"])}
    Path(out).write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def engine_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("engine") / "result.json"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mp.spawn(_engine_worker, args=(_free_port(), str(out)), nprocs=1, join=True)
    return json.loads(out.read_text())


def test_bf16_autocast_is_on_inside_the_engines_forward(engine_result):
    r = engine_result["bf16"]
    assert r["enabled"] and r["dtype"] == "torch.bfloat16", r
    assert r["loss_dtype"] == "torch.float32"  # the losses stay fp32 islands


def test_a_skipped_step_moves_neither_the_teacher_nor_the_step(engine_result):
    r = engine_result["skipped"]
    assert r == {"step": 0, "ema": None, "teacher_same": True, "student_same": True}, r
    r = engine_result["applied"]
    assert r["step"] == 1 and r["ema"] is not None and not r["teacher_same"], r


def test_classifier_warmup_steps_the_head_alone_under_zero2(engine_result):
    assert engine_result["warmup"] == {"applied": True, "backbone_same": True, "head_moved": True}


def _collapse_worker(rank: int, port: int, out: str, target_var: list) -> None:
    from a2v_het.frontend import build_frontend
    from a2v_het.model.data2vec import Data2VecModel, TrainingCollapsed

    _init(rank, 2, port)
    model = Data2VecModel(dataclasses.replace(TINY, collapse_min_target_var=0.1),
                          build_frontend(FrontendConfig(dim=32)))
    try:
        model.check_collapse({"target_var": torch.tensor(target_var[rank]), "pred_var": torch.tensor(1.0)}, 10)
        decision = "ok"
    except TrainingCollapsed:
        decision = "raised"
    Path(f"{out}.{rank}").write_text(decision)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("target_var, want", [([0.0, 0.0], "raised"), ([0.0, 0.05], "raised"),
                                              ([0.0, 1.0], "ok"), ([float("nan"), 1.0], "raised")])
def test_collapse_guard_decides_the_same_on_every_rank(tmp_path, target_var, want):
    """Rank 0 alone collapsed: on its own statistics it would raise while rank 1 goes on into the next collective
    (a hang until the NCCL timeout). Both ranks decide on the mean over ranks."""
    out = str(tmp_path / "decision")
    mp.spawn(_collapse_worker, args=(_free_port(), out, target_var), nprocs=2, join=True)
    assert [Path(f"{out}.{r}").read_text() for r in range(2)] == [want, want]


def test_gpu_rng_state_restores_with_fewer_gpus_than_saved():
    """Checkpoints used to hold every visible GPU's state; a requeued task that sees one GPU picks its own (or the
    first) instead of failing on set_rng_state_all; the current format holds the one device's state."""
    from a2v_het.train.loop import _rng_state, device_rng_state

    states = [torch.full((8,), i, dtype=torch.uint8) for i in range(4)]
    assert torch.equal(device_rng_state(states, 0), states[0])
    assert torch.equal(device_rng_state(states, 2), states[2])
    assert torch.equal(device_rng_state(states[:1], 3), states[0])  # fewer saved than this device's index
    assert device_rng_state([], 0) is None and device_rng_state(None, 0) is None
    assert torch.equal(device_rng_state(states[1], 0), states[1])
    saved = _rng_state()["cuda"]
    assert saved is None or isinstance(saved, torch.Tensor)  # never a list over devices
