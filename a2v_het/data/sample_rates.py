"""The sample rates of the synthetic benchmark sets: the one place for them.

Training sees only ``TRAIN_SAMPLE_RATES``; evaluation at ``UNSEEN_SAMPLE_RATES`` asks whether a frontend works at
rates it has never seen (every figure in BENCHMARKS.md marked "unseen" uses them). Below 8 kHz, between the
training rates, and up to twice the highest. ``ULTRASONIC_SAMPLE_RATES`` go on to bat detectors' rates, 4-10x the
highest training rate (BENCHMARKS.md's "above 96 kHz" figures).
"""

from __future__ import annotations

TRAIN_SAMPLE_RATES: tuple[int, ...] = (8000, 16000, 22050, 32000, 44100, 48000)
"""Hz: an 8 kHz collar to a 48 kHz handheld (``data_tools synth`` default, ``data.synth_sample_rates``)."""

UNSEEN_SAMPLE_RATES: tuple[int, ...] = (6000, 12000, 18000, 24000, 38000, 64000, 96000)
"""Hz: never in training (``data.synth_eval_sample_rates``, the zoo's unseen split)."""

ULTRASONIC_SAMPLE_RATES: tuple[int, ...] = (192000, 250000, 384000, 500000)
"""Hz: bat detectors, never in training (``data_tools synth --preset ultrasonic``'s default, the zoo's
``test_high`` split)."""
