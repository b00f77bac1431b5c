"""The README's Python API example, run as written (only its paths point at a test export, detector and
recording): load an export, embed a waveform at any sample rate, detect calls."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import soundfile as sf

from inference_helpers import write_detector_export, write_encoder_export

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    part = text.split("**Python API.**", 1)[1]
    return re.search(r"```python\n(.*?)```", part, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    code = readme_example()
    enc = write_encoder_export(tmp_path / "export")
    det = write_detector_export(tmp_path / "detector", ("call",))
    rng = np.random.default_rng(0)
    sr = 32000
    sf.write(str(tmp_path / "rec.flac"), (0.1 * rng.standard_normal((5 * sr, 2))).astype(np.float32), sr)
    for old, new in (('"exports/smoke"', repr(str(enc))), ('"runs/finetune_synthetic"', repr(str(det))),
                     ('"rec.flac"', repr(str(tmp_path / "rec.flac")))):
        assert old in code, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["emb"].shape == (4, 2, 64) and scope["times"].tolist()[0] == [0.0, 2.0]
    assert scope["one"].shape == scope["two"].shape == (64,)
    np.testing.assert_allclose(scope["emb"][0, 0], scope["embed_clips"](scope["encoder"], [scope["wave"][: 2 * sr, 0]],
                                                                        [sr])[0], atol=1e-5)
    assert isinstance(scope["events"], list)
    for e in scope["events"]:
        assert e["label"] == "call" and 0 <= e["onset_s"] < e["offset_s"] <= 5.0 and 0 <= e["score"] <= 1
