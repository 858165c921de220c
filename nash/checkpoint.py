"""
Run folders and checkpoints, shared by train.py, sample.py, evaluate.py and bench.py.

A checkpoint is plain data: tensors, numbers, strings, lists and dicts, saved with torch.save and
loaded with torch.load(weights_only=True), so opening one never runs code. It is written to a
temporary file and renamed into place, so a crash mid-save leaves the previous one intact.

    out_dir/ckpt.pt       latest: every checkpoint_interval steps, at the end, on Ctrl-C/SIGTERM
    out_dir/best.pt       lowest val loss so far
    out_dir/config.json   the settings of the run
    out_dir/metrics.jsonl one JSON object per log line or eval
"""
import fcntl
import os
import pickle
import re

import torch

from nash import hf
from nash.common import fail
from model import GPT, GPTConfig

FORMAT = "nash-llm-checkpoint/1"
CHECKPOINT_FILES = {"latest": "ckpt.pt", "best": "best.pt"}
HELD_LOCKS = {}  # out_dir/.lock path -> the open file whose flock this process holds


# -----------------------------------------------------------------------------
# saving and loading

def save_checkpoint(path, state):
    """torch.save to path.tmp, flush to disk, then rename: readers see the old file or the new one."""
    state = {"format": FORMAT, **state}
    write_atomically(path, lambda f: torch.save(state, f))


def write_atomically(path, data):
    """data (bytes, or a function writing to a binary file) to path.tmp, flushed to disk, then renamed over path:
    readers see the old file or the new one, never a part. A full disk (or a file-size limit) is one error line, and
    the old file stays as it was."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data) if isinstance(data, bytes) else data(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # (torch.save reports a failed write as a RuntimeError)
        reason = getattr(e, "strerror", None) or str(e).strip().splitlines()[0][:200]
        fail(f"cannot write {path} ({reason}); is the disk full? "
             f"{'the previous one is untouched' if os.path.exists(path) else 'nothing was written'}")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def append_line(path, line):
    """One line at the end of a log file (metrics.jsonl); a full disk is one error line, not a traceback."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    except OSError as e:
        fail(f"cannot append to {path} ({e.strerror}); is the disk full? the checkpoints are untouched")


def lock_run_folder(out_dir):
    """Hold out_dir/.lock (flock) for the life of this process, so that a second run into the same folder stops
    with one line naming the pid that holds it. The kernel drops the lock when its process ends, however it ends:
    a stale lock from a dead run is no lock. Held once per process (a script run again in the same process, as the
    tests do, takes its own lock back). Returns the open file."""
    path = os.path.realpath(os.path.join(out_dir, ".lock"))
    if path in HELD_LOCKS:
        return HELD_LOCKS[path]
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip() or "unknown"
        fail(f"{out_dir} is in use by another training run (pid {pid}); wait for it to end, stop it, or choose "
             f"another --out_dir")
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    HELD_LOCKS[path] = f
    return f


def run_settings(state):
    """A checkpoint's training settings, in today's names: the setting once called `task` is `objective`."""
    settings = dict(state.get("settings") or {})
    if "task" in settings:
        settings.setdefault("objective", settings.pop("task"))
    return settings


def continue_settings(saved, settings, given, safe, where):
    """The settings of a resumed run: the run's own (saved), except those in safe that a flag or config file gave
    (given). Any other setting given a value other than the run's is one error naming it and both values: a resume
    continues the run that is there, it never turns it into another. Settings newer than the run keep theirs."""
    changed = [f"{k}={settings[k]!r} where the run has {saved[k]!r}" for k in settings
               if k in given and k not in safe and k in saved and settings[k] != saved[k]]
    if changed:
        fail(f"resuming the run in {where} keeps its settings, but you gave {', '.join(changed)}; only "
             f"{', '.join(safe)} may change mid-run: drop the others, or start a new run from this one with "
             f"--init_from={where} --out_dir=<another folder>")
    return {k: settings[k] if k in safe and k in given or k not in saved else saved[k] for k in settings}


def resolve_source(location, which="best"):
    """What a model location names. This is the one place that tells a GPT-2 name, a Hugging Face folder, a run
    folder and a checkpoint file apart (train.py, sample.py, evaluate.py and bench.py all come through here):

    - ("pretrained", name_or_folder, note): a GPT-2 name, or a Hugging Face folder, recognised by its weights
      (config.json + model.safetensors or pytorch_model.bin);
    - ("checkpoint", file, note): a checkpoint file; or a run folder, recognised by its checkpoints (best.pt,
      ckpt.pt): which = 'best' is its best.pt, falling back to the latest when no eval has made one yet (note
      says so), 'latest' its ckpt.pt. which may also be a checkpoint file, which then wins over location.
    note is "" or a few words saying which checkpoint was picked and why, for the log."""
    if which not in CHECKPOINT_FILES:
        if os.path.isfile(which):
            return "checkpoint", which, ""
        fail(f"ckpt={which!r} should be best, latest or the path of a checkpoint file (no file {which} exists)")
    if location in hf.GPT2_NAMES:
        return "pretrained", location, ""
    if os.path.isfile(location):
        return "checkpoint", location, ""
    if not os.path.isdir(location):
        fail(f"no checkpoint, run folder or Hugging Face folder at {location}; "
             f"train one with `python train.py --out_dir={location}`")
    present = {name for name in os.listdir(location) if os.path.isfile(os.path.join(location, name))}
    if present & set(CHECKPOINT_FILES.values()):  # a run folder (its config.json is the run's settings)
        name = CHECKPOINT_FILES[which]
        if name in present:
            return "checkpoint", os.path.join(location, name), f" ({which})"
        if which == "best":
            return "checkpoint", os.path.join(location, "ckpt.pt"), " (the latest: no eval has made a best.pt yet)"
        fail(f"{location} has no {name}; use --ckpt=best, or train on with `python train.py --out_dir={location} "
             f"--init_from=resume`")
    if hf.is_hf_folder(location):  # config.json beside model.safetensors (sharded or not) or pytorch_model.bin
        return "pretrained", location, ""
    fail(f"no checkpoint in {location}: it holds neither a run's checkpoints (best.pt, ckpt.pt) nor a Hugging Face "
         f"model (config.json + model.safetensors or pytorch_model.bin); train one with "
         f"`python train.py --out_dir={location}`")


def run_files(out_dir):
    """The files an earlier run left in out_dir (checkpoints, kept checkpoints, metrics, settings): any of them
    means a new run there would replace someone's work."""
    if not os.path.isdir(out_dir):
        return []
    return sorted(name for name in os.listdir(out_dir)
                  if name in ("ckpt.pt", "best.pt", "metrics.jsonl", "config.json")
                  or (name.startswith("ckpt_") and name.endswith(".pt")))


def load_checkpoint(path, map_location="cpu", needs=()):
    """Load a checkpoint without unpickling code; one clear error for anything that is not one. needs: the keys
    the caller reads (train.py resuming reads the optimizers, the step, ...): a checkpoint without them is
    refused here, in one line, rather than as a KeyError wherever the first missing one is read."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        fail(f"checkpoint {path} does not exist")
    except IsADirectoryError:
        fail(f"{path} is a folder, not a checkpoint file")
    except Exception as e:  # truncated file, not a torch file, or pickled code that weights_only refuses
        text = str(e)
        code = re.search(r"GLOBAL (\S+)", text)  # torch's message invites weights_only=False: never say that
        if code:
            fail(f"{path} holds code ({code.group(1)}), not just data; Nash-LLM never runs code from a checkpoint, "
                 f"so it will not be loaded: use checkpoints that train.py wrote")
        lines = text.strip().splitlines() or [type(e).__name__]
        reason = "not plain data" if "Weights only" in text else lines[0][:200]
        fail(f"{path} is not a readable Nash-LLM checkpoint ({reason}); it may be corrupt or from another program")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fail(f"{path} is not a Nash-LLM checkpoint (format {state.get('format') if isinstance(state, dict) else None!r}, "
             f"expected {FORMAT!r})")
    if state.get("shards"):  # FSDP's: the weights are in a shard folder beside it, made whole here (distributed.py)
        state["shards"] = os.path.join(os.path.dirname(os.path.abspath(path)), state["shards"])
        state["model"], state["optimizers"] = read_model_shards(state["shards"]), None  # (resume reads the shards)
    missing = [key for key in needs if key not in state]
    if missing:
        fail(f"{path} lacks {', '.join(map(repr, missing))}, which every checkpoint train.py writes holds; it may be "
             f"corrupt or from another program")
    if "model_config" not in state:  # (a checkpoint of a model always has one; model_from_checkpoint says so)
        return state
    try:
        config = GPTConfig(**state["model_config"])
    except (TypeError, ValueError) as e:
        fail(f"{path}'s model_config is not a model of this version of model.py ({str(e).splitlines()[0][:200]})")
    try:  # every model built from a checkpoint comes through here: sized before anything is allocated
        hf.check_size(config, None, path)
    except ValueError as e:
        fail(str(e))
    return state


def model_from_checkpoint(state, merge_lora=True, bases=(), **overrides):
    """The GPT a checkpoint describes, with its weights. overrides change config fields (e.g. dropout).
    An adapter checkpoint (LoRA) loads its base and puts the adapters on it, merged into the weights unless
    merge_lora=False (train.py resuming). bases: the adapter bases already being loaded on the way here."""
    if state.get("lora"):
        return lora_model_from_checkpoint(state, merge_lora, bases, **overrides)
    try:
        config = GPTConfig(**{**state["model_config"], **overrides})
        model = GPT(config)
        model.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        fail(f"checkpoint does not match this version of model.py ({reason})")
    return model


def base_source(init_from):
    """How an adapter checkpoint names the model it adapts: a GPT-2 name, or an absolute path (a Hugging Face
    folder, or the checkpoint file of a run)."""
    kind, source, _ = resolve_source(init_from, "best")
    return source if source in hf.GPT2_NAMES else os.path.abspath(source)


def load_base(source, bases=(), **overrides):
    """The model named by base_source(): GPT-2 weights, a Hugging Face folder, or a run's checkpoint (with its own
    adapters, if any, merged in)."""
    kind, source, _ = resolve_source(source, "best")
    if kind == "pretrained":
        return pretrained_model(source, **overrides)
    return model_from_checkpoint(load_checkpoint(source), bases=bases, **overrides)


LORA_FIELDS = {"base": str, "base_fingerprint": str, "rank": int, "alpha": (int, float), "dropout": (int, float),
               "targets": str}
MAX_LORA_CHAIN = 8  # adapters on a base that is itself an adapter run, and so on: far more than anyone stacks


def lora_model_from_checkpoint(state, merge_lora=True, bases=(), **overrides):
    """Base + adapters from an adapter checkpoint, refusing a base whose weights changed since training, and a
    "lora" record that is not one train.py wrote (it names files to open: hostile input)."""
    from nash import lora  # here, not at the top: lora.py is only needed for adapter checkpoints
    info = state["lora"]
    wrong = [k for k, kind in LORA_FIELDS.items() if not isinstance(info, dict) or not isinstance(info.get(k), kind)]
    if wrong or (problem := lora.check_settings(info["rank"], info["alpha"], info["dropout"], info["targets"])):
        fail(f"the checkpoint's LoRA record is not one train.py writes "
             f"({'no valid ' + ', '.join(wrong) if wrong else problem}); it may be corrupt or from another program")
    if not 1 <= info["rank"] <= GPTConfig(**state["model_config"]).d_model:  # (rank x width per adapted layer)
        fail(f"the checkpoint's LoRA rank {info['rank']} is not between 1 and the model's width; it may be corrupt")
    base = info["base"]
    if base in bases or len(bases) >= MAX_LORA_CHAIN:
        fail(f"this LoRA checkpoint's base {base} leads back to itself (or through more than {MAX_LORA_CHAIN} "
             f"adapter runs); use a checkpoint whose adapters sit on a plain model")
    if base not in hf.GPT2_NAMES and not os.path.exists(base):
        fail(f"this LoRA checkpoint adapts {base}, which no longer exists; put it back, or use a merged export")
    model = load_base(base, bases + (base,), **{"dropout": state["model_config"].get("dropout", 0.0), **overrides})
    if lora.fingerprint(model.state_dict()) != info["base_fingerprint"]:
        fail(f"this LoRA checkpoint adapts {base}, whose weights have changed since it was trained "
             f"(fingerprint {lora.fingerprint(model.state_dict())}, expected {info['base_fingerprint']})")
    lora.apply_lora(model, info["rank"], info["alpha"], info["dropout"], info["targets"])
    try:
        lora.load_adapters(model, state["model"])
    except (ValueError, RuntimeError) as e:
        fail(f"checkpoint does not match its base model {base} ({str(e).strip().splitlines()[0][:200]})")
    return lora.merge_lora(model) if merge_lora else model


def pretrained_model(name_or_dir, **overrides):
    """OpenAI GPT-2 weights from the hub, or a local Hugging Face folder (GPT-2, Llama or Qwen3 layout)."""
    try:
        return hf.load_pretrained(name_or_dir, **overrides)
    except (OSError, ValueError) as e:
        fail(str(e).strip().splitlines()[0])


def load_model(init_from="", out_dir="out", ckpt="best", device="cpu"):
    """The model that sample.py, evaluate.py and bench.py work on, in eval mode on device: from init_from (a GPT-2
    name, a Hugging Face folder, a run folder or a checkpoint file) or else the run in out_dir, ckpt ('best',
    'latest' or a file path) picking the checkpoint of a run (see resolve_source).
    Returns (model, checkpoint state or None for pretrained weights, where it came from: a path or name)."""
    kind, source, _ = resolve_source(init_from or out_dir, ckpt)
    if kind == "pretrained":
        state, model = None, pretrained_model(source, dropout=0.0)
    else:
        state = load_checkpoint(source)
        model = model_from_checkpoint(state, dropout=0.0)
    model.eval()
    return model.to(device), state, source


# -----------------------------------------------------------------------------
# FSDP's sharded checkpoints (nash/distributed.py writes them): read whole, in one process, without running code

def read_model_shards(folder):
    """The whole model's state dict (CPU tensors) from a shard folder, read in this process (no process group
    needed), without running code: DCP's .metadata is a pickle, read here with an allow-list of its own classes."""
    import warnings
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    if not os.path.isfile(os.path.join(folder, ".metadata")):
        fail(f"the sharded checkpoint's folder {folder} is missing or incomplete; was it moved apart from its .pt file?")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ("assuming the intent is to load in a single process": it is)
        return _load_state_dict_from_keys("model", storage_reader=shard_reader(folder))["model"]


class _SafeUnpickler(pickle.Unpickler):
    """DCP's metadata holds only its own dataclasses, torch sizes and dtypes: anything else is refused."""

    def find_class(self, module, name):
        torch_value = isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format, torch.layout))
        if module.startswith("torch.distributed.checkpoint.") or (module == "torch" and (name == "Size" or torch_value)) \
                or (module, name) in (("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
                                      ("builtins", "set"), ("builtins", "frozenset"),
                                      ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a DCP checkpoint's metadata")


def shard_reader(folder):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(os.path.join(folder, ".metadata"), "rb") as f:
                metadata = _SafeUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata
    return SafeReader(folder)
