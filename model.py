"""
The GPT language model, in one file that needs only torch (copy it anywhere: `import model` works).

Defaults are OpenAI's GPT-2 small (124M): learned positions, pre-LayerNorm, tanh-GELU MLP, tied
embeddings. Switches bring in the modern parts: RoPE, RMSNorm, SwiGLU/ReLU², GQA/MQA, QK-norm, an
untied head, a Mixture-of-Experts MLP, learnable attention-sink tokens. Also here, because they need the
model's insides: the one training/eval loss (fused with the lm_head in chunks, or plain: same numbers),
generation with a KV cache (exact, or StreamingLLM's rolling one past the context), the optimizers
(AdamW, or Muon for the hidden matrices), FLOPs per token and MFU, and GPT.from_pretrained for OpenAI's
GPT-2 (transformers-free: safetensors/huggingface_hub are imported inside it). Other Hugging Face families
(Llama, Qwen3, Mixtral) and export live in nash/hf.py, which builds this GPT. The reasoning behind the
attention sinks, the rolling cache and the MoE routing is in docs/model.md.
"""
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads; fewer = GQA; 1 = MQA
    d_model: int = 768
    d_ff: int = 3072               # MLP hidden size (swiglu: size of each of gate and up)
    max_seq_len: int = 1024        # context length
    vocab_size: int = 50257
    dropout: float = 0.1
    bias: bool = True              # biases in Linear and LayerNorm (False is a bit faster)
    pos_emb: str = "learned"       # learned | rope
    norm: str = "layernorm"        # layernorm | rmsnorm
    mlp: str = "gelu"              # gelu | swiglu | relu2
    qk_norm: bool = False          # RMSNorm of queries and keys per head (before RoPE)
    tie_weights: bool = True       # lm_head shares the token embedding
    rope_theta: float = 10000.0    # RoPE's base wavelength
    pad_vocab_multiple: int = 64   # embedding/lm_head rows padded to a multiple of this for speed (50257 -> 50304); 1 = no padding
    n_experts: int = 0             # Mixture-of-Experts MLP with this many experts; 0 = dense MLP
    experts_top_k: int = 2         # experts each token is routed to
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss (Switch uses 0.01)
    attn_sinks: int = 0            # learnable sink tokens in front of every sequence; 0 = none
    score_head: bool = False       # a scalar score head beside the lm_head (a verifier, task=verifier): GPT.score

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "d_model", "d_ff", "max_seq_len", "vocab_size", "pad_vocab_multiple"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must be a divisor of n_heads ({self.n_heads})")
        choices = {"pos_emb": ("learned", "rope"), "norm": ("layernorm", "rmsnorm"), "mlp": ("gelu", "swiglu", "relu2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dim, but d_model / n_heads = {self.head_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.n_experts < 0 or self.attn_sinks < 0 or self.moe_aux_loss_coef < 0:
            raise ValueError("n_experts, attn_sinks and moe_aux_loss_coef cannot be negative")
        if self.n_experts and not 1 <= self.experts_top_k <= self.n_experts:
            raise ValueError(f"experts_top_k ({self.experts_top_k}) must be between 1 and n_experts ({self.n_experts})")

    @property
    def head_dim(self):
        return self.d_model // self.n_heads

    @property
    def kv_heads(self):
        return self.n_kv_heads or self.n_heads

    @property
    def padded_vocab_size(self):
        m = self.pad_vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    def memory_bytes(self):
        """What building this model takes in float32, from the config alone (weights, position and RoPE
        tables), so that a file asking for a huge model is refused before anything is allocated."""
        d, L, V = self.d_model, self.n_layers, self.padded_vocab_size
        attn = d * (self.n_heads + 2 * self.kv_heads) * self.head_dim + d * d
        mlp = d * self.d_ff * (3 if self.mlp == "swiglu" else 2)
        block = attn + mlp * max(self.n_experts, 1) + d * self.n_experts + 4 * d
        tables = self.max_seq_len * d if self.pos_emb == "learned" else (self.max_seq_len + self.attn_sinks) * self.head_dim
        return 4 * (V * d * (1 if self.tie_weights else 2) + L * block + tables + d * self.score_head)


def make_norm(config, dim):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, eps=1e-5, bias=config.bias)  # GPT-2's eps


def apply_rope(x, rope, start=0):
    """Rotate x (B, H, T, head_dim), at positions start..start+T, by RoPE: the pairs (i, i + head_dim/2)
    turn by angle position * freq_i (the "half split" layout of GPT-NeoX / Llama / nanochat).
    rope: the model's (cos, sin) tables, (positions, head_dim/2)."""
    T = x.size(2)
    if torch.is_tensor(start):  # one start per row (a left-padded batch): (B, 1, T, head_dim/2) tables
        pos = (start[:, None] + torch.arange(T, device=x.device)).clamp(min=0)  # padding slots: any angle, masked
        cos, sin = rope[0][pos][:, None].to(x.dtype), rope[1][pos][:, None].to(x.dtype)
    else:
        cos, sin = rope[0][start:start + T].to(x.dtype), rope[1][start:start + T].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


# -----------------------------------------------------------------------------
# KV caches. Attention talks to both through update(layer, k, v, rope), which returns every key and value
# the new queries see, keys already rotated; the model calls slot() before a forward and advance() after it.

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


# -----------------------------------------------------------------------------
# the blocks

class CausalSelfAttention(nn.Module):

    def __init__(self, config, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx  # which slot of the KV cache is ours
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        # q, k, v in one matmul; laid out [q | k | v] like GPT-2's c_attn (3 * d_model when not GQA)
        self.c_attn = nn.Linear(config.d_model, (self.n_heads + 2 * self.n_kv_heads) * self.head_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        if config.qk_norm:
            # RMSNorm over the head dim, with a gain shared by all heads, *before* RoPE (as Qwen3, OLMo 2,
            # Gemma 3): a per-dim gain applied after the rotation would scale the two halves of each rotated
            # pair differently and make q.k depend on absolute position, which RoPE exists to avoid.
            self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, rope=None, start=0, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split([self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                                        self.n_kv_heads * self.head_dim], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q = apply_rope(q, rope, start)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v, rope)  # every key the queries see: (B, n_kv, start+T, hd)
        elif rope is not None:
            k = apply_rope(k, rope, start)
        pos0 = k.size(2) - T  # how many earlier positions our T queries can also see
        mask, is_causal = None, True
        pad = kv_cache.pad if kv_cache is not None else None
        if pad is not None:  # left-padded rows: causal, and a row never sees its padding (a padding slot sees
            # itself only, so that its softmax has something to normalise and stays finite)
            keys, queries = torch.arange(pos0 + T, device=x.device), pos0 + torch.arange(T, device=x.device)[:, None]
            mask = (keys <= queries) & ((keys >= pad[:, None, None]) | (keys == queries))
            mask, is_causal = mask[:, None], False  # (B, 1, T, keys)
        elif pos0 > 0:
            # is_causal aligns the mask top-left, wrong when the keys run ahead of the queries
            is_causal = False
            if T > 1:  # query i sits at position pos0 + i and sees keys 0..pos0+i
                mask = torch.arange(pos0 + T, device=x.device) <= pos0 + torch.arange(T, device=x.device)[:, None]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           enable_gqa=self.n_kv_heads != self.n_heads)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        # swiglu needs a gate and an up projection: one matmul to 2 * d_ff, split in forward.
        # (so swiglu has 3 d_model d_ff weights against 2 for the others; use d_ff ~ 8/3 d_model to match)
        hidden = 2 * config.d_ff if self.kind == "swiglu" else config.d_ff
        self.c_fc = nn.Linear(config.d_model, hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        if self.kind == "gelu":
            x = F.gelu(x, approximate="tanh")  # GPT-2's "gelu_new"; the exact erf GELU would not match its weights
        elif self.kind == "relu2":
            x = F.relu(x).square()
        else:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        return self.dropout(self.c_proj(x))


class MoE(nn.Module):
    """Mixture-of-Experts MLP: a router sends each token to experts_top_k of n_experts MLPs and adds their
    outputs, weighted by the router (Mixtral: softmax over all experts in float32, top k renormalised; with
    k = 1 the raw probability, as the Switch Transformer). Dropless (no capacity factor), so a token's output
    never depends on the batch, which keeps KV-cache generation equal to a full recompute. Each expert runs
    once on its contiguous slice of the sorted assignments; results return through the inverse permutation
    (a deterministic gather, not atomic index_add_). Each forward leaves the Switch load-balancing loss
    n_experts * sum_i f_i P_i in `aux_loss` (1 when uniform; f over assignments, so Hugging Face's Mixtral
    value is top_k times ours) and the load f in `load`."""

    def __init__(self, config, make_expert):
        super().__init__()
        self.n_experts, self.top_k = config.n_experts, config.experts_top_k
        self.router = nn.Linear(config.d_model, self.n_experts, bias=False)
        self.experts = nn.ModuleList([make_expert(config) for _ in range(self.n_experts)])
        self.aux_loss = self.load = None  # set by each forward

    def route(self, x):
        """x (N, C) -> router probabilities (N, E) float32, and each token's top_k weights and experts (N, k)."""
        with torch.autocast(x.device.type, enabled=False):  # float32 even under AMP
            probs = F.linear(x.float(), self.router.weight.float()).softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return probs, weights, experts

    def forward(self, x):
        B, T, C = x.shape
        x = x.reshape(B * T, C)
        probs, weights, experts = self.route(x)
        flat = experts.flatten()  # (N * k,) the expert of each assignment, token-major
        order = flat.argsort(stable=True)  # assignments grouped by expert
        counts = torch.bincount(flat, minlength=self.n_experts)
        grouped = x[order // self.top_k]  # the token of each assignment, in expert order
        # every expert runs, even on zero tokens: its weights then get a zero gradient rather than none,
        # which DDP needs (it waits for a gradient from every parameter)
        out = torch.cat([expert(chunk) for expert, chunk in zip(self.experts, grouped.split(counts.tolist()))])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        out = out[inverse].view(B * T, self.top_k, C)  # back to token-major: (token, slot)
        y = (out * weights.unsqueeze(-1).to(out.dtype)).sum(dim=1)

        self.load = counts.float() / flat.numel()
        self.aux_loss = self.n_experts * (self.load * probs.mean(dim=0)).sum()
        self.load = self.load.detach()
        return y.view(B, T, C)


def idle_expert_params(model, matrices_only=False):
    """Parameters of the experts a token is not routed to, over all layers: total - active (0 if dense).
    matrices_only: count only the 2-D weights, the ones that cost matmul FLOPs."""
    cfg = model.config
    if not cfg.n_experts:
        return 0
    expert = model.transformer.h[0].mlp.experts[0]
    per_expert = sum(p.numel() for p in expert.parameters() if p.dim() == 2 or not matrices_only)
    return cfg.n_layers * (cfg.n_experts - cfg.experts_top_k) * per_expert


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config, config.d_model)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.d_model)
        self.mlp = MoE(config, MLP) if config.n_experts else MLP(config)

    def forward(self, x, rope=None, start=0, kv_cache=None):
        x = x + self.attn(self.ln_1(x), rope, start, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x



# -----------------------------------------------------------------------------
# the loss: one definition per token, used by training, evals, DPO, RL and the benchmarks

def token_loss(logits, targets):
    """The loss of each row of logits (N, V) against its target (N,): cross-entropy, in float32. Every loss
    in the project goes through here (the fused chunked path too, which differentiates this function chunk
    by chunk), so a z-loss, a logit soft-cap or label smoothing is one edit here."""
    return F.cross_entropy(logits.float(), targets, reduction="none")


def chunked_cross_entropy(x, weight, targets, chunk_rows=None):
    """Mean token_loss of the logits x @ weight.T against targets (-1 = no loss), without ever holding the
    whole logits: x (..., C) hidden states, weight (V, C) the head, targets (...). 0 when every target is -1.

    chunk_rows: rows per chunk; default 128 on CPU (128 x 50257 float32 logits = 26 MB stay in the last-level
    cache, which makes this faster than the plain path there; measured in bench.py) and 1024 on a GPU."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    keep = targets != -1
    x, targets = x[keep], targets[keep]  # masked rows (SFT prompts, padding) cost nothing
    rows = chunk_rows or (128 if x.device.type == "cpu" else 1024)
    # under autocast, do the matmuls in its dtype ourselves (autocast leaves in-place ops alone)
    dev = x.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    with torch.autocast(dev, enabled=False):
        return _FusedHeadLoss.apply(x.to(dtype), weight.to(dtype), targets, rows,
                                    torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))


class _FusedHeadLoss(torch.autograd.Function):
    """The lm_head and the loss in one pass over chunks of rows. A row's loss depends only on its own logits,
    so the gradient with respect to a chunk's logits is known as soon as they are: the forward computes each
    chunk's logits, differentiates token_loss on them right away, and multiplies that into dx and dweight;
    backward only scales them by the incoming gradient / n. The matmuls are those of a plain forward +
    backward (no recomputation), and memory holds one chunk of logits, not the (B*T, V) logits and their
    gradient. The cost: gradients are computed even if backward is never called, hence `needs_grad`.

    16-bit: the 1/n (and a GradScaler's scale) are applied in float32 in backward, so the logits' gradient,
    in [-1, 1], needs no loss scaling; dx and dweight are summed in float32. float16 overflows at 65504: a
    chunk's dweight entry is at most rows * max|x|, so x enters that matmul divided by 16 (exact), undone later."""

    @staticmethod
    def forward(ctx, x, weight, targets, rows, needs_grad):
        n = max(x.size(0), 1)  # the mean over the kept rows; 0 (not NaN) when there are none
        x_scale = 1 / 16 if x.dtype == torch.float16 else 1.0
        loss = torch.zeros((), dtype=torch.float32, device=x.device)
        dx = torch.zeros_like(x, dtype=torch.float32) if needs_grad else None
        dw = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        for i in range(0, x.size(0), rows):
            xc, tc = x[i:i + rows], targets[i:i + rows]
            logits = (xc @ weight.t()).float()  # (rows, V), the only logits that exist at any time
            if not needs_grad:
                loss += token_loss(logits, tc).sum()
                continue
            with torch.enable_grad():
                logits.requires_grad_(True)
                chunk_loss = token_loss(logits, tc).sum()
                (grad,) = torch.autograd.grad(chunk_loss, logits)
            loss += chunk_loss.detach()
            grad = grad.to(x.dtype)
            dx[i:i + rows] = grad @ weight
            if x.dtype == torch.float32:
                dw.addmm_(grad.t(), xc)
            else:  # a 16-bit matmul per chunk, summed in float32
                dw += grad.t() @ (xc * x_scale)
        ctx.save_for_backward(dx, dw)
        ctx.n, ctx.x_scale, ctx.dtypes = n, x_scale, (x.dtype, weight.dtype)
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        dx, dw = ctx.saved_tensors
        scale = grad_loss.float() / ctx.n
        return ((dx * scale).to(ctx.dtypes[0]), (dw * (scale / ctx.x_scale)).to(ctx.dtypes[1]),
                None, None, None)


# -----------------------------------------------------------------------------
# the model

class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.config = config
        V = config.padded_vocab_size  # rows >= vocab_size are padding: never looked up, never sampled, no loss
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(V, config.d_model),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layers)]),
            ln_f=make_norm(config, config.d_model),
        ))
        if config.pos_emb == "learned":
            self.transformer["wpe"] = nn.Embedding(config.max_seq_len, config.d_model)
        else:
            # RoPE angles for every position we can ever see (windows never exceed max_seq_len, plus
            # the sinks). Not persistent: they are a function of the config, so checkpoints don't carry them.
            hd, T = config.head_dim, config.max_seq_len + config.attn_sinks
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
            freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, hd/2)
            self.register_buffer("rope_cos", freqs.cos(), persistent=False)
            self.register_buffer("rope_sin", freqs.sin(), persistent=False)
        self.lm_head = nn.Linear(config.d_model, V, bias=False)
        if config.tie_weights:
            self.transformer.wte.weight = self.lm_head.weight  # one matrix, both ends (GPT-2 does this)
        if config.attn_sinks:  # learned input vectors, prepended to every sequence: why: docs/model.md
            self.sinks = nn.Parameter(torch.empty(config.attn_sinks, config.d_model).normal_(0.0, 0.02))
        if config.score_head:
            self.score_head = nn.Linear(config.d_model, 1, bias=False)  # (transformers' "score": no bias either)

        # GPT-2 init: N(0, 0.02) everywhere, zero biases, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 n_layers) so its variance doesn't grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        with torch.no_grad():  # padding rows: zero, and they stay zero (no gradient ever reaches them)
            self.transformer.wte.weight[config.vocab_size:].zero_()
            self.lm_head.weight[config.vocab_size:].zero_()
            if config.score_head:
                self.score_head.weight.zero_()  # every sequence starts at logit 0 (probability 1/2)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @torch.no_grad()
    def grow_vocab(self, vocab_size, seed=0):
        """Widen the vocabulary to vocab_size tokens (the chat special tokens, for a model pretrained without
        them), keeping every trained row. A new row starts as the mean of the trained rows plus noise of a tenth
        of their spread: an average token, so its first logits are ordinary rather than spikes that would swamp
        the early loss, and the new tokens still differ from each other. The padded rows usually have room
        (50257 -> 50263 stays within 50304 rows); otherwise the matrices are reallocated."""
        old = self.config.vocab_size
        if vocab_size <= old:
            return
        config = replace(self.config, vocab_size=vocab_size)
        wte, head = self.transformer.wte, self.lm_head
        if config.padded_vocab_size > wte.weight.size(0):
            V, dev, dt = config.padded_vocab_size, wte.weight.device, wte.weight.dtype
            self.transformer.wte = nn.Embedding(V, config.d_model, device=dev, dtype=dt)
            self.lm_head = nn.Linear(config.d_model, V, bias=False, device=dev, dtype=dt)
            self.transformer.wte.weight.zero_()[:old] = wte.weight[:old]
            self.lm_head.weight.zero_()[:old] = head.weight[:old]
            if config.tie_weights:
                self.transformer.wte.weight = self.lm_head.weight
        g = torch.Generator().manual_seed(seed)
        for w in {id(p): p for p in (self.transformer.wte.weight, self.lm_head.weight)}.values():  # tied: once
            rows = w[:old].float()
            noise = torch.randn(vocab_size - old, w.size(1), generator=g) * 0.1 * rows.std()
            w[old:vocab_size] = (rows.mean(0) + noise.to(w.device)).to(w.dtype)
        self.config = config

    def add_score_head(self):
        """Give a language model the scalar score head (zero: every sequence starts at probability 1/2), as a
        verifier starts from a chat model. self.config changes in place: whoever holds it (train.py, to save it)
        sees score_head=True, so the checkpoint rebuilds the head."""
        if not self.config.score_head:
            w = self.lm_head.weight
            self.score_head = nn.Linear(self.config.d_model, 1, bias=False, device=w.device, dtype=w.dtype)
            nn.init.zeros_(self.score_head.weight)
            self.config.score_head = True

    def num_params(self, non_embedding=False, active=False):
        """Logical parameter count: padding rows are left out and tied weights count once.
        active=True: those one token uses, i.e. without the experts a token is not routed to (MoE).

        non_embedding=True leaves out the lookup tables that do no matmul: the position embedding
        (as nanoGPT) and, when untied, the token embedding. With tied weights the token embedding is
        also the lm_head, a real matmul, so it stays in (again as nanoGPT)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() already yields a tied tensor once
        pad_rows = self.config.padded_vocab_size - self.config.vocab_size
        n -= pad_rows * self.config.d_model * (1 if self.config.tie_weights else 2)
        if non_embedding:
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.config.vocab_size * self.config.d_model
        return n - (idle_expert_params(self) if active else 0)

    def hidden_states(self, idx, kv_cache=None):
        """Token ids (B, T) -> final normalised hidden states (B, T, C). With a cache, idx continues it."""
        B, T = idx.size()
        n_sinks = self.config.attn_sinks
        past = kv_cache.pos if kv_cache is not None else 0  # cached positions, the sinks included
        pad = kv_cache.pad if kv_cache is not None else None  # left padding per row (KVCache.stack), or None
        if kv_cache is None and T > self.config.max_seq_len:
            raise ValueError(f"sequence of {T} positions is longer than max_seq_len ({self.config.max_seq_len})")
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":  # (the sinks get none: they are learned vectors already)
            tok0 = max(past - n_sinks, 0)  # tokens before idx
            if pad is not None:  # each row's own (padding slots sit before its first token)
                tok0 = (tok0 - pad)[:, None]
            positions = tok0 + torch.arange(T, device=idx.device)
            if int(positions.max()) >= self.config.max_seq_len:
                raise ValueError(f"sequence of {int(positions.max()) + 1} positions is longer than max_seq_len "
                                 f"({self.config.max_seq_len})")
            x = x + self.transformer.wpe(positions)
        if n_sinks and past == 0:  # a fresh sequence: the sinks go first
            x = torch.cat([self.sinks.to(x.dtype).expand(B, -1, -1), x], dim=1)
        n = x.size(1)
        start = kv_cache.slot(n) if kv_cache is not None else 0  # the position of the first new entry
        rope = (self.rope_cos, self.rope_sin) if self.config.pos_emb == "rope" else None
        x = self.transformer.drop(x)
        rope_start = start if pad is None else start - pad  # the position of each row's first new query
        for block in self.transformer.h:
            x = block(x, rope, rope_start, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(n)
        return self.transformer.ln_f(x[:, n - T:])  # the sinks' outputs predict nothing

    @property
    def head(self):
        # Only the real vocabulary's rows take part: lm_head.weight[:vocab_size] is a contiguous view, so the
        # matmul writes (B, T, vocab_size) logits directly (computing the padded width and slicing it copied
        # the logits and zero-filled a padded gradient: ~20% of a CPU step). Padding rows serve the lookup only.
        return self.lm_head.weight[:self.config.vocab_size]

    def forward(self, idx, targets=None, return_logits=True, reduction="mean", last=None):
        """idx (B, T) token ids -> (logits (B, T, vocab_size) or None, loss or None).
        last (B,): the score head's logits instead, (B,) (score(); through forward so DDP and compile see it).

        targets (B, T): the next token at each position; -1 marks positions without loss (SFT masks prompts
        this way). reduction="mean": the mean token_loss over the other positions (0 when there are none,
        still attached to the graph); "none": each position's loss, (B, T), 0 where the target is -1 (DPO's
        and RL's per-sequence sums). return_logits=False (training): no logits come back, and the mean loss
        is fused with the head in chunks (chunked_cross_entropy): same loss and gradients, far less memory.
        In training mode the MoE load-balancing loss is added to the mean (moe_aux_loss reads it alone)."""
        if last is not None:
            return self.score(idx, last), None
        x = self.hidden_states(idx)
        if targets is None:
            return F.linear(x, self.head), None
        logits = F.linear(x, self.head) if return_logits else None
        keep = targets != -1
        if reduction == "mean" and logits is None:
            loss = chunked_cross_entropy(x, self.head, targets)
        else:  # the loss of the kept positions only: the head's matmul runs on those rows
            rows = token_loss(logits[keep] if logits is not None else F.linear(x[keep], self.head), targets[keep])
            if reduction == "none":
                loss = rows.new_zeros(targets.shape).masked_scatter(keep, rows)
            elif reduction == "mean":
                loss = rows.sum() / max(rows.numel(), 1)
            else:
                raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
        if reduction == "mean" and self.config.n_experts and self.training:  # the training loss carries the balancing
            loss = loss + self.config.moe_aux_loss_coef * self.moe_aux_loss()
        return logits, loss

    def score_tokens(self, idx, targets, where=None):
        """For evaluation: (loss, hit) of each target, loss as in forward and hit = the target is the most likely
        token. Only the scored positions reach the head (for GPT-2 on HellaSwag about a tenth of them).
        targets (B, T), -1 = not scored: both come back (B, T), 0 / False where the target is -1.
        where (N, 2) of (row, position), targets (N,): those pairs, (N,) each; a position may come more than
        once, with other targets (lm-eval's multiple-choice answers that share a context)."""
        x = self.hidden_states(idx)
        keep = targets != -1 if where is None else None
        rows, wanted = (x[keep], targets[keep]) if where is None else (x[where[:, 0], where[:, 1]], targets)
        logits = F.linear(rows, self.head)
        loss, hit = token_loss(logits, wanted), logits.argmax(-1) == wanted
        if where is not None:
            return loss, hit
        return loss.new_zeros(targets.shape).masked_scatter(keep, loss), torch.zeros_like(keep).masked_scatter(keep, hit)

    def score(self, idx, last):
        """The score head's logit (B,), float32, read at position last[b] of each row of idx (B, T): a verifier's
        log-odds that the sequence ending there is right. Rows are right-padded; causal attention keeps the padding
        after last out of it. ValueError for a model without the head (score_head=False)."""
        if not self.config.score_head:
            raise ValueError("this model has no score head (score_head=False): train one with task=verifier")
        x = self.hidden_states(idx)
        return self.score_head(x[torch.arange(x.size(0), device=x.device), last]).squeeze(-1).float()

    def next_logits(self, idx, kv_cache=None):
        """The float32 logits (B, vocab_size) after the last token of idx (B, T); with a cache, idx continues it."""
        return F.linear(self.hidden_states(idx, kv_cache)[:, -1], self.head).float()

    def moe_aux_loss(self):
        """The load-balancing loss of the last forward, averaged over layers (so its weight does not grow
        with depth); attached to the graph."""
        return torch.stack([block.mlp.aux_loss for block in self.transformer.h]).mean()

    def expert_loads(self):
        """Each layer's share of the last forward's assignments per expert, (n_layers, n_experts), detached."""
        return torch.stack([block.mlp.load for block in self.transformer.h])

    # ------------------------------------------------------------------------------------------------
    # generation

    @contextmanager
    def _sampling_mode(self):
        # eval (no dropout) and no autograd while we compute a step; the model's own mode is put back
        # before every yield, so a caller sees it unchanged even while a stream is half consumed
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def generate_stream(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                        stop_token=None, generator=None, use_cache=True, rolling_cache=False, keep=None):
        """Yield the next token of each row, a LongTensor of shape (B,), one step at a time.

        idx (B, T0) is the prompt; only its last max_seq_len tokens are used. Each step's logits are
        exactly those of a full forward over the last max_seq_len tokens of the sequence so far
        (that is what use_cache=False computes). With the cache: prefill the window once, then feed
        one position per step; once the window is full and starts to slide, every earlier position
        changes (learned positions shift, and the dropped token no longer feeds the later layers'
        keys/values), so the cache is refilled from the new window at each step; past the context
        a step costs a full window, the price of the exact semantics.

        rolling_cache=True (RoPE only): StreamingLLM's cache instead (RollingKVCache): the sinks, or the
        first `keep` positions (default 4), plus the most recent ones, so a step costs the same however
        far past max_seq_len it goes. The same logits within max_seq_len; past it, an approximation. A
        prompt longer than max_seq_len goes in as its first max_seq_len tokens, then one at a time.

        stop_token: a row that has emitted it keeps emitting it; the stream ends after the step at
        which the last row stops (or after max_new_tokens)."""
        if idx.dim() != 2 or idx.size(1) == 0:
            raise ValueError(f"idx must be a (B, T) tensor of token ids with T >= 1, got shape {tuple(idx.shape)}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        S, n_sinks = self.config.max_seq_len, self.config.attn_sinks
        window = idx[:, -S:]  # what the model sees; the caller keeps the full sequence
        cache = KVCache(self.config.n_layers, n_sinks + S) if use_cache else None
        if rolling_cache:
            cache = RollingKVCache.for_config(self.config, keep)
        done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            with self._sampling_mode():
                if rolling_cache and cache.seen:
                    logits = self.next_logits(next_tok[:, None], cache)
                elif rolling_cache:
                    logits = self.next_logits(idx[:, :S], cache)
                    for t in range(S, idx.size(1)):
                        logits = self.next_logits(idx[:, t:t + 1], cache)
                elif cache is None:
                    logits = self.next_logits(window)
                elif cache.pos == n_sinks + window.size(1) - 1:  # cache holds all but the newest token: feed just that
                    logits = self.next_logits(window[:, -1:], cache)
                else:  # first step, or the window slid: (re)prefill the whole window
                    cache.reset()
                    logits = self.next_logits(window, cache)
                next_tok = sample_next(logits, temperature, top_k, top_p, generator)
                if stop_token is not None:
                    next_tok = torch.where(done, torch.full_like(next_tok, stop_token), next_tok)
                    done |= next_tok == stop_token
                window = torch.cat([window, next_tok[:, None]], dim=1)[:, -S:]
            yield next_tok
            if stop_token is not None and bool(done.all()):
                return

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 stop_token=None, generator=None, use_cache=True, rolling_cache=False, keep=None):
        """The prompt idx (B, T0) followed by the sampled tokens: (B, T0 + n), n <= max_new_tokens
        (fewer when every row has hit stop_token). See generate_stream for the options."""
        steps = self.generate_stream(idx, max_new_tokens, temperature, top_k, top_p, stop_token, generator, use_cache,
                                     rolling_cache, keep)
        return torch.cat([idx] + [tok[:, None] for tok in steps], dim=1)

    # ------------------------------------------------------------------------------------------------
    # OpenAI's GPT-2 weights

    @staticmethod
    def gpt2_config(hf, dropout=0.0, bias=True):
        """Our GPTConfig for a Hugging Face GPT-2 config.json (a dict); ValueError naming what we don't compute."""
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"activation_function {hf['activation_function']!r} is not supported (only GPT-2's tanh GELU)")
        if hf.get("layer_norm_epsilon", 1e-5) != 1e-5:
            raise ValueError(f"layer_norm_epsilon {hf['layer_norm_epsilon']} is not supported (only 1e-05)")
        for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("reorder_and_upcast_attn", False),
                        ("scale_attn_weights", True)):
            if hf.get(key, ok) != ok:
                raise ValueError(f"{key}={hf[key]} is not supported")
        try:
            return GPTConfig(n_layers=hf["n_layer"], n_heads=hf["n_head"], d_model=hf["n_embd"],
                             d_ff=hf.get("n_inner") or 4 * hf["n_embd"], max_seq_len=hf["n_positions"],
                             vocab_size=hf["vocab_size"], dropout=dropout, bias=bias,
                             tie_weights=hf.get("tie_word_embeddings", True))
        except KeyError as e:
            raise ValueError(f"config.json lacks {e.args[0]!r}") from None
        except TypeError as e:
            raise ValueError(f"config.json has a value of the wrong type ({e})") from None

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0, max_bytes=None):
        """OpenAI's GPT-2 (gpt2, gpt2-medium, gpt2-large, gpt2-xl from the Hugging Face hub, or the local
        cache when offline), or a local Hugging Face GPT-2 folder (config.json + model.safetensors, sharded
        or not, or pytorch_model.bin read as data only). All-zero biases load as bias=False. max_bytes: refuse
        a config.json whose model would take more (memory_bytes) before allocating anything.
        Raises OSError / ValueError with a one-line reason. Llama, Qwen3, Mixtral folders: nash/hf.py."""
        name = str(name_or_dir)
        if os.path.isdir(name):
            config_path = os.path.join(name, "config.json")
            if not os.path.isfile(config_path):
                raise FileNotFoundError(f"{name} has no config.json; expected a Hugging Face model folder "
                                        "(config.json + model.safetensors or pytorch_model.bin)")
            weights = [os.path.join(name, f) for f in ("model.safetensors", "model.safetensors.index.json",
                                                       "pytorch_model.bin") if os.path.isfile(os.path.join(name, f))]
            if not weights:
                raise FileNotFoundError(f"{name} has neither model.safetensors nor pytorch_model.bin")
            weights_path = weights[0]
        elif name in GPT2_NAMES:
            from huggingface_hub import hf_hub_download
            try:  # falls back to the local HF cache when offline
                config_path = hf_hub_download("openai-community/" + name, "config.json")
                weights_path = hf_hub_download("openai-community/" + name, "model.safetensors")
            except Exception as e:
                raise OSError(f"could not download {name} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); "
                              "pass a local directory with config.json and model.safetensors instead") from None
        else:
            raise ValueError(f"{name!r} is neither a GPT-2 model name ({', '.join(GPT2_NAMES)}) nor an existing "
                             "directory holding a Hugging Face checkpoint")
        hf = read_json(config_path)
        if hf.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"{name} holds a {hf.get('model_type')!r} model; GPT.from_pretrained loads GPT-2 only "
                             "(nash/hf.py's load_pretrained loads Llama, Qwen3 and Mixtral)")
        config = cls.gpt2_config(hf, dropout)  # refuse what we can't compute before reading any weights
        check_size(config, max_bytes, config_path, {"n_layers": "n_layer", "n_heads": "n_head", "d_model": "n_embd",
                                                    "d_ff": "n_inner", "max_seq_len": "n_positions"}, weights_path)
        with torch.device("meta"):  # the shapes config.json implies, with nothing allocated
            shapes = {k: v.shape for k, v in cls(config).state_dict().items()}
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # stored (in, out)

        def ours(key):  # OpenAI's uploads have no "transformer." prefix, save_pretrained's do
            return "transformer." + key if not key.startswith(("transformer.", "lm_head.")) else key

        def shape_of(key):  # what the file must hold under key; None: not ours (attn.bias/masked_bias: old causal masks)
            k = ours(key)
            if k not in shapes or k.endswith((".attn.bias", ".attn.masked_bias")):
                return None
            if k in ("transformer.wte.weight", "lm_head.weight"):
                return (config.vocab_size, config.d_model)  # the real rows: the padding is ours
            return shapes[k][::-1] if k.endswith(conv1d) else shapes[k]
        sd_hf = {ours(k): v for k, v in read_hf_weights(weights_path, shape_of).items()}
        if all(not v.any() for k, v in sd_hf.items() if k.endswith(".bias")):  # exported from a bias=False model
            config = replace(config, bias=False)
        wanted = [k for k in shapes if (config.bias or not k.endswith(".bias"))  # bias=False: no bias tensors
                  and (k != "lm_head.weight" or not config.tie_weights)]  # a tied head is wte
        missing = [k for k in wanted if k not in sd_hf]
        if missing:  # before the model is built: a file that cannot fill it costs nothing
            raise ValueError(f"{weights_path} lacks {len(missing)} GPT-2 tensors, e.g. {missing[:3]}")
        model = cls(config)
        sd = model.state_dict()
        with torch.no_grad():
            for k in wanted:
                w = sd_hf[k].t() if k.endswith(conv1d) else sd_hf[k]
                sd[k][:w.size(0)].copy_(w)  # (shapes checked as read) wte/lm_head: the padding rows stay 0
        return model

    # ------------------------------------------------------------------------------------------------
    # optimizers

    def configure_optimizers(self, optimizer="adamw", learning_rate=6e-4, weight_decay=0.1, betas=(0.9, 0.95),
                             device_type="cpu"):
        """A list of torch optimizers covering every parameter once; step them all.

        adamw: AdamW, weight decay only on matrices (>= 2-D: linear weights, embeddings), none on
        biases and norm gains. muon: torch.optim.Muon for the 2-D weights inside the blocks (its update
        is orthogonalised, which suits hidden matrices, not embeddings or the head), scaled with
        "match_rms_adamw" so that the same learning_rate and weight_decay work; AdamW for the rest.
        Each param group carries "base_lr", its initial lr, for the training script's schedule."""
        params = [(n, p) for n, p in self.named_parameters() if p.requires_grad]  # a tied matrix appears once
        fused = device_type == "cuda"  # fused AdamW: one kernel for all params
        if optimizer == "adamw":
            adam_params, muon_params = params, []
        elif optimizer == "muon":
            muon_params = [p for n, p in params if n.startswith("transformer.h.") and p.dim() == 2]
            ids = {id(p) for p in muon_params}
            adam_params = [(n, p) for n, p in params if id(p) not in ids]
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected adamw or muon")
        decay = [p for n, p in adam_params if p.dim() >= 2]
        no_decay = [p for n, p in adam_params if p.dim() < 2]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
        optimizers = [torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)]
        if muon_params:
            optimizers.append(torch.optim.Muon(muon_params, lr=learning_rate, weight_decay=weight_decay,
                                               adjust_lr_fn="match_rms_adamw"))
        for opt in optimizers:
            for group in opt.param_groups:
                group["base_lr"] = group["lr"]
        return optimizers

    # ------------------------------------------------------------------------------------------------
    # FLOPs and MFU

    def flops_per_token(self, seq_len):
        """Training FLOPs (forward + backward) per token at sequence length seq_len.

        6 N: each weight of a matmul costs 2 FLOPs (multiply, add) per token forward and 4 backward.
        N counts the 2-D weights of the blocks plus the lm_head over the real vocabulary; the
        embedding lookups are not matmuls, and biases/norms are elementwise (and negligible).
        12 L H hd T: attention scores q.k and the weighted sum of v, 2 * 2 * hd * T FLOPs per head
        forward, times 3 for backward. Like PaLM and nanoGPT we count the full T x T, not the causal
        half, so the numbers compare with theirs."""
        cfg = self.config
        N = sum(p.numel() for p in self.transformer.h.parameters() if p.dim() == 2)
        N -= idle_expert_params(self, matrices_only=True)  # MoE: only the experts a token goes to do work
        N += cfg.vocab_size * cfg.d_model
        return 6 * N + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len

    def estimate_mfu(self, tokens_per_sec, seq_len, device):
        """Model FLOPs utilisation: achieved training FLOPS / the GPU's peak, as a fraction. tokens_per_sec
        is per GPU (divide a global rate by the world size). None where the peak is unknown (CPU, mps,
        a GPU missing from PEAK_FLOPS)."""
        peak = peak_flops(device)
        if peak is None:
            return None
        return tokens_per_sec * self.flops_per_token(seq_len) / peak


GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")


def read_json(path):
    """A JSON object from a model folder's file, or ValueError with a one-line reason."""
    try:
        if os.path.getsize(path) > 64 << 20:  # a config or a shard index is kilobytes: don't parse a giant
            raise ValueError(f"it holds {os.path.getsize(path):,} bytes, too many for a config")
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not readable JSON ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object")
    return value


def check_size(config, max_bytes, where, names=None, weights=None):
    """Refuse a model that would take more than max_bytes before building it, with an error naming its estimated
    size and the fields that make it big. max_bytes None: the smallest of the machine's RAM, this process's
    address-space limit (ulimit -v), its container's memory limit (cgroup memory.max) and NASH_MAX_MODEL_GB when
    set. names: the file's names of our fields (e.g. {"n_layers": "n_layer"} for GPT-2's config.json), so the
    message speaks the file's language. weights: the weights file (or shard index) that goes with the config: one
    far smaller than the model's least weights in 16 bits is refused at once, before a model is even sketched."""
    limits = [(max_bytes, "allowed")] if max_bytes is not None else []
    if max_bytes is None:
        try:
            limits.append((os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "of memory here"))
        except (ValueError, OSError, AttributeError):  # not on every OS
            pass
        try:
            import resource  # POSIX only
            soft = resource.getrlimit(resource.RLIMIT_AS)[0]
            if soft != resource.RLIM_INFINITY:
                limits.append((soft, "this process may use (its address-space limit, ulimit -v)"))
        except (ImportError, ValueError, OSError):
            pass
        try:
            with open("/sys/fs/cgroup/memory.max") as f:
                text = f.read().strip()
            if text.isdigit():
                limits.append((int(text), "its container may use (cgroup memory.max)"))
        except OSError:
            pass
        if "NASH_MAX_MODEL_GB" in os.environ:
            text = os.environ["NASH_MAX_MODEL_GB"]
            try:
                gb = float(text)
            except ValueError:
                gb = float("nan")
            if not gb > 0:
                raise ValueError(f"NASH_MAX_MODEL_GB={text!r} should be a number of GiB, e.g. 16")
            limits.append((int(gb * 2**30), "allowed by NASH_MAX_MODEL_GB"))
    need, c = config.memory_bytes(), config
    field = lambda k: f"{(names or {}).get(k, k)}={getattr(config, k)}"
    if limits and need > min(limits)[0]:
        limit, what = min(limits)
        d, hidden = c.d_model, c.d_ff * max(c.n_experts, 1)
        parts = [(c.vocab_size * d, ("vocab_size", "d_model")),  # which fields the biggest share of the bytes comes from
                 (c.n_layers * d * (4 * d + 3 * hidden), ("n_layers", "d_model", "d_ff") + (("n_experts",) if c.n_experts else ())),
                 (c.max_seq_len * d, ("max_seq_len", "d_model"))]
        raise ValueError(f"{where} describes a model of {need / 2**30:,.1f} GiB, mostly from "
                         f"{', '.join(map(field, max(parts)[1]))}: more than the {limit / 2**30:,.1f} GiB {what}, so it "
                         f"is not loaded (NASH_MAX_MODEL_GB can set a lower limit)")
    if weights is not None:
        files = [weights]
        if weights.endswith(".index.json"):
            shards = read_json(weights).get("weight_map")
            files = [os.path.join(os.path.dirname(weights), os.path.basename(str(f)))
                     for f in set(map(str, shards.values()))] if isinstance(shards, dict) else []
        have = sum(os.path.getsize(f) for f in files if os.path.isfile(f))
        least = 2 * (c.vocab_size * c.d_model + c.n_layers * (2 * c.d_model ** 2 + 2 * c.d_model * c.d_ff * max(c.n_experts, 1)))
        if have < least:  # embeddings, queries, outputs and MLPs alone, in 16 bits, take at least this
            raise ValueError(f"{where} describes a model ({', '.join(map(field, ('n_layers', 'd_model', 'd_ff', 'vocab_size')))}) "
                             f"whose weights take at least {least / 2**20:,.1f} MiB, but {weights} holds "
                             f"{have / 2**20:,.1f} MiB: they do not belong together")


def read_hf_weights(path, shape_of=None):
    """A Hugging Face state dict from model.safetensors, a sharded safetensors index, or pytorch_model.bin (read
    as data: torch.load(weights_only=True) never runs code). Sizes are taken from the file before anything is read:
    shape_of(key) -> the shape the model expects of a tensor, or None where it is not needed (then it is not read),
    so a tensor of the wrong size is refused before it is allocated. A damaged or hostile file is a ValueError
    naming the file and what is wrong with it."""
    if path.endswith(".index.json"):
        shards = read_json(path).get("weight_map")
        if not isinstance(shards, dict):
            raise ValueError(f"{path} has no weight_map")
        sd = {}
        for shard in sorted(set(map(str, shards.values()))):
            if os.path.basename(shard) != shard:
                raise ValueError(f"{path} names a shard outside its folder: {shard!r}")
            sd.update(read_hf_weights(os.path.join(os.path.dirname(path), shard), shape_of))
        return sd
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    if path.endswith(".safetensors"):
        # read by hand (the format is 8 bytes of header length, a JSON header of dtype, shape and byte offsets per
        # tensor, then the data): every size is checked against the file and the model before a byte is allocated.
        # Not the safetensors library: safe_open (0.8) maps the whole file before it parses the header, so under a
        # memory limit a file with an oversized tensor fails to map instead of being refused by its shape, and an
        # honest model needs its file's size in address space twice (tests/test_model_files.py wrong_shape)
        dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool}
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, 100 << 20):  # safetensors' own cap on a header: 100 MB
                raise ValueError(f"{path} is not a readable safetensors file: its header claims {n:,} bytes, but the "
                                 f"file holds {max(size - 8, 0):,} after the length (truncated, or not safetensors)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, RecursionError) as e:
                raise ValueError(f"{path} is not a readable safetensors file: its header is not JSON "
                                 f"({str(e).splitlines()[0][:100]})") from None
            if not isinstance(header, dict):
                raise ValueError(f"{path} is not a readable safetensors file: its header is not a JSON object")
            header.pop("__metadata__", None)
            data, wanted = size - 8 - n, {}
            for key, info in header.items():
                try:
                    dtype, shape, (start, end) = dtypes[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
                    ok = all(type(v) is int and v >= 0 for v in (*shape, start, end))
                except (KeyError, TypeError, ValueError):
                    ok = False
                if not ok:
                    raise ValueError(f"{path} is not a readable safetensors file: its header describes {key!r} as "
                                     f"{str(info)[:100]}")
                if end - start != math.prod(shape) * dtype.itemsize or end > data:
                    raise ValueError(f"{path} is truncated or damaged: {key} {list(shape)} ({dtype}) takes bytes "
                                     f"{start:,} to {end:,} of its data, which ends at {data:,}")
                expected = shape_of(key) if shape_of else shape
                if expected is not None and tuple(expected) != shape:
                    raise ValueError(f"{path} holds {key} of shape {shape}, expected {tuple(expected)} from config.json")
                if expected is not None:
                    wanted[key] = (dtype, shape, start, end)
            sd = {}
            for key, (dtype, shape, start, end) in wanted.items():
                buf = torch.empty(end - start, dtype=torch.uint8)
                f.seek(8 + n + start)
                if f.readinto(buf.numpy()) != end - start:
                    raise ValueError(f"{path} changed while it was read")
                sd[key] = buf.view(dtype).reshape(shape)
            return sd
    import warnings
    import zipfile
    try:
        with warnings.catch_warnings():  # (torch warns about old pickle protocols: noise here)
            warnings.simplefilter("ignore")
            try:  # mapped, not read: a tensor's bytes are only read when it is used, after its shape is checked
                sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                sd = torch.load(path, map_location="cpu", weights_only=True)  # torch's old (not zip) format: read it
    except Exception as e:  # UnpicklingError, RuntimeError, EOFError, KeyError...: say what, never torch's advice
        text = str(e)
        if "GLOBAL" in text or "Unsupported global" in text:
            reason = "it holds Python objects, not just tensors, and loading it would run code"
        elif not zipfile.is_zipfile(path):
            reason = "it is not a torch file (neither a zip archive nor a pickle of tensors: truncated, or another kind)"
        else:
            lines = [line for line in text.splitlines() if line.strip() and "eights only" not in line
                     and "weights_only" not in line] or [type(e).__name__]
            reason = f"a damaged torch file ({lines[-1].strip()[:200]})"
        raise ValueError(f"{path} is not a readable weights file: {reason}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    if shape_of:
        for key, v in sd.items():
            expected = shape_of(key)
            if expected is not None and tuple(expected) != tuple(v.shape):
                raise ValueError(f"{path} holds {key} of shape {tuple(v.shape)}, expected {tuple(expected)} from config.json")
        sd = {k: v for k, v in sd.items() if shape_of(k) is not None}
    return sd


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from logits (B, V): greedy when temperature == 0, else sample from
    softmax(logits / temperature) restricted to the top_k tokens and then to the nucleus top_p. generator: one
    torch.Generator, or a list of one per row."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # keep the smallest set of most likely tokens whose probabilities add up to >= top_p:
        # drop a token when the ones ranked above it already reach top_p (the first one always stays)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = F.softmax(logits, dim=-1)
    if isinstance(generator, (list, tuple)):  # one per row: a row's draws do not depend on the other rows
        return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generator)])
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


# Peak dense (no sparsity) 16-bit tensor-core FLOPS per GPU, bf16 where it exists (fp16 for V100/T4),
# with fp32 accumulation (GeForce cards run at half rate with it). Matched against
# torch.cuda.get_device_name as a case-insensitive substring, longest key first, so that "H100 PCIe"
# wins over "H100" and "L40S" over "L4". Unknown GPUs get no MFU rather than a wrong one.
PEAK_FLOPS = {
    "B200": 2250e12,
    "GH200": 989e12,
    "H200": 989e12,        # H200 SXM
    "H200 NVL": 835e12,
    "H100": 989e12,        # H100 SXM, e.g. "NVIDIA H100 80GB HBM3"
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "A100": 312e12,        # SXM and PCIe alike
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,        # SXM2
    "V100-PCIE": 112e12,
    "Tesla T4": 65e12,
    "MI300X": 1307e12,
}


def peak_flops(device):
    """Peak dense 16-bit FLOPS of a CUDA device, or None (CPU, mps, or a GPU not in PEAK_FLOPS)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    try:
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # no CUDA here after all
        return None
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return PEAK_FLOPS[key]
    return None
