"""
A verifier (an outcome reward model, Cobbe et al. 2021) at use: the GPT with a score head (model.py, score_head)
reads a question and one sampled answer and says how likely the answer is right; best-of-N keeps the answer it
scores highest. task=verifier (nash/objectives/verifier.py) trains one on exactly the rendering here.

    score_replies(model, enc, conversations, replies)   # [[P(right) of each reply] of each conversation]

and, to measure what it buys on a task's test problems (greedy pass@1, majority vote and best-of-N side by side):

    python -m nash.verifier --generator=out-arith-sft --verifier=out-verifier-demo --num_samples=8 --max_new_tokens=32
"""
from contextlib import nullcontext

import torch

from nash.tokenizer import render_conversation


def render_reply(enc, conversation, reply, max_len):
    """The tokens of conversation + the assistant's reply, ending in <|assistant_end|> (where the score is read),
    cut from the left to the last max_len: a long question loses its start, never the answer."""
    tokens, _ = render_conversation(enc, list(conversation) + [{"role": "assistant", "content": reply}])
    return tokens[-max_len:]


def pad_right(rows):
    """Token-id lists -> (x (B, T) right-padded with 0, last (B,): each row's last real position). Causal attention
    keeps the padding, which comes after, out of every score."""
    x = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    for i, row in enumerate(rows):
        x[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return x, torch.tensor([len(row) - 1 for row in rows], dtype=torch.long)


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


def score_replies(model, enc, conversations, replies, ctx=None, batch_size=32):
    """For each conversation (chat messages ending before the reply, as task.chat_prompt gives them) the verifier's
    probability that each of its replies (strings) is right: [[float] * len(replies[i]) for each i]."""
    if not getattr(model.config, "score_head", False):
        raise ValueError("this model has no score head, so it cannot score replies: give a verifier, a run trained "
                         "with task=verifier (e.g. config/verifier_demo.py)")
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


def best_of_n(scores, labels):
    """scores, labels (Q, N): the fraction of questions whose top-scored answer (the first, on a tie) is right."""
    scores, labels = torch.as_tensor(scores), torch.as_tensor(labels).float()
    return labels.gather(1, scores.argmax(1, keepdim=True)).mean().item()


def majority_vote(predictions):
    """The most common extracted answer (None, no answer, never wins while another exists); on a tie, the one
    seen first, as self-consistency's vote."""
    counts = {}
    for p in predictions:
        if p is not None:
            counts[p] = counts.get(p, 0) + 1
    return max(counts, key=lambda p: counts[p]) if counts else None


def measure(generator, verifier, enc, task, docs, num_samples, temperature=1.0, max_new_tokens=64, seed=0,
            ctx=None, batch_size=64):
    """On docs of a generated-answer task: greedy pass@1, then num_samples answers sampled per question, scored as
    mean correct (sampled pass@1), any correct (the oracle: pass@N), majority vote (maj@N) and the verifier's pick
    (best-of-N). Returns {name: fraction}."""
    from nash.engine import Sampling, sample_batch
    from nash.tokenizer import special_ids
    stop_ids = set(special_ids(enc).values())  # any special token ends a reply (evaluate.py's chat stop)
    conversations = [task.chat_prompt(doc, []) for doc in docs]
    prompts = [render_conversation(enc, conv, for_reply=True)[0] for conv in conversations]
    greedy = sample_batch(generator, prompts, 1, Sampling(temperature=0.0, top_k=None, max_new_tokens=max_new_tokens),
                          stop_ids, ctx=ctx, enc=enc, batch_size=batch_size)
    sampled = sample_batch(generator, prompts, num_samples, Sampling(temperature=temperature, top_k=None,
                           max_new_tokens=max_new_tokens, seed=seed), stop_ids, ctx=ctx, enc=enc, batch_size=batch_size)
    replies = [[c.text for c in group] for group in sampled]
    checks = [[task.check(doc, reply) for reply in group] for doc, group in zip(docs, replies)]
    right = torch.tensor([[c[task.metrics[0]] for c in group] for group in checks])
    scores = torch.tensor(score_replies(verifier, enc, conversations, replies, ctx))
    votes = [majority_vote([c["predicted"] for c in group]) for group in checks]
    return {"questions": len(docs), "num_samples": num_samples,
            "greedy pass@1": sum(task.check(doc, g[0].text)[task.metrics[0]] for doc, g in zip(docs, greedy)) / len(docs),
            "sampled pass@1": right.mean().item(), f"pass@{num_samples} (oracle)": (right.max(1).values).mean().item(),
            f"maj@{num_samples}": sum(v is not None and v == doc["answer"] for v, doc in zip(votes, docs)) / len(docs),
            f"best-of-{num_samples} (verifier)": best_of_n(scores, right),
            "verifier AUC": auc(scores.flatten(), right.flatten())}


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # model.py, configurator.py
    from configurator import configure
    from nash import tasks as downstream
    from nash.checkpoint import load_model
    from nash.common import autocast, fail, pick_device, pick_dtype
    from nash.tokenizer import from_spec, model_spec
    generator = ""  # the chat run that answers (a run folder or checkpoint)
    verifier = ""  # the verifier run that picks (task=verifier)
    task = "arith"  # a generated-answer task with an answer check
    task_data = ""  # a folder of <task>.jsonl; "" = the embedded set or the hub
    limit = 0  # the first this many test questions; 0 = all
    num_samples = 16  # answers sampled per question
    temperature = 1.0
    max_new_tokens = 64
    seed = 0
    device = "auto"
    dtype = "auto"
    configure(globals())
    if not generator or not verifier:
        fail("say which runs: --generator=<chat run> --verifier=<verifier run>")
    if task not in downstream.TASKS or downstream.TASKS[task].check is None:
        fail(f"task={task!r} should be a generated-answer task with an answer check (e.g. arith, gsm8k)")
    device = pick_device(device)
    ctx = autocast(device.split(":")[0], pick_dtype(dtype, device.split(":")[0], inference=True))
    gen_model, gen_state, _ = load_model(generator, device=device)
    ver_model, _, _ = load_model(verifier, device=device)
    enc = from_spec(model_spec(gen_state, generator))
    spec = downstream.TASKS[task]
    docs = downstream.load_rows(spec, spec.split, task_data, limit)
    try:
        result = measure(gen_model, ver_model, enc, spec, docs, num_samples, temperature, max_new_tokens, seed, ctx)
    except ValueError as e:
        fail(str(e))
    for name, value in result.items():
        print(f"{name:>26}: {100 * value:.1f}%" if isinstance(value, float) else f"{name:>26}: {value}")
