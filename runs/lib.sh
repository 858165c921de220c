# What runs/cpu.sh and runs/gpu.sh share: a stage runner that skips finished stages, resumes interrupted training,
# stops at the first failure with that stage's own error, records each stage's wall time for the report card, and
# shows where the whole pipeline stands (stage i/N, elapsed, an estimate of the time left).
# Sourced, not run. Expects DIR (the pipeline folder); the script puts its stages in a function and ends with
# `run_pipeline that_function`. DRY_RUN=1 prints each stage's command instead.
set -euo pipefail
mkdir -p "$DIR/.done" "$DIR/eval"
STAGE_K=0
N_STAGES=0
PLANNING=0
EXPECTED_TOTAL=0  # seconds, the sum of the stages' expected times
EXPECTED_PASSED=0  # of the stages passed so far
EXPECTED_RAN=0  # of the stages that ran in this invocation (not skipped) ...
SECONDS_RAN=0  # ... and the seconds they took: their ratio scales the estimate to this machine's speed now

minutes() {  # 75 -> 1m15s
    printf '%dm%02ds' $(($1 / 60)) $(($1 % 60))
}

# stage NAME "what it does" EXPECTED_SECONDS RUN -- command...
#   EXPECTED_SECONDS: measured on the reference machine (the script says which); 0 = not measured yet
#   RUN: the run folder (relative to DIR) a train.py stage writes, or - for a stage that is not training
stage() {
    local name=$1 what=$2 expected=$3 run=$4
    shift 5  # (the -- after RUN)
    if [ "$PLANNING" = 1 ]; then  # the first pass only counts the stages and adds up their times
        N_STAGES=$((N_STAGES + 1)); EXPECTED_TOTAL=$((EXPECTED_TOTAL + expected))
        return
    fi
    STAGE_K=$((STAGE_K + 1))
    local left=$((EXPECTED_TOTAL - EXPECTED_PASSED))
    [ "$EXPECTED_RAN" -gt 0 ] && left=$((left * SECONDS_RAN / EXPECTED_RAN))
    EXPECTED_PASSED=$((EXPECTED_PASSED + expected))
    echo
    echo "== stage $STAGE_K of $N_STAGES: $name: $what (expected: $([ "$expected" = 0 ] && echo "not measured" || minutes "$expected"))"
    if [ "$EXPECTED_TOTAL" = 0 ]; then
        echo "   pipeline: stage $STAGE_K/$N_STAGES | elapsed $(minutes $SECONDS) | time left: not measured yet"
    else
        echo "   pipeline: stage $STAGE_K/$N_STAGES | elapsed $(minutes $SECONDS) | about $(minutes $left) left" \
             "(the measured stage times$([ "$EXPECTED_RAN" -gt 0 ] && echo ", scaled by this run's speed so far"))"
    fi
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
    local t0 t1 start=$SECONDS
    t0=$(date +%s.%N)
    if ! "$@" "${extra[@]}"; then
        echo "error: stage $STAGE_K ($name) failed; its own message is above. Fix it and rerun: finished stages are skipped" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    SECONDS_RAN=$((SECONDS_RAN + SECONDS - start)); EXPECTED_RAN=$((EXPECTED_RAN + expected))
    # its line in stages.jsonl, the file rewritten whole (a line cut short by a kill is dropped, and said)
    python -m nash.stages "$DIR" "$name" "$t0" "$t1" "$run"
    touch "$DIR/.done/$name"
}

# run_pipeline FUNCTION: its stages, counted and timed first (nothing runs), then run in order
run_pipeline() {
    PLANNING=1; "$1"; PLANNING=0
    "$1"
}
