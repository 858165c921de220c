"""
Train a GPT: pretraining on token shards, supervised fine-tuning (SFT) on prompt/completion JSONL, chat fine-tuning
on conversations (then talk to it with chat.py), DPO on preference pairs, RL on verifiable rewards, or a verifier.
Each objective is one file in nash/objectives/ (its settings, data, loss, metrics and log line); this is the one loop.

    python train.py                                        # CPU quick start: a small model on Shakespeare
    python train.py config/train_100m.py --batch_size=32    # GPT-2 124M on one GPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_100m.py [--fsdp=True]

The settings are the plain names below. Config files (exec'd Python) and --key=value flags override
them, left to right; `python train.py --help` lists them all with their defaults.
"""
import inspect
import json
import math
import os
import time
from dataclasses import asdict, fields

import torch
import torch.distributed as dist

import model as model_file
from configurator import configure, setting_groups
from model import GPTConfig
from nash import distributed, lora, tasks, tokenizer
from nash.checkpoint import append_line, lock_run_folder, run_files, save_checkpoint
from nash.common import autocast, estimate_mfu, fail, pick_device, pick_dtype
from nash.data import dataset_dir
from nash.moe_log import ExpertLog
from nash.objectives import OBJECTIVES
from nash.run import LORA, StopSignals, build_model, check_settings, data_warning, format_duration, pick_objective, \
    restore, resume_run, start_run_folder

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
objective = "pretrain"  # what is trained (nash/objectives/): pretrain (token shards) | sft (prompt/completion JSONL) | chat (conversations) | dpo (preferences) | rl (rewards from reward_task's answer check) | verifier (a score head judging reward_task's answers)
dataset = "shakespeare"  # folder name under data/
data_dir = ""  # the dataset's folder, if not data/<dataset>
# run
out_dir = "out"
init_from = "scratch"  # scratch | resume | gpt2 ... gpt2-xl | a Hugging Face folder | a checkpoint file or run folder
overwrite = False  # allow a new run to replace the checkpoints of an earlier one in out_dir
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (float16 on CUDA, float32 elsewhere) | float32 | bfloat16 | float16
compile = False  # torch.compile the model (first steps are slow while it compiles)
fsdp = False  # shard weights, gradients and optimizer state over the torchrun processes (FSDP2; docs/distributed.md); False = DDP
# Weights & Biases (also works with WANDB_MODE=offline)
wandb_enabled = False
wandb_project = "nash-llm"
wandb_run_name = ""  # "" = the name of out_dir
# what a resumed run (--init_from=resume) may change: when it logs, evaluates, saves and stops, where it runs, and
# its learning-rate schedule (lowered after a loss spike); every other setting is the run's own
MID_RUN_SAFE = ("max_steps", "learning_rate", "min_lr", "warmup_steps", "lr_decay_steps", "grad_clip", "eval_interval",
                "log_interval", "checkpoint_interval", "keep_checkpoints", "early_stopping_patience", "eval_tasks",
                "eval_task_examples", "out_dir", "overwrite", "device", "dtype", "compile", "wandb_enabled",
                "wandb_project", "wandb_run_name")
# each objective's own settings are a block at the top of its file (nash/objectives/), LoRA's in nash/lora.py: merged
# here, they are flat --key=value settings like the ones above, and --help lists them under their headings
SETTING_GROUPS = setting_groups({LORA: lora, **{f"objective={k}": inspect.getmodule(v) for k, v in OBJECTIVES.items()}})
for _, block in SETTING_GROUPS.values():
    globals().update(block)
given = set()  # the settings a config file or flag chose (the others are defaults a checkpoint may replace)
settings = configure(globals(), given=given, groups=SETTING_GROUPS, renamed={"task": "objective"})
resume = None  # the checkpoint being resumed, if any
if init_from == "resume":  # the run in out_dir goes on as it was: its settings, checked before anything is written
    resume, settings = resume_run(out_dir, settings, given, MID_RUN_SAFE, MODEL_SETTINGS)
    globals().update(settings)  # (init_from is now where the run started: DPO's reference and the verifier need it)
settings, objective = pick_objective(settings, given, SETTING_GROUPS, OBJECTIVES)  # its log is `log`, below
check_settings(settings, objective)  # one clear line for a bad setting, before any work
min_lr = learning_rate / 10 if min_lr is None else min_lr

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

# -----------------------------------------------------------------------------
# pretraining data comes first: its meta.json says which tokenizer (and so which vocabulary) the model needs
folder = dataset_dir(dataset, data_dir)
if master:
    objective.prepare(folder)  # pretraining prepares the embedded Shakespeare on first use
if ddp:
    dist.barrier()
data_tokenizer = objective.data_tokenizer(folder)  # None: text, encoded with the model's tokenizer
# model: from scratch, resumed, GPT-2, or a checkpoint to fine-tune (nash/run.py); LoRA adapters put on
torch.manual_seed(seed)  # the same initial weights in every process
model, model_tokenizer, lora_info = build_model(settings, given, objective, resume, folder, data_tokenizer,
                                                MODEL_SETTINGS, log, on_meta=fsdp and rank > 0)
config, max_seq_len = model.config, settings["max_seq_len"]  # (fine-tuning takes the model's context by default)
objective.setup(model, init_from, resume, lora_info)  # e.g. DPO's frozen reference
if master and resume is None and run_files(out_dir) and not overwrite:
    fail(f"{out_dir} already holds a run ({', '.join(run_files(out_dir))}); continue it with --init_from=resume, "
         f"replace it with --overwrite, or choose another --out_dir")

# -----------------------------------------------------------------------------
# data: batches are a pure function of (seed, step, index), so resume and DDP see the same stream
train_data, val_data = objective.load_data(folder, tokenizer.from_spec(model_tokenizer), config.vocab_size)
if warning := data_warning(train_data, settings, folder):  # a tiny dataset for the steps: it memorises it
    log(warning)

# downstream benchmarks (eval_tasks), loaded up front so that a data problem stops the run now, not at its first eval
task_eval = tasks.prepare(tasks.parse(eval_tasks), task_data, eval_task_examples) if master else []


def to_device(x, y):
    if device_type == "cuda":  # pinned host memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def get_batch(step, micro_step):
    index = rank * accum_per_rank + micro_step  # the global micro-batch index within the step
    return to_device(*train_data.get_batch(batch_size, max_seq_len, seed, step, index, grad_accum_steps))


# -----------------------------------------------------------------------------
# optimizer, gradient scaler, compile, DDP
if master:  # one run at a time in a folder (a second one stops here, naming this one's pid); then it writes there
    os.makedirs(out_dir, exist_ok=True)
    lock = lock_run_folder(out_dir)
model = distributed.shard(model, device, dtype) if fsdp else model.to(device)
objective.to(device)
optimizers = model.configure_optimizers(optimizer, learning_rate, weight_decay, (beta1, beta2), device_type)
scaler = distributed.grad_scaler(device_type, dtype == "float16", fsdp)  # float16 needs loss scaling
step, best_val_loss, evals_without_improvement, wandb_run_id = 0, math.inf, 0, None
if resume is not None:  # where the run was: the optimizers', scaler's and random state, the step and the best eval
    if fsdp or resume.get("shards"):  # a sharded checkpoint: DCP reads it into this run's shards
        distributed.load_sharded(model, optimizers, resume)
    step, best_val_loss, evals_without_improvement, wandb_run_id = restore(resume, optimizers, scaler, device_type)
    log(f"resuming {out_dir} at step {step}")
raw_model = model  # the plain GPT, for saving and MFU
if compile:
    model = torch.compile(model)
if ddp and not fsdp:
    model = distributed.ddp(model, device_type, local_rank)


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
            if fsdp or i % world_size == rank or total is None:  # (else a zeroed one; FSDP: every forward, in step)
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
    run_info = {**settings, "world_size": world_size, "tokens_per_step": tokens_per_step,
                "num_params": raw_model.num_params(), "active_params": raw_model.num_params(active=True),
                "trainable_params": lora.count_trainable(raw_model)[0]}
    start_run_folder(out_dir, resume is not None, run_info)  # config.json, written atomically
    if wandb_enabled:
        import wandb
        wandb_run = wandb.init(project=wandb_project, name=wandb_run_name or os.path.basename(os.path.abspath(out_dir)),
                               id=wandb_run_id, resume="allow", config=run_info, dir=out_dir)
        wandb_run_id = wandb_run.id


def log_metrics(event, **values):
    """One JSON line per event in metrics.jsonl (what compare.py reads), mirrored to wandb."""
    record = {"event": event, "step": step, "tokens": step * tokens_per_step, "time": time.time(), **values}
    append_line(metrics_path, json.dumps(record))
    if wandb_run is not None:
        wandb_run.log({f"{event}/{k}": v for k, v in values.items() if v is not None}, step=step)


def save(path, last_eval):
    """Save everything needed to continue exactly where we are; refuses to save NaN weights."""
    state = {
        "model_config": asdict(config), "lora": lora_info, **objective.checkpoint_state(), "scaler": scaler.state_dict(),
        "step": step, "best_val_loss": best_val_loss, "evals_without_improvement": evals_without_improvement,
        "settings": settings, "metrics": last_eval, "wandb_run_id": wandb_run_id, "tokenizer": model_tokenizer,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if device_type == "cuda" else []},
    }
    if fsdp:  # every process writes its shard (nash/distributed.py)
        return distributed.save_sharded(path, raw_model, optimizers, state)
    if not all(torch.isfinite(p).all() for p in raw_model.parameters()):
        fail(f"the weights hold NaN or inf at step {step}; not saving over {path}")
    save_checkpoint(path, {**state, "optimizers": [opt.state_dict() for opt in optimizers],
                           "model": lora.adapter_state_dict(raw_model) if lora_info else raw_model.state_dict()})


stop = StopSignals()  # Ctrl-C and SIGTERM finish the current step, save, and exit; a second one stops at once


# -----------------------------------------------------------------------------
# the training loop
active = f" ({raw_model.num_params(active=True):,} active per token)" if config.n_experts else ""
log(f"{raw_model.num_params():,} parameters{active} | {settings['objective']} on {folder} | {world_size} process(es) on {device}, {dtype} | "
    f"{tokens_per_step:,} tokens per step")
model.train()
last_eval = resume.get("metrics") if resume else None
loss_sum, skipped_steps, steps_since_log, t_log, t_start = torch.zeros((), device=device), 0, 0, time.time(), time.time()
step_time, timed_steps, start_step, memorised = 0.0, 0, step, False  # the ETA: mean step time after warm-up
stats_sum = torch.zeros(len(objective.stats), device=device)  # the objective's statistics since the last log line
experts = ExpertLog(raw_model, device)  # MoE: the load-balancing loss and the experts' loads, for the log
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
        with distributed.no_sync(model, ddp and not last_micro_step):
            with ctx:
                loss, stats = objective.loss(model, x, y)
                stats_sum += stats / accum_per_rank
            loss_sum -= experts.add(accum_per_rank)  # MoE: log the language-model loss apart from the load balancing
            x, y = get_batch(step + last_micro_step, 0 if last_micro_step else micro_step + 1)  # prefetch
            scaler.scale(loss / accum_per_rank).backward()
        loss_sum += loss.detach() / accum_per_rank
    if grad_clip > 0:
        for opt in optimizers:
            scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        grad_norm = distributed.clip_grad_norm_(raw_model.parameters(), grad_clip)  # (whole norm of sharded grads)
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
            for total in (loss_sum, stats_sum, *experts.sums()):
                dist.all_reduce(total)
                total /= world_size
        train_loss = loss_sum.item() / steps_since_log
        if not math.isfinite(train_loss):
            fail(f"the training loss became {train_loss} by step {step}; lower --learning_rate, "
                 f"set --grad_clip, or use --dtype=bfloat16; the last checkpoint in {out_dir} is untouched")
        dt = (time.time() - t_log) / steps_since_log
        if step - steps_since_log > start_step:  # (not the first log line's steps: they compile and warm up)
            step_time, timed_steps = step_time + dt * steps_since_log, timed_steps + steps_since_log
        tokens_per_sec = tokens_per_step / dt
        mfu = estimate_mfu(raw_model, tokens_per_sec / world_size, max_seq_len, device)
        moe = experts.metrics(steps_since_log)  # {} for a dense model
        log(f"step {step}/{max_steps} ({100 * step / max_steps:.1f}%) | loss {train_loss:.4f} | "
            f"lr {learning_rate * lr_mult:.2e} | {dt * 1000:.0f} ms | {tokens_per_sec:,.0f} tok/s"
            + (f" | mfu {100 * mfu:.1f}%" if mfu is not None else "")
            + experts.describe(moe)
            + (f" | skipped {skipped_steps}" if skipped_steps else "")
            + (" | " + objective.describe(objective.metrics(stats_sum / steps_since_log)) if objective.stats else "")
            + f" | eta {format_duration((step_time / timed_steps if timed_steps else dt) * (max_steps - step))}")
        if objective.zero_loss_means_memorised and abs(train_loss) < 1e-3 and not memorised:
            memorised = True  # said once: the loop goes on, as the user asked for max_steps
            log(f"warning: the training loss is {train_loss:.4f} at step {step}: the model has memorised its training "
                f"data and further steps teach it nothing; stop with Ctrl-C (it saves) or watch the val loss")
        if master:
            log_metrics("train", loss=train_loss, lr=learning_rate * lr_mult,
                        grad_norm=grad_norm.item() if grad_clip > 0 else None, ms_per_step=1000 * dt,
                        tokens_per_sec=tokens_per_sec, mfu=mfu, skipped_steps=skipped_steps, **moe,
                        **objective.metrics(stats_sum / steps_since_log))
        loss_sum.zero_()
        stats_sum.zero_()
        steps_since_log, t_log = 0, time.time()

    stop_early = False
    if eval_interval and (step % eval_interval == 0 or step == max_steps):
        t_eval = time.time()
        last_eval, task_metrics = evaluate(), {}
        if task_eval:  # on the first process only: the others wait for it at the next gradient all-reduce
            task_metrics = tasks.flat(tasks.run(task_eval, raw_model, tokenizer.from_spec(model_tokenizer),
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
        if improved and (master or fsdp):
            save(os.path.join(out_dir, "best.pt"), last_eval)
        stop_early = 0 < early_stopping_patience <= evals_without_improvement
        if stop_early:
            log(f"early stopping: val loss has not improved for {evals_without_improvement} evals")
        t_log += time.time() - t_eval  # eval time does not count as step time
    stop_now = stop.signum is not None or stop_early  # early stopping is the same in every process (evals are all-reduced)
    if ddp and step % log_interval == 0:  # a signal may reach the processes at different steps: agree on one
        stopping = torch.tensor(float(stop_now), device=device)
        dist.all_reduce(stopping, op=dist.ReduceOp.MAX)  # (not every step: it would stall the GPU pipeline)
        stop_now = bool(stopping.item())
    elif ddp:
        stop_now = stop_early
    if checkpoint_interval and (step % checkpoint_interval == 0 or step == max_steps or stop_now):
        if master or fsdp:  # (FSDP: every process saves its shard)
            save(os.path.join(out_dir, "ckpt.pt"), last_eval)
            if keep_checkpoints and step % checkpoint_interval == 0:
                save(os.path.join(out_dir, f"ckpt_{step:07d}.pt"), last_eval)
    if stop_now:
        break

if master:
    how = "stopped by signal" if stop.signum is not None else "finished"
    best = (f"best val loss {best_val_loss:.4f}" if math.isfinite(best_val_loss)
            else "no eval ran" + ("" if eval_interval else " (eval_interval=0)"))
    log(f"{how} at step {step} after {format_duration(time.time() - t_start)}; {best}; "
        f"checkpoints in {out_dir}; {objective.next_step.format(**settings)}")
if wandb_run is not None:
    wandb_run.finish()
if ddp:
    dist.destroy_process_group()
if stop.signum is not None:
    raise SystemExit(128 + stop.signum)  # the conventional exit code of a process stopped by a signal
