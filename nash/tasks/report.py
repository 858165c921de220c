"""
A run's one-page card, out_dir/report.md (evaluate.py --report), like nanochat's report card: what was trained
(settings, parameters), on what (hardware), how much (tokens, steps, time), the loss curves (a PNG drawn by
compare.py itself), the benchmark table of this evaluation, and a few samples.
"""
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone

import torch

from nash import tasks as downstream

HERE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
SAMPLE_PROMPTS = ("\n", "ROMEO:", "Once upon a time")  # the first is "start of a document"
CURVES = "report_curves.png"


def read_metrics(out_dir):
    records = []
    path = os.path.join(out_dir, "metrics.jsonl")
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    pass  # a line still being written
    return records


def hardware():
    cpu = platform.processor() or platform.machine()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{cpu}, {os.cpu_count()} cores, GPU: {gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def curves(out_dir, metrics):
    """The loss curves (and any benchmark logged during training) as a PNG, by compare.py; None without evals."""
    logged = {k for r in metrics if r.get("event") == "eval" for k in r}
    names = [m for m in ("val_loss", "train_loss", "core") if m in logged]
    names += sorted(k for k in logged if k.endswith(("_acc", "_acc_norm", "_exact_match")))
    if not names:
        return None
    proc = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), out_dir, f"--metrics={','.join(names)}",
                           f"--output={os.path.join(out_dir, CURVES)}"], capture_output=True, text=True, cwd=HERE)
    return CURVES if proc.returncode == 0 else None


@torch.no_grad()
def samples(model, enc, ctx, device, n_tokens=48):
    out = []
    for i, prompt in enumerate(SAMPLE_PROMPTS):
        ids = [enc.eot_token] if prompt == "\n" else enc.encode_ordinary(prompt)
        generator = torch.Generator(device=device).manual_seed(1337 + i)  # the same samples every time
        with ctx:
            tokens = model.generate(torch.tensor([ids], device=device), n_tokens, temperature=0.8, top_k=200,
                                    generator=generator, stop_token=enc.eot_token)
        text = enc.decode([t for t in tokens[0].tolist() if t != enc.eot_token])
        out.append(text)
    return out


def fmt(value):
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(out_dir, model, enc, results, settings, ctx, device):
    """Write out_dir/report.md (atomically) and return its path."""
    config_path = os.path.join(out_dir, "config.json")
    config = json.load(open(config_path)) if os.path.isfile(config_path) else {}
    metrics = read_metrics(out_dir)
    train = [r for r in metrics if r.get("event") == "train"]
    last = metrics[-1] if metrics else {}
    speed = f"{train[-1]['tokens_per_sec']:,.0f} tokens/s at the last log line" if train else "-"
    hours = (last["time"] - metrics[0]["time"]) / 3600 if len(metrics) > 1 else None
    lines = [f"# Run report: {os.path.basename(os.path.abspath(out_dir))}", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `evaluate.py --report` from "
             f"{results['checkpoint']}" + (f" (step {results['step']})" if results.get("step") is not None else ""), "",
             "## Run", "",
             "| | |", "|---|---|",
             f"| parameters | {config.get('num_params', model.num_params()):,} |",
             f"| steps | {last.get('step', '-')} of {config.get('max_steps', '-')} |",
             f"| tokens seen | {last.get('tokens', 0):,} ({config.get('tokens_per_step', '-')} per step) |",
             f"| training time | {'-' if hours is None else f'{hours:.2f} h'} (first to last log line) |",
             f"| speed | {speed} |",
             f"| trained on | device={config.get('device', '-')}, dtype={config.get('dtype', '-')}, "
             f"{config.get('world_size', 1)} process(es) |",
             f"| this report on | {hardware()} |", ""]
    figure = curves(out_dir, metrics)
    lines += ["## Curves", "", f"![loss curves]({figure})" if figure else "(no evals logged yet)", ""]
    lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(results[k])} |" for k in ("loss", "accuracy", "perplexity", "bits_per_byte",
                                                        "exact_match") if k in results]
    if results.get("tasks"):
        task_results = {**results["tasks"], **{k: results.get(k) for k in downstream.AGGREGATES}}
        scope = f"up to {settings['max_examples']} items" if settings["max_examples"] else "all items"
        lines += ["", f"Benchmarks ({settings['num_fewshot']}-shot, {scope} each):", "",
                  "| task | metric | value | stderr | n |", "|---|---|---|---|---|"]
        lines += [f"| {t} | {m} | {fmt(v)} | {fmt(s)} | {n} |" for t, m, v, s, n in downstream.rows(task_results)]
    lines += ["", "## Samples", "", "Temperature 0.8, top-k 200, 48 tokens, seeded:", ""]
    for prompt, text in zip(SAMPLE_PROMPTS, samples(model, enc, ctx, device)):
        lines += ["From the start of a document:" if prompt == "\n" else f"From {prompt!r}:", "", "```",
                  text.strip("\n"), "```", ""]
    lines += ["## Settings", "", "```", *(f"{k} = {v!r}" for k, v in config.items()), "```", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path
