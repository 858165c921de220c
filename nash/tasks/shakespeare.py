"""
Held-out Shakespeare continuations, lm-eval style (LAMBADA / HellaSwag): a passage of the text the pipeline's base
model never trained on, cut mid-line, and four endings for the line, the true one and three ends of other held-out
lines; the model picks the ending it finds likeliest. Chance is 1/4, and 500 items make a standard error of ~2
points, so a base model of a few minutes shows whether it learnt the text's language or only its letters.

Held out: the items come from the val split that prepare.py (val_ratio=0.01, its default) makes of the embedded
data/shakespeare/input.txt, computed by the same rule (nash/textsplit.py), so no item was trained on. acc_norm
(log-likelihood per character) is the figure to read: the endings differ in length.
"""
import os
import random

from nash.tasks.base import Task
from nash.textsplit import split_pieces, txt_pieces

INPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                     "data", "shakespeare", "input.txt")
VAL_RATIO = 0.01  # prepare.py's default: runs/cpu.sh prepares the corpus with it
ITEMS = 500
CONTEXT_CHARS = 300  # the passage before the cut: about four lines of verse
MIN_WORDS = 6  # a line this long or longer is cut after its first half of words


def held_out_text(path=INPUT, val_ratio=VAL_RATIO):
    """The characters of path that prepare.py puts in val, as one string (documents joined by blank lines)."""
    return "\n\n".join(text for split, text, _ in split_pieces(txt_pieces(path), val_ratio) if split == "val")


def read_rows(split, path=INPUT):
    """ITEMS rows {context, choices, gold}, evenly spaced over the held-out lines, the same every time."""
    text = held_out_text(path)
    lines, offsets, at = [], [], 0
    for line in text.split("\n"):
        lines.append(line)
        offsets.append(at)
        at += len(line) + 1
    # a line of verse or prose, not a speaker's name ("ROMEO:") or a stage direction
    usable = [i for i, line in enumerate(lines) if len(line.split()) >= MIN_WORDS and offsets[i] >= CONTEXT_CHARS]
    ends = [" ".join(lines[i].split()[len(lines[i].split()) // 2:]) for i in usable]
    rng = random.Random(1234)
    step = max(1, len(usable) // ITEMS)
    rows = []
    for k in range(0, len(usable), step)[:ITEMS]:
        i = usable[k]
        words = lines[i].split()
        head = " ".join(words[:len(words) // 2])
        before = text[offsets[i] - CONTEXT_CHARS:offsets[i]]
        before = before[before.find("\n") + 1:]  # start at a line's beginning
        others = rng.sample([e for j, e in enumerate(ends) if j != k and e != ends[k]], 3)
        gold = rng.randrange(4)
        rows.append({"context": before + head, "choices": others[:gold] + [ends[k]] + others[gold:], "gold": gold})
    return rows


def doc(row):
    return {"text": row["context"], "choices": row["choices"], "gold": row["gold"]}


TASK = Task("shakespeare_heldout", "choice", None, "val", doc, fewshot_split=None, read_rows=read_rows)
