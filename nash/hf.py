"""
Hugging Face interop, both ways, in one place: our GPT <-> transformers' GPT-2, Llama and Qwen3 layouts.

    export_model(model, "export/")      # config.json, model.safetensors, generation_config.json, tokenizer, card
    model = load_pretrained("export/")  # any HF folder of those layouts (or gpt2..gpt2-xl from the hub) -> GPT

The pieces, for code that builds on them (adapters, other layouts, other tokenizers):
    architecture(config) -> 'gpt2' | 'llama' | 'qwen3', or ExportError naming the setting in the way
    hf_config(config, arch) / config_from_hf(hf_dict)     our GPTConfig <-> config.json
    key_map(config, arch)                                 our tensor names <-> HF tensor names and row slices
    to_hf_state_dict(sd, config, arch) / from_hf_state_dict(sd_hf, config, arch, into)
    tokenizer.write_gpt2_tokenizer / write_trained_tokenizer   the tokenizer files; export_model takes either
    is_hf_folder(path), read_hf_weights(path)             recognising and reading HF folders
    read_json(path), check_size(config, ...)               a config file, and a model that fits in memory

Exact or refused: a model exports only to a transformers class that computes the very same function, and
an HF folder loads only if our model computes what transformers would. Which class, by our settings:
- learned positions + LayerNorm + tanh-GELU, no GQA, no QK-norm   -> GPT2LMHeadModel (bias=False: zero biases)
- RoPE + RMSNorm + SwiGLU, no QK-norm (GQA, bias, tying any way)  -> LlamaForCausalLM
- the same + QK-norm, no bias                                     -> Qwen3ForCausalLM
- RoPE + RMSNorm + SwiGLU experts (n_experts, experts_top_k >= 2),
  no bias, no QK-norm                                              -> MixtralForCausalLM
  (Mixtral routes as model.py's MoE does: softmax over all experts in float32, top k, renormalised; with k = 1 ours
  keeps the raw probability, Switch-style, where Mixtral's weight would be 1, so k = 1 is refused)
Attention-sink tokens (attn_sinks) have no transformers equivalent: refused.
  (Qwen3's q_norm/k_norm: RMSNorm over head_dim, one gain shared by all heads, before RoPE, the model's
  rms_norm_eps: exactly our qk_norm; its MLP has no biases, so bias=True does not export there)
Our RoPE rotates the halves (i, i + head_dim/2) of each head, as HF's rotate_half does, so the q/k rows need
no permutation. Every norm here uses eps 1e-5 (model.py), written as layer_norm_epsilon / rms_norm_eps.

The weight mapping is one table (key_map): each of our tensors is the concatenation, along its rows, of
one or more HF tensors (c_attn = q|k|v, SwiGLU's c_fc = gate|up). Converting either way walks that table,
so export and load cannot disagree. Padded vocabulary rows are dropped on export and re-added on load.
Only torch is needed to import this file; safetensors / huggingface_hub are imported when used.
"""
import json
import math
import os
import shutil
import tempfile

import torch

from model import GPT, GPTConfig
from nash.tokenizer import write_gpt2_tokenizer

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # OpenAI's, downloaded from the hub
GPT2_FIELDS = {"n_layers": "n_layer", "n_heads": "n_head", "d_model": "n_embd", "d_ff": "n_inner",
               "max_seq_len": "n_positions"}  # GPT-2's config.json names of our fields
HF_NAMES = {"n_layers": "num_hidden_layers", "n_heads": "num_attention_heads", "d_model": "hidden_size",
            "d_ff": "intermediate_size", "max_seq_len": "max_position_embeddings", "n_experts": "num_local_experts"}
NORM_EPS = 1e-5  # model.py's eps for every LayerNorm / RMSNorm
CLASSES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "mixtral": "MixtralForCausalLM"}
# a verifier (score_head=True) exports as its layout's sequence classifier: one label, the score read at each row's
# last token that is not pad_token_id (transformers takes the rightmost one, so right padding works)
SEQUENCE_CLASSES = {"gpt2": "GPT2ForSequenceClassification", "llama": "LlamaForSequenceClassification",
                    "qwen3": "Qwen3ForSequenceClassification", "mixtral": "MixtralForSequenceClassification"}
EXPORTABLE = ("GPT2LMHeadModel: pos_emb=learned, norm=layernorm, mlp=gelu, no GQA, qk_norm=False; "
              "LlamaForCausalLM: pos_emb=rope, norm=rmsnorm, mlp=swiglu, qk_norm=False; "
              "Qwen3ForCausalLM: pos_emb=rope, norm=rmsnorm, mlp=swiglu, qk_norm=True, bias=False; "
              "MixtralForCausalLM: the same with qk_norm=False and n_experts, experts_top_k >= 2 "
              "(bias, tie_weights and, for the RoPE layouts, n_kv_heads are free; attn_sinks=0 everywhere)")


class ExportError(ValueError):
    """This model has no exact Hugging Face equivalent; the message names the setting and what exports."""


# -----------------------------------------------------------------------------
# which transformers class, and its config.json

def architecture(config):
    """'gpt2', 'llama', 'qwen3' or 'mixtral': the HF layout that computes exactly what config does, else ExportError
    naming the first setting that stands in the way."""
    c = config
    if c.pos_emb == "learned":  # the GPT-2 family: everything else must be GPT-2's
        wanted = [("norm", "layernorm"), ("mlp", "gelu"), ("qk_norm", False)]
        blocking = [f"{k}={getattr(c, k)!r}" for k, v in wanted if getattr(c, k) != v]
        if c.kv_heads != c.n_heads:
            blocking.append(f"n_kv_heads={c.n_kv_heads} (GPT-2 has no grouped-query attention)")
        family = "learned positions (GPT2LMHeadModel)"
    else:  # RoPE: Llama, or Qwen3 with QK-norm
        wanted = [("norm", "rmsnorm"), ("mlp", "swiglu")]
        blocking = [f"{k}={getattr(c, k)!r}" for k, v in wanted if getattr(c, k) != v]
        if c.qk_norm and c.bias:
            blocking.append("bias=True with qk_norm=True (Qwen3's MLP has no biases)")
        family = "RoPE (LlamaForCausalLM / Qwen3ForCausalLM)"
    if c.n_experts:  # Mixture of Experts: Mixtral's layout only
        blocking += [f"{k}={getattr(c, k)!r}" for k, v in (("pos_emb", "rope"), ("qk_norm", False), ("bias", False))
                     if getattr(c, k) != v and f"{k}={getattr(c, k)!r}" not in blocking]
        if c.experts_top_k < 2:
            blocking.append("experts_top_k=1 (Mixtral renormalises the top-k weights, so one expert gets weight 1; "
                            "ours keeps the router probability)")
        family = "experts (MixtralForCausalLM)"
    if c.attn_sinks:
        blocking.append(f"attn_sinks={c.attn_sinks} (no transformers model has learned sink tokens)")
    if blocking:
        raise ExportError(f"cannot export: {', '.join(blocking)} has no exact Hugging Face equivalent with "
                          f"{family}. These export: {EXPORTABLE}")
    if c.pos_emb == "learned":
        return "gpt2"
    return "mixtral" if c.n_experts else "qwen3" if c.qk_norm else "llama"


def class_name(config, arch):
    """The transformers class a model exports as: its layout's causal LM, or its sequence classifier (a verifier)."""
    return (SEQUENCE_CLASSES if config.score_head else CLASSES)[arch]


def hf_config(config, arch, bos_token_id=50256, eos_token_id=50256, dtype="float32"):
    """config.json for arch, carrying every setting that changes the function (and dropout for fine-tuning)."""
    c = config
    common = {"architectures": [class_name(c, arch)], "model_type": arch, "vocab_size": c.vocab_size,
              "bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "tie_word_embeddings": c.tie_weights,
              "torch_dtype": dtype, "use_cache": True}
    if c.score_head:  # one logit; pad_token_id tells transformers where each row's text ends (<|endoftext|> only
        # starts our conversations, so the rightmost other token is the reply's last: where we read the score)
        common.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, pad_token_id=eos_token_id)
    if arch == "gpt2":
        return {**common, "n_layer": c.n_layers, "n_head": c.n_heads, "n_embd": c.d_model, "n_inner": c.d_ff,
                "n_positions": c.max_seq_len, "n_ctx": c.max_seq_len, "activation_function": "gelu_new",
                "layer_norm_epsilon": NORM_EPS, "resid_pdrop": c.dropout, "embd_pdrop": c.dropout,
                "attn_pdrop": c.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False, "initializer_range": 0.02}
    out = {**common, "hidden_size": c.d_model, "intermediate_size": c.d_ff, "num_hidden_layers": c.n_layers,
           "num_attention_heads": c.n_heads, "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim,
           "max_position_embeddings": c.max_seq_len, "hidden_act": "silu", "rms_norm_eps": NORM_EPS,
           # rope_theta for transformers 4.x (and vLLM), rope_parameters for 5.x: both say the same
           "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
           "attention_bias": c.bias, "attention_dropout": c.dropout, "initializer_range": 0.02}
    if arch == "llama":
        out.update(mlp_bias=c.bias, pretraining_tp=1)
    elif arch == "mixtral":  # its load-balancing loss counts f over tokens, not assignments: top_k times ours
        out.update(num_local_experts=c.n_experts, num_experts_per_tok=c.experts_top_k, sliding_window=None,
                   router_aux_loss_coef=c.moe_aux_loss_coef / c.experts_top_k, router_jitter_noise=0.0,
                   output_router_logits=False)
    else:
        out.update(use_sliding_window=False, sliding_window=None, max_window_layers=c.n_layers,
                   layer_types=["full_attention"] * c.n_layers)
    return out


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


def config_from_hf(hf, dropout=0.0, bias=None):
    """Our GPTConfig for an HF config.json (a dict); ValueError naming anything whose maths we don't have.
    bias: for GPT-2, whether its biases are in use (all-zero biases load as bias=False)."""
    arch = hf.get("model_type", "gpt2")
    if arch not in CLASSES:
        raise ValueError(f"model_type {arch!r} is not supported; Nash-LLM loads {', '.join(CLASSES)} folders")
    if arch == "gpt2":
        return gpt2_config(hf, dropout, True if bias is None else bias)
    # Llama / Qwen3
    heads, d = hf["num_attention_heads"], hf["hidden_size"]
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {hf['hidden_act']!r} is not supported (only SwiGLU's silu)")
    if hf.get("rms_norm_eps", 1e-6) != NORM_EPS:
        raise ValueError(f"rms_norm_eps {hf.get('rms_norm_eps', 1e-6)} is not supported (Nash-LLM's norms use "
                         f"{NORM_EPS})")
    if (hf.get("head_dim") or d // heads) != d // heads or d % heads:
        raise ValueError(f"head_dim {hf.get('head_dim')} is not hidden_size / num_attention_heads ({d}/{heads}), "
                         "which Nash-LLM needs")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ValueError(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not supported "
                         "(only plain RoPE)")
    theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
    kv = hf.get("num_key_value_heads") or heads
    if arch == "llama":
        if hf.get("attention_bias", False) != hf.get("mlp_bias", False):
            raise ValueError("attention_bias and mlp_bias differ; Nash-LLM has one bias switch for both")
        has_bias = hf.get("attention_bias", False)
    elif arch == "mixtral":
        if hf.get("sliding_window") is not None:
            raise ValueError("sliding-window attention is not supported")
        if hf.get("num_experts_per_tok", 2) < 2:
            raise ValueError("num_experts_per_tok=1 is not supported (Mixtral gives the one expert weight 1; "
                             "ours keeps the router probability)")
        has_bias = False
    else:
        if hf.get("attention_bias", False):
            raise ValueError("attention_bias=True is not supported for Qwen3 (its MLP has no biases, ours would)")
        if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
            raise ValueError("sliding-window attention is not supported")
        has_bias = False
    return GPTConfig(n_layers=hf["num_hidden_layers"], n_heads=heads,
                     n_kv_heads=kv if kv != heads else None, d_model=d, d_ff=hf["intermediate_size"],
                     max_seq_len=hf["max_position_embeddings"], vocab_size=hf["vocab_size"], dropout=dropout,
                     bias=has_bias, pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=arch == "qwen3",
                     tie_weights=hf.get("tie_word_embeddings", False), rope_theta=float(theta),
                     **(dict(n_experts=hf.get("num_local_experts", 8), experts_top_k=hf.get("num_experts_per_tok", 2))
                        if arch == "mixtral" else {}))


# -----------------------------------------------------------------------------
# the weight table

def key_map(config, arch):
    """[(our key, [(HF key, rows), ...], transpose)]: our tensor is its HF tensors stacked along dim 0
    (after transposing them, for GPT-2's Conv1D weights, stored (in, out)). Biases are listed even when
    config.bias is False: GPT-2 has them (zeros then). Tied weights list the embedding only."""
    c, hd = config, config.head_dim
    q, kv = c.n_heads * hd, c.kv_heads * hd
    table = []
    if arch == "gpt2":
        t = "transformer."
        table += [("transformer.wte.weight", [(t + "wte.weight", c.vocab_size)], False),
                  ("transformer.wpe.weight", [(t + "wpe.weight", c.max_seq_len)], False)]
        for i in range(c.n_layers):
            ours, hf = f"transformer.h.{i}.", f"{t}h.{i}."
            for name, rows in (("ln_1", c.d_model), ("attn.c_attn", q + 2 * kv), ("attn.c_proj", c.d_model),
                               ("ln_2", c.d_model), ("mlp.c_fc", c.d_ff), ("mlp.c_proj", c.d_model)):
                table.append((ours + name + ".weight", [(hf + name + ".weight", rows)], not name.startswith("ln")))
                table.append((ours + name + ".bias", [(hf + name + ".bias", rows)], False))
        table += [("transformer.ln_f.weight", [(t + "ln_f.weight", c.d_model)], False),
                  ("transformer.ln_f.bias", [(t + "ln_f.bias", c.d_model)], False)]
    else:
        table.append(("transformer.wte.weight", [("model.embed_tokens.weight", c.vocab_size)], False))
        for i in range(c.n_layers):
            ours, hf = f"transformer.h.{i}.", f"model.layers.{i}."
            table.append((ours + "ln_1.weight", [(hf + "input_layernorm.weight", c.d_model)], False))
            table.append((ours + "ln_2.weight", [(hf + "post_attention_layernorm.weight", c.d_model)], False))
            if arch == "qwen3":
                table.append((ours + "attn.q_norm.weight", [(hf + "self_attn.q_norm.weight", hd)], False))
                table.append((ours + "attn.k_norm.weight", [(hf + "self_attn.k_norm.weight", hd)], False))
            for kind in ("weight", "bias"):
                a, m = hf + "self_attn.", hf + "mlp."
                table += [(ours + "attn.c_attn." + kind, [(a + "q_proj." + kind, q), (a + "k_proj." + kind, kv),
                                                          (a + "v_proj." + kind, kv)], False),
                          (ours + "attn.c_proj." + kind, [(a + "o_proj." + kind, c.d_model)], False)]
                if arch != "mixtral":
                    table += [(ours + "mlp.c_fc." + kind, [(m + "gate_proj." + kind, c.d_ff),
                                                           (m + "up_proj." + kind, c.d_ff)], False),
                              (ours + "mlp.c_proj." + kind, [(m + "down_proj." + kind, c.d_model)], False)]
            if arch == "mixtral":  # Mixtral's checkpoint layout (what save_pretrained writes): w1 gate, w3 up, w2 down
                m = hf + "block_sparse_moe."
                table.append((ours + "mlp.router.weight", [(m + "gate.weight", c.n_experts)], False))
                for e in range(c.n_experts):
                    x = f"{m}experts.{e}."
                    table += [(f"{ours}mlp.experts.{e}.c_fc.weight", [(x + "w1.weight", c.d_ff),
                                                                     (x + "w3.weight", c.d_ff)], False),
                              (f"{ours}mlp.experts.{e}.c_proj.weight", [(x + "w2.weight", c.d_model)], False)]
        table.append(("transformer.ln_f.weight", [("model.norm.weight", c.d_model)], False))
    if c.score_head:  # a sequence classifier has the score in place of the lm_head
        table.append(("score_head.weight", [("score.weight", 1)], False))
    elif not c.tie_weights:
        table.append(("lm_head.weight", [("lm_head.weight", c.vocab_size)], False))
    if arch != "gpt2" and not c.bias:
        table = [row for row in table if not row[0].endswith(".bias")]
    return table


def to_hf_state_dict(state_dict, config, arch):
    """Our state dict -> the HF one for arch (fresh contiguous tensors, padded vocab rows dropped)."""
    out = {}
    for ours, parts, transpose in key_map(config, arch):
        if ours in state_dict:
            w = state_dict[ours]
        else:  # a GPT-2 bias of a bias=False model: zeros compute the same
            w = torch.zeros(sum(rows for _, rows in parts))
        w = w[:sum(rows for _, rows in parts)]  # drops padded vocabulary rows
        for (key, rows), piece in zip(parts, w.split([rows for _, rows in parts])):
            out[key] = (piece.t() if transpose else piece).contiguous().clone()
    return out


def from_hf_state_dict(sd_hf, config, arch, into):
    """Copy the HF state dict sd_hf into our state dict `into` (e.g. model.state_dict()), in place."""
    missing = [k for _, parts, _ in key_map(config, arch) for k, _ in parts if k not in sd_hf]
    if missing:
        raise ValueError(f"the weights lack {len(missing)} {class_name(config, arch)} tensors, e.g. {missing[:3]}")
    with torch.no_grad():
        for ours, parts, transpose in key_map(config, arch):
            if ours not in into:
                continue  # a GPT-2 bias we don't use (all zeros: checked by the caller)
            w = torch.cat([sd_hf[k].t() if transpose else sd_hf[k] for k, _ in parts])
            if ours in ("transformer.wte.weight", "lm_head.weight"):
                if w.shape[1:] != into[ours].shape[1:] or w.size(0) > into[ours].size(0):
                    raise ValueError(f"{ours} has shape {tuple(w.shape)}, expected {tuple(into[ours].shape)}")
                into[ours][:w.size(0)].copy_(w)  # the real rows; padding stays zero
            elif w.shape != into[ours].shape:
                raise ValueError(f"{parts[0][0]} has shape {tuple(w.shape)} (as our {ours}), "
                                 f"expected {tuple(into[ours].shape)}")
            else:
                into[ours].copy_(w)


# -----------------------------------------------------------------------------
# reading files: JSON, sizes, weights

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


# -----------------------------------------------------------------------------
# loading a Hugging Face folder (or OpenAI's GPT-2 from the hub)

def is_hf_folder(path):
    """A Hugging Face model folder: config.json beside weights (model.safetensors, sharded or not, or
    pytorch_model.bin). A run folder also has a config.json, but checkpoints instead of these."""
    return os.path.isfile(os.path.join(path, "config.json")) and weights_file(path) is not None


def weights_file(folder):
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def hub_files(name):
    """(config.json, model.safetensors) of OpenAI's GPT-2 `name` from the Hugging Face hub, or its local cache offline."""
    from huggingface_hub import hf_hub_download
    try:
        return (hf_hub_download("openai-community/" + name, "config.json"),
                hf_hub_download("openai-community/" + name, "model.safetensors"))
    except Exception as e:
        raise OSError(f"could not download {name} from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}); "
                      "pass a local directory with config.json and model.safetensors instead") from None


def load_pretrained(name_or_dir, dropout=0.0, max_bytes=None):
    """A GPT with the weights of a Hugging Face folder (GPT-2, Llama, Qwen3 or Mixtral layout: config.json +
    model.safetensors, sharded or not, or pytorch_model.bin read as data only), or of gpt2 / gpt2-medium /
    gpt2-large / gpt2-xl from the hub. A config whose model would not fit in memory (or max_bytes) is refused
    before anything is allocated; every tensor's shape is checked before it is read (read_hf_weights). A GPT-2
    whose biases are all zero (exported from a bias=False model) loads as bias=False.
    Raises FileNotFoundError / OSError / ValueError with a one-line reason."""
    name = str(name_or_dir)
    if name in GPT2_NAMES and not os.path.isdir(name):
        config_path, weights_path = hub_files(name)
    elif os.path.isdir(name):
        config_path, weights_path = os.path.join(name, "config.json"), weights_file(name)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"{name} has no config.json; expected a Hugging Face model folder "
                                    "(config.json + model.safetensors or pytorch_model.bin)")
    else:
        raise ValueError(f"{name!r} is neither a GPT-2 model name ({', '.join(GPT2_NAMES)}) nor an existing "
                         "directory holding a Hugging Face checkpoint")
    hf = read_json(config_path)
    arch = hf.get("model_type", "gpt2")
    if any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or []):
        raise ValueError(f"{name} is a sequence classifier ({hf['architectures'][0]}, e.g. an exported verifier), not "
                         f"a language model; use the run it was exported from (its checkpoint keeps the score head)")
    if weights_path is None:
        raise FileNotFoundError(f"{name} has neither model.safetensors nor pytorch_model.bin")
    try:
        config = config_from_hf(hf, dropout)  # refuse what we can't compute before reading any weights
    except KeyError as e:
        raise ValueError(f"{config_path} lacks {e.args[0]!r}") from None
    except (TypeError, ZeroDivisionError) as e:  # e.g. a string for a number, or no attention heads
        raise ValueError(f"{config_path} has a value of the wrong type or range ({e})") from None
    check_size(config, max_bytes, config_path, GPT2_FIELDS if arch == "gpt2" else HF_NAMES, weights_path)
    with torch.device("meta"):  # the shapes config.json implies, with nothing allocated
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    expected = {}  # HF key -> its shape: rows of one of our tensors, which may stack several HF tensors
    for ours, parts, transpose in key_map(config, arch):
        for key, rows in parts:
            shape = (rows, *shapes[ours][1:]) if ours in shapes else None
            expected[key] = shape[::-1] if transpose and shape else shape  # GPT-2's Conv1D: stored (in, out)

    def hf_key(key):  # OpenAI's own uploads have no "transformer." prefix; save_pretrained's do
        if arch == "gpt2" and not key.startswith(("transformer.", "lm_head.", "score.")):
            return "transformer." + key
        return key
    sd_hf = {hf_key(k): v for k, v in read_hf_weights(weights_path, lambda k: expected.get(hf_key(k))).items()}
    missing = [key for key in expected if key not in sd_hf]
    if missing:  # before the model is built: a file that cannot fill it costs nothing
        raise ValueError(f"{weights_path} lacks {len(missing)} {CLASSES[arch]} tensors, e.g. {missing[:3]}")
    if arch == "gpt2" and all(not v.any() for k, v in sd_hf.items() if k.endswith(".bias")):
        config = config_from_hf(hf, dropout, bias=False)  # exported from a bias=False model
    model = GPT(config)
    from_hf_state_dict(sd_hf, model.config, arch, model.state_dict())
    return model


# -----------------------------------------------------------------------------
# writing a Hugging Face folder

def check_output(output, force=False):
    """Refuse an output that would lose something: a file, a non-empty folder without force, a run folder."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise ExportError(f"--output={output} is a file; give a folder path")
    if os.path.isdir(output) and os.listdir(output):
        if any(os.path.exists(os.path.join(output, n)) for n in ("ckpt.pt", "best.pt")):
            raise ExportError(f"{output} holds a training run (checkpoints); export into another folder")
        if not force:
            raise ExportError(f"{output} is not empty; choose an empty or new folder, or pass --force to replace it")
    parent = os.path.dirname(os.path.abspath(output))
    while not os.path.exists(parent):  # missing parents are created when writing (export/my-model on a fresh clone)
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ExportError(f"--output={output} lies under {parent}, which is a file; give a folder path")


def make_parent(output):
    """The folder that will hold output, created if missing (check_output made sure it can be)."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    return parent


def export_model(model, output, card="", force=False, write_tokenizer=write_gpt2_tokenizer, dtype=torch.float32):
    """Write model as a Hugging Face folder at output: config.json, model.safetensors, generation_config.json,
    the tokenizer files (write_tokenizer(folder, config) -> {bos_token_id, eos_token_id, vocab_size}),
    and README.md (card). Everything goes to a temporary folder beside output, renamed into place at the end,
    so output is either untouched or complete. Returns the architecture ('gpt2', 'llama', 'qwen3', 'mixtral').
    Raises ExportError (a ValueError) for a model with no exact equivalent or an output that would lose files."""
    from safetensors.torch import save_file
    config = model.config
    arch = architecture(config)  # refuse before touching the disk
    check_output(output, force)
    parent = make_parent(output)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.", suffix=".tmp", dir=parent)
    try:
        tok = write_tokenizer(tmp, config)
        if tok["vocab_size"] > config.vocab_size:
            raise ExportError(f"the tokenizer has {tok['vocab_size']} tokens but the model only {config.vocab_size} "
                              "rows; it cannot have been trained with this tokenizer")
        hf = hf_config(config, arch, tok["bos_token_id"], tok["eos_token_id"], str(dtype).removeprefix("torch."))
        sd = {k: v.detach().to("cpu", dtype) for k, v in to_hf_state_dict(model.state_dict(), config, arch).items()}
        save_file(sd, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        os.chmod(os.path.join(tmp, "model.safetensors"), 0o644)  # safetensors writes it 0600; the rest are 0644
        generation = {"bos_token_id": tok["bos_token_id"], "eos_token_id": tok["eos_token_id"],
                      "pad_token_id": tok["eos_token_id"], "max_length": config.max_seq_len}
        for name, obj in (("config.json", hf), ("generation_config.json", generation)):
            with open(os.path.join(tmp, name), "w") as f:
                json.dump(obj, f, indent=2)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as f:
            f.write(card)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an export is meant to be shared
        if os.path.isdir(output):  # empty, or force: swap the old one out, the new one in, then delete the old
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(output))}.", suffix=".old", dir=parent)
            os.rename(output, os.path.join(old, "x"))
            os.rename(tmp, output)
            shutil.rmtree(old)
        else:
            os.rename(tmp, output)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)
    return arch
