"""Real recordings end to end: pykanto's bundled birds (22.05, 32, 44.1, 48 kHz; mono and stereo) with their Sonic
Visualiser boxes -> annotations table -> shards -> plain webdataset, sample-exact; and the evaluation stream.

The audio is read where pip installed it (``pip install --no-deps pykanto==0.1.8``; never let pip resolve pykanto's
dependencies, they pin an old numpy) and never copied into the repository: some files are CC BY-NC-ND.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from a2v_het.data.stream import make_eval_loader
from data_tools.annotations import read_table
from data_tools.cli import main as cli_main
from data_tools.shard_writer import read_manifest

WINDOW_S = 4


@pytest.fixture(scope="module")
def pykanto_data() -> Path:
    try:
        dist = importlib.metadata.distribution("pykanto")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("pykanto is not installed (real-audio test data): pip install --no-deps pykanto==0.1.8")
    root = Path(dist.locate_file("pykanto/data"))
    if not (root / "raw").is_dir():
        pytest.skip(f"pykanto {dist.version} has no bundled recordings at {root}")
    return root


@pytest.fixture(scope="module")
def sharded(pykanto_data, tmp_path_factory):
    """SV XML -> table (``--on-error skip``) -> shards split 60/20/20; returns (out, table, annotations stderr)."""
    tmp = tmp_path_factory.mktemp("pykanto")
    table = tmp / "table.csv"
    capture = io.StringIO()
    with contextlib.redirect_stderr(capture):
        code = cli_main(["annotations", str(pykanto_data / "raw"), "--format", "sonic-visualiser", "--audio-dir",
                         str(pykanto_data), "--out", str(table), "--on-error", "skip"])
    assert code == 3  # one real box in XC663885.xml reaches below 0 Hz: reported, skipped
    out = tmp / "shards"
    assert cli_main(["shard", str(pykanto_data), str(out), "--annotations", str(table), "--window-s", str(WINDOW_S),
                     "--split", "0.6,0.2,0.2", "--shard-mb", "1", "--workers", "2", "--quiet"]) == 0
    return out, table, capture.getvalue()


def _samples(out: Path) -> dict[str, tuple[np.ndarray, int, dict, str]]:
    """Plain webdataset + soundfile, no project code: key -> (int16 audio, rate, json, split)."""
    found = {}
    for split, info in read_manifest(out, verify=True)["splits"].items():
        urls = [str(out / name) for name in info["shards"]]
        for s in wds.WebDataset(urls, shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False):
            audio, rate = sf.read(io.BytesIO(s["flac"]), dtype="int16")
            found[s["__key__"]] = (audio, rate, json.loads(s["json"]), split)
    return found


def test_sv_annotations_use_the_audio_rate_and_report_bad_boxes(pykanto_data, sharded):
    _, table, stderr = sharded
    assert "XC663885.xml: point 1: low frequency -379.953 Hz is negative" in stderr
    files = read_table(table)
    assert len(files) == 5 and sum(len(f.events) for f in files.values()) == 17
    am = files["raw/AM/20210502_040000.WAV"].events  # 48 kHz audio, XML says 44100: frames are 48 kHz frames
    assert am[0]["onset_s"] == 1200 / 48000 and am[-1]["offset_s"] == (37600 + 8800) / 48000
    assert am[-1]["offset_s"] <= sf.info(str(pykanto_data / "raw/AM/20210502_040000.WAV")).duration
    finch = files["raw/BENGALESE_FINCH/bird_3/348.wav"].events  # 32 kHz
    assert finch == [{"onset_s": 27520 / 32000, "offset_s": (27520 + 679040) / 32000, "label": "event",
                      "low_hz": 448.616, "high_hz": 14782.716}]


def test_every_window_is_sample_exact_with_its_events(pykanto_data, sharded):
    out, table, _ = sharded
    samples = _samples(out)
    files = read_table(table)
    expected_keys = 0
    rates = Counter()
    for audio_path in sorted(pykanto_data.rglob("*")):
        if audio_path.suffix.lower() != ".wav":
            continue
        info = sf.info(str(audio_path))
        expected_keys += math.ceil(info.frames / (WINDOW_S * info.samplerate)) * info.channels
        rates[info.samplerate] += 1
    assert sorted(rates) == [22050, 32000, 44100, 48000] and sum(rates.values()) == 25
    assert len(samples) == expected_keys

    sources: dict[str, np.ndarray] = {}
    labelled = set()
    for key, (audio, rate, info, split) in samples.items():
        source = info["source"]
        if source not in sources:
            sources[source] = sf.read(str(pykanto_data / source), dtype="int16", always_2d=True)[0]
        start = round(info["offset_s"] * rate)
        reference = sources[source][start : start + WINDOW_S * rate, info["channel"]]
        np.testing.assert_array_equal(audio, reference, err_msg=key)  # PCM_16 sources: bit-exact
        assert rate == info["sample_rate"] == info["meta"]["source_sample_rate"]
        assert info["duration_s"] == len(reference) / rate
        assert info["labelled"] == (source in files)
        # events: the table's events of this file that overlap the window, in window time, clipped to it
        t0, t1 = info["offset_s"], info["offset_s"] + info["duration_s"]
        want = [(max(e["onset_s"], t0) - t0, min(e["offset_s"], t1) - t0, e["low_hz"], e["high_hz"])
                for e in (files[source].events if source in files else [])
                if e["onset_s"] < t1 and e["offset_s"] > t0]
        got = [(e["onset_s"], e["offset_s"], e["low_hz"], e["high_hz"]) for e in info["events"]]
        assert got == pytest.approx(want, abs=1e-9), key
        if info["labelled"]:
            labelled.add(source)
    assert labelled == set(files)
    # a group is one recording here: each recording's windows sit in one split
    splits = {}
    for _, _, info, split in samples.values():
        assert splits.setdefault(info["recording_id"], split) == split
    assert len(set(splits.values())) == 3


def test_eval_stream_two_ranks_two_workers_reads_each_sample_once(sharded):
    out, _, _ = sharded
    manifest = read_manifest(out)
    for split, info in manifest["splits"].items():
        keys = Counter()
        skipped = 0
        for rank in range(2):
            loader = make_eval_loader(out, batch_size=4, num_workers=2, split=split, rank=rank, world_size=2)
            for batch in loader:
                keys.update(batch["keys"])
                skipped += batch["num_skipped"]
                assert batch["wave"].shape[0] == len(batch["keys"]) == batch["lengths"].shape[0]
        assert sum(keys.values()) == info["samples"] == len(keys) and set(keys.values()) == {1}, split
        assert skipped == 0


@pytest.mark.slow
def test_finetune_then_predict_end_to_end(pykanto_data, sharded, tmp_path):
    """The real recordings through the user's path: shards -> ``a2v-het finetune`` (DeepSpeed loop, label "event")
    -> ``a2v-het evaluate`` -> ``a2v-het predict`` on recordings at 44.1 and 48 kHz and on one resampled to 96 kHz
    -> Raven selection tables + events.csv."""
    import os
    import subprocess
    import sys

    import soxr

    from a2v_het.eval.raven import read_selection_table

    out, _, _ = sharded
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, DS_ACCELERATOR="cpu", WANDB_MODE="offline", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2",
               PYTHONPATH=str(root))
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "LOCAL_RANK"):
        env.pop(k, None)

    def cli(*args: str, timeout: int = 600) -> str:
        proc = subprocess.run([sys.executable, "-m", "a2v_het.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    run = tmp_path / "run"
    cli("finetune", str(root / "recipes" / "synthetic_finetune.yaml"), f"data.shards={out}",
        "data.synthesize_if_missing=false", f"data.duration_s={WINDOW_S}", "data.num_workers=0",
        "data.samples_per_epoch=32", f"train.run_dir={run}", "train.max_steps=60", "train.save_every=60",
        "logging.wandb=disabled", "optim.warmup_steps=5", "optim.lr=2e-3", "finetune.classes=[event]",
        "finetune.loss=bce", "finetune.eval_plots=2")
    report = json.loads((run / "eval.json").read_text())
    assert report["classes"] == ["event"] and report["test"]["clips"] > 0  # val tuned, test scored
    assert (run / "plots" / "pr_curves.png").read_bytes()[:4] == b"\x89PNG"

    # It learned the training windows: frame AP on the train split well above chance (= the positive frame rate).
    train = json.loads(cli("evaluate", "--checkpoint", str(run), "--data", str(out), "--split", "train",
                           "--val-split", "val", "--json"))["test"]
    pos = tot = 0.0
    for _, _, info, split in _samples(out).values():
        if split == "train" and info["labelled"]:
            pos += sum(e["offset_s"] - e["onset_s"] for e in info["events"])
            tot += info["duration_s"]
    chance = pos / tot
    assert 0.05 < chance < 0.95
    assert train["frame_map"] > chance + 0.5 * (1 - chance), (train["frame_map"], chance)

    # predict: two real recordings (44.1 kHz, 48 kHz) and one resampled to 96 kHz
    petrel = pykanto_data / "raw" / "STORM-PETREL" / "XC46092.wav"
    am = pykanto_data / "raw" / "AM" / "20210502_040000.WAV"
    audio, rate = sf.read(str(petrel), dtype="float32")
    hi = tmp_path / "XC46092_96k.flac"
    sf.write(str(hi), soxr.resample(audio, rate, 96000), 96000, subtype="PCM_24")
    pred = tmp_path / "pred"
    cli("predict", "--checkpoint", str(run), str(petrel), str(am), str(hi), "--out", str(pred), "--window-s", "4",
        "--hop-s", "2", "--no-progress")
    header = "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)\tlabel\tscore"
    total = 0
    for path in (petrel, am, hi):
        table = pred / f"{path.stem}.selections.txt"
        assert table.read_text().splitlines()[0] == header
        info = sf.info(str(path))
        rows = read_selection_table(table)
        for i, e in enumerate(rows, start=1):
            assert e["selection"] == i and e["label"] == "event" and 0 <= e["score"] <= 1
            assert 0 <= e["onset_s"] < e["offset_s"] <= info.duration + 1e-6
            assert 0 <= e["low_hz"] < e["high_hz"] <= info.samplerate / 2
        total += len(rows)
    assert total > 0
    assert (pred / "events.csv").read_text().count("\n") == total + 1
