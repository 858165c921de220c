#!/usr/bin/env bash
# The whole pipeline at nanochat's d20 scale on one GPU node, from the Hugging Face hub: FineWeb-Edu for
# pretraining (with a 65,536-token BPE learnt on it), SmolTalk for chat SFT, GSM8K for RL and the verifier, the
# benchmarks from their hub splits. The same stages as runs/cpu.sh, each one of the project's own commands.
#
#   GPUS=8 bash runs/gpu.sh             # torchrun on 8 GPUs; GPUS=1 for one (the same global batch, 8x the time)
#   COST_PER_HOUR=24 GPUS=8 bash runs/gpu.sh     # the report card adds a cost line
#
# Expected time: not measured yet. nanochat reports about 4 hours for d20 on 8 H100s; ours is to be measured and
# written here. Rerun after an interruption: finished stages are skipped, a training stage resumes.
cd "$(dirname "$0")/.."
DIR=${DIR:-out-pipeline-gpu}
GPUS=${GPUS:-8}
source runs/lib.sh
TRAIN=(torchrun --standalone --nproc_per_node="$GPUS" train.py)
DATA="$DIR/data"
EVAL=(--max_examples=1000)  # per task, from the hub; 0 for all items
# each stage's expected seconds: 0 until measured (the progress line then counts it as nothing)

pipeline() {

stage data "a 65,536-token BPE and 11.5B tokens of FineWeb-Edu" 0 - -- \
    python prepare.py --dataset=fineweb_1B --max_tokens=11500000000 --name=fineweb_11B --data_root="$DATA" \
        --tokenizer_vocab_size=65536
stage base "pretraining d20 (~560M parameters) on 11.2B tokens" 0 base -- \
    "${TRAIN[@]}" config/d20.py --data_dir="$DATA/fineweb_11B" --out_dir="$DIR/base"
stage base_eval "CORE: multiple choice scored by log-likelihood" 0 - -- \
    python evaluate.py --out_dir="$DIR/base" --tasks=hellaswag,arc_easy,arc_challenge,mmlu "${EVAL[@]}" \
        --output="$DIR/eval/base.json"
stage chat_data "SmolTalk conversations" 0 - -- \
    python prepare.py --dataset=smoltalk --data_root="$DATA"
stage sft "chat fine-tuning on SmolTalk" 0 sft -- \
    "${TRAIN[@]}" --objective=chat --data_dir="$DATA/smoltalk" --init_from="$DIR/base" --out_dir="$DIR/sft" \
        --batch_size=16 --grad_accum_steps=8 --learning_rate=3e-5 --max_steps=2000 --eval_interval=200
stage sft_eval "the chat model on the chat-format benchmarks" 0 - -- \
    python evaluate.py --out_dir="$DIR/sft" --tasks=arc_easy,arc_challenge,mmlu,gsm8k,humaneval "${EVAL[@]}" \
        --output="$DIR/eval/sft.json"
stage rl "RL on GSM8K's train problems, rewarded by its answer check (nanochat's chat_rl)" 0 rl -- \
    "${TRAIN[@]}" --objective=rl --reward_task=gsm8k --init_from="$DIR/sft" --out_dir="$DIR/rl" --batch_size=2 \
        --grad_accum_steps=8 --rl_samples=16 --rl_max_new_tokens=256 --rl_top_k=50 --learning_rate=1e-5 \
        --warmup_steps=10 --max_steps=300 --eval_interval=50 --eval_iters=25
stage rl_eval "the RL model on the chat-format benchmarks" 0 - -- \
    python evaluate.py --out_dir="$DIR/rl" --tasks=arc_easy,arc_challenge,mmlu,gsm8k,humaneval "${EVAL[@]}" \
        --output="$DIR/eval/rl.json"
# one process: the verifier's loss leaves d20's untied lm_head without a gradient, which DDP refuses
stage verifier "a verifier of the RL model's GSM8K answers, labelled by the answer check" 0 verifier -- \
    python train.py --objective=verifier --reward_task=gsm8k --init_from="$DIR/rl" --out_dir="$DIR/verifier" \
        --verifier_samples=16 --verifier_questions=2000 --verifier_max_new_tokens=256 --batch_size=32 \
        --learning_rate=1e-5 --warmup_steps=50 --max_steps=1000 --eval_interval=200 --eval_iters=10
stage best_of_n "16 answers to each GSM8K problem: the verifier's pick beside pass@k and the vote" 0 - -- \
    python evaluate.py --out_dir="$DIR/rl" --tasks=gsm8k --num_samples=16 --verifier="$DIR/verifier" "${EVAL[@]}" \
        --output="$DIR/eval/best_of_n.json"
}
run_pipeline pipeline
python -m nash.tasks.report "$DIR" ${COST_PER_HOUR:-} >/dev/null
echo "the report card: $DIR/report.md"
