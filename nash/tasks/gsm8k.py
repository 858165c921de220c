"""
GSM8K (Cobbe et al. 2021): grade-school maths word problems, answered by generating. openai/gsm8k, "main", test
(1,319 items); shots from train. As lm-evaluation-harness's gsm8k task: the prompt "Question: ...\nAnswer:", each
shot followed by its full worked answer; greedy decoding until "Question:" (or max_gen_tokens); exact match as its
flexible-extract filter: the completion's last number-like match, and the reference after "#### ", compared as
text with commas, "$" and a trailing "." removed.

Chat models (objective=chat) are asked through their chat format, as nanochat asks its chat models: each shot is a user
turn (its question) and an assistant turn (its worked answer, "#### N" included), the item is the last user turn,
and the reply ends at <|assistant_end|>; the same check scores it.
"""
import re

from nash.tasks.base import Task, plain_prompt

NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # lm-eval's flexible-extract pattern


def normalize(text):
    return re.sub(r"\.$", "", text.replace(",", "").replace("$", "")).strip().lower()


def doc(row):
    return {"text": f"Question: {row['question']}\nAnswer:", "target": row["answer"], "question": row["question"],
            "answer": normalize(row["answer"].split("#### ")[-1])}


def last_number(text):
    matches = NUMBER.findall(text)
    return normalize(next(g for g in matches[-1] if g)) if matches else None


def check(doc, completion):
    predicted = last_number(completion)
    return {"exact_match": float(predicted == doc["answer"]), "predicted": predicted}


ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]*)>>")  # GSM8K's calculator annotations: <<48/2=24>>


def tool_parts(answer):
    """A worked answer as the parts of a reply that calls the calculator (tokenizer.check_parts): each
    <<48/2=24>> annotation becomes a call (48/2) and its output (24), as nanochat converts GSM8K; the text around
    it stays text, so "48/2 = <<48/2=24>>24 clips" is text "48/2 = ", call, output, text "24 clips". The output is
    the annotation's own result (what the text after it uses); malformed brackets stay text."""
    parts, at = [], 0
    for m in ANNOTATION.finditer(answer):
        if m.start() > at:
            parts.append({"type": "text", "text": answer[at:m.start()]})
        parts += [{"type": "python", "text": m[1]}, {"type": "python_output", "text": m[2]}]
        at = m.end()
    if at < len(answer):
        parts.append({"type": "text", "text": answer[at:]})
    return parts


def tool_conversation(row):
    """A GSM8K row ({"question", "answer"}) as a conversation whose reply calls the calculator."""
    return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": tool_parts(row["answer"])}]


def prompt(doc, shots):
    """The hook for other formats: everything GSM8K-specific about the prompt is here."""
    return plain_prompt(doc, shots)


def chat_prompt(doc, shots):
    """The conversation that asks a chat model the question, after the shots as earlier turns."""
    turns = [[{"role": "user", "content": s["question"]}, {"role": "assistant", "content": s["target"]}] for s in shots]
    return [m for turn in turns for m in turn] + [{"role": "user", "content": doc["question"]}]


TASK = Task("gsm8k", "generate", ("openai/gsm8k", "main"), "test", doc, prompt=prompt, check=check,
            chat_prompt=chat_prompt, stop=("Question:", "</s>", "<|im_end|>"), metrics=("exact_match",))
