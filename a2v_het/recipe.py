"""The run configs: the pretraining recipe (one typed tree of defaults; YAML recipes in recipes/ hold overrides only)
and the fine-tuning recipe (the same run sections plus ``finetune``). Both are composed of the same section
dataclasses; neither is a subclass of the other, and ``validate_run_sections`` holds the checks they share.

Below train/ and eval/: the training loop runs them, and evaluation, coverage and inference read a run's
``config.yaml`` back into them without importing the training code. Which objective a config trains is decided in
:func:`a2v_het.train.objective.build_objective`, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from a2v_het.config import ConfigError
from a2v_het.data.sample_rates import TRAIN_SAMPLE_RATES, UNSEEN_SAMPLE_RATES
from a2v_het.frontend.config import FrontendConfig
from a2v_het.model.config import ModelConfig


@dataclass(frozen=True)
class DataConfig:
    shards: str = "data/synth-basic"
    """Folder with manifest.json and the WebDataset tar shards (see docs/shard-format.md)."""
    train_split: str = "train"
    eval_split: str = "val"
    duration_s: float = 3.0
    """Seconds of audio per clip (random crop), the same at every sample rate."""
    batch_size: int = 8
    """Clips per GPU (per process) and micro-step."""
    num_workers: int = 2
    samples_per_epoch: int = 10000
    """Length of one pass of the resampled (infinite) training stream, per process."""
    bc_mixup: bool = False
    """animal2vec's between-class mixing of same-rate clips in a batch (ratio r ~ U(0.5, 1), A-weighted gains)."""
    eval_batches: int = 8
    """Batches of the eval split used for the periodic coverage table and band plots."""
    synthesize_if_missing: bool = False
    """Before training, ``a2v-het pretrain | finetune | launch`` write synthetic shards (the ``synth_*`` keys;
    :func:`data_tools.synth.ensure_synth_shards`) into ``shards`` and its eval folder where they have no manifest;
    the training loop writes no data."""
    synth_preset: Literal["basic", "field", "field_hard", "ultrasonic"] = "basic"
    synth_clips: int = 2000
    synth_eval_clips: int = 350
    synth_sample_rates: tuple[int, ...] = TRAIN_SAMPLE_RATES
    synth_eval_sample_rates: tuple[int, ...] = UNSEEN_SAMPLE_RATES
    synth_seed: int = 0


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 7.5e-4
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 8000
    final_lr_ratio: float = 0.0
    grad_clip: float = 4.0
    """Set explicitly: DeepSpeed's default is no clipping."""
    grad_accum: int = 1


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/default"
    objective: Literal["data2vec", "coverage"] = "data2vec"
    """data2vec = full student-teacher pretraining; coverage = train only the frontend on its coverage losses."""
    max_steps: int = 400000
    """Optimizer steps."""
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto = bf16 on GPU, fp32 on CPU."""
    zero_stage: int = 2
    log_every: int = 10
    eval_every: int = 1000
    save_every: int = 1000
    keep_last: int = 3
    max_time_s: float = 0.0
    """Stop (with a checkpoint) after this many seconds of training; 0 = no limit."""
    resume_weights_only: bool = False
    """Resume ``latest`` without its optimizer state (weights, EMA teacher, step, data position and RNG are kept;
    AdamW moments start fresh). Needed when the world size changed under ZeRO-1/2, whose optimizer state is
    partitioned over the ranks that wrote it."""
    stop_after_steps: int = 0
    """Stop (with a checkpoint) after this many optimizer steps of this invocation; 0 = no limit. Time-sliced
    jobs; the schedules still follow max_steps."""


@dataclass(frozen=True)
class LoggingConfig:
    wandb: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto = online with WANDB_API_KEY set, offline otherwise."""
    project: str = "a2v_het"
    run_name: str = ""


def validate_run_sections(cfg: "PretrainConfig | FinetuneConfig") -> None:
    """The checks of the run sections (data, frontend, optim, train) every run config has."""
    if cfg.train.zero_stage not in (0, 1, 2):
        raise ConfigError("train.zero_stage must be 0, 1 or 2 (stage 3 would shard the weights the EMA teacher "
                          "and the safetensors export read)")
    if cfg.train.objective == "coverage" and cfg.frontend.name != "heterodyne":
        raise ConfigError("train.objective=coverage trains the heterodyne hypernetwork; "
                          f"frontend.name is {cfg.frontend.name!r}")
    if cfg.data.batch_size < 1 or cfg.optim.grad_accum < 1 or cfg.train.max_steps < 1:
        raise ConfigError("data.batch_size, optim.grad_accum and train.max_steps must be >= 1")


@dataclass(frozen=True)
class PretrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self) -> None:
        validate_run_sections(self)


@dataclass(frozen=True)
class FinetuneSection:
    init: str = ""
    """Export folder of a pretrained model (``a2v-het export``); "" = train from scratch. With an init, the model and
    frontend sections are taken from the export's config.yaml."""
    classes: tuple[str, ...] = ()
    """Class names (columns of the head); empty = the manifest's ``classes``."""
    loss: Literal["focal", "bce"] = "focal"
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    pos_weight: float = 1.0
    """BCE only: weight of positive frames."""
    warmup_classifier_steps: int = 0
    """Steps during which only the head learns: the backbone runs without autograd (no backward through it, no
    gradients of its in the global clip norm) and its lr is scaled to 0."""
    freeze_frontend: bool = False
    top_k: int = 1
    """The head reads the encoder's final LayerNorm of the mean of the residual streams after the top-K blocks
    (K = 1: the encoder's final output)."""
    dropout: float = 0.1
    bc_mixup: bool = False
    """Between-class mixup of same-rate clips; the frame targets are mixed like the waves: r * y1 + (1 - r) * y2."""
    val_split: str = "val"
    test_split: str = "test"
    smooth_s: float = 0.1
    """Moving-average window of the frame probabilities before thresholding (s)."""
    min_duration_s: float = 0.0
    merge_gap_s: float = 0.0
    match_iou: float = 0.3
    """IoU threshold of the one-to-one event matching (0 = any overlap)."""
    collar_s: float = 0.2
    eval_batch_size: int = 8
    eval_max_clips: int = 0
    """0 = the whole split."""
    eval_plots: int = 4
    """Example clips plotted (spectrogram + true / predicted events)."""


@dataclass(frozen=True)
class FinetuneConfig:
    """The run sections of a pretraining recipe (data, frontend, model, optim, train, logging: the same keys, so a
    fine-tune recipe reads like a pretraining one) plus ``finetune``. Not a :class:`PretrainConfig`: the model and
    frontend sections describe the detector's backbone (the pretrained export's, with ``finetune.init``), and
    ``train.objective`` is not read (:func:`a2v_het.train.objective.build_objective` trains the detector)."""

    data: DataConfig = field(default_factory=DataConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)

    def validate(self) -> None:
        validate_run_sections(self)
        if self.data.bc_mixup:
            raise ConfigError("use finetune.bc_mixup (mixes the targets too), not data.bc_mixup")
        if not 1 <= self.finetune.top_k <= self.model.depth:
            raise ConfigError(f"finetune.top_k must be in [1, model.depth={self.model.depth}]")
