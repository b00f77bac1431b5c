"""Rank-0 logging: console lines, a JSONL metrics file, and wandb (offline without an API key)."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from a2v_het.train.config import LoggingConfig


def wandb_mode(cfg: LoggingConfig) -> str:
    if cfg.wandb != "auto":
        return cfg.wandb
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    def __init__(self, run_dir: Path, cfg: LoggingConfig, config_dict: dict, run_id: str | None, enabled: bool):
        self.enabled = enabled
        self.run_dir = run_dir
        self.wandb = None
        self.run_id = run_id
        if not enabled:
            return
        self.jsonl = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
        mode = wandb_mode(cfg)
        if mode != "disabled":
            import wandb  # lazy: wandb takes 0.4 s to import; logging.wandb=disabled never needs it

            self.run_id = run_id or secrets.token_hex(4)
            # resume="allow" + the same id: a preempted and requeued job continues the same wandb run.
            self.wandb = wandb.init(project=cfg.project, name=cfg.run_name or run_dir.name, id=self.run_id,
                                    resume="allow", dir=str(run_dir), mode=mode, config=config_dict)

    def log(self, step: int, metrics: dict[str, Any], console: bool = True) -> None:
        if not self.enabled:
            return
        row = {"step": step, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if console:
            keys = [k for k in metrics if k not in ("lr",)]
            body = " ".join(f"{k}={_fmt(metrics[k])}" for k in keys)
            print(f"step {step:>7d} lr={_fmt(metrics.get('lr', 0.0))} {body}", flush=True)

    def log_image(self, step: int, name: str, path: Path) -> None:
        if self.enabled and self.wandb is not None:
            import wandb  # lazy: as in __init__

            self.wandb.log({name: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.wandb is not None:
            self.wandb.finish()


def _fmt(v: Any) -> str:
    v = float(v)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4f}"
