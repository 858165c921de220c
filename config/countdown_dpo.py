# DPO on the model's own answers (issue 34): the countdown SFT model answers train problems 8 times each, the
# task's check labels the answers, and a right answer is preferred to a wrong one to the same question.
#   python train.py config/countdown_sft.py
#   python -m nash.tasks.pairs --out_dir=out-countdown-sft --task=countdown --output=out-countdown-sft/dpo_pairs
#   python train.py config/countdown_dpo.py
#   python -m nash.tasks.paired --task=countdown out-countdown-sft out-countdown-dpo
# Measured on 1,000 fresh problems (docs/learning.md): SFT 40.3% -> 67.0% (+26.7 +- 1.8 paired); plain DPO
# (--dpo_rpo_alpha=0) -0.7 +- 1.8, its answers keeping the final number and breaking the working.
objective = "dpo"
dataset = "countdown_dpo"
data_dir = "out-countdown-sft/dpo_pairs"  # written by nash/tasks/pairs.py
init_from = "out-countdown-sft"
max_seq_len = 64
dropout = 0.0

batch_size = 16  # pairs: 32 sequences a step
lora_rank = 16
lora_targets = "all"
learning_rate = 1e-3
warmup_steps = 5
max_steps = 60
weight_decay = 0.0
dpo_beta = 0.1
dpo_rpo_alpha = 1.0  # plus the right answers' NLL (RPO): plain DPO broke the working (docs/learning.md)

eval_interval = 20
eval_iters = 4
checkpoint_interval = 20

out_dir = "out-countdown-dpo"
