"""bench.py --what=chat: a conversation streamed through the server, the KV cache kept across turns against
prefilling every prompt (see bench.py)."""
import json
import time

import numpy as np
import torch

from nash import tokenizer
from configurator import fail
from model import GPT, GPTConfig


def bench_chat(tmp, cfg):
    """One conversation streamed through server.py, turn after turn, with the KV cache kept across turns and then
    with every prompt prefilled from scratch (engine.reuse=False): time to first token and tokens/s per reply."""
    import contextlib
    import socket
    import threading

    import httpx
    import uvicorn

    from nash import server
    from nash.engine import ChatEngine, Sampling
    shape = {"demo": dict(n_layers=4, n_heads=4, d_model=128, d_ff=512, max_seq_len=128),
             "124m": dict(n_layers=12, n_heads=12, d_model=768, d_ff=3072, max_seq_len=1024)}.get(cfg.chat_shape)
    if shape is None:
        fail(f"chat_shape={cfg.chat_shape!r} should be demo or 124m")
    torch.manual_seed(cfg.seed)
    model = GPT(GPTConfig(**shape, vocab_size=tokenizer.CHAT_VOCAB_SIZE, dropout=0.0)).to(cfg.device).eval()
    engine = ChatEngine(model, cfg.ctx)
    engine.stop_ids = set()  # a random model: let every reply run to its full length
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing".split()
    rng = np.random.default_rng(cfg.seed)
    users = [" ".join(rng.choice(words, cfg.chat_user_words)) for _ in range(cfg.chat_turns)]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = server.create_app(engine, "bench", Sampling(temperature=1.0, top_k=cfg.top_k or None, seed=cfg.seed))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    while not uv.started:
        time.sleep(0.05)

    def conversation(reuse):
        engine.reuse, messages, rows = reuse, [], []
        engine.reset()
        for text in users:
            messages.append({"role": "user", "content": text})
            prompt_tokens = len(engine.render(messages))
            if prompt_tokens + cfg.chat_reply_tokens > engine.max_seq_len:
                fail(f"{cfg.chat_turns} turns of {cfg.chat_user_words} words and {cfg.chat_reply_tokens}-token "
                     f"replies do not fit "
                     f"the context of {engine.max_seq_len}; lower chat_turns, chat_user_words or chat_reply_tokens")
            t0, stamps, reply = time.perf_counter(), [], ""
            with client.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={
                    "messages": messages, "stream": True, "max_tokens": cfg.chat_reply_tokens}) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                        if delta:
                            stamps.append(time.perf_counter())
                            reply += delta
            messages.append({"role": "assistant", "content": reply})
            rows.append(dict(prompt_tokens=prompt_tokens, ttft_ms=1000 * (stamps[0] - t0),
                             tokens_per_sec=(len(stamps) - 1) / max(stamps[-1] - stamps[0], 1e-9),
                             prefilled=engine.prefilled))
        return rows

    with contextlib.ExitStack() as stack:
        stack.callback(thread.join)
        stack.callback(setattr, uv, "should_exit", True)
        client = stack.enter_context(httpx.Client(timeout=600))
        conversation(True)  # warm-up
        runs = [(conversation(True), conversation(False)) for _ in range(cfg.repeats)]
    rows = []
    for turn in range(cfg.chat_turns):
        cache = [run[0][turn] for run in runs]
        full = [run[1][turn] for run in runs]
        rows.append(dict(turn=turn + 1, prompt_tokens=cache[0]["prompt_tokens"],
                         cache_prefilled=cache[0]["prefilled"], prefill_prefilled=full[0]["prefilled"],
                         cache_ttft_ms=min(r["ttft_ms"] for r in cache),
                         prefill_ttft_ms=min(r["ttft_ms"] for r in full),
                         cache_tokens_per_sec=max(r["tokens_per_sec"] for r in cache),
                         prefill_tokens_per_sec=max(r["tokens_per_sec"] for r in full)))
    return dict(num_params=model.num_params(), context=engine.max_seq_len, rows=rows)
