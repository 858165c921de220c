# A small model to debug with: ~30M parameters (most of them the embedding) on 10M tokens of TinyStories.
# Fast on one GPU (minutes); runs on a CPU too, slowly.
#   python prepare.py --dataset=tinystories_10M
#   python train.py config/train_small.py
n_layers = 6
n_heads = 6
d_model = 384
d_ff = 1536
max_seq_len = 256
dropout = 0.0

dataset = "tinystories_10M"
batch_size = 32
grad_accum_steps = 1
learning_rate = 1e-3
warmup_steps = 200
max_steps = 5000

eval_interval = 500
eval_iters = 50
checkpoint_interval = 500

out_dir = "out-small"
