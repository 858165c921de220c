"""
What every script and module needs: fail() for the one-line errors, and the device / precision choice.
"""
import contextlib
import sys

import torch


def fail(message):
    """End with one clear line, `error: ...`, and exit status 1: the project's only way to refuse bad input."""
    sys.exit(f"error: {message}")


# -----------------------------------------------------------------------------
# device and precision

def pick_device(device="auto"):
    """The torch device for a --device setting, or one line saying why it cannot be used here."""
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    kind, _, index = device.partition(":")
    if device not in ("cpu", "mps", "cuda") and not (kind == "cuda" and index.isdigit()):
        fail(f"device={device!r} should be auto, cpu, cuda, cuda:N or mps")
    if kind == "cuda" and not torch.cuda.is_available():
        fail(f"device={device} but CUDA is not available here; use --device=cpu or --device=auto")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        fail(f"device={device} but this machine has {torch.cuda.device_count()} CUDA device(s); "
             f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        fail("device=mps but Apple's Metal (MPS) is not available here; use --device=cpu or --device=auto")
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
