"""
What every script and module needs: fail() for the one-line errors, the device / precision choice, and the
machine facts (the GPUs' peak FLOPS, for MFU).
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


# -----------------------------------------------------------------------------
# machine facts: peak FLOPS and MFU

# Peak dense (no sparsity) 16-bit tensor-core FLOPS per GPU, bf16 where it exists (fp16 for V100/T4),
# with fp32 accumulation (GeForce cards run at half rate with it). Matched against
# torch.cuda.get_device_name as a case-insensitive substring, longest key first, so that "H100 PCIe"
# wins over "H100" and "L40S" over "L4". Unknown GPUs get no MFU rather than a wrong one.
PEAK_FLOPS = {
    "B200": 2250e12,
    "GH200": 989e12,
    "H200": 989e12,        # H200 SXM
    "H200 NVL": 835e12,
    "H100": 989e12,        # H100 SXM, e.g. "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,        # SXM and PCIe alike
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,        # SXM2
    "V100-PCIE": 112e12,
    "Tesla T4": 65e12,
    "MI300X": 1307e12,
}


def peak_flops(device):
    """Peak dense 16-bit FLOPS of a CUDA device, or None (CPU, mps, or a GPU not in PEAK_FLOPS)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # no CUDA here after all
        return None
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_FLOPS[key]
    return None


def estimate_mfu(model, tokens_per_sec, seq_len, device):
    """Model FLOPs utilisation: achieved training FLOPS / the GPU's peak, as a fraction. tokens_per_sec is per GPU
    (divide a global rate by the world size). None where the peak is unknown (CPU, mps, a GPU missing from
    PEAK_FLOPS)."""
    peak = peak_flops(device)
    if peak is None:
        return None
    return tokens_per_sec * model.flops_per_token(seq_len) / peak
