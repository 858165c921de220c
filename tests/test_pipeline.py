"""SMOKE=1 runs/cpu.sh as the README shows it: every stage of the pipeline (tokenizer, data, base, eval, chat SFT,
eval, RL, eval, verifier, best-of-N) shrunk to seconds, ending in a report card with a figure or "not run" in every summary cell; a
rerun skips the finished stages; a failing stage stops the script with its own error."""
import os
import subprocess

from conftest import ROOT


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
