"""bench.py --what=tasks: multiple-choice scoring examples/s, batched against one continuation per forward
(see bench.py)."""
import os
import time

import torch

from nash import tasks as downstream
from nash import tokenizer
from benches.common import HERE, sync
from model import GPT, GPTConfig


def bench_tasks(tmp, cfg):
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.sample_args)).to(cfg.device)
    task, docs, _ = downstream.prepare(["hellaswag"], os.path.join(HERE, cfg.task_data))[0]
    docs = (docs * -(-cfg.task_examples // len(docs)))[:cfg.task_examples]
    docs = [dict(d, text=f"{i}. {d['text']}") for i, d in enumerate(docs)]  # no two items share an input
    enc = tokenizer.get_tokenizer()

    def examples_per_sec(batch):
        sync(cfg.device)
        t0 = time.perf_counter()
        downstream.score_choice(task, model, enc, docs, [[]] * len(docs), batch, cfg.ctx, False)
        sync(cfg.device)
        return len(docs) / (time.perf_counter() - t0)

    examples_per_sec(cfg.task_batch)  # warm-up
    runs = [[examples_per_sec(b) for b in (cfg.task_batch, 1)] for _ in range(cfg.repeats)]
    batched, single = (max(col) for col in zip(*runs))
    return dict(task="hellaswag", examples=len(docs), continuations=sum(len(d["choices"]) for d in docs),
                num_params=model.num_params(), batch=cfg.task_batch, examples_per_sec=batched,
                unbatched_examples_per_sec=single, speedup=batched / single, runs=runs)
