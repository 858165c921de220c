#!/bin/bash
# The one-command GPU check: one table (GPT-2 124M training in float16 and bfloat16, eager and compiled, with MFU;
# the d20 shape under DDP and FSDP on one GPU; KV-cache decoding speed and memory bandwidth; cached = batched =
# plain generation). Under 8 minutes on an H100. Without CUDA: one line saying so, exit code 1.
#   bash runs/gpu_check.sh            # then paste its table into docs/measurements.md with the card's name
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benches/gpu.py "$@"
