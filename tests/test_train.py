"""End-to-end runs of train.py on tiny models: pretraining, SFT, float16 AMP, exact resume, atomic and
signal-triggered saves, early stopping, settings errors, DDP and wandb. Each run takes seconds on a CPU."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from nash.checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT, TINY_MODEL, TINY_TRAINING, assert_ddp_matches, error_line, read_metrics, run_script
from model import GPT, GPTConfig


def train(out_dir, data_dir, *flags, check=True, env=None):
    return run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={data_dir}",
                      f"--out_dir={out_dir}", *flags, check=check, env=env)




def test_pretraining_run_leaves_a_complete_run_folder(tiny_run):
    names = set(os.listdir(tiny_run))
    assert {"ckpt.pt", "best.pt", "config.json", "metrics.jsonl"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    config = json.load(open(os.path.join(tiny_run, "config.json")))
    assert config["max_steps"] == 20 and config["tokens_per_step"] == 4 * 32 and config["world_size"] == 1
    events = read_metrics(tiny_run)
    train_steps = [e["step"] for e in events if e["event"] == "train"]
    evals = [e for e in events if e["event"] == "eval"]
    assert train_steps == [5, 10, 15, 20] and [e["step"] for e in evals] == [10, 20]
    for e in evals:
        assert math.isclose(e["perplexity"], math.exp(e["val_loss"]), rel_tol=1e-6)
        assert 0 <= e["accuracy"] <= 1 and e["tokens"] == e["step"] * 128
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < losses[0] - 0.5  # it learns: from ~10.8 (uniform over 50257) downwards
    latest = load_checkpoint(os.path.join(tiny_run, "ckpt.pt"))
    best = load_checkpoint(os.path.join(tiny_run, "best.pt"))
    assert latest["step"] == 20 and latest["settings"]["max_steps"] == 20
    assert best["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert GPTConfig(**latest["model_config"]).d_model == 32


def test_exact_resume_is_bit_for_bit(tiny_data, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    # dropout: the resumed run must draw the same masks; lr_decay_steps: the short run keeps the long schedule
    flags = ["--dropout=0.1", "--checkpoint_interval=10", "--lr_decay_steps=20"]
    train(full, tiny_data, *flags)
    train(half, tiny_data, *flags, "--max_steps=10")
    shutil.copy(half / "ckpt.pt", tmp_path / "ckpt_at_10.pt")
    train(half, tiny_data, *flags, "--init_from=resume")  # max_steps back to 20: 10 more steps
    a, b = load_checkpoint(full / "ckpt.pt"), load_checkpoint(half / "ckpt.pt")
    assert a["step"] == b["step"] == 20
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    train_losses = lambda run: [(e["step"], e["loss"]) for e in read_metrics(run) if e["event"] == "train"]
    evals = lambda run: [(e["step"], e["val_loss"]) for e in read_metrics(run) if e["event"] == "eval"]
    assert train_losses(full) == train_losses(half)  # resumed metrics append to the same file
    assert evals(full) == evals(half)
    # and it really was a resume: the checkpoint of the first half says step 10
    assert load_checkpoint(tmp_path / "ckpt_at_10.pt")["step"] == 10


def test_sft_masks_the_prompt(sft_data, tiny_sft_run):
    state = load_checkpoint(os.path.join(tiny_sft_run, "ckpt.pt"))
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.eval()
    from nash.tokenizer import EOT_ID, get_tokenizer
    enc = get_tokenizer()
    # the val loss train.py reports equals the loss over completion tokens (and end-of-text) only
    total, count = 0.0, 0
    for line in open(os.path.join(sft_data, "val.jsonl")):
        ex = json.loads(line)
        prompt, completion = enc.encode_ordinary(ex["prompt"]), enc.encode_ordinary(ex["completion"]) + [EOT_ID]
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logits, _ = model(ids[:, :-1])
        logp = torch.log_softmax(logits[0].float(), -1)
        for pos in range(len(prompt) - 1, ids.shape[1] - 1):  # predictions of completion tokens only
            total -= logp[pos, ids[0, pos + 1]].item()
            count += 1
    last_eval = [e for e in read_metrics(tiny_sft_run) if e["event"] == "eval"][-1]
    assert last_eval["val_loss"] == pytest.approx(total / count, rel=1e-4)


def test_float16_autocast_with_cpu_grad_scaler(tiny_data, tmp_path):
    proc = train(tmp_path / "fp16", tiny_data, "--dtype=float16", "--max_steps=10")
    assert "float16" in proc.stdout
    state = load_checkpoint(tmp_path / "fp16" / "ckpt.pt")
    assert state["scaler"]["scale"] > 0  # the scaler ran and its state is saved for resume
    losses = [e["loss"] for e in read_metrics(tmp_path / "fp16") if e["event"] == "train"]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]
    train(tmp_path / "fp16", tiny_data, "--dtype=float16", "--init_from=resume", "--max_steps=12")
    assert load_checkpoint(tmp_path / "fp16" / "ckpt.pt")["step"] == 12


def test_early_stopping(tiny_data, tmp_path):
    # with a zero learning rate val loss never improves after the first eval
    proc = train(tmp_path / "es", tiny_data, "--learning_rate=0", "--min_lr=0", "--eval_interval=2",
                 "--early_stopping_patience=2", "--max_steps=50")
    assert "early stopping" in proc.stdout
    assert load_checkpoint(tmp_path / "es" / "ckpt.pt")["step"] == 6  # evals at 2 (best), 4, 6 -> stop


def test_sigterm_saves_and_exits(tiny_data, tmp_path):
    out = tmp_path / "sig"
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny",
           f"--data_dir={tiny_data}", f"--out_dir={out}", "--max_steps=100000", "--checkpoint_interval=100000",
           "--eval_interval=0", "--log_interval=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.jsonl").exists():
        time.sleep(0.2)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    state = load_checkpoint(out / "ckpt.pt")
    assert 0 < state["step"] < 100000 and "stopped by signal" in stdout


def test_atomic_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(3)}})

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(SystemExit, match=r"cannot write .*ckpt.pt \(disk full\).* the previous one is untouched"):
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(3)}})  # one error line, not a traceback
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temporary file left behind


def test_checkpoints_load_without_unpickling_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"format": "nash-llm-checkpoint/1", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit, match=r"evil.pt holds code \(\w+\.system\), not just data; .* will not be loaded"):
        load_checkpoint(tmp_path / "evil.pt")


def test_config_file_and_flags(tiny_data, tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text("max_steps = 6\nlog_interval = 3\neval_interval = 3\n")
    train(tmp_path / "cfg_run", tiny_data, str(cfg), "--max_steps=9")  # flags after the file win
    config = json.load(open(tmp_path / "cfg_run" / "config.json"))
    assert config["max_steps"] == 9 and config["log_interval"] == 3
    assert [e["step"] for e in read_metrics(tmp_path / "cfg_run") if e["event"] == "eval"] == [3, 6, 9]
    help_text = run_script("train.py", "--help").stdout
    assert "--learning_rate" in help_text and "--early_stopping_patience" in help_text


@pytest.mark.parametrize("flags, message", [
    (["--learning_rte=1e-3"], "unknown setting 'learning_rte'.*did you mean learning_rate"),
    (["--batch_size=many"], "'batch_size'.*expects int"),
    (["--dataset=nope", "--data_dir="], "python prepare.py"),
    (["--init_from=resume"], "init_from=resume but .* does not exist"),
    (["--max_seq_len=100000"], "too few for one window"),
    (["--vocab_size=1000"], r"vocab_size=1000 is smaller than the tokenizer.s 50257 tokens \(gpt2\); leave it at 0"),
    (["--objective=finetune"], "objective='finetune' should be"),
    (["--task=sft"], "the setting 'task' .* is now called 'objective': write --objective="),
    (["--rl_samples=4"], "rl_samples is a setting of objective=rl, and this run trains objective=pretrain"),
    (["--optimizer=sgd"], "optimizer='sgd' should be"),
    (["--batch_size=0"], "batch_size=0 should be a number >= 1"),
    (["--n_heads=3"], "bad model settings"),
])
def test_setting_errors_are_one_line(tiny_data, tmp_path, flags, message):
    line = error_line(train(tmp_path / "err", tiny_data, *flags, check=False))
    import re
    assert re.search(message, line), line
    assert not (tmp_path / "err" / "ckpt.pt").exists()


def test_corrupt_and_foreign_checkpoints(tiny_data, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt.pt").write_bytes(b"\x00garbage")
    line = error_line(train(tmp_path / "bad", tiny_data, "--init_from=resume", check=False))
    assert "not a readable Nash-LLM checkpoint" in line
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    line = error_line(train(tmp_path / "x", tiny_data, f"--init_from={tmp_path / 'foreign.pt'}", check=False))
    assert "not a Nash-LLM checkpoint" in line


def test_new_run_does_not_silently_replace_an_old_one(tiny_data, tmp_path):
    proc = train(tmp_path / "run", tiny_data, "--max_steps=2", "--eval_interval=0")
    assert "no eval ran (eval_interval=0)" in proc.stdout and "inf" not in proc.stdout  # not "best val loss inf"
    line = error_line(train(tmp_path / "run", tiny_data, "--max_steps=2", check=False))
    assert "already holds a run" in line
    train(tmp_path / "run", tiny_data, "--max_steps=3", "--eval_interval=0", "--overwrite")
    assert load_checkpoint(tmp_path / "run" / "ckpt.pt")["step"] == 3


@pytest.mark.slow
def test_malformed_jsonl_names_file_and_line(sft_data, tmp_path):
    bad = tmp_path / "badsft"
    shutil.copytree(sft_data, bad)
    with open(bad / "train.jsonl", "a") as f:
        f.write('{"prompt": "x", "completion": \n')
    lines = open(bad / "train.jsonl").read().count("\n")
    proc = run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=sft", "--dataset=badsft",
                      f"--data_dir={bad}", f"--out_dir={tmp_path / 'o'}", check=False)
    assert f"train.jsonl:{lines}" in error_line(proc)


def test_nan_loss_stops_the_run_without_saving(tiny_data, tmp_path):
    out = tmp_path / "nan"
    train(out, tiny_data, "--max_steps=5", "--eval_interval=0")
    before = (out / "ckpt.pt").read_bytes()
    proc = train(out, tiny_data, "--init_from=resume", "--max_steps=60", "--learning_rate=1e400", "--grad_clip=0",
                 "--warmup_steps=0", "--log_interval=1", "--checkpoint_interval=1000", "--eval_interval=0",
                 check=False)
    line = error_line(proc)
    assert "loss became" in line or "NaN" in line
    assert (out / "ckpt.pt").read_bytes() == before  # the good checkpoint is untouched


def torchrun(nproc, *args, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    common = [*TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", "--max_steps=6",
              "--eval_interval=3", "--grad_accum_steps=2", "--device=cpu",
              "--bias=False"]  # key biases get ~zero gradients, which Adam amplifies from rounding noise
    run_script("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    proc = torchrun(2, *common, f"--out_dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("step 5/6") == 1  # only rank 0 prints
    a, b = load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "two" / "ckpt.pt")
    assert_ddp_matches(a["model"], b["model"], learning_rate=3e-3, steps=6)  # (conftest: why not bit for bit)
    assert json.load(open(tmp_path / "two" / "config.json"))["world_size"] == 2
    # the logged train loss is the global batch's (all-reduced), not rank 0's micro-batches: the same for 1 and 2
    logged = [[(e["step"], e["loss"]) for e in read_metrics(tmp_path / run) if e["event"] == "train"]
              for run in ("one", "two")]
    assert [s for s, _ in logged[0]] == [s for s, _ in logged[1]] == [5, 6]
    for (_, a), (_, b) in zip(*logged):
        assert b == pytest.approx(a, rel=1e-5)
    bad = torchrun(2, *common, "--grad_accum_steps=3", f"--out_dir={tmp_path / 'bad'}")
    assert bad.returncode != 0 and "must be a multiple of the number of processes (2)" in bad.stderr


def test_wandb_offline_continues_the_same_run(tiny_data, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "wb"
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    train(out, tiny_data, "--wandb_enabled", "--max_steps=4", "--eval_interval=2", env=env)
    run_id = load_checkpoint(out / "ckpt.pt")["wandb_run_id"]
    assert run_id and any(run_id in name for name in os.listdir(out / "wandb"))
    train(out, tiny_data, "--wandb_enabled", "--init_from=resume", "--max_steps=6", env=env)
    assert load_checkpoint(out / "ckpt.pt")["wandb_run_id"] == run_id
