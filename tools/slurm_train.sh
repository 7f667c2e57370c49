#!/usr/bin/env bash
# Usage: tools/slurm_train.sh PARTITION JOB_NAME CONFIG [WORK_DIR] [train.py args...]
# GPUS (total, default 8), GPUS_PER_NODE (default 8), CPUS_PER_TASK (default 5) and
# SRUN_ARGS come from the environment. mmengine reads the SLURM_* variables (--launcher slurm).
#
# Preemption: on SIGTERM or SIGUSR1, tools/train.py saves WORK_DIR/iter_<N>.pth after the current
# iteration and exits with status 75. Signals that reach this script are forwarded to srun (so
# `sbatch --signal=B:USR1@180` works when the batch script `exec`s this one; plain `--signal=USR1@180`
# reaches the training processes directly). When training exits with 75, or fails after such a
# signal, the script runs `scontrol requeue $SLURM_JOB_ID` inside a batch job (submit with
# `sbatch --requeue`) and exits with 75; a requeued job (SLURM_RESTART_COUNT > 0) adds `--resume`.
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
WORK_DIR=${4:-work_dirs/$(basename "${CONFIG%.*}")}
shift $(( $# > 3 ? 4 : 3 ))
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-}
PREEMPTED=75  # sf3d.engine.PREEMPTED_EXIT_STATUS
RESUME=()
if (( ${SLURM_RESTART_COUNT:-0} > 0 )); then
    RESUME=(--resume)  # the last --resume wins: continue from the preemption checkpoint
fi
cd "$(dirname "$0")/.."
SRUN_PID=
SIGNALLED=0
trap 'SIGNALLED=1; kill -s TERM "$SRUN_PID" 2>/dev/null || true' TERM
trap 'SIGNALLED=1; kill -s USR1 "$SRUN_PID" 2>/dev/null || true' USR1
PYTHONPATH="$PWD:${PYTHONPATH:-}" srun -p "$PARTITION" --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" --ntasks="$GPUS" --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    python -u tools/train.py "$CONFIG" --work-dir="$WORK_DIR" --launcher slurm "$@" ${RESUME[@]+"${RESUME[@]}"} &
SRUN_PID=$!
while :; do
    STATUS=0
    wait "$SRUN_PID" || STATUS=$?
    # > 128 while srun still runs: a trapped signal interrupted `wait`; wait for the checkpoint
    (( STATUS > 128 )) && kill -0 "$SRUN_PID" 2>/dev/null || break
done
if (( STATUS == PREEMPTED || (SIGNALLED && STATUS != 0) )); then
    if [[ -n ${SLURM_JOB_ID:-} ]]; then
        echo "slurm_train.sh: training preempted (status $STATUS): requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID" || echo "slurm_train.sh: requeue failed; resubmit with --resume" >&2
    else
        echo "slurm_train.sh: training preempted (status $STATUS): rerun with --resume"
    fi
    exit "$PREEMPTED"
fi
exit "$STATUS"
