"""
The conversation engine behind chat.py and server.py: a KV cache that remembers which tokens it holds.

Every reply starts from a prompt: the whole conversation rendered by tokenizer.render_conversation, ending
in <|assistant_start|>. The engine keeps the keys/values of the tokens it has already processed, finds how
much of the new prompt it already holds (the longest common prefix) and runs the model on the rest only.
In a conversation each prompt extends the previous one (previous prompt + the reply + the new user turn),
so only the new turn is prefilled; a prompt that diverges (a new chat, an edited history, old turns dropped
to fit the context) rewinds the cache to where they agree. This is exact, not an approximation: positions
are absolute and nothing before the common prefix changes, so the logits are those of a full forward pass.

With rolling_cache=True (RoPE models) the engine uses StreamingLLM's rolling cache (model.py's RollingKVCache) instead: the
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

The model.py parts it builds on: KVCache (rewinding is setting pos back; the buffers are overwritten),
GPT.next_logits (a forward that continues a cache) and sample_next. One engine serves one conversation at
a time; server.py runs it in a single worker thread.

Tool use (issue 26): a model with rows for the tool tokens may call the calculator mid-reply; tools.ToolState
follows each sampled token and says which tokens to force in (a call's output), and generate() yields those too,
so every caller (chat.py, the server, evaluate.py, RL rollouts) sees the whole reply, calls and outputs included,
and gets tool use from here. tools=False turns it off: the tool tokens are then sampled and fed like any other.
"""
import codecs
from dataclasses import dataclass

import torch

from model import KVCache, RollingKVCache
from model import sample_next
from nash.tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, TOOL_TOKENS, get_tokenizer, render_conversation, special_ids
from nash.tools import ToolState


@dataclass
class Sampling:
    temperature: float = 0.6  # 0 = greedy
    top_k: int | None = 50  # None = off
    top_p: float | None = None  # None = off
    max_new_tokens: int = 256
    seed: int | None = None  # None = not reproducible


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
                             f"tokens (ids up to {top}): it was not fine-tuned for chat; train it with task=chat")
        # the calculator (tools.py), for a model with rows for the tool tokens (older chat models have six tokens)
        self.tools = tools and all(self.ids.get(name, 1 << 62) < model.config.vocab_size for name in TOOL_TOKENS)
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

    def render(self, messages):
        """The prompt that asks for the next assistant reply to messages."""
        return render_conversation(self.enc, messages, for_reply=True)[0]

    def reset(self):
        self.cache.reset()
        self.cached = []

    def _feed(self, tokens):
        """Run tokens through the model after what the cache holds; the logits after the last one."""
        try:
            with torch.no_grad(), self.ctx:
                while tokens:  # the exact cache takes them in one forward; the rolling one what fits, then one by one
                    n = self.cache.room(self.sinks) if self.rolling else len(tokens)
                    idx = torch.tensor([tokens[:n]], dtype=torch.long, device=self.device)
                    logits = self.model.next_logits(idx, self.cache)
                    self.cached, tokens = self.cached + tokens[:n], tokens[n:]
        except BaseException:  # interrupted mid-forward: the cache is in an unknown state, so forget it
            self.reset()
            raise
        return logits

    def generate(self, prompt, sampling, should_stop=None):
        """Yield the reply's token ids one by one (the stop token is not yielded). prompt: token ids. Stops at a
        special token, after sampling.max_new_tokens, at the end of the context (not with the rolling cache), or
        when should_stop() is true (checked before each token). After it, the cache holds the prompt and the reply."""
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
        logits = self._feed(prompt[keep:])
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        tools = ToolState(self.enc, self.ids) if self.tools else None  # without: tool tokens are plain tokens
        self.forced = 0  # how many tokens the calculator forced into this reply (bench, tests)
        for _ in range(sampling.max_new_tokens):
            if should_stop is not None and should_stop():
                return
            token = int(sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)[0])
            forced = tools.step(token) if tools else (None if token in self.stop_ids else [])
            if forced is None:
                self.finish_reason = "stop"
                return
            new = [token] + forced  # a call's output goes in whole, in one forward, as a prefill would
            if not self.rolling:
                new = new[:self.max_seq_len - len(self.cached)]  # at most up to the context's end
            yield from new
            self.forced += len(new) - 1
            if len(self.cached) + len(new) >= self.max_seq_len and not self.rolling:  # prompt + reply fill it
                self.finish_reason = "length"
                return
            logits = self._feed(new)
        self.finish_reason = "length"


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


__all__ = ["ChatEngine", "Conversation", "Decoder", "Sampling", "CHAT_TOKENS"]
