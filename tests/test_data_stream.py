"""Streaming: train/eval loaders over real shards, corrupt samples, exact-once eval, collation, targets."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter
from itertools import product

import numpy as np
import pytest
import soundfile as sf
import torch

from a2v_het.data.audio import CorruptSampleError, decode_flac
from a2v_het.data.collate import collate_audio, znorm
from a2v_het.data.stream import (
    SKIPPED,
    batch_with_skips,
    clip_events,
    crop_sample,
    eval_partition,
    make_eval_loader,
    make_train_loader,
)
from a2v_het.data.targets import events_to_frame_targets
from data_tools.shard_writer import read_manifest
from data_tools.synth import write_synth_shards

RATES = (8000, 16000, 48000)
CLIP_S = 1.0


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """24 one-second basic clips at three rates in several small shards; returns (folder, {key: sample_rate})."""
    folder = tmp_path_factory.mktemp("shards")
    write_synth_shards(folder, "basic", 24, sample_rates=RATES, duration_s=CLIP_S, seed=1, split="train",
                       target_shard_bytes=120_000, command="pytest")
    return folder, _keys_and_rates(folder)


def _keys_and_rates(folder) -> dict[str, int]:
    out = {}
    manifest = read_manifest(folder)
    for name in manifest["splits"]["train"]["shards"]:
        with tarfile.open(folder / name) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    out[member.name[: -len(".json")]] = json.load(tar.extractfile(member))["sample_rate"]
    return out


def _members(path) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def _write_tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def corrupt_shard(shards, tmp_path_factory):
    """One shard: the first 6 good samples, plus 3 bad ones: garbage FLAC bytes, no JSON member, a malformed event."""
    folder, _ = shards
    good = _members(folder / read_manifest(folder)["splits"]["train"]["shards"][0])[:12]
    info = json.loads(good[1][1])
    bad_event = json.dumps({**info, "events": [{"onset_s": "soon", "offset_s": 1.0, "label": "tone"}]}).encode()
    members = good[:4] + [
        ("bad_c0_000000000.flac", b"fLaC" + os.urandom(2000)), ("bad_c0_000000000.json", good[1][1]),
        ("nojson_c0_000000000.flac", good[0][1]),
        ("badevent_c0_000000000.flac", good[0][1]), ("badevent_c0_000000000.json", bad_event),
    ] + good[4:]
    path = tmp_path_factory.mktemp("corrupt") / "corrupt-train-000000.tar"
    _write_tar(path, members)
    return str(path), {name[: -len(".flac")] for name, _ in good if name.endswith(".flac")}


@pytest.fixture(scope="module")
def truncated_shard(shards, tmp_path_factory):
    """One shard: 6 good samples plus 2 whose FLAC lies about its length: the first half of a FLAC member (cut
    mid-stream, as a truncated copy leaves it), and a complete FLAC shorter than the JSON's duration_s."""
    folder, _ = shards
    good = _members(folder / read_manifest(folder)["splits"]["train"]["shards"][0])[:12]
    flac, info = good[0][1], good[1][1]
    audio, sr = sf.read(io.BytesIO(flac), dtype="float32")
    short = io.BytesIO()
    sf.write(short, audio[: len(audio) // 2], sr, format="FLAC", subtype="PCM_16")
    members = good[:6] + [
        ("cut_c0_000000000.flac", flac[: len(flac) // 2]), ("cut_c0_000000000.json", info),
        ("short_c0_000000000.flac", short.getvalue()), ("short_c0_000000000.json", info),
    ] + good[6:]
    path = tmp_path_factory.mktemp("truncated") / "truncated-train-000000.tar"
    _write_tar(path, members)
    return str(path), {name[: -len(".flac")] for name, _ in good if name.endswith(".flac")}


def _collect(loader):
    return list(loader)


# --- train loader ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_yields_cropped_mixed_rate_batches(shards, num_workers):
    folder, rates = shards
    loader = make_train_loader(str(folder), batch_size=4, duration_s=0.5, num_workers=num_workers, seed=0,
                               samples_per_epoch=32, rank=0, world_size=1)
    batches = _collect(loader)
    assert len(batches) == loader.num_batches == 8 // max(1, num_workers) * max(1, num_workers)
    mixed = 0
    for batch in batches:
        wave, lengths, sample_rate = batch["wave"], batch["lengths"], batch["sample_rate"]
        assert wave.dtype == torch.float32 and lengths.dtype == torch.int64 and sample_rate.dtype == torch.int64
        assert wave.shape == (4, int(lengths.max())) and len(batch["keys"]) == 4
        for b, key in enumerate(batch["keys"]):
            assert int(sample_rate[b]) == rates[key]
            assert int(lengths[b]) == round(0.5 * rates[key])  # the crop, at the clip's own rate
            assert torch.all(wave[b, int(lengths[b]):] == 0)
            for event in batch["events"][b]:
                assert 0 <= event["onset_s"] <= event["offset_s"] <= 0.5
        assert batch["duration_s"] == pytest.approx(0.5, abs=1e-3)
        assert batch["num_skipped"] == 0
        mixed += len(set(sample_rate.tolist())) > 1
    assert mixed > 0
    second = _collect(loader)  # next epoch: same length, fresh shards and crops
    assert len(second) == len(batches)
    assert [b["keys"] for b in second] != [b["keys"] for b in batches]


def test_workers_get_rank_and_world_size_in_their_environment(shards, monkeypatch):
    folder, _ = shards
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")})
    loader = make_eval_loader(folder, 2, num_workers=1, split="train", rank=1, world_size=2)
    assert "RANK" not in os.environ  # building a loader leaves the trainer's environment alone
    loader.worker_init_fn(0)  # what every worker runs before reading
    assert os.environ["RANK"] == "1" and os.environ["WORLD_SIZE"] == "2"
    # and rank/world default to that environment
    from_env = [k for b in make_eval_loader(folder, 4, num_workers=0, split="train") for k in b["keys"]]
    explicit = [k for b in make_eval_loader(folder, 4, num_workers=0, split="train", rank=1, world_size=2)
                for k in b["keys"]]
    assert from_env == explicit and 0 < len(from_env) < 24


def test_train_loader_is_seeded_and_keeps_short_clips_whole(shards):
    folder, rates = shards

    def first_epoch(seed, duration_s=0.5):
        loader = make_train_loader(folder, batch_size=3, duration_s=duration_s, num_workers=0, seed=seed,
                                   samples_per_epoch=12, rank=0, world_size=1)
        return _collect(loader)

    a, b, c = first_epoch(7), first_epoch(7), first_epoch(8)
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all(torch.equal(x["wave"], y["wave"]) for x, y in zip(a, b))
    assert [x["keys"] for x in a] != [x["keys"] for x in c]
    for batch in first_epoch(7, duration_s=2.5):  # longer than the clips: no crop
        assert batch["lengths"].tolist() == [round(CLIP_S * rates[k]) for k in batch["keys"]]


def test_train_loader_skips_and_counts_corrupt_samples(corrupt_shard):
    path, good_keys = corrupt_shard
    loader = make_train_loader([path], batch_size=2, duration_s=0.3, num_workers=0, seed=0, samples_per_epoch=24,
                               rank=0, world_size=1, shuffle_buffer=0)
    batches = _collect(loader)
    assert len(batches) == 12
    assert {k for batch in batches for k in batch["keys"]} <= good_keys
    # the shard is read 4 times in an epoch (6 good samples = 3 batches per pass), each pass meets 3 bad samples
    assert sum(batch["num_skipped"] for batch in batches) >= 9


def test_train_loader_rejects_bad_arguments(shards, tmp_path):
    folder, _ = shards
    with pytest.raises(ValueError, match="no split 'val'"):
        make_train_loader(folder, 2, 1.0, split="val", rank=0, world_size=1)
    with pytest.raises(FileNotFoundError):
        make_train_loader([str(tmp_path / "missing.tar")], 2, 1.0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank"):
        make_train_loader(folder, 2, 1.0, rank=2, world_size=2)


# --- eval loader -----------------------------------------------------------------------------------------------------


def _eval_keys(source, world_size, num_workers, **kwargs):
    per_rank = []
    skipped = 0
    for rank in range(world_size):
        loader = make_eval_loader(source, batch_size=3, num_workers=num_workers, split="train", rank=rank,
                                  world_size=world_size, **kwargs)
        batches = _collect(loader)
        per_rank.append([k for batch in batches for k in batch["keys"]])
        skipped += sum(batch["num_skipped"] for batch in batches)
    return per_rank, skipped


def test_eval_loader_reads_every_sample_once_over_ranks_and_workers(shards, tmp_path):
    folder, rates = shards
    assert len(read_manifest(folder)["splits"]["train"]["shards"]) >= 4  # enough shards to split by rank and worker
    per_rank, skipped = _eval_keys(folder, world_size=2, num_workers=2)
    counts = Counter(k for keys in per_rank for k in keys)
    assert set(counts) == set(rates) and set(counts.values()) == {1} and skipped == 0
    assert all(per_rank)  # both ranks got work

    # a single shard: fewer shards than readers, so samples are split by index instead
    single = tmp_path / "one"
    write_synth_shards(single, "basic", 7, sample_rates=RATES, duration_s=0.5, seed=2, command="pytest")
    per_rank, _ = _eval_keys(single, world_size=2, num_workers=2)
    counts = Counter(k for keys in per_rank for k in keys)
    assert len(counts) == 7 and set(counts.values()) == {1}

    # deterministic order
    assert _eval_keys(folder, 2, 2)[0] == _eval_keys(folder, 2, 2)[0]


def test_eval_loader_keeps_clips_whole_or_cuts_from_start(shards):
    folder, rates = shards
    whole = {}
    for batch in make_eval_loader(folder, batch_size=5, num_workers=0, split="train", rank=0, world_size=1):
        for b, key in enumerate(batch["keys"]):
            assert int(batch["lengths"][b]) == round(CLIP_S * rates[key])
            whole[key] = batch["wave"][b, : int(batch["lengths"][b])]
    assert len(whole) == len(rates)
    for batch in make_eval_loader(folder, batch_size=5, num_workers=0, split="train", rank=0, world_size=1,
                                  max_duration_s=0.25):
        for b, key in enumerate(batch["keys"]):
            n = round(0.25 * rates[key])
            assert int(batch["lengths"][b]) == n
            assert torch.equal(batch["wave"][b, :n], whole[key][:n])


def test_worker_batches_equal_main_process_batches(shards):
    """Worker processes collate into shared memory: the same clips, the same zero padding as in-process."""
    folder, _ = shards
    per_mode = []
    for num_workers in (0, 2):
        clips = {}
        for batch in make_eval_loader(folder, batch_size=5, num_workers=num_workers, split="train", rank=0,
                                      world_size=1):
            for b, key in enumerate(batch["keys"]):
                clips[key] = (batch["wave"][b].clone(), int(batch["lengths"][b]))
        per_mode.append(clips)
    assert per_mode[0].keys() == per_mode[1].keys()
    for key, (wave, length) in per_mode[1].items():
        assert length == per_mode[0][key][1]
        assert torch.equal(wave[:length], per_mode[0][key][0][:length]) and not wave[length:].any()


def test_eval_loader_counts_each_corrupt_sample_once(corrupt_shard):
    path, good_keys = corrupt_shard
    for world_size, num_workers in ((1, 0), (2, 2)):
        per_rank, skipped = _eval_keys([path], world_size, num_workers)
        keys = [k for ks in per_rank for k in ks]
        assert sorted(keys) == sorted(good_keys)
        assert skipped == 3


def test_truncated_flac_members_are_skipped_and_counted(truncated_shard):
    path, good_keys = truncated_shard
    for world_size, num_workers in ((1, 0), (2, 2)):
        per_rank, skipped = _eval_keys([path], world_size, num_workers)
        assert sorted(k for ks in per_rank for k in ks) == sorted(good_keys)
        assert skipped == 2
    loader = make_train_loader([path], batch_size=2, duration_s=0.3, num_workers=0, seed=0, samples_per_epoch=12,
                               rank=0, world_size=1, shuffle_buffer=0)
    batches = _collect(loader)
    assert {k for batch in batches for k in batch["keys"]} <= good_keys
    assert sum(batch["num_skipped"] for batch in batches) >= 2


def test_eval_partition_covers_every_sample_once():
    for n_shards, world, workers in product(range(0, 8), (1, 2, 3), (1, 2, 3)):
        shard_sizes = [3 + s % 4 for s in range(n_shards)]
        seen = Counter()
        for rank, worker in product(range(world), range(workers)):
            part = eval_partition(n_shards, rank, world, worker, workers)
            stream = [(s, i) for s in part.shards for i in range(shard_sizes[s])]
            seen.update(x for j, x in enumerate(stream) if j % part.modulus == part.remainder)
        assert set(seen.values()) <= {1} and len(seen) == sum(shard_sizes), (n_shards, world, workers)
    assert eval_partition(8, 1, 2, 1, 2).shards == (3, 7) and eval_partition(8, 1, 2, 1, 2).modulus == 1


# --- pieces ----------------------------------------------------------------------------------------------------------


def test_batch_with_skips_reports_every_skip():
    items = [1, SKIPPED, 2, 3, SKIPPED, 4, SKIPPED, SKIPPED]

    def collate(samples, num_skipped):
        return {"samples": samples, "num_skipped": num_skipped}

    eval_batches = list(batch_with_skips(items, 2, partial=True, collate=collate))
    assert [b["samples"] for b in eval_batches] == [[1, 2], [3, 4]]
    assert sum(b["num_skipped"] for b in eval_batches) == 4
    train_batches = list(batch_with_skips([*items, 5], 2, partial=False, collate=collate))
    assert [b["samples"] for b in train_batches] == [[1, 2], [3, 4]]  # the incomplete [5] is dropped
    assert [b["num_skipped"] for b in batch_with_skips([SKIPPED, 1, SKIPPED], 3, True, collate)] == [2]


def test_decode_flac_mixes_down_and_rejects_garbage():
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, stereo, 12000, format="FLAC", subtype="PCM_16")
    wave, sr = decode_flac(buf.getvalue())
    assert sr == 12000 and wave.shape == (100,) and wave.dtype == np.float32
    np.testing.assert_allclose(wave, 0.125, atol=1e-4)
    for bad in (b"", b"fLaC" + bytes(100), b"not audio at all"):
        with pytest.raises(CorruptSampleError):
            decode_flac(bad)
    wav = io.BytesIO()
    sf.write(wav, stereo, 12000, format="WAV")
    with pytest.raises(CorruptSampleError, match="expected a FLAC"):
        decode_flac(wav.getvalue())


def test_collate_pads_mixed_rates():
    samples = [
        {"key": "a", "wave": np.ones(8000, np.float32), "sample_rate": 8000, "events": [{"onset_s": 0.1}]},
        {"key": "b", "wave": np.full(48000, 0.5, np.float32), "sample_rate": 96000, "labelled": True},
    ]
    batch = collate_audio(samples, num_skipped=3)
    assert batch["wave"].shape == (2, 48000)
    assert batch["lengths"].tolist() == [8000, 48000] and batch["sample_rate"].tolist() == [8000, 96000]
    assert torch.all(batch["wave"][0, 8000:] == 0) and torch.all(batch["wave"][0, :8000] == 1)
    assert batch["duration_s"] == 1.0 and batch["keys"] == ["a", "b"]
    assert batch["events"] == [[{"onset_s": 0.1}], []] and batch["labelled"].tolist() == [False, True]
    assert batch["num_skipped"] == 3
    with pytest.raises(ValueError):
        collate_audio([])


def test_znorm_uses_valid_samples_only_and_survives_silence():
    wave = torch.zeros(3, 1000)
    wave[0, :600] = torch.randn(600) * 3 + 2
    wave[2, :1000] = torch.randn(1000) * 0.01
    lengths = torch.tensor([600, 400, 1000])
    out = znorm(wave, lengths)
    assert torch.isfinite(out).all()
    assert out[0, :600].mean().abs() < 1e-5 and (out[0, :600].std(unbiased=False) - 1).abs() < 1e-4
    assert torch.all(out[0, 600:] == 0) and torch.all(out[1] == 0)  # padding and a silent clip stay zero
    # eps is added to the variance (the model's z-norm, a noise floor): a quiet clip comes out a little below 1
    v = wave[2].var(unbiased=False)
    assert (out[2].var(unbiased=False) - v / (v + 1e-5)).abs() < 1e-4


def test_crop_retimes_and_clips_events():
    events = [
        {"onset_s": 0.1, "offset_s": 0.3, "label": "a"},  # before the window
        {"onset_s": 0.4, "offset_s": 0.7, "label": "b", "low_hz": 1.0, "high_hz": 2.0},  # straddles the start
        {"onset_s": 0.8, "offset_s": 1.5, "label": "c"},  # straddles the end
        {"onset_s": 1.2, "offset_s": 1.2, "label": "d"},  # an instant beyond the window
    ]
    assert clip_events(events, 0.5, 1.0) == [
        {"onset_s": 0.0, "offset_s": pytest.approx(0.2), "label": "b", "low_hz": 1.0, "high_hz": 2.0},
        {"onset_s": pytest.approx(0.3), "offset_s": 0.5, "label": "c"},
    ]
    sample = {"key": "k", "wave": np.arange(100, dtype=np.float32), "sample_rate": 100, "events": events}
    cropped = crop_sample(sample, 50, 50)
    np.testing.assert_array_equal(cropped["wave"], np.arange(50, 100))
    assert [e["label"] for e in cropped["events"]] == ["b", "c"]


def test_events_to_frame_targets_hand_made_case():
    classes = ["chirp", "click"]
    events = [
        {"onset_s": 0.05, "offset_s": 0.25, "label": "chirp"},  # frames [0, .1) [.1, .2) [.2, .3)
        {"onset_s": 0.30, "offset_s": 0.40, "label": "click"},  # exactly frame 3; ends on a boundary
        {"onset_s": 0.75, "offset_s": 0.75, "label": "chirp"},  # an instant: frame 7
    ]
    expected = np.zeros((10, 2), np.float32)
    expected[[0, 1, 2, 7], 0] = 1
    expected[3, 1] = 1
    targets = events_to_frame_targets(events, classes, n_frames=10, token_rate=10.0)
    assert targets.dtype == np.float32
    np.testing.assert_array_equal(targets, expected)
    with pytest.raises(ValueError, match="not one of the classes"):
        events_to_frame_targets([{"onset_s": 0, "offset_s": 1, "label": "bark"}], classes, 10, 10.0)
    assert events_to_frame_targets([{"onset_s": 0, "offset_s": 1, "label": "bark"}], classes, 10, 10.0,
                                   unknown="ignore").sum() == 0


# --- bench -----------------------------------------------------------------------------------------------------------


def test_bench_data_reports_loader_and_sharding_rates(tmp_path, capsys):
    import argparse

    from a2v_het.bench.data import add_args, format_markdown, run

    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--clips", "12", "--clip-s", "1", "--rates", "8000,48000", "--crop-s", "0.5",
                              "--batch-size", "2", "--batches", "3", "--workers", "0,1", "--shard-files", "2",
                              "--shard-minutes", "0.1", "--shard-workers", "1", "--tmp-dir", str(tmp_path)])
    result = run(args)
    assert [r["workers"] for r in result["loader"]] == [0, 1]
    for row in result["loader"]:
        assert row["audio_s"] == pytest.approx(3 * 2 * 0.5)  # every clip cropped to 0.5 s
        assert sum(row["audio_s_by_rate"].values()) == pytest.approx(row["audio_s"])
        assert row["audio_s_per_s"] > 0
    assert result["sharding"]["hours"] == pytest.approx(2 * 6 / 3600) and result["sharding"]["shards"] >= 1
    assert list(tmp_path.iterdir()) == []  # temporary data removed
    assert "x real time" in capsys.readouterr().out
    markdown = format_markdown(result)
    assert markdown.count("\n| ") == 3 and "h of audio per minute" in markdown
