"""
Downstream benchmarks, one short file each, on one interface (tasks/base.py), used by evaluate.py (--tasks=...),
train.py (eval_tasks=...) and bench.py (--what=tasks):

    prepared = tasks.prepare(["hellaswag", "gsm8k"], task_data="", max_examples=500, num_fewshot=0)
    results = tasks.run(prepared, model, enc)  # {"hellaswag": {"acc": ..., "acc_norm": ..., "n": ...}, "core": ...}

Generative tasks (GSM8K, HumanEval, arith) decode through the batched engine (nash/engine.py sample_batch), greedily;
with num_samples they also sample that many replies per item, summarized as pass@k, maj@N and best-of-N
(tasks/sampling.py) under the task's "sampled" key, and sampled_table() shows them side by side.

chat=True (a model fine-tuned with objective=chat): the tasks that have a chat format ask through it (GSM8K generates a
reply; ARC and MMLU put the question and lettered choices in a user turn and read the answer letter), the others as
for any model; each summary says which ("format": "chat" or "plain").

core: the mean over the multiple-choice tasks run of centered accuracy, (acc - chance) / (1 - chance), chance being
the mean of 1 / (number of choices) over the items, as nanochat's CORE centers its tasks: 0 is guessing, 1 perfect.
chatcore: the same mean over the tasks asked in chat format, as nanochat's ChatCORE: multiple choice centered as in
core, a generative task's first metric (exact match, pass@1) centered at chance 0, i.e. as it is.
"""
import time

from nash.tasks import arc, arith, countdown, gsm8k, hellaswag, humaneval, mmlu, shakespeare, sst2
from nash.tasks.base import fail, fewshot_examples, load_rows, score_choice, score_generate, summarize
from nash.tasks.sampling import ks, summarize_samples
from nash.verifier import reply_logprobs

TASKS = {t.name: t for t in (hellaswag.TASK, arc.EASY, arc.CHALLENGE, mmlu.TASK, gsm8k.TASK, humaneval.TASK,
                             sst2.TASK, arith.TASK, arith.HELDOUT, countdown.TASK, countdown.HELDOUT, shakespeare.TASK)}


def parse(names):
    """A comma-separated list of task names -> the list, or one clear error."""
    names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        fail(f"unknown task(s) {', '.join(unknown)}; the tasks are {', '.join(TASKS)}")
    return list(dict.fromkeys(names))


def prepare(names, task_data="", max_examples=0, num_fewshot=0):
    """Load each task's items (and their shots) once, up front: [(task, docs, shots)]."""
    prepared = []
    for name in names:
        task = TASKS[name]
        docs = load_rows(task, task.split, task_data, max_examples)
        if not docs:
            fail(f"{name} has no items to evaluate")
        k = num_fewshot if task.fewshot_split else 0  # HumanEval is zero-shot
        pool = load_rows(task, task.fewshot_split, task_data) if k else []
        prepared.append((task, docs, fewshot_examples(task, docs, pool, k)))
    return prepared


def run(prepared, model, enc, batch_size=8, ctx=None, max_gen_tokens=256, progress=True, keep_items=False,
        chat=False, num_samples=0, sampling=None, verifier=None, tools=True):
    """Score the model on prepared tasks: {task: summary (+ "items" with keep_items), ..., "core": ...}.
    num_samples: the generative tasks also sample that many replies per item (sampling: the engine's Sampling)
    and their summary gets "sampled": pass@k, maj@N and, with verifier, best-of-N (tasks/sampling.py).
    verifier(task, docs, shots, replies) -> scores[i][j] of item i's reply j. tools: a chat model's replies may call
    the calculator (where it has the tool tokens), as in chat.py; False asks the same model without it."""
    results = {}
    for task, docs, shots in prepared:
        t0 = time.time()
        as_chat = chat and task.chat_prompt is not None
        if task.kind == "choice":
            items = score_choice(task, model, enc, docs, shots, batch_size, ctx, progress, chat=as_chat)
        else:
            items = score_generate(task, model, enc, docs, shots, max_gen_tokens, ctx, progress, chat=as_chat,
                                   num_samples=num_samples, sampling=sampling, tools=tools)
        results[task.name] = summarize(task, items, len(shots[0]))
        if task.kind != "choice" and num_samples:
            samples = [it["samples"] for it in items]
            texts = [[s["completion"] for s in r] for r in samples]
            scores = verifier(task, docs, shots, texts) if verifier else None
            logprobs = None
            if as_chat:  # the generator's own ranking, the free baseline of best-of-N
                logprobs = reply_logprobs(model, enc, [task.chat_prompt(d, s) for d, s in zip(docs, shots)], texts, ctx)
            results[task.name]["sampled"] = dict(summarize_samples(samples, task.metrics[0], scores, logprobs),
                                                 temperature=sampling.temperature, top_k=sampling.top_k,
                                                 seed=sampling.seed)
        results[task.name]["format"] = "chat" if as_chat else "plain"
        results[task.name]["seconds"] = time.time() - t0
        if keep_items:
            results[task.name]["items"] = items
    summaries = dict(results)
    results["core"] = mean_centered({t: r for t, r in summaries.items() if r.get("chance")})
    results["chatcore"] = mean_centered({t: r for t, r in summaries.items() if r["format"] == "chat"}) if chat else None
    return results


def centered(name, summary):
    """Accuracy above chance as a share of the room above it: multiple choice (acc - chance) / (1 - chance);
    a generative task has chance 0, so its first metric as it is."""
    if summary.get("chance"):
        return (summary["acc"] - summary["chance"]) / (1 - summary["chance"])
    return summary[TASKS[name].metrics[0]]


def mean_centered(summaries):
    """The mean of centered() over {task: summary}; None for none."""
    return sum(centered(t, r) for t, r in summaries.items()) / len(summaries) if summaries else None


AGGREGATES = {"core": "chance", "chatcore": "format"}  # the summary key that puts a task into each mean


def rows(results):
    """(task, metric, value, stderr, n) for a table."""
    out = []
    for name, r in results.items():
        if name not in AGGREGATES:
            out += [(name, m, r[m], r[m + "_stderr"], r["n"]) for m in TASKS[name].metrics]
    for name, key in AGGREGATES.items():
        if results.get(name) is not None:
            n = sum(r["n"] for t, r in results.items() if t not in AGGREGATES and r.get(key))
            out.append((name, "centered acc", results[name], None, n))
    return out


def table(results):
    """The results as aligned text lines: task, metric, value, stderr, n."""
    lines = [("task", "metric", "value", "stderr", "n")]
    chat = {t for t, r in results.items() if t not in AGGREGATES and r.get("format") == "chat"}
    lines += [(t + " (chat)" * (t in chat), m, f"{v:.4f}", "-" if s is None else f"{s:.4f}", str(n))
              for t, m, v, s, n in rows(results)]
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]


def sampled_table(results):
    """The generative tasks sampled N times, one row each, side by side: greedy (the task's own metric), pass@k,
    maj@N and best-of-N, each "value ± stderr"; [] when nothing was sampled."""
    sampled = {t: r for t, r in results.items() if t not in AGGREGATES and r.get("sampled")}
    if not sampled:
        return []
    n = next(iter(sampled.values()))["sampled"]["num_samples"]
    names = [f"pass@{k}" for k in ks(n)] + [f"maj@{n}", f"best_of_{n}", f"logprob_of_{n}", f"combined_of_{n}"]
    names = [m for m in names if any(m in r["sampled"] for r in sampled.values())]

    def cell(r, m):
        return "-" if r.get(m) is None else f"{r[m]:.4f}" + ("" if r.get(m + "_stderr") is None else
                                                              f" ± {r[m + '_stderr']:.4f}")
    lines = [("task", "n", "greedy", *names)]
    lines += [(t, str(r["n"]), cell(r, TASKS[t].metrics[0]), *(cell(r["sampled"], m) for m in names))
              for t, r in sampled.items()]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]


def flat(results):
    """{"hellaswag_acc": ..., "core": ...}: task metrics as train.py logs them (metrics.jsonl, wandb)."""
    out = {f"{t}_{m}": v for t, m, v, _, _ in rows(results) if t not in AGGREGATES}
    out.update({name: results[name] for name in AGGREGATES if results.get(name) is not None})
    return out
