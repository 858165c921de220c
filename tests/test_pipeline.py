"""SMOKE=1 runs/cpu.sh as the README shows it: every stage of the pipeline (tokenizer, data, base, eval, chat SFT,
eval, RL, eval, verifier, best-of-N) shrunk to seconds, ending in a report card with a figure or "not run" in every
summary cell; a rerun skips the finished stages; a failing stage stops the script with its own error. The full-size
scripts' commands (runs/gpu.sh's too) are checked in a dry run."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs/cpu.sh and runs/gpu.sh end to end


def run(tmp_path, **env):
    return subprocess.run(["bash", "runs/cpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SMOKE": "1", "DIR": str(tmp_path / "pipeline"), **env})


def test_smoke_pipeline_runs_every_stage_and_writes_the_report(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    headers = [line for line in proc.stdout.splitlines() if line.startswith("== stage")]
    assert [h.split(":")[0] for h in headers] == [f"== stage {k} of 9" for k in range(1, 10)]
    assert proc.stdout.strip().splitlines()[-1] == f"the report card: {tmp_path / 'pipeline'}/report.md"
    report = (tmp_path / "pipeline" / "report.md").read_text()
    summary = report.split("## Summary")[1].split("##")[0]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| metric")}
    assert rows["CORE"][0] != "not run" and rows["ChatCORE"][1] != "not run" and rows["ChatCORE"][2] != "not run"
    assert rows["Arithmetic"][1].endswith("(n=4)") and rows["Arithmetic"][3].endswith("(n=4)")  # best-of-2
    assert rows["HumanEval"][1].endswith("(n=4)") and rows["ChatCORE"][3] == "not run"  # (a mean of greedy figures)
    assert all(cell for cells in rows.values() for cell in cells)
    for stage in ("base", "sft", "rl", "verifier"):
        assert f"| {stage} |" in report.split("## Stages")[1]

    again = run(tmp_path)  # everything finished: every stage is skipped
    assert again.returncode == 0 and again.stdout.count("finished in an earlier run: skipped") == 9


def test_a_failing_stage_stops_the_script_with_its_own_error(tmp_path):
    proc = run(tmp_path, TOKENIZER="nonsense")
    assert proc.returncode == 1 and "error: TOKENIZER=nonsense should be bpe or gpt2" in proc.stderr
    done = tmp_path / "pipeline" / ".done"
    done.mkdir(parents=True, exist_ok=True)
    (done / "data").touch()  # the data stage "finished" but left no shards: pretraining must fail, and stop there
    proc = run(tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "holds no prepared dataset" in errors[0]  # train.py's own message first
    assert errors[-1].startswith("error: stage 2 (base) failed") and "== stage 3" not in proc.stdout


@pytest.mark.parametrize("script", ["runs/cpu.sh", "runs/gpu.sh"])
def test_every_stage_of_the_full_scripts_names_real_settings(script, tmp_path):
    """DRY_RUN=1 prints each stage's command, runs none: the full-size runs (gpu.sh cannot run here: the hub, GPUs)
    have as many stages as they announce, and every --flag of every command is a setting of its script."""
    proc = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DRY_RUN": "1", "DIR": str(tmp_path / "pipeline")})
    assert proc.returncode == 0, proc.stderr
    headers = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("== stage")]
    n = int(headers[0].split(" of ")[1])
    assert headers == [f"== stage {k} of {n}" for k in range(1, n + 1)]
    commands = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("   $ ")]
    assert len(commands) == n
    known = {}
    for command in commands:
        at = next(i for i, a in enumerate(command) if a.endswith(".py") and not a.startswith("config/"))
        name = command[at]
        if name not in known:  # the settings its --help lists, "  --name = default  # comment"
            help_text = subprocess.run([sys.executable, name, "--help"], cwd=ROOT, capture_output=True, text=True).stdout
            known[name] = {line.split()[0][2:] for line in help_text.splitlines() if line.startswith("  --")}
        for arg in command[at + 1:]:
            if arg.startswith("--"):
                assert arg[2:].split("=")[0] in known[name], f"{script}: {name} has no setting {arg}"
            else:
                assert os.path.isfile(os.path.join(ROOT, arg)), f"{script}: {arg} is not a config file"
