"""bench.py --what=train: train.py itself against the plainest loop (each in a fresh process), model.py's step
against a plain nanoGPT-style GPT-2 written here, and the peak memory of the loss alone (see bench.py)."""
import inspect
import json
import os
import sys
import time
from statistics import median

import torch
import torch.nn.functional as F

import prepare
from benches.common import run, sync
from benches.data import make_corpus
from model import GPT, GPTConfig
from nash.common import peak_flops


def optimizer_step(loss, model, opt, scaler, grad_clip):
    """train.py's update, plainly: backward (scaled for float16), clip the unscaled gradients, step, zero."""
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)


def plain_loop(cfg):
    """ms per step of the plainest loop on what train.py trains: the same GPT, optimizer, batch shape, precision
    (a GradScaler for float16) and clipping, on random tokens made before the clock starts. Like train.py's log
    line, the host waits for the device every log_interval steps, and each wait gives one figure."""
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**cfg.train_args)).to(cfg.device)
    [opt] = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), cfg.device_type)  # train.py's defaults
    scaler = torch.amp.GradScaler(cfg.device_type, enabled=cfg.dtype == "float16")
    step_model = torch.compile(model) if cfg.compile else model
    batches = torch.randint(model.config.vocab_size, (cfg.train_steps, 2, cfg.batch_size, cfg.max_seq_len),
                            device=cfg.device)
    times = []
    sync(cfg.device)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches, 1):
        with cfg.ctx:
            _, loss = step_model(x, y, return_logits=False)  # train.py's loss path
        optimizer_step(loss, model, opt, scaler, cfg.grad_clip)
        if step % cfg.log_interval == 0:
            sync(cfg.device)
            times.append(1000 * (time.perf_counter() - t0) / cfg.log_interval)
            t0 = time.perf_counter()
    return times[cfg.train_warmup // cfg.log_interval:]


# -----------------------------------------------------------------------------
# the independent reference: a minimal GPT-2 training step written plainly here, nanoGPT's way (standard
# PyTorch, none of model.py): vocabulary padded to 50304 and the loss over all 50304 columns, as nanoGPT does


class RefAttention(torch.nn.Module):
    def __init__(self, d_model, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.c_attn = torch.nn.Linear(d_model, 3 * d_model)
        self.c_proj = torch.nn.Linear(d_model, d_model)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(torch.nn.Module):
    def __init__(self, d_model, n_heads, d_ff):
        super().__init__()
        self.ln_1, self.ln_2 = torch.nn.LayerNorm(d_model), torch.nn.LayerNorm(d_model)
        self.attn = RefAttention(d_model, n_heads)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(d_model, d_ff), torch.nn.GELU(approximate="tanh"),
                                       torch.nn.Linear(d_ff, d_model))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class RefGPT(torch.nn.Module):
    def __init__(self, n_layers, n_heads, d_model, d_ff, max_seq_len, vocab_size=50304):
        super().__init__()
        self.wte, self.wpe = torch.nn.Embedding(vocab_size, d_model), torch.nn.Embedding(max_seq_len, d_model)
        self.h = torch.nn.ModuleList([RefBlock(d_model, n_heads, d_ff) for _ in range(n_layers)])
        self.ln_f = torch.nn.LayerNorm(d_model)
        self.lm_head = torch.nn.Linear(d_model, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for p in self.parameters():
            torch.nn.init.normal_(p, std=0.02) if p.dim() == 2 else None

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)


def versus_reference(cfg):
    """ms per training step of model.py's GPT (train.py's loss path and optimizer) and of RefGPT (nanoGPT's), same
    shapes, batches, AdamW settings and clipping, alternated step by step in this process so that load hits both alike. Each step is timed on its
    own (device synchronised); a run is train_steps steps, its figure the median after train_warmup."""
    torch.manual_seed(cfg.seed)
    ours = GPT(GPTConfig(**cfg.train_args)).to(cfg.device)
    ref = RefGPT(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_ff, cfg.max_seq_len).to(cfg.device)
    loops = {}
    for name, model, loss_fn in (("model.py", ours, lambda m, x, y: m(x, y, return_logits=False)[1]),
                                 ("reference", ref, lambda m, x, y: m(x, y)[1])):
        if model is ours:  # the step as train.py takes it: configure_optimizers' AdamW (fused, on CPU too)
            [opt] = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), cfg.device_type)
        else:  # nanoGPT's configure_optimizers: the same groups, fused on CUDA only
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=cfg.device_type == "cuda")
        scaler = torch.amp.GradScaler(cfg.device_type, enabled=cfg.dtype == "float16")
        loops[name] = (model, torch.compile(model) if cfg.compile else model, loss_fn, opt, scaler)
    batches = torch.randint(GPTConfig().vocab_size, (cfg.train_steps, 2, cfg.batch_size, cfg.max_seq_len),
                            device=cfg.device)
    runs = {name: [] for name in loops}
    for r in range(cfg.repeats):
        times = {name: [] for name in loops}
        for x, y in batches:
            for name, (model, step_model, loss_fn, opt, scaler) in loops.items():
                sync(cfg.device)
                t0 = time.perf_counter()
                with cfg.ctx:
                    loss = loss_fn(step_model, x, y)
                optimizer_step(loss, model, opt, scaler, cfg.grad_clip)
                sync(cfg.device)
                times[name].append(1000 * (time.perf_counter() - t0))
        for name in loops:
            runs[name].append(times[name][cfg.train_warmup:])
    result = {name: dict(ms_per_step=min(median(t) for t in times), run_medians_ms=[median(t) for t in times],
                         runs_ms=times) for name, times in runs.items()}
    return dict(result, ratio=result["reference"]["ms_per_step"] / result["model.py"]["ms_per_step"])


def loss_memory(path, B, T, C, device):
    """In a fresh process (bench.py runs this source with python -c): one forward + backward of the head and the
    loss alone, hidden states (B*T, C) -> logits over GPT-2's 50257 tokens -> cross-entropy, float32; prints its
    peak memory as JSON. path: "sliced" (the padded-width logits cut to the vocabulary, then the loss: model.py
    before issue 12), "full" (logits over the real vocabulary, then the loss: forward()'s path, for callers that
    want the logits), "chunked" (model.chunked_cross_entropy: train.py's path)."""
    import json
    import torch
    import torch.nn.functional as F
    from model import chunked_cross_entropy

    def rss_mb(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith(field + ":"))

    torch.manual_seed(0)
    V, Vp = 50257, 50304
    x = torch.randn(B * T, C, device=device, requires_grad=True)
    weight = (0.02 * torch.randn(Vp, C, device=device)).requires_grad_()
    targets = torch.randint(V, (B * T,), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    baseline = rss_mb("VmRSS")
    if path == "chunked":
        loss = chunked_cross_entropy(x, weight[:V], targets)
    else:
        logits = F.linear(x, weight)[:, :V] if path == "sliced" else F.linear(x, weight[:V])
        loss = F.cross_entropy(logits.float(), targets, ignore_index=-1)
    loss.backward()
    out = dict(path=path, baseline_mb=baseline, peak_rss_mb=rss_mb("VmHWM"), loss=loss.item())
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["cuda_peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    print(json.dumps(out))


LOSS_MEMORY = "\n".join([inspect.getsource(loss_memory), "import sys",
                         "loss_memory(sys.argv[1], *map(int, sys.argv[2:5]), sys.argv[5])"])


def bench_loss_memory(cfg):
    rows = []
    for path in ("sliced", "full", "chunked"):
        line = run([sys.executable, "-c", LOSS_MEMORY, path, str(cfg.memory_batch), str(cfg.memory_seq),
                    str(cfg.memory_d_model), cfg.device], f"the {path} loss")[0]
        rows.append(json.loads(line))
    return rows


def bench_train(tmp, cfg):
    corpus = make_corpus(os.path.join(tmp, "words.jsonl"), 2, cfg.seed)  # ~0.5M tokens, plenty of windows
    data_dir = prepare.prepare(input=corpus, name="words", data_root=tmp, progress=False)
    flags = [f"--{k}={v}" for k, v in cfg.train_args.items()] + [
        f"--batch_size={cfg.batch_size}", f"--grad_clip={cfg.grad_clip}", f"--device={cfg.device}",
        f"--dtype={cfg.dtype}", f"--compile={cfg.compile}", f"--seed={cfg.seed}", f"--max_steps={cfg.train_steps}",
        f"--log_interval={cfg.log_interval}",
        "--eval_interval=0", "--checkpoint_interval=0", "--dataset=words", f"--data_dir={data_dir}"]
    # the plain loop runs in a fresh process too (bench.py --what=plain_loop), as train.py does: timed in this
    # warm process it came out 5-8% ahead of train.py, where both started fresh they match (a 2-core CPU)
    plain = [sys.executable, "bench.py", *(f"--{k}={v}" for k, v in cfg.settings.items()), "--what=plain_loop",
             "--output="]
    env = {"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {}
    runs = {"train.py": [], "plain loop": []}
    for r in range(cfg.repeats):
        out_dir = os.path.join(tmp, f"run{r}")
        run([sys.executable, "train.py", *flags, f"--out_dir={out_dir}"], "train.py", env)
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            times = [e["ms_per_step"] for e in map(json.loads, f) if e["event"] == "train"]
        runs["train.py"].append(times[cfg.train_warmup // cfg.log_interval:])
        runs["plain loop"].append(json.loads(run(plain, "the plain loop", env)[0]))
    with torch.device("meta"):  # only to count FLOPs: no memory, no init
        flops = GPT(GPTConfig(**cfg.train_args)).flops_per_token(cfg.max_seq_len)
    peak = peak_flops(cfg.device)  # None on CPU and on GPUs missing from common.PEAK_FLOPS
    result = {}
    for name, times in runs.items():
        ms = min(median(t) for t in times)  # the fastest run's median step
        tokens_per_sec = cfg.batch_size * cfg.max_seq_len / ms * 1000
        result[name] = dict(ms_per_step=ms, tokens_per_sec=tokens_per_sec,
                            mfu=tokens_per_sec * flops / peak if peak else None,  # = train.py's estimate_mfu
                            run_medians_ms=[median(t) for t in times],
                            steps_timed=sum(map(len, times)) * cfg.log_interval,
                            runs_ms=times)
    return dict(result, ratio=result["train.py"]["tokens_per_sec"] / result["plain loop"]["tokens_per_sec"],
                reference=versus_reference(cfg), loss_memory=bench_loss_memory(cfg))
