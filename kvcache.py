"""
The KV caches of generation: the exact one (KVCache), and StreamingLLM's rolling one (RollingKVCache), which
generates past the context at a constant cost per token, with attention sinks.

Why sinks. A trained transformer parks a large share of its attention on the first tokens of a sequence,
whatever they say: softmax must put its mass somewhere, and the first tokens are the only ones every
query sees (Xiao et al. 2023, "Efficient Streaming Language Models with Attention Sinks",
arXiv:2309.17453). A plain sliding-window KV cache evicts them and the model collapses; keeping the
first 4 tokens' keys/values next to a window of recent ones repairs it. Better still, give the model a
place made for the purpose while it trains.

Our choice: learnable sink tokens (config attn_sinks = how many), not the per-head sink logit.
- Sink tokens (StreamingLLM section 3.3, "pre-training with a sink token"): attn_sinks learned vectors
  in front of every sequence, inside the model: they go through every layer like tokens, every query can
  attend to them, their outputs predict nothing and are not in the loss. Attention itself is unchanged,
  so the fused causal kernels (scaled_dot_product_attention with is_causal: flash / memory-efficient)
  still run; the cost is attn_sinks more positions per window.
- The per-head sink logit (gpt-oss; Evan Miller's "Attention Is Off By One", softmax with a 1 + ... in
  the denominator) is an extra term in each head's softmax denominator with no value. It is cheaper
  still, but scaled_dot_product_attention has no such term and does not return the log-sum-exp that
  would let us add it afterwards: it needs a float mask column (no flash kernel) or a hand-written
  attention. A sink token is also a value and key the model can shape, which the logit is not.

Positions. The sinks get no learned position embedding (they are learned vectors already); with RoPE
they take positions 0..attn_sinks-1 and the tokens follow, so the RoPE table has max_seq_len +
attn_sinks rows. The rolling cache assigns positions within the cache, as StreamingLLM does: keys are
stored before RoPE and rotated at their slot at every step, so the model never sees a position, or a
distance to a sink, that it did not see in training. With learned absolute positions that is not
possible: the position is added to the input, so every cached key/value of every layer carries it and
re-positioning them means recomputing them, which is what the exact sliding window already does. So the
rolling cache needs pos_emb=rope and refuses learned positions.

Exactness. Within max_seq_len the rolling cache is the ordinary cache (nothing evicted yet): same
logits. Past it, the cached keys/values of the recent tokens were computed while now-evicted tokens were
still visible, so it is an approximation; the exact sliding window (generate's default) recomputes the
window at each step instead, at a cost of a full window per token. `experiments.py --what=sinks` measures both.
"""


class KVCache:
    """Keys and values of the positions seen so far, for every layer.

    One preallocated (B, n_kv_heads, max_seq_len, head_dim) buffer per layer for k and for v, created
    at the first write (so it takes the dtype/device the model computes in, bf16 under autocast).
    `pos` counts the positions filled; every layer writes at the same place during one forward, and
    the model advances `pos` once all layers are done.
    """

    def __init__(self, n_layers, max_seq_len):
        self.max_seq_len = max_seq_len
        self.k = [None] * n_layers
        self.v = [None] * n_layers
        self.pos = 0

    def reset(self):
        self.pos = 0  # the buffers are simply overwritten

    def rewind(self, pos):
        """Forget every entry after the first pos (positions count the sinks): the next write goes there."""
        self.pos = pos

    def slot(self, T):
        """Where the first of T new entries goes (the position of the first new query)."""
        return self.pos

    def advance(self, T):  # called once all layers have written their T entries
        self.pos += T

    def update(self, layer, k, v):
        """Store k, v (B, n_kv_heads, T, head_dim) at positions pos..pos+T; return all keys/values so far."""
        B, H, T, D = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, H, self.max_seq_len, D)
            self.v[layer] = v.new_empty(B, H, self.max_seq_len, D)
        end = self.pos + T
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class RollingKVCache(KVCache):
    """StreamingLLM's KV cache: the first `keep` entries stay for good (the learned sinks, or the model's
    first tokens, which became sinks on their own), then the most recent entries, capacity in all.

    Same interface as KVCache (update per layer, then advance once all layers are done). When full,
    each new entry evicts the oldest one after the kept ones: the window moves down one slot, a copy of
    the cache per step, the same order of work as attending to it. Keys are stored without RoPE; the
    model sets key_rope before each forward, and attention rotates the returned keys at their slots."""

    def __init__(self, n_layers, capacity, keep):
        if not 0 <= keep < capacity:
            raise ValueError(f"keep ({keep}) must be at least 0 and less than the cache's capacity ({capacity})")
        super().__init__(n_layers, capacity)  # pos: entries filled, at most capacity
        self.capacity, self.keep = capacity, keep
        self.seen = 0  # positions fed in all
        self.key_rope = None  # (cos, sin) for slots 0..pos-1, set by the model before each forward

    @classmethod
    def for_config(cls, config, keep=None):
        """The cache for a model: room for its sinks and max_seq_len tokens (the lengths it trained on);
        keep: entries never evicted, by default the learned sinks, or else the first 4 tokens (StreamingLLM)."""
        if config.pos_emb != "rope":
            raise ValueError("the rolling KV cache needs pos_emb=rope: with learned positions every cached key/value "
                             "carries its absolute position, so the window cannot be re-positioned without "
                             "recomputing it (the exact sliding window, the default)")
        capacity = config.max_seq_len + config.attn_sinks
        keep = (config.attn_sinks or 4) if keep is None else keep
        return cls(config.n_layers, capacity, min(keep, capacity - 1))

    def reset(self):
        self.pos = self.seen = 0

    @property
    def evicted(self):
        """True once an entry was dropped to make room: the cache no longer holds every position fed."""
        return self.seen > self.pos

    def rewind(self, pos):
        """Forget every entry after the first pos. Only while nothing was evicted: after that, the entries
        in the window were computed alongside tokens that are gone, and the state the cache had at an
        earlier position cannot be rebuilt without feeding everything again (reset, then refeed)."""
        if pos == self.seen:
            return
        if self.evicted or pos > self.seen:
            raise ValueError(f"cannot rewind the rolling cache to position {pos}: it has seen {self.seen} and "
                             f"evicted {self.seen - self.pos}; reset it and feed the tokens again")
        self.pos = self.seen = pos

    def room(self, sinks=0):
        """How many new positions the next forward may feed at once: the free slots (the model's sinks take
        some on a fresh sequence), or 1 once full, when each new position evicts the oldest one."""
        return max(self.capacity - self.pos - (sinks if self.pos == 0 else 0), 1)

    def slot(self, T):
        """Where the first of T new entries goes: after the others, or the last slot once full."""
        if self.pos + T <= self.capacity:
            return self.pos
        if T == 1:
            return self.capacity - 1
        raise ValueError(f"the rolling cache has {self.capacity - self.pos} free slots for {T} new positions; "
                         "once it fills, feed one position at a time")

    def update(self, layer, k, v):
        """Store k, v (B, n_kv_heads, T, head_dim); return every cached entry (B, n_kv_heads, filled, head_dim)."""
        B, H, T, D = k.shape
        if self.k[layer] is None:
            self.k[layer] = k.new_empty(B, H, self.capacity, D)
            self.v[layer] = v.new_empty(B, H, self.capacity, D)
        start = self.slot(T)
        if start < self.pos:  # full: evict the oldest entry after the kept ones, the window moves down
            for buf in (self.k[layer], self.v[layer]):
                buf[:, :, self.keep:-1] = buf[:, :, self.keep + 1:].clone()
        self.k[layer][:, :, start:start + T] = k
        self.v[layer][:, :, start:start + T] = v
        return self.k[layer][:, :, :start + T], self.v[layer][:, :, :start + T]

    def advance(self, T):
        self.pos = min(self.pos + T, self.capacity)
        self.seen += T
