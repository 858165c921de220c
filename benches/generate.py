"""bench.py --what=generate: completions/s of GSM8K-shaped sampling (a prompt of gen_prompt_tokens, gen_samples
completions of gen_new_tokens each) through the batched engine (sample_batch, every sample in one forward per
step) against one completion at a time (the same engine with num_samples=1, as evaluation worked before it was
batched), same model, alternated (see bench.py)."""
import time

import torch

from nash import tokenizer
from benches.common import sync
from configurator import fail
from model import GPT, GPTConfig
from nash.engine import Sampling, sample_batch

SHAPES = {"124m": {}, "tiny": dict(n_layers=2, n_heads=2, d_model=32, d_ff=64)}  # GPTConfig's defaults are GPT-2 124M


def bench_generate(tmp, cfg):
    if cfg.gen_shape not in SHAPES:
        fail(f"gen_shape={cfg.gen_shape!r} should be {' or '.join(SHAPES)}")
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**SHAPES[cfg.gen_shape], dropout=0.0)).to(cfg.device).eval()
    if cfg.gen_prompt_tokens + cfg.gen_new_tokens > model.config.max_seq_len:
        fail(f"gen_prompt_tokens + gen_new_tokens ({cfg.gen_prompt_tokens + cfg.gen_new_tokens}) must fit the "
             f"context of {model.config.max_seq_len}")
    prompt = torch.randint(0, tokenizer.EOT_ID, (cfg.gen_prompt_tokens,), generator=torch.Generator().manual_seed(
        cfg.seed)).tolist()  # random tokens: speed does not depend on them

    def completions_per_sec(batched, new_tokens):
        # no stop ids: a random model's completions all run to their full length, so both ways do the same work
        sampling = Sampling(temperature=1.0, top_k=cfg.top_k or None, max_new_tokens=new_tokens, seed=cfg.seed)
        sync(cfg.device)
        t0 = time.perf_counter()
        if batched:
            done = sample_batch(model, [prompt], cfg.gen_samples, sampling, set(), cfg.ctx)[0]
        else:  # each completion prefills the prompt again, as one-at-a-time scoring did
            done = [sample_batch(model, [prompt], 1, sampling, set(), cfg.ctx)[0][0] for _ in range(cfg.gen_single)]
        sync(cfg.device)
        assert all(len(c.tokens) == new_tokens for c in done)
        return len(done) / (time.perf_counter() - t0)

    completions_per_sec(True, 4), completions_per_sec(False, 4)  # warm-up
    runs = [[completions_per_sec(batched, cfg.gen_new_tokens) for batched in (True, False)] for _ in range(cfg.repeats)]
    batched, single = (max(col) for col in zip(*runs))
    return dict(shape=cfg.gen_shape, num_params=model.num_params(), prompt_tokens=cfg.gen_prompt_tokens,
                samples=cfg.gen_samples, single=cfg.gen_single, new_tokens=cfg.gen_new_tokens,
                batched_completions_per_sec=batched, single_completions_per_sec=single, speedup=batched / single,
                runs=runs)
