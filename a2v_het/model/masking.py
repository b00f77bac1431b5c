"""Masks for the student: which tokens it must predict, and dropping / restoring them. All pure functions.

Shapes: B clips, M clones per clip (``clone_batch``), N tokens. Mask rows are ordered clip-major (row ``b * M + m`` is
clone m of clip b, i.e. ``repeat_interleave``), True = masked.

**Equal counts.** data2vec 2.0 removes the masked tokens before the encoder, which only keeps a rectangular tensor if
every row masks the same number of tokens. Each clip masks exactly ``k_b = floor(ratio * n_b + 0.5)`` of its
``n_b`` valid tokens (at most ``n_b - 1``, so the student always sees one), and then masks the first
``K - k_b`` of its *padding* tokens, ``K = max_b k_b`` (the longest clip's count). So every row masks K tokens and
keeps ``V = N - K``; padding that stays visible is hidden from attention by the key padding mask, and masked padding
is excluded from the loss. ``K - k_b`` padding tokens always exist because ``n -> floor(ratio * n + 0.5)`` rises by at
most one per token (ratio <= 1).

**Blocks with an exact count.** Every valid token draws a uniform ``u``; a token's score is the smallest ``u`` among the
tokens whose window (``mask_length`` tokens: centred for blocks, starting there for spans) covers it; the ``k_b``
lowest scores are masked. Masking every score below a threshold t is exactly "the tokens with u < t are block
centres, mask the union of their windows" -- data2vec 2.0's block masking / wav2vec 2.0's span masking with random
centres -- and a stable sort cuts the threshold inside one block, so a row has at most one truncated block besides
those clipped at the clip's edges. (data2vec 2.0 instead over-samples blocks and then (un)masks random single tokens.)
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from a2v_het.model.config import span_mask_coverage


def masked_counts(n_valid: Tensor, ratio: float) -> Tensor:
    """(R,) valid tokens per row -> (R,) int64 tokens to mask: ``floor(ratio * n + 0.5)`` clamped to ``[0, n - 1]``.

    Rounding half up (not Python's half-to-even) keeps the count monotone in n, which the padding fill relies on.
    """
    n = n_valid.long()
    k = torch.floor(ratio * n.double() + 0.5).long()
    return torch.minimum(k, (n - 1).clamp_min(0))


def window_min_scores(u: Tensor, before: int, after: int) -> Tensor:
    """(R, N) centre draws -> (R, N): score_i = min(u_j for j in [i - after, i + before]) (out of range = +inf).

    A centre j covers tokens ``[j - before, j + after]``; token i is covered by the centres in ``[i - after,
    i + before]``, so ``score_i < t`` exactly when some centre with ``u_j < t`` covers i.
    """
    padded = torch.nn.functional.pad(u, (after, before), value=float("inf"))
    return padded.unfold(1, before + after + 1, 1).amin(dim=-1)


def _exact_count_mask(valid: Tensor, ratio: float, before: int, after: int,
                      generator: torch.Generator | None) -> Tensor:
    """valid (R, N) bool -> mask (R, N) bool with exactly ``K = max(masked_counts)`` True per row (see module doc)."""
    rows, n = valid.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # float64 draws: ties between two centres would merge their blocks in the sort (fp32 ties are not rare at N ~ 1e3).
    u = torch.rand(rows, n, generator=generator, device=gen_device, dtype=torch.float64).to(valid.device)
    u = u.masked_fill(~valid, float("inf"))  # padding is never a centre
    score = window_min_scores(u, before, after).masked_fill(~valid, float("inf"))  # valid tokens sort first
    order = torch.argsort(score, dim=1, stable=True)  # stable: a block cut by the threshold stays contiguous
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=valid.device).expand(rows, n))

    k = masked_counts(valid.sum(1), ratio)  # (R,)
    k_total = k.max() if rows else torch.zeros((), dtype=torch.long, device=valid.device)
    masked_valid = valid & (rank < k[:, None])
    pad = ~valid
    pad_index = pad.long().cumsum(1) - 1  # 0, 1, 2, ... along each row's padding tokens
    masked_pad = pad & (pad_index < (k_total - k)[:, None])
    return masked_valid | masked_pad


def _clone_valid(batch: int, n_tokens: int, padding_mask: Tensor | None, clone_batch: int,
                 generator: torch.Generator | None) -> Tensor:
    if padding_mask is None:
        device = generator.device if generator is not None else torch.device("cpu")
        return torch.ones(batch * clone_batch, n_tokens, dtype=torch.bool, device=device)
    if tuple(padding_mask.shape) != (batch, n_tokens):
        raise ValueError(f"padding_mask must be ({batch}, {n_tokens}), got {tuple(padding_mask.shape)}")
    return (~padding_mask.bool()).repeat_interleave(clone_batch, dim=0)


def compute_block_mask(batch: int, n_tokens: int, padding_mask: Tensor | None, mask_prob: float, mask_length: int,
                       clone_batch: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """data2vec 2.0 block masking: blocks of ``mask_length`` tokens centred on random tokens.

    Args:
        padding_mask: (B, N) bool, True = padding (per clip, not per clone), or None for no padding.
        mask_prob: fraction in (0, 1) of each clip's valid tokens to mask (exact per row, up to rounding).
        generator: random source (its device is where the draws happen; the mask lands on padding_mask's device).
    Returns: (B * M, N) bool, True = masked; every row has the same number of True (see the module doc).
    """
    if not 0.0 < mask_prob < 1.0:
        raise ValueError(f"block mask_prob must lie in (0, 1), got {mask_prob}")
    valid = _clone_valid(batch, n_tokens, padding_mask, clone_batch, generator)
    before = mask_length // 2
    return _exact_count_mask(valid, mask_prob, before, mask_length - 1 - before, generator)


def compute_span_mask(batch: int, n_tokens: int, padding_mask: Tensor | None, mask_prob: float, mask_length: int,
                      clone_batch: int = 1, generator: torch.Generator | None = None) -> Tensor:
    """wav2vec 2.0 / animal2vec span masking: spans of ``mask_length`` tokens starting at random tokens.

    ``mask_prob`` keeps wav2vec 2.0's meaning (span starts per token times ``mask_length``; animal2vec uses 1.5 with
    length 2), so overlapping spans mask :func:`span_mask_coverage` of the tokens (0.9375 there). That expected
    fraction is realised exactly in every row. Same arguments and result as :func:`compute_block_mask`.
    """
    ratio = span_mask_coverage(mask_prob, mask_length)
    if not (mask_prob > 0 and ratio < 1.0):
        raise ValueError(f"span mask_prob must be in (0, mask_length), got {mask_prob} with length {mask_length}")
    valid = _clone_valid(batch, n_tokens, padding_mask, clone_batch, generator)
    return _exact_count_mask(valid, ratio, 0, mask_length - 1, generator)


def compute_mask(batch: int, n_tokens: int, padding_mask: Tensor | None, mask_prob: float, mask_length: int,
                 clone_batch: int = 1, generator: torch.Generator | None = None,
                 mask_type: Literal["block", "span"] = "block") -> Tensor:
    """Dispatch to :func:`compute_block_mask` or :func:`compute_span_mask`."""
    fn = {"block": compute_block_mask, "span": compute_span_mask}.get(mask_type)
    if fn is None:
        raise ValueError(f"unknown mask_type {mask_type!r}")
    return fn(batch, n_tokens, padding_mask, mask_prob, mask_length, clone_batch, generator)


def visible_positions(mask: Tensor) -> Tensor:
    """mask (R, N) True = masked, equal count per row -> (R, V) int64 indices of the unmasked tokens, increasing."""
    r, n = mask.shape
    n_visible = n - int(mask[0].sum()) if r else n
    if r and not bool((mask.sum(1) == n - n_visible).all()):
        raise ValueError("every row must mask the same number of tokens (see compute_block_mask)")
    # Stable sort of 0 (visible) before 1 (masked) lists each row's visible indices in their original order.
    return torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_visible]


def drop_masked(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the unmasked tokens: x (R, N, D), mask (R, N) True = masked, equal count per row
    -> visible (R, V, D), positions (R, V) int64 original token indices in increasing order."""
    positions = visible_positions(mask)
    visible = x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))
    return visible, positions


def restore(visible: Tensor, mask: Tensor, fill: Tensor, positions: Tensor | None = None) -> Tensor:
    """Inverse of :func:`drop_masked`: visible (R, V, D) back to (R, N, D), masked slots set to ``fill`` (D,).

    ``fill`` is the decoder's learned mask embedding; it receives the gradient of every masked slot. ``positions``
    (R, V), when given, must be ``visible_positions(mask)`` (saves recomputing it, and the host sync that costs on
    a device mask).
    """
    r, n = mask.shape
    d = visible.shape[-1]
    if positions is None:
        positions = visible_positions(mask)
    out = visible.new_zeros(r, n, d).scatter(1, positions[..., None].expand(-1, -1, d), visible)
    return torch.where(mask[..., None], fill.to(visible.dtype), out)
