# Chat fine-tuning you can watch on a CPU: a small model learns who it is and to reverse words, in
# conversations (data/chat_demo, made by data/chat_demo/generate.py); then talk to it.
#   python train.py config/chat_demo.py
#   python chat.py --out_dir=out-chat-demo                 # terminal chat
#   python chat.py --out_dir=out-chat-demo --serve         # browser chat on http://127.0.0.1:8000
# From scratch, so it needs nothing else; --init_from=out (a pretraining run) or gpt2 adds the chat tokens
# to that model's vocabulary instead.
objective = "chat"
dataset = "chat_demo"
init_from = "scratch"
vocab_size = 50263  # GPT-2's 50257 + the six chat tokens
n_layers = 4
n_heads = 4
d_model = 128
d_ff = 512
max_seq_len = 128  # the longest demo conversation is 99 tokens; chat.py drops old turns past this
dropout = 0.0

batch_size = 16
learning_rate = 3e-3
warmup_steps = 50
max_steps = 1500
weight_decay = 0.0

eval_interval = 100
eval_iters = 10  # the whole val set: 150 conversations / 16
checkpoint_interval = 100
early_stopping_patience = 3

out_dir = "out-chat-demo"
