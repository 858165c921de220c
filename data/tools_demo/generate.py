"""
Writes data/tools_demo/: arithmetic word problems whose answers call the calculator, for config/tools_demo.py.

    python data/tools_demo/generate.py          # (or generate.py FOLDER: write them there instead)

Each problem is written as a GSM8K row, its working annotated GSM8K's way ("So 24 crates hold<< 37 * 24=888>>888
bottles."), and turned into a conversation by nash/tasks/gsm8k.py's tool_conversation, the same conversion GSM8K
itself gets: the annotation becomes a call to the calculator and its output. train.jsonl and val.jsonl hold
{"messages": [...]} rows (val is the held-out split: no question of it is in train).

The numbers are two- and three-digit, multiplied, added and taken away: too much arithmetic for a small model to
learn in minutes on a CPU, and nothing to learn with the calculator but which numbers to write in the call and
that its output is the answer. The calls put a space before each number (" 37 * 24"), so they are the very tokens
of the question (GPT-2's BPE has " 37" and "37" as different tokens): copying, which small models learn fast.
Deterministic (a fixed seed): rerunning rewrites the same files, byte for byte.
"""
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root
from nash.tasks.gsm8k import tool_conversation  # noqa: E402

NAMES = "Ann Ben Cara Dan Eva Finn Gus Hana Ivy Jon Kim Leo Mia Ned Oli Pam Raj Sue Tom Uma".split()
ITEMS = "apples pens cards coins books shells stamps marbles cookies stickers".split()


def problem(rng):
    """A (question, answer) pair: one or two steps, each an annotation."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.choice(["times", "plus", "minus", "times_minus"])
    a, b = rng.randint(11, 99), rng.randint(11, 99)
    if kind == "times":
        q = f"A box holds {a} {item}. How many {item} are in {b} boxes?"
        return q, f"So {b} boxes hold<< {a} * {b}={a * b}>>{a * b} {item}."
    if kind == "plus":
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return q, f"{name} has<< {a} + {b}={a + b}>>{a + b} {item}."
    if kind == "minus":
        a, b = rng.randint(500, 999), rng.randint(100, 499)
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        return q, f"{name} has<< {a} - {b}={a - b}>>{a - b} {item} left."
    c = rng.randint(11, 99)
    q = f"{name} buys {a} packs of {b} {item} and gives away {c}. How many {item} are left?"
    return q, f"{name} buys<< {a} * {b}={a * b}>>{a * b} {item} and has<<{a * b} - {c}={a * b - c}>>{a * b - c} left."


def main():
    rng = random.Random(26)
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    seen, rows = set(), []
    while len(rows) < 2200:
        question, answer = problem(rng)
        if question not in seen:  # no question twice, so val is held out
            seen.add(question)
            rows.append({"question": question, "answer": answer})
    for split, part in (("train", rows[:2000]), ("val", rows[2000:])):
        with open(os.path.join(folder, f"{split}.jsonl"), "w") as f:
            for row in part:
                f.write(json.dumps({"messages": tool_conversation(row)}) + "\n")
        print(f"wrote {len(part)} conversations to {os.path.join(folder, split + '.jsonl')}")


if __name__ == "__main__":
    main()
