"""
A verifier (an outcome reward model, Cobbe et al. 2021) at use: the GPT with a score head (model.py, score_head)
reads a question and one sampled answer and says how likely the answer is right; best-of-N keeps the answer it
scores highest. objective=verifier (nash/objectives/verifier.py) trains one on exactly the rendering here.

    score_replies(model, enc, conversations, replies)   # [[P(right) of each reply] of each conversation]
    reply_logprobs(generator, enc, conversations, replies)   # the free baseline: the generator's mean token log-prob

What it buys over a random sample and over majority voting, side by side with pass@k (nash/tasks/sampling.py):

    python evaluate.py --out_dir=out-arith-sft --tasks=arith --num_samples=8 --verifier=out-verifier-demo
"""
from contextlib import nullcontext

import torch

from nash.data import right_pad
from nash.tokenizer import render_conversation


def render_reply(enc, conversation, reply, max_len):
    """The tokens of conversation + the assistant's reply, ending in <|assistant_end|> (where the score is read),
    cut from the left to the last max_len: a long question loses its start, never the answer."""
    tokens, _ = render_conversation(enc, list(conversation) + [{"role": "assistant", "content": reply}])
    return tokens[-max_len:]


def pad_right(rows):
    """Token-id lists -> (x (B, T) right-padded with 0, last (B,): each row's last real position). Causal attention
    keeps the padding, which comes after, out of every score."""
    return right_pad(rows, 0), torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)


@torch.no_grad()
def score_rows(model, rows, ctx=None, batch_size=32):
    """The score head's logits (N,) of token-id lists, batch_size at a time, longest first (less padding), in
    eval mode (the model's mode is restored after)."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    logits = torch.zeros(len(rows))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            x, last = pad_right([rows[i] for i in chunk])
            with ctx or nullcontext():
                logits[chunk] = model.score(x.to(device), last.to(device)).float().cpu()
    finally:
        model.train(was_training)
    return logits


@torch.no_grad()
def reply_logprobs(model, enc, conversations, replies, ctx=None, batch_size=32):
    """The generator's own judgement, free (no training): for each conversation the mean log-probability per token
    that model gives each of its replies (the reply's tokens and its <|assistant_end|>, at temperature 1), scored
    through the loss path (no full logits), in eval mode. The same shape as score_replies' answer."""
    device = next(model.parameters()).device
    rows = []
    for conv, group in zip(conversations, replies):
        for reply in group:
            tokens, mask = render_conversation(enc, list(conv) + [{"role": "assistant", "content": reply}])
            tokens, mask = tokens[-model.config.max_seq_len - 1:], mask[-model.config.max_seq_len - 1:]
            rows.append((tokens, [t if m else -1 for t, m in zip(tokens[1:], mask[1:])]))
    means = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            x, y = right_pad([t[:-1] for t, _ in chunk], 0), right_pad([m for _, m in chunk], -1)
            with ctx or nullcontext():
                losses = model(x.to(device), y.to(device), return_logits=False, reduction="none")[1].float().cpu()
            means += (-losses.sum(1) / (y != -1).sum(1).clamp(min=1)).tolist()
    finally:
        model.train(was_training)
    out, at = [], 0
    for group in replies:
        out.append(means[at:at + len(group)])
        at += len(group)
    return out


def check_verifier(model):
    """ValueError unless model has a score head (a verifier), so a caller can refuse before any other work."""
    if not getattr(model.config, "score_head", False):
        raise ValueError("this model has no score head, so it cannot score replies: give a verifier, a run trained "
                         "with objective=verifier (e.g. config/verifier_demo.py)")


def score_replies(model, enc, conversations, replies, ctx=None, batch_size=32):
    """For each conversation (chat messages ending before the reply, as task.chat_prompt gives them) the verifier's
    probability that each of its replies (strings) is right: [[float] * len(replies[i]) for each i]."""
    check_verifier(model)
    if len(conversations) != len(replies):
        raise ValueError(f"{len(conversations)} conversations but {len(replies)} lists of replies")
    rows = [render_reply(enc, conv, reply, model.config.max_seq_len) for conv, group in zip(conversations, replies)
            for reply in group]
    probs = torch.sigmoid(score_rows(model, rows, ctx, batch_size)).tolist() if rows else []
    out, at = [], 0
    for group in replies:
        out.append(probs[at:at + len(group)])
        at += len(group)
    return out


# -----------------------------------------------------------------------------
# how well scores rank answers

def auc(scores, labels):
    """ROC AUC: the probability that a random right answer outscores a random wrong one (ties count half), by
    ranks (Mann-Whitney U); None when all labels are the same."""
    scores, labels = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(labels).bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return None
    ranks = torch.empty_like(scores)
    values, inverse = torch.unique(scores, return_inverse=True)
    order = torch.argsort(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for v in range(len(values)):  # tied scores share their mean rank
        tied = inverse == v
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()
