"""Student masks: exact equal counts, ratios, block structure, padding, determinism, drop / restore."""

import pytest
import torch

from a2v_het.model.config import span_mask_coverage
from a2v_het.model.masking import (
    compute_block_mask,
    compute_mask,
    compute_span_mask,
    drop_masked,
    masked_counts,
    restore,
    window_min_scores,
)


def padding_for(valid_lengths, n):
    return torch.arange(n)[None, :] >= torch.tensor(valid_lengths)[:, None]


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    out, cur = [], 0
    for v in row.tolist():
        if v:
            cur += 1
        elif cur:
            out.append(cur)
            cur = 0
    if cur:
        out.append(cur)
    return out


def reference_mask(valid: torch.Tensor, ratio: float, before: int, after: int, seed: int) -> torch.Tensor:
    """Naive loop version of the module's algorithm: take block centres in increasing order of their draw, add the
    not-yet-masked valid tokens of each window in index order until k tokens are masked; then the first pads."""
    rows, n = valid.shape
    u = torch.rand(rows, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ks = [min(int(ratio * int(valid[r].sum()) + 0.5), max(int(valid[r].sum()) - 1, 0)) for r in range(rows)]
    big_k = max(ks)
    mask = torch.zeros(rows, n, dtype=torch.bool)
    for r in range(rows):
        centres = sorted((float(u[r, j]), j) for j in range(n) if valid[r, j])
        count = 0
        for _, j in centres:
            for i in range(j - before, j + after + 1):
                if count < ks[r] and 0 <= i < n and valid[r, i] and not mask[r, i]:
                    mask[r, i] = True
                    count += 1
        pads = [i for i in range(n) if not valid[r, i]]
        for i in pads[: big_k - ks[r]]:
            mask[r, i] = True
    return mask


def test_window_min_scores_matches_a_loop():
    u = torch.rand(3, 17, dtype=torch.float64)
    u[1, 12:] = float("inf")
    for before, after in [(2, 2), (2, 1), (0, 1), (0, 0), (3, 0)]:
        got = window_min_scores(u, before, after)
        for r in range(3):
            for i in range(17):
                js = [j for j in range(i - after, i + before + 1) if 0 <= j < 17]
                assert got[r, i] == min(u[r, j] for j in js)


def test_masked_counts_round_half_up_and_keep_one_visible():
    n = torch.tensor([0, 1, 2, 3, 5, 10, 11, 100])
    assert masked_counts(n, 0.5).tolist() == [0, 0, 1, 2, 3, 5, 6, 50]  # 1.5 -> 2, 2.5 -> 3, 5.5 -> 6: half up
    assert masked_counts(n, 0.95).tolist() == [0, 0, 1, 2, 4, 9, 10, 95]  # capped at n - 1
    # Monotone with steps of at most one: the padding fill depends on it.
    k = masked_counts(torch.arange(0, 500), 0.9375)
    assert ((k[1:] - k[:-1]) >= 0).all() and ((k[1:] - k[:-1]) <= 1).all()


@pytest.mark.parametrize("mask_type,prob,length", [("block", 0.5, 5), ("block", 0.65, 4), ("span", 1.5, 2)])
def test_matches_naive_reference_with_padding(mask_type, prob, length):
    lengths, n, m = [40, 23, 7, 1, 0], 40, 3
    pad = padding_for(lengths, n)
    got = compute_mask(len(lengths), n, pad, prob, length, m, torch.Generator().manual_seed(5), mask_type)
    valid = (~pad).repeat_interleave(m, 0)
    if mask_type == "block":
        ratio, before = prob, length // 2
    else:
        ratio, before = span_mask_coverage(prob, length), 0
    want = reference_mask(valid, ratio, before, length - 1 - before, seed=5)
    assert torch.equal(got, want)


@pytest.mark.parametrize("mask_type,prob,length", [("block", 0.5, 5), ("span", 1.5, 2)])
def test_equal_counts_and_exact_per_clip_ratio_with_padding(mask_type, prob, length):
    lengths, n, m = [50, 31, 12, 1], 50, 4
    pad = padding_for(lengths, n)
    mask = compute_mask(len(lengths), n, pad, prob, length, m, torch.Generator().manual_seed(0), mask_type)
    assert mask.shape == (len(lengths) * m, n) and mask.dtype == torch.bool
    counts = mask.sum(1)
    assert (counts == counts[0]).all()  # rectangular after dropping
    ratio = prob if mask_type == "block" else span_mask_coverage(prob, length)
    for b, n_valid in enumerate(lengths):
        k = int(ratio * n_valid + 0.5) if n_valid > 1 else 0
        k = min(k, n_valid - 1)
        for row in mask[b * m:(b + 1) * m]:
            assert int(row[:n_valid].sum()) == k
            n_pad_masked = int(counts[0]) - k
            # the masked padding is the first padding tokens
            assert row[n_valid:n_valid + n_pad_masked].all() and not row[n_valid + n_pad_masked:].any()
    assert int(counts[0]) == int(ratio * 50 + 0.5)


def test_mask_ratio_close_to_mask_prob_over_many_samples():
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(20, 120, (64,), generator=gen)
    pad = padding_for(lengths.tolist(), 120)
    for mask_type, prob, length, want in [("block", 0.5, 5, 0.5), ("span", 1.5, 2, 0.9375)]:
        mask = compute_mask(64, 120, pad, prob, length, 2, gen, mask_type)
        valid = (~pad).repeat_interleave(2, 0)
        ratio = (mask & valid).sum() / valid.sum()
        assert abs(float(ratio) - want) < 0.01, (mask_type, float(ratio))


def test_blocks_have_mask_length_except_a_few():
    n, length = 400, 5
    mask = compute_block_mask(8, n, None, 0.5, length, 2, torch.Generator().manual_seed(3))
    for row in mask:
        r = runs(row)
        short = [x for x in r if x < length]
        # At most one block cut by the exact-count threshold and one clipped at each edge of the clip.
        assert len(short) <= 3, r
        assert sum(r) == 200
        assert sum(r) / len(r) >= length  # overlapping blocks merge into longer runs, never shorter ones


def test_determinism_and_independent_clones():
    pad = padding_for([60, 45], 60)
    a = compute_block_mask(2, 60, pad, 0.5, 5, 4, torch.Generator().manual_seed(7))
    b = compute_block_mask(2, 60, pad, 0.5, 5, 4, torch.Generator().manual_seed(7))
    c = compute_block_mask(2, 60, pad, 0.5, 5, 4, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    for clip in range(2):
        clones = a[clip * 4:(clip + 1) * 4]
        assert all(not torch.equal(clones[i], clones[j]) for i in range(4) for j in range(i + 1, 4))


def test_padding_none_and_all_padding_rows():
    mask = compute_block_mask(3, 20, None, 0.5, 3, 1, torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 10).all()
    pad = padding_for([20, 0], 20)
    mask = compute_block_mask(2, 20, pad, 0.5, 3, 2, torch.Generator().manual_seed(0))
    assert (mask.sum(1) == 10).all()  # the empty clip masks 10 of its padding tokens to keep the shape


def test_invalid_arguments():
    with pytest.raises(ValueError):
        compute_block_mask(1, 10, None, 1.0, 5)
    with pytest.raises(ValueError):
        compute_span_mask(1, 10, None, 2.0, 2)  # covers every token
    with pytest.raises(ValueError):
        compute_block_mask(2, 10, torch.zeros(2, 9, dtype=torch.bool), 0.5, 5)
    with pytest.raises(ValueError):
        compute_mask(1, 10, None, 0.5, 5, mask_type="random")
    with pytest.raises(ValueError):
        drop_masked(torch.zeros(2, 4, 1), torch.tensor([[True, False, False, False], [True, True, False, False]]))


def test_drop_and_restore_round_trip():
    x = torch.randn(6, 30, 4)
    mask = compute_block_mask(3, 30, None, 0.5, 5, 2, torch.Generator().manual_seed(0))
    visible, positions = drop_masked(x, mask)
    assert visible.shape == (6, 15, 4) and positions.shape == (6, 15)
    assert (positions[:, 1:] > positions[:, :-1]).all()  # original order kept
    assert not mask.gather(1, positions).any()
    for r in range(6):
        assert torch.equal(visible[r], x[r][~mask[r]])
    fill = torch.randn(4, requires_grad=True)
    back = restore(visible, mask, fill)
    assert torch.equal(back, torch.where(mask[..., None], fill.detach(), x))
    back.sum().backward()
    assert torch.equal(fill.grad, torch.full((4,), float(mask.sum())))
