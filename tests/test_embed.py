"""``a2v-het embed`` / ``predict`` over many files: real WAV/FLAC at several rates and channel counts next to broken
files (random bytes, empty, no samples, cut off) -> the rest is processed, the broken ones are listed with their
reason in report.json, exit status 3; a rerun skips finished files; missing paths are one-line errors; the Python
API's embeddings do not depend on the batch; --workers and shards process each file exactly once."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from inference_helpers import (
    BROKEN,
    GOOD,
    peak_rss_growth,
    write_audio_folder,
    write_detector_export,
    write_encoder_export,
)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "a2v_het.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    return write_encoder_export(tmp_path_factory.mktemp("enc") / "export")


@pytest.fixture(scope="module")
def detector_export(tmp_path_factory):
    return write_detector_export(tmp_path_factory.mktemp("det") / "export", ("tone", "sweep"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    return write_audio_folder(tmp_path_factory.mktemp("audio") / "recordings")


@pytest.mark.slow
def test_embed_skips_broken_files_reports_them_and_resumes(encoder_export, audio, tmp_path):
    from a2v_het.eval.embed import load_embeddings
    from a2v_het.eval.run_files import load_model

    out = tmp_path / "emb"
    proc = cli("embed", "--checkpoint", str(encoder_export), str(audio), "--out", str(out), "--window-s", "2",
               "--hop-s", "1", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report = json.loads((out / "report.json").read_text())
    status = {r["name"]: r for r in report["files"]}
    assert report["counts"] == {"done": len(GOOD) + 1, "failed": len(BROKEN), "pending": 0}
    for name, reason in BROKEN.items():
        row = status[Path(name).with_suffix("").as_posix()]
        assert row["status"] == "failed" and reason in row["reason"], row
        assert f"skipped {audio / name}" in proc.stderr
    assert "truncated" in status["cut_wav"]["warning"]
    assert {r["name"] for r in report["problems"]} == {Path(n).stem for n in BROKEN} | {"cut_wav"}

    x, index = load_embeddings(out)
    model = load_model(encoder_export)
    assert x.shape == (len(index), model.cfg.embed_dim) and np.isfinite(x).all()
    for name, (sr, ch, dur) in GOOD.items():
        key = Path(name).with_suffix("").as_posix()
        rows = [r for r in index if r["name"] == key]
        n_win = int(np.ceil(dur - 2.0)) + 1  # 2 s windows every 1 s, the last one may be short
        assert len(rows) == n_win * ch and {r["sample_rate"] for r in rows} == {sr}
        assert sorted({r["channel"] for r in rows}) == list(range(ch))
        assert rows[-1]["end_s"] == pytest.approx(dur) and rows[0]["start_s"] == 0.0
        arr = np.load(out / "embeddings" / f"{key}.npy")
        assert arr.shape == (n_win * ch, model.cfg.embed_dim)
        # 50 tokens/s over each window's valid samples (the last window may hold less than 2 s)
        assert [r["n_tokens"] for r in rows] == [round(50 * (r["end_s"] - r["start_s"])) for r in rows]
    cut = [r for r in index if r["name"] == "cut_wav"]
    assert cut[-1]["end_s"] == pytest.approx(3.0)  # read up to the cut
    assert not list(out.rglob("*.tmp")), "no temporary file left behind"

    # The file on disk matches the in-memory API on the same audio (channel 1 of the stereo file).
    from a2v_het.eval.embed import embed_waveform

    wave, sr = sf.read(str(audio / "stereo_8k.wav"), dtype="float32", always_2d=True)
    emb, times = embed_waveform(model, wave.T, sr, window_s=2.0, hop_s=1.0)
    stereo = np.load(out / "embeddings" / "stereo_8k.npy")
    np.testing.assert_allclose(stereo.reshape(emb.shape), emb, atol=1e-5)
    assert times[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]

    # Rerun: finished files are skipped (their arrays untouched), the broken ones tried again and reported again.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*.npy")}
    again = cli("embed", "--checkpoint", str(encoder_export), str(audio), "--out", str(out), "--window-s", "2",
                "--hop-s", "1", "--no-progress", cwd=tmp_path)
    assert again.returncode == 3
    assert f"{len(GOOD) + 1} of {len(GOOD) + 1 + len(BROKEN)} files already done" in again.stderr
    assert "0 files embedded" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "embeddings").glob("*.npy")} == mtimes
    # A changed recording is embedded again; a repaired one is picked up.
    sf.write(str(audio / "corrupt.wav"), np.zeros(8000, np.float32), 8000)
    try:
        third = cli("embed", "--checkpoint", str(encoder_export), str(audio), "--out", str(out), "--window-s", "2",
                    "--hop-s", "1", "--no-progress", cwd=tmp_path)
        assert "1 files embedded" in third.stdout, third.stdout + third.stderr
        assert json.loads((out / "report.json").read_text())["counts"]["failed"] == len(BROKEN) - 1
    finally:
        (audio / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(6000))


@pytest.mark.slow
def test_missing_paths_are_one_line_errors(encoder_export, detector_export, audio, tmp_path):
    for args in (["embed", "--checkpoint", str(tmp_path / "nope"), str(audio), "--out", str(tmp_path / "o")],
                 ["embed", "--checkpoint", str(encoder_export), str(tmp_path / "missing.wav"), "--out",
                  str(tmp_path / "o")],
                 ["predict", "--checkpoint", str(tmp_path / "nope"), str(audio), "--out", str(tmp_path / "o")],
                 ["predict", "--checkpoint", str(encoder_export), str(audio), "--out", str(tmp_path / "o")],
                 ["embed", "--checkpoint", str(encoder_export), str(audio), "--out", str(tmp_path / "o"),
                  "--layers", "7", "--workers", "2"],
                 ["predict", "--checkpoint", str(detector_export), str(audio), "--out", str(tmp_path / "o"),
                  "--window-s", "1.01", "--workers", "2"]):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"a2v-het {args[0]}: error: "), proc.stderr
    assert not (tmp_path / "o").exists()


def test_predict_survives_a_corrupt_file_between_good_ones(detector_export, audio, tmp_path):
    """The issue's case: good, corrupt, good -> both tables, events.csv, the corrupt one in the report, exit 3."""
    from a2v_het.eval.raven import read_selection_table

    files = [audio / "mono_48k.flac", audio / "corrupt.wav", audio / "stereo_8k.wav"]
    out = tmp_path / "pred"
    proc = cli("predict", "--checkpoint", str(detector_export), *map(str, files), "--out", str(out), "--window-s",
               "2", "--hop-s", "1", "--threshold", "0.5", cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Format not recognised" in proc.stderr
    total = 0
    for f in (files[0], files[2]):
        rows = read_selection_table(out / f"{f.stem}.selections.txt")
        assert all(0 <= e["onset_s"] < e["offset_s"] <= sf.info(str(f)).duration + 1e-6 for e in rows)
        total += len(rows)
    with open(out / "events.csv", newline="") as fh:
        events = list(csv.DictReader(fh))
    assert len(events) == total and {e["file"] for e in events} <= {str(files[0]), str(files[2])}
    report = json.loads((out / "report.json").read_text())
    assert [(r["name"], r["status"]) for r in report["files"]] == [("corrupt", "failed"), ("mono_48k", "done"),
                                                                   ("stereo_8k", "done")]
    again = cli("predict", "--checkpoint", str(detector_export), *map(str, files), "--out", str(out), "--window-s",
                "2", "--hop-s", "1", "--threshold", "0.5", "--no-progress", cwd=tmp_path)
    assert again.returncode == 3 and "2 of 3 files already done" in again.stderr
    with open(out / "events.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == total  # merged from the done records, not appended twice


def test_clip_embedding_does_not_depend_on_its_batch(encoder_export, detector_export):
    """A 1.3 s clip at 16 kHz alone, and batched with longer clips at 8, 44.1 and 96 kHz: the same embedding
    (pooled and per token), from the encoder export and from a detector's backbone."""
    from a2v_het.eval.embed import embed_clips
    from a2v_het.eval.run_files import load_model

    rng = np.random.default_rng(3)
    clip = (0.1 * rng.standard_normal(int(1.3 * 16000))).astype(np.float32)
    t = np.arange(int(1.3 * 16000)) / 16000
    clip += 0.3 * np.sin(2 * np.pi * 1500 * t).astype(np.float32)
    others = [(0.2 * rng.standard_normal(int(d * sr))).astype(np.float32) for d, sr in ((4.0, 8000), (2.0, 44100),
                                                                                       (3.1, 96000))]
    for ckpt in (encoder_export, detector_export):
        model = load_model(ckpt)
        for layers in ("final", "-2,-1"):
            for pool in ("mean", "max", "none"):
                alone = embed_clips(model, [clip], [16000], layers, pool)[0]
                batched = embed_clips(model, [others[0], clip, others[1], others[2]], [8000, 16000, 44100, 96000],
                                      layers, pool)
                assert alone.shape == batched[1].shape
                np.testing.assert_allclose(batched[1], alone, atol=2e-5, rtol=1e-4, err_msg=f"{ckpt} {layers} {pool}")
                if pool == "none":
                    assert alone.shape == (65, model.cfg.embed_dim)  # 1.3 s at 50 tokens/s
        # --layers -1 is the encoder output; a detector's "-2,-1" tokens are exactly what its head reads (top_k 2)
        np.testing.assert_allclose(embed_clips(model, [clip], [16000], "-1")[0],
                                   embed_clips(model, [clip], [16000], "final")[0], atol=1e-5)
        if getattr(model, "kind", "") == "detector":
            with torch.no_grad():
                feats, _ = model.features(torch.from_numpy(clip)[None], torch.tensor([16000]),
                                          torch.tensor([clip.size]))
            assert model.top_k == 2
            np.testing.assert_allclose(embed_clips(model, [clip], [16000], "-2,-1", "none")[0], feats[0].numpy(),
                                       atol=1e-5)
        # and different clips give different embeddings
        a, b = embed_clips(model, [clip, others[0]], [16000, 8000])
        assert np.abs(a - b).max() > 1e-3


def test_pool_none_writes_tokens(encoder_export, audio, tmp_path):
    from a2v_het.eval.embed import embed_files, load_embeddings

    res = embed_files(encoder_export, [audio / "mono_48k.flac"], tmp_path / "tok", window_s=2.0, hop_s=2.0,
                      pool="none", layers="-1", progress=False)
    assert res["exit_code"] == 0
    x, index = load_embeddings(tmp_path / "tok")
    assert x.shape == (2, 100, 64)
    assert [r["n_tokens"] for r in index] == [100, 50]  # the 3 s file: the second window holds 1 s
    assert np.abs(x[1, 50:]).max() == 0 and np.abs(x[1, :50]).max() > 0


@pytest.mark.slow
def test_workers_and_shards_process_each_file_once(encoder_export, audio, tmp_path):
    """3 shards x 2 workers = every readable file embedded exactly once, with the arrays of a one-process run."""
    from a2v_het.eval.audio_files import find_audio, read_record
    from a2v_het.eval.embed import embed_files

    ref = embed_files(encoder_export, [audio], tmp_path / "ref", 2.0, 1.0, progress=False)
    out = tmp_path / "par"
    seen = []
    for i in range(3):
        res = embed_files(encoder_export, [audio], out, 2.0, 1.0, workers=2, shard_index=i, shard_count=3,
                          progress=False)
        seen.append(res["mine"])
    items = find_audio([audio])
    assert sum(seen) == len(items)
    pids = set()
    for _, name in items:
        rec = read_record(out, "done", name)
        if rec is None:
            assert read_record(out, "failed", name) is not None
            continue
        pids.add(rec["pid"])
        np.testing.assert_allclose(np.load(out / rec["array"]), np.load(tmp_path / "ref" / rec["array"]), atol=1e-5)
    assert os.getpid() not in pids and len(pids) >= 2  # done by the worker processes
    assert (out / "index.csv").read_text() == (tmp_path / "ref" / "index.csv").read_text().replace(
        str(tmp_path / "ref"), str(out))
    assert ref["counts"] == json.loads((out / "report.json").read_text())["counts"]


def test_random_init_differs_from_the_loaded_weights(tmp_path):
    from a2v_het.eval.embed import embed_clips
    from a2v_het.eval.run_files import CheckpointError, load_model

    exp = write_encoder_export(tmp_path / "exp", seed=5)
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    loaded = embed_clips(load_model(exp), [x], [16000])[0]
    assert np.allclose(loaded, embed_clips(load_model(exp), [x], [16000])[0])
    rand = embed_clips(load_model(exp, random_init=True, seed=1), [x], [16000])[0]
    assert not np.allclose(loaded, rand, atol=1e-3)
    # a weights file of another model size is an error naming the mismatch, not a silent partial load
    other = write_encoder_export(tmp_path / "other", overrides=["model.embed_dim=32", "frontend.dim=32"])
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "config.yaml").write_text((exp / "config.yaml").read_text())
    (tmp_path / "mixed" / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(tmp_path / "mixed")
    torch.set_num_threads(1)


def test_read_windows_is_sample_exact_without_seeking(tmp_path):
    """Overlapping, back-to-back, gapped and longer-than-the-file windows of a stereo FLAC: exactly the samples of
    a whole-file read, zero after the valid ones; the file is decoded front to back."""
    from a2v_het.eval.audio_files import audio_info, read_windows, window_starts

    rng = np.random.default_rng(0)
    sf.write(str(tmp_path / "x.flac"), (0.1 * rng.standard_normal((8000 * 37 + 123, 2))).astype(np.float32), 8000,
             subtype="PCM_24")
    ref, _ = sf.read(str(tmp_path / "x.flac"), dtype="float32", always_2d=True)
    info = audio_info(tmp_path / "x.flac")
    for win, hop in ((32000, 16000), (32000, 32000), (24000, 40000), (400000, 80000), (8000, 333)):
        starts = window_starts(info.frames, win, hop)
        seen = []
        for chunk, wave, lengths in read_windows(tmp_path / "x.flac", info, starts, win, 3):
            for j, s in enumerate(chunk):
                want = ref[s:s + win].T
                assert lengths[j] == want.shape[1]
                np.testing.assert_array_equal(wave[j, :, : lengths[j]], want)
                assert not wave[j, :, lengths[j]:].any()
                seen.append(s)
        assert seen == starts


@pytest.mark.slow
def test_embed_long_recording_bounded_memory(encoder_export, tmp_path):
    """30 min at 16 kHz (110 MB as float32) embedded per token (--pool none, 90 k tokens x 64 = 23 MB of output)
    in a subprocess, after a 2 min file has set the peak of one batch's activations: the peak RSS grows by far less
    than the audio or the output, and the array is complete."""
    rng = np.random.default_rng(4)
    for name, minutes in (("short", 2), ("long", 30)):
        with sf.SoundFile(str(tmp_path / f"{name}.flac"), "w", 16000, 1, subtype="PCM_16") as fh:
            for _ in range(minutes):
                fh.write((0.05 * rng.standard_normal(60 * 16000)).astype(np.float32))
    out = tmp_path / "emb"
    warm_up = ("from a2v_het.eval.embed import embed_files\n"
               f"embed_files({str(encoder_export)!r}, [{str(tmp_path / 'short.flac')!r}], {str(tmp_path / 'warm')!r},"
               " window_s=10.0, pool='none', batch_size=4, progress=False)")
    res = peak_rss_growth(warm_up, f"embed_files({str(encoder_export)!r}, [{str(tmp_path / 'long.flac')!r}], "
                          f"{str(out)!r}, window_s=10.0, pool='none', batch_size=4, progress=False)", tmp_path, 1)
    print(f"embed 30 min per token: peak RSS growth {res['growth_kb'] / 1024:.1f} MB")
    assert res["exit_code"] == 0 and res["rows"] == 180
    # 15.5 MB measured: holding the audio (110 MB) or the output (23 MB, on top of that) would exceed the bound
    assert res["growth_kb"] < 30 * 1024, res["growth_kb"]
    arr = np.load(out / "embeddings" / "long.npy", mmap_mode="r")
    assert arr.shape == (180, 500, 64) and np.isfinite(arr[-1]).all() and np.abs(arr[-1]).max() > 0
