"""Shared by the inference tests (tests/ is on sys.path under pytest's default import mode): smoke-size export
folders written the way ``a2v-het export`` writes them, and a folder of good and broken audio files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]


def write_encoder_export(out: Path, seed: int = 0, overrides: list[str] | None = None) -> Path:
    """A pretraining-style export (config.yaml without a finetune section + model.safetensors) of the smoke
    recipe's model at a seeded random initialisation, with the decoder and mask embedding as a real export has."""
    from safetensors.torch import save_file

    from a2v_het.config import load_config, save_config
    from a2v_het.frontend import build_frontend
    from a2v_het.model.data2vec import Data2VecModel
    from a2v_het.train.config import PretrainConfig

    torch.manual_seed(seed)
    cfg = load_config(PretrainConfig, str(ROOT / "recipes" / "smoke.yaml"), overrides or [])
    model = Data2VecModel(cfg.model, build_frontend(cfg.frontend))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"))
    save_config(cfg, out / "config.yaml")
    return out


def write_detector_export(out: Path, classes: tuple[str, ...] = ("tone",), seed: int = 0) -> Path:
    """A fine-tune-style export (config.yaml with a finetune section + model.safetensors with a head) at a seeded
    random initialisation."""
    from safetensors.torch import save_file

    from a2v_het.config import load_config, save_config
    from a2v_het.train.finetune import FinetuneConfig, FinetuneObjective

    torch.manual_seed(seed)
    cfg = load_config(FinetuneConfig, str(ROOT / "recipes" / "synthetic_finetune.yaml"),
                      [f"finetune.classes=[{','.join(classes)}]", "finetune.dropout=0.0"])
    obj = FinetuneObjective(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in obj.state_dict().items()}, str(out / "model.safetensors"))
    save_config(cfg, out / "config.yaml")
    return out


GOOD = {"stereo_8k.wav": (8000, 2, 5.0), "mono_48k.flac": (48000, 1, 3.0), "sub/mono_22k.flac": (22050, 1, 2.5)}
"""name -> (sample rate Hz, channels, seconds) of the readable files :func:`write_audio_folder` writes."""

BROKEN = {"corrupt.wav": "Format not recognised", "empty.wav": "empty file (0 bytes)",
          "no_samples.wav": "no audio (0 samples", "cut.flac": "decoding failed at", "notes.flac": "cannot open"}
"""name -> a part of the reason the report must give."""


def write_audio_folder(root: Path, seed: int = 0) -> Path:
    """Real WAV/FLAC files: GOOD, a WAV cut off half-way (``cut_wav.wav``: readable up to the cut, reported as
    truncated) and BROKEN ones (random bytes, 0 bytes, a WAV with no samples, a FLAC cut off half-way, text)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for name, (sr, ch, dur) in GOOD.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        x = 0.1 * rng.standard_normal((int(dur * sr), ch)).astype(np.float32)
        sf.write(str(root / name), x if ch > 1 else x[:, 0], sr, subtype="PCM_16")
    (root / "corrupt.wav").write_bytes(rng.bytes(6000))
    (root / "empty.wav").write_bytes(b"")
    sf.write(str(root / "no_samples.wav"), np.zeros(0, np.float32), 16000)
    full = root / "full.tmp.flac"
    sf.write(str(full), 0.1 * rng.standard_normal(16000 * 20).astype(np.float32), 16000)
    data = full.read_bytes()
    (root / "cut.flac").write_bytes(data[: len(data) // 2])
    os.unlink(full)
    full = root / "full.tmp.wav"
    sf.write(str(full), 0.1 * rng.standard_normal(16000 * 4).astype(np.float32), 16000, subtype="PCM_16")
    data = full.read_bytes()
    (root / "cut_wav.wav").write_bytes(data[: 44 + 2 * 16000 * 3])  # 3 of 4 s
    os.unlink(full)
    (root / "notes.flac").write_text("not audio\n")
    return root


def peak_rss_growth(warm_up: str, call: str, cwd: Path, threads: int) -> dict:
    """Run ``warm_up`` (Python statements), then ``res = <call>`` in a fresh interpreter with ``threads`` torch
    threads; returns ``res`` (a dict) plus ``growth_kb``, how far the call raised the process's peak RSS (KiB).
    The warm-up loads the model and touches every code path first, so the growth is what the call holds."""
    driver = (f"import json, resource\n{warm_up}\n"
              "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              f"res = {call}\n"
              "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
              "print(json.dumps({'growth_kb': after - before, **res}, default=str))\n")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=300, env=env,
                          cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
