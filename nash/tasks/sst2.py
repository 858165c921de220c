"""
SST-2 (Socher et al. 2013): is a movie-review sentence positive or negative? stanfordnlp/sst2, validation (872
items); shots from train. Classification by the likelihood of the label words, with lm-evaluation-harness's sst2
prompt: "<sentence>\\nQuestion: Is this sentence positive or negative?\\nAnswer:", " negative" / " positive".
acc (chance 0.5).
"""
from nash.tasks.base import Task


def doc(row):
    return {"text": f"{row['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:",
            "choices": ["negative", "positive"], "gold": int(row["label"])}


TASK = Task("sst2", "choice", ("stanfordnlp/sst2", None), "validation", doc, fewshot_extra_draw=True, metrics=("acc",))
