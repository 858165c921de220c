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

from nash import stages as stages_file
from nash import tasks as downstream
from nash.engine import Sampling, stream

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
        sampling = Sampling(temperature=0.8, top_k=200, max_new_tokens=n_tokens, seed=1337 + i)  # the same every time
        tokens = list(stream(model, ids, sampling, stop_ids={enc.eot_token}, ctx=ctx))
        text = enc.decode([t for t in ids + tokens if t != enc.eot_token])
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

# The card has two tables. The headline holds only figures that carry signal at the pipeline's scale: at least
# MIN_N items, or a 95% interval that excludes chance (signal()); a figure that fails is refused there and shown in
# the machinery checks, the benchmark fixtures of a few items each that prove the code paths run, not the model.

MIN_N = 200
# the stages' columns: (label, eval/<key>.json)
COLUMNS = (("BASE", "base"), ("SFT", "sft"), ("DPO", "dpo"), ("RL", "rl"), ("best-of-N", "best_of_n"),
           ("SFT, RL's compute", "sft_more"))
# the headline: (label, task or "bits_per_byte", metric, chance). Countdown is scored by its `correct` metric (nash/
# tasks/countdown.py's first: both lines of working true, the numbers in order, the target reached), not the final
# number alone; best-of-N's figure is of the same metric (the sampled summary of a task's first).
HEADLINE_ROWS = (("Held-out Shakespeare: the true ending of a line among 4 (acc_norm)", "shakespeare_heldout",
                  "acc_norm", 0.25),
                 ("Val bits per byte", "bits_per_byte", None, None),
                 ("Countdown: reach the target from three numbers with + and -, pass@1 with true working (metric "
                  "`correct`; greedy; best-of-N: the verifier's pick of N samples)", "countdown", "correct", 0.0))
# the machinery checks, in nanochat's summary shape: (row label, where its figure is in evaluate.py's JSON)
# (with the headline's rows, whatever their n: a figure the headline refuses is here)
SUMMARY_ROWS = (("Held-out Shakespeare", "shakespeare_heldout", "acc_norm"), ("Countdown (correct: working and target)", "countdown", "correct"),
                ("CORE", "core", None), ("ARC-Easy", "arc_easy", "acc"), ("ARC-Challenge", "arc_challenge", "acc"),
                ("MMLU", "mmlu", "acc"), ("HellaSwag", "hellaswag", "acc_norm"), ("GSM8K", "gsm8k", "exact_match"),
                ("HumanEval", "humaneval", "pass@1"), ("ChatCORE", "chatcore", None))
SUMMARY_COLUMNS = COLUMNS
PIPELINE_CURVES = "pipeline_curves.png"
KEY_SETTINGS = ("init_from", "n_layers", "d_model", "max_seq_len", "batch_size", "max_steps", "learning_rate",
                "lora_rank")
# what each objective's val_loss is: one panel per kind of quantity, never one axis for all
KINDS = {"pretrain": "LM loss (nats/token)", "sft": "chat loss (nats/token)", "chat": "chat loss (nats/token)",
         "dpo": "DPO loss", "rl": "RL: 1 - pass@1 (val_loss); reward (train)", "verifier": "verifier BCE"}


def git_state():
    """(commit, dirty?) of the repository, or ("unknown", False) outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=HERE)
    head = git("rev-parse", "--short", "HEAD")
    if head.returncode != 0:
        return "unknown", False
    return head.stdout.strip(), bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())


def read_json_or_none(path):
    """A run's or an eval's JSON for the report, or None where it is missing or unreadable (a stage not run)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def signal(value, err, n, chance):
    """Does a figure carry signal at its scale: n >= MIN_N items, or its 95% interval (value +- 1.96 stderr)
    excludes chance (a figure with no chance level, such as bits per byte, needs the items)."""
    if n >= MIN_N:
        return True
    return chance is not None and err is not None and err > 0 and abs(value - chance) > 1.96 * err


def figure(results, name, metric, column=None):
    """(value, stderr, n) from one evaluate.py JSON, or None where that figure was not measured. The best-of-N
    column reads the sampled figures (evaluate.py --num_samples --verifier): best_of_<N>, of generative tasks."""
    if results is None:
        return None
    if name == "bits_per_byte":  # evaluate.py's loss on the val split (no --tasks)
        value = results.get("bits_per_byte")
        return None if value is None else (value, None, results.get("tokens", 0))
    if metric is None:  # an aggregate: core / chatcore, over the tasks that went into it
        value = None if column == "best_of_n" else results.get(name)
        return None if value is None else (value, None, None)
    r = results.get("tasks", {}).get(name)
    if r and column == "best_of_n":
        r = r.get("sampled") or {}
        metric = f"best_of_{r.get('num_samples')}"
    if not r or r.get(metric) is None:
        return None
    return r[metric], r.get(metric + "_stderr"), r["n"]


def cell(fig):
    value, err, n = fig
    return f"{value:.4f}" + ("" if err is None else f" ± {err:.4f}") + ("" if n is None else f" (n={n})")


def headline_cell(fig, chance):
    """The figure, or why the headline refuses it."""
    if fig is None:
        return "not run"
    value, err, n = fig
    return cell(fig) if signal(value, err, n, chance) else f"no signal (n={n}): in the machinery checks"


def unigram_bits_per_byte(data_folder):
    """The val split's bits per byte under the train split's token frequencies (add-one smoothed): what a model
    that knows only how often each token occurs scores. None where the prepared data is not there."""
    if not os.path.isfile(os.path.join(data_folder, "meta.json")):
        return None
    import numpy as np
    from nash.data import read_meta
    from nash.tokenizer import dataset_spec, from_spec
    meta = read_meta(data_folder)
    enc = from_spec(dataset_spec(data_folder, meta))
    vocab = meta["vocab_size"]
    split = {name: np.concatenate([np.fromfile(os.path.join(data_folder, f), dtype=meta["dtype"]) for f in files])
             for name, files in meta["shards"].items()}
    counts = np.bincount(split["train"], minlength=vocab)[:vocab] + 1.0
    specials = set(meta.get("special_tokens", {}).values()) | {meta.get("eot_id")}
    # a special token (end-of-text) is no text: 0 bytes, and left out, as evaluate.py's bits per byte counts
    lengths = np.array([0 if i in specials or i >= enc.n_vocab else len(enc.decode_single_token_bytes(i))
                        for i in range(vocab)])
    val = split["val"][lengths[split["val"]] > 0]
    return float(-np.log2(counts / counts.sum())[val].sum() / lengths[val].sum())


def summary_cell(results, name, metric, column=None):
    """'value ± stderr (n)' from one evaluate.py JSON, or None where that figure was not measured."""
    fig = figure(results, name, metric, column)
    return None if fig is None else cell(fig)


def objective(config):
    return config.get("objective") or config.get("task") or "pretrain"


def trained_on(config):
    """What a training stage learnt from: its reward task's problems for RL and the verifier (their dataset
    setting is not read), else its data folder or dataset."""
    if objective(config) in ("rl", "verifier"):
        return f"{config.get('reward_task', '-')} problems (generated, checked by its answer check)"
    if config.get("data_dir"):
        return os.path.basename(os.path.normpath(config["data_dir"]))
    return config.get("dataset", "-")


def stage_rows(folder, stages):
    """One row per stage: wall time and, for a training stage, its parameters, tokens, steps and last losses."""
    rows = []
    for s in stages:
        run = s.get("run") and os.path.join(folder, s["run"])
        config = (read_json_or_none(os.path.join(run, "config.json")) or {}) if run else {}
        metrics = read_metrics(run) if run else []
        evals = [r for r in metrics if r.get("event") == "eval"]
        last = metrics[-1] if metrics else {}
        val = evals[-1].get("val_loss") if evals else None
        train = next((r.get("loss") for r in reversed(metrics) if r.get("event") == "train"), None)
        kind = KINDS.get(objective(config), objective(config)) if config else "-"
        rows.append(f"| {s['stage']} | {s['seconds'] / 60:.1f} min | {fmt(config.get('num_params'))} | "
                    f"{fmt(last.get('tokens'))} | {fmt(last.get('step'))} | {kind} | {fmt(train)} | {fmt(val)} |")
    return rows


def read_stages(folder):
    """The stages' records (nash/stages.py); a line cut short (a stage killed mid-write) is left out, said in one line."""
    records, bad = stages_file.read(folder)
    if bad:
        print(stages_file.cut_note(folder, bad), file=sys.stderr)
    return records


def write_pipeline_report(folder, title="Pipeline report", hourly_cost=None):
    """Write folder/report.md (atomically) from what the pipeline's stages left there; return its path."""
    stages = read_stages(folder)
    evals = {key: read_json_or_none(os.path.join(folder, "eval", key + ".json")) for _, key in COLUMNS}
    losses = read_json_or_none(os.path.join(folder, "eval", "base_loss.json"))
    commit, dirty = git_state()
    total = sum(s["seconds"] for s in stages)
    lines = [f"# {title}", "", f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by nash/tasks/report.py "
             f"from the pipeline folder's stages.", "",
             "| | |", "|---|---|",
             f"| commit | {commit}{' (with uncommitted changes)' if dirty else ''} |",
             f"| hardware | {hardware()} |",
             f"| total wall time | {total / 60:.1f} min over {len(stages)} stages |"]
    if hourly_cost:
        lines.append(f"| cost | {total / 3600 * hourly_cost:.2f} at {hourly_cost:.2f} per hour |")
    lines += ["", "## Headline", "",
              f"Only figures with signal at this scale: n >= {MIN_N} items, or a 95% interval that excludes chance. "
              "Each: value ± standard error (n).", ""]
    lines += ["| metric | " + " | ".join(label for label, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, name, metric, chance in HEADLINE_ROWS:
        if name == "bits_per_byte":
            unigram = unigram_bits_per_byte(os.path.join(folder, "data", "corpus"))
            label += f" (unigram baseline: {'unknown' if unigram is None else f'{unigram:.4f}'}; n: tokens)"
            cells = [headline_cell(figure(losses, name, None), chance) if key == "base" else "not run"
                     for _, key in COLUMNS]
        else:
            label += f" (chance {chance:g})"
            cells = [headline_cell(figure(evals[key], name, metric, key), chance) for _, key in COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "## Machinery checks", "",
              "Every figure measured, whatever its n: the benchmark fixtures of a few items each (tests/task_data) and "
              "HumanEval, which a model this small cannot pass, show that every evaluation path runs on every stage, "
              "not what the stages learnt.", ""]
    lines += ["| metric | " + " | ".join(label for label, _ in SUMMARY_COLUMNS) + " |",
              "|---" * (len(SUMMARY_COLUMNS) + 1) + "|"]
    for label, name, metric in SUMMARY_ROWS:
        cells = [summary_cell(evals[key], name, metric, key) or "not run" for _, key in SUMMARY_COLUMNS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sources = {key: r.get("task_data") for key, r in evals.items() if r is not None}
    lines += ["", "Data: " + "; ".join(
        f"{key}: {'the Hugging Face hub' if not src else f'offline files in {src}'}" for key, src in sources.items())
        + "." if sources else "", ""]
    lines += ["## Stages", "",
              "| stage | wall time | parameters | tokens | steps | val_loss is | last train loss | last val_loss |",
              "|---|---|---|---|---|---|---|---|", *stage_rows(folder, stages), ""]
    runs = [(s["stage"], os.path.join(folder, s["run"])) for s in stages if s.get("run")]
    lines += ["## Settings that matter", "", "| stage | objective | trained on | " + " | ".join(KEY_SETTINGS) + " |",
              "|---" * (len(KEY_SETTINGS) + 3) + "|"]
    for name, run in runs:
        config = read_json_or_none(os.path.join(run, "config.json")) or {}
        if config:
            lines.append(f"| {name} | {objective(config)} | {trained_on(config)} | "
                         + " | ".join(fmt(config.get(k)) for k in KEY_SETTINGS) + " |")
    lines.append("")
    picture = pipeline_curves(folder, runs)
    lines += ["## Curves", "", f"![one panel per kind of quantity]({picture})" if picture else "(no curves logged)",
              ""]
    path = os.path.join(folder, "report.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines))
    os.replace(path + ".tmp", path)
    return path


def curve_panels(runs):
    """{kind: [(stage, metric, steps, values)]}: each run's val_loss (and train loss, or RL's reward) under the
    kind of quantity its objective's val_loss is (KINDS)."""
    panels = {}
    for name, run in runs:
        config = read_json_or_none(os.path.join(run, "config.json")) or {}
        metrics = read_metrics(run)
        kind = KINDS.get(objective(config), objective(config))
        train_key = "reward" if any("reward" in r for r in metrics) else "loss"
        for event, key in (("eval", "val_loss"), ("train", train_key)):
            points = [(r["step"], r[key]) for r in metrics if r.get("event") == event and r.get(key) is not None]
            if points:
                panels.setdefault(kind, []).append((name, key, *zip(*points)))
    return panels


def pipeline_curves(folder, runs):
    """One panel per kind of quantity (LM loss, chat loss, DPO loss, RL, verifier BCE), every stage of that kind
    in it, against its own steps; None when nothing was logged."""
    panels = curve_panels(runs)
    if not panels:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (kind, series) in zip(axes[0], panels.items()):
        for name, key, steps, values in series:
            ax.plot(steps, values, marker="o" if key == "val_loss" else None, markersize=3,
                    linestyle="-" if key == "val_loss" else ":", label=f"{name} {key}")
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, PIPELINE_CURVES), dpi=90)
    plt.close(fig)
    return PIPELINE_CURVES


if __name__ == "__main__":  # python -m nash.tasks.report PIPELINE_FOLDER [HOURLY_COST]: what runs/*.sh end with
    print(write_pipeline_report(sys.argv[1], hourly_cost=float(sys.argv[2]) if len(sys.argv) > 2 else None))
