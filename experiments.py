"""
The measurements behind the README's Mixture-of-Experts and attention-sink tables: small models trained by
train.py the same way (same data, steps, batches, seed), side by side, on the embedded Shakespeare, on a CPU.

    python experiments.py --what=moe      # 8 experts top-2 against the dense MLP of the same active size
    python experiments.py --what=sinks    # perplexity at 4x the training context, with and without sinks

- moe: a dense model (MLP hidden size dense_d_ff) and a MoE model whose n_experts experts each have
  dense_d_ff / experts_top_k hidden units, so a token goes through as many MLP weights in both. Final val
  loss, training tokens/s (median over the logged intervals, the first left out), and the peak resident
  memory of the train.py process.
- sinks: two RoPE models, without and with attn_sinks learned sink tokens, trained on windows of
  sink_seq_len tokens. Then val text length_factor times as long, every token scored (a) with the exact
  sliding window (each token predicted from the sink_seq_len tokens before it, recomputed), (b) with the
  rolling KV cache keeping nothing but the recent window, (c) with the rolling cache keeping the sinks: the
  learned ones, or for the model without, its first keep_first tokens (StreamingLLM). Perplexity inside the
  first window and past it. (b) is what a plain sliding KV cache gives; StreamingLLM found it collapses.
Runs go to out_dir/<name>; the tables are printed and written to out_dir/experiments.json.
"""
import json
import math
import os
import subprocess
import sys
from statistics import median

import numpy as np
import torch
import torch.nn.functional as F

from nash.checkpoint import load_checkpoint, model_from_checkpoint
from configurator import configure, fail
from nash.data import TokenShards, dataset_dir, ensure_prepared
from nash.kv_cache import RollingKVCache

# -----------------------------------------------------------------------------
# settings (python experiments.py --help lists them)
what = "moe,sinks"  # which experiments, comma-separated: moe, sinks
out_dir = "out/experiments"  # the runs and experiments.json go here
dataset = "shakespeare"  # a folder under data/ (the embedded corpus is prepared on first use)
data_dir = ""  # the dataset's folder, if not data/<dataset>
# both: the model and training (train.py's quick start, shorter)
n_layers = 4
n_heads = 4
d_model = 128
batch_size = 8
max_steps = 150
warmup_steps = 15
learning_rate = 2e-3
eval_iters = 20  # val batches for the final val loss
seed = 1337
# moe
moe_seq_len = 64
dense_d_ff = 512  # the dense model's MLP; each expert gets dense_d_ff / experts_top_k
n_experts = 8
experts_top_k = 2
# sinks
sink_seq_len = 64  # the training context (short, so that 4x of it stays cheap to score)
attn_sinks = 1  # learned sink tokens of the second model (StreamingLLM pre-trains with one)
length_factor = 4  # the scored text is this many times the training context
eval_sequences = 8  # val texts scored, evenly spaced over the val split
keep_first = 4  # first tokens kept by the rolling cache of the model without learned sinks (StreamingLLM: 4)
settings = configure(globals())
# -----------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))
for name in what.split(","):
    if name not in ("moe", "sinks"):
        fail(f"what={what!r}: unknown experiment {name!r}; choose from moe, sinks")
if dense_d_ff % experts_top_k:
    fail(f"dense_d_ff={dense_d_ff} must be divisible by experts_top_k={experts_top_k} (experts of equal active size)")
ensure_prepared(dataset, data_dir)
folder = dataset_dir(dataset, data_dir)

# train.py in a child process that reports its own peak RSS at the end (a child's ru_maxrss read from here
# would start from this process's memory at fork)
TRAIN = ("import resource, runpy, sys; sys.argv[0] = 'train.py'; runpy.run_path('train.py', run_name='__main__'); "
         "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")


def train_pair(a, b):
    """Train two models at the same time, (name, flags) each, one thread each: load from other processes then
    hits both alike, which keeps their tokens/s comparable on a shared machine. Their results, in order."""
    procs = [start_training(name, *flags) for name, flags in (a, b)]
    return [finish_training(*p) for p in procs]


def start_training(name, *flags):
    out = os.path.join(out_dir, name)
    args = [f"--n_layers={n_layers}", f"--n_heads={n_heads}", f"--d_model={d_model}", f"--batch_size={batch_size}",
            f"--max_steps={max_steps}", f"--warmup_steps={warmup_steps}", f"--learning_rate={learning_rate}",
            f"--seed={seed}", f"--eval_iters={eval_iters}", f"--eval_interval={max_steps}", "--dropout=0.0",
            f"--checkpoint_interval={max_steps}", f"--log_interval={max(1, max_steps // 10)}", f"--dataset={dataset}",
            f"--data_dir={folder}", f"--out_dir={out}", "--overwrite", *flags]
    print(f"training {name}: {' '.join(flags)}", file=sys.stderr)
    proc = subprocess.Popen([sys.executable, "-c", TRAIN, *args], cwd=HERE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return name, out, proc


def finish_training(name, out, proc):
    """Wait for a training run; its results from metrics.jsonl and the process."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        lines = (stderr or stdout).strip().splitlines()
        fail(f"training {name} failed: {lines[-1] if lines else proc.returncode}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        events = [json.loads(line) for line in f]
    rates = [e["tokens_per_sec"] for e in events if e["event"] == "train"]
    return {"val_loss": [e for e in events if e["event"] == "eval"][-1]["val_loss"],
            "tokens_per_sec": median(rates[1:] or rates),  # the first interval includes the start-up
            "peak_rss_mb": int(stdout.split("peak_rss_kb")[-1]) / 1024,
            "out_dir": out, "last_train": [e for e in events if e["event"] == "train"][-1]}


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def moe_experiment():
    common = [f"--max_seq_len={moe_seq_len}"]
    dense, moe = train_pair(("dense", [*common, f"--d_ff={dense_d_ff}"]),
                            ("moe", [*common, f"--d_ff={dense_d_ff // experts_top_k}", f"--n_experts={n_experts}",
                                     f"--experts_top_k={experts_top_k}"]))
    rows = []
    for name, r in (("dense", dense), (f"MoE {n_experts} experts top-{experts_top_k}", moe)):
        info = json.load(open(os.path.join(r["out_dir"], "config.json")))
        r.update(num_params=info["num_params"], active_params=info["active_params"])
        rows.append([name, f"{r['num_params']:,}", f"{r['active_params']:,}", f"{r['val_loss']:.4f}",
                     f"{r['tokens_per_sec']:,.0f}", f"{r['peak_rss_mb']:,.0f}"])
    load = moe["last_train"].get("expert_load")
    print(table(["model", "params", "active params", "val loss", "train tokens/s", "peak RSS MB"], rows))
    if load:
        print(f"MoE expert load at the end (fraction of assignments per expert, uniform = {1 / n_experts:.3f}): "
              + "; ".join(f"layer {i}: " + " ".join(f"{f:.2f}" for f in layer) for i, layer in enumerate(load)))
    return {"dense": dense, "moe": moe}


@torch.no_grad()
def nll_sliding(model, x, y, T):
    """(a) the exact sliding window: token t predicted from the (up to) T tokens ending at t, recomputed."""
    logits, _ = model(x[:, :T])
    nll = [F.cross_entropy(logits.transpose(1, 2), y[:, :T], reduction="none")]
    for t in range(T, x.size(1)):
        logits, _ = model(x[:, t - T + 1:t + 1])
        nll.append(F.cross_entropy(logits[:, -1], y[:, t], reduction="none")[:, None])
    return torch.cat(nll, dim=1)


@torch.no_grad()
def nll_rolling(model, x, y, keep):
    """(b), (c) the rolling KV cache, fed one token at a time (what generation past the context does)."""
    cache = RollingKVCache.for_config(model.config, keep)
    nll = [F.cross_entropy(model.next_logits(x[:, t:t + 1], cache), y[:, t], reduction="none")
           for t in range(x.size(1))]
    return torch.stack(nll, dim=1)


def sinks_experiment():
    T = sink_seq_len
    common = [f"--max_seq_len={T}", "--pos_emb=rope", f"--d_ff={4 * d_model}",
              f"--batch_size={batch_size * moe_seq_len // T}"]  # as many tokens per step as the moe runs
    plain, sinks = train_pair(("no_sinks", common), ("sinks", [*common, f"--attn_sinks={attn_sinks}"]))
    runs = {"no sinks": plain, f"{attn_sinks} learned sink(s)": sinks}
    val = TokenShards(folder, "val")
    L = length_factor * T
    if val.num_tokens < L + 1:
        fail(f"the val split of {folder} has {val.num_tokens} tokens, fewer than length_factor * sink_seq_len + 1")
    x, y = val.read(np.linspace(0, val.num_tokens - L - 1, eval_sequences).astype(np.int64), L)
    rows, results = [], {}
    for name, run in runs.items():
        model = model_from_checkpoint(load_checkpoint(os.path.join(run["out_dir"], "ckpt.pt"))).eval()
        sinks_kept = f"{attn_sinks} learned" if model.config.attn_sinks else f"first {keep_first} tokens"
        methods = {"(a) sliding window, recomputed": nll_sliding(model, x, y, T),
                   "(b) rolling cache, recent tokens only": nll_rolling(model, x, y, keep=0),
                   f"(c) rolling cache + sinks ({sinks_kept})":
                       nll_rolling(model, x, y, keep=model.config.attn_sinks or keep_first)}
        for method, nll in methods.items():
            inside, past = math.exp(nll[:, :T].mean()), math.exp(nll[:, T:].mean())
            results[f"{name}: {method}"] = {"ppl_first_window": inside, "ppl_past_context": past,
                                            "val_loss_trained": run["val_loss"]}
            rows.append([name, method, f"{inside:.2f}", f"{past:.2f}"])
    print(table(["model", "scoring", f"ppl tokens 0-{T - 1}", f"ppl tokens {T}-{L - 1} (past the context)"], rows))
    return {"runs": runs, "perplexity": results}


results = {"settings": settings}
if "moe" in what:
    results["moe"] = moe_experiment()
if "sinks" in what:
    results["sinks"] = sinks_experiment()
results["load_average"] = os.getloadavg()
with open(os.path.join(out_dir, "experiments.json"), "w") as f:
    json.dump(results, f, indent=2)
print(f"(load average {os.getloadavg()[0]:.1f}; written to {os.path.join(out_dir, 'experiments.json')})")
