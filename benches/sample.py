"""bench.py --what=sample: the engine's decode loop with the KV cache (nash/engine.py sample_batch) against
model.py's uncached generate, which recomputes the whole context at every step (see bench.py)."""
import time

import torch

from nash import tokenizer
from nash.engine import Sampling, sample_batch
from benches.common import sync
from model import GPT, GPTConfig


def bench_sample(tmp, cfg):
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.sample_args)).to(cfg.device).eval()
    prompt = [tokenizer.EOT_ID]  # sample.py's default start

    def tokens_per_sec(new_tokens, use_cache):
        # plain sampling at sample_temperature on both sides (model.generate has no top-k); the cached engine
        # stops at the context's end, so neither side goes past it
        new_tokens = min(new_tokens, model.config.max_seq_len - len(prompt))
        sync(cfg.device)
        t0 = time.perf_counter()
        with torch.no_grad(), cfg.ctx:
            if use_cache:
                sampling = Sampling(temperature=cfg.sample_temperature, top_k=None, max_new_tokens=new_tokens,
                                    seed=cfg.seed)
                rows = sample_batch(model, [prompt], cfg.sample_batch, sampling, set(), cfg.ctx)[0]
                assert all(len(r.tokens) == new_tokens for r in rows)
            else:
                idx = torch.tensor([prompt] * cfg.sample_batch, device=cfg.device)
                model.generate(idx, new_tokens, temperature=cfg.sample_temperature, generator=torch.Generator(device=cfg.device).manual_seed(cfg.seed))
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
