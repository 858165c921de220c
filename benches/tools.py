"""bench.py --what=tools: what the calculator's forced tokens cost (issue 26). The same reply, token for token, decoded
with the calculator forcing each call's output in, and with tools off and the model writing those tokens itself:
a lone row (ChatEngine, as chat.py and the server) takes a call's output in one forward, batched rows
(sample_batch, as RL rollouts and batched evals) one token per step in place of their sample."""
import time

import torch

from benches.common import sync
from configurator import fail
from model import GPT, GPTConfig
from nash import tokenizer

SHAPES = {"demo": dict(n_layers=4, n_heads=4, d_model=128, d_ff=512, max_seq_len=128),
          "124m": dict(n_layers=12, n_heads=12, d_model=768, d_ff=3072, max_seq_len=1024)}
BATCH_ROWS = 8  # sample_batch rows: one prompt's samples, all calling at the same steps
# the reply, a cycle: a few words, then a call and its output; the words are distinct tokens, so after each token the
# next one is the model's likeliest (Scripted), and its output (123 * 456 = 56088) is what the calculator answers
WORDS = " seven small birds sing while a lazy fox jumps"
CALL = " 123 * 456"


class Scripted(torch.nn.Module):
    """A random GPT whose logits get a push towards the next token of the cycle after each token: the real model's
    forwards and cache, a reply known in advance, with or without the calculator."""

    def __init__(self, gpt, chain):
        super().__init__()
        self.gpt, self.config, self.chain = gpt, gpt.config, chain
        self.forwards = 0

    def next_logits(self, idx, cache):
        self.forwards += 1
        logits = self.gpt.next_logits(idx, cache)
        for row, last in enumerate(idx[:, -1].tolist()):
            logits[row, self.chain.get(last, self.chain["start"])] += 1e4
        return logits


def bench_tools(tmp, cfg):
    from nash.engine import ChatEngine, Sampling, sample_batch
    from nash.tools import calculate
    shape = SHAPES.get(cfg.chat_shape)
    if shape is None:
        fail(f"chat_shape={cfg.chat_shape!r} should be demo or 124m")
    enc = tokenizer.get_tokenizer()
    ids = tokenizer.special_ids(enc)
    cycle = [*enc.encode_ordinary(WORDS), ids["<|python_start|>"], *enc.encode_ordinary(CALL), ids["<|python_end|>"],
             ids["<|output_start|>"], *enc.encode_ordinary(calculate(CALL)), ids["<|output_end|>"]]
    if len(set(cycle)) != len(cycle):
        fail("the scripted reply must not repeat a token")  # (a bigram chain could not follow it)
    chain = {**dict(zip(cycle, cycle[1:] + cycle[:1])), "start": cycle[0]}
    torch.manual_seed(cfg.seed)
    gpt = GPT(GPTConfig(**shape, vocab_size=tokenizer.CHAT_VOCAB_SIZE, dropout=0.0)).to(cfg.device).eval()
    model = Scripted(gpt, chain)
    greedy = Sampling(temperature=0.0, top_k=None)
    engines = {tools: ChatEngine(model, cfg.ctx, enc, tools=tools) for tools in (True, False)}
    prompt = engines[True].render([{"role": "user", "content": "Keep going."}])
    greedy.max_new_tokens = shape["max_seq_len"] - len(prompt)  # the rest of the context

    def lone(tools):
        engine = engines[tools]
        list(engine.generate(prompt, Sampling(temperature=0.0, top_k=None, max_new_tokens=1)))  # the prompt cached:
        model.forwards = 0  # the reply is timed with one prompt token to feed, as in a conversation's next turn
        sync(cfg.device)
        t0 = time.perf_counter()
        reply = list(engine.generate(prompt, greedy))
        sync(cfg.device)
        return reply, time.perf_counter() - t0, model.forwards, engine.forced if tools else 0

    def batched(tools):
        model.forwards = 0
        sync(cfg.device)
        t0 = time.perf_counter()
        rows = sample_batch(model, [prompt], BATCH_ROWS, greedy, stop_ids=(), ctx=cfg.ctx, enc=enc, tools=tools)[0]
        sync(cfg.device)
        return rows[0].tokens, time.perf_counter() - t0, model.forwards, rows[0].forced  # (prefill forward included)

    rows = []
    for name, run in (("lone row (chat, server)", lone), (f"{BATCH_ROWS} rows (sample_batch)", batched)):
        run(True), run(False)  # warm-up
        best = {}
        for _ in range(cfg.repeats):
            for tools in (True, False):  # alternated: a shared machine's load hits both alike
                tokens, seconds, forwards, forced = run(tools)
                if tools not in best or seconds < best[tools][1]:
                    best[tools] = (tokens, seconds, forwards, forced)
        if best[True][0] != best[False][0]:
            fail("the reply with the calculator differs from the one without: the script is off")
        n = len(best[True][0]) * (BATCH_ROWS if run is batched else 1)
        rows.append(dict(decode=name, reply_tokens=len(best[True][0]), forced_per_reply=best[True][3],
                         tools_tokens_per_sec=n / best[True][1], plain_tokens_per_sec=n / best[False][1],
                         tools_forwards=best[True][2], plain_forwards=best[False][2]))
    return dict(num_params=gpt.num_params(), shape=cfg.chat_shape, rows=rows)


def report(r, table):
    """bench.py's table for these results."""
    table(f"tools: the calculator's forced tokens, {r['shape']} shape ({r['num_params'] / 1e6:.1f}M parameters), "
          "the same greedy reply with the calculator forcing its outputs and with the model writing them",
          ["decode", "reply tokens (forced)", "tokens/s: calculator / model writes", "forwards: calculator / model"],
          [[row["decode"], f"{row['reply_tokens']} ({row['forced_per_reply']})",
            f"{row['tools_tokens_per_sec']:.1f} / {row['plain_tokens_per_sec']:.1f}",
            f"{row['tools_forwards']} / {row['plain_forwards']}"] for row in r["rows"]])
