#!/usr/bin/env bash
# The whole pipeline on the embedded data, offline, on a laptop CPU: tokenizer -> data -> base pretraining -> base
# eval -> chat SFT -> chat eval -> RL -> chat eval -> a verifier of the RL model's answers -> best-of-N -> report card.
# Each stage is one of the project's own commands with its flags in view, so this file is also a tour of them.
#
#   bash runs/cpu.sh                      # about 7 minutes on 2 cores (measured); writes out-pipeline-cpu/report.md
#   TOKENIZER=gpt2 bash runs/cpu.sh       # GPT-2's BPE instead of learning one on the corpus
#   SMOKE=1 DIR=/tmp/p bash runs/cpu.sh   # every stage shrunk to seconds (the test suite runs this)
#
# Rerun after an interruption: finished stages are skipped, an interrupted training stage resumes from its last
# checkpoint. A failing stage stops the script with its own error.
cd "$(dirname "$0")/.."
DIR=${DIR:-out-pipeline-cpu}
SMOKE=${SMOKE:-0}
TOKENIZER=${TOKENIZER:-bpe}  # bpe: learn a byte-level BPE on the corpus | gpt2: GPT-2's
N_STAGES=9
source runs/lib.sh

if [ "$SMOKE" = 1 ]; then  # tiny everything: the test of the script, not of the model
    VOCAB=512; BASE=(--max_steps=4 --eval_interval=2 --eval_iters=1 --n_layers=1 --d_model=32 --n_heads=2 --d_ff=64)
    SFT=(--max_steps=4 --eval_interval=2 --eval_iters=1 --eval_task_examples=4); EXAMPLES=4
    RL=(--max_steps=2 --batch_size=2 --rl_samples=2 --rl_max_new_tokens=8 --eval_interval=1 --eval_iters=1)
    VERIFIER=(--max_steps=2 --batch_size=4 --verifier_samples=2 --verifier_questions=4 --verifier_max_new_tokens=8
              --eval_interval=1 --eval_iters=1); SAMPLES=2
else
    VOCAB=2048; BASE=(--max_steps=600); SFT=(); RL=(); VERIFIER=(); EXAMPLES=200; SAMPLES=8
fi
case "$TOKENIZER" in
    bpe) TOKENIZER_FLAGS=(--tokenizer_vocab_size=$VOCAB) ;;
    gpt2) TOKENIZER_FLAGS=() ;;
    *) echo "error: TOKENIZER=$TOKENIZER should be bpe or gpt2" >&2; exit 1 ;;
esac
# the benchmarks offline: the small fixtures in tests/task_data (hub-schema rows), HumanEval from its package (asked
# of the chat models only, as nanochat does: a base model of Shakespeare writes no Python)
BASE_TASKS=arc_easy,arc_challenge,mmlu,hellaswag
CHAT_TASKS=arc_easy,arc_challenge,mmlu,gsm8k,arith,humaneval
EVAL=(--task_data=tests/task_data --max_examples=$EXAMPLES)

stage data "the tokenizer and the token shards of the embedded Shakespeare" "seconds" - -- \
    python prepare.py --input=data/shakespeare/input.txt --name=corpus --data_root="$DIR/data" "${TOKENIZER_FLAGS[@]}"
stage base "pretraining the base model" "2 minutes" base -- \
    python train.py --data_dir="$DIR/data/corpus" --out_dir="$DIR/base" "${BASE[@]}"
stage base_eval "CORE: multiple choice scored by log-likelihood" "seconds" - -- \
    python evaluate.py --out_dir="$DIR/base" --tasks=$BASE_TASKS "${EVAL[@]}" --output="$DIR/eval/base.json"
stage sft "chat fine-tuning on the arithmetic word problems" "2 minutes" sft -- \
    python train.py --objective=chat --dataset=arith/chat --init_from="$DIR/base" --out_dir="$DIR/sft" --max_seq_len=64 \
        --batch_size=16 --learning_rate=3e-3 --warmup_steps=50 --max_steps=800 --weight_decay=0.0 \
        --eval_interval=100 --eval_iters=7 --eval_tasks=arith --eval_task_examples=200 "${SFT[@]}"
stage sft_eval "the chat model on the chat-format benchmarks" "under a minute" - -- \
    python evaluate.py --out_dir="$DIR/sft" --tasks=$CHAT_TASKS "${EVAL[@]}" --output="$DIR/eval/sft.json"
stage rl "RL on the arithmetic problems, rewarded by the answer check" "a minute" rl -- \
    python train.py config/rl_demo.py --init_from="$DIR/sft" --out_dir="$DIR/rl" "${RL[@]}"
stage rl_eval "the RL model on the chat-format benchmarks" "under a minute" - -- \
    python evaluate.py --out_dir="$DIR/rl" --tasks=$CHAT_TASKS "${EVAL[@]}" --output="$DIR/eval/rl.json"
stage verifier "a verifier: the RL model's sampled answers, labelled by the answer check" "2 minutes" verifier -- \
    python train.py config/verifier_demo.py --init_from="$DIR/rl" --out_dir="$DIR/verifier" "${VERIFIER[@]}"
stage best_of_n "$SAMPLES answers to each problem, the verifier's pick beside pass@k and the vote" "under a minute" - -- \
    python evaluate.py --out_dir="$DIR/rl" --tasks=arith,gsm8k --num_samples=$SAMPLES --max_gen_tokens=32 \
        --verifier="$DIR/verifier" "${EVAL[@]}" --output="$DIR/eval/best_of_n.json"
echo
python -m nash.tasks.report "$DIR" >/dev/null
echo "the report card: $DIR/report.md"
