"""
HellaSwag (Zellers et al. 2019): pick the ending of a short scene, 4 choices. Rowan/hellaswag, validation
(10,042 items); shots from train. Preprocessing and prompt exactly as lm-evaluation-harness's hellaswag task:
"<activity label>: <ctx_a> <Ctx_b>", WikiHow's bracketed artefacts removed, " <ending>" scored. acc and acc_norm.
"""
import re

from nash.tasks.base import Task


def preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")  # [title], [header], [step]...: markup left over from WikiHow
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def doc(row):
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"text": preprocess(row["activity_label"] + ": " + context),
            "choices": [preprocess(ending) for ending in row["endings"]], "gold": int(row["label"])}


TASK = Task("hellaswag", "choice", ("Rowan/hellaswag", None), "validation", doc, fewshot_extra_draw=True)
