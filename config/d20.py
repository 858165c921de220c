# nanochat's d20 shape on one GPU node: 20 layers of width 1280 (~560M parameters with a 65,536-token vocabulary),
# the modern switches (RoPE, RMSNorm, ReLU², QK-norm, untied head, no biases), AdamW at GPT-3's rate for its size
# (one rate for all weights here; nanochat's per-group Muon/Adam rates are not ours to copy untested), and
# Chinchilla's 20 tokens per parameter (~11B tokens). runs/gpu.sh uses it; on its own:
#   python prepare.py --dataset=fineweb_1B --max_tokens=11500000000 --name=fineweb_11B --tokenizer_vocab_size=65536
#   torchrun --standalone --nproc_per_node=8 train.py config/d20.py
# Global batch: 524,288 tokens per step (8 GPUs x 32 sequences x 2048 tokens; fewer GPUs accumulate more steps).
n_layers = 20
n_heads = 10
d_model = 1280
d_ff = 5120
max_seq_len = 2048
dropout = 0.0
bias = False
pos_emb = "rope"
norm = "rmsnorm"
mlp = "relu2"
qk_norm = True
tie_weights = False

dataset = "fineweb_11B"
batch_size = 32
grad_accum_steps = 8  # summed over all processes: 8 GPUs do one micro-step each
optimizer = "adamw"
learning_rate = 3e-4  # GPT-3's for 350M-760M models
weight_decay = 0.1
warmup_steps = 1000
max_steps = 21_400  # 11.2B tokens / 524,288 per step

eval_interval = 500
eval_iters = 20
checkpoint_interval = 1000
eval_tasks = "hellaswag,arc_easy,arc_challenge"  # CORE-style figures on the curves
eval_task_examples = 500

out_dir = "out-d20"
compile = True
dtype = "bfloat16"
