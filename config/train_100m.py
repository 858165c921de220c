# GPT-2 124M on 100M tokens of OpenWebText, one GPU (add GPUs with torchrun; the global batch stays the same).
#   python prepare.py --dataset=openwebtext_100M
#   python train.py config/train_100m.py
# Global batch: 64 sequences x 1024 tokens = 65,536 tokens per step, as 16 x 4 micro-steps.
# 100k steps is ~6.6B tokens, ~65 passes over the 100M tokens: dropout 0.1 earns its keep here.
n_layers = 12
n_heads = 12
d_model = 768
d_ff = 3072
max_seq_len = 1024
dropout = 0.1

dataset = "openwebtext_100M"
batch_size = 16
grad_accum_steps = 4
learning_rate = 3e-4
min_lr = 3e-5
weight_decay = 0.1
warmup_steps = 2000
max_steps = 100_000
grad_clip = 1.0

eval_interval = 1000
eval_iters = 100
log_interval = 10
checkpoint_interval = 1000

out_dir = "out-100m"
compile = True
dtype = "auto"  # float16 with a gradient scaler on CUDA; bfloat16 is the other good choice on Ampere and newer
