"""Preemption and time-outs: SLURM sends SIGUSR2 (``--signal=USR2@120``) before it kills or requeues a job.

The handler only sets a flag; the training loop all-reduces it at the next step so that every rank stops at the
same step, they save a checkpoint together, and then rank 0 alone asks SLURM to requeue the job. The requeued job
finds ``latest`` and resumes.
"""

from __future__ import annotations

import os
import signal
import subprocess

_STATE = {"flag": False, "signal": None}


def _request_stop(signum, frame):  # noqa: ARG001
    _STATE["flag"] = True
    _STATE["signal"] = signum


def install_handlers() -> None:
    for sig in (signal.SIGUSR2, signal.SIGTERM):
        signal.signal(sig, _request_stop)


def stop_requested() -> bool:
    return bool(_STATE["flag"])


def stop_reason() -> str:
    return f"signal {signal.Signals(_STATE['signal']).name}" if _STATE["signal"] is not None else "time/step limit"


def requeue_if_preempted(is_main: bool) -> bool:
    """After the checkpoint of a signal stop: rank 0 requeues its SLURM batch job (sbatch --requeue).

    Returns True when a requeue was requested. submitit jobs requeue themselves through ``checkpoint()``.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not (is_main and _STATE["signal"] == signal.SIGUSR2 and job and not os.environ.get("SUBMITIT_EXECUTOR")):
        return False
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        print(f"[a2v-het] scontrol requeue {job} failed: {proc.stderr.strip()}", flush=True)
        return False
    print(f"[a2v-het] requeued SLURM job {job}", flush=True)
    return True
