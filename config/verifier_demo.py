# A verifier you can train on a CPU (Cobbe et al. 2021): the arithmetic SFT model of config/arith_sft_demo.py answers
# train problems of data/arith 8 times each, the answer check labels every answer right or wrong, and the model (with
# a score head added) learns to tell which; held out: 8 answers to each of the 200 test problems.
#   python train.py config/arith_sft_demo.py     # first: the generator (out-arith-sft/)
#   python train.py config/verifier_demo.py
#   python evaluate.py --out_dir=out-arith-sft --tasks=arith --num_samples=8 --max_gen_tokens=32 --verifier=out-verifier-demo
objective = "verifier"
reward_task = "arith"
init_from = "out-arith-sft"
dropout = 0.0

verifier_samples = 8  # answers per question ...
verifier_questions = 500  # ... to the first 500 train problems: 4,000 labelled answers
verifier_temperature = 1.0
verifier_max_new_tokens = 32  # the longest worked answer is ~20 tokens

batch_size = 32
learning_rate = 3e-4  # 1e-3 for 500 steps did no better (README)
warmup_steps = 20
max_steps = 250
weight_decay = 0.0

eval_interval = 50
eval_iters = 7  # val: the first 7 * 32 >= 200 test problems, all of them
log_interval = 10
checkpoint_interval = 50

out_dir = "out-verifier-demo"
