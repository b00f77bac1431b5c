"""Who am I in the job: rank variables from torchrun, SLURM (srun) or submitit, then the process group.

The same code runs a one-process CPU smoke test and a multi-node GPU job: only the environment differs.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "single", "torchrun", "slurm", "submitit"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    # Fallback parse of "node[01-04],other" -> "node01" without scontrol.
    head = nodelist.split(",")[0]
    if "[" in head:
        prefix, rest = head.split("[", 1)
        return prefix + rest.split("-")[0].split(",")[0].rstrip("]")
    return head


def _slurm_port(job_id: str) -> int:
    # Deterministic per job so every task agrees without talking; away from the ephemeral range.
    return 15000 + int(job_id) % 20000 if job_id.isdigit() else 29500


def dist_env_from(environ: dict[str, str] | None = None) -> DistEnv:
    """Read the rank variables; precedence: torchrun, submitit, SLURM (srun tasks), single process."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), env["MASTER_ADDR"],
                       int(env.get("MASTER_PORT", 29500)), "torchrun")
    if env.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in env and environ is None:
        import submitit

        dist = submitit.helpers.TorchDistributedEnvironment()
        # DeepSpeed picks the GPU from LOCAL_RANK, so CUDA_VISIBLE_DEVICES is left alone.
        dist.export(set_cuda_visible_devices=False)
        return DistEnv(dist.rank, dist.world_size, dist.local_rank, dist.master_addr, dist.master_port, "submitit")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and int(env["SLURM_NTASKS"]) > 1:
        nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "localhost"))
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR", _first_slurm_host(nodelist)),
                       int(env.get("MASTER_PORT", _slurm_port(env.get("SLURM_JOB_ID", "")))), "slurm")
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def init_distributed(dist: DistEnv) -> str:
    """Export the variables torch/webdataset/DeepSpeed read, start the process group; returns the backend."""
    os.environ.update(RANK=str(dist.rank), WORLD_SIZE=str(dist.world_size), LOCAL_RANK=str(dist.local_rank),
                      MASTER_ADDR=dist.master_addr, MASTER_PORT=str(dist.master_port))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(dist.local_rank % torch.cuda.device_count())
    import deepspeed

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return backend
