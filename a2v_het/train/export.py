"""``a2v-het export RUN_DIR OUT``: the latest complete checkpoint as safetensors + config, nothing pickled."""

from __future__ import annotations

import json
from pathlib import Path

from a2v_het.atomic import atomic_copy, atomic_write_text
from a2v_het.runs import checkpoint_root, latest_tag


def export_run(run_dir: str | Path, out: str | Path) -> Path:
    run_dir, out = Path(run_dir), Path(out)
    tag = latest_tag(run_dir)
    if tag is None:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint (checkpoints/latest)")
    src = checkpoint_root(run_dir) / tag
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "teacher.safetensors"):
        if (src / name).is_file():
            atomic_copy(src / name, out / name)
    atomic_write_text(out / "config.yaml", (run_dir / "config.yaml").read_text())
    atomic_write_text(out / "export.json", json.dumps({"run_dir": str(run_dir.resolve()), "tag": tag}, indent=2) + "\n")
    return out
