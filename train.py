"""
Train a GPT: pretraining on token shards, supervised fine-tuning (SFT) on prompt/completion JSONL, chat
fine-tuning on conversations (then talk to it with chat.py), or DPO on preference pairs. Each of these
objectives is one file in nash/objectives/ (its data, loss, metrics and log line); this is the one loop.

    python train.py                                        # CPU quick start: a small model on Shakespeare
    python train.py config/train_100m.py --batch_size=32    # GPT-2 124M on one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_100m.py

The settings are the plain names below. Config files (exec'd Python) and --key=value flags override
them, left to right; `python train.py --help` lists them all with their defaults.
"""
import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, fields

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import model as model_file
from configurator import check_output_dir, check_range, configure
from model import GPT, GPTConfig
from nash import lora, tokenizer
from nash import tasks as downstream
from nash.checkpoint import base_source, load_checkpoint, model_from_checkpoint, pretrained_model, resolve_source, \
    run_files, save_checkpoint
from nash.common import autocast, fail, pick_device, pick_dtype
from nash.data import dataset_dir
from nash.objectives import OBJECTIVES

# -----------------------------------------------------------------------------
# settings
# model shape: every field of model.py's GPTConfig is a setting of the same name (--help shows its comment);
# the CPU quick start's small model here (a checkpoint or GPT-2 in init_from brings its own)
MODEL_SETTINGS = tuple(f.name for f in fields(GPTConfig) if f.name not in ("max_seq_len", "dropout"))
globals().update({f.name: f.default for f in fields(GPTConfig)})
__settings_from__ = model_file.__file__  # (where --help finds their comments)
n_layers, n_heads, d_model, d_ff = 4, 4, 128, 512
max_seq_len = 128  # context length, and the length of the training windows (fine-tuning may shorten it)
vocab_size = 0  # 0 = the tokenizer's: the dataset's (its meta.json: 50257 for GPT-2's BPE), or GPT-2's for SFT
dropout = 0.0  # the quick start sees its data about once: nothing to regularise yet
# optimisation
batch_size = 8  # sequences per micro-step, per process
grad_accum_steps = 1  # micro-steps per optimizer step, summed over all processes
learning_rate = 2e-3  # peak learning rate, after warmup
min_lr = None  # end of the cosine decay; None = learning_rate / 10
weight_decay = 0.1  # on weight matrices only
beta1 = 0.9
beta2 = 0.95
max_steps = 400  # optimizer steps
warmup_steps = 40  # linear warmup from 0 to learning_rate
lr_decay_steps = 0  # the step where the cosine reaches min_lr; 0 = max_steps (set it to stop a run early on schedule)
grad_clip = 1.0  # clip the global gradient norm to this; 0 = off
optimizer = "adamw"  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
seed = 1337  # batches and dropout are a pure function of (seed, step, rank)
# evaluation, logging, checkpoints
eval_interval = 100  # steps between evals (and one at the end); 0 = no evals
eval_iters = 10  # val batches per eval, the same ones each time; as many train batches for train_loss
log_interval = 10  # steps between console lines
checkpoint_interval = 100  # steps between saves of out_dir/ckpt.pt (and one at the end); 0 = never save
keep_checkpoints = False  # also keep out_dir/ckpt_<step>.pt at each checkpoint_interval
early_stopping_patience = 0  # stop after this many evals without a better val loss; 0 = never
eval_tasks = ""  # downstream benchmarks at each eval, comma-separated (see tasks/), e.g. hellaswag,arc_easy
eval_task_examples = 200  # the first this many items of each of eval_tasks
task_data = ""  # eval_tasks: a folder of <task>.jsonl in the hub datasets' row schema; "" = the Hugging Face hub
# data
task = "pretrain"  # the objective (nash/objectives/): pretrain (token shards) | sft (prompt/completion JSONL) | chat (conversations) | dpo (preferences) | rl (rewards from reward_task's answer check) | verifier (a score head judging reward_task's answers)
dataset = "shakespeare"  # folder name under data/
data_dir = ""  # the dataset's folder, if not data/<dataset>
# LoRA (lora.py), for the fine-tuning tasks: small adapters train, the base weights stay frozen
lora_rank = 0  # rank of the adapters; 0 = off (every weight trains)
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank (peft's convention)
lora_dropout = 0.0  # dropout on the adapters' input
lora_targets = "attention"  # attention (fused q,k,v + output projection) | mlp (up/gate + down projection) | all
# DPO (nash/objectives/dpo.py), task=dpo
dpo_beta = 0.1  # strength of the pull towards the reference model (TRL's beta); rewards are beta * log-ratios
# RL (nash/objectives/rl.py), task=rl: batch_size questions a micro-step, rl_samples answers to each
reward_task = "arith"  # the generated-answer task whose train questions are asked and whose answer check is the reward
reward_metric = ""  # which of the check's metrics is the reward (RL, verifier); "" = the task's first (arith: correct, every line of working true and the final number; exact_match: the final number alone)
rl_samples = 8  # answers sampled per question, a group (TRL's num_generations; nanochat samples 16)
rl_max_new_tokens = 64  # the longest answer sampled
rl_temperature = 1.0  # sampling temperature of the answers
rl_top_k = 0  # sample from the top k tokens only; 0 = all (nanochat's 50 narrows exploration)
rl_std_normalize = False  # divide the advantages by their group's std (GRPO's); False: reward - mean (nanochat)
rl_updates = 1  # optimizer steps on each batch of rollouts; above 1 the PPO clip keeps the later ones close
rl_clip = 0.2  # PPO's epsilon: the probability ratio to the sampling policy is clipped to 1 +- rl_clip
rl_kl_beta = 0.0  # weight of the KL penalty to the starting model (TRL's beta; 0 as TRL and nanochat: no reference)
# verifier (nash/objectives/verifier.py), task=verifier: answers to reward_task's questions, sampled once, labelled by its check
verifier_samples = 8  # answers sampled per question from init_from (the generator), for training and for val
verifier_questions = 0  # train questions to sample answers to, the first ones; 0 = all (val: eval_iters * batch_size test questions)
verifier_temperature = 1.0  # sampling temperature of those answers (a mix of right and wrong is what it learns from)
verifier_max_new_tokens = 64  # the longest answer sampled
# run
out_dir = "out"
init_from = "scratch"  # scratch | resume | gpt2 ... gpt2-xl | a Hugging Face folder | a checkpoint file or run folder
overwrite = False  # allow a new run to replace the checkpoints of an earlier one in out_dir
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (float16 on CUDA, float32 elsewhere) | float32 | bfloat16 | float16
compile = False  # torch.compile the model (first steps are slow while it compiles)
# Weights & Biases (also works with WANDB_MODE=offline)
wandb_enabled = False
wandb_project = "nash-llm"
wandb_run_name = ""  # "" = the name of out_dir
given = set()  # the settings a config file or flag chose (the others are defaults a checkpoint may replace)
settings = configure(globals(), given=given)
# -----------------------------------------------------------------------------
# checks that need no data or model: one clear line each, before any work

if task not in OBJECTIVES:
    fail(f"task={task!r} should be one of {', '.join(OBJECTIVES)} (the objectives in nash/objectives/)")
objective = OBJECTIVES[task](settings)  # (its log goes through `log` once we know which process prints)
if optimizer not in ("adamw", "muon"):
    fail(f"optimizer={optimizer!r} should be 'adamw' or 'muon'")
for name in ("batch_size", "grad_accum_steps", "max_steps", "max_seq_len", "eval_iters", "log_interval"):
    check_range(name, settings[name], low=1)
for name in ("eval_interval", "checkpoint_interval", "grad_clip", "weight_decay", "learning_rate", "warmup_steps",
             "lr_decay_steps", "early_stopping_patience"):
    check_range(name, settings[name], low=0, hint="0 turns it off" if name != "learning_rate" else "")
for name in ("beta1", "beta2", "dropout"):
    check_range(name, settings[name], low=0, below=1)
check_range("seed", seed, low=0, below=2**63)
if n_kv_heads is not None:
    check_range("n_kv_heads", n_kv_heads, low=1, hint="None means n_heads; fewer heads share keys and values")
if min_lr is None:
    min_lr = learning_rate / 10
check_range("min_lr", min_lr, low=0, high=learning_rate, hint=f"at most learning_rate={learning_rate}")
check_output_dir("out_dir", out_dir)
if problem := objective.check_settings() or lora.check_settings(lora_rank, lora_alpha, lora_dropout, lora_targets):
    fail(problem)
if lora_rank and not objective.fine_tunes:
    fail(f"lora_rank > 0 is for fine-tuning a trained model; task={task} trains every weight")
if lora_rank and optimizer != "adamw":
    fail(f"LoRA adapters train with AdamW; use --optimizer=adamw (not {optimizer})")
if (lora_rank or objective.needs_trained_model) and init_from == "scratch":
    fail(f"{'LoRA' if lora_rank else f'task={task}'} starts from a trained model: set --init_from to a run folder, "
         f"a checkpoint, gpt2 or a Hugging Face folder")

# -----------------------------------------------------------------------------
# processes and devices: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE, one process per GPU
ddp = "RANK" in os.environ
rank, local_rank, world_size = 0, 0, 1
if ddp:
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if grad_accum_steps % world_size:
        fail(f"grad_accum_steps={grad_accum_steps} must be a multiple of the number of processes ({world_size}): "
             f"each process runs grad_accum_steps / {world_size} micro-steps")
device = pick_device(device)
if ddp and device.startswith("cuda"):
    device = f"cuda:{local_rank}"
    torch.cuda.set_device(device)
device_type = device.split(":")[0]
if ddp:
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
master = rank == 0  # only the first process prints, logs and saves
accum_per_rank = grad_accum_steps // world_size
dtype = pick_dtype(dtype, device_type)
if dtype == "float16" and device_type == "mps":
    fail("dtype=float16 training needs CUDA or CPU; use --dtype=float32 or bfloat16 on mps")
torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores where they exist
torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device_type, dtype)
log = objective.log = print if master else (lambda *args, **kwargs: None)


def keep_settings(source, names, where):
    """Settings fixed by where the weights come from: taken from source (so config.json tells the truth); one the
    user gave a different value is an error that names it, as it cannot apply."""
    changed = [f"{k}={settings[k]!r} ({source[k]!r} there)" for k in names if k in given and settings[k] != source[k]]
    if changed:
        fail(f"{where} fixes {', '.join(changed)}; drop those settings, or start a new run with --init_from=scratch")
    for k in names:
        settings[k] = globals()[k] = source[k]


# -----------------------------------------------------------------------------
# pretraining data comes first: its meta.json says which tokenizer (and so which vocabulary) the model needs
folder = dataset_dir(dataset, data_dir)
if master:
    objective.prepare(folder)  # pretraining prepares the embedded Shakespeare on first use
if ddp:
    dist.barrier()
data_tokenizer = objective.data_tokenizer(folder)  # None: text, encoded with the model's tokenizer

# -----------------------------------------------------------------------------
# model: from scratch, resumed, GPT-2, or a checkpoint to fine-tune; a checkpoint brings its tokenizer along
torch.manual_seed(seed)  # the same initial weights in every process
resume = None  # the checkpoint being resumed, if any
model_tokenizer = data_tokenizer or tokenizer.GPT2_SPEC  # the tokenizer the model's ids mean, saved in checkpoints
if init_from == "resume":
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        fail(f"init_from=resume but {path} does not exist; start a run with --init_from=scratch")
    resume = load_checkpoint(path, needs=("model_config", "model", "settings", "optimizers", "step", "best_val_loss",
                                          "rng"))  # what resuming reads below
    # the run's model and optimizer state only fit the run's own model and optimizer settings
    saved_shape = asdict(GPTConfig(**resume["model_config"]))  # defaults fill fields older checkpoints lack
    run = {**resume["settings"], **{k: saved_shape[k] for k in MODEL_SETTINGS}}  # the shape as saved
    keep_settings(run, MODEL_SETTINGS + ("max_seq_len", "optimizer"), f"the run resumed from {path}")
    model = model_from_checkpoint(resume, merge_lora=False, dropout=dropout)  # adapters stay apart on resume
    model_tokenizer = tokenizer.checkpoint_spec(resume)
elif init_from == "scratch":
    vocab_size = vocab_size or tokenizer.spec_vocab_size(model_tokenizer)
    if vocab_size < tokenizer.spec_vocab_size(model_tokenizer):
        fail(f"vocab_size={vocab_size} is smaller than the tokenizer's {tokenizer.spec_vocab_size(model_tokenizer)} "
             f"tokens ({model_tokenizer['name']}); leave it at 0 to take the tokenizer's")
    settings["vocab_size"] = vocab_size
    try:
        model = GPT(GPTConfig(**{f.name: settings[f.name] for f in fields(GPTConfig)}))
    except (ValueError, TypeError) as e:
        fail(f"bad model settings: {e}")
else:  # fine-tune GPT-2, a Hugging Face folder, or another run's checkpoint: its shape, a fresh optimizer, step 0
    kind, source, note = resolve_source(init_from, "best")
    if kind == "pretrained":
        model = pretrained_model(source, dropout=dropout)
        model_tokenizer = tokenizer.model_spec(None, source)  # GPT-2's, or an exported run's own
    else:
        start = load_checkpoint(source)
        model = model_from_checkpoint(start, dropout=dropout)
        model_tokenizer = tokenizer.checkpoint_spec(start)
    if "max_seq_len" not in given:
        max_seq_len = settings["max_seq_len"] = model.config.max_seq_len  # windows as long as the model's context
    keep_settings(asdict(model.config), MODEL_SETTINGS, f"the model in {source}")
    log(f"starting from {source}{note}: the model's shape comes from it")
if problem := objective.check_model(model, tokenizer.from_spec(model_tokenizer)):  # e.g. RL needs a chat model
    fail(problem)
if objective.chat:  # the chat tokens need rows: GPT-2's BPE has them past its 50257, so add those rows
    special = tokenizer.special_ids(tokenizer.from_spec(model_tokenizer))
    # the tool tokens too, except on resume: a run from before them (six chat tokens) resumes as it was
    needed = max(i for name, i in special.items() if not resume or name not in tokenizer.TOOL_TOKENS) + 1
    if model.config.vocab_size < needed:
        if lora_rank:  # LoRA freezes the embeddings: new rows could never learn, and the base would not match
            fail(f"{init_from} has no rows for the chat tokens and LoRA keeps the embeddings frozen; chat fine-tune "
                 f"it without LoRA first (or use LoRA on a model that already has them)")
        log(f"adding the chat tokens: vocab_size {model.config.vocab_size} -> {needed} (new rows start as the mean)")
        model.grow_vocab(needed)
        vocab_size = settings["vocab_size"] = needed  # config.json tells the model's true size
config = model.config
if data_tokenizer is not None and data_tokenizer != model_tokenizer:
    fail(f"{folder} was tokenised with {data_tokenizer['name']} but the model's ids are those of "
         f"{model_tokenizer['name']}; train it on data prepared with the same tokenizer (or from scratch)")
# LoRA: adapters on the frozen model (a resumed adapter run brings its own); DPO: the frozen reference
lora_info = resume.get("lora") if resume else None
wanted = {"rank": lora_rank, "alpha": lora_alpha, "dropout": lora_dropout, "targets": lora_targets}
had = {k: lora_info[k] for k in wanted} if lora_info else None
if resume and had != (wanted if lora_rank else None):
    fail(f"{out_dir} was trained with LoRA {had or 'off'}; resume it with the same LoRA settings "
         f"(the same config file and flags)")
if lora_rank and lora_info is None:
    lora_info = {**wanted, "base": base_source(init_from), "base_fingerprint": lora.fingerprint(model.state_dict())}
    lora.apply_lora(model, lora_rank, lora_alpha, lora_dropout, lora_targets)
objective.setup(model, init_from, resume, lora_info)  # e.g. DPO's frozen reference
if max_seq_len > config.max_seq_len:
    fail(f"max_seq_len={max_seq_len} is longer than the model's context ({config.max_seq_len}); it may shrink for "
         f"fine-tuning but cannot grow: lower --max_seq_len")
if master and init_from != "resume" and run_files(out_dir) and not overwrite:
    fail(f"{out_dir} already holds a run ({', '.join(run_files(out_dir))}); continue it with --init_from=resume, "
         f"replace it with --overwrite, or choose another --out_dir")

# -----------------------------------------------------------------------------
# data: batches are a pure function of (seed, step, index), so resume and DDP see the same stream
train_data, val_data = objective.load_data(folder, tokenizer.from_spec(model_tokenizer), config.vocab_size)

# downstream benchmarks (eval_tasks), loaded up front so that a data problem stops the run now, not at its first eval
task_eval = downstream.prepare(downstream.parse(eval_tasks), task_data, eval_task_examples) if master else []


def to_device(x, y):
    if device_type == "cuda":  # pinned host memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def get_batch(step, micro_step):
    index = rank * accum_per_rank + micro_step  # the global micro-batch index within the step
    return to_device(*train_data.get_batch(batch_size, max_seq_len, seed, step, index, grad_accum_steps))


# -----------------------------------------------------------------------------
# optimizer, gradient scaler, compile, DDP
model.to(device)
objective.to(device)
optimizers = model.configure_optimizers(optimizer, learning_rate, weight_decay, (beta1, beta2), device_type)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == "float16"))  # float16 needs loss scaling
step, best_val_loss, evals_without_improvement, wandb_run_id = 0, math.inf, 0, None
if resume is not None:
    for opt, opt_state in zip(optimizers, resume["optimizers"]):
        opt.load_state_dict(opt_state)
    if resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    step, best_val_loss = resume["step"], resume["best_val_loss"]
    evals_without_improvement = resume.get("evals_without_improvement", 0)
    wandb_run_id = resume.get("wandb_run_id")
    torch.set_rng_state(resume["rng"]["torch"])
    if device_type == "cuda" and resume["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
    log(f"resuming {out_dir} at step {step}")
raw_model = model  # the plain GPT, for saving and MFU
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)


def lr_multiplier(step):
    """Linear warmup to 1, then cosine decay to min_lr / learning_rate at lr_decay_steps (or max_steps)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    floor = min_lr / learning_rate if learning_rate > 0 else 0.0
    decay_end = lr_decay_steps or max_steps
    progress = min(1.0, (step - warmup_steps) / max(1, decay_end - warmup_steps))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate():
    """The objective's eval over a fixed set of val batches and of train batches, the same ones every time, so
    numbers compare across evals and runs. Batches are split over processes; their sums add up."""
    raw_model.eval()
    sums = []
    train_sample = (train_data.get_batch(batch_size, max_seq_len, seed + 1, 0, i, eval_iters) for i in range(eval_iters))
    for batches in (val_data.eval_batches(batch_size, max_seq_len, eval_iters), train_sample):
        total = None
        for i, (x, y) in enumerate(batches):
            if i % world_size == rank or total is None:  # (a process with no batch of its own adds a zeroed one)
                with ctx:
                    sums_i = objective.eval_sums(raw_model, *to_device(x, y)).float()
                total = sums_i * (i % world_size == rank) + (0 if total is None else total)
        sums.append(total)
    if ddp:
        for total in sums:
            dist.all_reduce(total)
    raw_model.train()
    return objective.eval_metrics(*sums)


# -----------------------------------------------------------------------------
# run folder: config.json, metrics.jsonl, optional Weights & Biases
tokens_per_step = batch_size * max_seq_len * grad_accum_steps
metrics_path = os.path.join(out_dir, "metrics.jsonl")
wandb_run = None
if master:
    os.makedirs(out_dir, exist_ok=True)
    if resume is None:  # a new run: the old run's files go (overwrite was checked above)
        for name in run_files(out_dir):
            os.remove(os.path.join(out_dir, name))
    run_info = {**settings, "world_size": world_size, "tokens_per_step": tokens_per_step,
                "num_params": raw_model.num_params(), "active_params": raw_model.num_params(active=True),
                "trainable_params": lora.count_trainable(raw_model)[0]}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(run_info, f, indent=2)
    if wandb_enabled:
        import wandb
        wandb_run = wandb.init(project=wandb_project, name=wandb_run_name or os.path.basename(os.path.abspath(out_dir)),
                               id=wandb_run_id, resume="allow", config=run_info, dir=out_dir)
        wandb_run_id = wandb_run.id


def log_metrics(event, **values):
    """One JSON line per event in metrics.jsonl (what compare.py reads), mirrored to wandb."""
    record = {"event": event, "step": step, "tokens": step * tokens_per_step, "time": time.time(), **values}
    with open(metrics_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if wandb_run is not None:
        wandb_run.log({f"{event}/{k}": v for k, v in values.items() if v is not None}, step=step)


def save(path, last_eval):
    """Save everything needed to continue exactly where we are; refuses to save NaN weights."""
    if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
        fail(f"the weights hold NaN or inf at step {step}; not saving over {path}")
    save_checkpoint(path, {
        "model": lora.adapter_state_dict(raw_model) if lora_info else raw_model.state_dict(),
        "model_config": asdict(config),
        "lora": lora_info, **objective.checkpoint_state(),
        "optimizers": [opt.state_dict() for opt in optimizers], "scaler": scaler.state_dict(),
        "step": step, "best_val_loss": best_val_loss, "evals_without_improvement": evals_without_improvement,
        "settings": settings, "metrics": last_eval, "wandb_run_id": wandb_run_id, "tokenizer": model_tokenizer,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else []},
    })


# Ctrl-C and SIGTERM (a cluster's preemption) finish the current step, save, and exit;
# a second Ctrl-C stops at once.
stop_signal = None


def request_stop(signum, frame):
    global stop_signal
    stop_signal = signum
    signal.signal(signum, signal.SIG_DFL)


signal.signal(signal.SIGINT, request_stop)
signal.signal(signal.SIGTERM, request_stop)


def format_duration(seconds):
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


# -----------------------------------------------------------------------------
# the training loop
active = f" ({raw_model.num_params(active=True):,} active per token)" if config.n_experts else ""
log(f"{raw_model.num_params():,} parameters{active} | {task} on {folder} | {world_size} process(es) on {device}, {dtype} | "
    f"{tokens_per_step:,} tokens per step")
if lora_info:
    trainable, total = lora.count_trainable(raw_model)[0], raw_model.num_params()  # (padding rows not counted)
    log(f"LoRA rank {lora_info['rank']} on {lora_info['targets']} of {lora_info['base']}: {trainable:,} trainable "
        f"parameters of {total:,} ({100 * trainable / total:.2f}%), the rest frozen")
model.train()
last_eval = resume.get("metrics") if resume else None
loss_sum, skipped_steps, steps_since_log, t_log, t_start = torch.zeros((), device=device), 0, 0, time.time(), time.time()
stats_sum = torch.zeros(len(objective.stats), device=device)  # the objective's statistics since the last log line
aux_sum, load_sum = torch.zeros((), device=device), 0.0  # MoE: load-balancing loss and each layer's expert load
x, y = get_batch(step, 0)
while step < max_steps:
    torch.manual_seed(hash((seed, step, rank)) % 2**63)  # dropout, like the batches, depends on (seed, step, rank)
    lr_mult = lr_multiplier(step)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
    for micro_step in range(accum_per_rank):
        last_micro_step = micro_step == accum_per_rank - 1
        # DDP all-reduces gradients on every backward; only the last micro-step needs it
        with model.no_sync() if ddp and not last_micro_step else nullcontext():
            with ctx:
                loss, stats = objective.loss(model, x, y)
                stats_sum += stats / accum_per_rank
            if config.n_experts:  # the loss includes the load balancing: log the language-model loss apart from it
                aux = raw_model.moe_aux_loss().detach() / accum_per_rank
                aux_sum, loss_sum = aux_sum + aux, loss_sum - config.moe_aux_loss_coef * aux
                load_sum = load_sum + raw_model.expert_loads() / accum_per_rank
            x, y = get_batch(step + last_micro_step, 0 if last_micro_step else micro_step + 1)  # prefetch
            scaler.scale(loss / accum_per_rank).backward()
        loss_sum += loss.detach() / accum_per_rank
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
    scale_before = scaler.get_scale() if scaler.is_enabled() else None
    for opt in optimizers:
        scaler.step(opt)  # skipped if float16 gradients overflowed
    scaler.update()
    if scaler.is_enabled() and scaler.get_scale() < scale_before:
        skipped_steps += 1
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    step += 1
    steps_since_log += 1

    if step % log_interval == 0 or step == max_steps:  # (the same steps in every process)
        if ddp:  # each process saw its share of the micro-batches: log the global batch's loss and statistics
            for total in (loss_sum, stats_sum, aux_sum) + ((load_sum,) if config.n_experts else ()):
                dist.all_reduce(total)
                total /= world_size
        train_loss = loss_sum.item() / steps_since_log
        if not math.isfinite(train_loss):
            fail(f"the training loss became {train_loss} by step {step}; lower --learning_rate, "
                 f"set --grad_clip, or use --dtype=bfloat16; the last checkpoint in {out_dir} is untouched")
        elapsed = time.time() - t_log
        dt = elapsed / steps_since_log
        tokens_per_sec = tokens_per_step / dt
        mfu = raw_model.estimate_mfu(tokens_per_sec / world_size, max_seq_len, device)
        moe = {}  # MoE: the mean load-balancing loss, and each layer's fraction of assignments per expert
        if config.n_experts:
            moe = {"aux_loss": aux_sum.item() / steps_since_log,
                   "expert_load": [[round(f, 4) for f in layer] for layer in (load_sum / steps_since_log).tolist()]}
        log(f"step {step}/{max_steps} ({100 * step / max_steps:.1f}%) | loss {train_loss:.4f} | "
            f"lr {learning_rate * lr_mult:.2e} | {dt * 1000:.0f} ms | {tokens_per_sec:,.0f} tok/s"
            + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "")
            + (f" | aux {moe['aux_loss']:.4f}, busiest expert {max(map(max, moe['expert_load'])):.3f}" if moe else "")
            + (f" | skipped {skipped_steps}" if skipped_steps else "")
            + (" | " + objective.describe(objective.metrics(stats_sum / steps_since_log)) if objective.stats else "")
            + f" | eta {format_duration(dt * (max_steps - step))}")
        if master:
            log_metrics("train", loss=train_loss, lr=learning_rate * lr_mult,
                        grad_norm=grad_norm.item() if grad_clip > 0 else None, ms_per_step=1000 * dt,
                        tokens_per_sec=tokens_per_sec, mfu=mfu, skipped_steps=skipped_steps, **moe,
                        **objective.metrics(stats_sum / steps_since_log))
        loss_sum.zero_()
        stats_sum.zero_()
        aux_sum, load_sum = aux_sum.zero_(), 0.0
        steps_since_log, t_log = 0, time.time()

    stop_early = False
    if eval_interval and (step % eval_interval == 0 or step == max_steps):
        t_eval = time.time()
        last_eval, task_metrics = evaluate(), {}
        if task_eval:  # on the first process only: the others wait for it at the next gradient all-reduce
            task_metrics = downstream.flat(downstream.run(task_eval, raw_model, tokenizer.from_spec(model_tokenizer),
                                                          batch_size, ctx, progress=False, chat=objective.chat))
            last_eval.update(task_metrics)
        improved = last_eval["val_loss"] < best_val_loss
        if improved:
            best_val_loss, evals_without_improvement = last_eval["val_loss"], 0
        else:
            evals_without_improvement += 1
        log(f"eval step {step}: val loss {last_eval['val_loss']:.4f} | {objective.describe_eval(last_eval)} | "
            f"train loss {last_eval['train_loss']:.4f}"
            + "".join(f" | {k} {v:.4f}" for k, v in task_metrics.items())
            + (" | best so far" if improved else f" | no better for {evals_without_improvement} eval(s)"))
        if master:
            log_metrics("eval", **last_eval)
            if improved:
                save(os.path.join(out_dir, "best.pt"), last_eval)
        stop_early = 0 < early_stopping_patience <= evals_without_improvement
        if stop_early:
            log(f"early stopping: val loss has not improved for {evals_without_improvement} evals")
        t_log += time.time() - t_eval  # eval time does not count as step time
    stop_now = stop_signal is not None or stop_early  # early stopping is the same in every process (evals are all-reduced)
    if ddp and step % log_interval == 0:  # a signal may reach the processes at different steps: agree on one
        stopping = torch.tensor(float(stop_now), device=device)
        dist.all_reduce(stopping, op=dist.ReduceOp.MAX)  # (not every step: it would stall the GPU pipeline)
        stop_now = bool(stopping.item())
    elif ddp:
        stop_now = stop_early
    if checkpoint_interval and (step % checkpoint_interval == 0 or step == max_steps or stop_now):
        if master:
            save(os.path.join(out_dir, "ckpt.pt"), last_eval)
            if keep_checkpoints and step % checkpoint_interval == 0:
                save(os.path.join(out_dir, f"ckpt_{step:07d}.pt"), last_eval)
    if stop_now:
        break

if master:
    how = "stopped by signal" if stop_signal is not None else "finished"
    best = (f"best val loss {best_val_loss:.4f}" if math.isfinite(best_val_loss)
            else "no eval ran" + ("" if eval_interval else " (eval_interval=0)"))
    log(f"{how} at step {step} after {format_duration(time.time() - t_start)}; {best}; "
        f"checkpoints in {out_dir} (sample with `python sample.py --out_dir={out_dir}`)")
if wandb_run is not None:
    wandb_run.finish()
if ddp:
    dist.destroy_process_group()
if stop_signal is not None:
    raise SystemExit(128 + stop_signal)  # the conventional exit code of a process stopped by a signal
