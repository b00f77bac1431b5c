"""Synthetic data: determinism, events inside the clip and below Nyquist, ground truth that matches the audio."""

from __future__ import annotations

import csv
import json
import threading

import numpy as np
import soundfile as sf
import pytest
from scipy.signal import spectrogram

from data_tools.cli import main as cli_main
from data_tools.shard_writer import read_manifest
from data_tools.synth import (
    BASIC_CALL_TYPES,
    CALL_TYPES,
    F_MIN_HZ,
    ensure_synth_shards,
    make_clip,
    parse_sample_rates,
    preset_classes,
    synth_clip,
    write_synth_shards,
    write_synthetic_calls,
)

EVAL_RATES = [6000, 12000, 18000, 24000, 38000, 64000, 96000]


def _clip(preset: str, sample_rate: int, seed: int, duration_s: float = 3.0):
    return make_clip(np.random.default_rng([seed, sample_rate]), preset, sample_rate, duration_s)


def _spectrogram(audio: np.ndarray, sample_rate: int):
    """Power STFT with a ~16 ms Hann window (62.5 Hz bins at every rate), hop = window / 4.

    Returns (freqs Hz (F,), frame centres s (N,), power (F, N), bin width Hz)."""
    nperseg = int(2 ** np.round(np.log2(0.016 * sample_rate)))
    f, t, power = spectrogram(audio.astype(np.float64), fs=sample_rate, window="hann", nperseg=nperseg,
                              noverlap=3 * nperseg // 4, mode="psd")
    return f, t, power, f[1] - f[0]


def _band(f: np.ndarray, df: float, low: float, high: float) -> np.ndarray:
    """Bins whose [f - df/2, f + df/2] intersects [low, high] (a 5 Hz-wide tone band still gets its bin)."""
    return (f + df / 2 >= low) & (f - df / 2 <= high)


def _energy_ratios(audio, sample_rate, events):
    """Per event: (mean STFT power in its band during it / in its band outside it,
    mean power in its band during it / mean power in the other bands during it).

    "During" = frame centre inside [onset, offset]; "outside" = the frame's window clear of the event and of every
    other event whose band intersects this one (so a second call in the same band does not count as background).
    """
    f, t, power, df = _spectrogram(audio, sample_rate)
    half_window = (f.size - 1) * 2 / sample_rate / 2
    usable = (f >= F_MIN_HZ) & (f <= 0.45 * sample_rate)
    out = []
    for i, e in enumerate(events):
        band = _band(f, df, e["low_hz"], e["high_hz"])
        during = (t >= e["onset_s"]) & (t <= e["offset_s"])
        clear = (t + half_window < e["onset_s"]) | (t - half_window > e["offset_s"])
        for j, other in enumerate(events):
            if j != i and (_band(f, df, other["low_hz"], other["high_hz"]) & band).any():
                clear &= (t + half_window < other["onset_s"]) | (t - half_window > other["offset_s"])
        guard = max(3 * df, 100.0)
        other_bands = usable & ~_band(f, df, e["low_hz"] - guard, e["high_hz"] + guard)
        assert during.any() and clear.any()
        inside = power[band][:, during].mean()
        out.append((inside / power[band][:, clear].mean(),
                    inside / power[other_bands][:, during].mean() if other_bands.any() else np.inf))
    return out


def test_make_clip_is_deterministic():
    for preset in ("basic", "field"):
        a1, e1, m1 = _clip(preset, 22050, seed=5)
        a2, e2, m2 = _clip(preset, 22050, seed=5)
        a3, e3, _ = _clip(preset, 22050, seed=6)
        np.testing.assert_array_equal(a1, a2)
        assert e1 == e2 and m1 == m2
        assert a1.shape == a3.shape and not np.array_equal(a1, a3)


@pytest.mark.parametrize("preset", ["basic", "field"])
@pytest.mark.parametrize("sample_rate", [4000, 8000, 22050, 48000, *EVAL_RATES])
def test_events_fit_clip_and_nyquist(preset, sample_rate):
    duration_s = 1.0  # short clips squeeze the call placement hardest
    allowed = BASIC_CALL_TYPES if preset == "basic" else CALL_TYPES
    for seed in range(12):
        audio, events, meta = _clip(preset, sample_rate, seed, duration_s)
        assert audio.dtype == np.float32 and audio.shape == (int(round(duration_s * sample_rate)),)
        assert np.isfinite(audio).all() and np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)
        assert meta["preset"] == preset and len(events) >= 1
        for e in events:
            assert set(e) == {"onset_s", "offset_s", "low_hz", "high_hz", "label"}
            assert e["label"] in allowed
            assert 0.0 <= e["onset_s"] < e["offset_s"] <= duration_s
            assert F_MIN_HZ <= e["low_hz"] < e["high_hz"] <= 0.9 * sample_rate / 2
        if preset == "basic":
            assert 1 <= len(events) <= 3
            for a, b in zip(events, events[1:]):
                assert a["offset_s"] <= b["onset_s"], "basic calls must not overlap in time"
        else:
            assert 2 <= len(events) <= 5 and len(meta["snr_db"]) == len(events)


@pytest.mark.parametrize("sample_rate", [6000, 8000, 22050, 96000])
def test_basic_ground_truth_matches_audio(sample_rate):
    for seed in range(4):
        audio, events, _ = _clip("basic", sample_rate, seed)
        for event, (vs_time, vs_bands) in zip(events, _energy_ratios(audio, sample_rate, events)):
            # -40 dB background: the call's box must stand out by far in time and in frequency
            assert vs_time > 100, (event, vs_time)
            assert vs_bands > 100, (event, vs_bands)


@pytest.mark.parametrize("sample_rate", [8000, 24000, 96000])
def test_field_ground_truth_matches_audio(sample_rate):
    ratios, strong = [], []
    for seed in range(6):
        audio, events, meta = _clip("field", sample_rate, seed)
        for event, snr, (vs_time, _) in zip(events, meta["snr_db"], _energy_ratios(audio, sample_rate, events)):
            # calls sit 0-20 dB above a background that may gust (wind): every box holds more energy than the same
            # band elsewhere, and clearly more when the call is >= 10 dB above the background
            assert vs_time > 1.2, (event, snr, vs_time)
            ratios.append(vs_time)
            if snr >= 10:
                strong.append(vs_time)
    assert np.median(ratios) > 5
    assert strong and min(strong) > 2


@pytest.mark.parametrize("sample_rate", [6000, 8000, 48000, 96000, 192000])
def test_field_hard_calls_overlap_sit_below_wind_and_rain_and_stacks_spread(sample_rate):
    """field_hard: 3-6 calls, the first two overlapping in time, every call's RMS 10-30 dB below the background's
    (wind and rain always present), harmonic stacks wider than one 2 kHz band where the rate allows."""
    widest = 0.0
    for seed in range(10):
        audio, events, meta = _clip("field_hard", sample_rate, seed)
        assert np.isfinite(audio).all() and np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)
        assert {"wind", "rain"} <= set(meta["background"])
        assert 3 <= len(events) <= 6 and len(meta["snr_db"]) == len(events)
        for e in events:
            assert F_MIN_HZ <= e["low_hz"] < e["high_hz"] <= 0.9 * sample_rate / 2
            assert 0.0 <= e["onset_s"] < e["offset_s"] <= 3.0
        spans = sorted((e["onset_s"], e["offset_s"]) for e in events)
        assert any(b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])  # some pair overlaps
        widest = max([widest] + [e["high_hz"] - e["low_hz"] for e in events if e["label"] == "harmonic"])
    if sample_rate >= 48000:
        assert widest > 4000.0


def test_field_hard_calls_are_quieter_than_the_background():
    """With every call 10-30 dB below the whole background, no call stands far above the background in its own band
    (the field preset allows 20 dB) and some lie below it."""
    snrs = [snr for seed in range(8) for snr in _clip("field_hard", 48000, seed)[2]["snr_db"]]
    assert max(snrs) < 25.0  # no call is far above the background in its own band
    assert np.mean(np.asarray(snrs) < 0.0) > 0.2  # and many lie below it


def test_field_has_all_call_types_and_a_static_hum():
    labels, hum_checked = set(), 0
    for seed in range(16):
        sample_rate = 16000
        audio, events, meta = _clip("field", sample_rate, seed)
        labels.update(e["label"] for e in events)
        assert set(meta["background"]) <= {"white", "pink", "hum", "wind"}
        assert {"white", "pink"} & set(meta["background"])
        if "hum" not in meta["background"]:
            continue
        # The hum's fundamental is a steady spectral line: far above its neighbourhood, nearly constant over time
        # (frames near calls covering that frequency are left out).
        f0 = meta["hum_hz"][0]
        nperseg = int(0.064 * sample_rate)
        f, t, power = spectrogram(audio.astype(np.float64), fs=sample_rate, nperseg=nperseg, noverlap=nperseg // 2)
        quiet = np.ones(t.size, bool)
        for e in events:
            if e["low_hz"] - 50 <= f0 <= e["high_hz"] + 50:
                quiet &= (t + 0.032 < e["onset_s"]) | (t - 0.032 > e["offset_s"])
        line = power[np.argmin(np.abs(f - f0)), quiet]
        neighbours = power[(np.abs(f - f0) > 100) & (np.abs(f - f0) < 500)][:, quiet]
        assert line.mean() > 10 * np.median(neighbours)
        assert line.std() / line.mean() < 0.35
        hum_checked += 1
    assert labels == set(CALL_TYPES)
    assert hum_checked >= 3


def test_bad_arguments_raise_clear_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="preset"):
        make_clip(rng, "forest", 16000)
    with pytest.raises(ValueError, match="sample_rate"):
        make_clip(rng, "basic", 2000)
    with pytest.raises(ValueError, match="duration_s"):
        make_clip(rng, "basic", 16000, 0.1)
    with pytest.raises(ValueError, match="'8k'"):
        parse_sample_rates("8000,8k")


def test_write_synth_shards_is_byte_identical_and_labelled(tmp_path):
    kwargs = dict(preset="field", n_clips=6, sample_rates=[8000, 24000], duration_s=0.5, seed=3, split="val",
                  command="test")
    m1 = write_synth_shards(tmp_path / "a", **kwargs)
    m2 = write_synth_shards(tmp_path / "b", workers=2, **kwargs)
    write_synth_shards(tmp_path / "c", **{**kwargs, "seed": 4})
    assert m1.read_bytes() == m2.read_bytes()
    man1, man3 = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "c")
    for shard in man1["sha256"]:
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    assert man1["sha256"] != man3["sha256"]
    assert man1["classes"] == list(CALL_TYPES)
    split = man1["splits"]["val"]
    assert split["samples"] == 6 and sum(split["hours_by_sample_rate"].values()) == pytest.approx(6 * 0.5 / 3600)
    assert set(split["hours_by_sample_rate"]) <= {"8000", "24000"}


def test_cli_synth_writes_shards(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["synth", str(out), "--preset", "basic", "--clips", "3", "--duration", "0.5",
            "--sample-rates", "8000,16000", "--split", "test", "--seed", "1", "--workers", "1", "--quiet"]
    assert cli_main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["test"]["samples"] == 3
    assert manifest["created_by"]["command"].startswith("python -m data_tools synth ")
    # a second run into the same folder is refused with a one-line error, and --overwrite replaces the data set
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "overwrite" in capsys.readouterr().err
    assert cli_main([*args, "--overwrite"]) == 0


def _recipe_step(tmp_path, **kw):
    args = dict(preset="field", n_clips=4, n_eval_clips=3, sample_rates=[8000, 16000], eval_sample_rates=[12000],
                duration_s=0.5, seed=5)
    ensure_synth_shards(tmp_path / "synth", tmp_path / "synth-eval", **{**args, **kw})


def _same_shards(a, b):
    man_a, man_b = read_manifest(a), read_manifest(b)
    assert man_a["sha256"] == man_b["sha256"] and man_a["splits"] == man_b["splits"]


def test_recipe_data_step_writes_what_is_missing_as_the_loop_did(tmp_path):
    """The data step of data.synthesize_if_missing: train (seed) and unseen-rate eval (seed + 1) shards, the same
    bytes as write_synth_shards with the recipe's arguments (what the loop wrote before the step moved out)."""
    _recipe_step(tmp_path)
    write_synth_shards(tmp_path / "ref", "field", 4, [8000, 16000], 0.5, seed=5, split="train")
    write_synth_shards(tmp_path / "ref-eval", "field", 3, [12000], 0.5, seed=6, split="val")
    _same_shards(tmp_path / "synth", tmp_path / "ref")
    _same_shards(tmp_path / "synth-eval", tmp_path / "ref-eval")
    assert set(read_manifest(tmp_path / "synth")["splits"]) == {"train"}
    # a folder with a manifest is left alone; only the missing one is written again
    before = (tmp_path / "synth" / "manifest.json").stat().st_mtime_ns
    for path in (tmp_path / "synth-eval").iterdir():
        path.unlink()
    (tmp_path / "synth-eval").rmdir()
    _recipe_step(tmp_path, n_clips=99)
    assert (tmp_path / "synth" / "manifest.json").stat().st_mtime_ns == before
    _same_shards(tmp_path / "synth-eval", tmp_path / "ref-eval")


def test_recipe_data_step_other_ranks_wait_for_the_manifests(tmp_path):
    with pytest.raises(FileNotFoundError, match="did not appear within"):
        _recipe_step(tmp_path, is_main=False, wait_s=0.2, poll_s=0.05)
    assert not (tmp_path / "synth").exists()  # a waiting rank writes nothing
    writer = threading.Timer(0.3, _recipe_step, args=(tmp_path,))
    writer.start()
    try:
        _recipe_step(tmp_path, is_main=False, wait_s=60, poll_s=0.05)
    finally:
        writer.join()
    assert (tmp_path / "synth" / "manifest.json").is_file() and (tmp_path / "synth-eval" / "manifest.json").is_file()


def test_synthetic_call_set_is_one_labelled_clip_per_call(tmp_path, capsys):
    labels = write_synthetic_calls(tmp_path / "calls", n_recordings=4, seed=2, sample_rates=[8000, 22050],
                                   duration_s=1.0)
    with open(labels, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["file", "label", "group"]
    expected = []
    for i in range(4):
        sr, audio, events, _ = synth_clip("field", 2, i, [8000, 22050], 1.0)
        for e in events:
            expected.append((e["label"], f"rec{i:04d}", sr, e["offset_s"] - e["onset_s"]))
    assert [(r["label"], r["group"]) for r in table] == [x[:2] for x in expected]
    for row, (_, _, sr, length_s) in zip(table, expected):
        info = sf.info(row["file"])
        assert info.samplerate == sr and info.duration <= length_s + 0.1 + 2.0 / sr
    # the same set from the command line
    assert cli_main(["synth-calls", str(tmp_path / "cli"), "--recordings", "4", "--seed", "2", "--sample-rates",
                     "8000,22050", "--duration", "1.0"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "labels.csv")
    with open(tmp_path / "cli" / "labels.csv", newline="") as fh:
        assert [(r["label"], r["group"]) for r in csv.DictReader(fh)] == [x[:2] for x in expected]


@pytest.mark.parametrize("sample_rate", [8000, 48000, 192000, 384000, 500000])
def test_ultrasonic_has_bat_like_fm_pulse_trains_whose_boxes_hold_their_energy(sample_rate):
    """ultrasonic: field backgrounds and call types plus FM pulse trains (2-8 ms downward sweeps every 50-150 ms);
    at 192-500 kHz the sweeps lie above 9 kHz and reach past 60 kHz (where bats call), at every rate inside [150 Hz,
    0.9 Nyquist], and
    each box holds more energy than the same band outside it."""
    trains, ratios = [], []
    for seed in range(6):
        audio, events, meta = _clip("ultrasonic", sample_rate, seed)
        assert np.isfinite(audio).all() and np.abs(audio).max() == pytest.approx(0.9, abs=1e-6)
        assert 2 <= len(events) <= 5 and len(meta["snr_db"]) == len(events)
        for e in events:
            assert e["label"] in CALL_TYPES + ("fm_pulse_train",)
            assert F_MIN_HZ <= e["low_hz"] < e["high_hz"] <= 0.9 * sample_rate / 2
            assert 0.0 <= e["onset_s"] < e["offset_s"] <= 3.0
        trains += [e for e in events if e["label"] == "fm_pulse_train"]
        ratios += [vs_time for e, (vs_time, _) in zip(events, _energy_ratios(audio, sample_rate, events))
                   if e["label"] == "fm_pulse_train"]
    assert len(trains) >= 6
    assert preset_classes("ultrasonic") == list(CALL_TYPES) + ["fm_pulse_train"]
    if sample_rate >= 192000:
        assert min(e["low_hz"] for e in trains) > 9000.0
        assert max(e["high_hz"] for e in trains) > 60000.0
    assert min(ratios) > 1.2 and np.median(ratios) > 3


def test_cli_synth_ultrasonic_defaults_to_bat_detector_rates(tmp_path, capsys):
    """Without --sample-rates the ultrasonic preset draws bat detectors' rates (192-500 kHz), never above 96 kHz."""
    assert cli_main(["synth", str(tmp_path / "u"), "--preset", "ultrasonic", "--clips", "6", "--duration", "0.3",
                     "--split", "val", "--workers", "1"]) == 0
    capsys.readouterr()
    rates = json.loads((tmp_path / "u" / "manifest.json").read_text())["splits"]["val"]["hours_by_sample_rate"]
    assert rates and {int(float(r)) for r in rates} <= {192000, 250000, 384000, 500000}
