#!/bin/bash
# Inference over many recordings as a SLURM array job: every array task runs `a2v-het predict ...` or
# `a2v-het embed ...` on its share of the files.
#
#   mkdir -p logs && sbatch --array=0-15 slurm/predict.sh predict --checkpoint runs/meerkat-ft /data/field --out preds
#   sbatch --array=0-15 slurm/predict.sh embed --checkpoint exports/meerkat /data/field --out emb --window-s 10
#   sbatch --array=0-3 --gres=none --cpus-per-task=2 slurm/predict.sh predict ...   (CPU; the CI cluster)
#   bash slurm/predict.sh predict ...   (outside a job) makes logs/ and submits itself with sbatch
#
# Shares: every task lists the same inputs (files and folders searched recursively), sorted by name, and takes the
# files at positions k with k % SLURM_ARRAY_TASK_COUNT == SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN, so each file
# is processed by exactly one task (use a contiguous range: --array=0-N or 0-N%M; the inputs must not change while
# the job runs). All tasks write into the same --out folder; every file's outputs and its done record are written
# atomically, report.json and the merged events.csv / index.csv are rebuilt under a file lock when a task ends (the
# last task to end leaves them complete). Add --workers N to run N processes inside each task.
#
# Requeue and resume: a task that is requeued (preemption, `scontrol requeue JOBID`, or the USR2 sent 120 s before
# the time limit, which makes the task requeue itself) starts again and skips the files it already finished; the
# file it was cut off in is redone from the start (its outputs were never published half-way).
#
# Exit status of a task: 0, or 3 when some of its files were unreadable, empty or cut off (listed with the reason in
# OUT/report.json and in the log; the rest was processed), 2 for a bad checkpoint or a missing input path.
# Logs: logs/<job name>-<array job id>_<task id>.out, appended across requeues. Set A2V_PYTHON for another
# interpreter (default: `python` on the PATH that sbatch exported from the submitting shell).
#
#SBATCH --job-name=a2v-infer
#SBATCH --array=0-3
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR2@120
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -uo pipefail

if [ -z "${SLURM_JOB_ID:-}" ]; then
    [ $# -ge 1 ] || { echo "usage: sbatch --array=0-N slurm/predict.sh predict|embed ARGS..." >&2; exit 2; }
    mkdir -p logs
    exec sbatch "$0" "$@"
fi

CMD=${1:?usage: sbatch --array=0-N slurm/predict.sh predict|embed ARGS...}
case "$CMD" in
    predict|embed) ;;
    *) echo "[predict.sh] the first argument must be predict or embed, got '$CMD'" >&2; exit 2 ;;
esac
cd "${SLURM_SUBMIT_DIR:-.}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
export PYTHONUNBUFFERED=1
PYTHON=${A2V_PYTHON:-python}
TASK="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}"

child=""
requeue() {
    echo "[predict.sh] task $TASK: USR2 (time limit or preemption): stopping and requeueing" >&2
    [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
    wait "$child" 2>/dev/null
    scontrol requeue "$TASK"
    exit 0
}
trap requeue USR2

echo "[predict.sh] task $TASK (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURMD_NODENAME:-?}: share" \
     "${SLURM_ARRAY_TASK_ID:-0} - ${SLURM_ARRAY_TASK_MIN:-0} of ${SLURM_ARRAY_TASK_COUNT:-1}; $*"
"$PYTHON" -m a2v_het.cli "$@" &
child=$!
wait "$child"
status=$?
echo "[predict.sh] task $TASK: exit status $status"
exit $status
