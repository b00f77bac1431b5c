"""Data2VecModel: frontend -> tokens; an EMA teacher encodes every clip once and builds targets; the student sees M
masked clones of each clip (masked tokens dropped before the encoder) and a light decoder regresses the targets at
the masked tokens. The frontend's coverage losses are added to the objective.

    wave --z-norm--> frontend --LN (+Linear)--> tokens --+--> teacher.add_position -> teacher blocks -> targets
                                                         +--> x M clones -> masked tokens := 0 -> student.add_position
                                                              -> drop masked -> student blocks (original positions)
                                                              -> restore with mask embedding -> decoder
                                                              -> predictions at the masks

The student's conv positional encoding runs on each clone *after* its masked tokens are zeroed (data2vec 2.0's
``encoder_zero_mask`` before the ``relative_positional_encoder``): run on the full sequence, its receptive field
(depth x (kernel - 1) tokens, ~90 for the base model) would carry the masked tokens' content into the visible ones
the student encodes, and the regression would partly become copying.

The frontend, token LayerNorm / projection and student encoder are the :class:`~a2v_het.model.backbone.Backbone`
(``self.backbone``; the call detector fine-tunes the same module). The frontend and token norm / projection are
shared by student and teacher (data2vec 2.0's ``ema_encoder_only``); the teacher input is detached, so targets never
pass gradients. Parameter names stay ``frontend.*``, ``token_norm.*``, ``token_proj.*``, ``encoder.*``, ``decoder.*``,
``mask_embedding`` (:func:`~a2v_het.model.backbone.adopt_parts`): the format of checkpoints and exports.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.data.collate import normalize_wave  # noqa: F401  (re-exported)
from a2v_het.frontend.base import Frontend
from a2v_het.frontend.heterodyne_frontend import HeterodyneFrontend
from a2v_het.model.backbone import Backbone, adopt_parts
from a2v_het.model.config import ModelConfig
from a2v_het.model.decoder import Decoder
from a2v_het.model.ema import EMATeacher, ema_decay_at
from a2v_het.model.masking import compute_mask, restore, visible_positions
from a2v_het.model.param_groups import weight_decay_groups
from a2v_het.model.targets import build_targets


class TrainingCollapsed(RuntimeError):
    """The targets or the predictions lost their variance: the student-teacher pair has collapsed."""


def _weighted_channel_variance(x: Tensor, weight: Tensor) -> Tensor:
    """x (..., D), weight (...) in {0, 1} -> scalar fp32: mean over channels of the (biased) variance across the
    selected tokens; 0 when none is selected. Computed without indexing, so without a host sync."""
    w = weight[..., None].float()
    count = w.sum().clamp_min(1.0)
    x = torch.where(w > 0, x.float(), torch.zeros((), device=x.device))
    mean = (x * w).flatten(0, -2).sum(0) / count  # (D,)
    var = ((x - mean).square() * w).flatten(0, -2).sum(0) / count
    return var.mean()


class Data2VecModel(nn.Module):
    """See the module docstring. ``frontend`` is any :class:`Frontend`; ``cfg`` is validated here."""

    def __init__(self, cfg: ModelConfig, frontend: Frontend):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        # Construction order = initialisation order from the global RNG: backbone (token projection, encoder), then
        # decoder, then mask embedding. The parts are registered here too (self.frontend, self.token_norm,
        # self.token_proj, self.encoder: the names and the parameter order of checkpoints and of the optimizer).
        adopt_parts(self, "backbone", Backbone(cfg, frontend))
        self.decoder = Decoder(cfg)
        self.mask_embedding = nn.Parameter(torch.empty(cfg.embed_dim).normal_(std=0.02))
        # A plain attribute (EMATeacher is not an nn.Module): excluded from parameters() and state_dict().
        self.teacher = EMATeacher(self.encoder)

    # ----------------------------------------------------------------------------------------- teacher plumbing
    def _apply(self, fn, recurse=True):
        """``.to()`` / ``.cuda()`` also move the unregistered teacher, but never change its dtype (stays fp32)."""
        super()._apply(fn, recurse)
        if "teacher" not in self.__dict__:  # not built yet
            return self
        # Probe on the teacher's own device: .cuda() / .to(device) move the probe, .float() / .half() leave it.
        probe = next(self.teacher.model.parameters()).new_zeros(())
        self.teacher.to(fn(probe).device)
        return self

    def reset_teacher(self) -> None:
        """Teacher := a fresh copy of the student encoder. Call after loading student weights or after DDP / DeepSpeed
        broadcast rank 0's initial weights (each rank's teacher was copied from its own initialisation)."""
        device = next(self.encoder.parameters()).device
        self.teacher = EMATeacher(self.encoder).to(device)

    def teacher_state_dict(self) -> dict[str, Tensor]:
        return self.teacher.state_dict()

    def load_teacher_state_dict(self, state: dict[str, Tensor]) -> None:
        self.teacher.load_state_dict(state)

    def ema_decay(self, step: int) -> float:
        c = self.cfg
        return ema_decay_at(step, c.ema_decay, c.ema_end_decay, c.ema_anneal_end_step)

    @torch.no_grad()
    def ema_step(self, step: int) -> float:
        """Move the teacher towards the student with the scheduled decay; returns the decay. Call once per real
        optimizer step (not on skipped / overflowed steps)."""
        decay = self.ema_decay(step)
        self.teacher.update(self.encoder, decay)
        return decay

    # ------------------------------------------------------------------------------------------------ pieces
    def student_inputs(self, x: Tensor, padding_mask: Tensor, mask: Tensor, positions: Tensor | None = None) -> Tensor:
        """What the student's blocks see: x (R, N, D) tokens of R clones, padding_mask (R, N) True = pad, mask (R, N)
        True = masked (equal count per row), positions (R, V) visible indices (from the mask when None)
        -> (R, V, D) the visible tokens with their conv positional encoding.

        Masked tokens are set to 0 *before* the positional conv (data2vec 2.0's ``encoder_zero_mask``), so the
        result depends on the visible tokens only: changing a masked token changes nothing the student sees.
        """
        if positions is None:
            positions = visible_positions(mask.cpu()).to(x.device)
        x = x.masked_fill(mask[..., None], 0.0)
        x = self.encoder.add_position(x, padding_mask)
        return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))

    @torch.no_grad()
    def _teacher_targets(self, tokens: Tensor, padding_mask: Tensor, any_pad: bool = True) -> Tensor:
        """Teacher on the unmasked tokens of each clip -> targets (B, N, D) fp32. ``any_pad=False`` (the caller
        knows the batch has no padding) gives the blocks no padding mask, so SDPA may use its fastest kernel."""
        attention_padding = padding_mask if any_pad else None
        teacher = self.teacher.model.eval()
        x = tokens.detach().float()
        # Under autocast the teacher runs in the autocast dtype. If the student's weights were cast to bf16 without
        # autocast (tokens arrive in bf16), run the fp32 teacher under bf16 autocast instead of failing on dtypes.
        low_precision = tokens.dtype in (torch.bfloat16, torch.float16)
        ctx = torch.autocast(x.device.type, dtype=tokens.dtype) if low_precision else contextlib.nullcontext()
        with ctx:
            _, layers = teacher(teacher.add_position(x, padding_mask), attention_padding)
        return build_targets(layers, self.cfg.average_top_k_layers, padding_mask, self.cfg.instance_norm_targets)

    def _regression_loss(self, pred: Tensor, target: Tensor, weight: Tensor) -> Tensor:
        """pred (..., D), target broadcastable to it, weight (...) 1 = masked valid token, 0 = ignored -> scalar
        fp32: per-token loss summed over channels / sqrt(D) (data2vec 2.0 scaling), averaged over the selected
        tokens (0 when none is selected, still attached to the graph)."""
        target = target.expand_as(pred)
        if self.cfg.loss == "mse":
            per = F.mse_loss(pred, target, reduction="none")
        else:
            per = F.smooth_l1_loss(pred, target, reduction="none", beta=self.cfg.smooth_l1_beta)
        # where(), not a product: a non-selected token's loss must not leak NaN/inf into the sum.
        per = torch.where(weight[..., None] > 0, per, torch.zeros((), dtype=per.dtype, device=per.device))
        return per.sum() / (math.sqrt(pred.shape[-1]) * weight.sum().clamp_min(1.0))

    def _aux_total(self, aux: dict[str, Tensor], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(sum of the frontend's aux losses, energy, surprise), absent terms = 0 (e.g. the conv frontend).

        The frontend weights its own terms (the heterodyne frontend from its own config section), so they are
        added as they come and logged as added."""
        zero = like.new_zeros((), dtype=torch.float32)
        terms = {k: v.float() for k, v in aux.items()}
        return sum(terms.values(), zero), terms.get("energy", zero), terms.get("surprise", zero)

    # ------------------------------------------------------------------------------------------------ objectives
    def forward(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor, step: int = 0,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Self-supervised loss of one batch.

        Args:
            wave: (B, T) float, zero-padded after ``lengths``; sample_rate (B,) Hz (mixed rates allowed);
            lengths: (B,) samples; step: optimizer step (only logged: the EMA decay in use);
            generator: random source for the masks (CPU), or None for the global RNG.
        Returns: total loss (scalar fp32) and detached fp32 scalar logs: loss, regression, energy, surprise (the
            frontend's aux terms as weighted and added, 0 if it has none), target_var, pred_var (mean over channels
            of the variance across masked tokens), mask_ratio (masked / valid tokens), masked_tokens (summed over
            clones), tokens (valid tokens of the B clips), ema_decay, encoder_bf16 (1 if the student's blocks ran
            in bf16), frontend/<stat>.
        """
        c = self.cfg
        m = c.clone_batch
        tokens, padding_mask, out = self.backbone.tokens(wave, sample_rate, lengths)
        b, n, _ = tokens.shape

        # The one device -> host copy of the step: the padding mask, for the masks (drawn on the CPU, where the
        # generator lives, as data2vec draws them in numpy) and the visible positions; everything else that needs
        # a count or a shape is derived from this copy, so nothing else waits for the device.
        pad_cpu = padding_mask.cpu()
        any_pad = bool(pad_cpu.any())
        # No padding in the batch: the encoders get no padding mask (None), so SDPA may pick its fastest kernel
        # without another sync to find out.
        targets = self._teacher_targets(tokens, padding_mask, any_pad)  # (B, N, D) fp32

        # Student: M clones, each with its own mask.
        mask_cpu = compute_mask(b, n, pad_cpu, c.mask_prob, c.mask_length, m, generator, c.mask_type)
        positions = visible_positions(mask_cpu).to(tokens.device, non_blocking=True)  # (B*M, V)
        mask = mask_cpu.to(tokens.device, non_blocking=True)
        pad = padding_mask.repeat_interleave(m, dim=0)
        visible = self.student_inputs(tokens.repeat_interleave(m, dim=0), pad, mask, positions)  # (B*M, V, D)
        encoded, student_layers = self.encoder(visible, pad.gather(1, positions) if any_pad else None, positions,
                                                layerdrop_seed=step)
        pred = self.decoder(restore(encoded, mask, self.mask_embedding, positions), pad)  # (B*M, N, D)

        with torch.autocast(device_type=tokens.device.type, enabled=False):
            # Loss over the masked, valid tokens as a weighted sum over all of them: boolean indexing would need the
            # number of selected tokens on the host (a sync per step). (B*M, N, D) -> (B, M, N, D) puts clone j of
            # clip b (row b*M + j, repeat_interleave's order) beside its clip's targets without copying them M times.
            sel = (mask & ~pad).float().view(b, m, n)
            p = pred.float().view(b, m, n, -1)
            t = targets[:, None]
            regression = self._regression_loss(p, t, sel)
            aux_total, energy, surprise = self._aux_total(out.aux_losses, regression)
            loss = regression + aux_total

            n_masked = sel.sum()
            logs = {
                "loss": loss, "regression": regression, "energy": energy, "surprise": surprise,
                "target_var": _weighted_channel_variance(t.expand_as(p), sel),
                "pred_var": _weighted_channel_variance(p, sel),
                "mask_ratio": n_masked / (~pad).sum().clamp_min(1).float(),
                "masked_tokens": n_masked,
                "tokens": (~padding_mask).sum().float(),  # valid tokens of the clips (throughput logging)
                "ema_decay": torch.tensor(self.ema_decay(step), device=loss.device),
                # 1 when the student's blocks really compute in bf16 (their FFN output is a Linear's: bf16 under
                # autocast, fp32 without), so every run's logs show the precision in use, not the one asked for.
                "encoder_bf16": torch.tensor(float(student_layers[-1].dtype == torch.bfloat16), device=loss.device),
            }
            logs.update({f"frontend/{k}": v for k, v in out.stats.items()})
            logs = {k: v.detach().float().reshape(()) for k, v in logs.items()}
        return loss, logs

    def check_collapse(self, logs: dict[str, Tensor], step: int) -> None:
        """Raise :class:`TrainingCollapsed` once ``step >= collapse_check_after`` if the target or prediction
        variance (from :meth:`forward`'s logs, scalar tensors or floats) is below its threshold.

        Collective when a process group of several ranks is up: every rank must call it at the same steps. The two
        variances are averaged over the ranks first (data2vec all-reduces them too), so every rank decides on the
        same numbers and all raise together; a rank raising on its own statistics would leave the others blocked
        in their next collective until the NCCL timeout.
        """
        c = self.cfg
        if step < c.collapse_check_after:
            return
        checks = (("target_var", c.collapse_min_target_var, "the EMA teacher's targets"),
                  ("pred_var", c.collapse_min_pred_var, "the student's predictions"))
        device = next(self.parameters()).device
        stats = torch.stack([torch.as_tensor(logs[key], dtype=torch.float32).to(device).reshape(())
                             for key, _, _ in checks])
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            torch.distributed.all_reduce(stats, op=torch.distributed.ReduceOp.SUM)
            stats = stats / torch.distributed.get_world_size()
        values = stats.tolist()  # NaN on any rank is NaN in the mean: every rank raises
        for (key, threshold, what), value in zip(checks, values):
            if not value >= threshold:  # also catches NaN
                raise TrainingCollapsed(
                    f"training collapsed at step {step}: {key} = {value:.3g} < model.collapse_min_{key} = "
                    f"{threshold:g} -- {what} have (almost) no variance across masked tokens, so the regression "
                    f"loss is trivially small. Lower the learning rate, lengthen the warm-up or raise "
                    f"model.ema_decay, and resume from an earlier checkpoint.")

    # ------------------------------------------------------------------------------------------------ inference
    def encode(self, wave: Tensor, sample_rate: Tensor, lengths: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        """Student encoder on the unmasked clips (fine-tuning / probing): final (B, N, D), layer_outputs (``depth``
        x (B, N, D) FFN outputs), padding_mask (B, N) True = pad (:meth:`Backbone.encode`)."""
        return self.backbone.encode(wave, sample_rate, lengths)

    # ---- the training loop's contract (a2v_het.train.objective.Objective); also ema_step, check_collapse,
    # teacher_state_dict, load_teacher_state_dict and param_groups
    has_teacher = True

    @property
    def coverage_frontend(self) -> Frontend | None:
        return self.frontend if isinstance(self.frontend, HeterodyneFrontend) else None

    def batch_inputs(self, batch: dict, device: torch.device) -> dict:
        return {}  # the waves, rates and lengths are all it reads

    def lr_scale(self, group: dict, step: int) -> float:
        return 1.0  # one schedule for every group

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimizer groups: weight decay on matrices / conv kernels only; none on 1-D parameters (biases, norms,
        ALiBi scales, the mask embedding). Frozen parameters are left out; the teacher is never included."""
        return weight_decay_groups(self.parameters(), weight_decay)
