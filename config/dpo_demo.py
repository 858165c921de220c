# DPO you can watch on a CPU, the last step of Base -> SFT -> DPO on the reversal task of data/sft_demo:
# prefer the correct reversal (chosen) over a plausible mistake (rejected) in data/dpo_demo (made by
# data/dpo_demo/generate.py), starting from the SFT demo run, which is also the frozen reference.
#   python train.py config/dpo_demo.py
#   python evaluate.py --out_dir=out-dpo-demo --objective=sft --dataset=sft_demo   # exact match on the SFT demo's val
# With --lora_rank=8 only adapters train, and the reference is the same model with its adapters off.
objective = "dpo"
dataset = "dpo_demo"
init_from = "out-sft-demo"
max_seq_len = 32  # prompt + completion + end-of-text fit in ~20 tokens
dropout = 0.0

batch_size = 16  # pairs: 32 sequences a step
learning_rate = 1e-4  # small: DPO nudges a trained model, the reference keeps it close
warmup_steps = 20
max_steps = 200
weight_decay = 0.0
dpo_beta = 0.1

eval_interval = 50
eval_iters = 13  # the whole val set: 200 pairs / 16
checkpoint_interval = 50
early_stopping_patience = 2

out_dir = "out-dpo-demo"
