# The SFT start of the RL demo (config/countdown_rl.py): a small chat model learns, from scratch, the countdown
# problems of data/countdown (data/countdown/generate.py) from a demonstrator with a habit: 40% of its answers reach
# the target on purpose, the other 60% just add the three numbers. The model learns the format, the facts and the
# habit: its greedy answer adds wherever adding is likelier than the right signs.
#   python train.py config/countdown_sft.py
#   python evaluate.py --out_dir=out-countdown-sft --tasks=countdown_heldout     # greedy pass@1, 500 problems
# Measured in docs/learning.md: test pass@1 at each eval, and where it levels off.
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
max_steps = 1400  # ~10 min on 2 cores
weight_decay = 0.0

eval_interval = 200
eval_iters = 7  # the whole val set: 100 conversations / 16
eval_tasks = "countdown"  # pass@1 on the 200 test problems at each eval
eval_task_examples = 200
checkpoint_interval = 200

out_dir = "out-countdown-sft"
