"""chat.py in the terminal, as users run it: --prompt, piped stdin line by line, a pseudo-terminal, the context
running out, and one-line errors. Greedy replies are checked against full forward passes of the same model."""
import contextlib
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from nash.checkpoint import load_model
from conftest import ROOT, run_script
from nash.engine import ChatEngine, Decoder
from test_chat import greedy_reference


def expected_reply(run, messages, max_new_tokens=256):
    model, _, _ = load_model("", run, "best", "cpu")
    engine = ChatEngine(model, contextlib.nullcontext())
    prompt = engine.render(messages)
    decoder = Decoder(engine.enc)
    budget = min(max_new_tokens, model.config.max_seq_len - len(prompt))
    return "".join(decoder(t) for t in greedy_reference(model, prompt, budget)) + decoder.flush()


def test_prompt_answers_once(tiny_chat_run):
    proc = run_script("chat.py", f"--out_dir={tiny_chat_run}", "--prompt=Who are you?", "--temperature=0")
    assert proc.stdout == expected_reply(tiny_chat_run, [{"role": "user", "content": "Who are you?"}]) + "\n"
    assert "chatting with" in proc.stderr


def test_piped_stdin_works_line_by_line(tiny_chat_run):
    lines = "Hi\n\n/clear\nReverse: red fox\n/quit\nnever read\n"
    proc = subprocess.run([sys.executable, "chat.py", f"--out_dir={tiny_chat_run}", "--temperature=0",
                           "--max_new_tokens=6"], input=lines, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first = expected_reply(tiny_chat_run, [{"role": "user", "content": "Hi"}], 6)
    second = expected_reply(tiny_chat_run, [{"role": "user", "content": "Reverse: red fox"}], 6)  # after /clear
    assert proc.stdout == first + "\n" + second + "\n"
    assert "(new conversation)" in proc.stderr


def test_a_long_conversation_drops_its_oldest_turns_and_says_so(tiny_chat_run):
    # the tiny model's context is 32 tokens: three short turns do not fit
    lines = "".join(f"question {i}\n" for i in range(4))
    proc = subprocess.run([sys.executable, "chat.py", f"--out_dir={tiny_chat_run}", "--system=Be brief.",
                           "--max_new_tokens=6"], input=lines, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "outgrew the model's context of 32 tokens" in proc.stderr
    assert len(proc.stdout.splitlines()) >= 4  # every question got its reply line
    proc = subprocess.run([sys.executable, "chat.py", f"--out_dir={tiny_chat_run}"], input="word " * 40 + "\nhi\n",
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "error: the message is too long" in proc.stderr  # said, and it goes on


def read_until(fd, marker, timeout=60):
    out, end = b"", time.time() + timeout
    while marker not in out:
        if time.time() > end:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {out!r}")
        if select.select([fd], [], [], 0.5)[0]:
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
    return out.decode("utf-8", "replace")


def test_terminal_session_through_a_pseudo_terminal(tiny_chat_run):
    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "chat.py", f"--out_dir={tiny_chat_run}", "--temperature=0"],
                            stdin=secondary, stdout=secondary, stderr=secondary, cwd=ROOT, close_fds=True)
    os.close(secondary)
    try:
        banner = read_until(main, b"> ")
        assert "/clear starts over" in banner  # the help line is for people at a terminal
        os.write(main, b"Who are you?\r")
        out = read_until(main, b"\n> ")
        reply = expected_reply(tiny_chat_run, [{"role": "user", "content": "Who are you?"}])
        assert reply.strip().replace("\n", "\r\n") in out  # streamed to the terminal
        os.write(main, b"/system Be brief.\r")
        assert "system prompt: Be brief." in read_until(main, b"\n> ")
        os.write(main, b"/quit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)


def test_errors_are_one_line(tiny_run, tiny_chat_run):
    proc = run_script("chat.py", f"--out_dir={tiny_run}", "--prompt=hi", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "not fine-tuned for chat" in proc.stderr and "objective=chat" in proc.stderr
    for flag, message in (("--temperature=-1", "cannot be negative"), ("--top_p=0", "must be in (0, 1]"),
                          ("--port=70000", "not a TCP port")):
        proc = run_script("chat.py", f"--out_dir={tiny_chat_run}", flag, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and message in proc.stderr


def test_evaluate_measures_chat_runs_on_their_replies_and_sample_points_to_chat(tiny_chat_run, tmp_path):
    import json
    out = tmp_path / "eval.json"
    run_script("evaluate.py", f"--out_dir={tiny_chat_run}", f"--output={out}")
    results = json.loads(out.read_text())
    assert results["objective"] == "chat" and 0 < results["loss"] < 11
    proc = run_script("sample.py", f"--out_dir={tiny_chat_run}", check=False)
    assert proc.returncode == 1 and "python chat.py" in proc.stderr
