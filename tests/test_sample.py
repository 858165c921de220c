"""sample.py on the tiny runs: seeded determinism, FILE: prompts, the sampling flags reaching the sampler,
greedy decoding against an independent argmax loop, UTF-8 streaming, SFT prompting, and the errors.
Most runs are in-process (runpy), so they cost no interpreter or torch start-up."""

import pytest
import torch

import nash.engine as engine_module
from nash.checkpoint import load_model
from conftest import run_inline, run_script
from nash.tokenizer import EOT_ID, get_tokenizer


def sample(monkeypatch, *args):
    """`python sample.py args` in this process; returns the script's globals (samples, ...)."""
    return run_inline(monkeypatch, "sample.py", "--device=cpu", *args)


def sample_error(monkeypatch, *args):
    """The message a user error exits with: Python prints it to stderr as one line and exits 1."""
    with pytest.raises(SystemExit) as info:
        sample(monkeypatch, *args)
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


def greedy(model, ids, n, stop=None):
    """Argmax decoding by full forward passes, no KV cache: the reference for temperature 0."""
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids[-model.config.max_seq_len:]]))
            t = int(logits[0, -1].argmax())
            out.append(t)
            if t == stop:
                break
            ids.append(t)
    return out


def test_same_seed_same_text_other_seed_other_text(tiny_run, monkeypatch, capsys):
    flags = [f"--out_dir={tiny_run}", "--num_samples=2", "--max_new_tokens=8", "--temperature=1.0"]
    a = sample(monkeypatch, *flags, "--seed=1")["samples"]
    out_a = capsys.readouterr().out
    b = sample(monkeypatch, *flags, "--seed=1")["samples"]
    assert capsys.readouterr().out == out_a
    c = sample(monkeypatch, *flags, "--seed=2")["samples"]
    assert a == b and len(a) == 2 and all(a)
    assert c != a
    assert a[0] != a[1]  # the second sample goes on from the generator's state, not from the seed again


def test_temperature_zero_is_greedy_decoding(tiny_run, monkeypatch, capsys):
    g = sample(monkeypatch, f"--out_dir={tiny_run}", "--start=ROMEO:", "--temperature=0", "--num_samples=1",
               "--max_new_tokens=12")
    enc = get_tokenizer()
    model, _, _ = load_model("", tiny_run, "best", "cpu")
    tokens = greedy(model, enc.encode("ROMEO:"), 12, stop=EOT_ID)
    expected = b"".join(enc.decode_single_token_bytes(t) for t in tokens if t != EOT_ID).decode("utf-8", "replace")
    assert g["samples"] == [expected]
    out = capsys.readouterr().out
    assert out.startswith("ROMEO:" + expected)  # the prompt is echoed, then the continuation
    # top_k=1 (and a tiny nucleus) leave only the most likely token: sampling at any temperature is greedy
    for flag in ("--top_k=1", "--top_p=1e-9"):
        g = sample(monkeypatch, f"--out_dir={tiny_run}", "--start=ROMEO:", "--temperature=1.5", flag,
                   "--num_samples=1", "--max_new_tokens=12")
        assert g["samples"] == [expected], flag


def test_sampling_flags_reach_the_sampler(tiny_run, monkeypatch, capsys):
    seen, streams = [], []
    real_sample_next, real_stream = engine_module.sample_next, engine_module.stream

    def spy_sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
        seen.append((temperature, top_k, top_p, generator is not None))
        return real_sample_next(logits, temperature, top_k, top_p, generator)

    def spy_stream(model, prompt, sampling, stop_ids=(), **kwargs):
        streams.append((list(prompt), sampling.max_new_tokens, set(stop_ids)))
        return real_stream(model, prompt, sampling, stop_ids, **kwargs)

    monkeypatch.setattr(engine_module, "sample_next", spy_sample_next)
    monkeypatch.setattr(engine_module, "stream", spy_stream)
    sample(monkeypatch, f"--out_dir={tiny_run}", "--temperature=0.5", "--top_k=7", "--top_p=0.9", "--num_samples=2",
           "--max_new_tokens=5", "--stop_at_eot=False")
    assert seen == [(0.5, 7, 0.9, True)] * 10  # every token of both samples
    assert len(streams) == 2
    for prompt, n, stop_ids in streams:
        assert prompt == [EOT_ID] and n == 5  # the default prompt: a new document, as training saw them
        assert stop_ids == set()
    seen.clear()
    sample(monkeypatch, f"--out_dir={tiny_run}", "--top_k=0", "--top_p=1.0", "--num_samples=1", "--max_new_tokens=3",
           "--stop_at_eot=False")
    assert seen == [(0.8, None, 1.0, True)] * 3  # top_k=0 is off; top_p=1.0 is a no-op in the sampler
    assert streams[-1][2] == set()
    sample(monkeypatch, f"--out_dir={tiny_run}", "--num_samples=1", "--max_new_tokens=3")
    assert streams[-1][2] == {EOT_ID}


def test_file_prompt(tiny_run, tmp_path, monkeypatch, capsys):
    text = "KING RICHARD:\nNow is the winter"
    (tmp_path / "prompt.txt").write_text(text, encoding="utf-8")
    flags = [f"--out_dir={tiny_run}", "--temperature=0", "--num_samples=1", "--max_new_tokens=8"]
    from_file = sample(monkeypatch, *flags, f"--start=FILE:{tmp_path / 'prompt.txt'}")
    out = capsys.readouterr().out
    inline = sample(monkeypatch, *flags, f"--start={text}")
    assert out.startswith(text) and from_file["samples"] == inline["samples"]
    assert from_file["prompt_ids"] == get_tokenizer().encode(text)


def test_streaming_keeps_multibyte_characters_whole(tiny_run, monkeypatch, capsys):
    text = "héllo 🦙 wörld"
    enc = get_tokenizer()
    ids = enc.encode(text)
    broken = [t for t in ids if not _is_utf8(enc.decode_single_token_bytes(t))]
    assert broken, "the test needs a character split over tokens"

    def fake_stream(model, prompt, sampling, stop_ids=(), **kwargs):
        yield from ids  # (the engine leaves the stop token out)

    monkeypatch.setattr(engine_module, "stream", fake_stream)
    g = sample(monkeypatch, f"--out_dir={tiny_run}", "--start=x", "--num_samples=1")
    assert g["samples"] == [text]
    out = capsys.readouterr().out
    assert out == "x" + text + "\n" and "\ufffd" not in out


def _is_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_sft_checkpoint_prints_the_completion(tiny_sft_run, monkeypatch, capsys):
    prompt = "Echo: red\n"
    g = sample(monkeypatch, f"--out_dir={tiny_sft_run}", f"--start={prompt}", "--temperature=0", "--num_samples=1",
               "--max_new_tokens=10")
    enc = get_tokenizer()
    assert g["prompt_ids"] == enc.encode_ordinary(prompt)  # as data.py encodes SFT prompts: no end-of-text before
    model, _, _ = load_model("", tiny_sft_run, "best", "cpu")
    tokens = greedy(model, enc.encode_ordinary(prompt), 10, stop=EOT_ID)
    expected = enc.decode([t for t in tokens if t != EOT_ID])
    assert g["samples"] == [expected]
    assert capsys.readouterr().out == f"== prompt ==\n{prompt}== completion ==\n{expected}\n"
    message = sample_error(monkeypatch, f"--out_dir={tiny_sft_run}")  # the pretraining default prompt makes no sense
    assert "fine-tuned" in message and "--start=" in message


@pytest.mark.parametrize("flags, words", [
    (["--temperature=-1"], "temperature=-1.0 cannot be negative"),
    (["--top_k=-3"], "top_k=-3 cannot be negative"),
    (["--top_p=0"], "top_p=0.0 must be in (0, 1]"),
    (["--top_p=1.5"], "top_p=1.5 must be in (0, 1]"),
    (["--num_samples=0"], "num_samples=0"),
    (["--max_new_tokens=0"], "max_new_tokens=0"),
    (["--start=FILE:/no/such/prompt.txt"], "cannot read the prompt file /no/such/prompt.txt"),
    (["--start="], "tokenises to nothing"),
    (["--temperature=hot"], "expects float"),
])
def test_bad_values_are_one_line_errors(tiny_run, monkeypatch, flags, words):
    assert words in sample_error(monkeypatch, f"--out_dir={tiny_run}", *flags)


def test_empty_file_prompt_and_missing_checkpoint(tiny_run, tmp_path, monkeypatch):
    (tmp_path / "empty.txt").write_text("")
    message = sample_error(monkeypatch, f"--out_dir={tiny_run}", f"--start=FILE:{tmp_path / 'empty.txt'}")
    assert "tokenises to nothing" in message
    message = sample_error(monkeypatch, f"--out_dir={tmp_path}")
    assert "no checkpoint in" in message and f"python train.py --out_dir={tmp_path}" in message


def test_errors_from_the_command_line(tiny_sft_run, tmp_path):
    for flags, words in (([f"--out_dir={tmp_path}"], "train one with `python train.py"),  # before loading
                         ([f"--out_dir={tiny_sft_run}"], "was fine-tuned on prompts and completions")):  # after
        proc = run_script("sample.py", *flags, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr
        assert lines[0].startswith("error: ") and words in lines[0], proc.stderr
        assert proc.stdout == ""
