"""
LoRA adapters for our GPT (Hu et al. 2021): y = W x + b + (alpha / r) * B A dropout(x), with W and b frozen and
only A (r x in) and B (out x r) trained. B starts at zero, so a fresh adapter changes nothing.

    model = apply_lora(model, rank=8, alpha=16, dropout=0.0, targets="attention")   # wraps, freezes the base
    adapter_state_dict(model)      # only the adapters: what an adapter checkpoint holds
    with adapters_disabled(model): # the base model again, no second copy (DPO's reference)
    merge_lora(model)              # folds B A into W: a plain GPT, as fast as before

Names follow peft: a wrapped layer keeps its `weight` and `bias` under the same names and gains `lora_A.weight`
and `lora_B.weight`, so `transformer.h.0.attn.c_attn.lora_A.weight` is peft's key for the same layer of a
GPT-2 in transformers (minus peft's `base_model.model.` prefix), and the base keys load into a plain GPT.

Targets, in our module names (model.py):
    attention  attn.c_attn (q, k, v fused) and attn.c_proj (the output projection)
    mlp        mlp.c_fc (up; for swiglu gate and up fused) and mlp.c_proj (down)
    all        both
A fused layer gets one adapter: one A shared by q, k and v, and one B whose rows are q's, k's and v's. That is
exactly peft's GPT-2 (whose c_attn is fused too), and splits exactly into per-projection Llama adapters
(q_proj, k_proj, v_proj) of the same rank: each gets the shared A and its own rows of B (see peft_state_dict).
"""
import contextlib
import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

TARGETS = {
    "attention": ("attn.c_attn", "attn.c_proj"),
    "mlp": ("mlp.c_fc", "mlp.c_proj"),
    "all": ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
}


class LoRALinear(nn.Linear):
    """An nn.Linear with a low-rank adapter beside it. Shares the wrapped layer's weight and bias tensors."""

    def __init__(self, base, rank, alpha, dropout):
        nn.Module.__init__(self)  # not nn.Linear's: that would allocate a fresh weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # peft's init: A random, B zero
        nn.init.zeros_(self.lora_B.weight)
        self.disabled = False

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.disabled:
            return y
        return y + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self):
        """The (out, in) matrix the adapter adds to the weight."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, rank={self.rank}, alpha={self.alpha}"


def check_settings(rank, alpha, dropout, targets):
    """A problem with the LoRA settings as one sentence, or None."""
    if not isinstance(rank, int) or rank < 0:
        return f"lora_rank={rank!r} must be a whole number >= 0 (0 turns LoRA off)"
    if alpha <= 0:
        return f"lora_alpha={alpha} must be positive (the adapters are scaled by lora_alpha / lora_rank)"
    if not 0.0 <= dropout < 1.0:
        return f"lora_dropout={dropout} must be in [0, 1)"
    if targets not in TARGETS:
        return f"lora_targets={targets!r} should be one of {', '.join(TARGETS)}"
    return None


def target_names(model, targets):
    """Full names of the nn.Linear layers that `targets` selects, in model order."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.startswith("transformer.h.") and name.endswith(TARGETS[targets])]


def apply_lora(model, rank, alpha=16.0, dropout=0.0, targets="attention"):
    """Wrap the target layers with adapters and freeze everything else. In place; returns the model."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name in target_names(model, targets):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, alpha, dropout))
    return model


def lora_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def adapter_state_dict(model):
    """Only the adapters' tensors, under peft-style names."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def load_adapters(model, state):
    """Load adapter tensors into a model that apply_lora wrapped the same way; one clear error otherwise."""
    own = adapter_state_dict(model)
    if set(own) != set(state):
        extra, missing = sorted(set(state) - set(own)), sorted(set(own) - set(state))
        raise ValueError(f"the adapters do not fit this model (unexpected {extra[:2]}, missing {missing[:2]})")
    model.load_state_dict(state, strict=False)


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model for the duration: every adapter off (DPO's reference without a second copy)."""
    layers = [m for _, m in lora_layers(model)]
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its weight and put plain nn.Linear layers back. In place; returns the model."""
    for name, m in lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device)
        plain.weight, plain.bias = m.weight, m.bias
        plain.weight.add_(m.delta_weight().to(m.weight.dtype))
        setattr(model.get_submodule(parent_name), child, plain)
    return model


def count_trainable(model):
    """(trainable parameters, all parameters), each tensor counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def fingerprint(state_dict):
    """A short hash of a model's weights (every tensor's shape and a strided sample of its values), stored in an
    adapter checkpoint so that loading it onto a base whose weights have changed since fails clearly."""
    h = hashlib.blake2b(digest_size=8)
    for k in sorted(state_dict):
        if ".lora_A." in k or ".lora_B." in k:
            continue
        t = state_dict[k].detach().float().flatten().cpu()
        h.update(f"{k}{tuple(state_dict[k].shape)}".encode())
        h.update(t[::max(1, t.numel() // 4096)].numpy().tobytes())
    return h.hexdigest()
