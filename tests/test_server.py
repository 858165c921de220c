"""`python chat.py --serve` on a free 127.0.0.1 port, as users run it: the official openai client (streamed and not),
raw HTTP (httpx) for bad requests, a client that disconnects mid-stream, and concurrent requests served one at a
time in arrival order without corrupting each other. Greedy replies are checked against full forward passes.
And the server as an attacker tries it: huge bodies, NaN and deep nesting, long stop strings, a prefill left
behind by its client, cross-site requests and DNS rebinding, API keys."""
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from nash import server
from nash.checkpoint import load_model, save_checkpoint
from conftest import ROOT
from nash.engine import ChatEngine, Decoder, Sampling, StopStrings
from model import GPT, GPTConfig
from test_chat import chat_model, greedy_reference
from test_chat_rolling import engine_for, rope_chat_ckpt, rope_chat_model  # noqa: F401  (rope_chat_ckpt: a fixture)
from nash.tokenizer import CHAT_VOCAB_SIZE, VOCAB_SIZE, get_tokenizer, render_conversation, special_ids


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(*args, env=None, log=None):
    """chat.py --serve in a subprocess; yields its base URL once /health answers, stops it afterwards (and appends
    what it printed to log)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "chat.py", "--serve", f"--port={port}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise AssertionError("the server did not come up")
        yield url
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if log is not None:
            log.append(proc.stdout.read())


@pytest.fixture(scope="module")
def long_chat_ckpt(tmp_path_factory):
    """A random chat model with a long context (1024) that never ends a reply by itself (its special tokens'
    output rows are pushed down): the reply runs as long as it is allowed, so a disconnect shows."""
    torch.manual_seed(0)
    config = GPTConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=1024, vocab_size=CHAT_VOCAB_SIZE,
                       dropout=0.0, tie_weights=False)
    model = GPT(config)
    with torch.no_grad():
        model.lm_head.weight[VOCAB_SIZE - 1:CHAT_VOCAB_SIZE] = -model.lm_head.weight[:VOCAB_SIZE].abs().mean(0) * 50
    path = str(tmp_path_factory.mktemp("long") / "long.pt")
    save_checkpoint(path, {"model": model.state_dict(), "model_config": asdict(config), "step": 0,
                           "settings": {"task": "chat"}, "metrics": None})
    return path


def expected(ckpt_args, messages, n):
    run, ckpt = ckpt_args
    model, _, _ = load_model("", run, ckpt, "cpu")
    engine = ChatEngine(model, contextlib.nullcontext())
    prompt = engine.render(messages)
    decoder = Decoder(engine.enc)
    return "".join(decoder(t) for t in greedy_reference(model, prompt, n)) + decoder.flush(), len(prompt)


def test_openai_client_streamed_and_not(tiny_chat_run):
    from openai import BadRequestError, OpenAI
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    reply, prompt_tokens = expected((tiny_chat_run, "best"), messages, 10)
    with serving(f"--out_dir={tiny_chat_run}") as url:
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        [card] = client.models.list().data
        assert card.id == os.path.basename(tiny_chat_run)
        assert card.context_length == card.max_tokens == 32 and not card.rolling_cache  # replies end at the context
        done = client.chat.completions.create(model="tiny_chat", messages=messages, temperature=0, max_tokens=10)
        assert done.choices[0].message.content == reply and done.choices[0].message.role == "assistant"
        assert done.usage.prompt_tokens == prompt_tokens and done.choices[0].finish_reason in ("stop", "length")
        assert done.usage.completion_tokens == done.usage.total_tokens - prompt_tokens <= 10
        chunks = list(client.chat.completions.create(model="tiny_chat", messages=messages, temperature=0,
                                                     max_tokens=10, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply and chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == done.choices[0].finish_reason
        assert chunks[-1].usage.completion_tokens == done.usage.completion_tokens
        # a second turn that extends the first reuses the server's cache and is still exact
        turn2 = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Reverse: a b"}]
        again = client.chat.completions.create(model="tiny_chat", messages=turn2, temperature=0, max_tokens=5)
        assert again.choices[0].message.content == expected((tiny_chat_run, "best"), turn2, 5)[0]
        with pytest.raises(BadRequestError, match="tool result with no calculator call before it"):
            client.chat.completions.create(model="tiny_chat", messages=[{"role": "tool", "content": "x"}])


BAD_REQUESTS = [
    (b"{not json", 400, None, "not valid JSON"),
    (b'["a list"]', 400, None, "JSON object"),
    ({"messages": []}, 400, "messages", "non-empty"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role", "wizard"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "messages", "no user message"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content", "string"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens", "from 1 to 32"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 33}, 400, "max_tokens", "from 1 to 32"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature", "from 0.0 to 2.0"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream", "true or false"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "n=1"),
    ({"messages": [{"role": "user", "content": "word " * 40}]}, 400, "messages", "context is 32"),
    # JSON has no NaN or Infinity (Python's json reads them), and 1e999 reads as infinity
    *[(b'{"messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (name.encode(), value), 400, None,
       "not a JSON number") for name in ("top_k", "seed", "temperature", "max_tokens")
      for value in (b"NaN", b"Infinity", b"-Infinity")],
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1e999}', 400, "seed", "must be an integer"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "top_k": -1e999}', 400, "top_k", "must be an integer"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e999}', 400, "temperature", "a number"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "seed": 1%s}' % (b"0" * 5000), 400, None, "not valid JSON"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": "5"}, 400, "top_k", "must be an integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": [1]}, 400, "seed", "must be an integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": {}}, 400, "temperature", "a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": True}, 400, "top_p", "a number"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2.5}, 400, "max_tokens", "an integer"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": [1] * 10**4}, 400, "max_tokens", "an integer from 1"),
    (b"[" * 100_000, 400, None, "nested too deeply"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, None, "nested too deeply"),
    # numbers in range, or a 400 that says the range (each of these was a 500: the sampler's NaN, numpy's seed, an
    # int too large for a float, n=true read as n=1)
    ({"messages": [{"role": "user", "content": "hi"}], "seed": -1}, 400, "seed", "from 0 to"),
    ({"messages": [{"role": "user", "content": "hi"}], "seed": 2**64}, 400, "seed", "from 0 to"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1e-320, "temperature": 1}, 400, "top_p", "from 1e-06"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-300}, 400, "temperature", "0 (greedy) or"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 10**400}, 400, "temperature", "from 0.0 to 2.0"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": 10**400}, 400, "top_k", "from 0 to"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_k": -1}, 400, "top_k", "from 0 to"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**400}, 400, "max_tokens", "from 1 to 32"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -5}, 400, "max_completion_tokens",
     "from 1 to 32"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": True}, 400, "n", "n=1"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 10**400}, 400, "n", "n=1"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "n": 1e999}', 400, "n", "n=1"),
    # JSON is UTF-8: Latin-1 is refused, and so is UTF-16 (json.loads would have guessed it from the bytes)
    ('{"messages": [{"role": "user", "content": "caf\xe9"}]}'.encode("latin-1"), 400, None, "not UTF-8"),
    ('{"messages": [{"role": "user", "content": "hi"}]}'.encode("utf-16"), 400, None, "not UTF-8"),
    # stop strings: at most 4, each at most MAX_STOP_CHARS characters (a 1M-character one cost 11 s per token)
    ({"messages": [{"role": "user", "content": "hi"}], "stop": ["a", "b", "c", "d", "e"]}, 400, "stop", "up to 4"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": "x" * (server.MAX_STOP_CHARS + 1)}, 400, "stop",
     f"1 to {server.MAX_STOP_CHARS} characters"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": "x" * 1_000_000}, 400, "stop", "characters"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}, 400, "stop", "characters"),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(tiny_chat_run):
    with serving(f"--out_dir={tiny_chat_run}") as url:
        for body, status, param, message in BAD_REQUESTS:
            kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
                else {"json": body}
            r = httpx.post(url + "/v1/chat/completions", timeout=30, **kwargs)
            assert r.status_code == status, (body, r.text)
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
            assert message in error["message"] and error["param"] == param, (body, error)
        assert httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "w " * 40}]},
                          timeout=30).json()["error"]["code"] == "context_length_exceeded"
        r = httpx.get(url + "/v1/nothing", timeout=30)
        assert r.status_code == 404 and "error" in r.json()
        assert httpx.get(url + "/v1/chat/completions", timeout=30).status_code == 405
        ok = httpx.post(url + "/v1/chat/completions", timeout=60,
                        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["role"] == "assistant"
        page = httpx.get(url + "/", timeout=30)
        assert page.status_code == 200 and "<title>Nash-LLM chat</title>" in page.text
        assert "http://" not in page.text and "https://" not in page.text  # self-contained: nothing fetched elsewhere


@pytest.mark.slow
def test_a_client_that_disconnects_stops_the_generation(long_chat_ckpt):
    with serving(f"--init_from={long_chat_ckpt}", "--temperature=0") as url:
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", url + "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "talk"}], "max_tokens": 1000, "stream": True}) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                seen = [next(lines) for _ in range(6)]  # a few events, then hang up
                assert all(line.startswith("data: ") or line == "" for line in seen)
        for _ in range(300):
            health = httpx.get(url + "/health", timeout=30).json()
            if not health["busy"]:
                break
            time.sleep(0.1)
        assert health["cancelled"] == 1 and health["served"] == 1
        assert health["tokens_generated"] < 1000  # it stopped early, instead of generating for nobody
        # and the next request is served normally, exact, from the cache it left behind
        r = httpx.post(url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "talk"}], "max_tokens": 20})
        assert r.json()["choices"][0]["message"]["content"] == expected((long_chat_ckpt, long_chat_ckpt),
                                                                       [{"role": "user", "content": "talk"}], 20)[0]


@pytest.mark.slow
def test_concurrent_requests_are_served_one_at_a_time_in_arrival_order(long_chat_ckpt):
    asks = [("a long one", 400), ("short one", 8), ("another short one", 8)]
    results, finished = {}, []
    with serving(f"--init_from={long_chat_ckpt}", "--temperature=0") as url:
        def ask(text, n):
            r = httpx.post(url + "/v1/chat/completions", timeout=300,
                           json={"messages": [{"role": "user", "content": text}], "max_tokens": n})
            results[text] = r.json()["choices"][0]["message"]["content"]
            finished.append(text)
        threads = []
        for text, n in asks:
            threads.append(threading.Thread(target=ask, args=(text, n)))
            threads[-1].start()
            time.sleep(0.3)  # arrival order: long, short, another short
        for t in threads:
            t.join()
    assert finished == [text for text, _ in asks]  # the short ones waited their turn behind the long one
    for text, n in asks:  # and nobody's cache was corrupted by anybody else's
        assert results[text] == expected((long_chat_ckpt, long_chat_ckpt), [{"role": "user", "content": text}], n)[0]


def raw_request(url, head):
    """Send only the head of a request (no body) on a raw socket; the status line of the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        return sock.makefile("rb").readline().decode()


def test_large_bodies_are_refused_before_they_are_read(tiny_chat_run):
    post = "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n"
    big = {"messages": [{"role": "user", "content": "word " * 400_000}]}  # 2 MB
    with serving(f"--out_dir={tiny_chat_run}") as url:
        host = url.removeprefix("http://")
        # a declared 100 MB: 413 at once, while the body has not even started
        assert raw_request(url, post.format(host) + "Content-Length: 100000000\r\n\r\n").split()[1] == "413"
        r = httpx.post(url + "/v1/chat/completions", json=big, timeout=60)
        assert r.status_code == 413 and "--max_body_bytes" in r.json()["error"]["message"]

        def chunked():  # no Content-Length: counted as it arrives
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(40):
                yield b"word " * 10_000
        r = httpx.post(url + "/v1/chat/completions", content=chunked(), timeout=60,
                       headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # a body still arriving holds nothing up: /health answers meanwhile
        with socket.create_connection(tuple(host.split(":")), timeout=30) as sock:
            sock.sendall((post.format(host) + "Content-Length: 500000\r\n\r\n").encode() + b'{"messages": [')
            assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
        assert httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                             "max_tokens": 2}, timeout=60).status_code == 200
    with serving(f"--out_dir={tiny_chat_run}", "--max_body_bytes=3000000") as url:  # the flag raises the limit
        r = httpx.post(url + "/v1/chat/completions", json=big, timeout=120)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"  # read and parsed


def test_requests_are_parsed_and_tokenised_off_the_event_loop(monkeypatch):
    engine = ChatEngine(chat_model(), contextlib.nullcontext())
    on_loop, render = [], engine.render

    def recording(messages):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)  # the event loop's thread: every other request would wait for this
        except RuntimeError:
            on_loop.append(False)
        return render(messages)

    monkeypatch.setattr(engine, "render", recording)
    client = TestClient(server.create_app(engine, "tiny", Sampling(temperature=0.0)))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 200 and on_loop == [False]


def python_lines(fn):
    """How many lines of Python fn() runs (sys.settrace): a count of work done that no machine's load changes."""
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += event == "line"
        return trace

    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


class ScriptedEngine:
    """An engine that replies with given tokens: the worker's stop-string handling, alone (it ignores stop_strings:
    the worker cuts the reply at the first one all the same)."""

    def __init__(self, tokens):
        self.enc, self.tokens, self.finish_reason = get_tokenizer(), tokens, "length"

    def generate(self, prompt, sampling, should_stop=None, stop_strings=()):
        yield from self.tokens[:sampling.max_new_tokens]

    def reset(self):
        pass


class NoLoop:
    def call_soon_threadsafe(self, fn, *args):
        pass


class NowLoop:
    """A job's loop that delivers at once (the worker's thread is the test's)."""
    def call_soon_threadsafe(self, fn, *args):
        fn(*args)


def test_stop_strings_cost_per_token_does_not_grow_with_their_length():
    words = get_tokenizer().encode_ordinary("the quick brown fox jumps over the lazy dog " * 40)
    worker = server.Worker(ScriptedEngine(words))

    def work(length, tokens):  # stop strings whose prefixes keep matching the reply, yet never all of one
        stop = ("the quick brown fox jumps over the lazy dog " * (length // 40 + 1))[:length - 1] + "#"
        job = server.Job([1], Sampling(max_new_tokens=tokens), [stop] * server.MAX_STOP_STRINGS, NoLoop())
        return python_lines(lambda: worker.serve(job))

    per_token = {n: (work(n, 1) and work(n, 200) - work(n, 100)) / 100  # (the first compiles the stops' regex)
                 for n in (20, server.MAX_STOP_CHARS)}
    assert per_token[server.MAX_STOP_CHARS] < 1.5 * per_token[20], per_token  # (quadratic, it was 400 times more)


def naive_stop(pieces, stops):
    """The reference: the reply as pieces arrive ends after the first piece that completes a stop string, before
    the first stop string in it (the engine's stop_cut); and how much of the end of text may start one."""
    text = ""
    for piece in pieces:
        text += piece
        if any(s in text for s in stops):
            return text[:min(text.index(s) for s in stops if s in text)], "stop"
    return text, "length"


def test_stop_strings_match_the_naive_search():
    """The worker, fed random replies as tokens: what it streams adds up to the reply cut before the first stop
    string, and at no point has it sent a character that a later piece turned into part of a stop string."""
    rng, enc = random.Random(0), get_tokenizer()
    worker = server.Worker(None)
    for _ in range(200):
        stops = ["".join(rng.choice("ab ") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 40)))
        tokens = enc.encode_ordinary(text)
        job = server.Job([1], Sampling(max_new_tokens=100), stops, NowLoop())
        worker.engine = ScriptedEngine(tokens)
        worker.serve(job)
        sent = []
        while not job.out.empty():
            sent.append(job.out.get_nowait())
        reply, finish = naive_stop([enc.decode([t]) for t in tokens], stops)
        assert "".join(v for k, v in sent if k == "text") == reply, (stops, text)
        assert sent[-1] == ("done", (finish, sent[-1][1][1])), (stops, text)
        for k in range(len(text) + 1):  # the hold-back alone: the longest end of text[:k] that starts a stop
            held = max((n for s in stops for n in range(1, len(s)) if text[:k].endswith(s[:n])), default=0)
            matcher = StopStrings(stops)
            if matcher.feed(text[:k]) is None:  # (once a stop string is complete the reply has ended)
                assert matcher.held == held


@pytest.mark.slow
def test_openai_client_stop_strings(long_chat_ckpt):
    from openai import BadRequestError, OpenAI
    messages = [{"role": "user", "content": "talk"}]
    reply = expected((long_chat_ckpt, long_chat_ckpt), messages, 30)[0]
    stop = reply[10:14]
    with serving(f"--init_from={long_chat_ckpt}", "--temperature=0") as url:
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        done = client.chat.completions.create(model="long", messages=messages, max_tokens=30, stop=[stop])
        assert done.choices[0].message.content == reply[:reply.find(stop)] and done.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(model="long", messages=messages, max_tokens=30, stream=True,
                                                  stop=[stop, "x" * server.MAX_STOP_CHARS])
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == reply[:reply.find(stop)]
        with pytest.raises(BadRequestError, match="characters"):
            client.chat.completions.create(model="long", messages=messages, stop="x" * 1_000_000)


def counting_forwards(monkeypatch, model):
    calls, forward = [], model.next_logits
    monkeypatch.setattr(model, "next_logits", lambda idx, cache=None: calls.append(idx.size(1)) or forward(idx, cache))
    return calls


@pytest.mark.parametrize("rolling", [False, True])
def test_a_cancel_during_prefill_stops_between_chunks(monkeypatch, rolling):
    model = rope_chat_model(max_seq_len=16) if rolling else chat_model(max_seq_len=96)
    engine = engine_for(model, rolling)
    engine.prefill_chunk = 8
    prompt = engine.render([{"role": "user", "content": "word " * 60}])  # 60 tokens and more: several chunks
    calls = counting_forwards(monkeypatch, model)
    asked = []
    cancel = lambda: asked.append(1) or len(asked) >= 3  # noqa: E731  (the client leaves after the second chunk)
    assert list(engine.generate(prompt, Sampling(temperature=0.0, max_new_tokens=4), should_stop=cancel)) == []
    assert engine.finish_reason == "stopped" and len(calls) == 3 and len(engine.cached) == sum(calls) < len(prompt)
    # what was fed stays: the same prompt again goes on from there, and lands where a fresh engine does
    reply = list(engine.generate(prompt, Sampling(temperature=0.0, max_new_tokens=4)))
    assert engine.prefilled == len(prompt) - sum(calls[:3])
    fresh = engine_for(model, rolling)
    assert reply == list(fresh.generate(prompt, Sampling(temperature=0.0, max_new_tokens=4)))


@pytest.mark.slow
def test_a_client_that_leaves_during_a_rolling_prefill_frees_the_worker(rope_chat_ckpt):
    words = 20_000  # past the context of 32, a rolling prefill goes a token at a time: many seconds of work
    with serving(f"--init_from={rope_chat_ckpt[0]}", "--rolling_cache") as url:
        with httpx.Client(timeout=60) as client:
            with client.stream("POST", url + "/v1/chat/completions", json={
                    "messages": [{"role": "user", "content": "word " * words}], "stream": True}) as r:
                lines = r.iter_lines()  # (kept: dropping it would close the connection)
                assert next(lines).startswith("data: ")  # the stream began
                for _ in range(300):  # until the worker is prefilling, then hang up
                    if httpx.get(url + "/health", timeout=30).json()["cached_tokens"]:
                        break
                    time.sleep(0.05)
        for _ in range(600):
            health = httpx.get(url + "/health", timeout=30).json()
            if not health["busy"]:
                break
            time.sleep(0.1)
        assert health["cancelled"] == 1 and health["tokens_generated"] == 0
        assert health["cached_tokens"] < words  # it stopped prefilling, long before the prompt's end


def test_cross_site_requests_and_dns_rebinding_are_refused(tiny_chat_run):
    hi = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with serving(f"--out_dir={tiny_chat_run}") as url:
        port = url.rsplit(":", 1)[1]
        api = url + "/v1/chat/completions"

        def post(headers, body=b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'):
            return httpx.post(api, content=body, headers=headers, timeout=60)
        # the request: a text/plain POST (no CORS preflight) from a foreign page reached by DNS rebinding
        r = post({"Content-Type": "text/plain", "Origin": "http://evil.example", "Host": f"evil.example:{port}"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_host"
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                      "application/json; charset=latin-1", None):
            r = post({"Content-Type": ctype} if ctype else {})
            assert r.status_code == 415 and "application/json" in r.json()["error"]["message"], ctype
        for ctype in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
            assert post({"Content-Type": ctype}).status_code == 200, ctype
        for host in (f"evil.example:{port}", "127.0.0.1:1", f"127.0.0.1.evil.example:{port}", ""):
            for path in ("/", "/v1/models", "/health"):
                assert httpx.get(url + path, headers={"Host": host}, timeout=30).status_code == 403, (host, path)
            assert httpx.post(api, json=hi, headers={"Host": host}, timeout=30).status_code == 403
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"LocalHost:{port}"):
            assert httpx.post(api, json=hi, headers={"Host": host}, timeout=60).status_code == 200, host
        for origin in ("http://evil.example", f"http://localhost:{port}", "null", f"https://127.0.0.1:{port}"):
            r = httpx.post(api, json=hi, headers={"Origin": origin}, timeout=30)  # Host: 127.0.0.1:port
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_origin", origin
        assert httpx.post(api, json=hi, headers={"Origin": url}, timeout=60).status_code == 200  # the page itself


def test_an_api_key_guards_the_api(tiny_chat_run):
    from openai import AuthenticationError, OpenAI
    messages = [{"role": "user", "content": "hi"}]
    with serving(f"--out_dir={tiny_chat_run}", env={"NASH_API_KEY": "s3cret"}) as url:  # (not in ps)
        with pytest.raises(AuthenticationError, match="API key"):
            OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        client = OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert client.chat.completions.create(model="tiny_chat", messages=messages, max_tokens=2).choices
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"},
                        {"Authorization": "Basic s3cret"}):
            for r in (httpx.get(url + "/v1/models", headers=headers, timeout=30),
                      httpx.post(url + "/v1/chat/completions", json={"messages": messages}, headers=headers,
                                 timeout=30)):
                error = r.json()["error"]
                assert r.status_code == 401 and error["code"] == "invalid_api_key", headers
                assert set(error) == {"message", "type", "param", "code"} and "s3cret" not in error["message"]
        assert httpx.get(url + "/health", timeout=30).status_code == 200  # the page and /health need no key
        assert httpx.get(url + "/", timeout=30).status_code == 200


def test_serving_beyond_loopback_without_a_key_warns(tiny_chat_run):
    log = []
    with serving(f"--out_dir={tiny_chat_run}", "--host=0.0.0.0", log=log) as url:
        assert httpx.get(url + "/health", timeout=30).status_code == 200
    assert "warning: serving on 0.0.0.0 without an API key" in log[0] and "NASH_API_KEY" in log[0]
    log = []
    with serving(f"--out_dir={tiny_chat_run}", "--host=0.0.0.0", "--api_key=k", log=log):
        pass
    assert "warning" not in log[0] and "API key required" in log[0]


CALLED = "What is 6 times 7?"
REPLY_PARTS = [{"type": "text", "text": " It is"}, {"type": "python", "text": " 6 * 7"},
               {"type": "python_output", "text": "42"}, {"type": "text", "text": "."}]
REPLY_SHAPES = {  # the same reply, each way a client may send it back
    "as streamed": [{"role": "assistant", "content": " It is<|python_start|> 6 * 7<|python_end|><|output_start|>42"
                                                     "<|output_end|>."}],
    "OpenAI tool calls": [
        {"role": "assistant", "content": " It is", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "calculator",
                                                              "arguments": '{"expression": " 6 * 7"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        {"role": "assistant", "content": "."}],
    "content parts": [{"role": "assistant", "content": REPLY_PARTS}],
}


def calculator_engine():
    """An engine on a real GPT steered to reply " It is" + a call of ` 6 * 7` + "." (test_tools.SteeredGPT)."""
    from test_tools import SteeredGPT, chain_of
    model = SteeredGPT({**chain_of("<|assistant_start|>", " It is", "<|python_start|>", " 6 * 7", "<|python_end|>"),
                        **chain_of("<|output_end|>", ".", "<|assistant_end|>")})
    return ChatEngine(model, contextlib.nullcontext())


@contextlib.contextmanager
def calculator_server():
    """The server, in-process, on calculator_engine(); yields the engine and an openai client."""
    from openai import OpenAI
    engine = calculator_engine()
    with TestClient(server.create_app(engine, "steered", Sampling(temperature=0.0, top_k=None))) as http:
        yield engine, OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http)


@pytest.mark.slow
def test_a_reply_with_calls_sent_back_in_any_shape_is_what_the_model_generated():
    """The calls stream as the tool tokens' names; a client that sends the reply back (as streamed, as OpenAI's
    tool_calls + role "tool" messages, or as content parts) gets the very token ids the model generated and saw,
    not the names re-read as text: the next turn prefills only the new messages."""
    enc = get_tokenizer()
    question, follow = [{"role": "user", "content": CALLED}], {"role": "user", "content": "And 6 times 8?"}
    with calculator_server() as (engine, client):
        stream = client.chat.completions.create(model="steered", messages=question, stream=True, temperature=0)
        content = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert [content] == [m["content"] for m in REPLY_SHAPES["as streamed"]]
        seen = list(engine.cached)  # the prompt and the reply, as the model generated them
        original = render_conversation(enc, question + [{"role": "assistant", "content": REPLY_PARTS}, follow],
                                       for_reply=True)[0]
        assert original[:len(seen)] == seen and original[len(seen)] == special_ids(enc)["<|assistant_end|>"]
        for shape, history in REPLY_SHAPES.items():
            prompt = server.parse_request({"messages": question + history + [follow]}, engine, Sampling())[0]
            assert prompt == original, shape
            client.chat.completions.create(model="steered", messages=question + history + [follow], max_tokens=1)
            assert engine.prefilled == len(original) - len(seen), shape  # only the new turn was computed
            client.chat.completions.create(model="steered", messages=question, max_tokens=20)  # back to the reply
        plain = server.parse_request({"messages": [{"role": "user", "content": content}]}, engine, Sampling())[0]
        assert special_ids(enc)["<|python_start|>"] not in plain  # a user's text stays text


@pytest.mark.parametrize("history, error", [
    ([{"role": "tool", "tool_call_id": "call_1", "content": "42"}], "no calculator call before it"),
    ([REPLY_SHAPES["OpenAI tool calls"][0]], "has no tool message with its result"),
    ([REPLY_SHAPES["OpenAI tool calls"][0], {"role": "tool", "tool_call_id": "call_2", "content": "42"}],
     "the next call waiting for its result is 'call_1'"),
    ([REPLY_SHAPES["OpenAI tool calls"][0], {"role": "user", "content": "hm?"}], "comes before the result"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "shell", "arguments": '{"expression": "ls"}'}}]}], "one tool is its calculator"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "calculator", "arguments": "2+2"}}]}], "a string \"expression\""),
    ([{"role": "assistant", "content": [{"type": "python", "text": "2+2"}]}], "no python_output right after it"),
    ([{"role": "user", "content": [{"type": "python", "text": "2+2"}]}], "may only hold text parts"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {
        "name": "calculator", "arguments": "[" * 100_000}}]}], "arguments is nested too deeply"),  # (was a 500)
])
def test_malformed_calls_in_a_request_are_a_400_naming_the_message(history, error):
    with calculator_server() as (engine, client):
        r = client._client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": CALLED}] + history})
        assert r.status_code == 400 and error in r.json()["error"]["message"], r.text


def test_the_readmes_reply_shapes_read_as_the_same_calls():
    """docs/chat.md, tool use: the reply as streamed, and in OpenAI's shape, render to the same token ids, with the call."""
    with open(os.path.join(ROOT, "docs", "chat.md"), encoding="utf-8") as f:  # moved there from the README
        readme = f.read()
    block = readme.split("**In chat, the page and the server.**")[1].split("```python\n")[1].split("```")[0]
    streamed, *openai_shape = eval("[" + block + "]")  # a list of messages, as written
    engine = calculator_engine()
    question, follow = {"role": "user", "content": "What is 6 times 7?"}, {"role": "user", "content": "Thanks"}
    prompts = [server.parse_request({"messages": [question, *history, follow]}, engine, Sampling())[0]
               for history in ([streamed], openai_shape)]
    assert prompts[0] == prompts[1] and special_ids(engine.enc)["<|python_start|>"] in prompts[0]


# Shedding load (issue 35): a server in this process on a real socket (uvicorn in a thread, with chat.py's protocol),
# on a model slowed to STEP seconds a forward, so that what happens after a client leaves can be counted in steps.
STEP = 0.05


def slow_engine(forwards, max_seq_len=512):
    """A chat engine on a model that never ends a reply by itself and takes STEP seconds a forward; forwards gets
    the time each forward ended."""
    model = chat_model(max_seq_len=max_seq_len, tie_weights=False)
    with torch.no_grad():  # the special tokens' rows pushed down: the reply runs as long as it is allowed
        model.lm_head.weight[VOCAB_SIZE - 1:] = -model.lm_head.weight[:VOCAB_SIZE].abs().mean(0) * 50
    forward = model.next_logits

    def slow(idx, cache=None):
        time.sleep(STEP)
        out = forward(idx, cache)
        forwards.append(time.monotonic())
        return out
    model.next_logits = slow
    return ChatEngine(model, contextlib.nullcontext())


@contextlib.contextmanager
def live(app, header_timeout=10.0):
    """app served on a free 127.0.0.1 port as chat.py --serve serves it (the head deadline too); yields its URL."""
    import uvicorn
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            http=server.head_timeout_protocol(header_timeout))
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    for _ in range(300):
        if uv.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=30)


def until_idle(worker, served, seconds=60):
    for _ in range(int(seconds / 0.05)):
        if worker.served >= served and not worker.busy:
            return
        time.sleep(0.05)
    raise AssertionError("the worker is still busy")


HI = {"messages": [{"role": "user", "content": "talk"}], "max_tokens": 150}


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_stops_its_generation_within_a_step(stream):
    """Streamed or not, a reply stops at the first decode step after its client hung up (a non-streamed one used
    to run to its end: 569 more tokens after the client had gone)."""
    forwards = []
    app = server.create_app(slow_engine(forwards), "slow", Sampling(temperature=0.0))
    worker = app.state.worker
    with live(app) as url:
        with httpx.Client() as client:
            if stream:
                with client.stream("POST", url + "/v1/chat/completions", json={**HI, "stream": True},
                                   timeout=30) as r:
                    lines = r.iter_lines()
                    for _ in range(16):  # a few tokens (an event is two lines), then hang up
                        next(lines)
            else:
                with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s of generation
                    client.post(url + "/v1/chat/completions", json=HI, timeout=1.0)
        left = time.monotonic()
        generated = len(forwards)
        until_idle(worker, 1)
        after = sum(t > left for t in forwards)
        assert generated > 5 and worker.cancelled == 1, (generated, worker.cancelled)
        assert after <= 2, after  # the forward under way when the client left, and at most one more (a loaded CPU)
        r = httpx.post(url + "/v1/chat/completions", json={**HI, "max_tokens": 3}, timeout=30)  # still serving
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


def post_and_hold(url, body):
    """Send a whole request on a raw socket and do not read the answer: a request that waits or is answered."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port.encode(), len(data), data))
    return sock


def test_a_full_queue_is_refused_with_503_and_retry_after():
    forwards = []
    app = server.create_app(slow_engine(forwards), "slow", Sampling(temperature=0.0), limits=server.Limits(max_queue=1))
    worker = app.state.worker
    with live(app) as url:
        held = [post_and_hold(url, HI)]  # answered
        for _ in range(200):
            if worker.busy:
                break
            time.sleep(0.05)
        held.append(post_and_hold(url, HI))  # waits behind it: the queue of 1 is full
        for _ in range(200):
            if worker.admitted == 2:
                break
            time.sleep(0.05)
        r = httpx.post(url + "/v1/chat/completions", json=HI, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy", r.text
        assert 1 <= int(r.headers["Retry-After"]) <= 60 and "waiting" in r.json()["error"]["message"]
        start = time.monotonic()
        health = httpx.get(url + "/health", timeout=30).json()
        assert time.monotonic() - start < 1 and health["refused"] == 1 and health["admitted"] == 2
        for sock in held:  # both leave: the running one stops, the waiting one is skipped
            sock.close()
        until_idle(worker, 2)
        assert worker.admitted == 0 and worker.cancelled == 2
        assert httpx.post(url + "/v1/chat/completions", json={**HI, "max_tokens": 2}, timeout=30).status_code == 200


def test_slow_and_half_open_connections_are_timed_out_and_health_stays_fast():
    """Clients that never finish their headers (300 half-open connections starved /health), one that sends them a
    byte at a time, and one whose body never ends: /health answers within 1 s meanwhile, the headers get a 408 and
    the connection closed after header_timeout, the body a 408 after body_timeout."""
    app = server.create_app(ChatEngine(chat_model(), contextlib.nullcontext()), "tiny", Sampling(temperature=0.0),
                            limits=server.Limits(body_timeout=1.0, max_queue=0))
    with live(app, header_timeout=1.0) as url:
        host, port = url.removeprefix("http://").split(":")
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        half_open = []
        for _ in range(200):
            sock = socket.create_connection((host, int(port)), timeout=30)
            sock.sendall(head.encode())  # and never the blank line that ends the headers
            half_open.append(sock)
        drip = socket.create_connection((host, int(port)), timeout=30)
        body = socket.create_connection((host, int(port)), timeout=30)
        body.sendall((head + "Content-Length: 1000\r\n\r\n").encode() + b'{"messages": [')
        # a body on its way takes no place in the queue (here of 0: only the request being answered)
        assert httpx.post(url + "/v1/chat/completions", json={**HI, "max_tokens": 2}, timeout=30).status_code == 200
        started = time.monotonic()
        dripped = 0
        for i, c in enumerate(head.encode()):  # a slowloris: a byte every 0.2 s, /health asked between
            try:
                drip.sendall(bytes([c]))
            except OSError:  # the server hung up on it
                break
            dripped += 1
            if i % 3 == 0:
                t = time.monotonic()
                assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
                assert time.monotonic() - t < 1.0
            time.sleep(0.2)
        assert dripped < 25, "a client that sent its headers a byte every 0.2 s was kept for 5 s"
        for sock in half_open:
            assert sock.recv(100).startswith(b"HTTP/1.1 408"), "a client that never sent its headers was kept"
            while sock.recv(100):  # and then the server hung up
                pass
            sock.close()
        drip.close()
        assert time.monotonic() - started < 15
        answer = body.recv(1000)
        assert answer.startswith(b"HTTP/1.1 408") and b"took longer than 1 s" in answer, answer
        body.close()
        assert httpx.post(url + "/v1/chat/completions", json={**HI, "max_tokens": 2}, timeout=30).status_code == 200


def test_max_reply_tokens_caps_what_a_request_may_ask():
    engine = ChatEngine(chat_model(), contextlib.nullcontext())
    client = TestClient(server.create_app(engine, "tiny", Sampling(temperature=0.0),
                                          limits=server.Limits(max_reply_tokens=5)))
    assert client.get("/v1/models").json()["data"][0]["max_tokens"] == 5
    r = client.post("/v1/chat/completions", json={**HI, "max_tokens": 6})
    assert r.status_code == 400 and "from 1 to 5" in r.text and "--max_reply_tokens" in r.text
    r = client.post("/v1/chat/completions", json={**HI, "max_tokens": None})  # the default is capped too
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 5
