"""``python -m data_tools shard`` and ``inspect``: windows, rates, channels, splits, resume, bad input, memory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import webdataset as wds

from data_tools.cli import main as cli_main
from data_tools.grouping import parse_split, split_for_group
from data_tools.shard import STATE_DIR, ShardOptions, recording_ids, shard_folder, window_events
from data_tools.shard_writer import read_manifest
from data_tools.sources import window_grid

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sample_rate, subtype=subtype)
    return path


def _noise(seconds: float, sample_rate: int, channels: int = 1, seed: int = 0, level: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal((int(round(seconds * sample_rate)), channels)) * level, -1, 1)
    return x[:, 0] if channels == 1 else x


def _read_shards(folder: Path, dtype: str = "float32") -> dict[str, tuple[np.ndarray, int, dict, str]]:
    """Every sample of every split through plain webdataset + soundfile: key -> (audio, rate, json, shard)."""
    manifest = read_manifest(folder, verify=True)
    out = {}
    for info in manifest["splits"].values():
        urls = [str(folder / name) for name in info["shards"]]
        for sample in wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                     empty_check=False):
            audio, rate = sf.read(io.BytesIO(sample["flac"]), dtype=dtype)
            assert sample["__key__"] not in out
            out[sample["__key__"]] = (audio, rate, json.loads(sample["json"]), sample["__url__"])
    return out


def _shard(in_dir: Path, out_dir: Path, *args: str) -> int:
    return cli_main(["shard", str(in_dir), str(out_dir), "--quiet", "--workers", "1", *args])


def _report(out_dir: Path) -> dict:
    return json.loads((out_dir / "report.json").read_text())


# --- pure planning ---------------------------------------------------------------------------------------------------


def test_window_grid_tail_policies_and_hops():
    # 25 samples at 1 Hz, windows of 10: two full windows, then 5 samples of tail
    assert [window_grid(25, 1, 10, 10, "keep").window(i) for i in range(3)] == [(0, 10, 0), (10, 10, 0), (20, 5, 0)]
    assert window_grid(25, 1, 10, 10, "pad").window(2) == (20, 5, 5)
    assert window_grid(25, 1, 10, 10, "drop").count == 2
    assert window_grid(20, 1, 10, 10, "keep").count == 2  # exact fit: no tail
    assert window_grid(25, 1, 10, 5, "keep").count == 4  # 0, 5, 10, 15: the last one ends at 25, no tail
    overlap = window_grid(27, 1, 10, 5, "keep")  # two samples more: a tail window from the next start, 20
    assert [overlap.window(i) for i in range(overlap.count)] == [(0, 10, 0), (5, 10, 0), (10, 10, 0), (15, 10, 0),
                                                                  (20, 7, 0)]
    gaps = window_grid(25, 1, 4, 10, "keep")  # 0-4, 10-14, 20-24: nothing left outside the gaps
    assert [gaps.window(i) for i in range(gaps.count)] == [(0, 4, 0), (10, 4, 0), (20, 4, 0)]
    short = window_grid(3, 1, 10, 10, "pad")  # shorter than one window: all tail
    assert short.count == 1 and short.window(0) == (0, 3, 7)
    assert window_grid(3, 1, 10, 10, "drop").count == 0


def test_window_events_clip_to_window_channel_and_nyquist():
    events = [
        {"onset_s": 1.0, "offset_s": 3.0, "label": "a", "low_hz": 100.0, "high_hz": 9000.0},
        {"onset_s": 4.0, "offset_s": 5.0, "label": "b", "channel": 1},
        {"onset_s": 2.0, "offset_s": 2.5, "label": "c", "low_hz": 5000.0, "high_hz": 6000.0},
        {"onset_s": 0.0, "offset_s": 2.0, "label": "touching"},  # ends where the window starts: not in it
    ]
    got, dropped = window_events(events, 2.0, 4.5, nyquist_hz=4000.0, channel=0)
    assert got == [{"onset_s": 0.0, "offset_s": 1.0, "label": "a", "low_hz": 100.0, "high_hz": 4000.0}]
    assert dropped == 1  # "c" lies wholly above 4 kHz
    got, _ = window_events(events, 2.0, 4.5, nyquist_hz=8000.0, channel=None)  # a mix-down hears every channel
    assert [(e["label"], e["onset_s"], e["offset_s"]) for e in got] == [("a", 0.0, 1.0), ("b", 2.0, 2.5),
                                                                        ("c", 0.0, 0.5)]
    assert "channel" not in got[1]


def test_split_rule_is_a_stable_hash_of_the_group():
    assert parse_split("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "a,b,c", "-0.1,0.6,0.5"):
        with pytest.raises(ValueError):
            parse_split(bad)
    groups = [f"site{i}" for i in range(2000)]
    splits = [split_for_group(g, (0.7, 0.2, 0.1)) for g in groups]
    shares = {s: splits.count(s) / len(groups) for s in ("train", "val", "test")}
    assert abs(shares["train"] - 0.7) < 0.05 and abs(shares["val"] - 0.2) < 0.05 and abs(shares["test"] - 0.1) < 0.05
    assert [split_for_group(g, (0.7, 0.2, 0.1)) for g in reversed(groups)] == splits[::-1]  # order-free
    assert split_for_group("x", None) == "all" and split_for_group("x", (0.0, 1.0, 0.0)) == "val"
    assert recording_ids(["a/b.wav", "a_b.flac", "c.wav"])["c.wav"] == "c"
    ids = recording_ids(["a/b.wav", "a_b.flac"])
    assert len(set(ids.values())) == 2 and all(v.startswith("a_b-") for v in ids.values())


# --- round trips -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_sources(tmp_path_factory):
    """A stereo 16-bit 48 kHz WAV (25 s), a 24-bit 96 kHz FLAC (12 s) and a float 8 kHz WAV (7 s)."""
    root = tmp_path_factory.mktemp("mixed")
    stereo = _noise(25.0, 48000, channels=2, seed=1)
    stereo[:, 1] *= 0.25  # channels differ, so a swap or a mix-down would show
    _write(root / "siteA" / "stereo.wav", stereo, 48000, "PCM_16")
    _write(root / "siteB" / "hires.flac", _noise(12.0, 96000, seed=2), 96000, "PCM_24")
    _write(root / "siteB" / "float.wav", _noise(7.0, 8000, seed=3), 8000, "FLOAT")
    return root


def test_windows_are_sample_exact_at_native_rates(mixed_sources, tmp_path):
    out = tmp_path / "out"
    assert _shard(mixed_sources, out, "--window-s", "10", "--shard-mb", "2") == 0
    samples = _read_shards(out)
    expected = {("siteA/stereo.wav", 48000, 2, "PCM_16"): [0, 10, 20],
                ("siteB/hires.flac", 96000, 1, "PCM_24"): [0, 10],
                ("siteB/float.wav", 8000, 1, "PCM_24"): [0]}
    assert len(samples) == 3 * 2 + 2 + 1
    for (source, rate, channels, subtype), offsets in expected.items():
        whole, file_rate = sf.read(mixed_sources / source, dtype="float32", always_2d=True)
        assert file_rate == rate
        for offset in offsets:
            for channel in range(channels):
                rid = source.rsplit(".", 1)[0].replace("/", "_")
                audio, sr, info, _ = samples[f"{rid}_c{channel}_{offset * 1000:09d}"]
                start = offset * rate
                ref = whole[start : start + 10 * rate, channel]
                assert sr == info["sample_rate"] == rate and info["channel"] == channel
                assert info["source"] == source and info["recording_id"] == rid and info["offset_s"] == offset
                assert info["duration_s"] == len(ref) / rate and info["labelled"] is False and info["events"] == []
                assert info["meta"]["source_sample_rate"] == rate and info["meta"]["source_channels"] == channels
                # PCM sources come back bit-exact; the float source within PCM_24's step
                np.testing.assert_array_equal(audio, ref) if subtype == "PCM_16" or "hires" in source else \
                    np.testing.assert_allclose(audio, ref, atol=2.0**-23)
                assert sf.info(io.BytesIO(_flac_bytes(out, samples, rid, channel, offset))).subtype == subtype
    manifest = read_manifest(out)
    assert manifest["splits"]["all"]["hours_by_sample_rate"] == {
        "8000": 7.0 / 3600, "48000": 2 * 25.0 / 3600, "96000": 12.0 / 3600}


def _flac_bytes(out, samples, rid, channel, offset) -> bytes:
    key = f"{rid}_c{channel}_{offset * 1000:09d}"
    url = samples[key][3]
    for sample in wds.WebDataset([url], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False):
        if sample["__key__"] == key:
            return sample["flac"]
    raise KeyError(key)


def test_lossy_and_aiff_sources_match_their_decoded_audio(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    stereo = _noise(12.0, 44100, channels=2, seed=5, level=0.1)
    sf.write(root / "a.mp3", stereo, 44100, format="MP3")
    sf.write(root / "b.ogg", stereo[: 12 * 22050], 22050, format="OGG", subtype="VORBIS")
    sf.write(root / "c.aiff", stereo[: 12 * 32000, 0], 32000, subtype="PCM_24")
    out = tmp_path / "out"
    assert _shard(root, out, "--window-s", "5") == 0
    samples = _read_shards(out)
    decoded = {name: sf.read(root / name, dtype="float32", always_2d=True) for name in ("a.mp3", "b.ogg", "c.aiff")}
    # 12 s (MP3 a little more: encoder padding) -> 3 windows of 5 s per channel
    assert len(samples) == sum(-(-len(x) // (5 * r)) * x.shape[1] for x, r in decoded.values()) == 15
    decoded = {name: x for name, (x, _) in decoded.items()}
    for key, (audio, rate, info, _) in samples.items():
        start = round(info["offset_s"] * rate)
        reference = decoded[info["source"]][start : start + len(audio), info["channel"]]
        assert len(reference) == len(audio), key
        # a seek into an MP3/Vorbis stream decodes the same samples as reading it through; PCM_16 rounding only
        np.testing.assert_allclose(audio, reference, atol=1.0 / 32768, err_msg=key)


def test_mixdown_padding_and_overlap(mixed_sources, tmp_path):
    out = tmp_path / "out"
    assert _shard(mixed_sources, out, "--window-s", "10", "--hop-s", "6", "--tail", "pad", "--channels", "mix",
                  "--pcm", "16") == 0
    samples = _read_shards(out)
    stereo, _ = sf.read(mixed_sources / "siteA" / "stereo.wav", dtype="float32")
    # 25 s, windows of 10 s every 6 s: 0, 6, 12 (ends at 22), then a tail window at 18 s: 7 s padded to 10
    keys = sorted(k for k in samples if k.startswith("siteA_stereo"))
    assert keys == [f"siteA_stereo_c0_{ms:09d}" for ms in (0, 6000, 12000, 18000)]
    audio, sr, info, _ = samples["siteA_stereo_c0_000006000"]
    np.testing.assert_allclose(audio, stereo[6 * sr : 16 * sr].mean(axis=1), atol=1.0 / 32768)
    assert info["meta"]["mixdown"] is True and info["channel"] == 0
    tail, sr, info, _ = samples["siteA_stereo_c0_000018000"]
    assert len(tail) == 10 * sr and info["meta"]["pad_s"] == 3.0 and not np.any(tail[7 * sr :])
    np.testing.assert_allclose(tail[: 7 * sr], stereo[18 * sr :].mean(axis=1), atol=1.0 / 32768)
    assert samples["siteB_float_c0_000000000"][2]["meta"]["pad_s"] == 3.0


def test_max_sr_resamples_like_the_whole_file_and_removes_aliases(tmp_path):
    rate = 96000
    t = np.arange(25 * rate) / rate
    # 1 kHz stays; 40 kHz is above the new Nyquist (16 kHz) and would alias to 8 kHz without a low-pass filter
    x = 0.4 * np.sin(2 * np.pi * 1000 * t) + 0.4 * np.sin(2 * np.pi * 40000 * t)
    _write(tmp_path / "in" / "bat.wav", x, rate, "PCM_16")
    out = tmp_path / "out"
    assert _shard(tmp_path / "in", out, "--max-sr", "32000", "--window-s", "10") == 0
    samples = _read_shards(out)
    source, _ = sf.read(tmp_path / "in" / "bat.wav", dtype="float32")
    whole = soxr.resample(source, rate, 32000)
    assert sorted(samples) == ["bat_c0_000000000", "bat_c0_000010000", "bat_c0_000020000"]
    for offset in (0, 10, 20):
        audio, sr, info, _ = samples[f"bat_c0_{offset * 1000:09d}"]
        assert sr == info["sample_rate"] == 32000 and info["meta"]["source_sample_rate"] == rate
        # window by window equals resampling the whole file, up to PCM_16 rounding
        np.testing.assert_allclose(audio, whole[offset * sr : offset * sr + len(audio)], atol=1.5 / 32768)
        spectrum = np.abs(np.fft.rfft(audio[sr : 2 * sr]))  # 1 s: 1 Hz bins
        assert spectrum[8000] < 1e-3 * spectrum[1000]


# --- splits and annotations ------------------------------------------------------------------------------------------


def test_groups_never_straddle_splits(tmp_path):
    root = tmp_path / "in"
    for site in range(8):
        for rec in range(3):
            _write(root / f"site{site}" / f"2024010{rec}_rec.wav", _noise(2.5, 8000, seed=site * 10 + rec), 8000)
    _write(root / "loose.wav", _noise(1.0, 8000), 8000)  # no site in its path: cannot be grouped by site
    out = tmp_path / "out"
    code = _shard(root, out, "--window-s", "1", "--group-by", "site", "--path-regex",
                  r"(?P<site>site\d)/(?P<date>\d{8})_", "--split", "0.5,0.25,0.25", "--shard-mb", "0.05")
    assert code == 3
    assert _report(out)["skipped"] == [{"file": "loose.wav", "reason": "no 'site' to group by: not in the path "
                                                                       "(--path-regex) nor in the annotation table"}]
    splits_of_group = defaultdict(set)
    for _, _, info, url in _read_shards(out).values():
        split = Path(url).name.split("-")[-2]
        splits_of_group[info["group"]].add(split)
        assert info["meta"]["site"] == info["group"] and len(info["meta"]["date"]) == 8
        assert split == split_for_group(info["group"], (0.5, 0.25, 0.25))
    assert len(splits_of_group) == 8 and all(len(s) == 1 for s in splits_of_group.values())
    assert len({s for v in splits_of_group.values() for s in v}) >= 2
    manifest = read_manifest(out)
    assert sum(info["samples"] for info in manifest["splits"].values()) == 8 * 3 * 3


def test_annotations_attach_to_windows_in_window_time(tmp_path):
    root = tmp_path / "in"
    _write(root / "a.wav", _noise(25.0, 16000, channels=2), 16000)
    _write(root / "b.wav", _noise(5.0, 16000), 16000)
    _write(root / "c.wav", _noise(5.0, 16000), 16000)
    table = tmp_path / "table.csv"
    table.write_text("file,onset_s,offset_s,label,low_hz,high_hz,channel\n"
                     "a.wav,8.5,11.0,call,1000,9000,\n"   # straddles the 10 s boundary; high above 8 kHz Nyquist
                     "a.wav,12.0,13.0,song,,,1\n"         # channel 1 only
                     "b.wav,4.5,6.0,late,,,\n"             # b.wav is 5 s long: reported, clipped
                     "missing.wav,1.0,2.0,call,,,\n", encoding="utf-8")
    out = tmp_path / "out"
    assert _shard(root, out, "--annotations", str(table)) == 3  # missing.wav matches no audio
    report = _report(out)
    assert report["annotations"]["unmatched"][0]["file"] == "missing.wav"
    assert "ANNOTATIONS NOT USED" in (out / "report.txt").read_text()
    samples = _read_shards(out)
    events = {k: (info["labelled"], info["events"]) for k, (_, _, info, _) in samples.items()}
    assert events["a_c0_000000000"] == (True, [{"onset_s": 8.5, "offset_s": 10.0, "label": "call", "low_hz": 1000.0,
                                               "high_hz": 8000.0}])
    assert events["a_c0_000010000"] == (True, [{"onset_s": 0.0, "offset_s": 1.0, "label": "call", "low_hz": 1000.0,
                                               "high_hz": 8000.0}])
    assert events["a_c1_000010000"][1][1] == {"onset_s": 2.0, "offset_s": 3.0, "label": "song"}
    assert events["a_c0_000020000"] == (True, [])  # a labelled window without events: a negative
    assert events["b_c0_000000000"] == (True, [{"onset_s": 4.5, "offset_s": 5.0, "label": "late"}])
    assert events["c_c0_000000000"] == (False, [])  # not in the table: unlabelled
    assert {"file": "b.wav", "reason": "1 event(s) reach past the end of the recording (5.000 s): clipped or lost"} \
        in report["warnings"]
    assert read_manifest(out)["classes"] == ["call", "late", "song"]
    # a broken table is a usage error: nothing is written
    bad = tmp_path / "bad.csv"
    bad.write_text("file,onset_s,offset_s,label\na.wav,3,2,x\n", encoding="utf-8")
    assert _shard(root, tmp_path / "out2", "--annotations", str(bad)) == 2
    assert not (tmp_path / "out2" / "manifest.json").exists()


# --- resume and failures ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for i in range(6):
        _write(root / f"r{i}.wav", _noise(6.0, [8000, 16000, 22050][i % 3], seed=i), [8000, 16000, 22050][i % 3])
    return root


def _options(**kwargs) -> ShardOptions:
    base = dict(window_s=2.0, shard_bytes=100_000, split=(0.6, 0.2, 0.2), name="set", progress=False,
                command="python -m data_tools shard IN OUT")
    return ShardOptions(**{**base, **kwargs})


class Interrupt(Exception):
    pass


def _stop_after(n: int):
    seen = []

    def hook(stats):
        seen.append(stats.name)
        if len(seen) >= n:
            raise Interrupt(f"stopped after {seen}")

    return hook


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "report.json"
            and p.name != "report.txt"}


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_run_resumes_to_identical_shards(many_files, tmp_path, workers):
    reference = tmp_path / "reference"
    assert shard_folder(many_files, reference, _options()).exit_code == 0
    n_shards = len(read_manifest(reference)["sha256"])
    assert n_shards >= 5

    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        shard_folder(many_files, out, _options(workers=workers), on_shard_done=_stop_after(2))
    assert not (out / "manifest.json").exists()
    done = sorted(p.name for p in out.glob("*.tar"))
    assert 2 <= len(done) < n_shards
    for name in done:  # whatever is under a final name is complete and identical to the reference
        assert (out / name).read_bytes() == (reference / name).read_bytes()
    # what a killed run leaves: temporary files of a shard, of the manifest, of a stats file
    (out / ".set-train-000009.tar.0badc0de.tmp").write_bytes(b"half a shard")
    (out / ".manifest.json.0badc0de.tmp").write_bytes(b"{")
    (out / STATE_DIR / "shards" / ".set-val-000000.tar.json.0badc0de.tmp").write_bytes(b"{")

    result = shard_folder(many_files, out, _options(workers=workers))
    assert result.exit_code == 0 and result.report["output"]["reused"] == len(done)
    assert _folder_bytes(out) == _folder_bytes(reference)  # manifest (with sha256) and every shard, byte for byte
    assert not list(out.rglob(".*.tmp"))
    again = shard_folder(many_files, out, _options())
    assert again.report["output"]["written"] == 0 and _folder_bytes(out) == _folder_bytes(reference)


def test_changed_options_rewrite_and_stale_shards_go(many_files, tmp_path):
    out = tmp_path / "out"
    shard_folder(many_files, out, _options())
    before = set(read_manifest(out)["sha256"])
    result = shard_folder(many_files, out, _options(window_s=3.0, split=None))
    after = set(read_manifest(out)["sha256"])
    assert result.report["output"]["reused"] == 0 and after.isdisjoint(before)  # split "all" now
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(after)
    assert sorted(p.name for p in (out / STATE_DIR / "shards").glob("*.json")) == sorted(f"{n}.json" for n in after)


def test_source_changing_mid_run_fails_that_shard_cleanly(many_files, tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for p in many_files.iterdir():
        (root / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"

    def touch_later_file(stats):
        # after the first shard, a file of later shards changes on disk (a copy still running, a re-export)
        if stats.name == "set-all-000000.tar":
            audio, rate = sf.read(root / "r5.wav", dtype="float32")
            sf.write(root / "r5.wav", np.concatenate([audio, audio]), rate, subtype="PCM_16")

    result = shard_folder(root, out, _options(split=None), on_shard_done=touch_later_file)
    assert result.exit_code == 1 and result.manifest is None and not (out / "manifest.json").exists()
    failed = result.report["failed_shards"]
    assert failed and all("r5.wav changed since it was checked" in f["reason"] for f in failed)
    for f in failed:
        assert not (out / f["shard"]).exists()
    assert not list(out.glob(".*.tmp"))
    assert "FAILED SHARDS" in (out / "report.txt").read_text()
    assert _shard(root, out, "--name", "set", "--window-s", "2", "--shard-mb", str(100_000 / 2**20)) == 0
    samples = _read_shards(out)
    assert sum(k.startswith("r5_") for k in samples) == 6  # 12 s now: six 2 s windows


# --- bad input and folders -------------------------------------------------------------------------------------------


def test_bad_inputs_are_reported_and_the_run_goes_on(tmp_path):
    root = tmp_path / "in"
    _write(root / "good.wav", _noise(3.0, 8000), 8000)
    (root / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(3000))
    (root / "empty.wav").write_bytes(b"")
    _write(root / "noframes.wav", np.zeros(0, dtype=np.float32), 8000)
    nan = _noise(3.0, 8000)
    nan[12345] = np.nan
    _write(root / "nan.wav", nan, 8000, "FLOAT")
    _write(root / "full.flac", _noise(3.0, 8000, seed=4), 8000)
    data = (root / "full.flac").read_bytes()
    (root / "truncated.flac").write_bytes(data[: len(data) // 2])
    (root / "full.flac").unlink()
    _write(root / "slow.wav", _noise(3.0, 500), 500)
    _write(root / "fast.wav", _noise(0.1, 700_000), 700_000)  # a real rate, but more than FLAC can store
    (root / "phone.m4a").write_bytes(os.urandom(100))
    (root / "notes.txt").write_text("not audio")
    (root / "._good.wav").write_bytes(b"macOS resource fork")  # hidden: ignored

    out = tmp_path / "out"
    assert _shard(root, out) == 3
    report = _report(out)
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"corrupt.wav", "empty.wav", "noframes.wav", "nan.wav", "truncated.flac", "slow.wav",
                            "fast.wav", "phone.m4a"}
    assert reasons["fast.wav"] == "700000 Hz: FLAC stores at most 655350 Hz; pass --max-sr to resample it"
    assert reasons["empty.wav"] == "empty file (0 bytes)"
    assert reasons["corrupt.wav"].startswith("cannot open as audio")
    assert reasons["noframes.wav"].startswith("zero-length")
    assert reasons["nan.wav"].startswith("non-finite sample (NaN/Inf) at frame 12345 (1.543 s)")
    assert reasons["truncated.flac"].startswith(("decoding failed", "truncated"))
    assert reasons["slow.wav"] == "sample rate 500 Hz is outside [1000, 1000000] Hz"
    assert reasons["phone.m4a"].startswith("unsupported format .m4a")
    assert report["files"]["ignored_not_audio"] == {".txt": 1} and report["exit_code"] == 3
    text = (out / "report.txt").read_text()
    assert "SKIPPED FILES (8)" in text and "nan.wav: non-finite" in text
    assert list(_read_shards(out)) == ["good_c0_000000000"]
    # the scan is cached: a rerun does not decode again, and gives the same report
    assert _shard(root, out) == 3 and {s["file"] for s in _report(out)["skipped"]} == set(reasons)
    for name in reasons:
        (root / name).unlink()
    assert _shard(root, out) == 0


def test_nothing_is_written_outside_out_dir(tmp_path):
    root = tmp_path / "in"
    _write(root / "odd dir" / "rec #1 (é).wav", _noise(1.5, 8000), 8000)
    _write(root / "..hidden-ish" / "x.wav", _noise(1.0, 8000), 8000)  # hidden folder: skipped
    out = root / "shards"  # OUT_DIR inside IN_DIR: pruned from the search
    before = {p for p in tmp_path.rglob("*")}
    assert _shard(root, out, "--window-s", "1") == 0
    assert _shard(root, out, "--window-s", "1") == 0
    created = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out for p in created)
    samples = _read_shards(out)
    # " #", " (é)" -> "_" per character; then "_c0_" and the offset in ms
    assert sorted(samples) == ["odd_dir_rec__1_____c0_000000000", "odd_dir_rec__1_____c0_000001000"]
    assert samples["odd_dir_rec__1_____c0_000000000"][2]["source"] == "odd dir/rec #1 (é).wav"
    assert _report(out)["files"]["audio_found"] == 1
    assert _shard(root / "odd dir", root) == 2  # IN_DIR inside OUT_DIR: refused
    assert _shard(tmp_path / "nothing", tmp_path / "o") == 2 and not (tmp_path / "o").exists()
    (tmp_path / "no-audio").mkdir()
    assert _shard(tmp_path / "no-audio", tmp_path / "o") == 2 and not (tmp_path / "o").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text("{}")
    assert _shard(root, foreign) == 2  # someone else's data set: needs --overwrite
    assert (foreign / "manifest.json").read_text() == "{}"
    assert _shard(root, foreign, "--overwrite", "--window-s", "1") == 0
    assert read_manifest(foreign)["splits"]["all"]["samples"] == 2


# --- inspect ---------------------------------------------------------------------------------------------------------


def test_inspect_counts_hours_classes_and_draws_a_png(tmp_path, capsys):
    root = tmp_path / "in"
    _write(root / "a.wav", _noise(4.0, 8000), 8000)
    _write(root / "b.wav", _noise(2.0, 32000), 32000)
    table = tmp_path / "t.csv"
    table.write_text("file,onset_s,offset_s,label\na.wav,0.5,1.5,x\na.wav,2.5,3.0,y\na.wav,3.1,3.2,y\n")
    out = tmp_path / "out"
    assert _shard(root, out, "--window-s", "2", "--annotations", str(table)) == 0
    png = tmp_path / "plots" / "summary.png"
    capsys.readouterr()
    assert cli_main(["inspect", str(out), "--json", "--png", str(png), "--verify"]) == 0
    summary = json.loads(capsys.readouterr().out)
    s = summary["splits"]["all"]
    assert s["samples"] == 3 and s["labelled_samples"] == 2 and s["recordings"] == 2
    assert s["hours_by_sample_rate"] == {"8000": 4.0 / 3600, "32000": 2.0 / 3600}
    assert summary["total"]["events_by_class"] == {"x": 1, "y": 2}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli_main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "events by class: x 1, y 2" in text and "32k" in text
    assert cli_main(["inspect", str(tmp_path)]) == 2  # no manifest


# --- memory ----------------------------------------------------------------------------------------------------------


PEAK_RSS_SCRIPT = textwrap.dedent("""
    import resource, subprocess, sys
    code = subprocess.run([sys.executable, "-m", "data_tools", *sys.argv[1:]], stdout=subprocess.DEVNULL).returncode
    print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux: the largest process
""")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux only")
def test_sharding_a_2h_96khz_file_keeps_peak_rss_under_1_gib(tmp_path):
    rate, block_s, hours = 96000, 60, 2.0
    path = tmp_path / "in" / "long.flac"
    path.parent.mkdir()
    rng = np.random.default_rng(0)
    # written block by block: low-level noise (a few LSB) keeps the FLAC small; 2 h = 691 M samples
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as fh:
        for _ in range(int(hours * 3600 / block_s)):
            fh.write(rng.integers(-3, 4, size=block_s * rate, dtype=np.int16))
    out = tmp_path / "out"
    # a fresh wrapper process, so RUSAGE_CHILDREN sees only the shard run and its workers
    run = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT, "shard", str(path.parent), str(out), "--quiet",
                          "--workers", "2", "--shard-mb", "512"],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    code, peak_kib = map(int, run.stdout.split())
    assert code == 0
    manifest = read_manifest(out)
    assert manifest["splits"]["all"]["samples"] == 720
    assert manifest["splits"]["all"]["hours_by_sample_rate"] == {"96000": pytest.approx(2.0)}
    # the whole file as float32 would be 2.6 GiB, as int16 1.3 GiB
    assert peak_kib * 1024 < 2**30, f"peak RSS {peak_kib / 1024:.0f} MiB"
