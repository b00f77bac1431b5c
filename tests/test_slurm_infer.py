"""slurm/predict.sh as a SLURM array job on the local cluster (.ci/slurm_cluster.sh, see tests/test_slurm.py):
each recording is processed by exactly one array task, a corrupt one is reported (that task exits 3), and a
requeued job continues: the finished files are skipped, only the missing ones are processed again."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from inference_helpers import write_detector_export, write_encoder_export
from test_slurm import TERMINAL, job_env, sbatch, slurm_cluster  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parents[1]
PREDICT_SH = ROOT / "slurm" / "predict.sh"
TASKS = 3

pytestmark = pytest.mark.slow


def array_states(job: str) -> dict[str, tuple[str, str]]:
    """task id -> (state, exit code) of an array job, from sacct (scontrol while sacct has not caught up)."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,ExitCode"], capture_output=True,
                         text=True, timeout=30).stdout
    states = {}
    for line in out.strip().splitlines():
        jid, state, code = line.split("|")
        m = re.fullmatch(rf"{job}_(\d+)", jid)
        if m:
            states[m.group(1)] = (state.split()[0], code)
    return states


def wait_array(job: str, n: int, timeout: float, logs: Path) -> dict[str, tuple[str, str]]:
    deadline = time.time() + timeout
    states: dict[str, tuple[str, str]] = {}
    while time.time() < deadline:
        states = array_states(job)
        if len(states) == n and all(s in TERMINAL for s, _ in states.values()):
            return states
        time.sleep(0.5)
    subprocess.run(["scancel", job], timeout=30)
    tails = "\n".join(p.read_text()[-1500:] for p in sorted(logs.glob("*.out")))
    raise AssertionError(f"array job {job} not finished after {timeout:.0f} s: {states}\n{tails}")


def done_lines(logs: Path) -> Counter:
    """name -> how many times a task logged it as processed."""
    c: Counter = Counter()
    for p in logs.glob("*.out"):
        c.update(re.findall(r"\[a2v-het\] done (\S+):", p.read_text()))
    return c


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """8 real recordings (FLAC/WAV, 8-48 kHz, one stereo) and one corrupt WAV."""
    root = tmp_path_factory.mktemp("slurm-audio") / "field"
    root.mkdir()
    rng = np.random.default_rng(0)
    for k, sr in enumerate([8000, 16000, 22050, 32000, 44100, 48000, 16000, 24000]):
        x = (0.1 * rng.standard_normal((int(3 * sr), 2 if k == 3 else 1))).astype(np.float32)
        sf.write(str(root / f"rec{k}.{'flac' if k % 2 else 'wav'}"), x if k == 3 else x[:, 0], sr)
    (root / "rec_bad.wav").write_bytes(rng.bytes(4000))
    return root


@pytest.mark.timeout(900)
def test_predict_array_job_each_file_once_and_requeue_continues(slurm_cluster, recordings, tmp_path):
    det = write_detector_export(tmp_path / "det", ("tone", "sweep"))
    out, logs = tmp_path / "pred", tmp_path / "logs"
    logs.mkdir()
    args = [f"--array=0-{TASKS - 1}", "--ntasks=1", "--cpus-per-task=1", "--gres=none", "--time=10",
            f"--output={logs}/%A_%a.out", str(PREDICT_SH), "predict", "--checkpoint", str(det), str(recordings),
            "--out", str(out), "--window-s", "2", "--hop-s", "1", "--threshold", "0.5", "--no-progress"]
    job = sbatch(args, tmp_path, job_env())
    states = wait_array(job, TASKS, 600, logs)
    names = sorted(p.stem for p in recordings.iterdir())  # the sorted order the tasks share
    bad_task = str(names.index("rec_bad") % TASKS)
    for task, (state, code) in states.items():
        text = (logs / f"{job}_{task}.out").read_text()
        if task == bad_task:
            assert (state, code) == ("FAILED", "3:0"), text[-3000:]
            assert "rec_bad.wav: cannot open: Format not recognised" in text
        else:
            assert (state, code) == ("COMPLETED", "0:0"), text[-3000:]
    good = [n for n in names if n != "rec_bad"]
    assert done_lines(logs) == Counter({n: 1 for n in good})  # every file exactly once
    for k, n in enumerate(names):
        rec_path = out / ".a2v-state" / "done" / f"{n}.json"
        if n == "rec_bad":
            assert not rec_path.exists()
            continue
        rec = json.loads(rec_path.read_text())
        assert rec["task"] == str(k % TASKS), (n, rec["task"])  # position k -> task k % N
        assert (out / f"{n}.selections.txt").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"done": len(good), "failed": 1, "pending": 0}
    assert report["problems"][0]["name"] == "rec_bad"
    with open(out / "events.csv", newline="") as fh:
        events = list(csv.DictReader(fh))
    per_file = Counter(Path(e["file"]).stem for e in events)
    for n in good:
        assert per_file[n] == sum(1 for _ in open(out / f"{n}.selections.txt")) - 1

    # Requeue after two files lost their outputs (as if their task had been cut off): the job comes back with the
    # same id, every task skips what it finished, only those two are processed again, by their own tasks.
    lost = good[1], good[4]
    for n in lost:
        (out / ".a2v-state" / "done" / f"{n}.json").unlink()
        (out / f"{n}.selections.txt").unlink()
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=30, capture_output=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        texts = {t: (logs / f"{job}_{t}.out").read_text() for t in map(str, range(TASKS))}
        if all("(restart 1)" in t and t.count("exit status") == 2 for t in texts.values()):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"requeued tasks did not finish: {texts}")
    states = wait_array(job, TASKS, 120, logs)
    counts = done_lines(logs)
    assert counts == Counter({n: 2 if n in lost else 1 for n in good}), counts
    for task, text in texts.items():
        mine = [n for k, n in enumerate(names) if k % TASKS == int(task)]
        n_done = len([n for n in mine if n != "rec_bad" and n not in lost])
        assert f"{n_done} of {len(mine)} files already done" in text.split("(restart 1)")[1], text[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"done": len(good), "failed": 1, "pending": 0}
    assert all((out / f"{n}.selections.txt").is_file() for n in good)


@pytest.mark.timeout(600)
def test_embed_array_job_with_workers(slurm_cluster, recordings, tmp_path):
    """`slurm/predict.sh embed` with 2 tasks x 2 workers: the index covers every readable file once."""
    from a2v_het.eval.embed import read_index

    enc = write_encoder_export(tmp_path / "enc")
    out, logs = tmp_path / "emb", tmp_path / "logs"
    logs.mkdir()
    job = sbatch(["--array=0-1", "--ntasks=1", "--cpus-per-task=2", "--gres=none", "--time=10",
                  f"--output={logs}/%A_%a.out", str(PREDICT_SH), "embed", "--checkpoint", str(enc), str(recordings),
                  "--out", str(out), "--window-s", "1", "--workers", "2", "--no-progress"], tmp_path, job_env())
    states = wait_array(job, 2, 500, logs)
    assert sorted(code for _, code in states.values()) == ["0:0", "3:0"], states
    good = sorted(p.stem for p in recordings.iterdir() if p.stem != "rec_bad")
    assert done_lines(logs) == Counter({n: 1 for n in good})
    index = read_index(out)
    rows = Counter(r["name"] for r in index)
    for n in good:
        info = sf.info(str(next(recordings.glob(f"{n}.*"))))
        assert rows[n] == 3 * info.channels  # 3 s in 1 s windows, per channel


@pytest.mark.timeout(600)
def test_usr2_stops_requeues_and_the_task_finishes_each_file_once(slurm_cluster, tmp_path):
    """USR2 to the batch shell (what --signal=B:USR2@120 sends before the time limit): the running file is
    abandoned without a trace, the task requeues itself, comes back as restart 1, skips the finished files and
    processes each of the others; no file is logged as done twice and no temporary file is left."""
    det = write_detector_export(tmp_path / "det", ("tone",))
    audio = tmp_path / "long"
    audio.mkdir()
    rng = np.random.default_rng(1)
    for k in range(12):
        sf.write(str(audio / f"r{k:02d}.flac"), (0.1 * rng.standard_normal(48000 * 60)).astype(np.float32), 48000)
    out, logs = tmp_path / "pred", tmp_path / "logs"
    logs.mkdir()
    job = sbatch(["--array=0-0", "--ntasks=1", "--cpus-per-task=1", "--gres=none", "--time=10",
                  f"--output={logs}/%A_%a.out", str(PREDICT_SH), "predict", "--checkpoint", str(det), str(audio),
                  "--out", str(out), "--window-s", "10", "--hop-s", "5", "--no-progress"], tmp_path, job_env())
    log = logs / f"{job}_0.out"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.is_file() or len(done_lines(logs)) < 2):
        time.sleep(0.2)
    assert len(done_lines(logs)) >= 2, log.read_text()[-3000:] if log.is_file() else "no log"
    subprocess.run(["scancel", "--batch", "--signal=USR2", f"{job}_0"], check=True, timeout=30)
    deadline = time.time() + 400
    while time.time() < deadline:
        text = log.read_text()
        if "(restart 1)" in text and "exit status" in text.split("(restart 1)")[1]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(log.read_text()[-4000:])
    text = log.read_text()
    first, second = text.split("(restart 1)")
    assert "USR2 (time limit or preemption): stopping and requeueing" in first
    n_first = len(re.findall(r"\[a2v-het\] done ", first))
    assert 2 <= n_first < 12, first[-3000:]
    assert f"{n_first} of 12 files already done" in second
    assert done_lines(logs) == Counter({f"r{k:02d}": 1 for k in range(12)})
    assert "exit status 0" in second
    assert json.loads((out / "report.json").read_text())["counts"] == {"done": 12, "failed": 0, "pending": 0}
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
