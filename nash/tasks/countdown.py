"""
countdown: reach a target from three given numbers, in their order, with + and - (data/countdown, written by
data/countdown/generate.py; TinyZero's countdown cut to CPU size): the RL demo's task (config/countdown_rl.py), where
a small model's mistakes are choices of sign, not missing facts. GSM8K's row format and chat prompt.
countdown_heldout: 500 further problems; `python data/countdown/generate.py --seed=S --count=N` draws fresh ones.

The check: "correct" when the working is two true lines that take the numbers in the given order, the first line's
result carried into the second (`7 + 3 = 10` then `10 + 1 = 11`), and the result after "#### " is the target.
"exact_match": the number after "#### " (the last number) is the target, whatever the working.
"""
import os
import re

from nash.tasks.arith import EQUATION, OPS
from nash.tasks.base import Task, read_jsonl
from nash.tasks.gsm8k import TASK as GSM8K

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data",
                      "countdown")
NUMBERS = re.compile(r"from (\d+), (\d+) and (\d+)")


def doc(row):
    out = GSM8K.doc(row)
    out["numbers"] = [int(n) for n in NUMBERS.search(row["question"]).groups()]
    return out


def reaches_target(doc, completion):
    """The working takes doc's numbers in order, each line true, and ends at the target."""
    lines = [line for line in completion.strip().splitlines() if line.strip()]
    if len(lines) != 3 or not lines[2].startswith("#### "):
        return False
    a, b, c = doc["numbers"]
    steps = [EQUATION.match(line) for line in lines[:2]]
    if not all(steps) or any(m[2] not in "+-" for m in steps):
        return False
    (x1, op1, y1, r1), (x2, op2, y2, r2) = ([int(m[1]), m[2], int(m[3]), int(m[4])] for m in steps)
    return ((x1, y1, x2, y2) == (a, b, r1, c) and OPS[op1](x1, y1) == r1 and OPS[op2](x2, y2) == r2
            and lines[2][5:].strip() == str(r2) == doc["answer"])


def check(doc, completion):
    result = GSM8K.check(doc, completion)
    return {"correct": float(reaches_target(doc, completion)), **result}


def read_rows(split):
    return read_jsonl(os.path.join(FOLDER, f"{split}.jsonl"))


METRICS = ("correct", "exact_match")
TASK = Task("countdown", "generate", None, "test", doc, prompt=GSM8K.prompt, check=check,
            chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=METRICS)
HELDOUT = Task("countdown_heldout", "generate", None, "heldout", doc, prompt=GSM8K.prompt, check=check,
               chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=METRICS,
               fewshot_split="train")
