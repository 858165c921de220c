# Supervised fine-tuning you can watch on a CPU: a small model learns the embedded task
# "Reverse: red fox runs\n" -> " runs fox red" (data/sft_demo, made by data/sft_demo/generate.py).
#   python train.py config/sft_demo.py
#   python evaluate.py --out_dir=out-sft-demo          # loss on completions, exact match of greedy answers
#   python sample.py --out_dir=out-sft-demo --start=$'Reverse: big red car\n'
# From scratch, so it needs nothing else; --init_from=out starts from the Shakespeare quick start instead.
objective = "sft"
dataset = "sft_demo"
init_from = "scratch"
n_layers = 4
n_heads = 4
d_model = 128
d_ff = 512
max_seq_len = 32  # prompt + completion + end-of-text fit in ~20 tokens
dropout = 0.0

batch_size = 32
learning_rate = 3e-3
warmup_steps = 50
max_steps = 2000  # ~0.35 s a step on 2 cores; the copying 'clicks' after ~400 steps
weight_decay = 0.0

eval_interval = 100
eval_iters = 7  # the whole val set: 200 examples / 32
checkpoint_interval = 100
early_stopping_patience = 3

out_dir = "out-sft-demo"
