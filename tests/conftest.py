"""Shared test plumbing: the repo on sys.path, a runner for the scripts, and tiny datasets and runs
(session-scoped: built once, then read by train, sample, evaluate, compare and bench tests)."""
import json
import os
import runpy
import subprocess
import sys

import pytest

# the scripts live at the top of the repo, flat, nanoGPT style: make them importable from tests
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# a model small enough that a CPU trains it in seconds (the vocabulary is still GPT-2's 50257)
TINY_MODEL = ["--n_layers=2", "--n_heads=2", "--d_model=32", "--d_ff=64", "--max_seq_len=32", "--dropout=0.0"]
TINY_TRAINING = ["--batch_size=4", "--max_steps=20", "--warmup_steps=2", "--eval_interval=10", "--eval_iters=2",
                 "--log_interval=5", "--checkpoint_interval=10", "--learning_rate=3e-3"]


# session fixtures built by running the scripts (prepare.py, train.py) in subprocesses: a test that needs one is slow
SCRIPT_FIXTURES = {"tiny_data", "tiny_run", "tiny_sft_run", "tiny_chat_run", "arith_sft_run"}


def pytest_collection_modifyitems(items):
    """Mark slow every test that needs a run or dataset the scripts build, however indirectly (a module fixture that
    trains from tiny_data counts): `pytest -m "not slow"`, the fast lane, then never starts a script."""
    for item in items:
        if SCRIPT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def assert_ddp_matches(one, two, learning_rate, steps):
    """The weights of a 2-process DDP run against a 1-process run of the same global batch. Not bit for bit, and
    no code change can make it so: gloo's all-reduce adds the ranks' gradients in another order than one process
    accumulating its micro-steps, so gradients agree to float32 rounding. Adam divides each gradient by its own
    running RMS, so where a gradient is ~0 (a rarely routed expert's weight, a key bias) that rounding noise becomes
    an update of up to ~lr, and a few such elements drift (seen: 1 of 2,048 by 2e-6 after 3 steps). The bound that
    holds: all but 0.1% of the elements equal to rtol 1e-5, and none further apart than lr per step. A rank's
    batch lost or counted twice moves most elements by about lr and fails it."""
    total = close = 0
    for name, a in one.items():
        diff = (two[name] - a).abs()
        total += a.numel()
        close += (diff <= 1e-6 + 1e-5 * a.abs()).sum().item()
        assert diff.max().item() <= learning_rate * steps, (name, diff.max().item())
    assert close >= 0.999 * total, f"{total - close} of {total} weights differ beyond float32 rounding"


def tracked_names():
    """The checkout's own top-level files and folders (git's list; without git, all but a user's runs and plots)."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return sorted({line.split("/")[0] for line in files.splitlines() if line})
    except (OSError, subprocess.CalledProcessError):
        return sorted(n for n in os.listdir(ROOT) if not n.startswith(("out", "compare", "bench", "export", "wandb")))


TRACKED = tracked_names()


def make_checkout(tmp_path_factory):
    """A folder that looks like a fresh clone: the repo's tracked files linked in, none of what a user leaves at
    the top (out/, compare.png, export/, bench.json). The README's commands run in it as written (config/...,
    tests/task_data), and a default output lands in it, never in the checkout."""
    folder = tmp_path_factory.mktemp("checkout")
    for name in TRACKED:
        os.symlink(os.path.join(ROOT, name), folder / name)
    return folder


@pytest.fixture(autouse=True)
def clean_checkout(tmp_path_factory, monkeypatch):
    """Every test runs in its own clean checkout (make_checkout), so no test depends on, or adds to, the state
    a user leaves in theirs. Returns the folder."""
    folder = make_checkout(tmp_path_factory)
    monkeypatch.chdir(folder)
    return folder


def run_script(script, *args, env=None, check=True, timeout=300, cwd=None):
    """Run one of the repo's scripts as a user would, from the test's clean checkout (or cwd); returns the
    CompletedProcess (text output). With check, a non-zero exit fails the test and shows what it printed."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], capture_output=True,
                          text=True, env=full_env, cwd=cwd or os.getcwd(), timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"{script} {' '.join(map(str, args))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc):
    """A user error is one line on stderr and exit code 1."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def run_inline(monkeypatch, script, *args):
    """`python script args` inside this process (no interpreter or torch start-up); returns the script's
    globals. A user error surfaces as SystemExit with the message."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    return runpy.run_path(os.path.join(ROOT, script), run_name="__main__")


def read_metrics(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A prepared pretraining dataset (~20 documents of Shakespeare); returns its folder."""
    root = tmp_path_factory.mktemp("data")
    with open(os.path.join(ROOT, "data", "shakespeare", "input.txt")) as f:
        text = f.read(60_000)
    chunks = [text[i:i + 3000] for i in range(0, len(text), 3000)]
    (root / "tiny.txt").write_text("\n<|endoftext|>\n".join(chunks))
    run_script("prepare.py", f"--input={root / 'tiny.txt'}", "--name=tiny", f"--data_root={root}", "--val_ratio=0.1")
    return str(root / "tiny")


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory):
    """A small prompt/completion dataset (train.jsonl, val.jsonl): copy the word after 'Echo:'."""
    root = tmp_path_factory.mktemp("sft") / "echo"
    root.mkdir()
    words = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "king", "queen"]
    for split, n in (("train", 40), ("val", 8)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                w = words[(i * 7 + (split == "val")) % len(words)]
                f.write(json.dumps({"prompt": f"Echo: {w}\n", "completion": f" {w}"}) + "\n")
    return str(root)


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory):
    """A finished tiny pretraining run (20 steps); returns its out_dir. Read it, do not write into it."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}")
    return str(out)


@pytest.fixture(scope="session")
def tiny_sft_run(sft_data, tmp_path_factory):
    """A finished tiny SFT run on sft_data (from scratch, 20 steps); returns its out_dir."""
    out = tmp_path_factory.mktemp("runs") / "tiny_sft"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=sft", "--dataset=echo", f"--data_dir={sft_data}",
               f"--out_dir={out}")
    return str(out)


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory):
    """Conversations from the embedded demo set, a few of them (train 60, val 10)."""
    root = tmp_path_factory.mktemp("chat") / "demo"
    root.mkdir()
    for split, n in (("train", 60), ("val", 10)):
        with open(os.path.join(ROOT, "data", "chat_demo", f"{split}.jsonl")) as src:
            (root / f"{split}.jsonl").write_text("".join(src.readlines()[:n]))
    return str(root)


@pytest.fixture(scope="session")
def tiny_chat_run(chat_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny_chat"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=chat", "--dataset=demo", f"--data_dir={chat_data}",
               "--vocab_size=50263", f"--out_dir={out}")
    return str(out)


@pytest.fixture(scope="session")
def arith_sft_run(tmp_path_factory):
    """The README's SFT step before RL and the verifier, as written, at tiny size: a chat model of the arithmetic
    problems (tests/test_rl.py, tests/test_verifier.py)."""
    out = tmp_path_factory.mktemp("runs") / "arith_sft"
    run_script("train.py", "config/arith_sft_demo.py", *TINY_MODEL, "--max_seq_len=64", "--max_steps=4",
               "--eval_interval=0", "--eval_tasks=", f"--out_dir={out}", cwd=make_checkout(tmp_path_factory))
    return str(out)


@pytest.fixture
def key_lengths(monkeypatch):
    """The number of keys each attention call sees (model.py's scaled_dot_product_attention, recorded)."""
    import torch.nn.functional as F
    import model
    lengths, real = [], F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        lengths.append(k.size(2))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(model.F, "scaled_dot_product_attention", recording)
    return lengths
