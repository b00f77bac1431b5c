"""``a2v-het launch``: the pretraining job through submitit, requeued on time-out and preemption.

    a2v-het launch RECIPE --nodes N --gpus-per-node G [--partition P] [--time MIN] [--cpus-per-task C]
                   [--folder F] [--wait] [key=value ...]

The same job as ``sbatch slurm/pretrain.sh`` (one task per GPU, every task runs the training loop with the rank
variables of its srun task), built by submitit's AutoExecutor. The synthetic shards a recipe names
(``data.synthesize_if_missing``) are written before submission, in the submitting process (the CLI's data step,
passed in as ``prepare``); the job's ranks find them in place. The submitted callable is :class:`PretrainJob`, a
``submitit.helpers.Checkpointable``: ``__call__`` runs (or resumes) the recipe, ``checkpoint()`` returns a
``DelayedSubmission`` of the same job, which submitit pickles before it requeues, so the requeued job calls
``PretrainJob`` again and the loop resumes from the run folder's ``checkpoints/latest``.

How the signal is handled (see a2v_het/train/preemption.py): SLURM sends USR2 ``--time`` minus
``signal_delay_s`` into the job, or on preemption. submitit's own handler would requeue and exit on rank 0 at once,
before anything is saved; the loop's handler is installed in front of it, the ranks agree at the next step, save a
checkpoint together, and only then does rank 0 call submitit's handler (-> ``checkpoint()`` -> pickle ->
``scontrol requeue`` -> exit). ``checkpoint()`` itself does no collective work and touches no files.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import submitit

from a2v_het.config import ConfigError, load_config
from a2v_het.recipe import PretrainConfig
from a2v_het.runs import completed_step, is_finished
from a2v_het.train import loop, preemption
from a2v_het.train.distributed import default_to_cpu_accelerator


class PretrainJob(submitit.helpers.Checkpointable):
    """The pickled job: a recipe, its overrides and the folder relative paths are resolved from."""

    def __init__(self, recipe: str, overrides: list[str], workdir: str) -> None:
        self.recipe = recipe
        self.overrides = list(overrides)
        self.workdir = workdir

    def __call__(self) -> dict:
        os.chdir(self.workdir)
        max_steps = load_config(PretrainConfig, self.recipe, self.overrides).train.max_steps
        run_dir = loop.main_from_cli(self.recipe, self.overrides)  # on rank 0 a USR2 stop does not return (requeued)
        # every rank sees it: the checkpoint ends with a barrier after `latest` moved
        step = completed_step(run_dir) or 0
        finished = is_finished(run_dir, max_steps)
        rank = int(os.environ.get("RANK", 0))  # exported by init_distributed
        if not finished and preemption.stop_signal() == signal.SIGUSR2 and rank != 0 and preemption.in_submitit_job():
            _wait_for_requeue(preemption)
        return {"run_dir": str(run_dir), "step": step, "max_steps": max_steps, "finished": finished}

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 only, after the loop's collective checkpoint (or, for a signal that came
        before training started, with nothing new to save): resubmit the same job; it resumes from ``latest``."""
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _wait_for_requeue(preemption, limit_s: float = 300.0) -> None:
    """A non-zero rank after a signal stop: rank 0 is requeueing the job, which ends this process. Returning would
    write this task's result for a job that is not finished, so wait for the end (SIGTERM ends it at once)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    print(f"[a2v-het] rank stopped by {preemption.stop_reason()}; waiting for the requeue", flush=True)
    deadline = time.time() + limit_s
    while time.time() < deadline:
        time.sleep(1.0)
    raise submitit.core.utils.UncompletedJobError(
        f"stopped by {preemption.stop_reason()} but the job was not requeued within {limit_s:.0f} s")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="a2v-het launch", description=__doc__,
                                          formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/meerkat.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=4, help="GPUs per node; one task per GPU (0: CPU job)")
    p.add_argument("--tasks-per-node", type=int, default=None,
                   help="tasks (ranks) per node; default: --gpus-per-node, or 1 without GPUs")
    p.add_argument("--cpus-per-task", type=int, default=8)
    p.add_argument("--partition", default=None)
    p.add_argument("--time", type=int, default=24 * 60, help="minutes per job (it is requeued at the end)")
    p.add_argument("--signal-delay", type=int, default=120,
                   help="seconds before the time limit at which SLURM sends USR2 (a checkpoint must fit)")
    p.add_argument("--max-timeouts", type=int, default=20,
                   help="how many times the job is requeued after reaching its time limit (preemptions: unlimited)")
    p.add_argument("--mem-gb", type=float, default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--constraint", default=None)
    p.add_argument("--name", default=None, help="job name (default: a2v-<run folder name>)")
    p.add_argument("--folder", default=None,
                   help="submitit folder (pickles and logs, %%j = job id); default: <train.run_dir>/submitit")
    p.add_argument("--cluster", default=None, choices=["slurm", "local"],
                   help="submitit cluster (default: slurm when sbatch is found, else local)")
    p.add_argument("--wait", action="store_true", help="block until the job (and its requeues) finished")
    return p


def add_args(parser: argparse.ArgumentParser) -> None:
    """For ``a2v-het launch``: the options are parsed by :func:`run` (intermixed: options may follow the recipe and
    come between the key=value overrides, which plain subparser positionals do not allow)."""
    inner = build_parser()
    parser.description = inner.format_help().split("\n\n", 1)[-1]  # the inner help without its usage lines
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("argv", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.usage = inner.format_usage().replace("usage: ", "", 1)


def run(args: argparse.Namespace, prepare: Callable[[PretrainConfig], bool] | None = None) -> int:
    argv = getattr(args, "argv", None)
    if argv is not None:
        args = build_parser().parse_intermixed_args(argv)
    return launch(args, prepare)


def executor_parameters(args: argparse.Namespace, job_name: str) -> dict:
    tasks = args.tasks_per_node or (args.gpus_per_node if args.gpus_per_node > 0 else 1)
    params: dict = {
        "name": job_name,
        "nodes": args.nodes,
        "tasks_per_node": tasks,
        "cpus_per_task": args.cpus_per_task,
        "timeout_min": args.time,
        "slurm_signal_delay_s": args.signal_delay,
        # scontrol requeue needs a requeueable job (clusters may set JobRequeue=0)
        "slurm_additional_parameters": {"requeue": True},
        # SLURM 22.05+: srun no longer inherits --cpus-per-task from the allocation
        "slurm_setup": [f"export SRUN_CPUS_PER_TASK={args.cpus_per_task}",
                        f"export OMP_NUM_THREADS=${{OMP_NUM_THREADS:-{args.cpus_per_task}}}",
                        "export PYTHONUNBUFFERED=1"],
    }
    if args.gpus_per_node > 0:
        params["gpus_per_node"] = args.gpus_per_node  # absent, not 0: --gpus-per-node=0 fails without GRES
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.mem_gb:
        params["mem_gb"] = args.mem_gb
    for key in ("account", "qos", "constraint"):
        if getattr(args, key):
            params[f"slurm_{key}"] = getattr(args, key)
    return params


def launch(args: argparse.Namespace, prepare: Callable[[PretrainConfig], bool] | None = None) -> int:
    """Submit the job; ``prepare(cfg)`` runs first, in this process (``a2v-het launch`` passes the CLI's data step,
    :func:`a2v_het.cli.make_data`, so the synthetic shards a recipe names exist before any rank starts; False =
    do not submit)."""
    try:  # a bad recipe fails here, not in the queue
        cfg = load_config(PretrainConfig, args.recipe, args.overrides)
        cfg.validate()
    except ConfigError as e:
        print(f"a2v-het launch: {e}", file=sys.stderr)
        return 2
    if prepare is not None:
        if not prepare(cfg):
            return 0
    elif cfg.data.synthesize_if_missing and not (Path(cfg.data.shards) / "manifest.json").is_file():
        # the training loop writes no data: without the CLI's data step the job would fail in the queue
        print(f"a2v-het launch: data.shards={cfg.data.shards!r} has no manifest.json; `a2v-het launch` (a2v_het.cli) "
              f"writes the synthetic shards the recipe names before it submits, or make them with "
              f"`python -m data_tools synth {cfg.data.shards}`", file=sys.stderr)
        return 2
    workdir = os.getcwd()
    run_dir = Path(cfg.train.run_dir)
    folder = args.folder or str(run_dir / "submitit")
    job_name = args.name or f"a2v-{run_dir.resolve().name}"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.cluster, slurm_max_num_timeout=args.max_timeouts)
    executor.update_parameters(**executor_parameters(args, job_name))
    job = executor.submit(PretrainJob(args.recipe, args.overrides, workdir))
    print(f"[a2v-het] submitted job {job.job_id} ({executor.cluster}): {args.nodes} node(s) x "
          f"{executor_parameters(args, job_name)['tasks_per_node']} task(s); run folder {run_dir}", flush=True)
    print(f"[a2v-het] logs: {job.paths.stdout} (rank 0), {Path(job.paths.folder)}", flush=True)
    if not args.wait:
        return 0
    try:
        results = job.results()
    except Exception as e:  # submitit re-raises the job's error with its trace
        print(f"[a2v-het] job {job.job_id} failed: {e}", file=sys.stderr, flush=True)
        return 1
    result = results[0]
    print(f"[a2v-het] job {job.job_id} done: step {result['step']} / {result['max_steps']} "
          f"in {result['run_dir']}", flush=True)
    return 0 if result["finished"] else 3


def main(argv: list[str] | None = None) -> int:
    default_to_cpu_accelerator()
    return launch(build_parser().parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
