"""The EMA teacher: an exponential moving average of the student encoder's weights, never optimised."""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_at(step: int, start: float, end: float, anneal_end_step: int) -> float:
    """Linear anneal from ``start`` at step 0 to ``end`` at ``anneal_end_step``, constant ``end`` after (data2vec)."""
    if anneal_end_step <= 0 or step >= anneal_end_step:
        return float(end)
    return float(start + (end - start) * max(step, 0) / anneal_end_step)


class EMATeacher:
    """A deep fp32 copy of the student encoder with ``requires_grad=False``, kept in eval mode.

    Deliberately *not* an ``nn.Module``: an object attribute of the model is not registered as a submodule, so the
    teacher never appears in ``parameters()`` / ``state_dict()`` (the optimizer, DDP and DeepSpeed never see it).
    Save it with :meth:`state_dict`. The owner must move it between devices (``Data2VecModel`` does in ``_apply``).
    """

    def __init__(self, encoder: nn.Module):
        self.model = copy.deepcopy(encoder).float().requires_grad_(False).eval()

    @torch.no_grad()
    def update(self, student: nn.Module, decay: float) -> None:
        """``t = decay * t + (1 - decay) * s`` for every parameter (in fp32); buffers are copied from the student.

        ``decay == 1`` leaves the parameters untouched (not even ``0 * s``, which would spread a NaN/inf)."""
        t_named = dict(self.model.named_parameters())
        s_named = dict(student.named_parameters())
        if t_named.keys() != s_named.keys():
            raise ValueError("student and teacher have different parameters: "
                             f"{sorted(set(t_named) ^ set(s_named))[:5]}")
        if decay < 1.0:
            t_params = [t_named[k] for k in t_named]
            s_params = [s_named[k].detach().to(device=t_named[k].device, dtype=torch.float32) for k in t_named]
            # Multi-tensor ops: one kernel launch per op for all ~200 tensors instead of a Python loop of them.
            torch._foreach_mul_(t_params, decay)
            torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)
        s_buffers = dict(student.named_buffers())
        for name, buf in self.model.named_buffers():
            buf.copy_(s_buffers[name])

    def to(self, device: torch.device | str) -> "EMATeacher":
        """Move to ``device``, staying fp32."""
        self.model.to(device=device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
        self.model.float().requires_grad_(False).eval()
