#!/bin/bash
# Fine-tune on a SLURM cluster: one task per GPU, every task runs `a2v-het finetune RECIPE key=value ...`.
#
# Resources, logs, synthetic data (rank 0 writes, the others wait), rank variables and USR2 -> checkpoint -> requeue
# work exactly as in slurm/pretrain.sh, whose header explains each part.
#
#   mkdir -p logs && sbatch slurm/finetune.sh recipes/meerkat_finetune.yaml finetune.init=exports/meerkat
#   mkdir -p logs && sbatch slurm/finetune.sh RECIPE [key=value ...]
#   sbatch --nodes=1 --ntasks-per-node=2 --cpus-per-task=1 --gres=none slurm/finetune.sh RECIPE   (CPU)
#   bash slurm/finetune.sh RECIPE ...   (outside a job) makes logs/ and submits itself with sbatch
#
# Keep --ntasks-per-node equal to the GPUs per node (--gres=gpu:N); override --gres=none on a cluster without GPU
# GRES. Log: logs/<job name>-<job id>.out (append mode: a requeued job continues it). The fine-tuning loop is
# expected to honour the same contract as pretraining: resume from RUN_DIR/checkpoints/latest, stop with a
# checkpoint on SIGUSR2, and let rank 0 requeue (a2v_het/train/preemption.py).
#
#SBATCH --job-name=a2v-finetune
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gres=gpu:4
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
    [ $# -ge 1 ] || { echo "usage: sbatch slurm/finetune.sh RECIPE [key=value ...]" >&2; exit 2; }
    mkdir -p logs
    exec sbatch "$0" "$@"
fi

RECIPE=${1:?usage: sbatch slurm/finetune.sh RECIPE [key=value ...]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
trap '' USR2  # the batch shell is not a rank: a USR2 sent to it must not kill the job

MASTER_ADDR=$(scontrol show hostnames "${SLURM_JOB_NODELIST:-}" 2>/dev/null | head -n1 || true)
if [ -n "$MASTER_ADDR" ]; then export MASTER_ADDR; else unset MASTER_ADDR; fi
export MASTER_PORT=$((15000 + SLURM_JOB_ID % 17000))
export SRUN_CPUS_PER_TASK=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
PYTHON=${A2V_PYTHON:-python}

echo "[finetune.sh] job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NODELIST:-?}:" \
     "${SLURM_NTASKS:-1} tasks, master ${MASTER_ADDR:-?}:${MASTER_PORT}; $RECIPE $*"
srun --kill-on-bad-exit=1 "$PYTHON" -m a2v_het.cli finetune "$RECIPE" "$@"
