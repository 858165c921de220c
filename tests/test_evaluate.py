"""evaluate.py against an independent computation on the tiny runs: loss, accuracy, perplexity and bits per
byte from the raw val tokens, JSON output, the SFT completion-only loss and exact match, and the errors."""
import json
import math
import os

import numpy as np
import pytest
import torch

from nash.checkpoint import load_model
from conftest import run_inline, run_script
from nash.tokenizer import EOT_ID, get_tokenizer


def evaluate(monkeypatch, *args):
    """`python evaluate.py args` in this process; returns the script's globals (results, ...)."""
    return run_inline(monkeypatch, "evaluate.py", "--device=cpu", "--dtype=float32", *args)


def by_hand(model, sequences, targets_from):
    """Sum of nats, correct argmax predictions and target count over the given token sequences, with the
    nats and UTF-8 bytes of the targets that are text (not end-of-text). targets_from[i]: the first position
    of sequence i whose next token is scored."""
    enc = get_tokenizer()
    nats = text_nats = 0.0
    correct = count = num_bytes = 0
    with torch.no_grad():
        for length in sorted({len(seq) for seq in sequences}):  # one forward pass per length
            rows = [i for i, seq in enumerate(sequences) if len(seq) == length]
            logits = model(torch.tensor([sequences[i][:-1] for i in rows]))[0]
            for row, i in zip(logits, rows):
                first = targets_from[i]
                y = torch.tensor(sequences[i][1:])[first:]
                logp = torch.log_softmax(row[first:].double(), dim=-1)
                nll = -logp.gather(1, y[:, None])[:, 0]
                text = y != EOT_ID
                nats += nll.sum().item()
                text_nats += nll[text].sum().item()
                correct += (logp.argmax(-1) == y).sum().item()
                count += len(y)
                num_bytes += sum(len(enc.decode_bytes([t])) for t in y[text].tolist())
    return {"loss": nats / count, "accuracy": correct / count, "perplexity": math.exp(nats / count),
            "bits_per_byte": text_nats / (math.log(2) * num_bytes), "tokens": count, "bytes": num_bytes}


def val_windows(data_dir, seq_len):
    """The val split read straight from the shard files, cut into consecutive windows of seq_len + 1."""
    meta = json.load(open(os.path.join(data_dir, "meta.json")))
    tokens = np.concatenate([np.fromfile(os.path.join(data_dir, f), dtype=np.uint16) for f in meta["shards"]["val"]])
    tokens = tokens.astype(np.int64).tolist()
    return [tokens[w * seq_len: w * seq_len + seq_len + 1] for w in range((len(tokens) - 1) // seq_len)]


def assert_close(results, expected):
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, rel=1e-5), key


def test_pretraining_numbers_match_a_computation_by_hand(tiny_run, tiny_data, tmp_path, monkeypatch, capsys):
    path = tmp_path / "eval.json"
    evaluate(monkeypatch, f"--out_dir={tiny_run}", "--batch_size=3", f"--output={path}")
    results = json.loads(path.read_text())
    model, _, _ = load_model("", tiny_run, "best", "cpu")
    windows = val_windows(tiny_data, 32)  # the run's max_seq_len, and its dataset: both from the checkpoint
    expected = by_hand(model, windows, [0] * len(windows))
    assert_close(results, expected)
    assert results["tokens"] == len(windows) * 32 and results["bytes"] == expected["bytes"]
    assert results["batches"] == math.ceil(len(windows) / 3) and results["split"] == "val"
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]), rel=1e-9)
    assert results["step"] == 20 and results["objective"] == "pretrain" and results["seq_len"] == 32
    out = capsys.readouterr().out
    assert "bits per byte" in out and f"{results['loss']:.4f}" in out  # the table
    assert "exact_match" not in results


def test_max_batches_and_settings_override_the_run(tiny_run, tiny_data, monkeypatch):
    g = evaluate(monkeypatch, f"--out_dir={tiny_run}", "--batch_size=2", "--max_batches=2", "--seq_len=16",
                 "--ckpt=latest", f"--data_dir={tiny_data}")
    model, _, _ = load_model("", tiny_run, "latest", "cpu")
    windows = val_windows(tiny_data, 16)[:4]
    assert_close(g["results"], by_hand(model, windows, [0] * 4))
    assert g["results"]["tokens"] == 4 * 16 and g["results"]["batches"] == 2


def test_sft_loss_on_completions_and_exact_match(tiny_sft_run, tmp_path, monkeypatch):
    enc = get_tokenizer()
    model, _, _ = load_model("", tiny_sft_run, "best", "cpu")
    # references built from the model's own greedy completions (computed here, by full forward passes): one
    # that it reproduces, one that it does not, per prompt; so exact match must come out at exactly 1/2
    rows, matching = [], 0
    for word in ("red", "blue", "cat", "moon"):
        prompt = f"Echo: {word}\n"
        ids, out = enc.encode_ordinary(prompt), []
        with torch.no_grad():
            while len(out) < 12 and (not out or out[-1] != EOT_ID):
                out.append(int(model(torch.tensor([ids + out]))[0][0, -1].argmax()))
        if out[-1] != EOT_ID or enc.encode_ordinary(enc.decode(out[:-1])) != out[:-1]:
            continue  # no end-of-text in sight, or text that does not tokenise back the same: no reference
        rows += [{"prompt": prompt, "completion": enc.decode(out[:-1])},
                 {"prompt": prompt, "completion": enc.decode(out[:-1]) + " " + word}]
        matching += 1
    assert matching >= 1
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    g = evaluate(monkeypatch, f"--out_dir={tiny_sft_run}", f"--data_dir={tmp_path}", "--batch_size=3")
    results = g["results"]
    assert results["objective"] == "sft" and results["exact_match"] == 0.5 and results["exact_match_examples"] == len(rows)
    # loss and accuracy over the completion tokens and the end-of-text after them, nothing of the prompts
    sequences = [enc.encode_ordinary(r["prompt"]) + enc.encode_ordinary(r["completion"]) + [EOT_ID] for r in rows]
    firsts = [len(enc.encode_ordinary(r["prompt"])) - 1 for r in rows]
    expected = by_hand(model, sequences, firsts)
    assert_close(results, expected)
    capped = evaluate(monkeypatch, f"--out_dir={tiny_sft_run}", f"--data_dir={tmp_path}", "--max_examples=1")["results"]
    assert capped["exact_match"] == 1.0 and capped["exact_match_examples"] == 1  # the first row is a match


@pytest.mark.parametrize("flags, words", [
    (["--seq_len=64"], "longer than the model's context (32)"),
    (["--split=test"], "split='test' should be val or train"),
    (["--objective=sft"], "val.jsonl not found"),
    (["--task=sft"], "the setting 'task' (from --task=sft) is now called 'objective'"),
    (["--max_batches=-1"], "cannot be negative"),
    (["--dataset=no_such_data"], "no_such_data holds no prepared dataset"),
])
def test_errors_are_one_line(tiny_run, monkeypatch, flags, words):
    with pytest.raises(SystemExit) as info:
        evaluate(monkeypatch, f"--out_dir={tiny_run}", *flags)
    message = info.value.code
    assert message.startswith("error: ") and "\n" not in message and words in message, message


@pytest.mark.slow
def test_missing_checkpoint_from_the_command_line(tmp_path):
    proc = run_script("evaluate.py", f"--out_dir={tmp_path}", check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "python train.py" in lines[0], proc.stderr
