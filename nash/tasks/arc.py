"""
AI2 Reasoning Challenge (Clark et al. 2018): grade-school science questions, 3-5 choices (mostly 4).
allenai/ai2_arc, ARC-Easy (2,376 test items) and ARC-Challenge (1,172), test split; shots from train.
Prompt as lm-evaluation-harness's arc_easy / arc_challenge: "Question: ...\\nAnswer:", " <choice text>" scored.
A chat model is asked the question with lettered choices in a user turn (base.lettered_chat_prompt).
"""
from nash.tasks.base import Task, lettered_chat_prompt


def doc(row):
    choices = list(row["choices"]["text"])
    return {"text": f"Question: {row['question']}\nAnswer:", "choices": choices, "question": row["question"],
            "options": choices, "gold": row["choices"]["label"].index(row["answerKey"])}


EASY = Task("arc_easy", "choice", ("allenai/ai2_arc", "ARC-Easy"), "test", doc,
            chat_prompt=lettered_chat_prompt)
CHALLENGE = Task("arc_challenge", "choice", ("allenai/ai2_arc", "ARC-Challenge"), "test", doc,
                 chat_prompt=lettered_chat_prompt)
