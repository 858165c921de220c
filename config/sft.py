# Supervised fine-tuning of GPT-2 (or any checkpoint) on prompt/completion JSONL:
# data/<dataset>/train.jsonl and val.jsonl, one {"prompt": ..., "completion": ...} per line.
# The loss counts completion tokens (and the end-of-text appended to each) only.
#   python train.py config/sft.py --dataset=my_task
#   python train.py config/sft.py --init_from=out-100m --dataset=my_task
objective = "sft"
dataset = "sft_demo"
init_from = "gpt2"  # or gpt2-medium/-large/-xl, or a run folder / checkpoint file
# max_seq_len: unset, the windows are as long as the model's context (GPT-2's 1024); set it lower to save memory
dropout = 0.1

batch_size = 8
grad_accum_steps = 4
learning_rate = 1e-5  # small: we adjust a trained model, not train one
min_lr = 1e-6
warmup_steps = 100
max_steps = 5000
weight_decay = 0.0

eval_interval = 100
eval_iters = 50
checkpoint_interval = 100
early_stopping_patience = 5  # stop when val loss has not improved for 5 evals

out_dir = "out-sft"
