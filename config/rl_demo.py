# RL on verifiable rewards you can watch on a CPU: the arithmetic SFT model of config/arith_sft_demo.py samples
# answers to the train problems of data/arith, the answer check rewards the right ones, and the policy gradient
# makes them likelier; pass@1 on the 200 held-out test problems at each eval.
#   python train.py config/arith_sft_demo.py     # first: the SFT model (out-arith-sft/)
#   python train.py config/rl_demo.py
#   python evaluate.py --out_dir=out-rl-demo --tasks=arith
task = "rl"
reward_task = "arith"
init_from = "out-arith-sft"
dropout = 0.0

batch_size = 8  # questions per step ...
rl_samples = 8  # ... times answers to each: 64 rollouts a step
rl_max_new_tokens = 32  # the longest worked answer is ~20 tokens
rl_temperature = 1.0
learning_rate = 5e-5  # 3e-4 lost pass@1 in the first 20 steps (README)
warmup_steps = 0
max_steps = 100
weight_decay = 0.0

eval_interval = 20
eval_iters = 25  # pass@1 on 25 * 8 = the 200 test problems (and on 200 train problems)
log_interval = 5
checkpoint_interval = 20

out_dir = "out-rl-demo"
