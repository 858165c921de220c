"""
The KV caches the engine decodes with (nash/engine.py): model.py's attention talks to them through
update(layer, k, v, rope), which returns every key and value the new queries see, keys already rotated; the
model calls slot() before a forward and advance() after it. The model never builds one: the engine does.
"""
import torch

from model import apply_rope


class KVCache:
    """Keys and values of the positions seen so far, for every layer: one (B, n_kv_heads, capacity, head_dim)
    buffer per layer for k and for v, made at the first write (so in the dtype the model computes in).
    `pos` counts the positions filled (the sinks included); every layer writes at the same place in a forward.
    `pad` (None, or (B,) ids): rows of different lengths, right-aligned (stack); row b's first pad[b] slots are
    empty, attention never looks at them and a slot's position is its index minus pad[b]."""

    def __init__(self, n_layers, capacity):
        self.capacity = capacity
        self.k = [None] * n_layers
        self.v = [None] * n_layers
        self.pos = 0
        self.pad = None

    def reset(self):
        self.pos = 0  # the buffers are simply overwritten

    def rewind(self, pos):
        """Forget every entry after the first pos (positions count the sinks): the next write goes there."""
        self.pos = pos

    def room(self, sinks=0):
        """How many new positions the next forward may feed."""
        return self.capacity - self.pos - (sinks if self.pos == 0 else 0)

    def slot(self, T):
        """Where the first of T new entries goes (the position of the first new query)."""
        if self.pos + T > self.capacity:
            raise ValueError(f"sequence of {self.pos + T} positions is longer than max_seq_len plus the sinks "
                             f"({self.capacity}), what the cache holds")
        return self.pos

    def advance(self, T):  # called once all layers have written their T entries
        self.pos += T

    def _buffers(self, layer, k):
        if self.k[layer] is None or self.k[layer].size(0) != k.size(0):
            B, H, _, D = k.shape
            self.k[layer] = k.new_empty(B, H, self.capacity, D)
            self.v[layer] = k.new_empty(B, H, self.capacity, D)
        return self.k[layer], self.v[layer]

    def update(self, layer, k, v, rope=None):
        """Store k, v (B, n_kv_heads, T, head_dim) at positions pos..pos+T (keys rotated there); return all so far."""
        if rope is not None:
            k = apply_rope(k, rope, self.pos if self.pad is None else self.pos - self.pad)
        ks, vs = self._buffers(layer, k)
        end = self.pos + k.size(2)
        ks[:, :, self.pos:end], vs[:, :, self.pos:end] = k, v
        return ks[:, :, :end], vs[:, :, :end]

    def expand(self, n):
        """Copy row 0 of the cache to n rows: a prompt prefilled once, then sampled n times together."""
        for buffers in (self.k, self.v):
            for i, buf in enumerate(buffers):
                if buf is not None:
                    buffers[i] = buf[:1].expand(n, -1, -1, -1).clone()

    def select(self, rows):
        """Keep only these rows (a LongTensor of row indices, in the new order): finished samples leave the batch."""
        for buffers in (self.k, self.v):
            for i, buf in enumerate(buffers):
                if buf is not None:
                    buffers[i] = buf.index_select(0, rows)
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows)

    @classmethod
    def stack(cls, caches, copies, capacity):
        """One cache holding row 0 of each of caches, copies times each (prompt i's rows are i * copies ...),
        right-aligned: the shorter ones are left-padded, so the next token of every row goes in the same slot."""
        end = max(c.pos for c in caches)
        out = cls(len(caches[0].k), capacity)
        out.pos = end
        out.pad = torch.tensor([end - c.pos for c in caches for _ in range(copies)], device=caches[0].k[0].device)
        for layer in range(len(out.k)):
            for mine, theirs in ((out.k, [c.k for c in caches]), (out.v, [c.v for c in caches])):
                _, H, _, D = theirs[0][layer].shape
                buf = theirs[0][layer].new_zeros(len(caches) * copies, H, capacity, D)  # padding: finite, masked
                for i, c in enumerate(caches):
                    buf[i * copies:(i + 1) * copies, :, end - c.pos:end] = theirs[i][layer][:1, :, :c.pos]
                mine[layer] = buf
        return out


class RollingKVCache(KVCache):
    """StreamingLLM's KV cache (Xiao et al. 2023, arXiv:2309.17453): the first `keep` entries stay for good
    (the learned sinks, or the model's first tokens, which became sinks on their own), then the most recent
    ones, capacity in all, so generation goes past the context at a constant cost per token. Keys are stored
    before RoPE and rotated at their slot in the cache at every step, so the model never sees a position it
    did not train on. Within capacity it is the exact cache; past it, an approximation (docs/model.md)."""

    def __init__(self, n_layers, capacity, keep):
        if not 0 <= keep < capacity:
            raise ValueError(f"keep ({keep}) must be at least 0 and less than the cache's capacity ({capacity})")
        super().__init__(n_layers, capacity)  # pos: entries filled, at most capacity
        self.keep = keep
        self.seen = 0  # positions fed in all

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
        """Forget every entry after the first pos; only while nothing was evicted (the entries in the window
        were computed alongside tokens that are gone: reset and feed them again instead)."""
        if pos == self.seen:
            return
        if self.evicted or pos > self.seen:
            raise ValueError(f"cannot rewind the rolling cache to position {pos}: it has seen {self.seen} and "
                             f"evicted {self.seen - self.pos}; reset it and feed the tokens again")
        self.pos = self.seen = pos

    def room(self, sinks=0):
        """The free slots, or 1 once full, when each new position evicts the oldest one."""
        return max(super().room(sinks), 1)

    def slot(self, T):
        """Where the first of T new entries goes: after the others, or the last slot once full."""
        if self.pos + T <= self.capacity:
            return self.pos
        if T == 1:
            return self.capacity - 1
        raise ValueError(f"the rolling cache has {self.capacity - self.pos} free slots for {T} new positions; "
                         "once it fills, feed one position at a time")

    def update(self, layer, k, v, rope=None):
        ks, vs = self._buffers(layer, k)
        T = k.size(2)
        start = self.slot(T)
        if start < self.pos:  # full: evict the oldest entry after the kept ones, the window moves down
            for buf in (ks, vs):
                buf[:, :, self.keep:-1] = buf[:, :, self.keep + 1:].clone()
        ks[:, :, start:start + T], vs[:, :, start:start + T] = k, v
        keys = ks[:, :, :start + T]
        return (apply_rope(keys, rope) if rope is not None else keys), vs[:, :, :start + T]

    def advance(self, T):
        self.pos = min(self.pos + T, self.capacity)
        self.seen += T

