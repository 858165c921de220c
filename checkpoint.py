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
import contextlib
import os

import torch

import hf
from model import GPT, GPTConfig

FORMAT = "nash-llm-checkpoint/1"
CHECKPOINT_FILES = {"latest": "ckpt.pt", "best": "best.pt"}


def fail(message):
    raise SystemExit(f"error: {message}")


# -----------------------------------------------------------------------------
# device and precision

def pick_device(device="auto"):
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"device={device} but CUDA is not available here; use --device=cpu or --device=auto")
    return device


def pick_dtype(dtype, device_type, inference=False):
    """'auto' is float32 off CUDA. On CUDA it is float16 for training (with a GradScaler), and for inference
    bfloat16 where supported: no loss scaling needed, and float32's range, so nothing overflows."""
    if dtype == "auto":
        if device_type != "cuda":
            return "float32"
        return "bfloat16" if inference and torch.cuda.is_bf16_supported() else "float16"
    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"dtype={dtype} is not one of auto, float32, bfloat16, float16")
    return dtype


def inference_setup(device="auto", dtype="auto"):
    """(device, dtype, autocast context) for sample.py, evaluate.py and the like."""
    device = pick_device(device)
    dtype = pick_dtype(dtype, device.split(":")[0], inference=True)
    return device, dtype, autocast(device.split(":")[0], dtype)


def autocast(device_type, dtype):
    """Mixed precision context: the matmuls run in dtype, the weights and the loss stay float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=getattr(torch, dtype))


# -----------------------------------------------------------------------------
# saving and loading

def save_checkpoint(path, state):
    """torch.save to path.tmp, flush to disk, then rename: readers see the old file or the new one."""
    state = {"format": FORMAT, **state}
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def checkpoint_path(location, which="best"):
    """A checkpoint file from a file path, or from a run folder and which one ('best' or 'latest').
    'best' falls back to the latest checkpoint when no eval has produced a best one yet."""
    if os.path.isfile(location):
        return location
    if not os.path.isdir(location):
        fail(f"no checkpoint or run folder at {location}; train one with `python train.py --out_dir={location}`")
    if which not in CHECKPOINT_FILES:
        fail(f"which checkpoint should be 'best' or 'latest' or a file path, not {which!r}")
    candidates = [CHECKPOINT_FILES[which]] + (["ckpt.pt"] if which == "best" else [])
    for name in candidates:
        path = os.path.join(location, name)
        if os.path.isfile(path):
            return path
    fail(f"no checkpoint in {location} (looked for {', '.join(candidates)}); "
         f"train one with `python train.py --out_dir={location}`")


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint without unpickling code; one clear error for anything that is not one."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        fail(f"checkpoint {path} does not exist")
    except Exception as e:  # truncated file, not a torch file, or pickled code that weights_only refuses
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        fail(f"{path} is not a readable Nash-LLM checkpoint ({reason}); it may be corrupt or from another program")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        fail(f"{path} is not a Nash-LLM checkpoint (format {state.get('format') if isinstance(state, dict) else None!r}, "
             f"expected {FORMAT!r})")
    return state


def model_from_checkpoint(state, merge_lora=True, **overrides):
    """The GPT a checkpoint describes, with its weights. overrides change config fields (e.g. dropout).
    An adapter checkpoint (LoRA) loads its base and puts the adapters on it, merged into the weights unless
    merge_lora=False (train.py resuming)."""
    if state.get("lora"):
        return lora_model_from_checkpoint(state, merge_lora, **overrides)
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
    if init_from in hf.HF_GPT2_NAMES:
        return init_from
    return os.path.abspath(init_from if is_pretrained(init_from) else checkpoint_path(init_from, "best"))


def load_base(source, **overrides):
    """The model named by base_source(): GPT-2 weights, a Hugging Face folder, or a run's checkpoint (with its own
    adapters, if any, merged in)."""
    if is_pretrained(source):
        return pretrained_model(source, **overrides)
    return model_from_checkpoint(load_checkpoint(checkpoint_path(source, "best")), **overrides)


def lora_model_from_checkpoint(state, merge_lora=True, **overrides):
    """Base + adapters from an adapter checkpoint, refusing a base whose weights changed since training."""
    import lora  # here, not at the top: lora.py is only needed for adapter checkpoints
    info = state["lora"]
    base = info["base"]
    if base not in hf.HF_GPT2_NAMES and not os.path.exists(base):
        fail(f"this LoRA checkpoint adapts {base}, which no longer exists; put it back, or use a merged export")
    model = load_base(base, **{"dropout": state["model_config"].get("dropout", 0.0), **overrides})
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


def is_pretrained(init_from):
    """A GPT-2 name, or a Hugging Face folder (config.json beside model.safetensors / pytorch_model.bin;
    a run folder has a config.json too, but checkpoints instead)."""
    return init_from in hf.HF_GPT2_NAMES or os.path.isdir(init_from) and hf.is_hf_folder(init_from)


def load_model(init_from="", out_dir="out", ckpt="best", device="cpu"):
    """The model that sample.py, evaluate.py and bench.py work on, in eval mode on device.
    init_from a GPT-2 name or a Hugging Face folder (export.py's, say) loads those weights; otherwise ckpt
    ('best', 'latest' or a file path) picks a checkpoint of the run in init_from or out_dir.
    Returns (model, checkpoint state or None for pretrained weights, where it came from: a path or name)."""
    if init_from and is_pretrained(init_from):
        source, state, model = init_from, None, pretrained_model(init_from, dropout=0.0)
    else:
        location = ckpt if ckpt not in CHECKPOINT_FILES else (init_from or out_dir)
        source = checkpoint_path(location, ckpt)
        state = load_checkpoint(source)
        model = model_from_checkpoint(state, dropout=0.0)
    model.eval()
    return model.to(device), state, source
