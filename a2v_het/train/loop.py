"""The training loop: one DeepSpeed engine from a one-process CPU smoke run to multi-node GPU jobs.

Read top to bottom: set up the process group, build the objective and the engine, resume from ``latest`` if the
run folder has one, then step: forward, backward, optimizer step at the accumulation boundary, EMA update, log,
evaluate, checkpoint. A SIGUSR2 (SLURM's warning before preemption/time-out) or SIGTERM sets a flag that all ranks
agree on at the next step; they then save together and exit.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from a2v_het.atomic import atomic_write_text
from a2v_het.config import ConfigError, config_to_dict, load_config, save_config
from a2v_het.data.stream import make_train_loader
from a2v_het.eval.coverage import coverage_report, format_table
from a2v_het.model.mixup import bc_mixup
from a2v_het.runs import checkpoint_root, latest_tag, load_weights
from a2v_het.train import preemption
from a2v_het.train.checkpoint import save_checkpoint
from a2v_het.train.config import PretrainConfig
from a2v_het.train.distributed import DistEnv, default_to_cpu_accelerator, dist_env_from, init_distributed
from a2v_het.train.logger import MetricsLogger
from a2v_het.train.objective import Objective, build_objective
from a2v_het.train.schedule import cosine_with_warmup

# DeepSpeed skips an optimizer step whose gradient norm is not finite (ZeRO-1/2). A few skips are survivable; this
# many in a row means the weights or the data are broken, and going on would only burn the allocation.
MAX_CONSECUTIVE_SKIPPED_STEPS = 50


def ensure_shards(cfg: PretrainConfig, is_main: bool) -> None:  # noqa: ARG001 (the callers pass their rank role)
    """Fail clearly when the training shards are missing (every rank, after a barrier when the group is up).

    The loop writes no data. The synthetic shards a recipe names (``data.synthesize_if_missing``) are made before it
    starts by the CLI's data step (:func:`data_tools.synth.ensure_synth_shards`, run by ``a2v-het pretrain``,
    ``finetune`` and ``launch``)."""
    train_dir = Path(cfg.data.shards)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    if not (train_dir / "manifest.json").is_file():
        where = f"data.shards={str(train_dir)!r}"
        if cfg.data.synthesize_if_missing:
            raise FileNotFoundError(
                f"no manifest.json in {where}; with data.synthesize_if_missing=true the CLI (`a2v-het pretrain`, "
                "`finetune`, `launch`) writes the synthetic shards before training starts, the loop on its own does "
                f"not: run the recipe through the CLI or make them with `python -m data_tools synth {train_dir}`")
        raise FileNotFoundError(
            f"no manifest.json in {where}; make shards with `python -m data_tools shard IN_DIR {train_dir}` "
            f"(recordings) or `python -m data_tools synth {train_dir}` (synthetic), or set "
            "data.synthesize_if_missing=true to have `a2v-het pretrain` write synthetic ones before training")


def eval_shards(cfg: PretrainConfig) -> str:
    """The eval split lives beside the training shards (``<shards>-eval``) unless the training folder has it."""
    train_dir = Path(cfg.data.shards)
    manifest = train_dir / "manifest.json"
    if manifest.is_file():
        if cfg.data.eval_split in json.loads(manifest.read_text()).get("splits", {}):
            return str(train_dir)
    return str(train_dir) + "-eval"


def resolve_precision(cfg: PretrainConfig) -> str:
    if cfg.train.precision != "auto":
        if cfg.train.precision == "bf16" and not torch.cuda.is_available():
            return "bf16"  # CPU autocast supports bf16 too; used by the numerics tests
        return cfg.train.precision
    return "bf16" if torch.cuda.is_available() else "fp32"


def deepspeed_config(cfg: PretrainConfig, world_size: int) -> dict:
    # Mixed precision is torch autocast inside the module's forward with fp32 weights (autocast_inside), not
    # DeepSpeed's bf16 mode: the frontend's spectral statistics and the losses run in fp32 islands that need fp32
    # weights next to them. DeepSpeed's own `torch_autocast` section stays off: it would also mark Linear/Conv
    # gradients for bf16 all-reduce, a numerics change of its own.
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.optim.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.optim.grad_accum * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def autocast_inside(module: torch.nn.Module, device_type: str, dtype: torch.dtype) -> torch.nn.Module:
    """Make ``module``'s own forward run under ``torch.autocast(device_type, dtype)``; returns the module.

    An autocast opened around ``engine(...)`` does not survive: DeepSpeed's forward wrapper
    (``runtime/torch_autocast.py: autocast_if_enabled``) switches autocast *off* around the module call whenever
    its own ``torch_autocast`` section is off and CUDA autocast is on, so a GPU run would silently train in fp32.
    Entered inside the module's forward, autocast is on whatever the wrapper did. The parameter names (and so the
    checkpoints and exports) are unchanged: only the instance's ``forward`` attribute is replaced.
    """
    inner = module.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        with torch.autocast(device_type=device_type, dtype=dtype):
            return inner(*args, **kwargs)

    module.forward = forward
    return module


def build_engine(cfg: PretrainConfig, objective: torch.nn.Module, world_size: int, precision: str,
                 device: torch.device):
    """The objective (already on ``device``) -> (DeepSpeed engine, its optimizer). Client AdamW with the
    objective's parameter groups; bf16 means autocast inside the objective's forward (:func:`autocast_inside`)."""
    if precision == "bf16":
        autocast_inside(objective, device.type, torch.bfloat16)
    optimizer = torch.optim.AdamW(objective.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr,
                                  betas=cfg.optim.betas, eps=cfg.optim.eps)
    import deepspeed  # lazy: DS_ACCELERATOR must be decided before DeepSpeed is first imported

    engine, optimizer, _, _ = deepspeed.initialize(model=objective, optimizer=optimizer,
                                                   config=deepspeed_config(cfg, world_size))
    # DeepSpeed's own loader unpickles (weights_only=False); ours accepts tensors and plain containers only.
    engine.checkpoint_engine.load = _load_weights_only
    return engine, optimizer


def finish_optimizer_step(engine, objective, step: int) -> tuple[int, float | None]:
    """After ``engine.step()`` at an accumulation boundary: (next step, EMA decay used) when the optimizer really
    stepped; (``step``, None) when DeepSpeed skipped it (non-finite gradient norm under ZeRO-1/2). A skipped step
    moves neither the teacher nor the step counter, so the LR and EMA schedules stay aligned with the updates that
    happened. DeepSpeed all-reduces the overflow flag, so every rank takes the same branch."""
    if not engine.was_step_applied():
        return step, None
    return step + 1, objective.ema_step(step)


def _rng_state() -> dict:
    # Plain lists/tensors only, so the checkpoint loads with torch.load(weights_only=True). Only the current GPU's
    # state: the one this rank draws from. All visible GPUs' states would not restore when a requeued job sees
    # fewer of them (one GPU per task under SLURM binding).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def device_rng_state(saved, device_index: int) -> torch.Tensor | None:
    """The saved GPU RNG state this rank should restore: ``saved`` is one state (this format), a list of every
    visible GPU's states (checkpoints written before: entry ``device_index`` if it exists, else the first), or
    None / [] (written on a CPU)."""
    if saved is None:
        return None
    if isinstance(saved, (list, tuple)):
        if not saved:
            return None
        return saved[device_index] if device_index < len(saved) else saved[0]
    return saved


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if torch.cuda.is_available():
        cuda = device_rng_state(state.get("cuda"), torch.cuda.current_device())
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)  # the current device only


def checkpoint_world_size(folder: Path) -> int | None:
    """How many data-parallel ranks wrote this DeepSpeed checkpoint: its count of ZeRO partition files
    (``*zero_pp_rank_<r>_mp_rank_00_optim_states.pt``, one per rank under ZeRO-1/2); None without them (ZeRO-0,
    whose optimizer state is not partitioned)."""
    ranks = {p.name.split("zero_pp_rank_")[1].split("_")[0] for p in Path(folder).glob("*zero_pp_rank_*optim_states.pt")}
    return len(ranks) or None


def check_resumable(cfg: PretrainConfig, run_dir: Path, world_size: int) -> None:
    """Stop before any work when ``latest`` cannot be resumed as asked: ZeRO-1/2 optimizer states are partitioned
    over the ranks that wrote them, and DeepSpeed cannot re-partition them for another world size (it fails deep
    inside its loader). Raises ConfigError saying what to do."""
    tag = latest_tag(run_dir)
    if tag is None or cfg.train.resume_weights_only:
        return
    saved = checkpoint_world_size(checkpoint_root(run_dir) / tag)
    if saved is not None and saved != world_size:
        raise ConfigError(
            f"{checkpoint_root(run_dir) / tag} was written by {saved} ranks with a ZeRO-partitioned optimizer state; "
            f"this job has {world_size}. Either run with {saved} ranks (e.g. `sbatch --nodes=... "
            f"--ntasks-per-node=... --gres=gpu:...` giving {saved} tasks), or pass train.resume_weights_only=true to "
            "continue from its weights, EMA teacher, step and data position with fresh AdamW moments, or convert it "
            "with DeepSpeed's `python -m deepspeed.checkpoint.ds_to_universal` and load that yourself.")


def pretrain(cfg: PretrainConfig, dist: DistEnv | None = None) -> Path:
    """Run (or resume) the recipe; returns the run folder."""
    cfg.validate()
    preemption.install_handlers()  # first: a USR2 during start-up stops the run at its first step, not the process
    dist = dist or dist_env_from()
    init_distributed(dist)
    run_dir = Path(cfg.train.run_dir).resolve()
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    ensure_shards(cfg, dist.is_main)
    check_resumable(cfg, run_dir, dist.world_size)

    seed = cfg.train.seed
    torch.manual_seed(seed)  # the same initial weights on every rank
    np.random.seed(seed + dist.rank)
    random.seed(seed + dist.rank)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision(cfg)

    objective: Objective = build_objective(cfg).to(device)  # FinetuneConfig -> a2v_het.train.finetune.FinetuneObjective
    engine, optimizer = build_engine(cfg, objective, dist.world_size, precision, device)
    lr_at = cosine_with_warmup(cfg.train.max_steps, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.final_lr_ratio)

    # ---- resume
    step, micro, run_id, resumes = 0, 0, None, 0
    torch.manual_seed(seed * 1_000_003 + dist.rank + 1)  # masks and dropout differ per rank; weights are built
    tag = latest_tag(run_dir)
    if tag is not None:
        weights_only = cfg.train.resume_weights_only
        _, client = engine.load_checkpoint(str(checkpoint_root(run_dir)), tag=tag, load_lr_scheduler_states=False,
                                           load_optimizer_states=not weights_only, load_module_only=weights_only)
        step, micro = int(client["step"]), int(client["micro_step"])
        run_id, resumes = client.get("wandb_run_id"), int(client.get("resumes", 0)) + 1
        if objective.has_teacher:
            objective.load_teacher_state_dict(load_weights(checkpoint_root(run_dir) / tag / "teacher.safetensors"))
        _set_rng_state(client["rng"][dist.rank] if dist.rank < len(client["rng"]) else client["rng"][0])
        if dist.is_main:
            print(f"[a2v-het] resumed from {tag} (step {step})", flush=True)

    logger = MetricsLogger(run_dir, cfg.logging, config_to_dict(cfg), run_id, enabled=dist.is_main)
    def epoch_loader(epoch: int):
        # One loader per epoch, seeded by the epoch: a resumed run rebuilds the same epoch and skips the batches it
        # already consumed (at most one epoch of decoding), so the data stream continues exactly.
        return make_train_loader(cfg.data.shards, cfg.data.batch_size, cfg.data.duration_s, cfg.data.num_workers,
                                 seed=seed * 1_000_003 + epoch, samples_per_epoch=cfg.data.samples_per_epoch,
                                 split=cfg.data.train_split, rank=dist.rank, world_size=dist.world_size,
                                 pin_memory=device.type == "cuda")  # pinned: the non_blocking copies overlap

    def checkpoint() -> None:
        client = {"step": step, "micro_step": micro, "wandb_run_id": logger.run_id, "resumes": resumes,
                  "rng": _gather_rng(dist)}
        extra = None
        if objective.has_teacher:
            extra = {"teacher": {k: v.detach().cpu().contiguous() for k, v in objective.teacher_state_dict().items()}}
        save_checkpoint(engine, objective, run_dir, step, client, cfg.train.keep_last, dist.is_main, extra)

    t_start, start_step = time.time(), step
    saved_step = step if tag is not None else None  # the step of the newest checkpoint this run has
    # The logs stay device tensors, summed on the device, and reach the host once per log step: a float() per key
    # and step would make the host wait for the device every step.
    t_log, audio_s, skipped, skipped_steps, consecutive_skips = time.time(), 0.0, 0, 0, 0
    sums: dict[str, torch.Tensor] = {}
    n_sums = 0
    done = step >= cfg.train.max_steps
    engine.train()
    loader = epoch_loader(0)
    while not done:
        epoch, skip = divmod(micro, loader.num_batches)
        loader = epoch_loader(epoch)
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            wave = batch["wave"].to(device, non_blocking=True)
            rates = batch["sample_rate"].to(device, non_blocking=True)
            lengths = batch["lengths"].to(device, non_blocking=True)
            if cfg.data.bc_mixup:
                wave, lengths, _, _ = bc_mixup(wave, lengths, rates, None)
            extra = objective.batch_inputs(batch, device)
            loss, logs = engine(wave, rates, lengths, step, **extra)  # bf16 autocast inside (build_engine)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            if boundary:
                for group in optimizer.param_groups:
                    group["lr"] = float(lr_at[min(step, len(lr_at) - 1)]) * objective.lr_scale(group, step)
            engine.step()
            micro += 1

            # From the CPU copies of the batch: no device sync.
            audio_s += float((batch["lengths"].double() / batch["sample_rate"].double()).sum())
            skipped += int(batch.get("num_skipped", 0))
            for k, v in logs.items():
                v = v.detach().float().reshape(())
                sums[k] = sums[k] + v if k in sums else v.clone()
            n_sums += 1
            if not boundary:
                continue

            step, ema = finish_optimizer_step(engine, objective, step)
            applied = ema is not None  # False: DeepSpeed skipped the update; the same step again with the next batch
            if applied:
                consecutive_skips = 0
            else:
                skipped_steps += 1
                consecutive_skips += 1
                if consecutive_skips >= MAX_CONSECUTIVE_SKIPPED_STEPS:
                    raise FloatingPointError(
                        f"{consecutive_skips} optimizer steps in a row skipped for a non-finite gradient norm at step "
                        f"{step}: the weights or the data are broken. Resume from an earlier checkpoint with a lower "
                        "optim.lr or a longer optim.warmup_steps, and check the data (a2v-het bench data).")

            if applied and (step % cfg.train.log_every == 0 or step == cfg.train.max_steps):
                dt = max(time.time() - t_log, 1e-9)
                keys = sorted(sums)
                means = torch.stack([sums[k] for k in keys]) / n_sums
                # The collapse guard reads the window's means, reduced over the ranks inside check_collapse, so all
                # ranks raise together (a rank raising alone would leave the others blocked in a collective).
                objective.check_collapse(dict(zip(keys, means)), step)
                metrics = dict(zip(keys, means.tolist()))  # the one device -> host copy of the window
                tokens = metrics.get("tokens", 0.0) * n_sums  # the window's total (per rank)
                metrics.update(lr=float(lr_at[min(step - 1, len(lr_at) - 1)]), ema_decay=ema,
                               audio_s_per_s=audio_s * dist.world_size / dt, skipped_samples=skipped,
                               skipped_steps=skipped_steps)
                if tokens:
                    metrics["tokens_per_s"] = tokens * dist.world_size / dt
                logger.log(step, metrics)
                t_log, audio_s, sums, n_sums = time.time(), 0.0, {}, 0

            if applied and dist.is_main and cfg.train.eval_every and step % cfg.train.eval_every == 0:
                evaluate_and_plot(objective.coverage_frontend, cfg, run_dir, step, logger, device)

            out_of_time = cfg.train.max_time_s > 0 and time.time() - t_start > cfg.train.max_time_s
            sliced = cfg.train.stop_after_steps > 0 and step - start_step >= cfg.train.stop_after_steps
            stop = _agree(preemption.stop_requested() or out_of_time or sliced, device)
            done = step >= cfg.train.max_steps
            # Never rewrite the checkpoint of this very step (a stop right after a skipped step has the same step):
            # decided from a counter every rank holds, not from the file system, so no rank can skip the
            # collective save the others enter.
            if (stop or done or (applied and step % cfg.train.save_every == 0)) and saved_step != step:
                checkpoint()
                saved_step = step
            if stop and not done:
                if dist.is_main:
                    print(f"[a2v-het] stopping at step {step} ({preemption.stop_reason()}); checkpoint saved",
                          flush=True)
                _record_rank_sync(objective, run_dir, dist)
                logger.close()
                preemption.requeue_if_preempted(dist.is_main)
                return run_dir
            if done:
                break

    _record_rank_sync(objective, run_dir, dist)
    if dist.is_main and cfg.train.eval_every:
        evaluate_and_plot(objective.coverage_frontend, cfg, run_dir, step, logger, device, final=True)
    logger.close()
    return run_dir


def _deepspeed_safe_globals() -> list:
    """The few plain DeepSpeed classes its ZeRO optimizer states pickle (loss-scaler settings, stage enum)."""
    # lazy: DeepSpeed is imported only after DS_ACCELERATOR is decided (see build_engine)
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum  # lazy: as above
    from deepspeed.utils.tensor_fragment import fragment_address  # lazy: as above

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def _load_weights_only(path, map_location=None):
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def _agree(flag: bool, device: torch.device) -> bool:
    """All ranks stop together: one rank's signal is every rank's signal."""
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _record_rank_sync(objective, run_dir: Path, dist: DistEnv) -> None:
    """Every rank hashes its weights; rank 0 writes them to rank_sync.json (they must all be equal)."""
    digest = hashlib.sha256()
    for name, p in sorted(objective.state_dict().items()):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    digests = [digest.hexdigest()]
    if dist.world_size > 1:
        digests = [None] * dist.world_size
        torch.distributed.all_gather_object(digests, digest.hexdigest())
    if dist.is_main:
        atomic_write_text(run_dir / "rank_sync.json", json.dumps({"param_sha256_by_rank": digests}, indent=2) + "\n")
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks diverged: parameter hashes {digests}")


def _gather_rng(dist: DistEnv) -> list:
    state = _rng_state()
    if dist.world_size == 1:
        return [state]
    out = [None] * dist.world_size
    torch.distributed.all_gather_object(out, state)
    return out


def evaluate_and_plot(frontend, cfg: PretrainConfig, run_dir: Path, step: int, logger: MetricsLogger,
                      device: torch.device, final: bool = False) -> None:
    """Coverage table on the eval split and a PNG of the chosen bands over spectrograms (rank 0); ``frontend`` is
    the objective's ``coverage_frontend`` (None: nothing to report)."""
    if frontend is None:
        return
    eval_dir = eval_shards(cfg)
    if not (Path(eval_dir) / "manifest.json").is_file():
        return
    max_batches = None if final else cfg.data.eval_batches
    was_training = frontend.training
    frontend.eval()
    plots = run_dir / "plots"
    report = coverage_report(frontend, eval_dir, cfg.data.eval_split, batch_size=cfg.data.batch_size,
                             max_batches=max_batches, device=device, plot_dir=plots, plot_tag=f"step_{step:08d}")
    frontend.train(was_training)
    summary = report["overall"]
    logger.log(step, {f"eval/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    for name, path in report.get("plots", {}).items():
        logger.log_image(step, f"eval/{name}", Path(path))
    if final:
        atomic_write_text(run_dir / "coverage.json", json.dumps(report, indent=2) + "\n")
        atomic_write_text(run_dir / "coverage.md", format_table(report) + "\n")
        print(format_table(report), flush=True)


def main_from_cli(recipe: str | None, overrides: list[str]) -> Path:
    default_to_cpu_accelerator()
    cfg = load_config(PretrainConfig, recipe, overrides)
    run_dir = pretrain(cfg)
    shutdown_distributed()
    return run_dir


def shutdown_distributed() -> None:
    """Tear the process group down while every rank is still alive: left to interpreter exit, gloo's threads can
    abort the process ("terminate called without an active exception") after the run has finished."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
