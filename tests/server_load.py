"""
A bounded load test of `python chat.py --serve`, on 127.0.0.1 only: it starts the server itself on a free loopback
port, runs each scenario for a bounded count and time, and prints what docs/server.md reports. Not a test pytest
collects (it takes a couple of minutes); run it by hand:

    python tests/server_load.py --init_from=out-chat-demo            # a chat run (or a checkpoint file)
    python tests/server_load.py                                       # a random model that never stops a reply

Scenarios: clients that hang up mid-reply (streamed and not: the tokens generated after they left), 100 concurrent
streams (with the default --max_queue, and with one large enough to take them all: 200s, 503s), and slow clients
(half-open connections that never finish their headers, a byte-a-second slowloris, bodies that never end). Through
all of them /health is asked every 0.1 s and its latency kept.
"""
import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
HOST = "127.0.0.1"  # loopback only: this script never talks to anything else


def never_stopping_checkpoint(path):
    """A random chat model (2 layers, 32 wide, context 1024) whose replies run as long as they are allowed."""
    import torch
    from model import GPT, GPTConfig
    from nash.checkpoint import save_checkpoint
    from nash.tokenizer import CHAT_VOCAB_SIZE, VOCAB_SIZE
    torch.manual_seed(0)
    config = GPTConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=1024, vocab_size=CHAT_VOCAB_SIZE,
                       dropout=0.0, tie_weights=False)
    model = GPT(config)
    with torch.no_grad():
        model.lm_head.weight[VOCAB_SIZE - 1:] = -model.lm_head.weight[:VOCAB_SIZE].abs().mean(0) * 50
    save_checkpoint(path, {"model": model.state_dict(), "model_config": asdict(config), "step": 0,
                           "settings": {"task": "chat"}, "metrics": None})


@contextlib.contextmanager
def serving(args, root=ROOT):
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "chat.py", "--serve", f"--host={HOST}", f"--port={port}", *args],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{HOST}:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


PROBE = """
import sys, time, httpx
with httpx.Client(timeout=10) as client:
    while True:
        t = time.monotonic()
        try:
            ok = client.get(sys.argv[1] + "/health").status_code == 200
        except httpx.HTTPError:
            ok = False
        print(time.monotonic() - t if ok else -1, flush=True)
        time.sleep(0.1)
"""


class HealthProbe:
    """Asks /health every 0.1 s from a process of its own (not among this one's client threads, which would delay
    it for their own reasons); the latencies (a failure: None)."""

    def __init__(self, url):
        self.url = url

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, self.url], stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.times = [float(line) for line in self.proc.communicate()[0].split()]
        self.failed = sum(t < 0 for t in self.times)

    def summary(self):
        ts = sorted(t for t in self.times if t >= 0)
        p99 = ts[min(len(ts) - 1, int(0.99 * len(ts)))]
        return (f"/health: {len(self.times)} asked, median {statistics.median(ts) * 1000:.0f} ms, p99 "
                f"{p99 * 1000:.0f} ms, max {ts[-1] * 1000:.0f} ms, failed {self.failed}")


def health(url):
    return httpx.get(url + "/health", timeout=10).json()


def idle(url, seconds=120):
    for _ in range(int(seconds / 0.1)):
        h = health(url)
        if not h["busy"] and not h.get("admitted"):
            return h
        time.sleep(0.1)
    raise SystemExit("the server stayed busy")


ASK = {"messages": [{"role": "user", "content": "talk"}]}


def disconnects(url, count=10):
    """Clients that hang up after 0.5 s of a reply of up to 1000 tokens, half streamed; tokens generated after."""
    after, before_all, start = [], [], health(url)["tokens_generated"]
    for i in range(count):
        stream = i % 2 == 1
        with httpx.Client(timeout=0.5 if not stream else 30) as client:
            if stream:
                with client.stream("POST", url + "/v1/chat/completions",
                                   json={**ASK, "max_tokens": 1000, "stream": True}) as r:
                    end = time.monotonic() + 0.5
                    for _ in r.iter_lines():
                        if time.monotonic() > end:
                            break
                    before = [health(url)["tokens_generated"]]  # (read before hanging up: an upper bound)
            else:  # a raw socket: the request sent, 0.5 s, /health read, then the client hangs up
                port, data = int(url.rsplit(":", 1)[1]), json.dumps({**ASK, "max_tokens": 1000}).encode()
                with socket.create_connection((HOST, port)) as sock:
                    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: "
                                 b"application/json\r\nContent-Length: %d\r\n\r\n%s"
                                 % (HOST.encode(), port, len(data), data))
                    time.sleep(0.5)
                    before = [health(url)["tokens_generated"]]
        h = idle(url)
        after.append(h["tokens_generated"] - before[0])
        before_all.append(before[0] - start)
        start = h["tokens_generated"]
    return after, before_all


def concurrent_streams(url, clients=100, max_tokens=50):
    """clients streams started at once; their statuses and how long the accepted ones took."""
    statuses, lock, go = [], threading.Lock(), threading.Event()

    def one():
        go.wait()
        try:
            with httpx.Client(timeout=600) as client:
                with client.stream("POST", url + "/v1/chat/completions",
                                   json={**ASK, "max_tokens": max_tokens, "stream": True}) as r:
                    for _ in r.iter_lines():
                        pass
                    status = r.status_code, r.headers.get("retry-after")
        except httpx.HTTPError as e:
            status = type(e).__name__, None
        with lock:
            statuses.append(status)
    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    start = time.monotonic()
    go.set()
    for t in threads:
        t.join()
    counts = {}
    for s, _ in statuses:
        counts[s] = counts.get(s, 0) + 1
    retry = sorted({int(r) for s, r in statuses if r})
    return counts, retry, time.monotonic() - start


def slow_clients(url, half_open=300, slowloris=20, bodies=20, seconds=35):
    """Connections that never finish their headers, that drip them a byte a second, and bodies that never end;
    how many the server closed within `seconds`."""
    port = int(url.rsplit(":", 1)[1])
    head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
    socks = {"half-open": [], "slowloris": [], "slow body": []}
    for _ in range(half_open):
        s = socket.create_connection((HOST, port))
        s.sendall(head.encode())
        socks["half-open"].append(s)
    for _ in range(bodies):
        s = socket.create_connection((HOST, port))
        s.sendall((head + "Content-Length: 100000\r\n\r\n").encode() + b'{"messages": [')
        socks["slow body"].append(s)
    for _ in range(slowloris):
        socks["slowloris"].append(socket.create_connection((HOST, port)))
    start, data = time.monotonic(), (head * 100).encode()
    closed = {kind: 0 for kind in socks}
    alive = {kind: list(ss) for kind, ss in socks.items()}
    i = 0
    while time.monotonic() - start < seconds:
        for s in list(alive["slowloris"]):
            try:
                s.sendall(data[i:i + 1])
            except OSError:
                alive["slowloris"].remove(s)
                closed["slowloris"] += 1
        i += 1
        for kind in ("half-open", "slow body"):
            for s in list(alive[kind]):
                s.setblocking(False)
                try:
                    if s.recv(1000) is not None:
                        alive[kind].remove(s)
                        closed[kind] += 1
                except BlockingIOError:
                    pass
                except OSError:
                    alive[kind].remove(s)
                    closed[kind] += 1
        time.sleep(1.0)
    for ss in socks.values():
        for s in ss:
            s.close()
    return {kind: f"{closed[kind]}/{len(socks[kind])} closed by the server within {seconds} s" for kind in socks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init_from", default="", help="a chat run or checkpoint; default: a random model")
    parser.add_argument("--root", default=ROOT, help="the checkout whose chat.py to serve (an older one: a baseline)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.init_from
        if not ckpt:
            ckpt = os.path.join(tmp, "never_stops.pt")
            never_stopping_checkpoint(ckpt)
        model = [f"--init_from={ckpt}", "--temperature=0"]
        with serving(model, args.root) as url:
            with HealthProbe(url) as probe:
                after, before = disconnects(url)
            print(f"disconnects: {len(after)} clients hung up mid-reply (streamed and not); tokens generated before "
                  f"{before}, after (an upper bound: read before hanging up) {after}; {probe.summary()}", flush=True)
            with HealthProbe(url) as probe:
                counts, retry, took = concurrent_streams(url)
            print(f"100 concurrent streams, --max_queue default: {counts}, Retry-After {retry}, {took:.1f} s; "
                  f"{probe.summary()}", flush=True)
            idle(url)
            with HealthProbe(url) as probe:
                closed = slow_clients(url)
            print(f"slow clients (the defaults: --header_timeout=10, --body_timeout=30): {closed}; {probe.summary()}",
                  flush=True)
            print(f"server counters: {json.dumps(idle(url))}", flush=True)
        with open(os.path.join(args.root, "chat.py")) as f:
            if "max_queue" not in f.read():
                return  # (a baseline from before --max_queue)
        with serving([*model, "--max_queue=128"], args.root) as url:
            with HealthProbe(url) as probe:
                counts, retry, took = concurrent_streams(url)
            print(f"100 concurrent streams, --max_queue=128: {counts}, {took:.1f} s; {probe.summary()}", flush=True)


if __name__ == "__main__":
    main()
