"""Preemption and time-outs: SLURM sends SIGUSR2 (``--signal=USR2@120``) before it kills or requeues a job.

The handler only sets a flag; the training loop all-reduces it at the next step so that every rank stops at the
same step, they save a checkpoint together, and only then does rank 0 ask for the requeue. The requeued job finds
``latest`` and resumes. Nothing happens inside the handler itself: a signal can land in the middle of a collective,
and a rank that saved or exited there would leave the others waiting.

Two ways a job comes back:

- ``sbatch slurm/pretrain.sh`` (``--requeue``): rank 0 runs ``scontrol requeue $SLURM_JOB_ID`` after the checkpoint.
- ``a2v-het launch`` (submitit): submitit installs its own USR2 handler in every task; it would call the job's
  ``checkpoint()``, requeue and ``sys.exit`` on rank 0 at once, before anything is saved. ``install_handlers``
  puts ours in front and keeps submitit's; after the collective checkpoint rank 0 calls submitit's handler, which
  pickles ``checkpoint()``'s DelayedSubmission, requeues (``scontrol requeue``) and exits. The other ranks return
  and are ended by the requeue.

SIGTERM (``scancel``, the kill at the end of a preemption grace time) also stops the run with a checkpoint, but
requeues nothing: whoever sent it decides what happens to the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import Any

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
_STATE: dict[str, Any] = {"flag": False, "signal": None, "previous": {}}


def _request_stop(signum, frame):  # noqa: ARG001
    _STATE["flag"] = True
    # A USR2 (requeue wanted) is not overwritten by a later SIGTERM (the kill that may follow it).
    if _STATE["signal"] != signal.SIGUSR2:
        _STATE["signal"] = signum


def install_handlers() -> None:
    """Install the flag-setting handler for SIGUSR2 and SIGTERM; clears an earlier flag (one call per run).

    Handlers that were installed before (submitit's) are kept for :func:`requeue_if_preempted`.
    """
    _STATE.update(flag=False, signal=None)
    for sig in STOP_SIGNALS:
        previous = signal.getsignal(sig)
        if previous is not _request_stop:
            _STATE["previous"][sig] = previous
        signal.signal(sig, _request_stop)


def restore_handlers() -> None:
    """Put back the handlers that were installed before :func:`install_handlers`."""
    for sig, previous in list(_STATE["previous"].items()):
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _STATE["previous"] = {}


def stop_requested() -> bool:
    return bool(_STATE["flag"])


def stop_signal() -> int | None:
    return _STATE["signal"]


def stop_reason() -> str:
    return f"signal {signal.Signals(_STATE['signal']).name}" if _STATE["signal"] is not None else "time/step limit"


def in_submitit_job() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR")) and bool(os.environ.get("SLURM_JOB_ID"))


def _submitit_handler():
    """submitit's USR2 handler (a bound ``SignalHandler.checkpoint_and_try_requeue``), if it was installed."""
    previous = _STATE["previous"].get(signal.SIGUSR2)
    if callable(previous) and getattr(previous, "__name__", "") == "checkpoint_and_try_requeue":
        return previous
    return None


def requeue_if_preempted(is_main: bool) -> bool:
    """After the checkpoint of a USR2 stop (every rank has saved): rank 0 gets the job requeued.

    - submitit job: submitit's own handler runs now (``checkpoint()`` -> DelayedSubmission pickled ->
      ``scontrol requeue`` -> ``sys.exit``; raises ``UncompletedJobError`` when it will not requeue, e.g. after too
      many time-outs, which submitit reports as the job's error).
    - sbatch job (``--requeue``): ``scontrol requeue $SLURM_JOB_ID``.

    Returns True when a requeue was requested (sbatch case; the submitit case does not return on success).
    Other ranks, other signals and runs outside SLURM: nothing, False.
    """
    job = os.environ.get("SLURM_JOB_ID")
    if not (is_main and _STATE["signal"] == signal.SIGUSR2 and job):
        return False
    if in_submitit_job():
        handler = _submitit_handler()
        if handler is None:
            print("[a2v-het] submitit job without submitit's USR2 handler: not requeued", flush=True)
            return False
        print(f"[a2v-het] checkpoint saved; handing over to submitit to requeue job {job}", flush=True)
        handler(signal.SIGUSR2, None)  # exits the process after the requeue
        return True
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        print(f"[a2v-het] scontrol requeue {job} failed: {proc.stderr.strip()} (was the job submitted with "
              "--requeue?)", flush=True)
        return False
    print(f"[a2v-het] requeued SLURM job {job}", flush=True)
    return True
