"""The hypernetwork: picks K band start frequencies per clip from a summary of the clip on an absolute-Hz grid.

Design for generalisation across sample rates. The summary (the per-bin statistic the coverage losses measure,
by default the call evidence E(f); log mean power against its neighbourhood; the statistic a band starting at each
bin would capture; validity masks) lives on one fixed grid from 0 Hz to the Nyquist of the highest supported rate;
bins above the clip's own Nyquist are masked and the mask is an input channel. Every input is per bin or local
(``picker_inputs=local``): nothing is normalised over the clip's valid bins, whose number grows with the sample
rate, so the same call gives the same inputs in an 8 kHz and a 96 kHz clip (away from the 8 kHz clip's Nyquist
edge). The head's output layer starts at zero (``picker_init=greedy``): the untrained picker is exactly the greedy
"start that captures the most evidence not yet captured", and training learns corrections around it. The
picker is a stack of dilated convolutions along frequency (translation-equivariant: a call at 30 kHz looks to it
like a call at 3 kHz), followed per band by a *local* soft-argmax: arg-max first, then a softmax-weighted mean of
the start frequencies within +-window of it. The result is differentiable and can never land between two distant
peaks, as a global soft-argmax would. Bands are picked one after another; after each pick the variance it
captures (through its soft Cauchy mask) is removed from the evidence, so the next band looks for what is left.
The conv body runs once per clip; only a small conv head sees the changing evidence (the variance each start
would still capture, and what is already covered), so K bands cost little more than one. That bookkeeping is a
statistic of the bands already picked and carries no gradient (each band learns where to go given the earlier
ones; the coverage losses reach every band through its own mask), and the head is differentiated only on the
window of starts its soft-argmax reads. Both cut the picker's backward to a few small ops per band, and training
this way covered more calls on ``field_hard`` than with the gradient through the chain (BENCHMARKS.md).

Each start is a convex combination of grid frequencies inside [f_min, nyquist - W] of its clip, so the constraint
holds by construction: an 8 kHz clip never gets a band above 4 kHz.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from a2v_het.frontend.band_masks import cauchy_band_masks
from a2v_het.frontend.call_evidence import local_mean
from a2v_het.frontend.coverage_losses import variance_distribution
from a2v_het.frontend.dilated_conv import dilated_conv
from a2v_het.frontend.config import HeterodyneConfig

N_FEATURES = 4  # log power, log statistic, Nyquist mask, valid-start mask
N_EVIDENCE = 2  # log capturable residual statistic, covered so far
EVIDENCE_UNIT = 0.01
"""Call evidence (nats, a mean over frames) is read as log1p(E / EVIDENCE_UNIT): a bin whose level rises 1 nat
above the margin for 1 % of the clip reads log 2."""
EVIDENCE_FLOOR = 1e-4
"""Call evidence (nats) added to every valid bin of the greedy residual (see BandPicker.forward)."""
EVIDENCE_FLOOR_P = 1e-7
"""The same floor for a statistic normalised to sum 1 over the valid bins (picker_inputs=global or power_variance)."""
CROP_FRACTION = 0.4
"""The body is differentiated on the bands' windows alone (:meth:`BandPicker.body_on_windows`) when the windows
with their receptive fields span at most this fraction of the grid's bins: from about 330 kHz up at the defaults.
The picker's forward and backward against the grid pass, 2 threads: 1.08x at 192 kHz (0.65 of the grid), 1.01x at
250 kHz (0.50), 0.98x at 300 kHz (0.42), 0.91x at 384 kHz (0.33), 0.83x at 500 kHz (0.26)."""
LOCAL_POWER_HZ = 1000.0
"""``local`` inputs: log mean power is read against its mean over +-this many Hz of valid bins."""


def band_capture(values: Tensor, band_bins: int) -> Tensor:
    """(B, G) -> (B, G): sum of ``values`` over [g, g + band_bins] (bins past G counting 0) for every start bin g.

    A box filter by cumsum, the window sums C[min(g + band_bins, G - 1)] - C[g - 1] (C[-1] = 0) written as three
    slice differences into one output: the greedy picker runs it once per band."""
    c = values.cumsum(-1)
    g = values.shape[-1]
    out = torch.empty_like(c)
    n = max(1, g - band_bins)  # starts 0 .. n - 1 end inside the grid (start 0 in any case, clamped)
    out[:, 0] = c[:, min(band_bins, g - 1)]
    torch.sub(c[:, band_bins + 1: band_bins + n], c[:, : n - 1], out=out[:, 1:n])
    torch.sub(c[:, g - 1: g], c[:, n - 1: g - 1], out=out[:, n:])
    return out


def valid_starts(freqs_hz: Tensor, sample_rate: Tensor, band_min_hz: float, band_width_hz: float) -> Tensor:
    """(B, G) bool: f_min <= f <= nyquist - W for each clip."""
    nyq = sample_rate.float()[:, None] / 2
    return (freqs_hz[None, :] >= band_min_hz) & (freqs_hz[None, :] <= nyq - band_width_hz + 1e-6)


class BandPicker(nn.Module):
    def __init__(self, cfg: HeterodyneConfig, grid_hz: float):
        super().__init__()
        self.cfg = cfg
        self.grid_hz = grid_hz
        self.band_bins = int(round(cfg.band_width_hz / grid_hz))
        self.window_bins = max(1, int(round(cfg.picker_window_hz / grid_hz)))
        layers: list[nn.Module] = []
        # local inputs leave the Nyquist and valid-start masks out of the body (invalid starts are masked at the
        # logits): a mask edge within a receptive field would otherwise make the same call look different in an
        # 8 kHz and a 96 kHz clip.
        self.feature_channels = 2 if cfg.picker_inputs == "local" else N_FEATURES
        ch_in = self.feature_channels
        for i in range(cfg.picker_layers):
            dil = 2**i
            layers += [dilated_conv(ch_in, cfg.picker_channels, cfg.picker_kernel, dil), nn.GELU()]
            ch_in = cfg.picker_channels
        self.body = nn.Sequential(*layers)
        # Bins on each side that one grid bin's body output depends on.
        self.receptive_half_width = sum((2**i) * (cfg.picker_kernel // 2) for i in range(cfg.picker_layers))
        # Pointwise head on [body features, evidence]: the body already gives every bin its neighbourhood, and the
        # head runs K times. Its first layer is split so the body part is computed once per clip and each band only
        # adds the (cheap, 2-channel) evidence term.
        c = cfg.picker_channels
        self.head_body = nn.Conv1d(c, c, 1)
        self.head_evidence = nn.Parameter(torch.randn(c, N_EVIDENCE) / N_EVIDENCE**0.5)
        self.head_out = nn.Conv1d(c, 1, 1)
        # Skip from the evidence to the logits with a learned positive gain: the picker starts as "the start that
        # would capture the most variance not yet captured" and learns corrections around it. Without it, a picker
        # can learn to lean on absolute features (log power is highest at low frequencies in wind and pink noise)
        # and stack all bands on one spot at rates it has not seen.
        self.capture_gain = nn.Parameter(torch.tensor([0.5413]))  # softplus(0.5413) = 1; 1-D for DeepSpeed
        if cfg.picker_init == "greedy":
            nn.init.zeros_(self.head_out.weight)
            nn.init.zeros_(self.head_out.bias)
        self.local_half_bins = max(1, int(round(LOCAL_POWER_HZ / grid_hz)))
        # The evidence is counted in its own units (nats, comparable across clips and rates) or as p(f).
        self.level_free = cfg.coverage_statistic == "call_evidence" and cfg.picker_inputs == "local"

    def features(self, statistic: Tensor, mean_power: Tensor, freq_valid: Tensor, start_valid: Tensor
                 ) -> tuple[Tensor, Tensor]:
        """Picker inputs (B, feature_channels, G) and the statistic the greedy evidence is counted in (B, G)."""
        cfg = self.cfg
        fv, sv = freq_valid.float(), start_valid.float()
        p = variance_distribution(statistic, freq_valid)
        level_free = self.level_free
        counted = statistic * fv if level_free else p
        if cfg.picker_inputs == "local":
            log_mean = torch.log(mean_power + (mean_power * fv).amax(-1, keepdim=True) * 1e-10 + 1e-30)
            # Mean over the valid bins within +-1 kHz: ratio of the local means of (value x mask) and of the mask.
            neighbourhood = (local_mean(log_mean * fv, self.local_half_bins, dim=-1)
                             / local_mean(fv, self.local_half_bins, dim=-1).clamp(min=1e-6))
            log_power = (log_mean - neighbourhood) * fv
            log_stat = (torch.log1p(counted / EVIDENCE_UNIT) if level_free else torch.log(p + 1e-6)) * fv
        else:
            # Against the mean over the clip's valid bins: shifts with the clip's bandwidth (the ablation).
            ref = (mean_power * fv).sum(-1, keepdim=True) / fv.sum(-1, keepdim=True).clamp(min=1.0)
            log_power = torch.log(mean_power / (ref + 1e-12) + 1e-6) * fv
            log_stat = torch.log(p + 1e-6) * fv
        channels = [log_power, log_stat] + ([fv, sv] if self.feature_channels == N_FEATURES else [])
        return torch.stack(channels, dim=1), counted

    def body_on_windows(self, x: Tensor, first_bin: Tensor, n: int) -> Tensor:
        """The body's output on bins first_bin .. first_bin + n - 1 of the grid, computed from those bins and one
        receptive field on each side only: (B, K, C, n), equal to ``body(x)`` there (to float round-off; zero
        outside [0, G)).

        Each window is cut out of the input with its receptive field, and the crops run through the body as one
        batch. Every layer's output is zeroed outside [0, G), as the grid's zero padding is: an output bin of the
        last layer then reads exactly the values it reads on the whole grid, and the crops' own edges (zero
        padded too) reach only bins outside the window. At 500 kHz the windows of 8 bands are a quarter of the
        grid, and the picker's forward and backward took 0.83x the time of differentiating the grid pass (2
        threads; at 192 kHz, where they are two thirds of it, 1.08x: hence CROP_FRACTION).

        Args:
            x: (B, C_in, G) the picker's inputs (:meth:`features`).
            first_bin: (B, K) long, each window's first grid bin (may lie below 0 or run past G).
            n: bins per window.
        """
        b, c_in, g = x.shape
        r = self.receptive_half_width
        pos = first_bin[..., None] - r + torch.arange(n + 2 * r, device=x.device)  # (B, K, n + 2r) grid bins
        inside = ((pos >= 0) & (pos < g)).to(x.dtype).flatten(0, 1)[:, None, :]  # (B*K, 1, n + 2r)
        k = pos.shape[1]
        crop = torch.gather(x, 2, pos.clamp(0, g - 1).view(b, 1, -1).expand(-1, c_in, -1))  # (B, C_in, K*(n+2r))
        h = crop.view(b, c_in, k, -1).transpose(1, 2).flatten(0, 1) * inside  # (B*K, C_in, n + 2r)
        for layer in self.body:
            h = layer(h)
            if isinstance(layer, nn.GELU):
                h = h * inside
        return h[..., r: r + n].unflatten(0, (b, k))

    def forward(self, statistic: Tensor, mean_power: Tensor, freq_valid: Tensor, sample_rate: Tensor) -> Tensor:
        """Pick the bands.

        Args:
            statistic: (B, G) >= 0, what the coverage losses measure per bin (call evidence in nats, or sigma^2).
            mean_power: (B, G) mean power per grid bin.
            freq_valid: (B, G) bool, bin at or below the clip's Nyquist.
            sample_rate: (B,) Hz.
        Returns: (B, K) band starts in Hz inside [f_min, nyquist - W] of each clip.
        """
        cfg = self.cfg
        b, g = mean_power.shape
        freqs = torch.arange(g, device=mean_power.device, dtype=torch.float32) * self.grid_hz
        start_valid = valid_starts(freqs, sample_rate, cfg.band_min_hz, cfg.band_width_hz)
        if not start_valid.any(-1).all():
            bad = sample_rate[~start_valid.any(-1)].tolist()
            raise ValueError(f"sample rates {bad} Hz are too low for one band of {cfg.band_width_hz:g} Hz starting at "
                             f">= {cfg.band_min_hz:g} Hz (need >= {cfg.min_sample_rate:g} Hz)")
        sv = start_valid.float()
        x, counted = self.features(statistic, mean_power, freq_valid, start_valid)
        w = self.window_bins
        # With a gradient to compute, and windows (with the body's receptive field on each side) that together
        # span at most CROP_FRACTION of the grid, the grid pass only finds the windows and the body is
        # differentiated on the windows alone (body_on_windows); otherwise the grid pass is differentiated and
        # gathered at the windows.
        crops = torch.is_grad_enabled() and cfg.num_bands * (2 * w + 1 + 2 * self.receptive_half_width) <= (
            CROP_FRACTION * g)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not crops):
            h_head = self.head_body(self.body(x))  # (B, C, G); head_body: the band-independent part of the head
        w_out, b_out = self.head_out.weight[:, :, 0], self.head_out.bias[0]  # (1, C), ()
        gain = nn.functional.softplus(self.capture_gain)
        # Grid padded by the window on both sides (invalid there), so every window is in range without clamping.
        pad = lambda x, value=0.0: nn.functional.pad(x, (w, w), value=value)  # noqa: E731
        freqs_padded, valid_padded = pad(freqs), pad(start_valid, False)
        h_padded = None if crops else pad(h_head)  # the windows' features, read off the grid pass
        offsets = torch.arange(2 * w + 1, device=mean_power.device)

        def logits_of(h_part: Tensor, log_capture: Tensor, covered: Tensor, valid: Tensor) -> Tensor:
            """h_part (..., C, n), log_capture / covered / valid (..., n) -> logits (..., n).

            z = h_part + head_evidence @ [log_capture; covered] and w_out @ gelu(z) as two batched matrix products
            that add into their first argument: the greedy loop runs this on the whole grid once per band, and
            written elementwise it was six passes over (B, C, G) instead of three (2.1x the time, 192 kHz)."""
            c, n = h_part.shape[-2:]
            lead = h_part.shape[:-2]
            evidence = torch.stack([log_capture, covered], dim=-2).reshape(-1, 2, n)  # (b, 2, n)
            rows = evidence.shape[0]
            z = torch.baddbmm(h_part.reshape(rows, c, n), self.head_evidence.expand(rows, -1, -1), evidence)
            skip = (gain * log_capture + b_out).reshape(rows, 1, n)
            logits = torch.baddbmm(skip, w_out.expand(rows, -1, -1), nn.functional.gelu(z)).view(lead + (n,))
            return logits.masked_fill(~valid, float("-inf"))

        def window_logits(win: Tensor, log_capture: Tensor, covered: Tensor) -> Tensor:
            """The logits (B, K, n) at the padded-grid indices win (B, K, n) (log_capture, covered windowed)."""
            b, k, n = win.shape
            if crops:
                h_win = self.head_body(self.body_on_windows(x, win[..., 0] - w, n).flatten(0, 1)).view(b, k, -1, n)
            else:
                h_win = torch.gather(h_padded, 2, win.reshape(b, 1, k * n).expand(-1, h_padded.shape[1], -1))
                h_win = h_win.view(b, -1, k, n).movedim(1, 2)  # (B, K, C, n)
            valid = torch.gather(valid_padded, 1, win.reshape(b, k * n)).view(b, k, n)
            return logits_of(h_win, log_capture, covered, valid)

        # The greedy bookkeeping (what is left to capture, what is covered, which window each band reads) is a
        # statistic of the bands already picked, run without gradient: each band learns where to go given the
        # earlier ones, and the coverage losses reach every band through its own mask. The logits are evaluated on
        # the whole grid only to find each arg-max; the differentiable part then runs once for all K bands on the
        # 2w+1 starts of their windows (a 15th of the grid at 48 kHz).
        # A faint floor of evidence on every valid bin: once the calls are all captured, the remaining bands spread
        # over the spectrum not yet covered instead of stacking on one start (ties of an all-zero residual), so no
        # band is wasted. It is far below any call (a call bin holds >= 1e-2 nats).
        floor = EVIDENCE_FLOOR if self.level_free else EVIDENCE_FLOOR_P
        wins = []
        with torch.no_grad():
            residual = counted + floor * freq_valid.float()
            uncovered = torch.ones_like(mean_power)
            # Each band's evidence on the padded grid, gathered at its window once after the loop.
            captures, covers = (mean_power.new_zeros(b, cfg.num_bands, g + 2 * w) for _ in range(2))
            for k in range(cfg.num_bands):
                log_capture = torch.log(band_capture(residual, self.band_bins) + 1e-6).mul_(sv)
                covered = 1.0 - uncovered
                captures[:, k, w: w + g], covers[:, k, w: w + g] = log_capture, covered
                grid_logits = logits_of(h_head, log_capture, covered, start_valid)  # (B, G)
                peak = grid_logits.argmax(-1, keepdim=True)
                win = peak + offsets  # (B, 2w+1) indices into the padded grid, centred on the arg-max
                # The window's logits are the grid's (the differentiable pass below recomputes them from the
                # window alone); the padding reads -inf, as an invalid start does.
                logits = torch.gather(pad(grid_logits, float("-inf")), 1, win)
                f_k = (torch.softmax(logits, dim=-1) * freqs_padded[win]).sum(-1)
                keep = 1.0 - cauchy_band_masks(freqs, f_k[:, None], cfg.band_width_hz, cfg.cauchy_width_hz)[:, 0]
                residual.mul_(keep)
                uncovered.mul_(keep)
                wins.append(win)
            win = torch.stack(wins, dim=1)  # (B, K, 2w+1)
            captures, covers = torch.gather(captures, 2, win), torch.gather(covers, 2, win)
        logits = window_logits(win, captures, covers)
        f = (torch.softmax(logits, dim=-1) * freqs_padded[win]).sum(-1)  # (B, K) Hz
        # Guards against float round-off only; the convex combination already lies in the valid range.
        lo = torch.full_like(f, cfg.band_min_hz)
        hi = (sample_rate.float()[:, None] / 2 - cfg.band_width_hz).expand_as(f)
        return torch.maximum(torch.minimum(f, hi), lo)
