"""The one-command GPU check (runs/gpu_check.sh): one table of what a CUDA card does with this code, in under 8
minutes on an H100.

- GPT-2 124M training step, float16 autocast + GradScaler and bfloat16 autocast, each eager and torch.compile'd:
  ms/step, tokens/s, MFU against the card's peak (model.py's PEAK_FLOPS);
- the nanochat d20 shape (561M) one-GPU step and peak memory under DDP and under FSDP (a 1-process group);
- decoding with the KV cache at batch 1 and 16: tokens/s and the share of the card's memory bandwidth it uses;
- that cached, uncached and batched (nash/engine.sample_batch) greedy generation agree on CUDA.

Without CUDA it says so in one line and exits 1. --smoke runs every code path on the CPU at a tiny size (no compile,
gloo instead of NCCL), which the tests use to keep this script working on machines without a GPU."""
import os
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

SMOKE = "--smoke" in sys.argv[1:]
BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12,
             "A100 80GB PCIe": 1.94e12, "A100": 1.56e12, "L40S": 0.864e12, "L4": 0.3e12, "RTX 4090": 1.01e12,
             "A10": 0.6e12}  # HBM/GDDR peak bytes/s; the longest matching name wins
GPT2 = dict(n_layers=12, n_heads=12, d_model=768, d_ff=3072, max_seq_len=1024, vocab_size=50257, dropout=0.0)
D20 = dict(n_layers=20, n_heads=10, d_model=1280, d_ff=5120, max_seq_len=2048, vocab_size=65536, dropout=0.0,
           tie_weights=False, mlp="relu2", pos_emb="rope", norm="rmsnorm", bias=False, qk_norm=True)
TINY = dict(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=64, vocab_size=512, dropout=0.0)
BATCH, SEQ, STEPS, WARMUP = (2, 32, 3, 1) if SMOKE else (16, 1024, 20, 5)  # 16 x 1024 tokens per step


def lookup(table, name):
    for key in sorted(table, key=len, reverse=True):
        if key.lower() in name.lower():
            return table[key]
    return None


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_steps(step, device, steps=STEPS, warmup=WARMUP):
    """Median seconds of step() after warmup, the device synchronised around each."""
    times = []
    for i in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_row(shape, device, dtype, compiled):
    from model import GPT, GPTConfig
    from nash.common import peak_flops
    from nash.common import autocast
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape)).to(device)
    [opt] = model.configure_optimizers("adamw", 6e-4, 0.1, (0.9, 0.95), device.split(":")[0])
    scaler = torch.amp.GradScaler(device.split(":")[0], enabled=dtype == "float16")
    run = torch.compile(model) if compiled else model
    seq = min(SEQ, shape["max_seq_len"])
    x = torch.randint(shape["vocab_size"], (BATCH, seq), device=device)
    ctx = autocast(device.split(":")[0], dtype)

    def step():
        with ctx:
            _, loss = run(x, x, return_logits=False)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    dt = timed_steps(step, device)
    tokens = BATCH * seq / dt
    peak = peak_flops(device)
    mfu = tokens * model.flops_per_token(seq) / peak if peak else None
    return dt, tokens, mfu


def parallel_row(shape, device, mode):
    """One step of a one-GPU DDP or FSDP run of shape, bf16: ms/step and the peak memory allocated."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from model import GPT, GPTConfig
    from nash import distributed
    from nash.common import autocast
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = GPT(GPTConfig(**shape))  # built on the host: FSDP shards it onto the GPU
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if mode == "fsdp":
            model = distributed.shard(model, device, "bfloat16")
            run = model
        else:
            model = model.to(device)
            run = DDP(model, device_ids=[torch.device(device).index or 0] if device.startswith("cuda") else None)
        [opt] = model.configure_optimizers("adamw", 6e-4, 0.1, (0.9, 0.95), device.split(":")[0])
        seq = min(SEQ, shape["max_seq_len"])
        x = torch.randint(shape["vocab_size"], (BATCH // 2 or 1, seq), device=device)
        ctx = autocast(device.split(":")[0], "bfloat16")

        def step():
            with ctx:
                _, loss = run(x, x, return_logits=False)
            loss.backward()
            distributed.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        dt = timed_steps(step, device, steps=max(4, STEPS // 2), warmup=2 if not SMOKE else 1)
        peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
        return dt, peak, model.num_params()
    finally:
        dist.destroy_process_group()


def decode_row(model, device, batch, new_tokens):
    """Greedy KV-cache decoding: tokens/s over all rows, and the memory bandwidth a step uses (every weight read
    once, plus the cache at its mean length) as a share of the card's peak."""
    from nash.engine import Sampling, sample_batch
    prompts = torch.randint(model.config.vocab_size, (batch, 16)).tolist()
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=new_tokens)
    sync(device)
    t0 = time.perf_counter()
    sample_batch(model, prompts, 1, greedy, stop_ids=(), batch_size=batch)  # the engine's cached decode loop
    sync(device)
    dt = time.perf_counter() - t0
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    c = model.config
    kv_bytes = 2 * c.n_layers * batch * (16 + new_tokens / 2) * c.kv_heads * c.head_dim * next(model.parameters()).element_size()
    step_bytes_per_s = (weight_bytes + kv_bytes) * new_tokens / dt
    peak = lookup(BANDWIDTH, torch.cuda.get_device_name(device)) if device.startswith("cuda") else None
    return batch * new_tokens / dt, step_bytes_per_s, (step_bytes_per_s / peak if peak else None)


def agreement(model, device):
    """Greedy tokens from the cached, the uncached and the batched engine path, on the same prompts: rows that
    agree, out of all (float32, TF32 off, so any difference is a real one, not rounding)."""
    from nash.engine import Sampling, sample_batch, stream
    torch.backends.cuda.matmul.allow_tf32 = False
    prompts = [torch.randint(model.config.vocab_size, (n,)).tolist() for n in (5, 9, 17, 3)]
    n, agree = 24, 0
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=n)
    batched = sample_batch(model, prompts, 1, greedy, stop_ids=())
    for p, rows in zip(prompts, batched):
        cached = list(stream(model, p, greedy))  # one row through the engine's KV cache
        plain = model.generate(torch.tensor([p], device=device), n, temperature=0.0)[0, len(p):].tolist()  # no cache
        agree += cached == plain == rows[0].tokens
    return agree, len(prompts)


def main():
    if not SMOKE and not torch.cuda.is_available():
        print(f"error: runs/gpu_check.sh needs a CUDA GPU and this machine has none (torch {torch.__version__}); "
              f"run it on a GPU machine", file=sys.stderr)
        return 1
    device = "cuda" if not SMOKE else "cpu"
    name = torch.cuda.get_device_name(0) if not SMOKE else "cpu (smoke test, tiny shapes)"
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    t_start = time.time()
    gpt2 = TINY if SMOKE else GPT2
    for dtype in ("float16", "bfloat16"):
        for compiled in ((False, True) if not SMOKE else (False,)):
            dt, tok, mfu = train_row(gpt2, device, dtype, compiled)
            rows.append((f"GPT-2 124M train, {dtype} autocast{' + GradScaler' if dtype == 'float16' else ''}"
                         f"{', compiled' if compiled else ''}", f"{1000 * dt:.1f} ms/step",
                         f"{tok:,.0f} tok/s", f"MFU {100 * mfu:.1f}%" if mfu is not None else "MFU -"))
    for mode in ("ddp", "fsdp"):
        dt, peak, n = parallel_row(TINY if SMOKE else D20, device, mode)
        rows.append((f"d20 ({n / 1e6:.0f}M) train, 1 GPU, {mode.upper()}, bf16", f"{1000 * dt:.1f} ms/step",
                     f"peak {peak / 2**30:.1f} GiB" if peak else "peak -", ""))
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(**gpt2)).to(device).eval()
    for batch in (1, 16):
        with torch.autocast(device.split(":")[0], torch.bfloat16, enabled=not SMOKE):
            tok, bw, share = decode_row(model, device, batch, 8 if SMOKE else 128)
        rows.append((f"GPT-2 124M decode, KV cache, batch {batch}", f"{tok:,.0f} tok/s", f"{bw / 1e9:,.0f} GB/s",
                     f"{100 * share:.0f}% of peak bandwidth" if share else "bandwidth peak -"))
    agree, total = agreement(model, device)
    rows.append(("cached = uncached = batched greedy generation", f"{agree}/{total} prompts agree", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print(f"GPU check on {name}, torch {torch.__version__}, {time.time() - t_start:.0f} s")
    for r in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0 if agree == total else 2


if __name__ == "__main__":
    sys.exit(main())
