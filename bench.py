"""
How fast Nash-LLM trains, samples and prepares data on this machine, measured: prints a table and writes JSON
(machine, settings, results) so that numbers can be compared between commits and machines.

    python bench.py                                    # CPU: all three at the default sizes (~15 min on 2 cores)
    python bench.py --what=sample --threads=1 --sample_lengths=64,256
    python bench.py --what=tasks --sample_layers=12 --sample_heads=12 --sample_d_model=768 --sample_d_ff=3072 \\
        --sample_context=1024                          # benchmark scoring (HellaSwag items) on a GPT-2 124M shape
    python bench.py --what=generate                    # batched sampling against one at a time, GPT-2 124M shape
    python bench.py --what=train --device=cuda --dtype=float16 --compile --n_layers=12 --n_heads=12 --d_model=768 \\
        --d_ff=3072 --max_seq_len=1024 --batch_size=16 --train_steps=60 --train_warmup=20 --log_interval=10 \\
        --output=bench_gpu_float16.json                # GPT-2 124M on a GPU; then again with --dtype=bfloat16

Each figure is the best of `repeats` runs (a training run's figure is the median of its steps), timed after
warm-up with the device synchronised: load from other processes only ever adds time, so the best run is the
closest to what the machine itself can do. The JSON keeps every run's figure and the load average.
Each measurement is a module of benches/ (benches/train.py, sample.py, tasks.py, data.py, chat.py, tokenizer.py,
finetune.py, generate.py);
this file holds the settings, their checks, the driver and the report.
- train: train.py itself, as a subprocess (no evals, no saves) on random words that prepare.py turns into shards
  in a temp folder: ms/step from its metrics.jsonl (one figure per log_interval steps), the first train_warmup
  steps of each run left out. Beside it, the plainest loop on the same GPT, batch shape, optimizer, precision and
  clipping, on random tokens, also in a fresh process. Runs alternate (train.py, plain, ...): load hits both.
  Then model.py's step against an independent reference, a plain nanoGPT-style GPT-2 written in benches/train.py
  (same shapes, optimizer and clipping), alternated step by step in this process. And the peak memory of the loss alone
  (head + cross-entropy, forward + backward) at GPT-2 124M's training shape, each way of computing it in a fresh
  process: peak RSS, and torch.cuda.max_memory_allocated on a GPU.
- sample: tokens/s of the engine's decode loop with the KV cache (nash/engine.py) against model.generate, which
  recomputes the whole context at each step, from a one-token prompt, at a few lengths, on a randomly initialised model (speed does not depend on the weights).
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
- generate: completions/s of GSM8K-shaped sampling (a gen_prompt_tokens prompt, gen_samples completions of
  gen_new_tokens each, temperature 1) on a randomly initialised model (gen_shape: GPT-2 124M, or tiny for the tests):
  the batched engine (nash/engine.py sample_batch: the prompt prefilled once, all samples decoded together) against
  one completion at a time (the same engine, num_samples=1, gen_single completions per run), alternated.
- finetune: config/sft_demo.py's fine-tuning from one base checkpoint, every weight against LoRA adapters
  (finetune_rank, finetune_targets), each train.py in a fresh process, alternated: ms/step (train_steps steps, the
  first train_warmup left out), peak RSS, trainable parameters.
"""
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import torch

from nash import tokenizer
from benches.common import CORES, HERE
from nash.common import autocast, pick_device, pick_dtype
from configurator import check_output_file, check_range, configure, fail
from model import GPTConfig

# -----------------------------------------------------------------------------
# settings (python bench.py --help lists them)
what = "train,sample,data"  # comma-separated: train, sample, data, tokenizer, chat, tools, tasks, finetune, generate, memory
# (plain_loop: internal)
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
sample_context = 256  # the model's max_seq_len; a generation stops at its end (prompt + new tokens)
sample_lengths = "64,128,256"  # new tokens per generate call, comma-separated
sample_batch = 1  # sequences generated together
sample_temperature = 1.0  # both sides sample at it; 0 = greedy on both, which times the KV cache alone (the engine's
# draw and model.generate's torch.multinomial differ in cost: nash/engine.py draw)
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
# generate: GSM8K-shaped sampling, batched against one completion at a time
gen_shape = "124m"  # 124m (GPT-2 small, context 1024) | tiny (2 layers x 32, for the tests)
gen_prompt_tokens = 200  # about a GSM8K question with its chat markup
gen_samples = 16  # completions of the prompt sampled together (nanochat's RL samples 16 per question)
gen_new_tokens = 256  # tokens per completion (a random model never stops early)
gen_single = 4  # completions generated one at a time per run (a rate: fewer than gen_samples keeps it short)
# finetune: config/sft_demo.py, every weight against LoRA (train_steps, train_warmup, repeats as above)
finetune_rank = 8  # the adapters' rank
finetune_targets = "all"  # attention | mlp | all (train.py's lora_targets)
settings = configure(globals())
# -----------------------------------------------------------------------------
# checks: one line each, before any work

# the targets, each with the verdict printed when it is measured
TRAIN_NOISE = 0.03  # train.py is "no slower" within 3%, about what we can resolve on a shared CPU
SAMPLE_SPEEDUP, DATA_SHARE, MEMORY_GROWTH, H100_MFU = 5.0, 0.7, 0.10, 0.45
VAL_SHARE_ERROR = 0.005  # prepare.py's val share within half a percentage point of val_ratio (issue 11)
GENERATE_SPEEDUP = 4.0  # batched sampling against one completion at a time (issue 25)
REFERENCE_SPEEDUP = 1.05  # model.py's training step against the plain nanoGPT-style one in benches/train.py

measures = [w.strip() for w in what.split(",") if w.strip()]
MEASURES = ("train", "sample", "data", "tokenizer", "chat", "tools", "tasks", "finetune", "generate", "memory")
if not measures or set(measures) - {*MEASURES, "plain_loop"}:
    fail(f"what={what!r} should be a comma-separated list of {', '.join(MEASURES)}")
if finetune_rank < 1 or finetune_targets not in ("attention", "mlp", "all"):
    fail(f"finetune_rank={finetune_rank} must be at least 1 and finetune_targets={finetune_targets!r} attention, "
         f"mlp or all")
try:
    lengths = [int(n) for n in sample_lengths.split(",")]
except ValueError:
    fail(f"sample_lengths={sample_lengths!r} should be whole numbers separated by commas, like 64,128,256")
for name in ("repeats", "batch_size", "train_steps", "sample_batch", "task_examples", "task_batch", "memory_batch",
             "memory_seq", "memory_d_model", "gen_prompt_tokens", "gen_samples", "gen_new_tokens", "gen_single"):
    if settings[name] < 1:
        fail(f"{name}={settings[name]} must be at least 1")
if min(lengths) < 1 or min(threads, top_k, train_warmup, sample_temperature) < 0:
    fail("sample_lengths must be positive, and threads, top_k, train_warmup and sample_temperature not negative")
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

# what the measurements (benches/, a module each) read: every setting, with the device and dtype resolved
cfg = SimpleNamespace(**{**settings, "device": device, "dtype": dtype}, device_type=device_type, ctx=ctx,
                      lengths=lengths, train_args=train_args, sample_args=sample_args, settings=settings)


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
    if "generate" in results:
        r = results["generate"]
        checks.append((f"batched sampling >= {GENERATE_SPEEDUP:g}x one at a time, {r['samples']} samples",
                       f"{r['speedup']:.2f}x", r["speedup"] >= GENERATE_SPEEDUP))
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
        table(f"train step against a plain nanoGPT-style GPT-2 (benches/train.py; same shapes, alternated step by "
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
              f"{sample_context}, batch {sample_batch}, temperature {sample_temperature:g}, {dtype}, {device}",
              ["new tokens", "KV cache tok/s", "recompute tok/s", "speedup"],
              [[row["new_tokens"], f"{row['cache_tokens_per_sec']:.1f}", f"{row['recompute_tokens_per_sec']:.1f}",
                f"{row['speedup']:.2f}x"] for row in r["rows"]])
    if "tasks" in results:
        r = results["tasks"]
        table(f"tasks: {r['task']} multiple choice, {r['examples']} items ({r['continuations']} continuations), "
              f"{sample_layers} layers x {sample_d_model} ({r['num_params'] / 1e6:.1f}M parameters), {dtype}, {device}",
              ["continuations per forward", "examples/s"],
              [[r["batch"], f"{r['examples_per_sec']:.1f}"], [1, f"{r['unbatched_examples_per_sec']:.1f}"]])
    if "generate" in results:
        r = results["generate"]
        table(f"generate: {r['shape']} shape ({r['num_params'] / 1e6:.1f}M parameters), a {r['prompt_tokens']}-token "
              f"prompt, completions of {r['new_tokens']} tokens, temperature 1, top_k {top_k}, {dtype}, {device}",
              ["", "completions/s", "run figures"],
              [[f"batched: {r['samples']} samples together", f"{r['batched_completions_per_sec']:.2f}",
                ", ".join(f"{b:.2f}" for b, _ in r["runs"])],
               [f"one at a time ({r['single']} per run)", f"{r['single_completions_per_sec']:.2f}",
                ", ".join(f"{s:.2f}" for _, s in r["runs"])]])
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
    if "memory" in results:  # benches/memory.py prints its own tables
        importlib.import_module("benches.memory").report(results["memory"], table)
    if "tools" in results:  # benches/tools.py prints its own table
        importlib.import_module("benches.tools").report(results["tools"], table)
    if "finetune" in results:
        r = results["finetune"]
        table(f"finetune: config/sft_demo.py from one base, {dtype}, {device} ({train_steps - train_warmup} steps "
              f"timed per run)", ["", "trainable parameters", "peak RSS", "ms/step", "run medians, ms"],
              [[kind, f"{m['trainable_params']:,} ({m['trainable_params'] / m['total_params']:.2%})",
                f"{m['peak_rss_mb']:,.0f} MB" if m["peak_rss_mb"] else "-", f"{m['ms_per_step']:.1f}",
                ", ".join(f"{x:.0f}" for x in m["run_medians_ms"])] for kind, m in r.items()])
    table("targets:", ["target", "measured", "verdict"],
          [[t, m, "met" if ok else "MISSED"] for t, m, ok in results["targets"]])


# -----------------------------------------------------------------------------
if measures == ["plain_loop"]:  # benches/train.py runs bench.py this way, for the plain loop in a fresh process
    from benches.train import plain_loop
    print(json.dumps(plain_loop(cfg)))
    sys.exit()
info, results = machine(), {}
with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
    for name in measures:
        print(f"measuring {name}...", flush=True)
        results[name] = getattr(importlib.import_module(f"benches.{name}"), f"bench_{name}")(tmp, cfg)
info["load_average_after"] = list(os.getloadavg())
results["targets"] = targets(results)
report(info, results)
if output:
    with open(output, "w") as f:
        json.dump(dict(machine=info, settings=settings, results=results), f, indent=2)
    print(f"wrote {output}")
