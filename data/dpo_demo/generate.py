"""
Writes data/dpo_demo/train.jsonl and val.jsonl: preference pairs for the reversal task of data/sft_demo, so that
Base -> SFT -> DPO runs offline on a CPU.

    python data/dpo_demo/generate.py

Each pair is a prompt of data/sft_demo's form, the correct reversal as "chosen", and a plausible mistake as
"rejected", the kinds of mistake a half-trained model makes:

    {"prompt": "Reverse: red fox runs\\n", "chosen": " runs fox red", "rejected": " runs red fox"}

mistakes: the words in their original order (copying), two neighbours of the answer swapped, a word left out,
a word said twice in place of another. Deterministic (a fixed seed, no dependencies): rerunning rewrites the
same files, byte for byte. No prompt of data/sft_demo's val set appears here, so evaluating exact match on it
after DPO measures generalisation; val here has no prompt of train here.
"""
import json
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "sft_demo"))
from generate import WORDS  # noqa: E402  (the same vocabulary as the SFT task)

NUM_TRAIN, NUM_VAL, SEED = 2000, 200, 4321


def mistake(words, rng):
    """A wrong answer for the prompt words, different from the correct reversal."""
    answer = list(reversed(words))
    kind = rng.randrange(4)
    if kind == 0:  # copied instead of reversed
        wrong = list(words)
    elif kind == 1:  # two neighbours swapped
        i = rng.randrange(len(answer) - 1)
        wrong = answer[:i] + [answer[i + 1], answer[i]] + answer[i + 2:]
    elif kind == 2:  # a word left out
        i = rng.randrange(len(answer))
        wrong = answer[:i] + answer[i + 1:]
    else:  # a word repeated in place of its neighbour
        i = rng.randrange(len(answer) - 1)
        wrong = answer[:i + 1] + [answer[i]] + answer[i + 2:]
    return wrong if wrong != answer else mistake(words, rng)


def main():
    with open(os.path.join(HERE, "..", "sft_demo", "val.jsonl")) as f:
        held_out = {json.loads(line)["prompt"] for line in f}  # the SFT demo's val set stays unseen
    rng = random.Random(SEED)
    seen, pairs = set(held_out), []
    while len(pairs) < NUM_TRAIN + NUM_VAL:
        words = rng.sample(WORDS, rng.randint(3, 5))
        prompt = "Reverse: " + " ".join(words) + "\n"
        if prompt in seen:
            continue
        seen.add(prompt)
        pairs.append({"prompt": prompt, "chosen": " " + " ".join(reversed(words)),
                      "rejected": " " + " ".join(mistake(words, rng))})
    for split, rows in (("train", pairs[:NUM_TRAIN]), ("val", pairs[NUM_TRAIN:])):
        path = os.path.join(HERE, f"{split}.jsonl")
        with open(path, "w", newline="\n") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"wrote {path}: {len(rows)} pairs")


if __name__ == "__main__":
    main()
