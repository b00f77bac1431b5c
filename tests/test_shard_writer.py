"""Shard writer: round trip through plain webdataset + soundfile, manifest, keys, atomicity."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from data_tools.shard_writer import ManifestError, ShardWriter, read_manifest, sample_key

PCM16_STEP = 1.0 / 32768  # one quantisation step of PCM_16 in float


def _audio(rng: np.random.Generator, sample_rate: int, duration_s: float) -> np.ndarray:
    t = np.arange(int(round(duration_s * sample_rate))) / sample_rate
    x = 0.5 * np.sin(2 * np.pi * rng.uniform(200, 0.4 * sample_rate) * t) + 0.1 * rng.standard_normal(t.size)
    return np.clip(x, -1, 1).astype(np.float32)


def _samples(n: int = 9):
    """(audio, sample_rate, fields, split) tuples at mixed rates, with events and awkward recording ids."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        sample_rate = [8000, 22050, 96000][i % 3]
        duration_s = [0.2, 0.35, 0.1][i % 3]
        fields = {
            "recording_id": f"site A/rec.{i:02d}",
            "source": f"site A/rec.{i:02d}.wav",
            "channel": i % 2,
            "offset_s": 1.5 * i,
            "group": "site A",
            "labelled": i % 2 == 0,
            "events": [{"onset_s": 0.01, "offset_s": 0.05, "label": "call", "low_hz": 300.0, "high_hz": 900.0}],
            "meta": {"recorder": "AM-1", "gain_db": np.float32(6.0)},
        }
        out.append((_audio(rng, sample_rate, duration_s), sample_rate, fields, "train" if i < 6 else "val"))
    return out


def _write(out_dir, samples, **kwargs):
    kwargs.setdefault("name", "unit")
    kwargs.setdefault("command", "pytest")
    with ShardWriter(out_dir, **kwargs) as writer:
        keys = [writer.write(audio, sr, fields, split) for audio, sr, fields, split in samples]
    return keys


def _read_back(urls):
    """Plain webdataset, no project code: key -> (audio, sample_rate, json)."""
    ds = wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False)
    out = {}
    for sample in ds:
        audio, sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32")
        out[sample["__key__"]] = (audio, sr, json.loads(sample["json"]))
    return out


def test_round_trip_manifest_and_members(tmp_path):
    samples = _samples()
    # a small target forces several shards per split
    keys = _write(tmp_path, samples, target_shard_bytes=12_000, classes=["call", "other"])
    manifest = read_manifest(tmp_path)
    assert manifest["format"] == "a2v-het-shards/1" and manifest["classes"] == ["call", "other"]
    assert manifest["created_by"]["tool"] == "data_tools" and manifest["created_by"]["command"] == "pytest"

    # only final shards and the manifest are left: no temp files
    shard_names = [s for split in manifest["splits"].values() for s in split["shards"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["manifest.json", *shard_names])
    assert len(manifest["splits"]["train"]["shards"]) > 1
    assert manifest["splits"]["train"]["shards"][0] == "unit-train-000000.tar"

    for split, expected in (("train", samples[:6]), ("val", samples[6:])):
        info = manifest["splits"][split]
        seconds = [a.shape[0] / sr for a, sr, _, _ in expected]
        assert info["samples"] == len(expected)
        assert info["hours"] == pytest.approx(sum(seconds) / 3600)
        by_rate = {}
        for a, sr, _, _ in expected:
            by_rate[str(sr)] = by_rate.get(str(sr), 0.0) + a.shape[0] / sr / 3600
        assert info["hours_by_sample_rate"].keys() == by_rate.keys()
        for rate, hours in by_rate.items():
            assert info["hours_by_sample_rate"][rate] == pytest.approx(hours)
    for name in shard_names:
        assert manifest["sha256"][name] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    back = _read_back([str(tmp_path / s) for s in shard_names])
    assert sorted(back) == sorted(keys)
    for key, (audio, sr, fields, _) in zip(keys, samples):
        decoded, decoded_sr, info = back[key]
        assert decoded_sr == sr and decoded.shape == audio.shape
        np.testing.assert_allclose(decoded, audio, atol=PCM16_STEP)
        assert list(info) == ["sample_rate", "duration_s", "recording_id", "source", "channel", "offset_s",
                              "group", "labelled", "events", "meta"]
        assert info["sample_rate"] == sr and info["duration_s"] == audio.shape[0] / sr
        for field in ("recording_id", "source", "channel", "offset_s", "group", "labelled", "events"):
            assert info[field] == fields[field]
        assert info["meta"] == {"recorder": "AM-1", "gain_db": 6.0}

    # members alternate key.flac, key.json in write order
    with tarfile.open(tmp_path / "unit-train-000000.tar") as tar:
        names = tar.getnames()
    assert names[0::2] == [f"{k}.flac" for k in keys[: len(names) // 2]]
    assert names[1::2] == [f"{k}.json" for k in keys[: len(names) // 2]]


def test_keys_are_sanitised_and_unique(tmp_path):
    assert sample_key("site A/rec.01 (2)", 1, 12.3456) == "site_A_rec_01__2__c1_000012346"
    samples = _samples(2)
    keys = _write(tmp_path / "ok", samples)
    for key in keys:
        assert all(c.isalnum() or c in "_-" for c in key)
    assert keys[0] == "site_A_rec_00_c0_000000000"
    with pytest.raises(ValueError, match="duplicate sample key"):
        _write(tmp_path / "dup", [samples[0], samples[0]])


def test_pcm24_is_more_precise(tmp_path):
    audio, sr, fields, split = _samples(1)[0]
    _write(tmp_path, [(audio, sr, fields, split)], subtype="PCM_24")
    (decoded, _, _), = _read_back([str(tmp_path / "unit-train-000000.tar")]).values()
    np.testing.assert_allclose(decoded, audio, atol=2.0 / 2**23)


def test_same_input_gives_identical_bytes(tmp_path):
    _write(tmp_path / "a", _samples())
    _write(tmp_path / "b", _samples())
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


@pytest.mark.parametrize("target_shard_bytes", [10**9, 5_000])
def test_interruption_leaves_no_shard_and_no_manifest(tmp_path, target_shard_bytes):
    samples = _samples()
    with pytest.raises(RuntimeError, match="simulated"):
        with ShardWriter(tmp_path, "unit", target_shard_bytes=target_shard_bytes) as writer:
            for audio, sr, fields, split in samples:
                writer.write(audio, sr, fields, split)
            raise RuntimeError("simulated crash")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path)


def test_io_error_while_writing_drops_everything(tmp_path, monkeypatch):
    import data_tools.shard_writer as shard_writer

    calls = {"n": 0}
    real_add = shard_writer._add_member

    def failing_add(tar, name, data):
        calls["n"] += 1
        if calls["n"] == 7:  # in the middle of the 4th sample, after a shard was already finished
            raise OSError(28, "No space left on device")
        real_add(tar, name, data)

    monkeypatch.setattr(shard_writer, "_add_member", failing_add)
    samples = _samples()
    with pytest.raises(OSError, match="No space"):
        with ShardWriter(tmp_path, "unit", target_shard_bytes=5_000) as writer:
            for audio, sr, fields, split in samples:
                writer.write(audio, sr, fields, split)
    assert list(tmp_path.iterdir()) == []


def test_existing_data_set_needs_overwrite(tmp_path):
    samples = _samples(3)
    _write(tmp_path, samples)
    with pytest.raises(FileExistsError, match="overwrite"):
        ShardWriter(tmp_path, "unit")
    _write(tmp_path, samples[:1], overwrite=True)
    manifest = read_manifest(tmp_path)
    assert manifest["splits"]["train"]["samples"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "unit-train-000000.tar"]


def test_bad_input_raises_clear_errors(tmp_path):
    audio, sr, fields, _ = _samples(1)[0]
    with ShardWriter(tmp_path, "unit", classes=["call"]) as writer:
        with pytest.raises(ValueError, match="peaks at"):
            writer.write(audio * 3, sr, fields, "train")
        with pytest.raises(ValueError, match="1-D"):
            writer.write(np.stack([audio, audio]), sr, fields, "train")
        with pytest.raises(ValueError, match="NaN"):
            writer.write(np.full(10, np.nan, np.float32), sr, fields, "train")
        with pytest.raises(ValueError, match="unknown sample field"):
            writer.write(audio, sr, {**fields, "event": []}, "train")
        with pytest.raises(ValueError, match="onset_s"):
            writer.write(audio, sr, {**fields, "events": [{"onset_s": 0.0, "offset_s": 9.0, "label": "call"}]}, "train")
        with pytest.raises(ValueError, match="not one of the classes"):
            writer.write(audio, sr, {**fields, "events": [{"onset_s": 0.0, "offset_s": 0.1, "label": "x"}]}, "train")
        with pytest.raises(ValueError, match="split"):
            writer.write(audio, sr, fields, "training")
        with pytest.raises(ValueError, match="recording_id"):
            writer.write(audio, sr, {"recording_id": ""}, "train")
        with pytest.raises(ValueError, match="not JSON serialisable"):
            writer.write(audio, sr, {**fields, "meta": {"gain": float("nan")}}, "train")
        with pytest.raises(ValueError, match="offset_s' must be a finite number"):
            writer.write(audio, sr, {**fields, "offset_s": None}, "train")
        writer.write(audio, sr, fields, "train")  # the writer is still usable after rejected samples
    assert read_manifest(tmp_path)["splits"]["train"]["samples"] == 1
    with pytest.raises(ValueError, match="shard name"):
        ShardWriter(tmp_path / "x", "../escape")


def test_read_manifest_rejects_other_formats(tmp_path):
    _write(tmp_path, _samples(1))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": "other/2"}))
    with pytest.raises(ManifestError, match="format is 'other/2'"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "unit-train-000000.tar").write_bytes(b"tampered")
    assert read_manifest(tmp_path)  # checksums are only read when asked
    with pytest.raises(ManifestError, match="sha256 mismatch"):
        read_manifest(tmp_path, verify=True)
