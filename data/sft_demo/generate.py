"""
Writes data/sft_demo/train.jsonl and val.jsonl: a small supervised fine-tuning task for demos and tests.

    python data/sft_demo/generate.py

The task is to reverse 3 to 5 common words, each a single GPT-2 token:

    {"prompt": "Reverse: red fox runs\\n", "completion": " runs fox red"}

A tiny model (4 layers, d_model 128) learns it on a CPU in minutes, while a base model trained on Shakespeare
never does it, so exact-match of greedy completions shows at a glance what SFT taught. The completion ends
where the answer ends: training appends end-of-text, and the model learns to stop there.
Deterministic (a fixed seed, no dependencies): rerunning rewrites the same files, byte for byte.
No val example appears in train.
"""
import json
import os
import random

WORDS = """red blue green black white cat dog fox bird fish cow horse sun moon star tree rock sea sky rain snow wind
fire king queen man woman boy girl house door book car ship road hill lake river apple bread milk salt gold iron
stone runs jumps sings eats sleeps walks flies reads writes big small old new hot cold fast slow happy sad""".split()
NUM_TRAIN, NUM_VAL, SEED = 4000, 200, 1234


def example(rng):
    words = rng.sample(WORDS, rng.randint(3, 5))  # no word twice, so the answer is unambiguous
    return {"prompt": "Reverse: " + " ".join(words) + "\n", "completion": " " + " ".join(reversed(words))}


def main():
    rng = random.Random(SEED)
    seen, examples = set(), []
    while len(examples) < NUM_TRAIN + NUM_VAL:
        ex = example(rng)
        if ex["prompt"] not in seen:  # distinct prompts, so val never repeats train
            seen.add(ex["prompt"])
            examples.append(ex)
    folder = os.path.dirname(os.path.abspath(__file__))
    for split, rows in (("train", examples[:NUM_TRAIN]), ("val", examples[NUM_TRAIN:])):
        path = os.path.join(folder, f"{split}.jsonl")
        with open(path, "w", newline="\n") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"wrote {path}: {len(rows)} examples")


if __name__ == "__main__":
    main()
