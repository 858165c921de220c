"""Issue 37's frictions as a new user met them, each by the README's command as written, in a fresh checkout
(conftest.clean_checkout): export.py into export/ (no such folder on a fresh clone) writing files others can
read, a benchmark offline failing at once rather than after ~27 s of hub retries, and compare.py's default
plot showing the training loss of every log line, not just the few evals."""
import os
import shutil
import stat
import time

import pytest

from conftest import read_metrics, run_inline, run_script
from test_lora import lora_sft


def as_out(run, name="out"):
    """The run where the README's commands expect it: ./out of the checkout (a copy; fixtures are read-only)."""
    shutil.copytree(run, name)
    return name


def modes(folder):
    return {name: stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) for name in os.listdir(folder)}


@pytest.mark.slow
def test_export_into_a_new_folder_writes_files_everyone_can_read(tiny_run, tiny_sft_run, sft_data):
    as_out(tiny_run)
    assert not os.path.exists("export")  # a fresh clone has none
    run_script("export.py", "--out_dir=out", "--output=export/my-model")  # README, export
    assert stat.S_IMODE(os.stat("export/my-model").st_mode) == 0o755
    files = modes("export/my-model")
    assert "model.safetensors" in files and set(files.values()) == {0o644}, files
    assert not [n for n in os.listdir("export") if n.startswith(".")]  # no temporary folder left
    # README: a LoRA run's adapters, for peft
    lora_sft("out-lora", tiny_sft_run, sft_data, "--lora_rank=4", "--max_steps=2")
    run_script("export.py", "--out_dir=out-lora", "--output=export/my-adapter", "--adapter_only")
    files = modes("export/my-adapter")
    assert "adapter_model.safetensors" in files and set(files.values()) == {0o644}, files
    # a parent that is a file is still one clear error, and nothing is written
    open("afile", "w").close()
    proc = run_script("export.py", "--out_dir=out", "--output=afile/my-model", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        "error: --output=afile/my-model lies under " + os.path.abspath("afile") + ", which is a file; give a folder path"]


def test_a_benchmark_offline_fails_at_once(tiny_run, monkeypatch):
    """`evaluate.py --tasks=hellaswag` without a network: the error line in seconds (it took ~27 s of retries).
    The hub is an address nothing answers on; datasets is imported already, as it is after a first task."""
    import datasets
    import huggingface_hub
    for module in (datasets.config, huggingface_hub.constants):
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", False)  # restored after: offline mode is switched on here
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    as_out(tiny_run)
    start = time.time()
    with pytest.raises(SystemExit) as failed:
        run_inline(monkeypatch, "evaluate.py", "--out_dir=out", "--tasks=hellaswag", "--device=cpu")
    assert time.time() - start < 5
    message = str(failed.value)
    assert message.startswith("error: could not load Rowan/hellaswag") and "127.0.0.1 cannot be reached" in message
    assert "--task_data=DIR" in message


def test_compare_plots_the_training_loss_of_every_log_line(tiny_run, monkeypatch):
    as_out(tiny_run)
    done = run_inline(monkeypatch, "compare.py", "out")  # README, compare
    assert os.path.getsize("compare.png") > 10_000
    train = [r for r in read_metrics("out") if r["event"] == "train"]
    evals = [r for r in read_metrics("out") if r["event"] == "eval"]
    assert done["metric_names"][0] == "loss"
    plotted = done["runs"][0]["series"]["loss"]
    assert sorted(plotted) == [r["step"] for r in train] and len(plotted) > len(evals)
    assert "val_loss" in done["metric_names"]
