"""
DPO pairs from a chat model's own answers (issue 34): the model answers reward questions several times each at
temperature 1, the task's check labels every answer, and each question with both a right and a wrong answer gives
pairs (a right one chosen, a wrong one rejected: different answers to the same question). The folder it writes is a
task=dpo dataset (chat pairs: {"messages", "chosen", "rejected"}, nash/data.py PreferenceExamples).

    python -m nash.tasks.pairs --out_dir=out-countdown-sft --task=countdown --output=data/countdown_dpo
    python train.py config/countdown_dpo.py                       # task=dpo on them, from the same SFT model

--questions: how many of the task's train questions to ask (the first ones; val pairs come from the 100 after);
--samples: answers to each; --pairs: the most pairs kept per question; --seed: the sampling seed.
"""
import argparse
import json
import os
import random
import sys

import torch


def own_pairs(model, enc, task, docs, samples, pairs_per_question, seed, max_new_tokens=32, chunk=32):
    """[{"messages", "chosen", "rejected"}] from model's sampled answers to docs, labelled by task's check."""
    from nash.engine import Sampling, sample_batch
    from nash.tokenizer import render_conversation, special_ids
    stop = special_ids(enc)["<|assistant_end|>"]
    rng, out = random.Random(seed), []
    for start in range(0, len(docs), chunk):
        part = docs[start:start + chunk]
        prompts = [render_conversation(enc, task.chat_prompt(d, []), for_reply=True)[0] for d in part]
        with torch.no_grad():
            results = sample_batch(model, prompts, samples, Sampling(temperature=1.0, top_k=None,
                                   max_new_tokens=max_new_tokens, seed=seed + start), {stop}, enc=enc)
        for doc, group in zip(part, results):
            texts = list(dict.fromkeys(c.text for c in group if c.finish_reason == "stop"))  # distinct, finished
            right = [t for t in texts if task.check(doc, t)[task.metrics[0]]]
            wrong = [t for t in texts if not task.check(doc, t)[task.metrics[0]]]
            combos = [(r, w) for r in right for w in wrong]
            rng.shuffle(combos)
            out += [{"messages": task.chat_prompt(doc, []), "chosen": r, "rejected": w}
                    for r, w in combos[:pairs_per_question]]
    return out


def main(argv=None):
    from nash import tasks as downstream
    from nash import tokenizer
    from nash.checkpoint import load_model
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out_dir", required=True, help="the chat model (an SFT run) that answers")
    p.add_argument("--task", default="countdown")
    p.add_argument("--output", required=True, help="the folder to write train.jsonl and val.jsonl to")
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    task = downstream.TASKS.get(a.task)
    if task is None or task.chat_prompt is None or task.check is None:
        print(f"error: --task={a.task} should be a generative task with a chat format and a check (countdown, arith)",
              file=sys.stderr)
        sys.exit(2)
    if a.samples < 2 or a.questions < 1 or a.pairs < 1:
        print("error: --samples should be at least 2, --questions and --pairs at least 1", file=sys.stderr)
        sys.exit(2)
    model, state, _ = load_model("", a.out_dir, "best", "cpu")
    enc = tokenizer.from_spec(tokenizer.model_spec(state, a.out_dir))
    docs = downstream.load_rows(task, "train")
    splits = {"train": docs[:a.questions], "val": docs[a.questions:a.questions + 100]}
    os.makedirs(a.output, exist_ok=True)
    for name, part in splits.items():
        rows = own_pairs(model, enc, task, part, a.samples, a.pairs, a.seed + (name == "val"))
        if not rows:
            print(f"error: no {name} question got both a right and a wrong answer; ask more questions or samples",
                  file=sys.stderr)
            sys.exit(1)
        with open(os.path.join(a.output, f"{name}.jsonl"), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"{name}: {len(rows)} pairs from {len(part)} questions")


if __name__ == "__main__":
    main()
