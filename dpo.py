"""
Direct Preference Optimization (Rafailov et al. 2023), the loss train.py uses for task=dpo.

For a prompt x with a preferred completion y_w (chosen) and a dispreferred one y_l (rejected):

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

log pi(y|x) is the sum of the log-probabilities of the completion's tokens (and the end-of-text after it) only,
never the prompt's. The reference is the starting model, frozen; a model holding LoRA adapters is its own
reference with the adapters turned off. The implicit rewards are beta * (log pi - log ref), and the statistics
carry TRL's names: rewards/accuracies (share of pairs whose chosen reward beats the rejected one),
rewards/margins, rewards/chosen, rewards/rejected.

Batches come from data.PreferenceExamples: (x, y) of 2B rows, the B chosen sequences then their B rejected
ones, with y = -1 on the prompt and the padding.
"""
import torch
import torch.nn.functional as F

from lora import adapters_disabled

STATS = ("rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected")


def sequence_logps(logits, y):
    """(B, T, V) logits and (B, T) targets -> (B,) sums of the targets' log-probs, y == -1 not counted."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                          reduction="none")  # 0 where y is -1 (flat: a transposed (B, V, T) input is 3x slower)
    return -nll.view_as(y).sum(-1)


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
            return sequence_logps(reference(x)[0], y)
    finally:
        reference.train(was_training)


def pair_losses(model, reference, x, y, beta):
    B = x.size(0) // 2
    logps = sequence_logps(model(x)[0], y)
    ref = reference_logps(reference, x, y)
    losses, chosen_rewards, rejected_rewards = dpo_loss(logps[:B], logps[B:], ref[:B], ref[B:], beta)
    return losses, pair_stats(chosen_rewards.detach(), rejected_rewards.detach())


def batch_loss(model, reference, x, y, beta):
    """(mean loss to backpropagate, mean of each statistic (4,))."""
    losses, stats = pair_losses(model, reference, x, y, beta)
    return losses.mean(), stats.mean(0)


def batch_sums(model, reference, x, y, beta):
    """(6,): summed loss, summed statistics, number of pairs; for evals that add up over batches and processes."""
    losses, stats = pair_losses(model, reference, x, y, beta)
    return torch.cat([losses.sum()[None], stats.sum(0), torch.tensor([float(len(losses))], device=losses.device)])


def metrics(stats, prefix=""):
    """{name: value} of mean statistics (4,) under TRL's names, e.g. rewards/accuracies or val_rewards/margins."""
    return {prefix + name: v.item() for name, v in zip(STATS, stats)}


def eval_metrics(sums, prefix):
    """batch_sums added up -> {prefix + 'loss': mean loss, prefix + 'rewards/...': means}."""
    n = sums[-1].clamp(min=1)
    return {prefix + "loss": (sums[0] / n).item(), **metrics(sums[1:-1] / n, prefix)}


def describe(values, prefix=""):
    """The statistics as a console fragment."""
    v = {name: values[prefix + name] for name in STATS}
    return (f"reward acc {100 * v['rewards/accuracies']:.1f}% | margin {v['rewards/margins']:.3f} | "
            f"chosen {v['rewards/chosen']:.3f} | rejected {v['rewards/rejected']:.3f}")
