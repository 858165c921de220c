# The RL demo where RL can win (issue 34): the countdown SFT model (config/countdown_sft.py) imitates a demonstrator
# with a habit (it adds the three numbers 60% of the time, whether or not that reaches the target), so its greedy
# answer is the habit wherever the habit is likelier than the right signs: its mistakes are choices, not missing
# facts. RL samples answers to the train problems, nash/tasks/countdown.py's check rewards the ones that reach the
# target with true working, and the policy gradient makes them likelier than the habit. More SFT on the same
# demonstrations cannot: they hold the habit. docs/learning.md has the measured comparison with an SFT run of the same
# wall time.
#   python train.py config/countdown_sft.py       # first: the SFT start (out-countdown-sft/)
#   python train.py config/countdown_rl.py
#   python data/countdown/generate.py --seed=21 --count=1000 > fresh.jsonl
#   python -m nash.tasks.paired --task=countdown --questions=fresh.jsonl out-countdown-sft out-countdown-rl --ckpt=latest
objective = "rl"
reward_task = "countdown"
init_from = "out-countdown-sft"
dropout = 0.0

batch_size = 8  # questions per step ...
rl_samples = 16  # ... times answers to each: 128 rollouts a step (more groups with both a right and a wrong answer)
rl_max_new_tokens = 32  # an answer is ~20 tokens
rl_temperature = 0.7  # sampled and scored at 0.7 (the policy is logits / 0.7): on-policy
rl_skip_zero_std = True  # groups whose answers all got the same reward are dropped (no signal, only dilution)
lora_rank = 16
lora_targets = "all"
learning_rate = 1e-3
warmup_steps = 5
max_steps = 200  # measured in docs/learning.md (wall time on 2 cores, the gain over the start and over more SFT)
weight_decay = 0.0

eval_interval = 50
eval_iters = 25  # pass@1 on 25 * 8 = the 200 test problems (and on 200 train problems)
log_interval = 10
checkpoint_interval = 50

out_dir = "out-countdown-rl"
