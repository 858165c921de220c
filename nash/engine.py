"""
The conversation engine behind chat.py and server.py: a KV cache that remembers which tokens it holds.

Every reply starts from a prompt: the whole conversation rendered by tokenizer.render_conversation, ending
in <|assistant_start|>. The engine keeps the keys/values of the tokens it has already processed, finds how
much of the new prompt it already holds (the longest common prefix) and runs the model on the rest only.
In a conversation each prompt extends the previous one (previous prompt + the reply + the new user turn),
so only the new turn is prefilled; a prompt that diverges (a new chat, an edited history, old turns dropped
to fit the context) rewinds the cache to where they agree. This is exact, not an approximation: positions
are absolute and nothing before the common prefix changes, so the logits are those of a full forward pass.

With rolling_cache=True (RoPE models) the engine uses StreamingLLM's rolling cache (nash/kv_cache.py's RollingKVCache) instead: the
sinks (or the first 4 tokens) plus the most recent tokens, so a conversation and a single reply go on past
max_seq_len at a constant cost per token; nothing is dropped and no reply is cut at the context's end. Within
max_seq_len it is the exact cache (same logits). Past it, it approximates, and prefix reuse meets eviction:
extending what the cache holds is fine (the usual case, a new turn), but once a token has been evicted the
cache cannot rewind: the entries still in the window were computed while the evicted tokens were visible,
and the state the cache had at an earlier position is gone. A prompt that diverges from the cached tokens
(an edited history, a new chat, a regenerated reply) is then prefilled from scratch, the part past the
context one token at a time, a cost proportional to the whole prompt. That refill is not a further
approximation: the rolling state is a function of the tokens fed, so it lands where feeding them one by one
from the start would have.

What it builds on: nash/kv_cache.py's KVCache (rewinding is setting pos back; the buffers are overwritten) and
model.py's GPT.next_logits (a forward that continues a cache). Here live the project's one sampler (sample_next),
one decode loop (decode), one UTF-8 decoder (Decoder) and one stop-string matcher (StopStrings): sample.py,
evaluate.py, the report, the benches (stream, sample_batch), chat.py and the server (ChatEngine), RL and the
verifier (sample_batch) all decode through them. One engine serves one conversation at a time; server.py runs it
in a single worker thread.

Tool use (issue 26): a model with rows for the tool tokens may call the calculator mid-reply; tools.ToolState
follows each sampled token and says which tokens to force in (a call's output), and generate() yields those too,
so every caller (chat.py, the server, evaluate.py, RL rollouts) sees the whole reply, calls and outputs included,
and gets tool use from here. tools=False turns it off: the tool tokens are then sampled and fed like any other.
"""
import codecs
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from nash.kv_cache import KVCache, RollingKVCache
from nash.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, TOOL_TOKENS, get_tokenizer, render_conversation, special_ids
from nash.tools import ToolState

PREFILL_CHUNK = 512  # prompt tokens per forward while prefilling (ChatEngine.prefill_chunk)


@dataclass
class Sampling:
    temperature: float = 0.6  # 0 = greedy
    top_k: int | None = 50  # None = off
    top_p: float | None = None  # None = off
    max_new_tokens: int = 256
    seed: int | None = None  # None = not reproducible


@dataclass
class Completion:
    tokens: list = field(default_factory=list)  # the sampled ids, the stop token left out
    finish_reason: str | None = None  # "stop" (a stop token or string) | "length" (max_new_tokens or the context)
    text: str | None = None  # decoded when sample_batch is given enc, cut before the first stop string
    forced: int = 0  # how many of tokens the calculator forced in (its outputs), not sampled
    forced_at: list = field(default_factory=list)  # their indices in tokens (an RL loss must not train on them)


def tools_available(model, enc):
    """Whether model has rows for enc's tool tokens, so its replies may call the calculator (chat models from before
    the tool tokens have six chat tokens: they talk, without tools)."""
    ids = special_ids(enc)
    return all(ids.get(name, 1 << 62) < model.config.vocab_size for name in TOOL_TOKENS)


def row_generators(seed, n_prompts, num_samples, device):
    """One torch.Generator per (prompt i, sample j), seeded from (seed, i, j) through numpy's SeedSequence: a
    row's draws depend on its own seed only, never on which rows share its batch or when they finish."""
    if seed is None:
        return None
    return [torch.Generator(device=device).manual_seed(int(np.random.SeedSequence([seed, i, j]).generate_state(1)[0]))
            for i in range(n_prompts) for j in range(num_samples)]


MIN_TEMPERATURE = 1e-5


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from logits (B, V): greedy when temperature == 0, else sample from
    softmax(logits / temperature) restricted to the top_k tokens and then to the nucleus top_p. generator: one
    torch.Generator, or a list of one per row."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    # below MIN_TEMPERATURE the distribution is the argmax to float precision, and logits / 1e-300 overflow to inf
    # (softmax then gives NaN): sample at the floor instead, which keeps the same token
    logits = logits.float() / max(temperature, MIN_TEMPERATURE)
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # keep the smallest set of most likely tokens whose probabilities add up to >= top_p:
        # drop a token when the ones ranked above it already reach top_p (the first one always stays)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        drop[:, 0] = False  # (the rounding of cumsum - probs can leave ~1e-9 before the first: top_p=1e-50 kept none)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return draw(F.softmax(logits, dim=-1), generator)


def draw(probs, generator=None):
    """One token per row of probs (B, V), by inverting its CDF at a uniform draw: the first token whose cumulative
    probability exceeds u * total (a token of probability 0 is never drawn). Why not torch.multinomial: on CPU it
    draws V exponentials per row (its Gumbel-style race), ~1.5 ms a row at GPT-2's vocabulary, which was 55% of an
    RL step's time (bench: decoding, RL rollouts); one uniform and a cumsum cost ~0.1 ms. The cumsum's drift does
    not matter: token i is drawn on [cdf[i-1], cdf[i]), whose width is p[i] to within one float32 rounding (~6e-8),
    and exactly 0 when p[i] is. generator: one torch.Generator, or a list of one per row (a row's draw then depends
    on its own generator only)."""
    cdf = probs.float().cumsum(dim=-1)
    if isinstance(generator, (list, tuple)):
        u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in generator])
    else:
        u = torch.rand(probs.size(0), generator=generator, device=probs.device)
    picked = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True)
    return picked.clamp(max=probs.size(-1) - 1).squeeze(-1)


def prefill(model, cache, tokens, rolling, chunk=PREFILL_CHUNK, should_stop=None, fed=None):
    """Run tokens through the model after what the cache holds; the logits (1, V) after the last one, or None when
    should_stop() turned true between two chunks (its client left: a 200k-token prompt must not keep the worker).
    Chunks of `chunk` tokens; the rolling cache takes what fits, then one at a time. fed(chunk) after each."""
    device = next(model.parameters()).device
    start = 0  # (an index, not slices of what is left: a rolling refill goes a token at a time)
    while start < len(tokens):
        n = min(cache.room(model.config.attn_sinks) if rolling else len(tokens) - start, chunk)
        piece = tokens[start:start + n]
        logits = model.next_logits(torch.tensor([piece], dtype=torch.long, device=device), cache)
        start += n
        if fed is not None:
            fed(piece)
        if start < len(tokens) and should_stop is not None and should_stop():
            return None
    return logits


def decode(model, cache, logits, completions, budgets, sampling, stop_ids, generators=None, stop_strings=(),
           enc=None, should_stop=None, ctx=None, tools=None):
    """The decode loop of every sampler (sample_batch, ChatEngine): cache row b continues completions[b], whose
    next token comes from logits[b]. One forward per step over the rows still live; a row stops on its own, at a
    stop id, a stop string (decoded with enc), after budgets[b] tokens; a finished row leaves the batch
    (cache.select). Yields (b, token) for each token appended; should_stop() (checked before each step) ends
    every row where it is, with finish_reason None. The cache is left holding what was fed.
    tools: one tools.ToolState per row (a stop id still ends a row, and so does any special token outside a call):
    a call's output is forced into its row one token per step, in place of the row's sample, so every row still
    takes one token per forward (a row left alone takes it whole, in one forward)."""
    pending = [[] for _ in completions]  # per row, the forced tokens still to go in
    live = list(range(len(completions)))
    decoders = [Decoder(enc) for _ in completions] if stop_strings else None
    stops = [StopStrings(list(stop_strings)) for _ in completions] if stop_strings else None
    while True:
        if should_stop is not None and should_stop():
            return
        gens = [generators[b] for b in live] if generators else None
        with torch.no_grad():  # per step, not around the loop: a generator must not leak grad mode to its reader
            tokens = sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, gens).tolist()
        keep = []  # indices into live of the rows that go on
        for k, (b, token) in enumerate(zip(live, tokens)):
            c = completions[b]
            if pending[b]:  # the calculator's output, not the model's sample
                token = tokens[k] = pending[b].pop(0)
                c.forced += 1
                c.forced_at.append(len(c.tokens))
            elif token in stop_ids:
                c.finish_reason = "stop"
                continue
            elif tools is not None:
                pending[b] = tools[b].step(token)
                if pending[b] is None:  # a special token that is not a call's
                    c.finish_reason = "stop"
                    continue
            c.tokens.append(token)
            yield b, token
            if decoders:  # a stop string may span tokens: the matcher carries what the reply's end has matched
                piece = decoders[b](token)
                c.text += piece
                if stops[b].feed(piece) is not None:
                    c.finish_reason = "stop"
                    continue
            if len(c.tokens) >= budgets[b]:
                c.finish_reason = "length"
                continue
            keep.append(k)
        if not keep:
            return
        if len(keep) < len(live):  # drop the finished rows: their compute is saved from here on
            cache.select(torch.tensor(keep, device=logits.device))
        rows = [[tokens[k]] for k in keep]
        if len(keep) == 1 and pending[live[keep[0]]]:  # a row alone: its call's output goes in whole, in one forward
            b = live[keep[0]]
            c, forced, pending[b] = completions[b], pending[b][:budgets[b] - len(completions[b].tokens)], []
            for token in forced:
                c.forced_at.append(len(c.tokens))
                c.tokens.append(token)
                c.forced += 1
                if decoders:
                    piece = decoders[b](token)
                    c.text += piece
                    stops[b].feed(piece)  # (a calculator's output does not end a reply, but later text may)
                yield b, token
            if len(c.tokens) >= budgets[b]:
                c.finish_reason = "length"
                return
            rows[0] += forced
        feed = torch.tensor(rows, dtype=torch.long, device=logits.device)
        live = [live[k] for k in keep]
        with torch.no_grad(), ctx or nullcontext():
            logits = model.next_logits(feed, cache)


def stream(model, prompt, sampling, stop_ids=(), generators=None, rolling_cache=False, keep=None, ctx=None,
           completion=None):
    """Yield one completion of prompt (token ids) token by token: the decode loop for one row, as sample.py,
    evaluate.py's SFT exact match, the report's samples and the benches take it. Ends at a stop id (not yielded),
    after sampling.max_new_tokens, or at the model's context with the exact cache (a prompt of max_seq_len tokens
    or more keeps its last max_seq_len - 1); rolling_cache=True (RoPE) goes on past it with StreamingLLM's cache,
    `keep` entries never evicted (RollingKVCache.for_config). generators: [a torch.Generator], whose state carries
    on from call to call; None: sampling.seed's (row_generators). completion: a Completion to fill (its
    finish_reason says how it ended). The model is in eval mode while it runs."""
    config = model.config
    prompt = list(prompt) if rolling_cache else list(prompt)[-(config.max_seq_len - 1):]
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token")
    if sampling.max_new_tokens < 1:
        return
    if rolling_cache:
        cache = RollingKVCache.for_config(config, keep)
    else:
        cache = KVCache(config.n_layers, config.attn_sinks + config.max_seq_len)
    budget = sampling.max_new_tokens if rolling_cache else min(sampling.max_new_tokens, config.max_seq_len - len(prompt))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), ctx or nullcontext():
            logits = prefill(model, cache, prompt, rolling_cache)
        generators = generators or row_generators(sampling.seed, 1, 1, logits.device)
        row = completion if completion is not None else Completion()
        for _, token in decode(model, cache, logits, [row], [budget], sampling, set(stop_ids), generators, ctx=ctx):
            yield token
    finally:
        model.train(was_training)


@torch.no_grad()
def sample_batch(model, prompts, num_samples, sampling, stop_ids, ctx=None, stop_strings=(), enc=None,
                 should_stop=None, rolling_cache=False, batch_size=64, tools=False):
    """num_samples completions of each prompt (token-id lists, any lengths): result[i][j] is prompt i's j-th.

    Each distinct prompt is prefilled once at batch 1 (so its keys/values are exactly those of a one-at-a-time
    run), its cache copied to num_samples rows, and the rows of several prompts right-aligned in one cache
    (KVCache.stack: left padding, masked, each row at its own positions); then one forward per step decodes all
    live rows (decode). Up to batch_size rows decode together (at least one prompt's samples).
    Reproducible: with sampling.seed, row (i, j) draws from its own generator seeded from (seed, i, j)
    (row_generators), so the output depends neither on batch_size nor on the other prompts; greedy rows never
    depend on the batch either. A row ends at a stop id (left out), a stop string (text is cut before it), after
    max_new_tokens, or at the context's end (with the exact cache; rolling_cache=True, for RoPE models, goes on
    past it, StreamingLLM's approximation there, and decodes one prompt's samples at a time: left padding would
    make its kept first entries padding). ValueError for an empty prompt or one that fills the context.
    tools=True (needs enc, and a model with rows for the tool tokens): each row calls the calculator as ChatEngine's
    reply does (a tools.ToolState per row, decode forces the outputs; Completion.forced counts them), and any
    special token but a call's own ends a row, as in a chat reply; the outputs are in tokens and text."""
    config, device = model.config, next(model.parameters()).device
    S, sinks = config.max_seq_len, config.attn_sinks
    for p in prompts:
        if not p or (len(p) >= S and not rolling_cache):
            raise ValueError(f"a prompt has {len(p)} tokens; it must be 1 to {S - 1} (the model's context is {S})")
    if stop_strings and enc is None:
        raise ValueError("stop_strings need enc, the tokenizer that decodes the completions")
    if tools and enc is None:
        raise ValueError("tools need enc, the tokenizer that encodes the calculator's outputs")
    stop_ids = set(stop_ids)
    if tools:
        ids = special_ids(enc)
        if any(ids[name] >= config.vocab_size for name in TOOL_TOKENS):
            raise ValueError(f"the model's vocabulary ({config.vocab_size} tokens) has no rows for the tool tokens")
        stop_ids -= {ids["<|python_start|>"], ids["<|python_end|>"]}  # a call's own tokens go to the calculator
    was_training = model.training
    model.eval()
    gens = row_generators(sampling.seed, len(prompts), num_samples, device)
    results = [[Completion(text="" if enc is not None else None) for _ in range(num_samples)] for _ in prompts]
    per_group = 1 if rolling_cache else max(1, batch_size // num_samples)
    try:
        with ctx or nullcontext():
            for start in range(0, len(prompts), per_group):
                group = range(start, min(start + per_group, len(prompts)))
                caches, first = {}, {}  # each distinct prompt once
                for i in group:
                    key = tuple(prompts[i])
                    if key not in caches:
                        if rolling_cache:
                            caches[key] = RollingKVCache.for_config(config)
                        else:
                            caches[key] = KVCache(config.n_layers, sinks + len(key))
                        first[key] = prefill(model, caches[key], list(key), rolling_cache)
                budgets = [sampling.max_new_tokens if rolling_cache else min(sampling.max_new_tokens, S - len(prompts[i]))
                           for i in group for _ in range(num_samples)]
                if rolling_cache:
                    cache = caches[tuple(prompts[start])]
                    cache.expand(num_samples)
                else:
                    end = max(c.pos for c in caches.values())
                    shortest = min(len(prompts[i]) for i in group)
                    cache = KVCache.stack([caches[tuple(prompts[i])] for i in group], num_samples,
                                          end + min(sampling.max_new_tokens, S - shortest))
                logits = torch.cat([first[tuple(prompts[i])] for i in group]).repeat_interleave(num_samples, 0)
                rows = [results[i][j] for i in group for j in range(num_samples)]
                row_gens = gens[start * num_samples:(group.stop) * num_samples] if gens else None
                states = [ToolState(enc, ids) for _ in rows] if tools else None
                for _ in decode(model, cache, logits, rows, budgets, sampling, stop_ids, row_gens, stop_strings, enc,
                                should_stop, ctx, states):
                    pass
    finally:
        model.train(was_training)
    for c in (c for row in results for c in row):
        if c.text is not None:
            c.text = Decoder.text(enc, c.tokens)
            c.text = c.text[:stop_cut(c.text, stop_strings)]
    return results


def stop_cut(text, stop_strings):
    """Where a reply that decode ended at a stop string ends: before the first one in it (len(text): none is).
    StopStrings finds, a piece at a time, the token that completes one; the whole of that token's text is then cut
    here, before whichever stop string starts first (one token may complete two)."""
    return min([text.index(s) for s in stop_strings if s in text], default=len(text))


class ChatEngine:

    def __init__(self, model, ctx, enc=None, rolling_cache=False, tools=True):
        self.model, self.ctx = model, ctx  # ctx: the autocast context (common.inference_setup)
        self.enc = enc or get_tokenizer()
        try:
            self.ids = special_ids(self.enc)
        except KeyError as e:
            raise ValueError(f"{e.args[0]}, so it cannot render conversations") from None
        top = max(self.ids[name] for name in SPECIAL_TOKENS if name not in TOOL_TOKENS)
        if model.config.vocab_size <= top:
            raise ValueError(f"the model's vocabulary ({model.config.vocab_size} tokens) has no room for the chat "
                             f"tokens (ids up to {top}): it was not fine-tuned for chat; train it with objective=chat")
        # the calculator (tools.py), for a model with rows for the tool tokens (older chat models have six tokens)
        self.tools = tools and tools_available(model, self.enc)
        self.stop_ids = {self.ids[name] for name in SPECIAL_TOKENS if name not in TOOL_TOKENS}  # end a reply
        config = model.config
        self.max_seq_len, self.sinks = config.max_seq_len, config.attn_sinks  # cache positions count the sinks
        self.device = next(model.parameters()).device
        self.rolling = rolling_cache  # no context limit: see the top of the file
        if rolling_cache:
            self.cache = RollingKVCache.for_config(config)  # ValueError for learned positions
        else:
            self.cache = KVCache(config.n_layers, self.sinks + self.max_seq_len)
        self.cached = []  # the token ids whose keys/values the cache holds, in order
        self.reuse = True  # False: prefill every prompt from scratch (bench.py measures the difference)
        # Prompts are fed in chunks, and should_stop is asked between them, so a long prompt (or a rolling refill,
        # one token at a time) does not hold the engine after its client left; a chunk also bounds the attention
        # scores a forward holds (chunk x context). 512 tokens keep a forward's overhead small next to its work.
        self.prefill_chunk = PREFILL_CHUNK

    def render(self, messages):
        """The prompt that asks for the next assistant reply to messages."""
        return render_conversation(self.enc, messages, for_reply=True)[0]

    def reset(self):
        self.cache.reset()
        self.cached = []

    def _feed(self, tokens, should_stop=None):
        """Run tokens through the model after what the cache holds; the logits after the last one, or None when
        should_stop() turned true between two chunks (the cache then holds the chunks fed, a prefix to reuse)."""
        try:
            with torch.no_grad(), self.ctx:
                logits = prefill(self.model, self.cache, tokens, self.rolling, self.prefill_chunk, should_stop,
                                 fed=self.cached.extend)
        except BaseException:  # interrupted mid-forward: the cache is in an unknown state, so forget it
            self.reset()
            raise
        return logits

    def generate(self, prompt, sampling, should_stop=None, stop_strings=()):
        """Yield the reply's token ids one by one (the stop token is not yielded). prompt: token ids. Stops at a
        special token, after sampling.max_new_tokens, at the end of the context (not with the rolling cache), after
        the token that completes one of stop_strings (stop_cut says where the text ends), or
        when should_stop() is true (asked between prefill chunks and before each token; finish_reason "stopped").
        After it, the cache holds the prompt and the reply (or the part of them fed before stopping)."""
        if not prompt or (len(prompt) >= self.max_seq_len and not self.rolling):
            raise ValueError(f"the prompt has {len(prompt)} tokens; it must be 1 to {self.max_seq_len - 1} "
                             f"(the model's context is {self.max_seq_len})")
        self.model.eval()
        keep = 0
        if self.reuse:  # the longest common prefix, leaving at least one token to feed for fresh logits
            limit = min(len(self.cached), len(prompt) - 1)
            while keep < limit and self.cached[keep] == prompt[keep]:
                keep += 1
        if self.rolling and self.cache.evicted and keep < len(self.cached):
            keep = 0  # rewinding into an evicted past is impossible: prefill from scratch (top of the file)
        if keep:  # rewind: later positions get overwritten
            self.cache.rewind(self.sinks + keep)
        else:  # a fresh sequence (the sinks go in again)
            self.cache.reset()
        self.cached = self.cached[:keep]
        self.prefilled = len(prompt) - keep  # how many prompt tokens this reply had to compute (bench, tests)
        logits = self._feed(prompt[keep:], should_stop)
        if logits is None:  # stopped while prefilling
            self.finish_reason = "stopped"
            return
        budget = sampling.max_new_tokens if self.rolling else min(sampling.max_new_tokens, self.max_seq_len - len(prompt))
        reply = Completion(text="" if stop_strings else None)
        self.finish_reason = None  # should_stop: the reply ends where it is
        try:
            for _, token in decode(self.model, self.cache, logits, [reply], [budget], sampling, self.stop_ids,
                                   row_generators(sampling.seed, 1, 1, self.device), stop_strings, self.enc,
                                   should_stop=should_stop,
                                   ctx=self.ctx, tools=[ToolState(self.enc, self.ids)] if self.tools else None):
                yield token
        except GeneratorExit:  # the consumer stopped reading (at a yield: the cache is consistent)
            raise
        except BaseException:  # interrupted mid-forward: the cache is in an unknown state, so forget it
            self.reset()
            raise
        finally:
            if self.cached or self.cache.pos:
                fed = (self.cache.seen if self.rolling else self.cache.pos) - self.sinks  # tokens the cache holds
                self.cached = (prompt + reply.tokens)[:fed]
        self.forced = reply.forced  # how many tokens the calculator forced into this reply (bench, tests)
        self.finish_reason = reply.finish_reason or "stopped"  # None: should_stop() ended it
        if reply.finish_reason == "length" and (self.rolling or len(self.cached) + 1 < self.max_seq_len):
            self._feed(reply.tokens[-1:])  # the next turn starts with the reply: its last token goes in now


class Decoder:
    """Token ids -> text pieces, holding back a character whose UTF-8 bytes are split across tokens."""

    def __init__(self, enc, shown=None):
        self.enc, self.shown = enc, shown or {}  # shown: {token id: the text to show instead} (tools.TOOL_DISPLAY)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token):
        if token in self.shown:
            return self.utf8.decode(b"", final=True) + self.shown[token]
        return self.utf8.decode(self.enc.decode_single_token_bytes(token))

    def flush(self):
        return self.utf8.decode(b"", final=True)

    @staticmethod
    def text(enc, tokens):
        """The whole text of tokens, as the pieces of a Decoder add up to."""
        decoder = Decoder(enc)
        return "".join(map(decoder, tokens)) + decoder.flush()


class StopStrings:
    """Finds the first stop string to appear in a reply fed piece by piece, in time linear in the reply and the stop
    strings (Knuth-Morris-Pratt): for each stop string, the length of its longest prefix that the reply ends with,
    updated a character at a time. That length is also how much of the reply's end to hold back from the stream."""

    def __init__(self, stops):
        self.stops, self.seen = stops, 0
        self.matched = [0] * len(stops)
        self.fallback = [self.failure(s) for s in stops]

    @staticmethod
    def failure(s):
        """fallback[i]: the length of the longest proper prefix of s[:i + 1] that is also a suffix of it."""
        fallback, k = [0] * len(s), 0
        for i in range(1, len(s)):
            while k and s[i] != s[k]:
                k = fallback[k - 1]
            if s[i] == s[k]:
                k += 1
            fallback[i] = k
        return fallback

    def feed(self, piece):
        """Where the reply ends if piece completes a stop string: before the first one to complete (the longest of
        those completing at the same character); else None."""
        for i, c in enumerate(piece):
            for j, s in enumerate(self.stops):
                k = self.matched[j]
                while k and c != s[k]:
                    k = self.fallback[j][k - 1]
                self.matched[j] = k + 1 if c == s[k] else 0
            done = [len(s) for s, k in zip(self.stops, self.matched) if k == len(s)]
            if done:
                return self.seen + i + 1 - max(done)
        self.seen += len(piece)
        return None

    @property
    def held(self):
        """How many characters at the reply's end may be the start of a stop string."""
        return max(self.matched, default=0)


class Conversation:
    """A conversation for chat.py: the messages so far, fitted into the model's context turn by turn (or, with the
    engine's rolling cache, kept whole: the cache forgets the middle instead).

    Alongside the messages it keeps their tokens, each reply as the model generated it: re-encoding a reply's
    text can split it differently (or not at all, for bytes that are not UTF-8), which would make the next
    prompt diverge from the cache inside that reply, a rewind, or with a rolling cache that has evicted, a
    prefill of the whole conversation. The prompt is render_conversation's, message by message."""

    def __init__(self, engine, system="", shown=None):
        self.engine, self.system, self.shown = engine, system, shown  # shown: as Decoder's
        self.clear()

    def clear(self):
        self.messages = [{"role": "system", "content": self.system}] if self.system else []
        self.pieces = [self.piece(m) for m in self.messages]  # each message's tokens in the prompt

    def piece(self, message, reply=None):
        """A message's tokens, as render_conversation lays them out; reply: an assistant's generated ids."""
        if reply is None:
            return render_conversation(self.engine.enc, [message])[0][1:]  # without the leading <|endoftext|>
        ids = self.engine.ids
        return [ids["<|assistant_start|>"]] + reply + [ids["<|assistant_end|>"]]

    def prompt(self, pieces):
        ids = self.engine.ids
        return [ids["<|endoftext|>"]] + [t for p in pieces for t in p] + [ids["<|assistant_start|>"]]

    def fit(self, reserve):
        """Drop the oldest turns (never the system prompt) until the prompt leaves `reserve` positions for
        the reply; returns how many messages were dropped. ValueError if the last message alone is too long."""
        pieces = list(self.pieces)  # committed only if it fits: a refused message changes nothing
        first = 1 if self.messages[0]["role"] == "system" else 0
        while len(self.prompt(pieces)) + reserve > self.engine.max_seq_len:
            if len(pieces) - first <= 1:  # only the new user message is left
                raise ValueError(f"the message is too long for the model's context of {self.engine.max_seq_len} "
                                 f"tokens ({len(self.prompt(pieces))} with the chat markup)")
            del pieces[first]
        dropped = len(self.pieces) - len(pieces)
        del self.messages[first:first + dropped], self.pieces[first:first + dropped]
        return dropped

    def reply(self, text, sampling):
        """Add the user's message and yield the reply as text pieces; the reply (cut short or not, e.g. by
        Ctrl-C) joins the conversation when the generator closes."""
        self.messages.append({"role": "user", "content": text})
        self.pieces.append(self.piece(self.messages[-1]))
        reserve = min(sampling.max_new_tokens, self.engine.max_seq_len // 2)  # room for (most of) a reply
        try:
            self.dropped = 0 if self.engine.rolling else self.fit(reserve)
        except ValueError:
            self.messages.pop(), self.pieces.pop()
            raise
        decoder, text, tokens = Decoder(self.engine.enc, self.shown), [], []
        try:
            for token in self.engine.generate(self.prompt(self.pieces), sampling):
                tokens.append(token)
                text.append(decoder(token))
                yield text[-1]
            text.append(decoder.flush())
            yield text[-1]
        finally:
            self.messages.append({"role": "assistant", "content": "".join(text)})
            self.pieces.append(self.piece(self.messages[-1], tokens))


__all__ = ["ChatEngine", "Completion", "Conversation", "Decoder", "Sampling", "StopStrings", "CHAT_TOKENS",
           "sample_batch", "sample_next", "stop_cut", "stream"]
