"""`python chat.py --serve` on a free 127.0.0.1 port, as users run it: the official openai client (streamed and not),
raw HTTP (httpx) for bad requests, a client that disconnects mid-stream, and concurrent requests served one at a
time in arrival order without corrupting each other. Greedy replies are checked against full forward passes."""
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict

import httpx
import pytest
import torch

from nash.checkpoint import load_model, save_checkpoint
from conftest import ROOT
from nash.engine import ChatEngine, Decoder
from model import GPT, GPTConfig
from test_chat import greedy_reference
from nash.tokenizer import CHAT_VOCAB_SIZE, VOCAB_SIZE


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(*args):
    """chat.py --serve in a subprocess; yields its base URL once /health answers, stops it afterwards."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "chat.py", "--serve", f"--port={port}", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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
        with pytest.raises(BadRequestError, match="role"):
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
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": 3}, 400, "temperature", "between"),
    ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, 400, "stream", "true or false"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n", "n=1"),
    ({"messages": [{"role": "user", "content": "word " * 40}]}, 400, "messages", "context is 32"),
]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(tiny_chat_run):
    with serving(f"--out_dir={tiny_chat_run}") as url:
        for body, status, param, message in BAD_REQUESTS:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
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
