"""
Policy-gradient RL on verifiable rewards, GRPO-style (Shao et al. 2024; nanochat's chat_rl): objective=rl.

Each micro-step takes batch_size questions of reward_task's train split and samples rl_samples answers to each
from the current model (the batched engine, nash/engine.py). The task's own answer check gives each answer a reward
(1 right, 0 wrong), and an answer's advantage is its reward minus the mean reward of its question's group (divided by
the group's standard deviation with rl_std_normalize, GRPO's original form; nanochat and Dr. GRPO leave it out, and
so does the default). There is no critic: the group is the baseline. The loss is over the sampled tokens only (the
reply and the <|assistant_end|> that ended it; the prompt and the padding are -1 in y), normalised by their number
over the micro-batch (a token-level mean, as nanochat and DAPO), of PPO's clipped objective:

    ratio = pi(token) / pi_old(token)          (pi_old: the policy that sampled the batch)
    loss  = -min(ratio * A, clip(ratio, 1 - rl_clip, 1 + rl_clip) * A) + rl_kl_beta * KL(pi || ref)

With rl_updates=1 (the default, nanochat's) each batch of rollouts is used for one optimizer step, the ratio is 1
and this is the plain policy gradient -A * log pi; with rl_updates=K the same rollouts serve K steps and the clip
keeps the later ones close to the sampling policy. The KL term (TRL's k3 estimator, per token, to the starting model,
frozen) is off by default (beta 0, as TRL and nanochat): then no reference is kept. A question whose answers all get
the same reward has advantage 0 everywhere: it teaches nothing, and frac_reward_zero_std says how many did.

The statistics carry TRL's GRPO names: reward, reward_std (within a group, averaged over groups),
frac_reward_zero_std, completion_length (tokens trained on per answer), kl, clip_ratio. Evals decode greedily and
report pass@1 on the first eval_iters * batch_size questions of the task's test split (val) and on as many train
questions (train); val_loss is 1 - pass@1, so best.pt and early stopping follow held-out pass@1.

The batches train.py hands over are which questions to ask and the seed to sample them with, a pure function of
(seed, step, index) as every objective's: rollouts are sampled here, inside the step, by the model as it is then.
The sampling seed comes from (seed, rollout batch, micro-batch), so resuming samples what the run would have; with
rl_updates > 1 the rollouts of an unfinished batch are saved in the checkpoint.
"""
import torch

from nash import tasks as downstream
from nash.common import fail
from nash.data import EpochSampler, mix, pack_completions
from nash.lora import adapters_disabled
from nash.objectives.dpo import DPO
from nash.objectives.pretrain import Pretrain
from nash.tokenizer import SPECIAL_TOKENS, render_conversation, special_ids

# settings of objective=rl (train.py merges them into its own: --rl_samples=16 etc.); batch_size questions a micro-step
reward_task = "arith"  # the generated-answer task whose train questions are asked and whose answer check is the reward
reward_metric = ""  # which of the check's metrics is the reward; "" = the task's first (arith: correct, every line of working true and the final number; exact_match: the final number alone)
rl_samples = 8  # answers sampled per question, a group (TRL's num_generations; nanochat samples 16)
rl_max_new_tokens = 64  # the longest answer sampled
rl_temperature = 1.0  # temperature the answers are sampled at and their log-probs scored at (the policy is logits / T)
rl_skip_zero_std = False  # drop the groups whose answers all got the same reward (DAPO's dynamic sampling, filtering only): the loss averages over the groups with signal, and skips the others' forward
rl_top_k = 0  # sample from the top k tokens only; 0 = all (nanochat's 50 narrows exploration)
rl_std_normalize = False  # divide the advantages by their group's std (GRPO's); False: reward - mean (nanochat)
rl_updates = 1  # optimizer steps on each batch of rollouts; above 1 the PPO clip keeps the later ones close
rl_clip = 0.2  # PPO's epsilon: the probability ratio to the sampling policy is clipped to 1 +- rl_clip
rl_kl_beta = 0.0  # weight of the KL penalty to the starting model (TRL's beta; 0 as TRL and nanochat: no reference)

STATS = ("reward", "reward_std", "frac_reward_zero_std", "completion_length", "kl", "clip_ratio")
TRAIN, TEST = 0, 1  # which split a batch's questions come from (x holds their indices)


def group_advantages(rewards, std_normalize=False):
    """rewards (P, S): S answers to each of P questions -> advantages (P, S), reward minus the group's mean
    (divided by its standard deviation + 1e-4 with std_normalize, TRL's form), and the group's std (P,)."""
    std = rewards.std(dim=1) if rewards.size(1) > 1 else torch.zeros(rewards.size(0))
    advantages = rewards - rewards.mean(dim=1, keepdim=True)
    if std_normalize:
        advantages = advantages / (std[:, None] + 1e-4)
    return advantages, std


def rollout_batch(prompts, replies, forced=None):
    """prompts: P lists of token ids; replies: P lists of S token-id lists (the reply and its stop token, if it
    ended on one); forced: the same shape, each reply's positions the calculator forced in (Completion.forced_at).
    -> (x, y) int64 (P * S, T), right-padded: y is -1 on the prompt, the padding and the forced tool outputs, so only
    the sampled tokens are trained on (a policy never learns to predict what the tool returns); row p * S + s is
    answer s to question p."""
    forced = forced or [[[] for _ in group] for group in replies]
    rows = [(p, r, f) for p, group, fs in zip(prompts, replies, forced) for r, f in zip(group, fs)]
    return pack_completions([p + r for p, r, _ in rows], [len(p) for p, _, _ in rows], 0,
                            ignore=[f for _, _, f in rows])


def token_logps(model, x, y, temperature=1.0):
    """(N, T) log-probability of each target under the model at temperature (log_softmax(logits / T)), 0 where y
    is -1, through the model's forward (DDP-safe)."""
    return -model(x, y, return_logits=False, reduction="none", temperature=temperature)[1]


def policy_loss(logps, old_logps, advantages, mask, clip=0.2, ref_logps=None, kl_beta=0.0):
    """PPO's clipped surrogate per token, plus kl_beta * KL(pi || ref) (k3, TRL's), averaged over the sampled tokens
    (mask). logps, old_logps, ref_logps, mask (N, T); advantages (N,). -> (loss, mean KL, clip ratio)."""
    ratio = torch.exp(logps - old_logps)
    A = advantages[:, None]
    per_token = -torch.minimum(ratio * A, ratio.clamp(1 - clip, 1 + clip) * A)
    kl = torch.zeros_like(logps)
    if ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + kl_beta * kl
    n = mask.sum().clamp(min=1)
    clipped = ((ratio < 1 - clip) & (A < 0)) | ((ratio > 1 + clip) & (A > 0))  # where the clip holds the gradient
    loss = (per_token * mask).sum() / n
    return loss, ((kl * mask).sum() / n).detach(), ((clipped & mask).sum() / n).detach()


def reward_task_problem(name, why):
    """A one-line problem with reward_task=name (not a task, or no answer check for chat replies), or None."""
    if name not in downstream.TASKS:
        return f"reward_task={name!r} should be one of {', '.join(downstream.TASKS)}"
    task = downstream.TASKS[name]
    if task.kind != "generate" or task.check is None or task.chat_prompt is None:
        able = [t.name for t in downstream.TASKS.values() if t.kind == "generate" and t.check and t.chat_prompt]
        return (f"reward_task={task.name} has no answer check for chat replies (it is a {task.kind} task); "
                f"{why}: use {' or '.join(able)}")


def reward_metric_problem(settings):
    """A one-line problem with reward_metric (not one of the reward task's metrics), or None."""
    task, metric = downstream.TASKS[settings["reward_task"]], settings.get("reward_metric", "")
    if metric and metric not in task.metrics:
        return f"reward_metric={metric!r} is not a metric of {task.name}'s check: use {' or '.join(task.metrics)}"


def reward_of(settings, task):
    """The metric of the task's check that is the reward: reward_metric, or the task's first."""
    return settings.get("reward_metric") or task.metrics[0]


def chat_model_problem(settings, model, enc):
    """A one-line problem if the starting model has no chat tokens to sample replies with, or None."""
    if model.config.vocab_size <= max(special_ids(enc).values()):
        return (f"objective={settings['objective']} samples chat replies, and {settings['init_from']} is not a chat model "
                f"(its {model.config.vocab_size}-token vocabulary has no chat tokens); fine-tune it with objective=chat "
                f"first (e.g. config/arith_sft_demo.py)")


def task_questions(settings, enc, task, split):
    """(docs, chat prompts as token ids) of one split of the task; no questions, or a prompt that leaves no room
    for a reply in the context (max_seq_len), is an error."""
    docs = downstream.load_rows(task, split, settings["task_data"])
    if not docs:
        fail(f"the {split} split of {task.name} has no questions")
    prompts = [render_conversation(enc, task.chat_prompt(doc, []), for_reply=True)[0] for doc in docs]
    longest, max_seq_len = max(map(len, prompts)), settings["max_seq_len"]
    if longest >= max_seq_len:
        fail(f"{sum(len(p) >= max_seq_len for p in prompts)} {split} question(s) of {task.name} are up to "
             f"{longest} tokens with the chat markup, and the context (max_seq_len) is {max_seq_len}: "
             f"no room for an answer; raise --max_seq_len (up to the model's) or use shorter questions")
    return docs, prompts


class Questions:
    """A split of the reward task as train.py's batches: x the indices of batch_size questions, y (split, rollout
    batch, micro-batch). Questions go round the split in epochs, in a shuffled order, like every other objective's
    examples."""

    def __init__(self, docs, prompts, split, updates):
        self.docs, self.prompts, self.split, self.updates = docs, prompts, split, updates
        self.sampler = EpochSampler()

    def get_batch(self, batch_size, seq_len, seed, step, index=0, micro_batches=1):
        group = step // self.updates  # rl_updates steps share one batch of rollouts
        rows, _ = self.sampler.items(len(self.docs), batch_size, seed, group, index, micro_batches)
        return torch.from_numpy(rows), torch.tensor([self.split, seed, group, index])

    def eval_batches(self, batch_size, seq_len, max_batches=None):
        n = len(self.docs) if max_batches is None else min(len(self.docs), max_batches * batch_size)
        for start in range(0, n, batch_size):
            yield torch.arange(start, min(n, start + batch_size)), torch.tensor([self.split, 0, 0, 0])


class AsksRewardTask(Pretrain):
    """What RL and the verifier (nash/objectives/verifier.py) share: a trained chat model answers reward_task's
    questions; there is no dataset folder of their own."""
    needs_trained_model = True
    chat = True  # answers are chat replies; benchmarks in eval_tasks ask in the chat format

    def check_model(self, model, enc):
        return chat_model_problem(self.settings, model, enc)

    def prepare(self, folder):
        pass  # the questions come from reward_task

    def data_tokenizer(self, folder):
        return None


class RL(AsksRewardTask):
    fine_tunes = True
    stats = STATS
    zero_loss_means_memorised = False  # a batch whose rewards are all equal has loss 0
    next_step = ("measure it with `python evaluate.py --out_dir={out_dir} --tasks={reward_task}`, or talk to it with "
                 "`python chat.py --out_dir={out_dir}`")

    def check_settings(self):
        s = self.settings
        if s["rl_samples"] < 2:
            return (f"rl_samples={s['rl_samples']}: each question needs at least 2 sampled answers, as the advantage "
                    f"is a reward minus its group's mean (nanochat samples 16, TRL 8)")
        if s["rl_updates"] < 1:
            return f"rl_updates={s['rl_updates']} should be at least 1 (optimizer steps on each batch of rollouts)"
        if not 0 < s["rl_clip"] < 1:
            return f"rl_clip={s['rl_clip']} should be between 0 and 1 (PPO's epsilon, 0.2)"
        if s["rl_kl_beta"] < 0:
            return f"rl_kl_beta={s['rl_kl_beta']} should be 0 (no KL penalty) or positive"
        if s["rl_temperature"] <= 0:
            # the loss scores the rollouts under the policy at rl_temperature (logits / T): greedy has no log-probs
            return (f"rl_temperature={s['rl_temperature']}: rollouts are sampled and scored at this temperature; "
                    f"it should be above 0 (1 = the model's own distribution; 0.6-0.7 gives more right answers)")
        if s["rl_max_new_tokens"] < 1:
            return f"rl_max_new_tokens={s['rl_max_new_tokens']} should be at least 1"
        if s["rl_top_k"] < 0:
            return f"rl_top_k={s['rl_top_k']} cannot be negative; 0 samples from every token"
        return (reward_task_problem(s["reward_task"], "RL needs one to compute rewards")
                or reward_metric_problem(s))

    def setup(self, model, init_from, resume, lora_info):
        """The policy to sample from (the plain model), the frozen reference when rl_kl_beta > 0 (DPO's: a copy of
        the starting model, or the policy with its adapters off), and the rollouts of an unfinished batch."""
        self.policy, self.reference = model, None
        if self.settings["rl_kl_beta"] > 0:
            self.reference = DPO(self.settings, self.log)
            self.reference.setup(model, init_from, resume, lora_info)
        self.rollouts = dict(resume.get("rl_rollouts") or {}) if resume else {}

    def to(self, device):
        if self.reference is not None:
            self.reference.to(device)
        return self

    def load_data(self, folder, enc, vocab_size):
        """(train, val): the task's train and test questions, with their chat prompts; a prompt that leaves no
        room for a reply in the context is an error."""
        s, task = self.settings, downstream.TASKS[self.settings["reward_task"]]
        self.enc, self.task = enc, task
        self.stop_id = special_ids(enc)["<|assistant_end|>"]
        splits = [Questions(*task_questions(s, enc, task, split), which, s["rl_updates"])
                  for split, which in (("train", TRAIN), (task.split, TEST))]
        self.splits = splits
        return splits

    # -------------------------------------------------------------------------
    # rollouts

    def sample(self, questions, rows, num_samples, temperature, seed):
        """Answers to the questions: ([the prompts], [per question, the replies' token ids with their stop token],
        [the same, the positions the calculator forced in], rewards (P, S)), from the plain model in eval mode (its
        training mode is restored after). A model with the tool tokens may call the calculator, as in chat.py."""
        from nash.engine import Sampling, sample_batch, tools_available
        docs = [questions.docs[r] for r in rows]
        prompts = [questions.prompts[r] for r in rows]
        top_k = self.settings["rl_top_k"] or None
        sampling = Sampling(temperature=temperature, top_k=top_k if temperature else None,
                            max_new_tokens=self.settings["rl_max_new_tokens"], seed=seed)
        was_training = self.policy.training
        stop_ids = {self.stop_id} if temperature else set(special_ids(self.enc).values())  # greedy: evaluate.py's stops
        try:
            results = sample_batch(self.policy, prompts, num_samples, sampling, stop_ids, enc=self.enc,
                                   tools=tools_available(self.policy, self.enc))
        finally:
            self.policy.train(was_training)
        replies = [[c.tokens + [self.stop_id] * (c.finish_reason == "stop") for c in group] for group in results]
        forced = [[c.forced_at for c in group] for group in results]
        metric = reward_of(self.settings, self.task)
        rewards = torch.tensor([[float(self.task.check(doc, c.text)[metric]) for c in group]
                                for doc, group in zip(docs, results)])
        return prompts, replies, forced, rewards

    def rollouts_for(self, x, y):
        """The micro-batch's rollouts: sampled now, or kept from the step that sampled them (rl_updates > 1)."""
        split, seed, group, index = y.tolist()
        key = (group, index)
        if key not in self.rollouts:
            s = self.settings
            prompts, replies, forced, rewards = self.sample(self.splits[split], x.tolist(), s["rl_samples"],
                                                            s["rl_temperature"], mix("rl", seed, group, index) % 2**63)
            advantages, std = group_advantages(rewards, s["rl_std_normalize"])
            tokens, targets = rollout_batch(prompts, replies, forced)
            stats = [rewards.mean(), std.mean(), (std == 0).float().mean(), (targets != -1).sum() / len(targets)]
            advantages = advantages.flatten()
            if s["rl_skip_zero_std"]:  # a group without reward spread has advantage 0: no gradient, only dilution
                keep = (std > 0).repeat_interleave(rewards.size(1))
                if not keep.any():
                    keep[:rewards.size(1)] = True  # one group (loss 0) keeps the step's graph and shapes valid
                tokens, targets, advantages = tokens[keep], targets[keep], advantages[keep]
            rollout = {"x": tokens, "y": targets, "advantages": advantages, "stats": torch.stack(stats)}
            if s["rl_updates"] > 1:  # the sampling policy's log-probs, for the ratio of the later updates
                with torch.no_grad():
                    rollout["old_logps"] = token_logps(self.policy, tokens.to(x.device), targets.to(x.device),
                                                       s["rl_temperature"]).cpu()
            self.rollouts = {k: v for k, v in self.rollouts.items() if k[0] == group}  # older batches are done
            self.rollouts[key] = rollout
        return self.rollouts[key]

    def loss(self, model, x, y):
        rollout = {k: v.to(x.device) for k, v in self.rollouts_for(x, y).items()}
        tokens, targets = rollout["x"], rollout["y"]
        temperature = self.settings["rl_temperature"]
        logps = token_logps(model, tokens, targets, temperature)
        old_logps = rollout.get("old_logps", logps.detach())
        ref_logps = None
        if self.reference is not None:
            with torch.no_grad(), adapters_disabled(self.reference.reference):
                reference = self.reference.reference
                was_training = reference.training
                ref_logps = token_logps(reference.eval(), tokens, targets, temperature)
                reference.train(was_training)
        loss, kl, clip_ratio = policy_loss(logps, old_logps, rollout["advantages"], targets != -1,
                                           self.settings["rl_clip"], ref_logps, self.settings["rl_kl_beta"])
        return loss, torch.cat([rollout["stats"], torch.stack([kl, clip_ratio])])

    # -------------------------------------------------------------------------
    # evals: greedy pass@1

    def eval_sums(self, model, x, y):
        """Correct greedy answers and questions of one batch."""
        *_, rewards = self.sample(self.splits[int(y[0])], x.tolist(), 1, 0.0, 0)
        return torch.stack([rewards.sum(), torch.tensor(float(rewards.numel()))]).to(x.device)

    def eval_metrics(self, val, train):
        pass_val, pass_train = (val[0] / val[1].clamp(min=1)).item(), (train[0] / train[1].clamp(min=1)).item()
        return {"val_loss": 1 - pass_val, "pass@1": pass_val, "train_loss": 1 - pass_train, "train_pass@1": pass_train,
                "questions": int(val[1].item())}

    def describe_eval(self, metrics):
        return f"pass@1 {100 * metrics['pass@1']:.1f}% of {metrics['questions']} | train pass@1 {100 * metrics['train_pass@1']:.1f}%"

    def describe(self, metrics):
        return (f"reward {metrics['reward']:.3f} | reward_std {metrics['reward_std']:.3f} | zero-std groups "
                f"{100 * metrics['frac_reward_zero_std']:.0f}% | length {metrics['completion_length']:.1f}"
                + (f" | kl {metrics['kl']:.4f}" if self.settings["rl_kl_beta"] else "")
                + (f" | clipped {100 * metrics['clip_ratio']:.1f}%" if self.settings["rl_updates"] > 1 else ""))

    def checkpoint_state(self):
        state = {"rl_rollouts": dict(self.rollouts) if self.settings["rl_updates"] > 1 else None}
        return {**state, **(self.reference.checkpoint_state() if self.reference is not None else {})}
