"""
arith: the embedded arithmetic word problems of data/arith (written by data/arith/generate.py), offline, in GSM8K's
row format and GSM8K's prompts: the task the SFT and RL demos train on (train split) and measure pass@1 on (test).
arith_heldout: the same, on 1,000 further problems (heldout.jsonl), for a finer measurement than 200 test problems.

The check has two metrics. "correct" (the first: the reward RL and the verifier learn from, and pass@1): every line
of the working that states an equation, `a + b = c` or `a - b = c`, is true, the last one gives the final number,
and the final number is the answer.
"exact_match": GSM8K's check, the final number alone. Paying for the final number alone paid for false working:
21.6% of the right answers sampled from the SFT model held a false line (`14 - 13 = 2`), which RL then reinforced.
RL's and the verifier's reward_metric=exact_match brings the old reward back.
"""
import os
import re
from fractions import Fraction

from nash.tasks.base import Task, read_jsonl
from nash.tasks.gsm8k import TASK as GSM8K

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "arith")
EQUATION = re.compile(r"^\s*(-?\d+)\s*([-+*/])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
       "/": lambda a, b: Fraction(a, b) if b else None}


def working_holds(completion, answer):
    """True when every line of the completion that holds an "=" (but for the "#### N" line) is a true equation
    `a op b = c` of integers, op one of + - * /, and the last one's c is the answer it gives (the working leads to
    it: `16 + 3 = 19` then `#### 18` skipped a step); a line with an "=" that is not such an equation is false."""
    last = None
    for line in completion.splitlines():
        if "=" not in line or line.lstrip().startswith("####"):
            continue
        m = EQUATION.match(line)
        if not m:
            return False
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        if OPS[op](a, b) != c:
            return False
        last = m[4]
    return last is None or last == answer


def check(doc, completion):
    result = GSM8K.check(doc, completion)  # {"exact_match": the final number is right, "predicted": it}
    correct = result["exact_match"] == 1.0 and working_holds(completion, result["predicted"])
    return {"correct": float(correct), **result}


def read_rows(split):
    return read_jsonl(os.path.join(FOLDER, f"{split}.jsonl"))


METRICS = ("correct", "exact_match")
TASK = Task("arith", "generate", None, "test", GSM8K.doc, prompt=GSM8K.prompt, check=check,
            chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=METRICS)
HELDOUT = Task("arith_heldout", "generate", None, "heldout", GSM8K.doc, prompt=GSM8K.prompt, check=check,
               chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=METRICS,
               fewshot_split="train")
