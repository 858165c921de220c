"""
LoRA adapters for our GPT (Hu et al. 2021): y = W x + b + (alpha / r) * B A dropout(x), with W and b frozen and
only A (r x in) and B (out x r) trained. B starts at zero, so a fresh adapter changes nothing.

    model = apply_lora(model, rank=8, alpha=16, dropout=0.0, targets="attention")   # wraps, freezes the base
    adapter_state_dict(model)      # only the adapters: what an adapter checkpoint holds
    with adapters_disabled(model): # the base model again, no second copy (DPO's reference)
    merge_lora(model)              # folds B A into W: a plain GPT, as fast as before, every weight trainable

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

# settings of LoRA, for the fine-tuning objectives (train.py merges them into its own: --lora_rank=8 etc.)
lora_rank = 0  # rank of the adapters; 0 = off (every weight trains)
lora_alpha = 16.0  # the adapters' output is scaled by lora_alpha / lora_rank (peft's convention)
lora_dropout = 0.0  # dropout on the adapters' input
lora_targets = "attention"  # attention (fused q,k,v + output projection) | mlp (up/gate + down projection) | all

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
    """Fold every adapter into its weight and put plain nn.Linear layers back. In place; returns the model, a plain
    GPT again: apply_lora's freeze is undone too, so that a merged LoRA run fine-tunes like any other model (with
    its weights left frozen, full fine-tuning from it had nothing to train)."""
    for name, m in lora_layers(model):
        parent_name, _, child = name.rpartition(".")
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device=m.weight.device)
        plain.weight, plain.bias = m.weight, m.bias
        plain.weight.add_(m.delta_weight().to(m.weight.dtype))
        setattr(model.get_submodule(parent_name), child, plain)
    return model.requires_grad_(True)


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
        t = state_dict[k].detach().flatten()
        h.update(f"{k}{tuple(state_dict[k].shape)}".encode())
        h.update(t[::max(1, t.numel() // 4096)].float().cpu().numpy().tobytes())  # sample first: no full copy
    return h.hexdigest()


# -----------------------------------------------------------------------------
# peft's format: adapter_config.json + adapter_model.safetensors, for the Hugging Face export of the base

def to_peft(adapters, info, config, arch, key_map):
    """(adapter_config, tensors) in peft's format for our adapters on the Hugging Face layout arch.

    key_map (hf.key_map) says which HF tensors each of our weights is stacked from. A fused layer's adapter
    (one A, one B) becomes one adapter per HF module: each gets the shared A and its own rows of B, so
    B_q A, B_k A, B_v A are exactly the rows of B A: the same function, at the same rank. GPT-2 keeps c_attn
    fused (Conv1D, hence fan_in_fan_out); Llama/Qwen3 split it into q/k/v_proj and SwiGLU's c_fc into
    gate/up_proj."""
    parts_of = {ours: parts for ours, parts, _ in key_map(config, arch)}
    tensors, targets = {}, set()
    for key, A in adapters.items():
        if not key.endswith(".lora_A.weight"):
            continue
        layer = key[:-len(".lora_A.weight")]
        B = adapters[layer + ".lora_B.weight"]
        parts = parts_of[layer + ".weight"]
        for (hf_key, rows), B_rows in zip(parts, B.split([rows for _, rows in parts])):
            module = hf_key[:-len(".weight")]
            tensors[f"base_model.model.{module}.lora_A.weight"] = A.detach().float().contiguous().clone()
            tensors[f"base_model.model.{module}.lora_B.weight"] = B_rows.detach().float().contiguous().clone()
            targets.add(".".join(module.split(".")[-2:]))  # attn.c_proj, not mlp.c_proj: peft matches suffixes
    adapter_config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": None, "revision": None,
        "r": info["rank"], "lora_alpha": info["alpha"], "lora_dropout": info["dropout"], "bias": "none",
        "target_modules": sorted(targets), "fan_in_fan_out": arch == "gpt2", "use_rslora": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "layers_to_transform": None,
    }
    return adapter_config, tensors


def export_peft(state, config, output, force=False):
    """Write the adapters of an adapter checkpoint to output as peft's adapter_config.json +
    adapter_model.safetensors, for `peft.PeftModel.from_pretrained(<the base exported by export.py>, output)`.
    Written in a temporary folder beside output and renamed into place. Returns the base it adapts."""
    import json
    import os
    import shutil
    import tempfile

    from safetensors.torch import save_file

    from nash import hf
    arch = hf.architecture(config)  # the same refusal as the base's export: no exact HF layout, no adapter
    hf.check_output(output, force)
    adapter_config, tensors = to_peft(state["model"], state["lora"], config, arch, hf.key_map)
    base = state["lora"]["base"]
    adapter_config["base_model_name_or_path"] = base if os.path.isdir(base) or not os.path.exists(base) else None
    parent = hf.make_parent(output)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.", suffix=".tmp", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        os.chmod(os.path.join(tmp, "adapter_model.safetensors"), 0o644)  # safetensors writes it 0600
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(adapter_config, f, indent=2)
        os.chmod(tmp, 0o755)
        if os.path.isdir(output):  # empty, or force (check_output refused the rest)
            shutil.rmtree(output)
        os.rename(tmp, output)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return base
