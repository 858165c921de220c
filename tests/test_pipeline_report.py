"""The pipeline's report card (nash/tasks/report.py: write_pipeline_report) from a folder as runs/cpu.sh leaves
it: stages.jsonl, a run folder per training stage and eval/<column>.json from evaluate.py --output. The end-to-end
run of the script itself (SMOKE=1 runs/cpu.sh) is in test_pipeline.py."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from nash.tasks.report import SUMMARY_COLUMNS, SUMMARY_ROWS, git_state, write_pipeline_report


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


@pytest.mark.slow
def test_every_cell_has_a_number_or_says_not_run(tmp_path):
    write(tmp_path / "stages.jsonl", "\n".join(json.dumps(s) for s in [
        {"stage": "tokenizer", "seconds": 30.0}, {"stage": "base", "seconds": 600.0, "run": "base"},
        {"stage": "sft", "seconds": 120.0, "run": "sft"}]) + "\n")
    write(tmp_path / "base" / "config.json", {"num_params": 1234, "task": "pretrain", "n_layers": 2, "lora_rank": 0})
    write(tmp_path / "base" / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
        {"event": "train", "step": 10, "tokens": 640, "time": 1.0, "loss": 3.5},
        {"event": "eval", "step": 10, "tokens": 640, "time": 2.0, "val_loss": 3.25, "train_loss": 3.4}]) + "\n")
    write(tmp_path / "eval" / "base.json", {"task_data": "tests/task_data", "core": 0.125, "tasks": {
        "arc_easy": {"acc": 0.4, "acc_stderr": 0.2449, "n": 5}}})
    write(tmp_path / "eval" / "sft.json", {"task_data": "", "core": -0.05, "chatcore": 0.3, "tasks": {
        "gsm8k": {"exact_match": 0.5, "exact_match_stderr": None, "n": 1}}})
    write(tmp_path / "eval" / "best_of_n.json", {"task_data": "", "tasks": {"arith": {
        "exact_match": 0.25, "exact_match_stderr": 0.03, "n": 200,  # (the greedy figure: not this column's)
        "sampled": {"num_samples": 8, "n": 200, "pass@1": 0.2, "best_of_8": 0.3, "best_of_8_stderr": 0.0325}}}})
    text = open(write_pipeline_report(str(tmp_path), hourly_cost=2.0)).read()
    assert not (tmp_path / "report.md.tmp").exists()
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in text.split("## Summary")[1].split("##")[0].splitlines() if line.startswith("| ")}
    assert table["metric"] == [label for label, _ in SUMMARY_COLUMNS]
    assert set(table) == {"metric"} | {label for label, _, _ in SUMMARY_ROWS}
    assert table["CORE"] == ["0.1250", "-0.0500", "not run", "not run"]
    assert table["ARC-Easy"] == ["0.4000 ± 0.2449 (n=5)", "not run", "not run", "not run"]
    assert table["GSM8K"][1] == "0.5000 (n=1)" and table["ChatCORE"][:2] == ["not run", "0.3000"]
    assert table["Arithmetic"] == ["not run", "not run", "not run", "0.3000 ± 0.0325 (n=200)"]  # the verifier's pick
    assert "base: offline files in tests/task_data; sft: the Hugging Face hub; best_of_n: the Hugging Face hub" in text
    assert "| base | 10.0 min | 1234 | 640 | 10 | 3.5000 | 3.2500 |" in text
    assert "| total wall time | 12.5 min over 3 stages |" in text and "| cost | 0.42 at 2.00 per hour |" in text
    commit, _ = git_state()
    assert commit in text and commit != "unknown"  # the tests run in a checkout
    assert "![loss curves of every stage](pipeline_curves.png)" in text and (tmp_path / "pipeline_curves.png").exists()


@pytest.mark.slow
def test_the_module_is_the_scripts_last_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nash.tasks.report", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("report.md") and "| CORE | not run | not run | not run | not run |" in \
        (tmp_path / "report.md").read_text()
