"""bench.py --what=sample: model.generate with the KV cache against recomputing the context (see bench.py)."""
import time

import torch

from nash import tokenizer
from benches.common import sync
from model import GPT, GPTConfig


def bench_sample(tmp, cfg):
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.sample_args)).to(cfg.device)
    prompt = torch.full((cfg.sample_batch, 1), tokenizer.EOT_ID, device=cfg.device)  # sample.py's default start

    def tokens_per_sec(new_tokens, use_cache):
        generator = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        sync(cfg.device)
        t0 = time.perf_counter()
        with cfg.ctx:
            model.generate(prompt, new_tokens, top_k=cfg.top_k or None, generator=generator, use_cache=use_cache)
        sync(cfg.device)
        return cfg.sample_batch * new_tokens / (time.perf_counter() - t0)

    tokens_per_sec(8, True), tokens_per_sec(8, False)  # warm-up
    rows = []
    for n in cfg.lengths:
        runs = [[tokens_per_sec(n, use_cache) for use_cache in (True, False)] for _ in range(cfg.repeats)]
        cache, full = (max(col) for col in zip(*runs))
        rows.append(dict(new_tokens=n, cache_tokens_per_sec=cache, recompute_tokens_per_sec=full, speedup=cache / full,
                         runs=runs))
    return dict(num_params=model.num_params(), rows=rows)
