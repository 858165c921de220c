"""
Direct Preference Optimization (Rafailov et al. 2023): objective=dpo.

For a prompt x with a preferred completion y_w (chosen) and a dispreferred one y_l (rejected):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

log pi(y|x) is the sum of the log-probabilities of the completion's tokens (and the end-of-text after it) only,
never the prompt's, from the model's own per-token loss (GPT.forward with reduction="none"). The reference is
the starting model, frozen; a model holding LoRA adapters is its own reference with the adapters turned off.
The implicit rewards are beta * (log pi - log ref), and the statistics carry TRL's names.

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

STATS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def sequence_logps(model, x, y):
    """(B,) sums of the targets' log-probs, y == -1 not counted, through the model's forward (DDP-safe)."""
    return -model(x, y, return_logits=False, reduction="none")[1].sum(-1)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta):
    """Per pair: (losses, chosen rewards, rejected rewards), each (B,), from summed completion log-probs."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards, rejected_rewards


def pair_stats(chosen_rewards, rejected_rewards):
    """(B, 4): per pair, in the order of STATS."""
    return torch.stack([(chosen_rewards > rejected_rewards).float(), chosen_rewards - rejected_rewards,
                        chosen_rewards, rejected_rewards], dim=1)


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


def pair_losses(model, reference, x, y, beta):
    B = x.size(0) // 2
    logps = sequence_logps(model, x, y)
    ref = reference_logps(reference, x, y)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta)
    return losses, pair_stats(chosen_rewards.detach(), rejected_rewards.detach())


def batch_loss(model, reference, x, y, beta):
    """(mean loss to backpropagate, mean of each statistic (4,))."""
    losses, stats = pair_losses(model, reference, x, y, beta)
    return losses.mean(), stats.mean(0)


def describe(values, prefix=""):
    """The statistics as a console fragment."""
    v = {name: values[prefix + name] for name in STATS}
    return (f"reward acc {100 * v['rewards/accuracies']:.1f}% | margin {v['rewards/margins']:.3f} | "
            f"chosen {v['rewards/chosen']:.3f} | rejected {v['rewards/rejected']:.3f}")


class DPO(SFT):
    needs_trained_model = True
    stats = STATS
    examples = PreferenceExamples  # B chosen rows, then their B rejected ones
    next_step = ("sample with `python sample.py --out_dir={out_dir} --start=<a prompt written like the training ones>`, "
                 "or measure it with `python evaluate.py --out_dir={out_dir} --objective=sft --dataset=<prompt/completion data>`")

    def check_settings(self):
        if self.settings["dpo_beta"] <= 0:
            return f"dpo_beta={self.settings['dpo_beta']} must be positive (TRL uses 0.1)"

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
        return batch_loss(model, self.reference, x, y, self.settings["dpo_beta"])

    def eval_sums(self, model, x, y):
        """Summed loss, summed statistics, number of pairs."""
        losses, stats = pair_losses(model, self.reference, x, y, self.settings["dpo_beta"])
        return torch.cat([losses.sum()[None], stats.sum(0), torch.tensor([float(len(losses))], device=losses.device)])

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
