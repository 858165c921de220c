"""
MMLU (Hendrycks et al. 2021): 57 subjects of multiple-choice exam questions, 4 choices. cais/mmlu, "all", test
(14,042 items). As lm-evaluation-harness's mmlu (default): the subject's description line, the question and its
lettered choices, then " A" / " B" / " C" / " D" scored; shots are the first K of the subject's dev split, in order.
A chat model is asked the question with lettered choices in a user turn (base.lettered_chat_prompt).
Reported over all items (lm-eval's group figure weights subjects by size, which is the same mean). acc only.
"""
from nash.tasks.base import Task, lettered_chat_prompt


def doc(row):
    subject = row["subject"]
    question = row["question"].strip() + "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", row["choices"]))
    return {"text": question + "\nAnswer:", "choices": ["A", "B", "C", "D"], "gold": int(row["answer"]),
            "question": row["question"].strip(), "options": list(row["choices"]),
            "group": subject, "description": "The following are multiple choice questions (with answers) about "
                                             f"{subject.replace('_', ' ')}.\n\n"}


TASK = Task("mmlu", "choice", ("cais/mmlu", "all"), "test", doc, fewshot_split="dev", fewshot_sampler="first",
            chat_prompt=lettered_chat_prompt, metrics=("acc",))
