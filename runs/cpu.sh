#!/usr/bin/env bash
# The whole pipeline on the embedded data, offline, on a laptop CPU: tokenizer -> data -> base pretraining -> base
# eval -> chat SFT -> eval -> DPO pairs from the chat model's own answers -> DPO -> eval -> RL -> eval -> SFT for
# RL's compute (the baseline RL must beat) -> eval
# -> a verifier of the chat model's answers -> best-of-N -> report card. The seeds' Base -> SFT -> DPO -> Verifier and
# nanochat's Base -> SFT -> RL on one card. Each stage is one of the project's own commands with its flags in view,
# so this file is also a tour of them.
#
#   bash runs/cpu.sh                      # about 30 minutes on 2 free cores; writes out-pipeline-cpu/report.md
#   TOKENIZER=bpe bash runs/cpu.sh        # learn a BPE on the corpus instead of GPT-2's (countdown then learns slowly)
#   SMOKE=1 DIR=/tmp/p bash runs/cpu.sh   # every stage shrunk to seconds (the test suite runs this)
#   OMP_NUM_THREADS=2 bash runs/cpu.sh    # your thread count instead of the free cores' (below)
#
# Threads: torch takes one per core, and on a machine someone else is using every step then waits for the thread
# whose core is busy: 10-20x slower (docs/pipeline-cpu/README.md). Unless OMP_NUM_THREADS is set, the script uses the
# cores free when it starts: the core count less the 1-minute load average, at least 1.
# Rerun after an interruption: finished stages are skipped, an interrupted training stage resumes from its last
# checkpoint. A failing stage stops the script with its own error. Each stage line shows the pipeline's progress
# and the time left, from the stage times below (seconds on 2 free cores of an AMD EPYC, as measured on the card at
# commit 73f822b, docs/pipeline-cpu/), scaled by this run's speed so far.
cd "$(dirname "$0")/.."
DIR=${DIR:-out-pipeline-cpu}
SMOKE=${SMOKE:-0}
# gpt2: GPT-2's BPE (the default) | bpe: learn a byte-level BPE of 2,048 tokens on the corpus. GPT-2's has a token for
# every number below 1,000, so each countdown fact is three tokens; a BPE learnt on Shakespeare spells numbers in
# digits, and the same SFT reached 4.0% on the countdown test problems after 1,400 steps, against ~40% (measured).
TOKENIZER=${TOKENIZER:-gpt2}
source runs/lib.sh

if [ -z "${OMP_NUM_THREADS:-}" ]; then
    OMP_NUM_THREADS=$(python -c 'import os; print(max(1, os.cpu_count() - round(os.getloadavg()[0])))')
    echo "threads: $OMP_NUM_THREADS (the cores free now: $(python -c 'import os; print(os.cpu_count())') cores," \
         "load $(python -c 'import os; print(round(os.getloadavg()[0], 2))'); set OMP_NUM_THREADS to choose)"
else
    echo "threads: $OMP_NUM_THREADS (OMP_NUM_THREADS)"
fi
export OMP_NUM_THREADS

# Context: the base model learns 256 positions, so a chat holds a few turns; SFT trains on windows of 96, which hold
# every countdown conversation whole.
if [ "$SMOKE" = 1 ]; then  # tiny everything: the test of the script, not of the model
    VOCAB=512; BASE=(--max_steps=4 --eval_interval=2 --eval_iters=1 --n_layers=1 --d_model=32 --n_heads=2 --d_ff=64)
    SFT=(--max_steps=4 --eval_interval=2 --eval_iters=1 --eval_task_examples=4); EXAMPLES=4; TEXT_EXAMPLES=4
    MORE=(--max_steps=2 --eval_interval=2 --eval_iters=1 --eval_task_examples=4)
    PAIRS=(--questions=4 --samples=2 --pairs=1); DPO=(--max_steps=2 --eval_interval=1 --eval_iters=1)
    RL=(--max_steps=2 --batch_size=2 --rl_samples=2 --rl_max_new_tokens=8 --eval_interval=1 --eval_iters=1)
    VERIFIER=(--max_steps=2 --batch_size=4 --verifier_samples=2 --verifier_questions=4 --verifier_max_new_tokens=8
              --eval_interval=1 --eval_iters=1); SAMPLES=2
else
    VOCAB=2048; BASE=(--max_steps=600); SFT=(); MORE=(); PAIRS=(); DPO=(); RL=(); VERIFIER=(); EXAMPLES=200
    TEXT_EXAMPLES=500
    SAMPLES=8
fi
case "$TOKENIZER" in
    bpe) TOKENIZER_FLAGS=(--tokenizer_vocab_size=$VOCAB) ;;
    gpt2) TOKENIZER_FLAGS=() ;;
    *) echo "error: TOKENIZER=$TOKENIZER should be bpe or gpt2" >&2; exit 1 ;;
esac
# the headline (report card): held-out Shakespeare continuations for the base model (500 items, chance 1/4), its val
# bits per byte, and the 200 countdown test problems for every chat stage (data/countdown: the task whose mistakes
# are choices, where RL and a verifier can show a gain; docs/learning.md). The benchmark fixtures in tests/task_data
# (3-5 hub-schema rows each) and HumanEval check the machinery only (HumanEval asked of the chat models, as nanochat
# does: a base model of Shakespeare writes no Python).
BASE_TASKS=shakespeare_heldout,arc_easy,arc_challenge,mmlu,hellaswag
CHAT_TASKS=countdown,arc_easy,arc_challenge,mmlu,gsm8k,humaneval
EVAL=(--task_data=tests/task_data --max_examples=$EXAMPLES)

# config/countdown_sft.py's training settings, from the base model (that file also sets a shape of its own, from
# scratch: a run from a model takes the model's shape)
COUNTDOWN_SFT=(--objective=chat --dataset=countdown/chat --max_seq_len=96 --batch_size=16 --weight_decay=0.0
               --eval_iters=7 --eval_tasks=countdown --eval_task_examples=200)

# DPO on the chat model's own answers (issue 34 item 4): nash/tasks/pairs.py samples 8 answers to each of the first
# 400 train problems at temperature 1 and the countdown check labels them; a question with a right and a wrong answer
# gives up to 2 pairs (right chosen): ~360 train pairs (docs/learning.md). DPO from the chat model on them as
# config/countdown_dpo.py: 60 steps, with the right answers' NLL added (RPO); plain DPO broke the working (0.110).
DPO_COMMAND=(python train.py config/countdown_dpo.py --data_dir="$DIR/dpo_pairs" --init_from="$DIR/sft"
             --out_dir="$DIR/dpo" --max_seq_len=96)

# A chat model that answers no question both right and wrong (SMOKE's 4-step model) gives no pairs: pairs.py says so
# and stops; here that is one line, and DPO and its eval are skipped (the card's DPO column reads "not run"). Any other
# failure of pairs.py stops the pipeline as a failing stage does.
own_pairs() {
    local err="$DIR/dpo_pairs.stderr" rc=0
    "$@" 2>"$err" || rc=$?
    if [ "$rc" != 0 ] && grep -q "^error: no .* question got both a right and a wrong answer" "$err"; then
        rm -rf "$DIR/dpo_pairs" "$err"  # (a train.jsonl without its val.jsonl is no dataset)
        echo "   no DPO pairs: the chat model answered no question both right and wrong; DPO and its eval are skipped"
        return 0
    fi
    cat "$err" >&2; rm -f "$err"
    return "$rc"
}
with_pairs() {  # the command, if the dpo_pairs stage wrote pairs
    if [ -f "$DIR/dpo_pairs/train.jsonl" ] && [ -f "$DIR/dpo_pairs/val.jsonl" ]; then
        "$@"
    else
        echo "   skipped: no DPO pairs (stage dpo_pairs)"
    fi
}

pipeline() {
stage data "the tokenizer and the token shards of the embedded Shakespeare" 5 - -- \
    python prepare.py --input=data/shakespeare/input.txt --name=corpus --data_root="$DIR/data" "${TOKENIZER_FLAGS[@]}"
stage base "pretraining the base model" 410 base -- \
    python train.py --data_dir="$DIR/data/corpus" --out_dir="$DIR/base" --max_seq_len=256 --batch_size=4 "${BASE[@]}"
stage base_eval "held-out Shakespeare continuations, and the benchmark fixtures (CORE)" 20 - -- \
    python evaluate.py --out_dir="$DIR/base" --tasks=$BASE_TASKS --task_data=tests/task_data \
        --max_examples=$TEXT_EXAMPLES --output="$DIR/eval/base.json"
stage base_loss "bits per byte on the held-out Shakespeare (val split)" 5 - -- \
    python evaluate.py --out_dir="$DIR/base" --output="$DIR/eval/base_loss.json"
stage sft "chat fine-tuning on countdown, imitating a demonstrator with a habit" 335 sft -- \
    python train.py "${COUNTDOWN_SFT[@]}" --init_from="$DIR/base" --out_dir="$DIR/sft" --learning_rate=3e-3 \
        --warmup_steps=50 --max_steps=1400 --eval_interval=200 "${SFT[@]}"
stage sft_eval "the chat model: the countdown test problems and the chat-format fixtures" 25 - -- \
    python evaluate.py --out_dir="$DIR/sft" --tasks=$CHAT_TASKS "${EVAL[@]}" --output="$DIR/eval/sft.json"
stage dpo_pairs "the chat model's own answers to the train problems, labelled by the answer check" 30 - -- \
    own_pairs python -m nash.tasks.pairs --out_dir="$DIR/sft" --task=countdown --output="$DIR/dpo_pairs" \
        --questions=400 "${PAIRS[@]}"
stage dpo "DPO from the chat model: its right answer preferred to its wrong one, to the same problem" 50 dpo -- \
    with_pairs "${DPO_COMMAND[@]}" "${DPO[@]}"
stage dpo_eval "the DPO model: the countdown test problems and the chat-format fixtures (asked in chat)" 25 - -- \
    with_pairs python evaluate.py --out_dir="$DIR/dpo" --objective=chat --tasks=$CHAT_TASKS "${EVAL[@]}" \
        --output="$DIR/eval/dpo.json"
stage rl "RL from the chat model on the countdown problems, rewarded by the answer check" 355 rl -- \
    python train.py config/countdown_rl.py --init_from="$DIR/sft" --out_dir="$DIR/rl" "${RL[@]}"
stage rl_eval "the RL model: the countdown test problems and the chat-format fixtures" 25 - -- \
    python evaluate.py --out_dir="$DIR/rl" --tasks=$CHAT_TASKS "${EVAL[@]}" --output="$DIR/eval/rl.json"
stage sft_more "the baseline RL must beat: more SFT from the chat model, on the same demonstrations" 360 sft_more -- \
    python train.py "${COUNTDOWN_SFT[@]}" --init_from="$DIR/sft" --out_dir="$DIR/sft_more" --learning_rate=3e-4 \
        --warmup_steps=0 --max_steps=1750 --eval_interval=875 "${MORE[@]}"
stage sft_more_eval "that baseline: the countdown test problems and the chat-format fixtures" 25 - -- \
    python evaluate.py --out_dir="$DIR/sft_more" --tasks=$CHAT_TASKS "${EVAL[@]}" --output="$DIR/eval/sft_more.json"
stage verifier "a verifier: the chat model's sampled answers, labelled by the answer check" 100 verifier -- \
    python train.py config/verifier_demo.py --reward_task=countdown --init_from="$DIR/sft" --out_dir="$DIR/verifier" \
        --verifier_questions=1000 "${VERIFIER[@]}"
stage best_of_n "$SAMPLES answers of the chat model to each problem, the verifier's pick beside pass@k and the vote" 30 - -- \
    python evaluate.py --out_dir="$DIR/sft" --tasks=countdown,gsm8k --num_samples=$SAMPLES --max_gen_tokens=32 \
        --verifier="$DIR/verifier" "${EVAL[@]}" --output="$DIR/eval/best_of_n.json"
}
run_pipeline pipeline
echo
python -m nash.tasks.report "$DIR" >/dev/null
echo "the report card: $DIR/report.md"
