"""Runs cannot collide (issue 35): one run at a time in an out_dir (a lock naming the other run's pid, a dead run's
lock taken over), every file of the run written whole or not at all, a full disk one error line that leaves the last
good checkpoint, and an out_dir that is a symbolic link loop one error line."""
import json
import os
import resource
import signal
import subprocess
import sys
import time

from conftest import ROOT, TINY_MODEL, TINY_TRAINING, error_line, run_script
from nash.checkpoint import load_checkpoint


def train_cmd(out_dir, data_dir, *flags):
    return [sys.executable, os.path.join(ROOT, "train.py"), *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny",
            f"--data_dir={data_dir}", f"--out_dir={out_dir}", *flags]


def test_a_second_run_into_a_busy_out_dir_is_refused(tiny_data, tmp_path):
    out = tmp_path / "busy"
    first = subprocess.Popen(train_cmd(out, tiny_data, "--max_steps=100000", "--eval_interval=0", "--log_interval=1",
                                       "--checkpoint_interval=2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (out / "ckpt.pt").exists():
            time.sleep(0.2)
        second = subprocess.run(train_cmd(out, tiny_data, "--overwrite", "--max_steps=2"), capture_output=True,
                                text=True, cwd=ROOT, timeout=300)
        line = error_line(second)
        assert f"in use by another training run (pid {first.pid})" in line
        resumed = subprocess.run(train_cmd(out, tiny_data, "--init_from=resume", "--max_steps=100001"),
                                 capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert f"pid {first.pid}" in error_line(resumed)
        assert first.poll() is None  # the first run goes on, untouched
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    # the first run is gone; its lock file stays behind but holds nothing: the folder is free again
    assert (out / ".lock").exists()
    step = load_checkpoint(out / "ckpt.pt")["step"]
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}",
               "--init_from=resume", f"--max_steps={step + 2}", "--eval_interval=0")
    assert load_checkpoint(out / "ckpt.pt")["step"] == step + 2


def limited(max_bytes):
    """A subprocess whose files cannot grow past max_bytes, as on a full disk (Python ignores SIGXFSZ, so a write
    past it fails with EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def test_a_full_disk_is_one_error_line_and_the_last_checkpoint_survives(tiny_data, tmp_path):
    out = tmp_path / "full"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}",
               "--max_steps=4", "--eval_interval=2", "--checkpoint_interval=2")
    checkpoints = {name: (out / name).read_bytes() for name in ("ckpt.pt", "best.pt")}
    for max_bytes, what in ((1_000_000, "ckpt.pt or best.pt"), (100, "config.json")):
        before = {**checkpoints, "config.json": (out / "config.json").read_bytes()}
        if what != "config.json":  # (the resumed run rewrites config.json, with its new max_steps, before it saves)
            before.pop("config.json")
        proc = subprocess.run(train_cmd(out, tiny_data, "--init_from=resume", "--max_steps=8", "--eval_interval=2",
                                        "--checkpoint_interval=2"), capture_output=True, text=True, cwd=ROOT,
                              timeout=300, preexec_fn=limited(max_bytes))
        line = error_line(proc)
        assert "cannot write" in line and "is the disk full?" in line and "the previous one is untouched" in line, what
        for name, data in before.items():
            assert (out / name).read_bytes() == data, (name, what)
        assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
        assert json.loads((out / "config.json").read_text())["objective"] == "pretrain"  # whole, valid JSON
    assert load_checkpoint(out / "ckpt.pt")["step"] == 4


def test_an_out_dir_that_is_a_symlink_loop_is_one_error_line(tiny_data, tmp_path):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    proc = run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}",
                      f"--out_dir={tmp_path / 'a'}", check=False)
    assert "symbolic links" in error_line(proc)
