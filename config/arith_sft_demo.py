# The step before RL, on a CPU: a small chat model learns to answer the embedded arithmetic word problems of
# data/arith (made by data/arith/generate.py) with their working and "#### N", trained to where its held-out
# pass@1 stops rising; config/rl_demo.py then tries to close the rest with rewards from the answer check.
#   python train.py config/arith_sft_demo.py
#   python evaluate.py --out_dir=out-arith-sft --tasks=arith     # pass@1 (exact match) on the 200 test problems
# From scratch, so it needs nothing else.
objective = "chat"
dataset = "arith/chat"
init_from = "scratch"
vocab_size = 50263  # GPT-2's 50257 + the six chat tokens
n_layers = 4
n_heads = 4
d_model = 128
d_ff = 512
max_seq_len = 64  # the longest problem with its answer is ~55 tokens
dropout = 0.0

batch_size = 16
learning_rate = 3e-3
warmup_steps = 50
# where held-out pass@1 peaks (docs/learning.md: 1,000 held-out problems at the end of a cosine of 800 / 1,600 /
# 2,400 / 4,800 steps: 38.9 / 56.8 / 88.2 / 78.3%; past ~4,000 steps the val loss rises): ~7 min on 2 cores
max_steps = 2400
weight_decay = 0.0

eval_interval = 200
eval_iters = 7  # the whole val set: 100 conversations / 16
eval_tasks = "arith"  # pass@1 on the test problems at each eval
eval_task_examples = 200
checkpoint_interval = 200

out_dir = "out-arith-sft"
