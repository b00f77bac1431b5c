"""The transformer shared by student and EMA teacher: conv positional encoding, then pre-LN blocks with ALiBi.

Two stages, because the student drops its masked tokens in between (data2vec 2.0's order):

1. :meth:`Encoder.add_position` runs the grouped conv positional encoding over the *full* token sequence (for the
   student: each clone's sequence with its masked tokens set to 0, see ``Data2VecModel.student_inputs``). A conv
   over the student's compacted visible tokens would treat tokens far apart in time as neighbours.
2. :meth:`Encoder.forward` runs the blocks on whatever tokens it is given (all of them, or only the visible ones)
   with ALiBi computed from the tokens' *original* ``positions``, so dropping a token is exactly equivalent to
   hiding it from attention.

Target layers: each block also returns its **FFN output before the last residual add** (data2vec 2.0's choice, and
data2vec's ablation winner over the block's end-of-block output). With pre-LN blocks the end-of-block output is
the residual stream, which carries the input tokens and every lower layer's contribution; averaging the top-K of
those would give targets dominated by the (local, acoustic) input features. The FFN output is what the block
*adds* to the stream, computed from a layer-normed input, so per-layer instance norm puts the K layers on an equal
footing and the targets stay contextual.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from a2v_het.model.config import ModelConfig


def alibi_slopes(num_heads: int) -> Tensor:
    """(H,) ALiBi slopes (Press et al., 2022): 2^(-8/H), 2^(-16/H), ... for H a power of two; otherwise the
    slopes of the nearest lower power of two plus every other slope of the next one (their reference code)."""

    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = geometric(num_heads)
    else:
        low = 2 ** math.floor(math.log2(num_heads))
        slopes = geometric(low) + geometric(2 * low)[0::2][: num_heads - low]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(positions: Tensor, slopes: Tensor) -> Tensor:
    """Symmetric ALiBi bias: positions (R, V) or (V,) int token indices, slopes (H,) -> (R or 1, H, V, V) float,
    ``bias[r, h, i, j] = -slopes[h] * |positions[r, i] - positions[r, j]|`` (bidirectional, as data2vec 2.0)."""
    if positions.dim() == 1:
        positions = positions[None]
    dist = (positions[:, :, None] - positions[:, None, :]).abs().to(slopes.dtype)  # (R, V, V)
    return -slopes[None, :, None, None] * dist[:, None]


def attention_bias(padding_mask: Tensor | None, alibi: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Additive attention bias (R or 1, H or 1, V, V) in ``dtype``: ALiBi plus a large negative value on padded keys.

    None when there is neither (lets SDPA pick the flash kernel). The padded-key value is finite (half the dtype's
    minimum), not -inf, so a row whose keys are all padding (an empty clip) gets uniform attention instead of NaN.
    A padding mask without any padding still builds a bias: finding out would cost a device -> host sync per call;
    callers that know there is none (``Data2VecModel.forward``, from its CPU copy) pass None.
    """
    has_pad = padding_mask is not None
    if alibi is None and not has_pad:
        return None
    neg = torch.finfo(dtype).min / 2
    if alibi is None:
        bias = torch.zeros(padding_mask.shape[0], 1, 1, padding_mask.shape[1], dtype=dtype, device=padding_mask.device)
    else:
        bias = alibi.to(dtype)
    if has_pad:
        bias = bias.masked_fill(padding_mask[:, None, None, :], neg)
    return bias


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_dropout: float, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_dropout = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """x (R, V, D), bias (R or 1, H or 1, V, V) additive or None -> (R, V, D)."""
        r, v, d = x.shape
        q, k, val = self.qkv(x).view(r, v, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if bias is not None:
            bias = bias.to(q.dtype)  # SDPA wants the float mask in the query's dtype (bf16 under autocast)
        y = F.scaled_dot_product_attention(q, k, val, attn_mask=bias,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        return self.drop(self.proj(y.transpose(1, 2).reshape(r, v, d)))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block; returns (new residual stream, FFN output before its residual add)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.embed_dim
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.num_heads, cfg.attn_dropout, cfg.dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, int(round(cfg.mlp_ratio * d)), cfg.dropout)

    def forward(self, x: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.ln1(x), bias)
        ffn = self.mlp(self.ln2(x))
        return x + ffn, ffn


def _zero_padding(x: Tensor, padding_mask: Tensor | None) -> Tensor:
    """(R, N, C) with padded tokens set to 0, so convolutions do not read the frontend's unspecified padding."""
    return x if padding_mask is None else x.masked_fill(padding_mask[..., None], 0.0)


class ConvPositionalEncoding(nn.Module):
    """x + f(x), f = depth x [grouped Conv1d(kernel, 'same') -> LayerNorm (no affine) -> GELU] over time.

    data2vec 2.0's audio ``conv_pos`` (depth 5, kernel 19, 16 groups): a relative position signal with a receptive
    field of depth * (kernel - 1) + 1 tokens. Padded tokens are zeroed before every conv, so a clip's valid tokens do
    not depend on how much padding its batch adds.
    """

    def __init__(self, dim: int, kernel: int, groups: int, depth: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
                                   for _ in range(depth))
        self.norms = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False) for _ in range(depth))

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """x (B, N, D), padding_mask (B, N) True = pad -> (B, N, D)."""
        n = x.shape[1]
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = conv(_zero_padding(h, padding_mask).transpose(1, 2))[..., :n]  # [:n] trims even kernels' extra step
            h = F.gelu(norm(h.transpose(1, 2)))
        return x + h


class Encoder(nn.Module):
    """Student / teacher transformer. See the module docstring for the two stages and the target-layer choice."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.pos_conv = (ConvPositionalEncoding(d, cfg.pos_conv_kernel, cfg.pos_conv_groups, cfg.pos_conv_depth)
                         if cfg.pos_conv_groups > 0 else None)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)  # pre-LN stacks need a final norm on the residual stream
        if cfg.alibi:
            # Fixed slopes (a buffer, not learned) times a learned per-head scale initialised to 1 (animal2vec).
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.num_heads), persistent=False)
            self.alibi_scale = nn.Parameter(torch.ones(cfg.num_heads))
        self._init_weights()

    def _init_weights(self) -> None:
        # BERT / nanoGPT init; the projections into the residual stream are scaled down with depth (GPT-2) so the
        # stream's variance does not grow with the number of blocks at initialisation.
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for proj in (blk.attn.proj, blk.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * self.cfg.depth))

    def add_position(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        """Conv positional encoding over the full sequence (before any token is dropped): (B, N, D) -> (B, N, D)."""
        return x if self.pos_conv is None else self.pos_conv(x, padding_mask)

    def layers_to_drop(self, seed: int) -> list[bool]:
        """Which blocks layerdrop skips in this forward: ``depth`` bools, drawn from a generator seeded by ``seed``
        (the optimizer step), never from the global RNG. Every rank must skip the same blocks: ZeRO-2 reduces
        gradients in buckets in the order they are produced, and a rank that skipped a block another rank ran would
        reduce mismatched buckets (or wait forever for a gradient that never comes)."""
        if not (self.training and self.cfg.layerdrop > 0):
            return [False] * len(self.blocks)
        # Python's RNG: no tensor, so nothing for a device to sync on. A fixed offset keeps this stream apart from
        # seed(step)-style seeding elsewhere.
        rng = random.Random(0x1A7E_D809 + int(seed))
        return [rng.random() < self.cfg.layerdrop for _ in self.blocks]

    def forward(self, x: Tensor, padding_mask: Tensor | None, positions: Tensor | None = None,
                layerdrop_seed: int = 0, outputs: str = "ffn") -> tuple[Tensor, list[Tensor]]:
        """Run the blocks.

        Args:
            x: (R, V, D) tokens after :meth:`add_position` (all N tokens, or the V visible ones).
            padding_mask: (R, V) bool, True = padding (excluded as attention keys), or None.
            positions: (R, V) int64 original token indices for ALiBi; None means ``arange(V)``.
            layerdrop_seed: seeds the layerdrop draw (:meth:`layers_to_drop`); pass the optimizer step, which is
                the same on every rank.
            outputs: what ``layer_outputs`` holds: "ffn" (the targets' choice, above) or "residual" (the residual
                stream after each block, what a fine-tuning head averages before the final norm).
        Returns: final (R, V, D) = LayerNorm of the residual stream; layer_outputs: ``depth`` tensors (R, V, D), the
            FFN output of each block (zeros for a block skipped by layerdrop: it added nothing to the stream), or
            the residual stream after each block (a skipped block passes it on unchanged).
        """
        if outputs not in ("ffn", "residual"):
            raise ValueError(f"outputs must be 'ffn' or 'residual', got {outputs!r}")
        r, v, _ = x.shape
        alibi = None
        if self.cfg.alibi:
            if positions is None:
                positions = torch.arange(v, device=x.device)
            # Clamped at 0 as in data2vec 2.0 / animal2vec: a negative scale would turn the distance penalty into a
            # bonus for attending far away.
            alibi = alibi_bias(positions, self.alibi_slopes * self.alibi_scale.clamp_min(0.0))
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        bias = attention_bias(padding_mask, alibi, dtype)

        layer_outputs = []
        for blk, drop in zip(self.blocks, self.layers_to_drop(layerdrop_seed)):
            if drop:
                layer_outputs.append(torch.zeros_like(x) if outputs == "ffn" else x)
                continue
            x, ffn = blk(x, bias)
            layer_outputs.append(ffn if outputs == "ffn" else x)
        return self.norm(x), layer_outputs
