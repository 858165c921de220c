"""
Writes data/arith/: arithmetic word problems in GSM8K's format, small enough for a CPU to learn and to RL on.

    python data/arith/generate.py

train.jsonl and test.jsonl hold GSM8K rows, {"question": ..., "answer": "<working>\\n#### <number>"}: the questions
objective=rl samples answers to (train) and scores pass@1 on (test), through nash/tasks/arith.py. chat/train.jsonl and
chat/val.jsonl are the same kind of problems as conversations (the question a user turn, the worked answer the
assistant's), for the SFT step before RL (config/arith_sft_demo.py): chat/train.jsonl asks the questions of
train.jsonl, so RL practises on problems the SFT model has seen, as nanochat's RL does on GSM8K's train split.
heldout.jsonl holds 1,000 further problems (their own seed, none in the other files), the task arith_heldout: 200 test
problems put a standard error of 3.5 points on pass@1, too coarse to see what RL moves.

A problem is one or two steps of adding and taking away with numbers below 20 ("Ann has 7 apples. Ann buys 5
more. ..."), answered with its working ("7 + 5 = 12"): one addition or subtraction fact per step, a few hundred
facts in all, which a small model learns partly from a few thousand examples: the headroom RL can close.
Deterministic (a fixed seed, no dependencies): rerunning rewrites the same files, byte for byte. No test question
appears in train or chat.
"""
import json
import os
import random

NAMES = "Ann Ben Cara Dan Eva Finn Gus Hana Ivy Jon Kim Leo Mia Ned Oli Pam Raj Sue Tom Uma".split()
ITEMS = "apples pens cards coins books shells stamps marbles cookies stickers".split()
GAIN = ["buys {n} more", "finds {n} more", "gets {n} more from a friend", "is given {n} more"]
LOSS = ["gives {n} away", "loses {n}", "eats {n}", "sells {n}"]
NUM_TRAIN, NUM_VAL, NUM_TEST, SEED = 2000, 100, 200, 1234
NUM_HELDOUT, HELDOUT_SEED = 1000, 98765  # drawn after the rest, from their own generator: the files above stay as they were
LIMIT = 20  # every number in a problem, start, change and result, is below this


def step(rng, total):
    """One change to the total: (the phrase, the working, the new total)."""
    if total == 0 or (rng.random() < 0.5 and total < LIMIT - 1):
        n = rng.randint(1, LIMIT - 1 - total)
        return rng.choice(GAIN).format(n=n), f"{total} + {n} = {total + n}", total + n
    n = rng.randint(1, total)
    return rng.choice(LOSS).format(n=n), f"{total} - {n} = {total - n}", total - n


def problem(rng):
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = rng.randint(1, LIMIT - 2)
    question, working = f"{name} has {total} {item}.", []
    for k in range(rng.choice((1, 2))):
        phrase, line, total = step(rng, total)
        question += f" {'Then' if k else ''} {name} {phrase}.".replace("  ", " ")
        working.append(line)
    question += f" How many {item} does {name} have now?"
    return {"question": question, "answer": "\n".join(working) + f"\n#### {total}"}


def conversation(row):
    return {"messages": [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]}


def main():
    rng = random.Random(SEED)
    test, seen = [], set()
    while len(test) < NUM_TEST:  # distinct held-out questions first, so nothing later can repeat them
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            test.append(row)
    others = []
    while len(others) < NUM_TRAIN + NUM_VAL:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            others.append(row)
    train, val = others[:NUM_TRAIN], others[NUM_TRAIN:]
    heldout, rng = [], random.Random(HELDOUT_SEED)
    while len(heldout) < NUM_HELDOUT:
        row = problem(rng)
        if row["question"] not in seen:
            seen.add(row["question"])
            heldout.append(row)
    folder = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(os.path.join(folder, "chat"), exist_ok=True)
    for name, rows in (("train.jsonl", train), ("test.jsonl", test), ("heldout.jsonl", heldout),
                       ("chat/train.jsonl", map(conversation, train)), ("chat/val.jsonl", map(conversation, val))):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
