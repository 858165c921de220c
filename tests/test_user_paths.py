"""What a new user does, as they do it: the README's pretrain -> fine-tune -> sample path through run folders,
the files Nash-LLM must never touch, and bad input that must end in one `error:` line with nothing changed."""
import json
import os
import re
import shutil

import pytest

from nash.checkpoint import load_checkpoint, resolve_source
from conftest import TINY_MODEL, TINY_TRAINING, run_inline, run_script

TINY_SFT = ["--batch_size=4", "--grad_accum_steps=1", "--max_steps=4", "--warmup_steps=1", "--eval_interval=2",
            "--eval_iters=2", "--checkpoint_interval=2", "--log_interval=2", "--learning_rate=1e-3"]


def inline_error(monkeypatch, script, *args):
    """`python script args` in this process (no start-up cost) for a run that must stop at a user error: returns
    the one `error:` line it exits with."""
    with pytest.raises(SystemExit) as info:
        run_inline(monkeypatch, script, *args)
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def error_line(proc):
    """A user error is one line on stderr and a non-zero exit."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# -----------------------------------------------------------------------------
# 1. --init_from=<run folder>: the README's fine-tuning path

def test_readme_pretrain_then_sft_from_run_folder_then_sample(tiny_run, sft_data, tmp_path, monkeypatch):
    # README: python train.py config/sft.py --init_from=out-100m --dataset=my_task  (tiny sizes, our data folder)
    sft = tmp_path / "out-sft"
    proc = run_script("train.py", "config/sft.py", f"--init_from={tiny_run}", "--dataset=my_task",
                      f"--data_dir={sft_data}", f"--out_dir={sft}", *TINY_SFT)
    assert f"starting from {os.path.join(tiny_run, 'best.pt')} (best)" in proc.stdout
    config = json.load(open(sft / "config.json"))  # the model's shape is the pretrained run's, and says so
    assert (config["n_layers"], config["d_model"], config["max_seq_len"], config["init_from"]) == (2, 32, 32, tiny_run)
    state = load_checkpoint(sft / "ckpt.pt")
    assert state["model_config"]["n_layers"] == 2 and state["settings"]["objective"] == "sft"
    # README: python sample.py --out_dir=out-sft-demo --start=$'Reverse: big red car\n'
    g = run_inline(monkeypatch, "sample.py", f"--out_dir={sft}", "--start=Echo: red\n", "--num_samples=1",
                   "--max_new_tokens=4")
    assert g["sft"] and g["where"] == str(sft / "best.pt") and len(g["samples"]) == 1
    # and run folders given as init_from to sample.py and evaluate.py (the failing commands)
    g = run_inline(monkeypatch, "sample.py", f"--init_from={tiny_run}", "--num_samples=1", "--max_new_tokens=4")
    assert g["where"] == os.path.join(tiny_run, "best.pt")
    g = run_inline(monkeypatch, "evaluate.py", f"--init_from={tiny_run}", "--max_batches=1")
    assert g["results"]["checkpoint"] == os.path.join(tiny_run, "best.pt") and g["results"]["loss"] > 0


def test_run_folder_hf_folder_and_file_are_told_apart(tiny_run, tmp_path):
    best, latest = os.path.join(tiny_run, "best.pt"), os.path.join(tiny_run, "ckpt.pt")
    assert resolve_source(tiny_run) == ("checkpoint", best, " (best)")  # it has a config.json, yet is a run
    assert resolve_source(tiny_run, "latest") == ("checkpoint", latest, " (latest)")
    assert resolve_source(latest) == ("checkpoint", latest, "")
    no_eval = tmp_path / "no_eval"  # a run with checkpoint_interval but no eval yet: the latest, and it says so
    no_eval.mkdir()
    shutil.copy(latest, no_eval / "ckpt.pt")
    (no_eval / "config.json").write_text("{}")
    kind, path, note = resolve_source(str(no_eval))
    assert path == str(no_eval / "ckpt.pt") and "latest" in note
    hf = tmp_path / "hf"  # a Hugging Face folder is recognised by its weights
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="neither a run's checkpoints .* nor a Hugging Face model"):
        resolve_source(str(hf))
    (hf / "model.safetensors").write_bytes(b"")
    assert resolve_source(str(hf)) == ("pretrained", str(hf), "")
    assert resolve_source("gpt2")[0] == "pretrained"
    with pytest.raises(SystemExit, match="ckpt='lastest' should be best, latest or the path of a checkpoint file"):
        resolve_source(tiny_run, "lastest")


@pytest.mark.parametrize("flags, message", [
    (["--max_seq_len=64"], r"max_seq_len=64 is longer than the model's context \(32\); it may shrink"),
    (["--n_layers=3"], r"the model in .*best.pt fixes n_layers=3 \(2 there\)"),
])
def test_fine_tune_shape_comes_from_the_checkpoint(tiny_run, tiny_data, tmp_path, monkeypatch, flags, message):
    line = inline_error(monkeypatch, "train.py", f"--init_from={tiny_run}", "--dataset=tiny", f"--data_dir={tiny_data}",
                        f"--out_dir={tmp_path / 'ft'}", *TINY_TRAINING, *flags)
    assert re.search(message, line), line
    assert not (tmp_path / "ft").exists()


def test_fine_tune_may_shrink_the_window(tiny_run, tiny_data, tmp_path):
    run_script("train.py", f"--init_from={tiny_run}", "--dataset=tiny", f"--data_dir={tiny_data}",
               f"--out_dir={tmp_path / 'ft'}", *TINY_TRAINING, "--max_seq_len=16", "--max_steps=2", "--eval_interval=0")
    config = json.load(open(tmp_path / "ft" / "config.json"))
    assert config["max_seq_len"] == 16 and config["tokens_per_step"] == 4 * 16 and config["d_model"] == 32
    assert load_checkpoint(tmp_path / "ft" / "ckpt.pt")["model_config"]["max_seq_len"] == 32  # the context stays


# -----------------------------------------------------------------------------
# 2. never write into a folder Nash-LLM did not make; any earlier run's file blocks a new run

def test_data_dir_without_meta_is_never_written(tmp_path, monkeypatch):
    mydata = tmp_path / "mydata"
    mydata.mkdir()
    (mydata / "train_000.bin").write_bytes(b"\x01\x00" * 100)  # the user's own shards, no meta.json
    line = inline_error(monkeypatch, "train.py", *TINY_MODEL, f"--data_dir={mydata}", f"--out_dir={tmp_path / 'o'}")
    assert "holds no prepared dataset (no meta.json)" in line
    assert os.listdir(mydata) == ["train_000.bin"] and (mydata / "train_000.bin").read_bytes() == b"\x01\x00" * 100


def test_any_earlier_run_file_blocks_a_new_run(tiny_data, tmp_path, monkeypatch):
    for leftover in ("best.pt", "ckpt_0000010.pt", "metrics.jsonl", "config.json"):
        out = tmp_path / leftover.replace(".", "_")
        out.mkdir()
        (out / leftover).write_bytes(b"an earlier run's work")
        line = inline_error(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny",
                            f"--data_dir={tiny_data}", f"--out_dir={out}")
        assert f"already holds a run ({leftover})" in line
        assert os.listdir(out) == [leftover] and (out / leftover).read_bytes() == b"an earlier run's work"


# -----------------------------------------------------------------------------
# 5. bad input: one `error:` line naming the setting or file and the fix, a non-zero exit, nothing changed

TRAIN = [*TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", "--data_dir={data}", "--out_dir={tmp}/new"]
RESUME = [*TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", "--data_dir={data}", "--out_dir={tmp}/run",
          "--init_from=resume"]
BAD_INPUT = [  # (script, arguments, what the error line says)
    ("train.py", [*TRAIN, "--device=tpu"], r"device='tpu' should be auto, cpu, cuda, cuda:N or mps"),
    ("train.py", [*TRAIN, "--device=mps"], r"device=mps but Apple's Metal \(MPS\) is not available here"),
    ("sample.py", ["--out_dir={run}", "--device=tpu"], r"device='tpu' should be"),
    ("evaluate.py", ["--out_dir={run}", "--device=tpu"], r"device='tpu' should be"),
    ("bench.py", ["--device=tpu", "--output="], r"device='tpu' should be"),
    ("train.py", [*TRAIN, "--beta1=1.5"], r"beta1=1.5 should be a number >= 0 and < 1"),
    ("train.py", [*TRAIN, "--grad_clip=-1"], r"grad_clip=-1.0 should be a number >= 0; 0 turns it off"),
    ("train.py", [*TRAIN, "--weight_decay=-5"], r"weight_decay=-5.0 should be a number >= 0"),
    ("train.py", [*TRAIN, "--seed=99999999999999999999999"], r"seed=99999999999999999999999 should be a number"),
    ("sample.py", ["--out_dir={run}", "--seed=-1"], r"seed=-1 should be a number >= 0"),
    ("train.py", [*TRAIN, "--n_kv_heads=abc"], r"n_kv_heads='abc' should be a number >= 1"),
    ("prepare.py", ["--input={data}/../tiny.txt", "--data_root={tmp}/d", "--num_workers=-1"], r"num_workers=-1 should"),
    ("train.py", ["{tmp}/latin1.py", *TRAIN], r"config file .*latin1.py is not UTF-8 text"),
    ("train.py", ["{tmp}", *TRAIN], r"config file .* is a folder"),
    ("train.py", [*TRAIN, "--objective=sft", "--data_dir={tmp}/latin1_sft"], r"latin1_sft/train.jsonl:2: not UTF-8 text"),
    ("train.py", [*TRAIN, "--out_dir="], r"out_dir is empty"),
    ("train.py", [*TRAIN, "--out_dir={tmp}/a_file"], r"out_dir=.*a_file is a file, not a folder"),
    ("prepare.py", ["--input={data}/../tiny.txt", "--data_root={tmp}/a_file"], r"data_root=.*a_file is a file"),
    ("bench.py", ["--what=sample", "--output={tmp}/missing_dir/b.json"], r"folder of --output=.*missing_dir/b.json"),
    ("evaluate.py", ["--out_dir={run}", "--output={tmp}"], r"output=.* should be a file path, not a folder"),
    ("train.py", [*RESUME, "--optimizer=muon"], r"resuming the run in .* you gave optimizer='muon' where the run has 'adamw'"),
    ("train.py", [*RESUME, "--n_layers=3"], r"resuming the run in .* you gave n_layers=3 where the run has 2"),
    ("sample.py", ["--out_dir={run}", "--ckpt=lastest"], r"ckpt='lastest' should be best, latest or the path"),
    ("compare.py", ["{tmp}/list_run", "--output="], r"config.json holds a JSON list, not an object of settings"),
    ("train.py", [*TRAIN, "--init_from={run}/best.pt", "--dropout=1.5"], r"^error: dropout=1.5 should be"),
    ("train.py", [*TRAIN, "--learning_rate=-1"], r"^error: learning_rate=-1.0 should be a number >= 0$"),
    ("sample.py", ["--ckpt={tmp}/evil.pt"], r"evil.pt holds code \(\w+\.system\).* will not be loaded"),
]


def snapshot(*folders):
    return {os.path.join(root, f): os.stat(os.path.join(root, f)).st_mtime_ns
            for folder in folders for root, _, files in os.walk(folder) for f in files}


@pytest.mark.parametrize("script, args, message", BAD_INPUT, ids=[f"{c[0]} {c[1][-1]}" for c in BAD_INPUT])
def test_bad_input_is_one_error_line_and_changes_nothing(tiny_run, tiny_data, tmp_path, monkeypatch, script, args,
                                                         message):
    import torch
    (tmp_path / "latin1.py").write_bytes("max_steps = 3  # caf\xe9\n".encode("latin-1"))
    (tmp_path / "latin1_sft").mkdir()
    (tmp_path / "latin1_sft" / "train.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n'
                                                           b'{"prompt": "caf\xe9", "completion": "b"}\n')
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "list_run").mkdir()
    (tmp_path / "list_run" / "config.json").write_text("[1, 2]")
    shutil.copytree(tiny_run, tmp_path / "run")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    torch.save({"format": "nash-llm-checkpoint/1", "payload": Evil()}, tmp_path / "evil.pt")
    before = snapshot(tmp_path, tiny_run, tiny_data)
    args = [a.format(tmp=tmp_path, run=tiny_run, data=tiny_data) for a in args]
    line = inline_error(monkeypatch, script, *args)
    assert re.search(message, line), line
    assert snapshot(tmp_path, tiny_run, tiny_data) == before  # nothing written, nothing replaced


def test_resume_keeps_the_run_settings_and_config_json_tells_the_truth(tiny_data, tmp_path):
    """A resumed run takes its shape and optimizer from the checkpoint when they are not given."""
    out = tmp_path / "r"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}",
               "--n_layers=1", "--max_steps=2", "--eval_interval=0", "--optimizer=muon")
    run_script("train.py", *TINY_TRAINING, "--dataset=tiny", f"--data_dir={tiny_data}", f"--out_dir={out}",
               "--init_from=resume", "--max_steps=3", "--eval_interval=0")  # no model flags: the run's own
    config = json.load(open(out / "config.json"))
    assert (config["n_layers"], config["d_model"], config["optimizer"], config["max_seq_len"]) == (1, 32, "muon", 32)
    assert load_checkpoint(out / "ckpt.pt")["step"] == 3


@pytest.mark.slow
def test_corrupt_input_prepares_to_one_line(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n')
    proc = run_script("prepare.py", f"--input={tmp_path / 'bad.jsonl'}", f"--data_root={tmp_path / 'd'}", check=False)
    assert proc.returncode == 1 and "Failed" not in proc.stderr, proc.stderr  # no log line of the datasets library
    assert proc.stderr.strip().splitlines()[-1].startswith("error: could not read")
    assert not (tmp_path / "d" / "bad").exists()


def test_sft_examples_cut_to_max_seq_len_are_counted_once(tiny_sft_run, sft_data, monkeypatch, capsys):
    run_inline(monkeypatch, "evaluate.py", f"--out_dir={tiny_sft_run}", "--seq_len=5", "--max_examples=1")
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {os.path.join(sft_data, 'val.jsonl')}: 8 of 8 examples are longer than max_seq_len=5 "
                     "+ 1 tokens and were cut at the end"]
