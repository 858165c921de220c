"""
Runs side by side: overlaid curves, a table of final metrics, and the settings that differ.

    python compare.py out                                      # one run: its own curves
    python compare.py out-a out-b --metrics=val_loss,accuracy --output=ab.png
    python compare.py out-a wandb:my-team/nash-llm/1a2b3c4d     # a run logged to Weights & Biases (online)

Each positional argument is a run: a folder train.py wrote (config.json + metrics.jsonl), or
wandb:entity/project/run_id, read through the wandb public API. Flags are --key=value as in every
script; config files are not taken here, since bare arguments are runs.
- Curves: one row of plots per metric, against step (left) and against tokens seen (right), because
  runs with different batch sizes reach a step after different amounts of data.
- Table: the last value of each metric (at the highest step logged) and the best, which is the minimum
  for losses, perplexity and ms_per_step, the maximum for accuracy, tokens_per_sec and mfu; other
  metrics (lr, grad_norm, ...) have no best.
- Settings: only those that differ between runs (out_dir, the runs' names, is left out).
A resumed run appends to metrics.jsonl from its checkpoint's step, so the log can go back in steps:
what the abandoned timeline logged from that step on is dropped, and a step logged twice keeps the
latest value. A run still writing may have a partial last line; it is ignored.
"""
import json
import math
import os
import sys

from configurator import configure, fail

# -----------------------------------------------------------------------------
# settings (python compare.py --help lists them)
metrics = "loss,val_loss"  # comma-separated, from train steps (loss: one point per log line; lr, mfu, ...) or evals (val_loss, train_loss, accuracy, ...)
output = "compare.png"  # the figure (.png, .pdf or .svg); "" = no figure, just the tables
log_scale = False  # logarithmic y axes
# bare arguments are runs, not config files: only the flags go to the configurator
run_specs = [a for a in sys.argv[1:] if not a.startswith("-")]
settings = configure(globals(), [a for a in sys.argv[1:] if a.startswith("-")], usage="RUN [RUN ...] [--key=value ...]")
# -----------------------------------------------------------------------------

RECORD_KEYS = ("event", "step", "tokens", "time")  # every record has these; the rest are metrics
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_byte", "ms_per_step")  # matched as substrings of a metric name
HIGHER_IS_BETTER = ("accuracy", "exact_match", "tokens_per_sec", "mfu", "_acc", "core", "pass@1")  # + benchmarks
NOT_COMPARED = ("out_dir",)  # differs between any two runs by construction; the runs are named by it already

metric_names = [m.strip() for m in metrics.split(",") if m.strip()]
if not metric_names:
    fail("--metrics is empty; name at least one, e.g. --metrics=loss,val_loss")
if not run_specs:
    fail("no runs given; usage: python compare.py RUN_DIR [RUN_DIR ...] [--key=value ...] (see --help)")
if output and os.path.splitext(output)[1].lower() not in (".png", ".pdf", ".svg"):
    fail(f"--output={output} should end in .png, .pdf or .svg (or be empty for no figure)")


def one_line(e):
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def read_local(path):
    """(config, records) of a run folder; the records in the order they were logged."""
    if not os.path.isdir(path):
        fail(f"{path} is not a folder; give run folders that train.py wrote (--out_dir) or wandb:entity/project/run_id")
    config_path, metrics_path = os.path.join(path, "config.json"), os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(config_path):
        fail(f"{path} is not a run folder (no config.json); give folders that train.py wrote with --out_dir")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"{config_path} is not readable JSON ({one_line(e)}); was it written by train.py?")
    if not isinstance(config, dict):  # train.py writes an object of settings
        fail(f"{config_path} holds a JSON {type(config).__name__}, not an object of settings; "
             "was it written by train.py?")
    records, bad = [], 0
    if os.path.isfile(metrics_path):  # absent while a run has not logged yet
        with open(metrics_path) as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            elif i < len(lines) - 1:  # the text after the last newline is a line still being written: not an error
                bad += 1
    if bad:
        print(f"warning: skipped {bad} unreadable line(s) of {metrics_path} (a crash mid-write?)", file=sys.stderr)
    return config, records


def read_wandb(spec):
    """(config, records) of a run on Weights & Biases; train.py logs there as "train/loss", "eval/val_loss", ..."""
    path = spec[len("wandb:"):]
    if len(path.split("/")) != 3 or not all(path.split("/")):
        fail(f"{spec} should look like wandb:entity/project/run_id")
    try:
        import wandb
    except ImportError:
        fail(f"reading {spec} needs the wandb package; pip install wandb")
    try:
        run = wandb.Api().run(path)
        config = {k: v for k, v in dict(run.config).items() if not k.startswith("_")}
        rows = list(run.scan_history())  # every row; run.history() would downsample to 500
    except Exception as e:  # no network, not logged in, no such run: the API raises many kinds
        fail(f"could not read {spec} from Weights & Biases ({one_line(e)}); check the path, network and `wandb login`")
    tokens_per_step = config.get("tokens_per_step")
    records = []
    for row in rows:
        step = row.get("_step")
        by_event = {}
        for key, value in row.items():
            event, _, name = key.partition("/")
            if name and event in ("train", "eval") and value is not None:
                by_event.setdefault(event, {})[name] = value
        for event, values in by_event.items():
            tokens = step * tokens_per_step if isinstance(tokens_per_step, int) else None
            records.append({"event": event, "step": step, "tokens": tokens, **values})
    return config, records


def latest_timeline(records):
    """Drop what a resumed run replaced: when the steps go back to s, the records from s on were
    logged by the abandoned timeline (the resumed run logs them again)."""
    kept = []
    for r in records:
        if kept and r["step"] < kept[-1]["step"]:
            kept = [k for k in kept if k["step"] < r["step"]]
        kept.append(r)
    return kept


def series_of(records):
    """{metric: {step: (tokens, value)}}, numbers only; a step logged twice keeps the later value."""
    series = {}
    for r in latest_timeline(records):
        for key, value in r.items():
            if key in RECORD_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # None (mfu on a CPU), strings and flags are not curves
            series.setdefault(key, {})[r["step"]] = (r.get("tokens"), float(value))
    return series


def best_rule(metric):
    """min, max, or None where "best" means nothing (lr, grad_norm, ...)."""
    if any(word in metric for word in HIGHER_IS_BETTER):
        return max
    if any(word in metric for word in LOWER_IS_BETTER):
        return min
    return None


def fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def print_table(header, rows):
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


# -----------------------------------------------------------------------------
# read every run first: an error in the last one should not leave a figure of the others
runs = []
for spec in run_specs:
    config, records = read_wandb(spec) if spec.startswith("wandb:") else read_local(spec)
    name = spec if spec.startswith("wandb:") else os.path.normpath(spec)
    runs.append({"name": name, "config": config, "series": series_of(records)})
    if not records:
        print(f"warning: {name} has logged no metrics yet", file=sys.stderr)
available = sorted({m for run in runs for m in run["series"]})
for m in metric_names:
    if not any(m in run["series"] for run in runs):
        fail(f"no run logged the metric {m!r}; available: {', '.join(available) or 'none yet'}")

# final metrics: last and best value of each metric, per run
table = []  # one dict per (metric, run): scriptable when this file is run with runpy
for m in metric_names:
    rule = best_rule(m)
    for run in runs:
        points = run["series"].get(m)
        if not points:
            table.append(dict(metric=m, run=run["name"], last=None, last_step=None, best=None, best_step=None))
            continue
        last_step = max(points)
        finite = [v for _, v in points.values() if math.isfinite(v)]
        best = rule(finite) if rule and finite else None
        best_step = None if best is None else min(s for s in points if points[s][1] == best)  # the first to reach it
        table.append({"metric": m, "run": run["name"], "last": points[last_step][1], "last_step": last_step,
                      "best": best, "best_step": best_step})
print("final metrics (best = min for losses and perplexity, max for accuracy):")
print_table(["metric", "run", "last", "at step", "best", "at step"],
            [[r["metric"], r["run"]] + [fmt(r[k]) for k in ("last", "last_step", "best", "best_step")] for r in table])

# the settings that differ
differing = {}
if len(runs) > 1:
    missing = object()
    keys = [k for run in runs for k in run["config"]]
    for key in dict.fromkeys(keys):  # in the order train.py defines them
        values = [run["config"].get(key, missing) for run in runs]
        if key not in NOT_COMPARED and any(v != values[0] for v in values[1:]):
            differing[key] = [None if v is missing else v for v in values]
    print()
    if differing:
        print("settings that differ:")
        print_table(["setting"] + [run["name"] for run in runs],
                    [[k] + ["(absent)" if k not in run["config"] else repr(v) for run, v in zip(runs, vs)]
                     for k, vs in differing.items()])
    else:
        print("the runs' settings are the same (apart from out_dir)")


def plot(path):
    import matplotlib
    matplotlib.use("Agg")  # files only, no window: works over ssh and in tests
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(metric_names), 2, figsize=(12, 3.6 * len(metric_names)), squeeze=False)
    for row, m in zip(axes, metric_names):
        for ax, x_key in zip(row, ("step", "tokens")):
            for i, run in enumerate(runs):
                points = run["series"].get(m, {})
                steps = [s for s in sorted(points) if x_key == "step" or points[s][0] is not None]
                if not steps:
                    continue
                xs = [s if x_key == "step" else points[s][0] for s in steps]
                ys = [points[s][1] for s in steps]
                ax.plot(xs, ys, color=f"C{i % 10}", label=run["name"], marker="o" if len(xs) <= 50 else None,
                        markersize=3)  # evals are few: dots show where they are
            ax.set_xlabel("step" if x_key == "step" else "tokens seen")
            ax.set_ylabel(m)
            ax.grid(alpha=0.3)
            if log_scale:
                ax.set_yscale("log")
    axes[0][0].legend()
    fig.tight_layout()
    tmp = path + ".tmp"
    try:  # written beside and renamed: a reader never sees half a file
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:].lower(), dpi=120)
        os.replace(tmp, path)
    except OSError as e:
        fail(f"could not write {path} ({one_line(e)}); choose another --output")
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


if output:
    plot(output)
    print(f"\ncurves of {', '.join(metric_names)} against step and tokens: {output}")
