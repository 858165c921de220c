"""What the measurements share: the repo's folder, the core count, device sync and running a command with its
peak memory."""
import os
import subprocess
import tempfile
import time

import torch

from configurator import fail

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repo: commands run there
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def sync(device):
    device_type = device.split(":")[0]
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
