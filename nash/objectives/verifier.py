"""
A verifier, or outcome reward model (Cobbe et al. 2021, "Training Verifiers to Solve Math Word Problems"): objective=verifier.

Starting from a chat run (init_from: the generator), the run first samples verifier_samples answers to each of the
first verifier_questions train questions of reward_task (the batched engine, nash/engine.py) and labels each with the
task's own answer check (1 right, 0 wrong); likewise for the first eval_iters * batch_size questions of the task's
test split, the held-out set. That happens ONCE, before step 0, seeded from `seed`: the labelled set is written to
out_dir/verifier_examples.jsonl (a first line saying how it was sampled, then one line per answer: the question's
messages, the reply, its label), which a resumed run reads back instead of sampling again (its model is the verifier
by then, not the generator) and a user can read. A new run in that out_dir (--overwrite) reuses the set when the
first line matches its own (the same generator weights and sampling settings): trying other training settings
costs no sampling.

The model gets a scalar score head (model.py: score_head; it starts at zero, every answer at probability 1/2), read at
the reply's <|assistant_end|>, and the head and the whole body train with binary cross-entropy on (question, answer,
right?) examples, rendered exactly as nash/verifier.py's score_replies renders them at use. The batches are examples
drawn in epochs as every objective's (a pure function of seed, step, index). Each eval scores every held-out answer:
val_loss is their mean BCE; beside it accuracy (at probability 1/2), AUC (does a right answer outscore a wrong one?)
and best_of_n, the fraction of held-out questions whose top-scored answer is right, against pass@1_sampled (a random
pick: the fraction of answers that are right) and pass@n (some answer is right: what a perfect verifier would get).
The lm_head takes no part in the loss: with tie_weights=False, DDP would find it unused (untested on several GPUs).
"""
import json
import os
import tempfile

import torch
import torch.nn.functional as F

from nash import lora
from nash import tasks as downstream
from nash.common import fail
from nash.data import EpochSampler, mix
import nash.objectives.rl as rl  # (the module, not the package: the package imports this file)
from nash.objectives.rl import AsksRewardTask, reward_metric_problem, reward_of, reward_task_problem, task_questions
from nash.tokenizer import special_ids
from nash.tasks.sampling import best_of_n
from nash.verifier import auc, pad_right, render_reply

# settings of objective=verifier (train.py merges them into its own): answers to reward_task's questions, sampled once
reward_task = rl.reward_task  # the generated-answer task whose questions are answered and whose check labels the answers
reward_metric = rl.reward_metric  # which of the check's metrics labels an answer right; "" = the task's first
verifier_samples = 8  # answers sampled per question from init_from (the generator), for training and for val
verifier_questions = 0  # train questions to sample answers to, the first ones; 0 = all (val: eval_iters * batch_size test questions)
verifier_temperature = 1.0  # sampling temperature of those answers (a mix of right and wrong is what it learns from)
verifier_max_new_tokens = 64  # the longest answer sampled

EXAMPLES = "verifier_examples.jsonl"  # the labelled set, in out_dir
SPLITS = ("train", "val")
CHUNK = 32  # questions sampled together: a step of the progress bar


class Examples:
    """One split of the labelled set as train.py's batches: x (B, T) the rendered examples, right-padded; y (B, 3):
    the last real position (where the score is read), the label, and the example's index in the val split (-1 for
    train batches: eval_sums files each val score under it). Filled by Verifier.to() once the answers are sampled."""

    def __init__(self, val):
        self.val, self.rows, self.labels = val, [], torch.zeros(0)
        self.sampler = EpochSampler()

    def batch(self, items):
        x, last = pad_right([self.rows[i] for i in items])
        index = torch.tensor(items) if self.val else torch.full((len(items),), -1)
        return x, torch.stack([last, self.labels[items].long(), index], dim=1)

    def get_batch(self, batch_size, seq_len, seed, step, index=0, micro_batches=1):
        items, _ = self.sampler.items(len(self.rows), batch_size, seed, step, index, micro_batches)
        return self.batch(items.tolist())

    def eval_batches(self, batch_size, seq_len, max_batches=None):
        """Every example, whatever max_batches: the ranking metrics need all the answers to each question."""
        for start in range(0, len(self.rows), batch_size):
            yield self.batch(list(range(start, min(len(self.rows), start + batch_size))))


class Verifier(AsksRewardTask):  # (a trained chat model, the generator: its answers are what it learns to judge)
    stats = ("accuracy",)  # of the step's examples, at probability 1/2
    next_step = ("pick the best of N answers with it: `python evaluate.py --init_from={init_from} --tasks={reward_task} "
                 "--num_samples={verifier_samples} --verifier={out_dir}`")

    def check_settings(self):
        s = self.settings
        if s["verifier_samples"] < 1:
            return f"verifier_samples={s['verifier_samples']} should be at least 1 (answers sampled per question)"
        if s["verifier_questions"] < 0:
            return f"verifier_questions={s['verifier_questions']} should be 0 (every train question) or more"
        if s["verifier_temperature"] <= 0:
            return (f"verifier_temperature={s['verifier_temperature']} should be positive: the answers to a question "
                    f"must differ, some right and some wrong")
        if s["verifier_max_new_tokens"] < 1:
            return f"verifier_max_new_tokens={s['verifier_max_new_tokens']} should be at least 1"
        return (reward_task_problem(s["reward_task"], "a verifier learns from its labels")
                or reward_metric_problem(s))

    def setup(self, model, init_from, resume, lora_info):
        self.model, self.resuming = model, resume is not None
        self.generator = None if resume else lora.fingerprint(model.state_dict())  # which model answers
        model.add_score_head()  # (a resumed run's model has it already)
        self.settings["score_head"] = True  # config.json says what the checkpoint holds

    def load_data(self, folder, enc, vocab_size):
        """(train, val): empty until to() samples and labels the answers, on the model's device."""
        s, task = self.settings, downstream.TASKS[self.settings["reward_task"]]
        self.enc, self.task = enc, task
        train_docs, train_prompts = task_questions(s, enc, task, "train")
        val_docs, val_prompts = task_questions(s, enc, task, task.split)
        n_train, n_val = s["verifier_questions"] or len(train_docs), s["eval_iters"] * s["batch_size"]
        self.questions = {"train": (train_docs[:n_train], train_prompts[:n_train]),
                          "val": (val_docs[:n_val], val_prompts[:n_val])}
        self.splits = {"train": Examples(val=False), "val": Examples(val=True)}
        return self.splits["train"], self.splits["val"]

    def to(self, device):
        """The labelled set: read back on resume, else sampled now (the model is on its device) and written."""
        s = self.settings
        path = os.path.join(s["out_dir"], EXAMPLES)
        header, records = read_examples(path)
        wanted = None if self.resuming else {
            "generator": self.generator, "reward_task": s["reward_task"], "seed": s["seed"],
            "questions": {split: len(self.questions[split][0]) for split in SPLITS},
            **{k: s[k] for k in ("verifier_samples", "verifier_temperature", "verifier_max_new_tokens", "task_data")}}
        if self.resuming and header is None:
            fail(f"{path} is missing: a verifier run resumes on the answers it sampled when it started; put the "
                 f"file back, or start a new run")
        if not self.resuming and header != wanted:  # a new run samples, unless the set there is exactly its own
            records = self.sample_and_label()
            write_jsonl(path, [{"sampled_with": wanted}] + records)
        elif not self.resuming:
            self.log(f"reusing the answers in {path}: the same generator and sampling settings")
        for split in SPLITS:
            mine = [r for r in records if r["split"] == split]
            examples = self.splits[split]
            examples.rows = [render_reply(self.enc, r["messages"], r["reply"], self.settings["max_seq_len"]) for r in mine]
            examples.labels = torch.tensor([float(r["correct"]) for r in mine])
            if not mine:
                fail(f"no {split} examples in {path}")
        val = self.splits["val"].labels
        self.log(f"verifier examples: {len(self.splits['train'].rows)} train answers, "
                 f"{100 * self.splits['train'].labels.mean():.1f}% right; {len(val)} val answers "
                 f"({len(val) // self.settings['verifier_samples']} test questions), {100 * val.mean():.1f}% right "
                 f"(in {path})")
        return self

    def sample_and_label(self):
        """verifier_samples answers to each question of both splits from the starting model, labelled by the task's
        check; seeded per split and chunk of CHUNK questions, and per answer inside the engine, so the set is the
        same for any batch size. A progress bar counts the questions (minutes on a CPU)."""
        from tqdm import tqdm

        from nash.engine import Sampling, sample_batch
        s, task = self.settings, self.task
        self.log(f"sampling {s['verifier_samples']} answers to each of {len(self.questions['train'][0])} train and "
                 f"{len(self.questions['val'][0])} test questions of {task.name} (once, before training)")
        stop_id = special_ids(self.enc)["<|assistant_end|>"]
        records = []
        was_training = self.model.training
        try:
            for split in SPLITS:
                docs, prompts = self.questions[split]
                results = []
                with tqdm(total=len(prompts), desc=f"{split} answers", unit="question", dynamic_ncols=True,
                          disable=self.log is not print) as bar:  # (log is print in the process that logs)
                    for start in range(0, len(prompts), CHUNK):
                        sampling = Sampling(temperature=s["verifier_temperature"], top_k=None,
                                            max_new_tokens=s["verifier_max_new_tokens"],
                                            seed=mix("verifier", s["seed"], split, start) % 2**63)
                        results += sample_batch(self.model, prompts[start:start + CHUNK], s["verifier_samples"],
                                                sampling, {stop_id}, enc=self.enc)
                        bar.update(len(prompts[start:start + CHUNK]))
                for q, (doc, group) in enumerate(zip(docs, results)):
                    for j, c in enumerate(group):
                        records.append({"split": split, "question": q, "sample": j, "messages": task.chat_prompt(doc, []),
                                        "reply": c.text, "correct": int(task.check(doc, c.text)[reward_of(s, task)])})
        finally:
            self.model.train(was_training)
        return records

    def loss(self, model, x, y):
        logits = model(x, last=y[:, 0])[0]
        labels = y[:, 1].float()
        return F.binary_cross_entropy_with_logits(logits, labels), ((logits > 0) == (labels > 0)).float().mean()[None]

    def eval_sums(self, model, x, y):
        """Summed BCE, right calls at 1/2, examples; then one slot per val example holding its score (0 elsewhere),
        so that the sums over batches (and processes) hold every val score, for AUC and best-of-N."""
        logits = model(x, last=y[:, 0])[0].float()
        labels = y[:, 1].float()
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        sums = torch.zeros(3 + len(self.splits["val"].rows), device=x.device)
        sums[:3] = torch.stack([losses.sum(), ((logits > 0) == (labels > 0)).float().sum(), torch.tensor(float(len(y)))])
        if y[0, 2] >= 0:
            sums[3 + y[:, 2]] = logits
        return sums

    def eval_metrics(self, val, train):
        n = self.settings["verifier_samples"]
        labels = self.splits["val"].labels
        scores = val[3:].cpu()
        grouped, right = scores.view(-1, n), labels.view(-1, n)
        area = auc(scores, labels)
        # AUC within each question that has right and wrong answers: what best-of-N needs; the overall AUC also
        # rewards telling easy questions from hard ones, which picks nothing
        within = [a for a in map(auc, grouped, right) if a is not None]
        picks = [row[best_of_n(s.tolist())].item() for s, row in zip(grouped, right)]
        return {"val_loss": (val[0] / val[2]).item(), "accuracy": (val[1] / val[2]).item(),
                "auc": area, "auc_within": sum(within) / len(within) if within else None,
                "best_of_n": sum(picks) / len(picks), "pass@1_sampled": labels.mean().item(),
                "pass@n": right.max(1).values.mean().item(), "n": n,
                "train_loss": (train[0] / train[2]).item(), "train_accuracy": (train[1] / train[2]).item()}

    def describe_eval(self, m):
        area = "n/a (one label only)" if m["auc"] is None else f"{m['auc']:.3f}"
        within = "n/a" if m.get("auc_within") is None else f"{m['auc_within']:.3f}"
        return (f"accuracy {100 * m['accuracy']:.1f}% | AUC {area} (within a question {within}) | best-of-{m['n']} {100 * m['best_of_n']:.1f}% "
                f"(a random answer {100 * m['pass@1_sampled']:.1f}%, some answer right {100 * m['pass@n']:.1f}%)")

    def describe(self, metrics):
        return f"accuracy {100 * metrics['accuracy']:.1f}%"


def read_examples(path):
    """(the header saying how the set was sampled, the records) of a labelled set; (None, []) if there is none."""
    if not os.path.isfile(path):
        return None, []
    with open(path) as f:
        lines = [json.loads(line) for line in f]
    return (lines[0].get("sampled_with"), lines[1:]) if lines else (None, [])


def write_jsonl(path, records):
    """Written beside its place and renamed in: a crash leaves the old file or the new one, never half."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".verifier_examples.", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(tmp, path)
