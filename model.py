"""
The GPT language model, in one file.

Defaults are OpenAI's GPT-2 small (124M): learned positions, pre-LayerNorm, tanh-GELU MLP, tied
embeddings. Switches bring in the modern parts (RoPE, RMSNorm, SwiGLU/ReLU², GQA/MQA, QK-norm,
untied head, Mixture-of-Experts MLP in moe.py, attention sink tokens). Also here, because they need
to know the model's insides:
- generation with a KV cache (kvcache.py: exact, or rolling past the context), streamed or not,
- the optimizers (AdamW, or Muon for the hidden matrices + AdamW for the rest),
- FLOPs per token and MFU against a table of per-GPU peaks.
Only torch is needed to import this file. Hugging Face loading and export live in hf.py; the fused
chunked training loss in loss.py; the KV caches in kvcache.py.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvcache import KVCache, RollingKVCache
from loss import chunked_cross_entropy
from moe import MoE, idle_expert_params


@dataclass
class GPTConfig:
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None = n_heads; fewer = GQA; 1 = MQA
    d_model: int = 768
    d_ff: int = 3072               # MLP hidden size (swiglu: size of each of gate and up)
    max_seq_len: int = 1024
    vocab_size: int = 50257
    dropout: float = 0.1
    bias: bool = True              # biases in Linear and LayerNorm (False is a bit faster)
    pos_emb: str = "learned"       # learned | rope
    norm: str = "layernorm"        # layernorm | rmsnorm
    mlp: str = "gelu"              # gelu | swiglu | relu2
    qk_norm: bool = False
    tie_weights: bool = True
    rope_theta: float = 10000.0
    pad_vocab_multiple: int = 64   # embedding/lm_head rows padded to a multiple of this for speed (50257 -> 50304); 1 = no padding
    n_experts: int = 0             # Mixture-of-Experts MLP with this many experts (moe.py); 0 = dense MLP
    experts_top_k: int = 2         # experts each token is routed to
    moe_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss (Switch uses 0.01)
    attn_sinks: int = 0            # learnable sink tokens in front of every sequence (kvcache.py); 0 = none

    def __post_init__(self):
        for name in ("n_layers", "n_heads", "d_model", "d_ff", "max_seq_len", "vocab_size", "pad_vocab_multiple"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
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
        if self.rope_theta <= 0:
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


def make_norm(config, dim):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    return nn.LayerNorm(dim, eps=1e-5, bias=config.bias)  # GPT-2's eps


def apply_rope(x, cos, sin):
    # x: (B, T, n_heads, head_dim); rotate the pairs (i, i + head_dim/2) by angle pos * freq_i
    # (the "half split" layout of GPT-NeoX / Llama / nanochat, not the interleaved one)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


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
            # RMSNorm over the head dim, with a gain shared by all heads. We normalise *before* RoPE
            # (as Qwen3, OLMo 2, Gemma 3): RoPE is a rotation, so it leaves the RMS unchanged and the
            # order would not matter without a gain; but a per-dim gain applied after the rotation
            # would scale the two halves of each rotated pair differently and make q.k depend on
            # absolute position, which is exactly what RoPE exists to avoid.
            self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-5)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos_sin=None, kv_cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split([self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim,
                                        self.n_kv_heads * self.head_dim], dim=2)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        rotate_later = isinstance(kv_cache, RollingKVCache)  # it re-positions the keys at every step
        if cos_sin is not None:
            q = apply_rope(q, *cos_sin)
            k = k if rotate_later else apply_rope(k, *cos_sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hd)

        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # now every position so far: (B, n_kv, pos0+T, hd)
            if rotate_later:
                k = apply_rope(k, *kv_cache.key_rope)
        pos0 = k.size(2) - T  # how many earlier positions our T queries can also see
        mask, is_causal = None, True
        if pos0 > 0:
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


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config, layer_idx):
        super().__init__()
        self.ln_1 = make_norm(config, config.d_model)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config, config.d_model)
        self.mlp = MoE(config, MLP) if config.n_experts else MLP(config)

    def forward(self, x, cos_sin=None, kv_cache=None):
        x = x + self.attn(self.ln_1(x), cos_sin, kv_cache)
        x = x + self.mlp(self.ln_2(x))
        return x


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
        if config.attn_sinks:  # learned input vectors, prepended to every sequence: see kvcache.py for why
            self.sinks = nn.Parameter(torch.empty(config.attn_sinks, config.d_model).normal_(0.0, 0.02))

        # GPT-2 init: N(0, 0.02) everywhere, zero biases, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 n_layers) so its variance doesn't grow with depth
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        with torch.no_grad():  # padding rows: zero, and they stay zero (no gradient ever reaches them)
            self.transformer.wte.weight[config.vocab_size:].zero_()
            self.lm_head.weight[config.vocab_size:].zero_()

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

    def _trunk(self, idx, kv_cache=None):
        """Token ids (B, T) -> final normalised hidden states (B, T, C). With a cache, idx continues it."""
        B, T = idx.size()
        n_sinks = self.config.attn_sinks
        past = kv_cache.pos if kv_cache is not None else 0  # cached positions, the sinks included
        tok0 = max(past - n_sinks, 0)  # tokens before idx
        if tok0 + T > self.config.max_seq_len and not isinstance(kv_cache, RollingKVCache):
            raise ValueError(f"sequence of {tok0 + T} positions is longer than max_seq_len ({self.config.max_seq_len})")
        x = self.transformer.wte(idx)
        if self.config.pos_emb == "learned":  # (the sinks get none: they are learned vectors already)
            x = x + self.transformer.wpe(torch.arange(tok0, tok0 + T, device=idx.device))
        if n_sinks and past == 0:  # a fresh sequence: the sinks go first
            x = torch.cat([self.sinks.to(x.dtype).expand(B, -1, -1), x], dim=1)
        n = x.size(1)
        cos_sin = None
        if self.config.pos_emb == "rope":  # RoPE positions count the sinks: (n, hd/2) -> (1, n, 1, hd/2)
            p0 = kv_cache.slot(n) if kv_cache is not None else 0
            cos_sin = (self.rope_cos[None, p0:p0 + n, None, :], self.rope_sin[None, p0:p0 + n, None, :])
            if isinstance(kv_cache, RollingKVCache):  # every cached key rotated at its slot: (1, 1, p0 + n, hd/2)
                kv_cache.key_rope = (self.rope_cos[None, None, :p0 + n], self.rope_sin[None, None, :p0 + n])
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cos_sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(n)
        return self.transformer.ln_f(x[:, n - T:])  # the sinks' outputs predict nothing

    def forward(self, idx, targets=None, return_logits=True):
        """idx (B, T) token ids -> (logits (B, T, vocab_size), loss or None).

        targets (B, T): the next token at each position; -1 marks positions without loss (SFT masks
        prompts this way). The loss is the mean cross-entropy over the other positions, in float32;
        if every target is -1 the loss is 0 (still attached to the graph, so backward() just works).
        return_logits=False (training): logits come back as None and the loss is computed in chunks of
        rows that never hold the whole (B, T, V) logits or their gradient (see chunked_cross_entropy);
        same loss and gradients, less memory, and faster on a CPU."""
        x = self._trunk(idx)
        # Only the real vocabulary's rows of the head take part: lm_head.weight[:vocab_size] is a
        # contiguous view, so the matmul writes the (B, T, vocab_size) logits directly. (Computing the
        # padded width and slicing it copied the whole logits and zero-filled a padded gradient every
        # step: ~20% of a CPU step.) The padding rows only serve the embedding's lookup table.
        head = self.lm_head.weight[:self.config.vocab_size]
        logits = loss = None
        if targets is not None and not return_logits:
            loss = chunked_cross_entropy(x, head, targets)
        else:
            logits = F.linear(x, head)
            if targets is not None:
                loss_sum = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                                           ignore_index=-1, reduction="sum")
                loss = loss_sum / (targets != -1).sum().clamp(min=1)  # "mean" would give NaN when all are ignored
        if loss is not None and self.config.n_experts and self.training:  # the training loss carries the balancing
            loss = loss + self.config.moe_aux_loss_coef * self.moe_aux_loss()
        return logits, loss

    def moe_aux_loss(self):
        """The load-balancing loss of the last forward, averaged over layers (so its weight does not grow
        with depth); attached to the graph. Each layer's expert load: block.mlp.load."""
        return torch.stack([block.mlp.aux_loss for block in self.transformer.h]).mean()

    # ------------------------------------------------------------------------------------------------
    # generation

    def _last_logits(self, idx, kv_cache=None):
        x = self._trunk(idx, kv_cache)
        return F.linear(x[:, -1], self.lm_head.weight[:self.config.vocab_size]).float()  # only the last position is needed

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

        rolling_cache=True (RoPE only): StreamingLLM's cache instead (kvcache.py): the sinks, or the
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
                    logits = self._last_logits(next_tok[:, None], cache)
                elif rolling_cache:
                    logits = self._last_logits(idx[:, :S], cache)
                    for t in range(S, idx.size(1)):
                        logits = self._last_logits(idx[:, t:t + 1], cache)
                elif cache is None:
                    logits = self._last_logits(window)
                elif cache.pos == n_sinks + window.size(1) - 1:  # cache holds all but the newest token: feed just that
                    logits = self._last_logits(window[:, -1:], cache)
                else:  # first step, or the window slid: (re)prefill the whole window
                    cache.reset()
                    logits = self._last_logits(window, cache)
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

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """GPT-2 from the hub (gpt2 ... gpt2-xl) or a local Hugging Face folder: see hf.load_pretrained."""
        from hf import load_pretrained  # hf.py holds all Hugging Face conversion; imported here, it imports us
        return load_pretrained(name_or_dir, dropout)

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


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row from logits (B, V): greedy when temperature == 0, else sample from
    softmax(logits / temperature) restricted to the top_k tokens and then to the nucleus top_p."""
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
