"""compare.py on two real tiny runs (the figure, the final-metrics table against metrics.jsonl, the settings
diff), on hand-written logs of a resumed run and a run still writing, on a wandb run through a stand-in for
the wandb API, and its errors. compare.py imports no torch, so its runs are quick."""
import json
import os
import sys
import types

import pytest

from conftest import ROOT, TINY_MODEL, TINY_TRAINING, read_metrics, run_inline, run_script

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(stdout):
    """{(metric, run): (last, at step, best, at step)} from the printed final-metrics table."""
    lines = stdout.split("\n\n")[0].splitlines()
    assert lines[1].split() == ["metric", "run", "last", "at", "step", "best", "at", "step"]
    return {tuple(line.split()[:2]): tuple(line.split()[2:]) for line in lines[2:]}


def fmt(value):
    return f"{value:.5g}"


def expected_row(run_dir, metric, best):
    """(last, its step, best, its step) of a metric, straight from metrics.jsonl (a fresh run: no step twice)."""
    points = [(e["step"], e[metric]) for e in read_metrics(run_dir) if metric in e]
    last_step, last = max(points)
    best_value = best(v for _, v in points)
    best_step = min(s for s, v in points if v == best_value)
    return fmt(last), str(last_step), fmt(best_value), str(best_step)


@pytest.fixture(scope="module")
def other_run(tiny_data, tmp_path_factory):
    """A second, shorter real run that differs from tiny_run in a few settings."""
    out = tmp_path_factory.mktemp("runs") / "other"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}",
               "--max_steps=4", "--eval_interval=2", "--log_interval=2", "--batch_size=2", "--learning_rate=1e-3")
    return str(out)


def test_two_runs_figure_table_and_settings_diff(tiny_run, other_run, tmp_path):
    png = tmp_path / "ab.png"
    proc = run_script("compare.py", tiny_run, other_run, "--metrics=val_loss,accuracy,loss,lr", f"--output={png}")
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    rows = table_rows(proc.stdout)
    a, b = os.path.normpath(tiny_run), os.path.normpath(other_run)
    for run_dir, name in ((tiny_run, a), (other_run, b)):
        assert rows[("val_loss", name)] == expected_row(run_dir, "val_loss", min)
        assert rows[("loss", name)] == expected_row(run_dir, "loss", min)
        assert rows[("accuracy", name)] == expected_row(run_dir, "accuracy", max)
        assert rows[("lr", name)][2:] == ("-", "-")  # the learning rate has no "best"
    assert rows[("val_loss", b)][1] == "4" and rows[("val_loss", a)][1] == "20"
    # the settings diff: exactly what differs (tokens_per_step follows from batch_size), out_dir left out
    diff = proc.stdout.split("settings that differ:\n")[1].split("\n\n")[0].splitlines()
    assert diff[0].split() == ["setting", a, b]
    assert {line.split()[0] for line in diff[1:]} == {"batch_size", "learning_rate", "max_steps", "eval_interval",
                                                      "log_interval", "tokens_per_step"}
    assert diff[1:] and any(line.split() == ["batch_size", "4", "2"] for line in diff[1:])


def test_one_run_is_its_own_plot(tiny_run, tmp_path):
    png = tmp_path / "one.png"
    proc = run_script("compare.py", tiny_run, f"--output={png}")
    assert png.read_bytes()[:8] == PNG_MAGIC
    rows = table_rows(proc.stdout)
    assert set(rows) == {("loss", os.path.normpath(tiny_run)), ("val_loss", os.path.normpath(tiny_run))}
    assert "settings that differ" not in proc.stdout


def write_run(folder, config, lines, tail=""):
    os.makedirs(folder)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in lines) + tail)


@pytest.mark.slow
def test_resumed_run_keeps_the_latest_timeline(tmp_path):
    def ev(step, val_loss):
        return {"event": "eval", "step": step, "tokens": 10 * step, "time": 0, "val_loss": val_loss, "accuracy": 0.1}

    def tr(step, loss):
        return {"event": "train", "step": step, "tokens": 10 * step, "time": 0, "loss": loss}

    # logged to step 30, then resumed from the checkpoint at step 10: steps 20 and 30 were abandoned, step 20
    # was logged again, and the resumed run is still writing (a partial last line)
    write_run(tmp_path / "resumed", {"learning_rate": 0.1},
              [tr(10, 5.0), ev(10, 4.0), tr(20, 3.0), ev(20, 1.0), tr(30, 2.0), ev(30, 0.5),
               tr(20, 3.5), ev(20, 2.5)], tail='{"event": "train", "step": 30, "lo')
    proc = run_script("compare.py", tmp_path / "resumed", "--metrics=val_loss,loss", "--output=")
    rows = table_rows(proc.stdout)
    name = os.path.normpath(tmp_path / "resumed")
    assert rows[("val_loss", name)] == ("2.5", "20", "2.5", "20")  # not 0.5 at 30, nor 1.0 at 20: replaced
    assert rows[("loss", name)] == ("3.5", "20", "3.5", "20")
    assert proc.stderr == "" and not os.path.exists("compare.png")


def test_runs_with_different_metric_sets(tiny_run, tmp_path):
    write_run(tmp_path / "evals_only", {**json.load(open(os.path.join(tiny_run, "config.json"))), "learning_rate": 1.0},
              [{"event": "eval", "step": 5, "tokens": 50, "time": 0, "val_loss": 7.0}])
    proc = run_script("compare.py", tiny_run, tmp_path / "evals_only", "--metrics=val_loss,accuracy",
                      f"--output={tmp_path / 'c.svg'}")
    rows = table_rows(proc.stdout)
    assert rows[("accuracy", os.path.normpath(tmp_path / "evals_only"))] == ("-", "-", "-", "-")
    assert rows[("val_loss", os.path.normpath(tmp_path / "evals_only"))] == ("7", "5", "7", "5")
    assert (tmp_path / "c.svg").read_text().lstrip().startswith("<?xml")
    assert "learning_rate" in proc.stdout.split("settings that differ:")[1]


def test_wandb_run_through_the_public_api(tiny_run, tmp_path, monkeypatch, capsys):
    rows = [{"_step": 5, "train/loss": 6.0, "train/lr": 0.01}, {"_step": 10, "train/loss": 5.0, "train/lr": 0.005},
            {"_step": 10, "eval/val_loss": 5.5, "eval/accuracy": 0.2}, {"_step": 20, "eval/val_loss": 5.25}]
    asked = []

    class FakeRun:
        config = {**json.load(open(os.path.join(tiny_run, "config.json"))), "batch_size": 64, "_wandb": {"x": 1}}

        def scan_history(self):
            return iter(rows)

    class FakeApi:
        def run(self, path):
            asked.append(path)
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=FakeApi))
    g = run_inline(monkeypatch, "compare.py", "wandb:team/proj/abc123", tiny_run, "--metrics=val_loss,loss",
                   f"--output={tmp_path / 'w.png'}")
    assert asked == ["team/proj/abc123"]
    table = {(r["metric"], r["run"]): (r["last"], r["last_step"], r["best"], r["best_step"]) for r in g["table"]}
    assert table[("val_loss", "wandb:team/proj/abc123")] == (5.25, 20, 5.25, 20)
    assert table[("loss", "wandb:team/proj/abc123")] == (5.0, 10, 5.0, 10)
    wandb_run = g["runs"][0]
    assert wandb_run["series"]["val_loss"][20] == (20 * 128, 5.25)  # tokens from the config's tokens_per_step
    assert g["differing"] == {"batch_size": [64, 4]}  # wandb's own _wandb entry is not a setting
    assert (tmp_path / "w.png").read_bytes()[:8] == PNG_MAGIC


def test_wandb_errors_are_one_line(monkeypatch):
    class OfflineApi:
        def run(self, path):
            raise ConnectionError("Max retries exceeded\nwith url: https://api.wandb.ai/graphql")

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(Api=OfflineApi))
    for spec, words in (("wandb:team/proj/abc", "could not read wandb:team/proj/abc from Weights & Biases (Connection"),
                        ("wandb:team/abc", "should look like wandb:entity/project/run_id")):
        with pytest.raises(SystemExit) as info:
            run_inline(monkeypatch, "compare.py", spec)
        assert words in info.value.code and "\n" not in info.value.code


def test_errors(tiny_run, tmp_path):
    (tmp_path / "empty").mkdir()
    never = f"--output={tmp_path / 'never.png'}"
    for args, words in (([tmp_path / "empty", never], "is not a run folder (no config.json)"),
                        ([tiny_run, tmp_path / "nowhere", never], "is not a folder"),
                        ([never], "no runs given"),
                        ([tiny_run, "--metrics=val_los", never], "no run logged the metric 'val_los'; available: "),
                        ([tiny_run, "--output=x.jpg"], "should end in .png, .pdf or .svg"),
                        ([tiny_run, "--colour=red", never], "unknown setting 'colour'")):
        proc = run_script("compare.py", *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and words in lines[0], (args, proc.stderr)
    assert not (tmp_path / "never.png").exists() and not os.path.exists("x.jpg")
    proc = run_script("compare.py", "--help")
    assert "--metrics" in proc.stdout and "wandb:entity/project/run_id" in proc.stdout
