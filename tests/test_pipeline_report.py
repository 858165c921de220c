"""The pipeline's report card (nash/tasks/report.py: write_pipeline_report) from a folder as runs/cpu.sh leaves
it: stages.jsonl, a run folder per training stage and eval/<column>.json from evaluate.py --output. The headline
holds only figures with signal (n >= 200, or an interval that excludes chance); the few-item fixtures go to the
machinery checks; the curves get one panel per kind of quantity. The end-to-end run of the script itself
(SMOKE=1 runs/cpu.sh) is in test_pipeline.py."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from nash.tasks.report import (COLUMNS, HEADLINE_ROWS, KINDS, SUMMARY_COLUMNS, SUMMARY_ROWS, curve_panels, git_state,
                               signal, write_pipeline_report)


def write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value if isinstance(value, str) else json.dumps(value))


def table(text, section):
    body = text.split(f"## {section}")[1].split("\n## ")[0]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in body.splitlines() if line.startswith("| ")}


@pytest.mark.parametrize("value, err, n, chance, kept", [
    (0.30, 0.0324, 200, 0.25, True),  # enough items: kept, even within chance's reach
    (0.60, 0.2449, 5, 0.25, False),  # ARC-Easy on 5 fixture items: 0.60 +- 0.48 reaches 0.25
    (0.0, 0.0, 164, 0.0, False),  # HumanEval 0/164: no interval at all, and at chance
    (0.90, 0.0577, 30, 0.25, True),  # few items, but 0.90 - 1.96 * 0.058 = 0.79 > 0.25: the interval excludes chance
    (0.40, 0.02, 199, 0.25, True),  # just under 200, interval 0.36..0.44 excludes 0.25
    (0.27, 0.02, 199, 0.25, False),  # just under 200, interval includes 0.25
    (1.85, None, 150, None, False),  # no chance level (bits per byte): only the items count
])
def test_the_headline_refuses_a_figure_without_signal(value, err, n, chance, kept):
    assert signal(value, err, n, chance) is kept


@pytest.mark.slow
def test_every_cell_has_a_number_a_refusal_or_says_not_run(tmp_path):
    write(tmp_path / "stages.jsonl", "\n".join(json.dumps(s) for s in [
        {"stage": "tokenizer", "seconds": 30.0}, {"stage": "base", "seconds": 600.0, "run": "base"},
        {"stage": "sft", "seconds": 120.0, "run": "sft"}, {"stage": "rl", "seconds": 60.0, "run": "rl"}]) + "\n")
    write(tmp_path / "base" / "config.json", {"num_params": 1234, "task": "pretrain", "n_layers": 2, "lora_rank": 0,
                                              "data_dir": "out/data/corpus", "dataset": "shakespeare"})
    write(tmp_path / "base" / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
        {"event": "train", "step": 10, "tokens": 640, "time": 1.0, "loss": 3.5},
        {"event": "eval", "step": 10, "tokens": 640, "time": 2.0, "val_loss": 3.25, "train_loss": 3.4}]) + "\n")
    write(tmp_path / "rl" / "config.json", {"objective": "rl", "dataset": "shakespeare", "reward_task": "countdown"})
    write(tmp_path / "eval" / "base.json", {"task_data": "tests/task_data", "core": 0.125, "tasks": {
        "arc_easy": {"acc": 0.4, "acc_stderr": 0.2449, "n": 5},
        "shakespeare_heldout": {"acc": 0.3, "acc_norm": 0.41, "acc_norm_stderr": 0.022, "n": 500}}})
    write(tmp_path / "eval" / "base_loss.json", {"bits_per_byte": 2.25, "tokens": 14505})
    write(tmp_path / "eval" / "sft.json", {"task_data": "", "core": -0.05, "chatcore": 0.3, "tasks": {
        "gsm8k": {"exact_match": 0.5, "exact_match_stderr": None, "n": 1},
        # countdown's figure is `correct` (working and target), never exact_match (the final number alone)
        "countdown": {"correct": 0.25, "correct_stderr": 0.0307, "exact_match": 0.75, "exact_match_stderr": 0.03, "n": 200}}})
    write(tmp_path / "eval" / "rl.json", {"task_data": "", "tasks": {  # few items, but far from chance (0)
        "countdown": {"correct": 0.5, "correct_stderr": 0.1118, "exact_match": 0.9, "exact_match_stderr": 0.07, "n": 20}}})
    write(tmp_path / "eval" / "dpo.json", {"task_data": "", "tasks": {  # few items, at chance's reach
        "countdown": {"correct": 0.05, "correct_stderr": 0.05, "exact_match": 0.5, "exact_match_stderr": 0.11, "n": 20}}})
    write(tmp_path / "eval" / "best_of_n.json", {"task_data": "", "tasks": {"countdown": {
        "correct": 0.25, "correct_stderr": 0.03, "n": 200,  # (the greedy figure: not this column's)
        "sampled": {"num_samples": 8, "n": 200, "pass@1": 0.2, "best_of_8": 0.3, "best_of_8_stderr": 0.0325}}}})
    text = open(write_pipeline_report(str(tmp_path), hourly_cost=2.0)).read()
    assert not (tmp_path / "report.md.tmp").exists()
    headline = table(text, "Headline")
    assert headline.pop("metric") == [label for label, _ in COLUMNS]
    assert len(headline) == len(HEADLINE_ROWS)
    text_row, bpb_row, countdown_row = headline.values()
    assert text_row == ["0.4100 ± 0.0220 (n=500)"] + ["not run"] * 5
    assert bpb_row == ["2.2500 (n=14505)"] + ["not run"] * 5
    assert countdown_row == ["not run", "0.2500 ± 0.0307 (n=200)", "no signal (n=20): in the machinery checks",
                         "0.5000 ± 0.1118 (n=20)", "0.3000 ± 0.0325 (n=200)", "not run"]
    label = next(k for k in table(text, "Headline") if k.startswith("Val bits per byte"))
    assert "unigram baseline: unknown" in label  # (no prepared data in this folder)
    checks = table(text, "Machinery checks")
    assert checks.pop("metric") == [label for label, _ in SUMMARY_COLUMNS]
    assert set(checks) == {label for label, _, _ in SUMMARY_ROWS}
    assert checks["CORE"] == ["0.1250", "-0.0500", "not run", "not run", "not run", "not run"]
    assert checks["ARC-Easy"] == ["0.4000 ± 0.2449 (n=5)"] + ["not run"] * 5
    assert checks["Countdown (correct: working and target)"][2] == "0.0500 ± 0.0500 (n=20)"  # the headline refused it
    countdown_label = next(k for k in table(text, "Headline") if k.startswith("Countdown"))
    assert "metric `correct`" in countdown_label and "pass@1 with true working" in countdown_label
    assert checks["GSM8K"][1] == "0.5000 (n=1)" and checks["ChatCORE"][:2] == ["not run", "0.3000"]
    assert "base: offline files in tests/task_data; sft: the Hugging Face hub" in text
    assert "| base | 10.0 min | 1234 | 640 | 10 | LM loss (nats/token) | 3.5000 | 3.2500 |" in text
    settings = table(text, "Settings that matter")
    assert settings["base"][:2] == ["pretrain", "corpus"]  # its data folder, not the default dataset setting
    assert settings["rl"][:2] == ["rl", "countdown problems (generated, checked by its answer check)"]  # not shakespeare
    assert "| total wall time | 13.5 min over 4 stages |" in text and "| cost | 0.45 at 2.00 per hour |" in text
    commit, _ = git_state()
    assert commit in text and commit != "unknown"  # the tests run in a checkout
    assert "![one panel per kind of quantity](pipeline_curves.png)" in text and (tmp_path / "pipeline_curves.png").exists()


def test_stages_file_lines_cut_short_or_repeated(tmp_path, capsys):
    """stages.jsonl as a killed or redone stage leaves it: a cut last line is left out (one line says so), a stage
    redone keeps its latest line in its first place; recording rewrites the file whole without the cut line."""
    from nash import stages as stages_file
    from nash.tasks.report import read_stages
    whole = [{"stage": "data", "seconds": 1.0, "run": None}, {"stage": "base", "seconds": 2.0, "run": "base"},
             {"stage": "data", "seconds": 3.0, "run": None}]
    write(tmp_path / "stages.jsonl", "".join(json.dumps(r) + "\n" for r in whole) + '{"stage": "sft", "sec')
    assert read_stages(str(tmp_path)) == [whole[2], whole[1]]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"note: {tmp_path / 'stages.jsonl'}: 1 line(s) cut short left out")
    stages_file.record(str(tmp_path), "sft", 4.5, "sft")
    assert "1 line(s) cut short dropped" in capsys.readouterr().out
    assert [json.loads(line) for line in (tmp_path / "stages.jsonl").read_text().splitlines()] == [
        whole[2], whole[1], {"stage": "sft", "seconds": 4.5, "run": "sft"}]
    assert read_stages(str(tmp_path))[-1]["seconds"] == 4.5 and capsys.readouterr().err == ""


@pytest.mark.slow
def test_the_curves_get_one_panel_per_kind_of_quantity(tmp_path):
    """LM loss, chat loss, RL's 1 - pass@1 and the verifier's BCE are different quantities: never one axis."""
    runs = []
    for name, objective, extra in (("base", "pretrain", {}), ("sft", "chat", {}), ("more", "chat", {}),
                                   ("rl", "rl", {"reward": 0.4}), ("verifier", "verifier", {})):
        write(tmp_path / name / "config.json", {"task": objective})
        write(tmp_path / name / "metrics.jsonl", "\n".join(json.dumps(r) for r in [
            {"event": "train", "step": 1, "tokens": 8, "time": 1.0, "loss": 2.0, **extra},
            {"event": "eval", "step": 1, "tokens": 8, "time": 2.0, "val_loss": 1.5}]) + "\n")
        runs.append((name, str(tmp_path / name)))
    panels = curve_panels(runs)
    assert list(panels) == [KINDS["pretrain"], KINDS["chat"], KINDS["rl"], KINDS["verifier"]]
    assert [(stage, key) for stage, key, _, _ in panels[KINDS["chat"]]] == [
        ("sft", "val_loss"), ("sft", "loss"), ("more", "val_loss"), ("more", "loss")]
    assert [key for _, key, _, _ in panels[KINDS["rl"]]] == ["val_loss", "reward"]  # RL's train curve is its reward


@pytest.mark.slow
def test_the_module_is_the_scripts_last_command(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nash.tasks.report", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "report.md").read_text()
    assert proc.stdout.strip().endswith("report.md") and "| CORE | not run | not run | not run | not run | not run | not run |" \
        in report
    assert "not run | not run | not run | not run | not run | not run |" in report.split("## Headline")[1]


def test_the_held_out_text_task_is_held_out_and_has_the_items_for_signal():
    """The base column's task: 500 items (n >= 200), 4 endings each, all from the text prepare.py holds out of
    data/shakespeare/input.txt, the same every time."""
    from nash.tasks import TASKS, shakespeare
    from nash.textsplit import split_pieces, txt_pieces
    rows = shakespeare.read_rows("val")
    assert len(rows) == 500 and rows == shakespeare.read_rows("val")
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 and 0 <= r["gold"] < 4 for r in rows)
    assert 0.15 < sum(r["gold"] == 0 for r in rows) / len(rows) < 0.35  # the true ending is not always first
    train = "".join(text for split, text, _ in split_pieces(txt_pieces(shakespeare.INPUT), 0.01) if split == "train")
    held_out = shakespeare.held_out_text()
    for r in rows[::25]:
        passage = r["context"].strip() + " " + r["choices"][r["gold"]]
        assert passage.split("\n")[-1] in held_out and passage not in train
    assert TASKS["shakespeare_heldout"].doc(rows[0])["choices"] == rows[0]["choices"]
