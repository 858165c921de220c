# What runs/cpu.sh and runs/gpu.sh share: a stage runner that skips finished stages, resumes interrupted training,
# stops at the first failure with that stage's own error, and records each stage's wall time for the report card.
# Sourced, not run. Expects DIR (the pipeline folder) and N_STAGES; DRY_RUN=1 prints each stage's command instead.
set -euo pipefail
mkdir -p "$DIR/.done" "$DIR/eval"
STAGE_K=0

# stage NAME "what it does" "expected time" RUN -- command...
#   RUN: the run folder (relative to DIR) a train.py stage writes, or - for a stage that is not training
stage() {
    local name=$1 what=$2 expected=$3 run=$4
    shift 5  # (the -- after RUN)
    STAGE_K=$((STAGE_K + 1))
    echo
    echo "== stage $STAGE_K of $N_STAGES: $name: $what (expected: $expected)"
    if [ "${DRY_RUN:-0}" = 1 ]; then  # show the commands, run nothing (tests/test_pipeline.py checks runs/gpu.sh so)
        echo "   \$ $*"
        return
    fi
    if [ -f "$DIR/.done/$name" ]; then
        echo "   finished in an earlier run: skipped (delete $DIR/.done/$name to redo it)"
        return
    fi
    local extra=()
    if [ "$run" != "-" ] && [ -f "$DIR/$run/ckpt.pt" ]; then
        extra=(--init_from=resume)  # exact resume from its last checkpoint
        echo "   resuming $DIR/$run from its last checkpoint"
    elif [ "$run" != "-" ] && [ -d "$DIR/$run" ]; then
        extra=(--overwrite=True)  # stopped before its first checkpoint: nothing to resume, start it again
    fi
    echo "   \$ $* ${extra[*]}"
    local t0 t1
    t0=$(date +%s.%N)
    if ! "$@" "${extra[@]}"; then
        echo "error: stage $STAGE_K ($name) failed; its own message is above. Fix it and rerun: finished stages are skipped" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    python -c 'import json, sys; print(json.dumps({"stage": sys.argv[1], "seconds": float(sys.argv[3]) - float(sys.argv[2]), "run": None if sys.argv[4] == "-" else sys.argv[4]}))' \
        "$name" "$t0" "$t1" "$run" >> "$DIR/stages.jsonl"
    touch "$DIR/.done/$name"
}
