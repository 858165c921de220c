"""
AI2 Reasoning Challenge (Clark et al. 2018): grade-school science questions, 3-5 choices (mostly 4).
allenai/ai2_arc, ARC-Easy (2,376 test items) and ARC-Challenge (1,172), test split; shots from train.
Prompt as lm-evaluation-harness's arc_easy / arc_challenge: "Question: ...\\nAnswer:", " <choice text>" scored.
"""
from nash.tasks.base import Task


def doc(row):
    return {"text": f"Question: {row['question']}\nAnswer:", "choices": list(row["choices"]["text"]),
            "gold": row["choices"]["label"].index(row["answerKey"])}


EASY = Task("arc_easy", "choice", ("allenai/ai2_arc", "ARC-Easy"), "test", doc)
CHALLENGE = Task("arc_challenge", "choice", ("allenai/ai2_arc", "ARC-Challenge"), "test", doc)
