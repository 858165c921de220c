# The SFT start of the RL demo (config/countdown_rl.py): a small chat model learns, from scratch, the countdown
# problems of data/countdown (data/countdown/generate.py) from a demonstrator that reaches the target half the
# time: it learns the format and the facts, and the demonstrator's choices of sign.
#   python train.py config/countdown_sft.py
#   python evaluate.py --out_dir=out-countdown-sft --tasks=countdown_heldout     # greedy pass@1, 500 problems
# Measured (docs/learning.md): stopped at step 400 it is far from its plateau (33.5% on a fresh draw); the RL start
# is this run continued 800 steps at 1e-3 (73.2%, test pass@1 79.5%, still +3.5 points per 100 steps at the end):
#   python train.py config/countdown_sft.py --init_from=out-countdown-sft --out_dir=out-countdown-sft2 \
#       --max_steps=800 --learning_rate=1e-3 --warmup_steps=0
objective = "chat"
dataset = "countdown/chat"
init_from = "scratch"
vocab_size = 50267  # the tokenizer's: GPT-2's 50257 + six chat + four tool tokens (so a run from it can reuse this file)
n_layers = 4
n_heads = 4
d_model = 128
d_ff = 512
max_seq_len = 64  # a problem with its answer is ~45 tokens
dropout = 0.0

batch_size = 16
learning_rate = 3e-3
warmup_steps = 50
max_steps = 600
weight_decay = 0.0

eval_interval = 100
eval_iters = 7  # the whole val set: 100 conversations / 16
eval_tasks = "countdown"  # pass@1 on the 200 test problems at each eval
eval_task_examples = 200
checkpoint_interval = 100

out_dir = "out-countdown-sft"
