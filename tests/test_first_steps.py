"""Issue 37's frictions as a new user met them, each by the README's command as written, in a fresh checkout
(conftest.clean_checkout): export.py into export/ (no such folder on a fresh clone) writing files others can
read, a benchmark offline failing at once rather than after ~27 s of hub retries, and compare.py's default
plot showing the training loss of every log line, not just the few evals."""
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_MODEL, TINY_TRAINING, read_metrics, run_inline, run_script
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


def readme_block(after, language="python"):
    """The first ```language block of the README after the line `after`, as written."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return text.split(after, 1)[1].split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readmes_export_and_sample_print_the_same_text(tiny_run):
    """README, export: sample.py on the export and the transformers snippet print the same text (both prompts start
    with <|endoftext|>). At tiny size: 20 new tokens, the tiny model's context being 32."""
    as_out(tiny_run)
    run_script("export.py", "--out_dir=out", "--output=export/my-model")
    ours = run_script("sample.py", "--init_from=export/my-model", "--start=<|endoftext|>ROMEO:", "--temperature=0",
                      "--max_new_tokens=20", "--num_samples=1").stdout
    snippet = readme_block("### Export to Hugging Face")
    assert "max_new_tokens=50" in snippet and '"<|endoftext|>ROMEO:"' in snippet
    proc = subprocess.run([sys.executable, "-c", snippet.replace("max_new_tokens=50", "max_new_tokens=20")],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert ours.startswith("ROMEO:") and len(ours) > len("ROMEO:\n") and proc.stdout == ours


@pytest.mark.slow
def test_the_readmes_offline_benchmarks_and_sampling(tiny_run):
    as_out(tiny_run)
    # README, evaluate: the benchmarks offline, on the fixtures in tests/task_data
    proc = run_script("evaluate.py", "--out_dir=out", "--tasks=hellaswag,arc_easy,mmlu", "--task_data=tests/task_data")
    tasks = {line.split()[0] for line in proc.stdout.splitlines() if line.split()}
    assert {"hellaswag", "arc_easy", "mmlu", "core"} <= tasks, proc.stdout
    # README, sample (at tiny size: 20 tokens a sample)
    proc = run_script("sample.py", "--out_dir=out", "--start=ROMEO:", "--num_samples=5", "--temperature=0.9",
                      "--top_p=0.95", "--max_new_tokens=20")
    assert proc.stdout.count("ROMEO:") == 5 and proc.stdout.count("-" * 40) == 4


@pytest.mark.slow
def test_the_readmes_own_run(tiny_data, sft_data, tmp_path):
    """README, your own run: your text prepared and trained on, then your prompt/completion pairs fine-tuned from
    the quick start's out/ (its shape, 2 steps; datasets in tmp_path, not in the checkout's data/)."""
    quick = ["--max_steps=2", "--eval_interval=2", "--eval_iters=1", "--batch_size=2", "--max_seq_len=32"]
    run_script("train.py", "--dataset=tiny", f"--data_dir={tiny_data}", *quick)  # python train.py, shortened
    os.mkdir("notes")
    with open(os.path.join(ROOT, "data", "shakespeare", "input.txt")) as f:
        text = f.read(40_000)
    for i in range(4):
        open(f"notes/{i}.txt", "w").write(text[i * 10_000:(i + 1) * 10_000])
    run_script("prepare.py", "--input=notes/", "--name=notes", f"--data_root={tmp_path}")
    run_script("train.py", "--dataset=notes", "--out_dir=out-notes", f"--data_dir={tmp_path / 'notes'}", *TINY_MODEL,
               *TINY_TRAINING, "--max_steps=4")
    assert read_metrics("out-notes")[-1]["step"] == 4
    run_script("train.py", "config/sft_demo.py", "--init_from=out", "--dataset=my_task", "--out_dir=out-my-sft",
               f"--data_dir={sft_data}", "--max_steps=4", "--eval_interval=2", "--eval_iters=1")
    assert [r["step"] for r in read_metrics("out-my-sft") if r["event"] == "eval"][-1] == 4


def readme_commands():
    """Every command line in the README's ```sh blocks, split as the shell would (comments dropped)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = [b.split("```", 1)[0] for b in f.read().split("```sh\n")[1:]]
    return [shlex.split(line, comments=True) for block in blocks for line in block.splitlines() if line.strip()]


@pytest.mark.slow
def test_every_readme_command_names_real_scripts_configs_and_settings():
    """The README's commands, each: its script and config files exist and every --flag is a setting of its script
    (the ones run end to end are run by the tests above and beside each script's own tests)."""
    known = {}
    commands = [c for command in readme_commands() for c in split_chain(command)]
    assert len(commands) >= 30
    for command in commands:
        if command[0] in ("pip", "bash") or command[:3] == ["python", "-m", "pytest"]:
            assert command[0] != "bash" or os.path.isfile(command[1]), command
            continue
        if command[0] == "sbatch":  # sbatch [its options] runs/slurm.sbatch [train.py's arguments]
            at = next(i for i, a in enumerate(command) if not a.startswith("-") and i > 0)
            assert os.path.isfile(command[at]), command
            command = ["train.py", *command[at + 1:]]
        at = next(i for i, a in enumerate(command) if a.endswith(".py") and not a.startswith("config/"))
        name = command[at]
        if name not in known:  # the settings its --help lists, "  --name = default  # comment"
            help_text = run_script(name, "--help").stdout
            known[name] = {line.split()[0][2:] for line in help_text.splitlines() if line.startswith("  --")}
        for arg in command[at + 1:]:
            if arg.startswith("--") and arg != "--help":
                assert arg[2:].split("=")[0] in known[name], f"{name} has no setting {arg}"
            elif not arg.startswith("--") and name != "compare.py":
                assert os.path.isfile(arg), f"{arg} is not a config file"


def split_chain(command):
    """`a && b` as [a, b]."""
    parts, current = [], []
    for word in command:
        if word == "&&":
            parts.append(current)
            current = []
        else:
            current.append(word)
    return parts + [current]


def readme_file_table():
    """The README's file table: {first-column name: the row's second column}, each backticked name of a first
    column a key of its own (a name given twice is an error)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        rows = [line for line in f.read().split("## The files", 1)[1].splitlines() if line.startswith("| `")]
    table = {}
    for row in rows:
        first, what = row.split(" | ", 2)[:2]
        for name in first.strip("| ").split("`")[1::2]:
            assert name not in table, f"the file table names {name} twice"
            table[name] = what
    return table


def test_the_file_table_names_every_file_once_and_only_real_ones():
    """Issue 38: the table is true. Every source file and folder at the top, every nash/ module, and every file of
    nash/objectives/, nash/tasks/, config/, runs/, benches/ and folder of data/ is named (a folder's files in its row);
    every name it gives exists."""
    table = readme_file_table()
    assert len(table) >= 30
    for name in table:
        assert os.path.exists(os.path.join(ROOT, name)), f"the file table names {name}, which does not exist"
    source = (".py", ".sh", ".txt", ".ini", ".html")
    for name in os.listdir(ROOT):
        path = os.path.join(ROOT, name)
        if os.path.isdir(path) and not name.startswith((".", "out", "__", "wandb", "export")):
            assert name + "/" in table or name in ("nash", "tests"), f"the file table does not name the folder {name}/"
        elif name.endswith(source) and os.path.isfile(path):
            assert name in table, f"the file table does not name {name}"
    for name in os.listdir(os.path.join(ROOT, "nash")):
        if name.endswith((".py", ".html")) and name != "__init__.py":
            assert "nash/" + name in table, f"the file table does not name nash/{name}"
    rows = {"nash/objectives/": ".py", "nash/tasks/": ".py", "config/": ".py", "benches/": ".py", "runs/": "",
            "data/": ""}
    for folder, ext in rows.items():
        what = table[folder] if folder in table else table["bench.py"]
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.startswith(("_", ".")) or not name.endswith(ext) or name == "__init__.py":
                continue
            if folder == "data/" and not os.path.isdir(os.path.join(ROOT, folder, name)):
                continue
            stem = name[:-len(ext)] if ext else name
            assert f"`{stem}`" in what or f"`{name}`" in what, f"the file table's {folder} row does not name {name}"
