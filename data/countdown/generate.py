"""
Writes data/countdown/: a small countdown task (TinyZero's, cut to CPU size) for the RL demo, where the model's
mistakes are choices, not missing facts.

    python data/countdown/generate.py                          # the shipped files, byte for byte
    python data/countdown/generate.py --seed=7 --count=1000    # a fresh draw to stdout, none of the shipped questions

A problem gives three numbers from 1 to 12 and a target: "Make 11 from 7, 3 and 1, in that order, with + and -."
An answer is two lines of working and the result: "7 + 3 = 10\\n10 + 1 = 11\\n#### 11". It is right when both lines
are true, they use the numbers in the given order, and the result is the target (nash/tasks/countdown.py). The facts
are additions and subtractions below 37, which every demonstration states; the choice is which of + and - to
take at each step: four ways, one or two of which reach the target.

train.jsonl, test.jsonl, heldout.jsonl: GSM8K-style rows {"question", "answer"} (the answer a right one), the
questions RL asks (train) and measures pass@1 on (test, heldout). chat/train.jsonl and chat/val.jsonl are the SFT
demonstrations, conversations on the train questions (val: their own questions), written the way a weaker
demonstrator with a habit would: 40% of them reach the target on purpose, the other 60% just add the three numbers
(true working, and the target only where + + happens to be the answer, 40% of the questions). An imitator's most
likely answer is then the habit wherever the habit is wrong: SFT learns the format, the facts and the habit, and its
greedy answers are right about as often as adding is. The answer check is what RL adds: a sampled answer that
reaches the target is rewarded, one that adds where adding misses is not, so the policy can learn to drop the habit
where it misses; more SFT on the same demonstrations keeps it.
Deterministic (fixed seeds, no dependencies); no test or held-out question is in train or chat, and a --seed draw
holds none of the shipped questions.
"""
import argparse
import json
import os
import random
import sys

NUM_TRAIN, NUM_VAL, NUM_TEST, NUM_HELDOUT, SEED = 2000, 100, 200, 500, 2468
MAX = 12  # the numbers are 1..MAX: about 5,600 questions exist, 2,800 are shipped
DEMO_RIGHT = 0.4  # the share of SFT demonstrations that reach the target on purpose; the others add (the habit)
HABIT = ("+", "+")
FOLDER = os.path.dirname(os.path.abspath(__file__))


def apply(a, op, b):
    return a + b if op == "+" else a - b


def working(a, b, c, ops):
    """The two lines and the result of a op1 b op2 c, or None where a step goes below 0."""
    x = apply(a, ops[0], b)
    y = apply(x, ops[1], c)
    if x < 0 or y < 0:
        return None
    return f"{a} {ops[0]} {b} = {x}\n{x} {ops[1]} {c} = {y}\n#### {y}", y


SIGNS = [(p, q) for p in "+-" for q in "+-"]


def problem(rng):
    """(question, the numbers, the target, the answers that reach it)."""
    while True:
        a, b, c = (rng.randint(1, MAX) for _ in range(3))
        ops = rng.choice(SIGNS)
        done = working(a, b, c, ops)
        if done is None:
            continue
        target = done[1]
        right = [w for w in (working(a, b, c, s) for s in SIGNS) if w and w[1] == target]
        question = f"Make {target} from {a}, {b} and {c}, in that order, with + and -."
        return question, (a, b, c), target, [w[0] for w in right]


def every_question():
    questions = set()
    for a in range(1, MAX + 1):
        for b in range(1, MAX + 1):
            for c in range(1, MAX + 1):
                for signs in SIGNS:
                    done = working(a, b, c, signs)
                    if done:
                        questions.add(f"Make {done[1]} from {a}, {b} and {c}, in that order, with + and -.")
    return questions


def row(rng):
    question, _, _, right = problem(rng)
    return {"question": question, "answer": rng.choice(right)}


def demonstration(rng, row_):
    """The SFT demonstration of a row: its right answer (DEMO_RIGHT of the time), or the habit, a + b + c."""
    import re
    answer = row_["answer"]
    if rng.random() >= DEMO_RIGHT:
        a, b, c = map(int, re.findall(r"(\d+), (\d+) and (\d+)", row_["question"])[0])
        answer = working(a, b, c, HABIT)[0]  # always valid: no step goes below 0
    return {"messages": [{"role": "user", "content": row_["question"]}, {"role": "assistant", "content": answer}]}


def draw(rng, count, seen):
    out = []
    while len(out) < count:
        r = row(rng)
        if r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
    return out


def shipped():
    """The splits as shipped: {name: rows}."""
    seen = set()
    rng = random.Random(SEED)
    test = draw(rng, NUM_TEST, seen)
    heldout = draw(rng, NUM_HELDOUT, seen)
    train = draw(rng, NUM_TRAIN, seen)
    val = draw(rng, NUM_VAL, seen)
    demos = random.Random(SEED + 1)
    return {"train.jsonl": train, "test.jsonl": test, "heldout.jsonl": heldout,
            "chat/train.jsonl": [demonstration(demos, r) for r in train],
            "chat/val.jsonl": [demonstration(demos, r) for r in val]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, help="draw fresh problems with this seed (to stdout) instead of "
                        "writing the shipped files")
    parser.add_argument("--count", type=int, default=1000, help="how many fresh problems (with --seed)")
    args = parser.parse_args(argv)
    files = shipped()
    if args.seed is None:
        os.makedirs(os.path.join(FOLDER, "chat"), exist_ok=True)
        for name, rows in files.items():
            with open(os.path.join(FOLDER, name), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        return
    if args.count < 1:
        print(f"error: --count={args.count} should be at least 1", file=sys.stderr)
        sys.exit(2)
    seen = {r["question"] for name in ("train.jsonl", "test.jsonl", "heldout.jsonl") for r in files[name]}
    seen |= {r["messages"][0]["content"] for r in files["chat/val.jsonl"]}
    left = len(every_question() - seen)
    if args.count > left:
        print(f"error: --count={args.count}: only {left} questions are not shipped; ask for fewer", file=sys.stderr)
        sys.exit(2)
    for r in draw(random.Random(("countdown", args.seed).__repr__()), args.count, seen):
        print(json.dumps(r))


if __name__ == "__main__":
    main()
