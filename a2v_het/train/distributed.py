"""Who am I in the job: rank variables from torchrun, SLURM (srun) or submitit, then the process group.

The same code runs a one-process CPU smoke test and a multi-node GPU job: only the environment differs.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from collections.abc import Mapping
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


def expand_nodelist(nodelist: str) -> list[str]:
    """SLURM's compact host list -> host names, in order: ``n[01-03,7],gpu-a[1-2]-ib,m1`` ->
    ``n01 n02 n03 n7 gpu-a1-ib gpu-a2-ib m1`` (zero padding kept; several bracket groups in one name expand as a
    product, like ``scontrol show hostnames``). Raises ValueError on unbalanced brackets."""
    hosts: list[str] = []
    for group in _split_top_level(nodelist.strip()):
        hosts.extend(_expand_group(group))
    return hosts


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in nodelist {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in nodelist {text!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_group(group: str) -> list[str]:
    if "[" not in group:
        return [group]
    head, rest = group.split("[", 1)
    inside, tail = rest.split("]", 1)
    out = []
    for item in inside.split(","):
        item = item.strip()
        if "-" in item:
            lo, hi = item.split("-", 1)
            if not (lo.isdigit() and hi.isdigit()) or int(hi) < int(lo):
                raise ValueError(f"bad range {item!r} in nodelist group {group!r}")
            width = len(lo)
            values = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        else:
            if not item.isdigit():
                raise ValueError(f"bad item {item!r} in nodelist group {group!r}")
            values = [item]
        out.extend(head + v + t for v in values for t in _expand_group(tail))
    return out


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM nodelist (where rank 0 runs: SLURM places tasks in nodelist order)."""
    try:
        hosts = expand_nodelist(nodelist)
        if hosts:
            return hosts[0]
    except ValueError:
        pass
    try:  # a syntax this parser does not know: ask SLURM
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=30, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return nodelist.split(",")[0].split("[")[0]


def slurm_port(job_id: str) -> int:
    """Deterministic per job so every task agrees without talking; away from the ephemeral range (32768+)."""
    return 15000 + int(job_id) % 17000 if job_id.isdigit() else 29500


def submitit_port(job_id: str) -> int:
    """The port submitit's TorchDistributedEnvironment derives from the job id (when MASTER_PORT is unset)."""
    return random.Random(job_id).randint(20000, 60000)


def _submitit_job_id(env) -> str:
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID", "")


def dist_env_from(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the rank variables; precedence: torchrun, submitit, SLURM (srun tasks), single process.

    - torchrun (and anything else that exports RANK, WORLD_SIZE, MASTER_ADDR): taken as is.
    - submitit (``SUBMITIT_EXECUTOR=slurm`` in a SLURM job): what submitit's ``TorchDistributedEnvironment`` would
      export (rank = SLURM_PROCID, master = first host of SLURM_JOB_NODELIST, port from the job id unless
      MASTER_PORT is set); computed here from the variables, so nothing is exported before init_distributed and
      CUDA_VISIBLE_DEVICES is left alone (DeepSpeed picks the GPU from LOCAL_RANK).
    - submitit's local executor (``a2v-het launch --cluster local``): its SUBMITIT_LOCAL_* variables, one host.
    - SLURM: one process per srun task (SLURM_STEP_ID is set inside an srun step; the batch shell itself is one
      process). MASTER_ADDR/MASTER_PORT from the environment (slurm/pretrain.sh exports them) or the first host of
      the step's nodelist and a port derived from the job id.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env and "MASTER_ADDR" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), env["MASTER_ADDR"],
                       int(env.get("MASTER_PORT", 29500)), "torchrun")
    if env.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in env and "SLURM_PROCID" in env:
        nodelist = env.get("SLURM_JOB_NODELIST", "")
        master = first_slurm_host(nodelist) if nodelist else socket.gethostname()
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else submitit_port(_submitit_job_id(env))
        return DistEnv(int(env["SLURM_PROCID"]), int(env.get("SLURM_NTASKS", 1)), int(env.get("SLURM_LOCALID", 0)),
                       master, port, "submitit")
    if env.get("SUBMITIT_EXECUTOR") == "local" and "SUBMITIT_LOCAL_GLOBALID" in env:
        job_id = env.get("SUBMITIT_LOCAL_JOB_ID", "")
        port = int(env["MASTER_PORT"]) if env.get("MASTER_PORT") else submitit_port(job_id)
        return DistEnv(int(env["SUBMITIT_LOCAL_GLOBALID"]), int(env.get("SUBMITIT_LOCAL_NTASKS", 1)),
                       int(env.get("SUBMITIT_LOCAL_LOCALID", 0)), "127.0.0.1", port, "submitit")
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        ntasks = int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", 1)))
        if ntasks > 1:
            nodelist = env.get("SLURM_STEP_NODELIST", env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
            master = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else "127.0.0.1")
            port = int(env.get("MASTER_PORT") or slurm_port(env.get("SLURM_JOB_ID", "")))
            return DistEnv(int(env["SLURM_PROCID"]), ntasks, int(env.get("SLURM_LOCALID", 0)), master, port, "slurm")
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT", 0)) or _free_port(), "single")


def visible_device_index(local_rank: int, device_count: int) -> int:
    """The GPU index this rank uses among the ones it can see: ``local_rank % device_count``.

    The local rank counts tasks on a node, not GPUs a task sees. Under SLURM GPU binding (``--gpus-per-task``,
    ``--gpu-bind``) every task sees only its own GPU as device 0, so the raw local rank 1, 2, ... names a device
    that does not exist ("invalid device ordinal"); with all GPUs visible the two agree. Without a GPU
    (``device_count`` 0) the local rank is returned unchanged (nothing to bind).
    """
    return local_rank % device_count if device_count > 0 else local_rank


def rank_variables(dist: DistEnv, device_count: int) -> dict[str, str]:
    """The environment :func:`init_distributed` exports. ``LOCAL_RANK`` is the *visible device index*
    (:func:`visible_device_index`), because DeepSpeed calls ``set_device(LOCAL_RANK)`` itself."""
    return {"RANK": str(dist.rank), "WORLD_SIZE": str(dist.world_size),
            "LOCAL_RANK": str(visible_device_index(dist.local_rank, device_count)),
            "MASTER_ADDR": dist.master_addr, "MASTER_PORT": str(dist.master_port)}


def init_distributed(dist: DistEnv) -> str:
    """Export the variables torch/webdataset/DeepSpeed read, start the process group; returns the backend."""
    device_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    os.environ.update(rank_variables(dist, device_count))
    backend = "nccl" if device_count else "gloo"
    if device_count:
        torch.cuda.set_device(visible_device_index(dist.local_rank, device_count))
    import deepspeed  # lazy: only after DS_ACCELERATOR is decided; only training needs it

    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
    return backend


def default_to_cpu_accelerator() -> None:
    """DeepSpeed reads DS_ACCELERATOR when it is first imported: on a machine without a GPU it must say cpu."""
    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
