"""bench.py end to end at tiny sizes (train.py, the plain loop, sampling with and without the KV cache, prepare.py
against tiktoken, peak memory in subprocesses): it finishes, prints the table and writes JSON with every field,
and its setting errors are one line. Speed is measured by bench.py, never asserted here: these only check that
the numbers exist and are sane. bench.py runs in this process (run_inline), so it costs no interpreter start-up."""
import json
import sys

import pytest

from conftest import run_inline

TINY = ["--n_layers=1", "--n_heads=2", "--d_model=32", "--d_ff=64", "--max_seq_len=32", "--batch_size=2",
        "--train_steps=4", "--train_warmup=2", "--log_interval=2", "--repeats=1",
        "--sample_layers=1", "--sample_heads=2", "--sample_d_model=32", "--sample_d_ff=64", "--sample_context=32",
        "--sample_lengths=4,8", "--data_mb=0.05", "--memory_scale=2", "--device=cpu",
        "--memory_batch=2", "--memory_seq=16", "--memory_d_model=32"]


def bench(monkeypatch, *args):
    return run_inline(monkeypatch, "bench.py", *args)


@pytest.mark.slow
def test_runs_end_to_end_and_writes_json(monkeypatch, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench(monkeypatch, *TINY, f"--output={out}")
    printed = capsys.readouterr().out
    for heading in ("train:", "sample:", "data:", "targets:", f"wrote {out}"):
        assert heading in printed, printed
    report = json.loads(out.read_text())
    assert {"cpu", "cores", "gpu", "torch", "torch_threads", "commit", "load_average"} <= set(report["machine"])
    assert report["machine"]["cores"] >= 1 and report["machine"]["gpu"] is None
    assert report["settings"]["batch_size"] == 2 and report["settings"]["what"] == "train,sample,data"
    results = report["results"]

    train = results["train"]
    for loop in ("train.py", "plain loop"):
        r = train[loop]
        assert r["ms_per_step"] > 0 and r["steps_timed"] == 2  # 4 steps, timed in pairs, the first pair left out
        assert r["tokens_per_sec"] == pytest.approx(2 * 32 / r["ms_per_step"] * 1000)
        assert r["mfu"] is None  # no known peak on a CPU
    assert train["ratio"] > 0
    ref = train["reference"]  # model.py's step against the plain GPT-2 written in bench.py, alternated
    for loop in ("model.py", "reference"):
        assert ref[loop]["ms_per_step"] > 0 and [len(run) for run in ref[loop]["runs_ms"]] == [2]  # 4 steps - 2
    assert ref["ratio"] == pytest.approx(ref["reference"]["ms_per_step"] / ref["model.py"]["ms_per_step"])
    memory = {m["path"]: m for m in train["loss_memory"]}  # each in a fresh process
    assert list(memory) == ["sliced", "full", "chunked"]
    losses = [m["loss"] for m in memory.values()]  # the same inputs and the same loss, three ways
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5) and 9 < losses[0] < 12  # ~ln(50257) at init
    if sys.platform == "linux":
        assert all(20 < m["baseline_mb"] <= m["peak_rss_mb"] < 10_000 for m in memory.values())

    sample = results["sample"]
    assert [row["new_tokens"] for row in sample["rows"]] == [4, 8] and sample["num_params"] > 0
    for row in sample["rows"]:
        assert row["cache_tokens_per_sec"] > 0 and row["recompute_tokens_per_sec"] > 0
        assert row["speedup"] == pytest.approx(row["cache_tokens_per_sec"] / row["recompute_tokens_per_sec"])

    data = results["data"]
    assert data["tokens"] > 1000 and data["prepare_tokens_per_sec"] > 0 and data["tiktoken_tokens_per_sec"] > 0
    assert [(m["shape"], m["data_mb"]) for m in data["memory"]] == [
        ("one .txt", 0.05), ("many files", 0.05), ("one .txt", 0.1), ("many files", 0.1)]
    for m in data["memory"]:
        assert m["prepare_wall_s"] > 0 and (m["tiktoken_wall_s"] is not None) == (m["shape"] == "one .txt")
        assert 0 < m["val_share"] < 0.3 and m["val_ratio"] == 0.01  # (tiny corpora: val takes 8,192 characters)
        if sys.platform == "linux":  # peak RSS comes from /proc
            assert 20 < m["prepare_peak_mb"] < 10_000
            assert m["tiktoken_peak_mb"] is None or 5 < m["tiktoken_peak_mb"] < 10_000
    assert data["val_share_error"] == max(abs(m["val_share"] - 0.01) for m in data["memory"])
    if sys.platform == "linux":
        assert None not in data["memory_growth"].values() and len(data["memory_growth"]) == 2

    verdicts = results["targets"]
    assert len(verdicts) == 7  # train, against the reference, sampling, data speed, data memory for two shapes,
    # val share (no MFU on a CPU)
    assert all(isinstance(ok, bool) and measured for _, measured, ok in verdicts)


def test_help_lists_the_settings(monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        bench(monkeypatch, "--help")
    assert info.value.code == 0
    printed = capsys.readouterr().out
    for name in ("--what", "--sample_lengths", "--data_mb", "--compile", "--train_warmup"):
        assert name in printed


@pytest.mark.parametrize("flags, message", [
    (["--what=train,gpu"], "what='train,gpu' should be a comma-separated list of train, sample, data"),
    (["--sample_lengths=64,lots"], "sample_lengths='64,lots' should be whole numbers"),
    (["--train_steps=3", "--train_warmup=3"], "train_steps=3 must exceed train_warmup=3"),
    (["--train_steps=10", "--train_warmup=3", "--log_interval=2"], "both be multiples of log_interval=2"),
    (["--batch_size=0"], "batch_size=0 must be at least 1"),
    (["--n_heads=3"], "bad model settings: d_model (128) must be divisible by n_heads (3)"),
    (["--data_format=csv"], "data_format jsonl or txt"),
    (["--batch_sise=4"], "unknown setting 'batch_sise'"),
    (["--dtype=float8"], "dtype=float8 is not one of auto, float32, bfloat16, float16"),
])
def test_setting_errors_are_one_line(monkeypatch, tmp_path, flags, message):
    with pytest.raises(SystemExit) as info:
        bench(monkeypatch, *flags, f"--output={tmp_path / 'never.json'}")
    text = info.value.code
    assert isinstance(text, str) and text.startswith("error: ") and "\n" not in text, text
    assert message in text
    assert not (tmp_path / "never.json").exists()


@pytest.mark.slow
def test_chat_through_the_server_with_and_without_the_cache(monkeypatch, tmp_path, capsys):
    out = tmp_path / "chat.json"
    bench(monkeypatch, "--what=chat", "--repeats=1", "--device=cpu", "--chat_turns=2", "--chat_user_words=4",
          "--chat_reply_tokens=5", f"--output={out}")
    assert "chat: demo shape" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"]["chat"]
    assert r["context"] == 128 and len(r["rows"]) == 2
    first, second = r["rows"]
    assert second["prompt_tokens"] > first["prompt_tokens"] + 5  # turn 2 carries turn 1 and its reply
    # with the cache, turn 2 prefills only its new tokens; without, the whole conversation
    assert second["prefill_prefilled"] == second["prompt_tokens"]
    assert second["cache_prefilled"] < second["prompt_tokens"] - first["prompt_tokens"] + 2
    for row in r["rows"]:
        assert row["cache_ttft_ms"] > 0 and row["prefill_ttft_ms"] > 0 and row["cache_tokens_per_sec"] > 0
    with pytest.raises(SystemExit, match="do not fit the context of 128"):
        bench(monkeypatch, "--what=chat", "--repeats=1", "--chat_turns=9", "--chat_reply_tokens=20", "--output=")


@pytest.mark.slow
def test_finetune_full_against_lora(monkeypatch, tmp_path, capsys):
    out = tmp_path / "finetune.json"
    bench(monkeypatch, "--what=finetune", "--repeats=1", "--train_steps=3", "--train_warmup=1", "--device=cpu",
          f"--output={out}")
    assert "finetune: config/sft_demo.py" in capsys.readouterr().out
    r = json.loads(out.read_text())["results"]["finetune"]
    full, adapters = r["full"], r["LoRA r=8"]
    assert full["total_params"] == adapters["total_params"] == full["trainable_params"]
    # rank-8 adapters on the 4 blocks' c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj of config/sft_demo.py (d_model 128,
    # d_ff 512): 8 * (128 + 384) + 8 * (128 + 128) + 8 * (128 + 512) + 8 * (512 + 128) per block
    assert adapters["trainable_params"] == 4 * 8 * (512 + 256 + 640 + 640) == 65_536
    for m in (full, adapters):
        assert m["ms_per_step"] > 0 and m["peak_rss_mb"] > 100


def test_generate_batched_against_one_at_a_time(monkeypatch, tmp_path, capsys):
    out = tmp_path / "generate.json"
    bench(monkeypatch, "--what=generate", "--gen_shape=tiny", "--gen_prompt_tokens=12", "--gen_samples=4",
          "--gen_new_tokens=5", "--gen_single=2", "--repeats=2", "--device=cpu", f"--output={out}")
    printed = capsys.readouterr().out
    assert "generate: tiny shape" in printed and "batched sampling >= 4x one at a time, 4 samples" in printed
    r = json.loads(out.read_text())["results"]["generate"]
    assert (r["samples"], r["single"], r["new_tokens"], r["prompt_tokens"]) == (4, 2, 5, 12)
    assert len(r["runs"]) == 2 and all(b > 0 and s > 0 for b, s in r["runs"])
    assert r["batched_completions_per_sec"] == max(b for b, _ in r["runs"])
    assert r["speedup"] == pytest.approx(r["batched_completions_per_sec"] / r["single_completions_per_sec"])
    with pytest.raises(SystemExit, match="must fit the context of 1024"):
        bench(monkeypatch, "--what=generate", "--gen_shape=tiny", "--gen_prompt_tokens=1000", "--output=")
    with pytest.raises(SystemExit, match="gen_shape='huge' should be 124m or tiny"):
        bench(monkeypatch, "--what=generate", "--gen_shape=huge", "--output=")
