"""
The GPT language model, in one file that needs only torch (copy it anywhere: `import model` works).

Defaults are OpenAI's GPT-2 small (124M): learned positions, pre-LayerNorm, tanh-GELU MLP, tied
embeddings. Switches bring in the modern parts: RoPE, RMSNorm, SwiGLU/ReLU², GQA/MQA, QK-norm, an
untied head, a Mixture-of-Experts MLP, learnable attention-sink tokens. Also here, because they need the
model's insides: the one training/eval loss (fused with the lm_head in chunks, or plain: same numbers),
the optimizers (AdamW, or Muon for the hidden matrices) and FLOPs per token.

The model computes; it does not decode or read files. Attention takes an optional kv_cache (the caches and
the one decode loop, with its sampler, live in nash/kv_cache.py and nash/engine.py); `generate` here is a
short uncached sampler, so that a copied file still samples and the engine's tests have an oracle.
Weights from files: nash/hf.py (Hugging Face folders, checked) and nash/checkpoint.py (our runs);
GPT.from_pretrained is nanoGPT's thin GPT-2 loader through transformers, for a copied file. The reasoning
behind the attention sinks, the rolling cache and the MoE routing is in docs/model.md.
"""
import math
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
    score_head: bool = False       # a scalar score head beside the lm_head (a verifier, objective=verifier): GPT.score

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
        if self.attn_sinks > self.max_seq_len:  # every forward attends over them: a few (StreamingLLM's 4) do the job
            raise ValueError(f"attn_sinks ({self.attn_sinks}) cannot exceed max_seq_len ({self.max_seq_len})")
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
        return 4 * (V * d * (1 if self.tie_weights else 2) + L * block + tables + d * (self.score_head + self.attn_sinks))


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


def is_plain_cross_entropy(loss_fn, _seen={}):
    """Whether loss_fn (token_loss) computes plain cross-entropy, checked once on a small random input: then the
    fused path writes its gradient, softmax - onehot, in place (~20% of a CPU training step, bench.py); an edited
    token_loss (a z-loss, a soft-cap) fails the check and is differentiated by autograd."""
    if loss_fn not in _seen:
        logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0)).requires_grad_()
        t = torch.tensor([0, 3, 6, 2])
        with torch.enable_grad():  # (called inside an autograd.Function's forward, where grad mode is off)
            (grad,) = torch.autograd.grad((loss := loss_fn(logits, t)).sum(), logits)
        want = torch.logsumexp(logits, 1) - logits[torch.arange(4), t]
        _seen[loss_fn] = (torch.allclose(loss, want, atol=1e-6)
                          and torch.allclose(grad, torch.softmax(logits, 1) - F.one_hot(t, 7), atol=1e-6))
    return _seen[loss_fn]


def chunked_cross_entropy(x, weight, targets, chunk_rows=None):
    """Mean token_loss of the logits x @ weight.T against targets (-1 = no loss), without ever holding the
    whole logits: x (..., C) hidden states, weight (V, C) the head, targets (...). 0 when every target is -1.

    chunk_rows: rows per chunk; default 256 on CPU (fastest of 128-1024 there, measured) and 1024 on a GPU."""
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)
    keep = targets != -1
    x, targets = x[keep], targets[keep]  # masked rows (SFT prompts, padding) cost nothing
    rows = chunk_rows or (256 if x.device.type == "cpu" else 1024)
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
        plain = needs_grad and is_plain_cross_entropy(token_loss)
        # (rows, V): the only logits at any time, in one buffer for every chunk (a fresh one paid its page faults)
        buf = torch.empty(min(rows, x.size(0)), weight.size(0), device=x.device) if x.dtype == torch.float32 else None
        for i in range(0, x.size(0), rows):
            xc, tc = x[i:i + rows], targets[i:i + rows]
            logits = torch.matmul(xc, weight.t(), out=buf[:len(tc)]) if buf is not None else (xc @ weight.t()).float()
            if not needs_grad:
                loss += token_loss(logits, tc).sum()
                continue
            if plain:  # its gradient is softmax - onehot: written over the logits, no autograd temporaries
                top, picked = logits.amax(1, keepdim=True), logits.gather(1, tc[:, None])
                total = logits.sub_(top).exp_().sum(1, keepdim=True)
                loss += (total.log() + top - picked).sum()
                grad = logits.div_(total)
                grad[torch.arange(len(tc), device=x.device), tc] -= 1
            else:
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

    def forward(self, idx, targets=None, return_logits=True, reduction="mean", last=None, temperature=1.0):
        """idx (B, T) token ids -> (logits (B, T, vocab_size) or None, loss or None).
        last (B,): the score head's logits instead, (B,) (score(); through forward so DDP and compile see it).
        temperature: logits / temperature and the loss under that distribution (RL scores rollouts sampled at T).

        targets (B, T): the next token at each position; -1 marks positions without loss (SFT masks prompts
        this way). reduction="mean": the mean token_loss over the other positions (0 when there are none,
        still attached to the graph); "none": each position's loss, (B, T), 0 where the target is -1 (DPO's
        and RL's per-sequence sums). return_logits=False (training): no logits come back, and the mean loss
        is fused with the head in chunks (chunked_cross_entropy): same loss and gradients, far less memory.
        In training mode the MoE load-balancing loss is added to the mean (moe_aux_loss reads it alone)."""
        if last is not None:
            return self.score(idx, last), None
        x = self.hidden_states(idx)
        if temperature != 1:  # logits / T == (x / T) @ head: scaled before the head, so no path builds extra logits
            x = x / temperature
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
            raise ValueError("this model has no score head (score_head=False): train one with objective=verifier")
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
    # generation, the simple way

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, generator=None, stop_token=None):
        """idx (B, T0) followed by up to max_new_tokens sampled tokens: each step a full forward over the last
        max_seq_len tokens, no cache, greedy at temperature 0 (nanoGPT's loop). Slow and obviously right: what
        a copied model.py samples with, and the oracle the engine's cached decoding is tested against
        (nash/engine.py has the cache, top-k/top-p and per-row stops). A row that emitted stop_token keeps
        emitting it; generation ends when every row has."""
        was_training, done = self.training, torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        self.eval()
        for _ in range(max_new_tokens):
            logits = self.next_logits(idx[:, -self.config.max_seq_len:])
            if temperature == 0:
                tok = logits.argmax(dim=-1)
            else:
                tok = torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=generator).squeeze(-1)
            if stop_token is not None:
                tok = torch.where(done, torch.full_like(tok, stop_token), tok)
                done |= tok == stop_token
            idx = torch.cat([idx, tok[:, None]], dim=1)
            if stop_token is not None and bool(done.all()):
                break
        self.train(was_training)
        return idx

    # ------------------------------------------------------------------------------------------------
    # OpenAI's GPT-2 weights, for a copied model.py

    @classmethod
    def from_pretrained(cls, name_or_dir, dropout=0.0):
        """OpenAI's GPT-2 (gpt2 .. gpt2-xl, or a local GPT-2 folder), nanoGPT's way: transformers (imported here
        only) reads the weights; our names are GPT-2's, so they copy straight over, the Conv1D matrices that
        GPT-2 stores as (in, out) transposed. The project itself loads through nash/hf.py: no transformers
        needed, every size checked before a byte is read, Llama/Qwen3/Mixtral too."""
        from transformers import GPT2LMHeadModel
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        c = hf.config
        model = cls(GPTConfig(n_layers=c.n_layer, n_heads=c.n_head, d_model=c.n_embd, d_ff=c.n_inner or 4 * c.n_embd,
                              max_seq_len=c.n_positions, vocab_size=c.vocab_size, dropout=dropout,
                              tie_weights=c.tie_word_embeddings))
        sd, conv1d = model.state_dict(), ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        with torch.no_grad():
            for k, w in hf.state_dict().items():
                if k in sd:  # (old files' attn.bias causal masks are not weights)
                    w = w.t() if k.endswith(conv1d) else w
                    sd[k][:w.size(0)].copy_(w)  # wte / lm_head: the padding rows stay zero
        return model

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
        # fused AdamW: one pass over each tensor for the whole update, on CUDA and on CPU too, where the foreach
        # version's separate sqrt/mul/lerp/addcdiv passes over the embedding took ~1/6 of a small model's step
        fused = device_type in ("cuda", "cpu")
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
    # FLOPs

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
