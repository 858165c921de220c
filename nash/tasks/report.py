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


# -----------------------------------------------------------------------------
# the pipeline's card: every stage side by side (runs/cpu.sh, runs/gpu.sh)
#
# A pipeline folder holds one run folder per training stage, stages.jsonl (one line per finished stage: its name,
# the run folder it wrote if any, wall seconds) and eval/<column>.json, evaluate.py's --output for each column of
# the summary table. Any script can write such a folder and call write_pipeline_report on it.

# the summary table, in nanochat's shape: (row label, where its figure is in evaluate.py's JSON)
SUMMARY_ROWS = (("CORE", "core", None), ("ARC-Easy", "arc_easy", "acc"), ("ARC-Challenge", "arc_challenge", "acc"),
                ("MMLU", "mmlu", "acc"), ("GSM8K", "gsm8k", "exact_match"), ("Arithmetic", "arith", "exact_match"),
                ("HumanEval", "humaneval", "pass@1"), ("ChatCORE", "chatcore", None))
SUMMARY_COLUMNS = (("BASE", "base"), ("SFT", "sft"), ("RL", "rl"), ("best-of-N", "best_of_n"))
PIPELINE_CURVES = "pipeline_curves.png"
KEY_SETTINGS = ("objective", "dataset", "init_from", "n_layers", "d_model", "max_seq_len", "batch_size", "max_steps",
                "learning_rate", "lora_rank")


def git_state():
    """(commit, dirty?) of the repository, or ("unknown", False) outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown", False
    return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def summary_cell(results, name, metric, column=None):
    """'value ± stderr (n)' from one evaluate.py JSON, or None where that figure was not measured. The best-of-N
    column reads the sampled figures (evaluate.py --num_samples --verifier): best_of_<N>, of generative tasks."""
    if results is None:
        return None
    if metric is None:  # an aggregate: core / chatcore, over the tasks that went into it
        value = None if column == "best_of_n" else results.get(name)
        return None if value is None else f"{value:.4f}"
    r = results.get("tasks", {}).get(name)
    if r and column == "best_of_n":
        r = r.get("sampled") or {}
        metric = f"best_of_{r.get('num_samples')}"
    if not r or r.get(metric) is None:
        return None
    err = r.get(metric + "_stderr")
    return f"{r[metric]:.4f}" + ("" if err is None else f" ± {err:.4f}") + f" (n={r['n']})"


def stage_rows(folder, stages):
    """One row per stage: wall time and, for a training stage, its parameters, tokens, steps and last losses."""
    rows = []
    for s in stages:
        run = s.get("run") and os.path.join(folder, s["run"])
        config = (read_json(os.path.join(run, "config.json")) or {}) if run else {}
        metrics = read_metrics(run) if run else []
        evals = [r for r in metrics if r.get("event") == "eval"]
        last = metrics[-1] if metrics else {}
        val = evals[-1].get("val_loss") if evals else None
        train = next((r.get("loss") for r in reversed(metrics) if r.get("event") == "train"), None)
        rows.append(f"| {s['stage']} | {s['seconds'] / 60:.1f} min | {fmt(config.get('num_params'))} | "
                    f"{fmt(last.get('tokens'))} | {fmt(last.get('step'))} | {fmt(train)} | {fmt(val)} |")
    return rows


def write_pipeline_report(folder, title="Pipeline report", hourly_cost=None):
    """Write folder/report.md (atomically) from what the pipeline's stages left there; return its path."""
    stages = []
    if os.path.isfile(os.path.join(folder, "stages.jsonl")):
        with open(os.path.join(folder, "stages.jsonl")) as f:
            stages = [json.loads(line) for line in f if line.strip()]
    evals = {key: read_json(os.path.join(folder, "eval", key + ".json")) for _, key in SUMMARY_COLUMNS}
    commit, dirty = git_state()
    total = sum(s["seconds"] for s in stages)
    lines = [f"# {title}", "", f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             "| | |", "|---|---|",
             f"| commit | {commit}{' (with uncommitted changes)' if dirty else ''} |",
             f"| hardware | {hardware()} |",
             f"| total wall time | {total / 60:.1f} min over {len(stages)} stages |"]
    if hourly_cost:
        lines.append(f"| cost | {total / 3600 * hourly_cost:.2f} at {hourly_cost:.2f} per hour |")
    lines += ["", "## Summary", ""]
    lines += ["| metric | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
              "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for label, name, metric in SUMMARY_ROWS:
        cells = [summary_cell(evals[key], name, metric, key) or "not run" for _, key in SUMMARY_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sources = {key: r.get("task_data") for key, r in evals.items() if r is not None}
    lines += ["", "Each figure: value ± standard error (number of items). Data: " + "; ".join(
        f"{key}: {'the Hugging Face hub' if not src else f'offline files in {src}'}" for key, src in sources.items())
        + "." if sources else "", ""]
    lines += ["## Stages", "", "| stage | wall time | parameters | tokens | steps | last train loss | last val loss |",
              "|---|---|---|---|---|---|---|", *stage_rows(folder, stages), ""]
    runs = [os.path.join(folder, s["run"]) for s in stages if s.get("run")]
    lines += ["## Settings that matter", "", "| stage | " + " | ".join(KEY_SETTINGS) + " |",
              "|---" * (len(KEY_SETTINGS) + 1) + "|"]
    for s in stages:
        config = (read_json(os.path.join(folder, s["run"], "config.json")) or {}) if s.get("run") else {}
        if config:
            lines.append(f"| {s['stage']} | " + " | ".join(fmt(config.get(k)) for k in KEY_SETTINGS) + " |")
    lines.append("")
    figure = pipeline_curves(folder, runs)
    lines += ["## Curves", "", f"![loss curves of every stage]({figure})" if figure else "(no curves logged)", ""]
    path = os.path.join(folder, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


def pipeline_curves(folder, runs):
    """The loss curves of all the stages' runs in one figure (and the RL reward, where logged), by compare.py."""
    runs = [run for run in runs if read_metrics(run)]  # a stage that logged nothing (yet) has no curve
    logged = {k for run in runs for r in read_metrics(run) for k in r}
    names = [m for m in ("val_loss", "train_loss", "reward") if m in logged]
    if not names:
        return None
    proc = subprocess.run([sys.executable, os.path.join(HERE, "compare.py"), *runs, f"--metrics={','.join(names)}",
                           f"--output={os.path.join(folder, PIPELINE_CURVES)}"], capture_output=True, text=True, cwd=HERE)
    return PIPELINE_CURVES if proc.returncode == 0 else None


if __name__ == "__main__":  # python -m nash.tasks.report PIPELINE_FOLDER [HOURLY_COST]: what runs/*.sh end with
    print(write_pipeline_report(sys.argv[1], hourly_cost=float(sys.argv[2]) if len(sys.argv) > 2 else None))
