# Tool use you can watch on a CPU: a small model learns to answer arithmetic word problems by calling the
# calculator (nash/tools.py) instead of doing the sums itself, in conversations (data/tools_demo, made by
# data/tools_demo/generate.py from GSM8K-style annotated answers); then compare it with and without the calculator.
#   python train.py config/tools_demo.py
#   python evaluate.py --out_dir=out-tools-demo                # exact match with the calculator
#   python evaluate.py --out_dir=out-tools-demo --tools=0      # the same model without it
#   python chat.py --out_dir=out-tools-demo --prompt="A box holds 37 pens. How many pens are in 24 boxes?"
# From scratch, so it needs nothing else.
objective = "chat"
dataset = "tools_demo"
init_from = "scratch"
vocab_size = 50267  # GPT-2's 50257 + the six chat tokens + the four tool tokens
n_layers = 4
n_heads = 4
d_model = 128
d_ff = 512
max_seq_len = 64  # the longest demo conversation is 60 tokens
dropout = 0.0

batch_size = 16
learning_rate = 3e-3
warmup_steps = 50
max_steps = 600
weight_decay = 0.0

eval_interval = 100
eval_iters = 13  # the whole val set: 200 conversations / 16
checkpoint_interval = 100
early_stopping_patience = 3

out_dir = "out-tools-demo"
