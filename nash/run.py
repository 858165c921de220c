"""
The plumbing of train.py's setup, so that train.py holds its settings and its loop: a resumed run's settings, the
checks of the settings, the model a run starts from, the run folder (its lock, config.json) and the stop signals.
Each function fails with one clear `error:` line (nash.common.fail) on bad input, before anything is written.
"""
import json
import os
import signal
from dataclasses import asdict, fields

import torch

from configurator import check_output_dir, check_range
from model import GPT, GPTConfig
from nash import distributed, hf, lora, tokenizer
from nash.checkpoint import base_source, continue_settings, load_checkpoint, model_from_checkpoint, \
    pretrained_model, resolve_source, run_files, run_settings, write_atomically
from nash.common import fail

LORA = "LoRA, for the fine-tuning objectives"  # the heading of LoRA's settings (nash/lora.py) in --help


def resume_run(out_dir, settings, given, safe, model_settings):
    """(the latest checkpoint in out_dir, the settings to go on with): the run's own, but for the safe ones given.
    The model's shape is read from the checkpoint's model_config (defaults fill fields newer than it)."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        fail(f"init_from=resume but {path} does not exist; start a run with --init_from=scratch")
    state = load_checkpoint(path, needs=("model_config", "model", "settings", "optimizers", "step", "best_val_loss",
                                         "rng"))  # what resuming reads
    shape = asdict(GPTConfig(**state["model_config"]))
    saved = {**run_settings(state), **{k: shape[k] for k in model_settings}}
    # init_from=resume is how to get here: the run keeps where it started from; out_dir is always where it is now
    return state, continue_settings(saved, settings, given - {"init_from"} | {"out_dir"}, safe, out_dir)


def pick_objective(settings, given, groups, objectives):
    """The settings this run reads (the loop's, LoRA's and its objective's block: config.json holds those), and the
    objective built on them. A setting of another objective's block that a flag or file gave is an error."""
    name = settings["objective"]
    if name not in objectives:
        fail(f"objective={name!r} should be one of {', '.join(objectives)} (the files in nash/objectives/)")
    owner = {k: heading for heading, (_, block) in groups.items() for k in block}
    mine = {k for heading in (LORA, f"objective={name}") for k in groups.get(heading, ("", {}))[1]}
    for k in sorted(given & set(owner) - mine):  # (reward_task is both RL's and the verifier's)
        fail(f"{k} is a setting of {owner[k]}, and this run trains objective={name}; drop it")
    settings = {k: v for k, v in settings.items() if k not in owner or k in mine}
    return settings, objectives[name](settings)


def check_settings(s, objective):
    """The checks that need no data or model: one clear line each, before any work."""
    if s["optimizer"] not in ("adamw", "muon"):
        fail(f"optimizer={s['optimizer']!r} should be 'adamw' or 'muon'")
    if s["fsdp"] and (problem := distributed.check_fsdp(s, "RANK" in os.environ)):
        fail(problem)
    for name in ("batch_size", "grad_accum_steps", "max_steps", "max_seq_len", "eval_iters", "log_interval"):
        check_range(name, s[name], low=1)
    for name in ("eval_interval", "checkpoint_interval", "grad_clip", "weight_decay", "learning_rate", "warmup_steps",
                 "lr_decay_steps", "early_stopping_patience"):
        check_range(name, s[name], low=0, hint="0 turns it off" if name != "learning_rate" else "")
    for name in ("beta1", "beta2", "dropout"):
        check_range(name, s[name], low=0, below=1)
    check_range("seed", s["seed"], low=0, below=2**63)
    if s["n_kv_heads"] is not None:
        check_range("n_kv_heads", s["n_kv_heads"], low=1, hint="None means n_heads; fewer heads share keys and values")
    if s["min_lr"] is not None:
        check_range("min_lr", s["min_lr"], low=0, high=s["learning_rate"], hint=f"at most learning_rate={s['learning_rate']}")
    check_output_dir("out_dir", s["out_dir"])
    lora_rank = s["lora_rank"]
    if problem := objective.check_settings() or lora.check_settings(lora_rank, s["lora_alpha"], s["lora_dropout"],
                                                                    s["lora_targets"]):
        fail(problem)
    if lora_rank and not objective.fine_tunes:
        fail(f"lora_rank > 0 is for fine-tuning a trained model; objective={s['objective']} trains every weight")
    if lora_rank and s["optimizer"] != "adamw":
        fail(f"LoRA adapters train with AdamW; use --optimizer=adamw (not {s['optimizer']})")
    if (lora_rank or objective.needs_trained_model) and s["init_from"] == "scratch":
        who = "LoRA" if lora_rank else f"objective={s['objective']}"
        fail(f"{who} starts from a trained model: set --init_from to a run folder, a checkpoint, gpt2 or a Hugging "
             f"Face folder")


def keep_settings(s, given, source, names, where):
    """Settings fixed by where the weights come from: taken from source (so config.json tells the truth); one the
    user gave a different value is an error that names it, as it cannot apply."""
    changed = [f"{k}={s[k]!r} ({source[k]!r} there)" for k in names if k in given and s[k] != source[k]]
    if changed:
        fail(f"{where} fixes {', '.join(changed)}; drop those settings, or start a new run with --init_from=scratch")
    s.update({k: source[k] for k in names})


def build_model(s, given, objective, resume, folder, data_tokenizer, model_settings, log, on_meta=False):
    """(model, the tokenizer spec its ids mean, LoRA info or None): from scratch, resumed, GPT-2 or a Hugging Face
    folder, or another run's checkpoint to fine-tune (which brings its tokenizer along); the chat tokens' rows added
    where the objective talks in chat; LoRA adapters put on. s (the settings) is updated to the model's truth.
    on_meta: a model from scratch is only sketched on the meta device (FSDP's other processes take the first one's
    weights, nash/distributed.py)."""
    model_tokenizer = data_tokenizer or tokenizer.GPT2_SPEC
    if resume is not None:
        model = model_from_checkpoint(resume, merge_lora=False, dropout=s["dropout"])  # adapters stay apart
        model_tokenizer = tokenizer.checkpoint_spec(resume)
    elif s["init_from"] == "scratch":
        s["vocab_size"] = s["vocab_size"] or tokenizer.spec_vocab_size(model_tokenizer)
        if s["vocab_size"] < tokenizer.spec_vocab_size(model_tokenizer):
            fail(f"vocab_size={s['vocab_size']} is smaller than the tokenizer's "
                 f"{tokenizer.spec_vocab_size(model_tokenizer)} tokens ({model_tokenizer['name']}); leave it at 0 to "
                 f"take the tokenizer's")
        try:
            config = GPTConfig(**{f.name: s[f.name] for f in fields(GPTConfig)})
            hf.check_size(config, None, "the model settings")  # --vocab_size=2000000000: refused before allocating
            with torch.device("meta" if on_meta else "cpu"):
                model = GPT(config)
        except (ValueError, TypeError) as e:
            fail(f"bad model settings: {e}")
    else:  # fine-tune GPT-2, a Hugging Face folder, or another run's checkpoint: its shape, a fresh optimizer, step 0
        kind, source, note = resolve_source(s["init_from"], "best")
        if kind == "pretrained":
            model = pretrained_model(source, dropout=s["dropout"])
            model_tokenizer = tokenizer.model_spec(None, source)  # GPT-2's, or an exported run's own
        else:
            start = load_checkpoint(source)
            model = model_from_checkpoint(start, dropout=s["dropout"])
            model_tokenizer = tokenizer.checkpoint_spec(start)
        if "max_seq_len" not in given:
            s["max_seq_len"] = model.config.max_seq_len  # windows as long as the model's context
        keep_settings(s, given, asdict(model.config), model_settings, f"the model in {source}")
        log(f"starting from {source}{note}: the model's shape comes from it")
    if problem := objective.check_model(model, tokenizer.from_spec(model_tokenizer)):  # e.g. RL needs a chat model
        fail(problem)
    if objective.chat:  # the chat tokens need rows: GPT-2's BPE has them past its 50257, so add those rows
        special = tokenizer.special_ids(tokenizer.from_spec(model_tokenizer))
        # the tool tokens too, except on resume: a run from before them (six chat tokens) resumes as it was
        needed = max(i for name, i in special.items() if not resume or name not in tokenizer.TOOL_TOKENS) + 1
        if model.config.vocab_size < needed:
            if s["lora_rank"]:  # LoRA freezes the embeddings: new rows could never learn, and the base would not match
                fail(f"{s['init_from']} has no rows for the chat tokens and LoRA keeps the embeddings frozen; chat "
                     f"fine-tune it without LoRA first (or use LoRA on a model that already has them)")
            log(f"adding the chat tokens: vocab_size {model.config.vocab_size} -> {needed} (new rows start as the mean)")
            model.grow_vocab(needed)
            s["vocab_size"] = needed  # config.json tells the model's true size
    if data_tokenizer is not None and data_tokenizer != model_tokenizer:
        fail(f"{folder} was tokenised with {data_tokenizer['name']} but the model's ids are those of "
             f"{model_tokenizer['name']}; train it on data prepared with the same tokenizer (or from scratch)")
    # LoRA: adapters on the frozen model (a resumed adapter run brings its own)
    lora_info = resume.get("lora") if resume else None
    if s["lora_rank"] and lora_info is None:
        wanted = {k: s[f"lora_{k}"] for k in ("rank", "alpha", "dropout", "targets")}
        lora_info = {**wanted, "base": base_source(s["init_from"]), "base_fingerprint": lora.fingerprint(model.state_dict())}
        lora.apply_lora(model, s["lora_rank"], s["lora_alpha"], s["lora_dropout"], s["lora_targets"])
    if lora_info:
        trainable, total = lora.count_trainable(model)[0], model.num_params()  # (padding rows not counted)
        log(f"LoRA rank {lora_info['rank']} on {lora_info['targets']} of {lora_info['base']}: {trainable:,} trainable "
            f"parameters of {total:,} ({100 * trainable / total:.2f}%), the rest frozen")
    if s["max_seq_len"] > model.config.max_seq_len:
        fail(f"max_seq_len={s['max_seq_len']} is longer than the model's context ({model.config.max_seq_len}); it may "
             f"shrink for fine-tuning but cannot grow: lower --max_seq_len")
    return model, model_tokenizer, lora_info


def data_warning(train_data, s, folder):
    """A warning when the training data is tiny for the steps asked (a model learns it by heart long before the
    end, and the rest is wasted time), or None."""
    examples = len(getattr(train_data, "sequences", ())) or getattr(train_data, "num_tokens", 0) // s["max_seq_len"]
    sequences = s["batch_size"] * s["grad_accum_steps"]
    epochs = s["max_steps"] * sequences / examples if examples else 0
    if epochs > 50:
        return (f"warning: {s['max_steps']} steps of {sequences} sequences go {epochs:.0f} times through the "
                f"{examples} training examples of {folder}; expect it to memorise them: fewer --max_steps, more "
                f"data, or evals with --early_stopping_patience stop it in time")


def start_run_folder(out_dir, resuming, run_info):
    """config.json (the run's settings) written atomically; a new run first removes the files of the one it replaces
    (--overwrite, checked before)."""
    os.makedirs(out_dir, exist_ok=True)
    if not resuming:
        for name in run_files(out_dir):
            os.remove(os.path.join(out_dir, name))
    write_atomically(os.path.join(out_dir, "config.json"), json.dumps(run_info, indent=2).encode())


class StopSignals:
    """Ctrl-C and SIGTERM (a cluster's preemption) set .signum: the loop finishes its step, saves, and exits;
    a second one stops at once."""

    def __init__(self):
        self.signum = None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.request)

    def request(self, signum, frame):
        self.signum = signum
        signal.signal(signum, signal.SIG_DFL)


def format_duration(seconds):
    h, rest = divmod(int(seconds), 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


def restore(resume, optimizers, scaler, device_type):
    """A resumed run's optimizer, scaler and random state (dropout draws go on as they would have) put back; returns
    (step, best_val_loss, evals_without_improvement, wandb_run_id)."""
    for opt, opt_state in zip(optimizers, resume["optimizers"] or []):  # (None: FSDP's, read from its shards)
        opt.load_state_dict(opt_state)
    if resume.get("scaler"):
        scaler.load_state_dict(resume["scaler"])
    torch.set_rng_state(resume["rng"]["torch"])
    if device_type == "cuda" and resume["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
    return (resume["step"], resume["best_val_loss"], resume.get("evals_without_improvement", 0),
            resume.get("wandb_run_id"))
