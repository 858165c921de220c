"""
What every benchmark shares: a Task (where its rows come from and how a row becomes a prompt), loading rows from
the hub or from local JSONL, few-shot prompts, and the three ways of scoring a model:

- choice: multiple choice by the log-likelihood of each continuation, as lm-evaluation-harness does it. The context
  is description + shots + the item's text, a continuation is " " + a choice. The pair is encoded whole and cut at
  the context's length (trailing spaces of the context move to the continuation first), the last max_seq_len + 1
  tokens are kept, and the continuation's tokens' log-probabilities are summed. acc: the highest log-likelihood is
  the gold choice; acc_norm: the same after dividing each by the choice's length in characters. Ties go to the
  first choice (np.argmax). All continuations of all items go through the model in padded batches, longest
  first, one forward per batch; rows with the same input (one-token choices like MMLU's A/B/C/D) share one.
- generate: greedy decoding until a stop string, end-of-text or max_gen_tokens, then the task's check. Every prompt
  goes through the batched engine (nash/engine.py sample_batch), as chat.py's and RL's do; optionally also N
  sampled replies per item (evaluate.py --num_samples, tasks/sampling.py). A model
  fine-tuned for chat (objective=chat) is asked through its chat format where the task has one (chat_prompt): the shots
  become earlier user/assistant turns, the item the last user turn, and the reply ends at <|assistant_end|>.
- code: the same, then the program runs in a separate, limited process (tasks/execution.py).

Standard errors are lm-eval's: the sample standard deviation of the per-item scores over sqrt(n).
"""
import json
import math
import os
import random
import socket
import sys
from dataclasses import dataclass, field, replace
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import torch
from tqdm import tqdm

from nash.engine import Sampling, sample_batch, tools_available
from nash.tokenizer import SPECIAL_TOKENS, render_conversation, special_ids
from nash.common import fail

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed: with it, K-shot prompts are the ones lm-eval builds


@dataclass
class Task:
    name: str
    kind: str  # choice | generate | code
    hub: tuple  # (dataset path, config name or None) for datasets.load_dataset
    split: str  # the split that is evaluated
    doc: Callable  # a row -> {"text", "choices", "gold"} (choice) or {"text", "target", ...} (generate, code);
    # optionally "description" (text before the shots) and "group" (the first sampler takes shots from it)
    fewshot_split: str = "train"  # where K-shot examples come from
    fewshot_sampler: str = "random"  # random: lm-eval's default sampler | first: the first K of the same group (MMLU)
    # lm-eval draws K + 1 shots and keeps the first K where its task config names neither a few-shot nor a test
    # split (hellaswag, sst2): drawing the same way gives the same shots
    fewshot_extra_draw: bool = False
    prompt: Callable = None  # generate/code: (doc, shot docs) -> prompt; swap it for a chat format (see gsm8k.py)
    check: Callable = None  # generate/code: (doc, completion) -> correct?
    chat_prompt: Callable = None  # generate: (doc, shot docs) -> messages, the conversation that asks a chat model
    stop: tuple = ()  # generate/code: the completion ends before the first of these
    read_rows: Callable = None  # split -> rows, from somewhere other than the hub (HumanEval's packaged problems)
    metrics: tuple = ("acc", "acc_norm")
    hub_url: str = field(init=False, default="")

    def __post_init__(self):
        self.hub_url = f"https://huggingface.co/datasets/{self.hub[0]}" if self.hub else ""


def target(doc):
    return doc["target"] if "target" in doc else doc["choices"][doc["gold"]]


def plain_prompt(doc, shots):
    """lm-eval's layout: description, then each shot as text + " " + its answer + a blank line, then the item."""
    return doc.get("description", "") + "".join(f"{s['text']} {target(s)}\n\n" for s in shots) + doc["text"]


# -----------------------------------------------------------------------------
# data: the hub through `datasets`, or <task_data>/<task>.jsonl in the hub dataset's own row schema

def read_jsonl(path):
    rows = []
    with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is named, not a UnicodeDecodeError traceback
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line.decode("utf-8")))
                except UnicodeDecodeError as e:
                    fail(f"{path} line {i} is not UTF-8 text ({e.reason} at byte {e.start}); save the file as UTF-8")
                except ValueError as e:
                    fail(f"{path} line {i} is not JSON ({e}); each line should be one row of the dataset")
    return rows


def local_file(task, split, task_data):
    """<task>.jsonl holds the evaluated split, <task>.<split>.jsonl any other (the few-shot pool)."""
    return os.path.join(task_data, f"{task.name}.jsonl" if split == task.split else f"{task.name}.{split}.jsonl")


def go_offline_if_unreachable(timeout=3.0):
    """Offline, datasets retries the hub for ~30 s before its error. One connection to the hub's host (a few
    seconds at most) tells at once; if it fails, datasets runs in offline mode: what it cached loads, the rest
    fails immediately. Returns why the hub cannot be reached, or "" when it can (or offline mode is already on)."""
    if any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return ""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
        return ""
    except OSError as e:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub and datasets are imported...
        for module in ("huggingface_hub.constants", "datasets.config"):  # ...and set there if they already were
            if module in sys.modules:
                sys.modules[module].HF_HUB_OFFLINE = True
        return f"{url.hostname} cannot be reached: {e.strerror or type(e).__name__}"


def load_rows(task, split, task_data="", limit=0):
    if task.read_rows is not None:
        rows = task.read_rows(split)
    elif task_data:
        path = local_file(task, split, task_data)
        if not os.path.isfile(path):
            fail(f"{path} does not exist; put the {split} split of {task.hub[0]} there as JSON lines "
                 f"(the dataset's own row schema), or leave out --task_data to read it from the hub")
        rows = read_jsonl(path)
    else:
        offline = go_offline_if_unreachable()
        try:
            import datasets
            rows = datasets.load_dataset(task.hub[0], task.hub[1], split=split)
        except Exception as e:  # offline, no such dataset, hub errors: datasets raises many kinds
            reason = offline or (str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__)
            fail(f"could not load {task.hub[0]}{' (' + task.hub[1] + ')' if task.hub[1] else ''} split {split} "
                 f"for {task.name} from the Hugging Face hub ({reason}); offline, pass --task_data=DIR holding "
                 f"{os.path.basename(local_file(task, split, 'DIR'))} in that dataset's row schema")
        rows = rows.select(range(min(limit, len(rows)))) if limit else rows
        rows = list(rows)
    rows = rows[:limit] if limit else rows
    schema = task.hub[0] if task.hub else task.name
    docs = []
    for i, row in enumerate(rows, 1):
        try:
            doc = task.doc(row)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:  # e.g. a number where text goes
            fail(f"row {i} of {task.name} ({split}) does not have the schema of {schema} ({type(e).__name__}: {e})")
        if problem := doc_problem(task, doc):
            fail(f"row {i} of {task.name} ({split}) {problem}; the rows should follow the schema of {schema}")
        docs.append(doc)
    return docs


def doc_problem(task, doc):
    """What is wrong with a doc that task.doc built without an error (the scorers assume these), or None."""
    if not isinstance(doc.get("text"), str):
        return "has no prompt text"
    if task.kind == "choice":
        choices = doc.get("choices")
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            return "has no choices (a non-empty list of strings)"
        if not isinstance(doc.get("gold"), int) or not 0 <= doc["gold"] < len(choices):
            return f"names answer {doc.get('gold')!r}, not one of its {len(choices)} choices"
    elif not isinstance(doc.get("target", ""), str):
        return "has a reference answer that is not text"
    return None


def fewshot_examples(task, docs, pool, k):
    """The K shots of each doc, deterministic: lm-eval's random sampler (one Random(1234) drawn from in doc order,
    the doc itself left out when the pool is the evaluated split), or the first K of the doc's group."""
    if k == 0:
        return [[] for _ in docs]
    if task.fewshot_sampler == "first":
        by_group = {}
        for d in pool:
            by_group.setdefault(d["group"], []).append(d)
        shots = [[s for s in by_group.get(d["group"], []) if s != d][:k] for d in docs]
    else:
        rnd = random.Random(FEWSHOT_SEED)
        same = task.fewshot_split == task.split
        extra = same or task.fewshot_extra_draw
        if len(pool) < k + extra:  # lm-eval draws k (+1) shots from the pool for every item
            fail(f"{task.name}: --num_fewshot={k} needs at least {k + extra} examples in its {task.fewshot_split} "
                 f"split, which has {len(pool)}; lower --num_fewshot or give a larger {task.fewshot_split} split")
        shots = [[s for s in rnd.sample(pool, k + extra) if not same or s != d][:k] for d in docs]
    if any(len(s) < k for s in shots):
        fail(f"{task.name}: the {task.fewshot_split} split has fewer than {k} examples for some items; "
             f"lower --num_fewshot")
    return shots


# -----------------------------------------------------------------------------
# multiple choice by log-likelihood, batched

def encode_pair(enc, context, continuation):
    """lm-eval's split of a (context, continuation) request into tokens."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = enc.encode_ordinary(context + continuation)
    context_ids = enc.encode_ordinary(context)
    return context_ids, whole[len(context_ids):]


def loglikelihoods(model, enc, requests, batch_size, ctx=None, progress=True):
    """(log-likelihood, is_greedy) of each (context, continuation) text request, encoded as lm-eval encodes it."""
    pairs = [encode_pair(enc, context, continuation) for context, continuation in requests]
    return token_loglikelihoods(model, pairs, batch_size, ctx, progress)


@torch.no_grad()
def token_loglikelihoods(model, pairs, batch_size, ctx=None, progress=True):
    """(log-likelihood, is_greedy) of each (context ids, continuation ids) pair. Each input is the last max_seq_len
    tokens before the continuation's end; identical inputs are computed once; padded batches, longest first."""
    max_len = model.config.max_seq_len
    device = next(model.parameters()).device
    rows, scored = {}, []  # input ids -> row index; per request (row, continuation ids)
    for context_ids, cont in pairs:
        if not cont or len(cont) > max_len:
            fail(f"a continuation of {len(cont)} tokens cannot be scored with a context of {max_len}")
        inp = tuple((context_ids + cont)[-(max_len + 1):][:-1])
        scored.append((rows.setdefault(inp, len(rows)), cont))
    inputs = list(rows)
    order = sorted(range(len(inputs)), key=lambda i: -len(inputs[i]))
    requests_of = [[] for _ in inputs]
    for r, (row, _) in enumerate(scored):
        requests_of[row].append(r)
    results = [None] * len(scored)
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", unit="batch", disable=not progress,
                      dynamic_ncols=True):
        batch = order[start:start + batch_size]
        T = len(inputs[batch[0]])
        x = torch.zeros((len(batch), T), dtype=torch.long)  # right padding: a causal model never looks at it
        for b, i in enumerate(batch):
            x[b, :len(inputs[i])] = torch.tensor(inputs[i])
        # each request's (row, position, target) triples: only those positions reach the vocabulary projection
        # (for GPT-2 on HellaSwag about a tenth of them), and requests sharing a row share its forward
        where, targets, spans = [], [], []
        for b, i in enumerate(batch):
            n = len(inputs[i])
            for r in requests_of[i]:
                cont = scored[r][1]
                spans.append((r, len(targets), len(cont)))
                where += [(b, p) for p in range(n - len(cont), n)]
                targets += cont
        with ctx or torch.autocast("cpu", enabled=False):
            loss, hit = model.score_tokens(x.to(device), torch.tensor(targets, device=device),
                                           torch.tensor(where, device=device))
        for r, start, n in spans:
            results[r] = (-loss[start:start + n].sum().item(), bool(hit[start:start + n].all()))
    model.train(was_training)
    return results


def score_choice(task, model, enc, docs, shots, batch_size, ctx, progress, chat=False):
    """chat: ask through the chat format (task.chat_prompt: the question and its lettered choices in a user turn)
    and read the answer letter from the reply's first token, restricted to the choices' letters, as nanochat's
    chat_eval does: the letter with the highest log-probability after <|assistant_start|> is the answer."""
    pairs, spans = [], []
    for doc, doc_shots in zip(docs, shots):
        n = len(doc["choices"])
        spans.append((len(pairs), n))
        if chat:
            context = render_conversation(enc, task.chat_prompt(doc, doc_shots), for_reply=True)[0]
            pairs += [(context, enc.encode_ordinary(letter)) for letter in LETTERS[:n]]
        else:
            context = plain_prompt(doc, doc_shots)
            pairs += [encode_pair(enc, context, " " + choice) for choice in doc["choices"]]
    lls = token_loglikelihoods(model, pairs, batch_size, ctx, progress)
    items = []
    for doc, (start, n) in zip(docs, spans):
        ll = np.array([lls[start + j][0] for j in range(n)])
        lengths = np.array([float(len(c)) for c in doc["choices"]])
        items.append({"loglikelihoods": ll.tolist(), "gold": doc["gold"], "acc": float(np.argmax(ll) == doc["gold"]),
                      "acc_norm": float(np.argmax(ll / lengths) == doc["gold"]), "chance": 1 / n})
    return items


LETTERS = "ABCDEFGHIJ"


def lettered_chat_prompt(doc, shots):
    """Multiple choice as a chat: each shot a user turn (question, lettered choices) answered by its letter, the
    item the last user turn. doc["question"] is the bare question, doc["options"] the choices' texts."""
    def ask(d):
        options = "".join(f"\n{letter}. {option}" for letter, option in zip(LETTERS, d["options"]))
        return {"role": "user", "content": f"{d['question']}{options}\nAnswer with the letter of the correct choice."}
    turns = [[ask(s), {"role": "assistant", "content": LETTERS[s["gold"]]}] for s in shots]
    return [m for turn in turns for m in turn] + [ask(doc)]


# -----------------------------------------------------------------------------
# generation: every prompt through the batched engine (nash/engine.py sample_batch), the path chat.py, the server
# and RL rollouts share

def fit_prompt(prompt, max_seq_len, max_tokens):
    """The prompt's last tokens that leave room for the reply: the shots at the start go first, the question stays.
    The engine does not slide past the context, so a prompt that filled it would leave no room to answer. As
    lm-eval, the last max_seq_len - max_tokens tokens stay (its max_length - max_gen_toks), for any budget up to a
    quarter of the context (GPT-2: 256 of 1,024). A larger budget (the default 256 on a demo model's context of 64)
    would leave little or nothing of the prompt, so the room kept is capped at a quarter: the prompt keeps up to
    three quarters, and the reply stops at the context's end."""
    return prompt[-(max_seq_len - min(max_tokens, max_seq_len // 4)):]


def generate(model, enc, prompts, stop, max_tokens, ctx=None, stop_ids=None, num_samples=1, sampling=None,
             rows=64, progress=False, desc="generate", tools=False):
    """num_samples completions of each prompt (token ids): texts[i][j], each cut before the first stop string or
    ended by one of stop_ids (default: end-of-text) or after max_tokens. sampling: an engine Sampling (temperature,
    top_k, seed); None = greedy, which gives exactly model.generate's tokens at temperature 0. The prompts go to
    sample_batch `rows` rows at a time (rows // num_samples prompts; a progress bar counts them). tools: replies may
    call the calculator, its outputs forced in by the engine (as chat.py's)."""
    stop_ids = stop_ids or {enc.eot_token}
    S = model.config.max_seq_len
    sampling = sampling or Sampling(temperature=0.0, top_k=None)
    per_call = max(1, rows // num_samples)
    texts = []
    with tqdm(total=len(prompts), desc=desc, unit="example", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(prompts), per_call):
            chunk = [fit_prompt(p, S, max_tokens) for p in prompts[start:start + per_call]]
            # a seeded run seeds each chunk from (seed, its first prompt's index): reproducible for the same seed,
            # num_samples and rows, and no chunk repeats another's draws
            seed = sampling.seed if sampling.seed is None else int(
                np.random.SeedSequence([sampling.seed, start]).generate_state(1)[0])
            done = sample_batch(model, chunk, num_samples, replace(sampling, max_new_tokens=max_tokens, seed=seed),
                                stop_ids, ctx, stop, enc, batch_size=rows, tools=tools)
            texts += [[c.text for c in row] for row in done]
            bar.update(len(chunk))
    return texts


def score_generate(task, model, enc, docs, shots, max_tokens, ctx, progress, chat=False, num_samples=0,
                   sampling=None, rows=64, tools=True):
    """Each doc's greedy reply checked: items [{"completion", **check}]; with num_samples, also that many sampled
    replies per doc (sampling: the engine's Sampling), each checked, in item["samples"].
    chat: ask through the chat format (task.chat_prompt; the caller checks the task has one); any special token
    ends the reply, as in chat.py, but a calculator call (tools, where the model has the tool tokens' rows)."""
    stop_ids = set(special_ids(enc)[name] for name in SPECIAL_TOKENS) if chat else None
    tools = chat and tools and tools_available(model, enc)
    if chat:
        prompts = [render_conversation(enc, task.chat_prompt(d, s), for_reply=True)[0] for d, s in zip(docs, shots)]
    else:
        prompts = [enc.encode_ordinary(task.prompt(d, s)) for d, s in zip(docs, shots)]
    greedy = generate(model, enc, prompts, task.stop, max_tokens, ctx, stop_ids, rows=rows, progress=progress,
                      desc=task.name, tools=tools)
    items = [{"completion": c, **task.check(doc, c)} for doc, [c] in zip(docs, greedy)]
    if num_samples:
        sampled = generate(model, enc, prompts, task.stop, max_tokens, ctx, stop_ids, num_samples, sampling, rows,
                           progress, f"{task.name} x{num_samples}", tools)
        for item, doc, replies in zip(items, docs, sampled):
            item["samples"] = [{"completion": c, **task.check(doc, c)} for c in replies]
    return items


# -----------------------------------------------------------------------------
# aggregate

def stderr(values):
    """lm-eval's: sample standard deviation / sqrt(n); None for fewer than two items."""
    n = len(values)
    if n < 2:
        return None
    mu = sum(values) / n
    return math.sqrt(sum((v - mu) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def summarize(task, items, num_fewshot):
    out = {"n": len(items), "num_fewshot": num_fewshot}
    for m in task.metrics:
        values = [it[m] for it in items]
        out[m] = sum(values) / len(values) if values else None
        out[m + "_stderr"] = stderr(values)
    if task.kind == "choice":
        out["chance"] = sum(it["chance"] for it in items) / len(items) if items else None
    return out
