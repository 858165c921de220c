"""
The conversation engine behind chat.py and server.py: a KV cache that remembers which tokens it holds.

Every reply starts from a prompt: the whole conversation rendered by tokenizer.render_conversation, ending
in <|assistant_start|>. The engine keeps the keys/values of the tokens it has already processed, finds how
much of the new prompt it already holds (the longest common prefix) and runs the model on the rest only.
In a conversation each prompt extends the previous one (previous prompt + the reply + the new user turn),
so only the new turn is prefilled; a prompt that diverges (a new chat, an edited history, old turns dropped
to fit the context) rewinds the cache to where they agree. This is exact, not an approximation: positions
are absolute and nothing before the common prefix changes, so the logits are those of a full forward pass.

The model.py parts it builds on: KVCache (rewinding is setting pos back; the buffers are overwritten),
GPT._last_logits (a forward that continues a cache) and sample_next. One engine serves one conversation at
a time; server.py runs it in a single worker thread.
"""
import codecs
from dataclasses import dataclass

import torch

from model import KVCache, sample_next
from tokenizer import CHAT_TOKENS, SPECIAL_TOKENS, get_tokenizer, render_conversation, special_ids


@dataclass
class Sampling:
    temperature: float = 0.6  # 0 = greedy
    top_k: int | None = 50  # None = off
    top_p: float | None = None  # None = off
    max_new_tokens: int = 256
    seed: int | None = None  # None = not reproducible


class ChatEngine:

    def __init__(self, model, ctx, enc=None):
        self.model, self.ctx = model, ctx  # ctx: the autocast context (checkpoint.inference_setup)
        self.enc = enc or get_tokenizer()
        try:
            self.ids = special_ids(self.enc)
        except KeyError as e:
            raise ValueError(f"{e.args[0]}, so it cannot render conversations") from None
        top = max(self.ids[name] for name in SPECIAL_TOKENS)
        if model.config.vocab_size <= top:
            raise ValueError(f"the model's vocabulary ({model.config.vocab_size} tokens) has no room for the chat "
                             f"tokens (ids up to {top}): it was not fine-tuned for chat; train it with task=chat")
        self.stop_ids = set(self.ids.values())  # a reply is text: any special token ends it
        self.max_seq_len = model.config.max_seq_len
        self.device = next(model.parameters()).device
        self.cache = KVCache(model.config.n_layers, self.max_seq_len)
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
        idx = torch.tensor([tokens], dtype=torch.long, device=self.device)
        try:
            with torch.no_grad(), self.ctx:
                logits = self.model._last_logits(idx, self.cache)
        except BaseException:  # interrupted mid-forward: the cache is in an unknown state, so forget it
            self.reset()
            raise
        self.cached += tokens
        return logits

    def generate(self, prompt, sampling, should_stop=None):
        """Yield the reply's token ids one by one (the stop token is not yielded). prompt: token ids. Stops at a
        special token, after sampling.max_new_tokens, at the end of the context, or when should_stop() is true
        (checked before each token). After it, the cache holds the prompt and the reply."""
        if not prompt or len(prompt) >= self.max_seq_len:
            raise ValueError(f"the prompt has {len(prompt)} tokens; it must be 1 to {self.max_seq_len - 1} "
                             f"(the model's context is {self.max_seq_len})")
        self.model.eval()
        keep = 0
        if self.reuse:  # the longest common prefix, leaving at least one token to feed for fresh logits
            limit = min(len(self.cached), len(prompt) - 1)
            while keep < limit and self.cached[keep] == prompt[keep]:
                keep += 1
        self.cache.pos, self.cached = keep, self.cached[:keep]  # rewind: later positions get overwritten
        self.prefilled = len(prompt) - keep  # how many prompt tokens this reply had to compute (bench, tests)
        logits = self._feed(prompt[keep:])
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(sampling.seed)
        for _ in range(sampling.max_new_tokens):
            if should_stop is not None and should_stop():
                return
            token = int(sample_next(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)[0])
            if token in self.stop_ids:
                self.finish_reason = "stop"
                return
            yield token
            if len(self.cached) + 1 >= self.max_seq_len:  # prompt + reply fill the context: no room for more
                self.finish_reason = "length"
                return
            logits = self._feed([token])
        self.finish_reason = "length"


class Decoder:
    """Token ids -> text pieces, holding back a character whose UTF-8 bytes are split across tokens."""

    def __init__(self, enc):
        self.enc = enc
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token):
        return self.utf8.decode(self.enc.decode_single_token_bytes(token))

    def flush(self):
        return self.utf8.decode(b"", final=True)


class Conversation:
    """A conversation for chat.py: the messages so far, fitted into the model's context turn by turn."""

    def __init__(self, engine, system=""):
        self.engine, self.system = engine, system
        self.clear()

    def clear(self):
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def fit(self, reserve):
        """Drop the oldest turns (never the system prompt) until the prompt leaves `reserve` positions for
        the reply; returns how many messages were dropped. ValueError if the last message alone is too long."""
        messages = list(self.messages)  # committed only if it fits: a refused message changes nothing
        while len(self.engine.render(messages)) + reserve > self.engine.max_seq_len:
            first = 1 if messages[0]["role"] == "system" else 0
            if len(messages) - first <= 1:  # only the new user message is left
                raise ValueError(f"the message is too long for the model's context of {self.engine.max_seq_len} "
                                 f"tokens ({len(self.engine.render(messages))} with the chat markup)")
            del messages[first]
        dropped, self.messages = len(self.messages) - len(messages), messages
        return dropped

    def reply(self, text, sampling):
        """Add the user's message and yield the reply as text pieces; the reply (cut short or not, e.g. by
        Ctrl-C) joins the conversation when the generator closes."""
        self.messages.append({"role": "user", "content": text})
        reserve = min(sampling.max_new_tokens, self.engine.max_seq_len // 2)  # room for (most of) a reply
        try:
            self.dropped = self.fit(reserve)
        except ValueError:
            self.messages.pop()
            raise
        decoder, pieces = Decoder(self.engine.enc), []
        try:
            for token in self.engine.generate(self.engine.render(self.messages), sampling):
                pieces.append(decoder(token))
                yield pieces[-1]
            pieces.append(decoder.flush())
            yield pieces[-1]
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces)})


__all__ = ["ChatEngine", "Conversation", "Decoder", "Sampling", "CHAT_TOKENS"]
