"""The CPU workspace: buffers kept from step to step change no result, whatever the batches in between."""

import copy
import dataclasses

import torch

from a2v_het.frontend import build_frontend
from a2v_het.frontend.config import FrontendConfig
from a2v_het.frontend.cpu_chunks import CpuWorkspace
from a2v_het.frontend.spectrum import grid_power_statistics


def test_take_reuses_grows_and_releases():
    ws = CpuWorkspace()
    a = ws.take("x", (3, 4), torch.float32)
    assert a.shape == (3, 4) and a.is_contiguous() and ws.nbytes == 48
    a.fill_(7.0)
    b = ws.take("x", (2, 5), torch.float32)  # smaller: the same memory
    assert b.data_ptr() == a.data_ptr() and ws.nbytes == 48
    c = ws.take("x", (5, 5), torch.float32)  # larger: grows
    assert c.shape == (5, 5) and ws.nbytes == 100
    d = ws.take("x", (5, 5), torch.complex64)  # another dtype: reallocated in it
    assert d.dtype == torch.complex64 and ws.nbytes == 200
    ws.take("y", (10,), torch.float32)
    assert ws.nbytes == 240
    assert copy.deepcopy(ws).nbytes == 0  # scratch: a copy starts empty
    ws.release()
    assert ws.nbytes == 0


def _batch(rates, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    rates, lengths = torch.tensor(rates), torch.tensor(lengths)
    t = int(lengths.max())
    return torch.randn(len(rates), t, generator=g) * (torch.arange(t)[None, :] < lengths[:, None]), rates, lengths


def test_statistics_with_a_workspace_match_without():
    """The same STFT (exactly) and statistics (to the float rounding of re re + im im) with the buffers as
    without, over two rates and uneven lengths; the kept spectra of every chunk stay intact."""
    wave, rates, lengths = _batch([48000, 16000, 48000, 96000], [144000, 40000, 100000, 288000], 0)
    args = (wave, rates, lengths, 0.02, 0.01, 4801, 50.0, 1.0, (150.0, 0.05, 1.0, 1000.0))
    plain = grid_power_statistics(*args, keep_spectra=True)
    ws = CpuWorkspace()
    for _ in range(2):  # the second call runs on the kept buffers
        kept = grid_power_statistics(*args, keep_spectra=True, workspace=ws)
        for name in ("mean_power", "variance", "evidence", "num_frames"):
            want = getattr(plain, name)
            scale = float(want.abs().max())  # variances of the quietest bins sit 10 orders below the loudest
            torch.testing.assert_close(getattr(kept, name), want, rtol=1e-5, atol=1e-6 * scale)
        assert len(kept.spectra) == len(plain.spectra) == 3
        for k, p in zip(kept.spectra, plain.spectra):
            assert torch.equal(k.idx, p.idx) and torch.equal(k.spec, p.spec)
    assert ws.nbytes > 0


def test_frontend_tokens_do_not_depend_on_the_batches_before():
    """A batch gives the same tokens after other batches (other rates, longer and shorter clips) have run through
    the frontend's workspace as on its first step; and, with bands that do not hinge on float ties (uniform: the
    learned picker's arg-max on white noise flips with the last bit of the evidence), the tokens of a frontend
    without a workspace."""
    first = _batch([192000, 8000, 192000], [576000, 24000, 300000], 1)
    other = _batch([500000, 48000], [1500000, 96000], 2)
    short = _batch([16000], [32000], 3)
    for picker in ("learned", "uniform"):
        torch.manual_seed(0)
        cfg = FrontendConfig(name="heterodyne")
        fe = build_frontend(dataclasses.replace(
            cfg, heterodyne=dataclasses.replace(cfg.heterodyne, band_picker=picker))).eval()
        with torch.no_grad():
            tokens = fe(*first).tokens
            fe(*other)
            fe(*short)
            assert torch.equal(fe(*first).tokens, tokens)
            bare = copy.deepcopy(fe)
            assert bare.workspace.nbytes == 0 < fe.workspace.nbytes
            if picker == "uniform":
                bare.workspace = None
                torch.testing.assert_close(bare(*first).tokens, tokens, rtol=1e-4, atol=1e-5)


def test_bench_counts_the_workspace_in_the_peak_memory():
    """The bench's CPU peak (tensors allocated during a warm step) adds the buffers the heterodyne keeps between
    steps; a frontend without a workspace adds nothing."""
    from a2v_het.bench.frontend import workspace_bytes

    torch.manual_seed(0)
    fe = build_frontend(FrontendConfig(name="heterodyne"))
    assert workspace_bytes(fe) == 0
    with torch.no_grad():
        fe(*_batch([48000, 48000], [48000, 30000], 4))
    # at least the two clips' complex STFT (99 frames x 481 bins x 8 bytes each) and its power
    assert workspace_bytes(fe) == fe.workspace.nbytes >= 2 * 99 * 481 * 12
    assert workspace_bytes(build_frontend(FrontendConfig(name="logmel"))) == 0
