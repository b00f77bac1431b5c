#!/bin/bash
# Pretrain a recipe on a SLURM cluster: one task per GPU, every task runs `a2v-het pretrain RECIPE key=value ...`.
#
#   mkdir -p logs && sbatch slurm/pretrain.sh recipes/meerkat.yaml [key=value ...]
#   sbatch --nodes=4 slurm/pretrain.sh recipes/meerkat.yaml train.run_dir=runs/meerkat-4n
#   sbatch --partition=gpu-long --time=48:00:00 slurm/pretrain.sh recipes/meerkat.yaml
#   # CPU (a cluster without GPUs, or the CI cluster): no GRES, 2 gloo ranks on one node
#   sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gres=none slurm/pretrain.sh recipes/smoke.yaml
#   bash slurm/pretrain.sh RECIPE ...   (outside a job) makes logs/ and submits itself with sbatch
#
# Resources: the #SBATCH lines below are defaults for 4-GPU nodes; options on the sbatch command line win. Keep
# --ntasks-per-node equal to the GPUs per node (--gres=gpu:N): every task drives the GPU of its LOCAL_RANK.
# `--gres=gpu:N` is an error on a cluster without GPU GRES: override it with --gres=none there.
#
# Logs: #SBATCH lines cannot use variables, so the log is logs/<job name>-<job id>.out under the folder sbatch was
# called from. SLURM cannot create that folder: without it the job fails before this script runs, with no log at
# all (hence `mkdir -p logs`, or run this script with bash). Give --output=... on the sbatch line for another place.
# The log is opened in append mode: a requeued job keeps the same id and continues the same file.
#
# Preemption and time limits: SLURM sends SIGUSR2 to the training tasks 120 s before the end (--signal=USR2@120;
# the same signal on preemption where the cluster is configured so). The ranks agree at the next step, save a
# checkpoint together, and rank 0 runs `scontrol requeue $SLURM_JOB_ID` (this job is --requeue); the job comes back
# with the same id and `a2v-het pretrain` resumes from the run folder's checkpoints/latest: step count, LR/EMA
# schedules, data stream and wandb run continue. Send it by hand with `scancel --signal=USR2 JOBID`.
#
# Data: a recipe with data.synthesize_if_missing=true (recipes/smoke.yaml) has its synthetic shards written by the
# CLI's data step before training starts (a2v_het.cli.make_data): every task runs it, rank 0 writes where a
# manifest.json is missing, the other tasks wait for the manifests; the training loop itself writes no data.
#
# Rank variables: srun starts one process per task; a2v_het/train/distributed.py reads SLURM_PROCID,
# SLURM_STEP_NUM_TASKS and SLURM_LOCALID; MASTER_ADDR (first host of the nodelist) and MASTER_PORT (from the job
# id, so every task agrees without talking) are exported here. Set A2V_PYTHON to use another interpreter
# (default: `python` on the PATH that sbatch exported from the submitting shell, e.g. an activated venv).
#
#SBATCH --job-name=a2v-pretrain
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
    # Not inside a job: submit this script (logs/ must exist before the job starts).
    [ $# -ge 1 ] || { echo "usage: sbatch slurm/pretrain.sh RECIPE [key=value ...]" >&2; exit 2; }
    mkdir -p logs
    exec sbatch "$0" "$@"
fi

RECIPE=${1:?usage: sbatch slurm/pretrain.sh RECIPE [key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"

# The batch shell itself is not a training rank: a USR2 sent to it (scancel --full, --signal=B:USR2) must not kill it.
trap '' USR2

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n1 || true)
if [ -n "$MASTER_ADDR" ]; then export MASTER_ADDR; else unset MASTER_ADDR; fi  # else distributed.py parses it
export MASTER_PORT=$((15000 + SLURM_JOB_ID % 17000))
# SLURM 22.05+ srun does not inherit sbatch's --cpus-per-task; this passes it on.
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
PYTHON=${A2V_PYTHON:-python}

echo "[pretrain.sh] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}:" \
     "${SLURM_NTASKS:-1} tasks, master ${MASTER_ADDR:-?}:${MASTER_PORT}; $RECIPE $*"
# --kill-on-bad-exit: one crashed rank ends the step instead of leaving the others waiting in a collective.
srun --kill-on-bad-exit=1 "$PYTHON" -m a2v_het.cli pretrain "$RECIPE" "$@"
