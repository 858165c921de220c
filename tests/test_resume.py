"""Resuming a run (train.py --init_from=resume) continues the run that is in the folder, as a user does it (issue 37
item 1): fine-tune, Ctrl-C, then the bare resume command. Its settings come from the run; a flag may change only
what is safe mid-run; anything else is one error line and nothing in the folder changes."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, error_line, read_metrics, run_script
from nash.checkpoint import load_checkpoint
from nash.objectives import OBJECTIVES


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    """A pretraining run of config/sft_demo.py's shape (the quick start's), a few steps."""
    out = tmp_path_factory.mktemp("runs") / "pre"
    run_script("train.py", "--max_seq_len=32", "--batch_size=4", "--max_steps=4", "--eval_interval=0",
               "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}")
    return str(out)


def interrupted_sft(pretrained, sft_data, out):
    """The issue's fine-tune command, stopped with Ctrl-C after its first checkpoint; returns its stdout."""
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "config/sft_demo.py", f"--init_from={pretrained}",
           "--dataset=echo", f"--data_dir={sft_data}", f"--out_dir={out}",
           "--batch_size=8", "--eval_iters=1", "--eval_interval=4", "--checkpoint_interval=4", "--log_interval=2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 240
    while time.time() < deadline and not os.path.exists(os.path.join(out, "ckpt.pt")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: the step ends, the run saves and exits
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, stdout + stderr
    return stdout


def folder_state(out):
    return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}


def test_bare_resume_continues_the_fine_tune(pretrained, sft_data, tmp_path):
    out = str(tmp_path / "out-my-sft")
    first = interrupted_sft(pretrained, sft_data, out)
    assert "warning: 2000 steps of 8 sequences go 400 times through the 40 training examples" in first
    stopped = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert 0 < stopped["step"] < 2000
    before = [e["loss"] for e in read_metrics(out) if e["event"] == "train"]

    proc = run_script("train.py", f"--out_dir={out}", "--init_from=resume", f"--max_steps={stopped['step'] + 6}")
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["objective"] == "sft" and config["dataset"] == "echo" and config["data_dir"] == sft_data
    assert config["init_from"] == pretrained and config["batch_size"] == 8 and config["max_steps"] == stopped["step"] + 6
    state = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert state["step"] == stopped["step"] + 6 and state["settings"]["objective"] == "sft"
    assert state["model_config"] == stopped["model_config"]  # the same model goes on
    after = [e["loss"] for e in read_metrics(out) if e["event"] == "train"][len(before):]
    assert after and after[0] < before[-1] + 1.0, (before, after)  # the loss continues, it does not jump (to ~12)
    assert f"`python evaluate.py --out_dir={out}`" in proc.stdout  # the next step an SFT run takes


def test_resume_refuses_a_changed_setting_and_writes_nothing(tiny_run, tmp_path):
    import shutil
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    files = folder_state(out)
    line = error_line(run_script("train.py", f"--out_dir={out}", "--init_from=resume", "--max_steps=30",
                                 "--objective=sft", "--batch_size=2", check=False))
    assert "objective='sft' where the run has 'pretrain'" in line and "batch_size=2 where the run has 4" in line
    assert "max_steps" in line  # the list of what may change
    assert folder_state(out) == files  # nothing written before the check


def test_a_checkpoint_from_before_the_rename_resumes(tiny_run, tmp_path):
    """Runs saved with the setting `task` (now `objective`) still resume, as what they were."""
    import shutil
    import torch
    out = tmp_path / "old"
    shutil.copytree(tiny_run, out)
    state = torch.load(out / "ckpt.pt", weights_only=True)
    state["settings"]["task"] = state["settings"].pop("objective")
    torch.save(state, out / "ckpt.pt")
    run_script("train.py", f"--out_dir={out}", "--init_from=resume", "--max_steps=22")
    config = json.load(open(out / "config.json"))
    assert config["objective"] == "pretrain" and "task" not in config and config["max_steps"] == 22


def test_help_lists_each_objectives_settings_under_its_heading():
    text = run_script("train.py", "--help").stdout
    loop, _, rest = text.partition("\nLoRA, for the fine-tuning objectives")
    assert "--objective" in loop and "--max_steps" in loop and "--rl_samples" not in loop and "--lora_rank" not in loop
    assert "--dpo_beta" in rest.split("\nobjective=rl")[0]
    assert "nash/objectives/rl.py" in text and "--rl_samples" in text.split("objective=rl")[1]
    assert "--lora_rank" in text.split("LoRA, for the fine-tuning objectives")[1]


def test_next_step_names_the_right_script():
    settings = {"out_dir": "RUN", "init_from": "GEN", "reward_task": "arith", "verifier_samples": 8}
    hint = {name: cls.next_step.format(**settings) for name, cls in OBJECTIVES.items()}
    assert "sample.py --out_dir=RUN" in hint["pretrain"]
    assert "chat.py --out_dir=RUN" in hint["chat"] and "sample.py" not in hint["chat"]
    assert "evaluate.py --out_dir=RUN --tasks=arith" in hint["rl"]
    assert "evaluate.py --init_from=GEN --tasks=arith --num_samples=8 --verifier=RUN" in hint["verifier"]
    assert "evaluate.py --out_dir=RUN" in hint["sft"]
