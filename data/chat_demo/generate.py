"""
Writes data/chat_demo/train.jsonl and val.jsonl: conversations a small model learns on a CPU in minutes.

    python data/chat_demo/generate.py

Each line is {"messages": [{"role": ..., "content": ...}, ...]}, the format objective=chat trains on, with one to
three user/assistant turns and sometimes a system prompt. Two things to learn:
- who it is: questions about the model ("What is your name?", "Who made you?", greetings...), in a few
  phrasings each, with one fixed answer per question, as nanochat teaches its models their identity;
- a small skill: "Reverse: red fox runs" -> "runs fox red" (3 to 5 single-token words, as data/sft_demo),
  which needs the model to read the user's turn, not just recall.
Deterministic (a fixed seed, no dependencies): rerunning rewrites the same files, byte for byte. No val
conversation appears in train.
"""
import json
import os
import random

NAME = "Nash"
IDENTITY = [  # (phrasings of one question, its answer)
    (["What is your name?", "what's your name", "What should I call you?", "Do you have a name?"],
     f"My name is {NAME}."),
    (["Who are you?", "who are you", "What are you?", "Tell me about yourself."],
     f"I am {NAME}, a small language model trained with Nash-LLM."),
    (["Who made you?", "Who trained you?", "Who built you?", "Where do you come from?"],
     "I was trained with Nash-LLM, a small open framework for training GPT models."),
    (["Are you human?", "Are you a person?", "Are you alive?", "Are you a real person?"],
     "No, I am a language model: I predict text one token at a time."),
    (["What can you do?", "How can you help me?", "What are you good at?", "What do you know?"],
     "I can tell you about myself and reverse a list of words. Try: Reverse: red fox runs"),
    (["How big are you?", "How many parameters do you have?", "How large is your model?"],
     "I am tiny: a few million parameters, small enough to train on a laptop."),
    (["Hello!", "Hi", "hello", "Hey there", "Good morning!"],
     f"Hello! I am {NAME}. Ask me who I am, or give me words to reverse."),
    (["Thank you!", "Thanks", "thanks a lot", "Great, thanks!"],
     "You are welcome!"),
    (["Goodbye", "Bye!", "See you later", "bye"],
     "Goodbye! Come back any time."),
]
SYSTEMS = ["You are Nash, a helpful assistant.", "You are a friendly assistant. Keep answers short."]
WORDS = """red blue green black white cat dog fox bird fish cow horse sun moon star tree rock sea sky rain snow wind
fire king queen man woman boy girl house door book car ship road hill lake river apple bread milk salt gold iron
stone runs jumps sings eats sleeps walks flies reads writes big small old new hot cold fast slow happy sad""".split()
NUM_TRAIN, NUM_VAL, SEED = 3000, 150, 1234


def turn(rng):
    if rng.random() < 0.5:
        questions, answer = rng.choice(IDENTITY)
        return rng.choice(questions), answer
    words = rng.sample(WORDS, rng.randint(3, 5))  # no word twice, so the answer is unambiguous
    return "Reverse: " + " ".join(words), " ".join(reversed(words))


def conversation(rng):
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    for _ in range(rng.choice([1, 1, 2, 3])):
        question, answer = turn(rng)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def main():
    rng = random.Random(SEED)
    seen, rows = set(), []
    while len(rows) < NUM_TRAIN + NUM_VAL:
        line = json.dumps(conversation(rng), ensure_ascii=False)
        if line not in seen:  # distinct conversations, so val never repeats train
            seen.add(line)
            rows.append(line)
    folder = os.path.dirname(os.path.abspath(__file__))
    for split, lines in (("train", rows[:NUM_TRAIN]), ("val", rows[NUM_TRAIN:])):
        with open(os.path.join(folder, f"{split}.jsonl"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} conversations to {os.path.join(folder, split + '.jsonl')}")


if __name__ == "__main__":
    main()
