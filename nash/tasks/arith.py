"""
arith: the embedded arithmetic word problems of data/arith (written by data/arith/generate.py), offline, in GSM8K's
row format and scored as GSM8K is (gsm8k.py's prompts and answer check, the last number of the completion against
the number after "#### "): the task RL's demo trains on (train split) and measures pass@1 on (test split).
arith_heldout: the same, on 1,000 further problems (heldout.jsonl), for a finer measurement than 200 test problems.
"""
import os

from nash.tasks.base import Task, read_jsonl
from nash.tasks.gsm8k import TASK as GSM8K

FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data", "arith")


def read_rows(split):
    return read_jsonl(os.path.join(FOLDER, f"{split}.jsonl"))


TASK = Task("arith", "generate", None, "test", GSM8K.doc, prompt=GSM8K.prompt, check=GSM8K.check,
            chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=GSM8K.metrics)
HELDOUT = Task("arith_heldout", "generate", None, "heldout", GSM8K.doc, prompt=GSM8K.prompt, check=GSM8K.check,
               chat_prompt=GSM8K.chat_prompt, stop=GSM8K.stop, read_rows=read_rows, metrics=GSM8K.metrics,
               fewshot_split="train")
