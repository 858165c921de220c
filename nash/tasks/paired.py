"""
Paired comparison of runs on the same questions: each run answers every question greedily (the batched engine), the
task's check scores it, and each run after the first is compared with the first question by question (the mean
difference and its standard error, and how many questions it gained and lost). The numbers docs/learning.md gives.

    python data/countdown/generate.py --seed=11 --count=1000 > /tmp/fresh.jsonl     # a fresh held-out draw
    python -m nash.tasks.paired --task=countdown --questions=/tmp/fresh.jsonl out-countdown-sft out-countdown-rl

--questions: GSM8K-style JSONL rows ({"question", "answer"}) of the task (default: the task's own split);
--ckpt: best or latest; --json=FILE also writes every run's per-question scores.
"""
import argparse
import json
import sys

import torch

from nash.tasks.base import stderr


def greedy_scores(out_dir, task, docs, ckpt="best", max_new_tokens=32, batch=64):
    """The task's first metric (0/1) of the run's greedy chat answer to each doc."""
    from nash import tokenizer
    from nash.checkpoint import load_model
    from nash.engine import Sampling, sample_batch
    from nash.tokenizer import render_conversation, special_ids
    model, state, _ = load_model("", out_dir, ckpt, "cpu")
    enc = tokenizer.from_spec(tokenizer.model_spec(state, out_dir))
    stops = set(special_ids(enc).values())
    prompts = [render_conversation(enc, task.chat_prompt(d, []), for_reply=True)[0] for d in docs]
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch):
            results = sample_batch(model, prompts[start:start + batch], 1,
                                   Sampling(temperature=0.0, max_new_tokens=max_new_tokens), stops, enc=enc)
            out += [task.check(d, g[0].text)[task.metrics[0]] for d, g in zip(docs[start:start + batch], results)]
    return out


def compare(scores):
    """{run: per-question scores} -> lines: each run's mean ± se, then each later run minus the first, paired."""
    runs = list(scores)
    lines = [f"{r}: {100 * sum(v) / len(v):.1f}% ± {100 * stderr(v):.1f} (n={len(v)})" for r, v in scores.items()]
    base = scores[runs[0]]
    for r in runs[1:]:
        diff = [a - b for a, b in zip(scores[r], base)]
        lines.append(f"{r} - {runs[0]}: {100 * sum(diff) / len(diff):+.1f} ± {100 * stderr(diff):.1f} points paired "
                     f"({sum(d > 0 for d in diff)} gained, {sum(d < 0 for d in diff)} lost)")
    return lines


def main(argv=None):
    from nash import tasks as downstream
    from nash.tasks.base import read_jsonl
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--task", default="countdown")
    p.add_argument("--questions", default="")
    p.add_argument("--ckpt", default="best")
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    if a.task not in downstream.TASKS or downstream.TASKS[a.task].chat_prompt is None:
        print(f"error: --task={a.task} should be a generative task with a chat format, e.g. countdown or arith",
              file=sys.stderr)
        sys.exit(2)
    task = downstream.TASKS[a.task]
    docs = ([task.doc(r) for r in read_jsonl(a.questions)] if a.questions
            else downstream.load_rows(task, task.split))
    scores = {r: greedy_scores(r, task, docs, a.ckpt, a.max_new_tokens) for r in a.runs}
    print("\n".join(compare(scores)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(scores, f)


if __name__ == "__main__":
    main()
