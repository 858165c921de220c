"""
Direct Preference Optimization (Rafailov et al. 2023): objective=dpo.

For a prompt x with a preferred completion y_w (chosen) and a dispreferred one y_l (rejected):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

log pi(y|x) is the sum of the log-probabilities of the completion's tokens (and the end-of-text after it) only,
never the prompt's, from the model's own per-token loss (GPT.forward with reduction="none"). The reference is
the starting model, frozen; a model holding LoRA adapters is its own reference with the adapters turned off.
The implicit rewards are beta * (log pi - log ref), and the statistics carry TRL's names.

dpo_rpo_alpha > 0 adds the chosen completions' negative log-likelihood, as a mean over their tokens, times alpha
(RPO: Pang et al. 2024, "Iterative Reasoning Preference Optimization"; TRL's `rpo_alpha`). Plain DPO only asks that
the chosen answer gain on the rejected one, and both can fall together: on countdown (docs/learning.md) the
model kept the right final numbers and broke the working that led to them. The NLL term keeps the chosen answers likely.

Batches come from data.PreferenceExamples: (x, y) of 2B rows, the B chosen sequences then their B rejected
ones, with y = -1 on the prompt and the padding.
"""
import copy

import torch
import torch.nn.functional as F

from nash import lora
from nash.checkpoint import base_source, load_base
from nash.common import fail
from nash.data import PreferenceExamples
from nash.lora import adapters_disabled
from nash.objectives.sft import SFT

# settings of objective=dpo (train.py merges them into its own: --dpo_beta=0.2)
dpo_beta = 0.1  # strength of the pull towards the reference model (TRL's beta); rewards are beta * log-ratios
dpo_rpo_alpha = 0.0  # weight of the chosen answers' mean token NLL added to the loss (RPO; 0 = plain DPO)

STATS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected", "nll_loss")


def token_nlls(model, x, y):
    """(B, T) the targets' negative log-probs, 0 where y == -1, through the model's forward (DDP-safe)."""
    return model(x, y, return_logits=False, reduction="none")[1]


def sequence_logps(model, x, y):
    """(B,) sums of the targets' log-probs, y == -1 not counted."""
    return -token_nlls(model, x, y).sum(-1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """Per pair: (losses, chosen rewards, rejected rewards), each (B,), from summed completion log-probs."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards, rejected_rewards


def pair_stats(chosen_rewards, rejected_rewards, chosen_nlls):
    """(B, 5): per pair, in the order of STATS (the last: the chosen answer's mean token NLL)."""
    return torch.stack([(chosen_rewards > rejected_rewards).float(), chosen_rewards - rejected_rewards,
                        chosen_rewards, rejected_rewards, chosen_nlls], dim=1)


@torch.no_grad()
def reference_logps(reference, x, y):
    """The reference's summed completion log-probs, without dropout (adapters off for a LoRA model)."""
    was_training = reference.training
    reference.eval()
    try:
        with adapters_disabled(reference):
            return sequence_logps(reference, x, y)
    finally:
        reference.train(was_training)


def batch_loss(model, reference, x, y, beta, rpo_alpha=0.0):
    """(mean loss to backpropagate, mean of each statistic (5,)). The NLL term is a mean over all the batch's chosen
    tokens, so a long answer weighs by its length (the form TRL's DPOTrainer uses for rpo_alpha, read from its
    source; not run against it here)."""
    B = x.size(0) // 2
    nlls = token_nlls(model, x, y)
    logps = -nlls.sum(-1)
    ref = reference_logps(reference, x, y)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta)
    chosen, counted = nlls[:B], (y[:B] != -1)
    per_answer = chosen.sum(-1).detach() / counted.sum(-1).clamp(min=1)
    stats = pair_stats(chosen_rewards.detach(), rejected_rewards.detach(), per_answer)
    loss = losses.mean()
    if rpo_alpha:
        loss = loss + rpo_alpha * chosen.sum() / counted.sum().clamp(min=1)
    return loss, stats.mean(0)


def describe(values, prefix=""):
    """The statistics as a console fragment."""
    v = {name: values[prefix + name] for name in STATS}
    return (f"reward acc {100 * v['rewards/accuracies']:.1f}% | margin {v['rewards/margins']:.3f} | "
            f"chosen {v['rewards/chosen']:.3f} | rejected {v['rewards/rejected']:.3f} | "
            f"chosen nll {v['nll_loss']:.3f}")


class DPO(SFT):
    needs_trained_model = True
    stats = STATS
    examples = PreferenceExamples  # B chosen rows, then their B rejected ones
    next_step = ("sample with `python sample.py --out_dir={out_dir} --start=<a prompt written like the training ones>`, "
                 "or measure it with `python evaluate.py --out_dir={out_dir} --objective=sft --dataset=<prompt/completion data>`")

    def check_settings(self):
        if self.settings["dpo_beta"] <= 0:
            return f"dpo_beta={self.settings['dpo_beta']} must be positive (TRL uses 0.1)"
        if self.settings["dpo_rpo_alpha"] < 0:
            return f"dpo_rpo_alpha={self.settings['dpo_rpo_alpha']} must be 0 (plain DPO) or positive (1.0 in RPO)"

    def setup(self, model, init_from, resume, lora_info):
        """The frozen reference: the policy itself with its adapters off (LoRA), or a copy of the starting model.
        A resumed full fine-tuning run reloads it from where it came, and refuses if those weights changed."""
        self.source = resume.get("dpo_reference") if resume else base_source(init_from)
        self.fingerprint, self.reference = None, model
        if lora_info:
            return
        reference = load_base(self.source, dropout=0.0) if resume else copy.deepcopy(model)
        self.reference = reference.eval().requires_grad_(False)
        self.fingerprint = lora.fingerprint(self.reference.state_dict())
        if resume and resume.get("dpo_reference_fingerprint", self.fingerprint) != self.fingerprint:
            fail(f"{self.settings['out_dir']}'s DPO reference {self.source} has changed since the run started (its "
                 f"weights differ); put the original back, or start a new run")

    def to(self, device):
        self.reference.to(device)
        return self

    def loss(self, model, x, y):
        return batch_loss(model, self.reference, x, y, self.settings["dpo_beta"], self.settings["dpo_rpo_alpha"])

    def eval_sums(self, model, x, y):
        """Summed loss (each pair weighing its batch's loss, as in training), summed statistics, number of pairs."""
        loss, stats = batch_loss(model, self.reference, x, y, self.settings["dpo_beta"], self.settings["dpo_rpo_alpha"])
        B = x.size(0) // 2
        return torch.cat([(B * loss)[None], B * stats, torch.tensor([float(B)], device=loss.device)])

    def eval_metrics(self, val, train):
        out = {}
        for prefix, sums in (("val_", val), ("train_", train)):
            n = sums[-1].clamp(min=1)
            out.update({prefix + "loss": (sums[0] / n).item(), **self.metrics(sums[1:-1] / n, prefix)})
        return out

    def metrics(self, stats, prefix=""):
        return {prefix + name: v.item() for name, v in zip(STATS, stats)}

    def describe_eval(self, metrics):
        return describe(metrics, "val_")

    def describe(self, metrics):
        return describe(metrics)

    def checkpoint_state(self):
        # an adapter checkpoint names its base instead of holding it
        return {"dpo_reference": self.source, "dpo_reference_fingerprint": self.fingerprint}
