"""
GSM8K (Cobbe et al. 2021): grade-school maths word problems, answered by generating. openai/gsm8k, "main", test
(1,319 items); shots from train (lm-eval's 5-shot uses the same layout). The prompt is lm-evaluation-harness's:
"Question: ...\\nAnswer:", each shot followed by its full worked answer; greedy decoding stops at the next
"Question:" or a blank line. Exact match: the model's last number equals the number after "####" in the reference
(commas, "$" and a trailing "." ignored), as lm-eval's flexible-extract filter reads it.

Chat models (a later issue) only need another prompt function: build the conversation from doc["question"] and
the shots and pass it as Task(prompt=...), e.g. `TASK_CHAT = dataclasses.replace(TASK, name="gsm8k_chat",
prompt=chat_prompt)`; loading, decoding and scoring stay as they are.
"""
import re

from tasks.base import Task, plain_prompt

NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def normalize(number):
    return number.replace(",", "").replace("$", "").rstrip(".")


def doc(row):
    return {"text": f"Question: {row['question']}\nAnswer:", "target": row["answer"], "question": row["question"],
            "answer": normalize(row["answer"].split("####")[-1].strip())}


def last_number(text):
    numbers = NUMBER.findall(text)
    return normalize(numbers[-1]) if numbers else None


def check(doc, completion):
    predicted = last_number(completion)
    try:
        same = predicted is not None and float(predicted) == float(doc["answer"])
    except ValueError:  # "1.2.3": not a number
        same = False
    return {"exact_match": float(same), "predicted": predicted}


def prompt(doc, shots):
    """The hook for other formats: everything GSM8K-specific about the prompt is here."""
    return plain_prompt(doc, shots)


TASK = Task("gsm8k", "generate", ("openai/gsm8k", "main"), "test", doc, prompt=prompt, check=check,
            stop=("Question:", "\n\n"), metrics=("exact_match",))
