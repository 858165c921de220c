"""Tests for model.py: shapes, causality, parameter counts, the loss, chunked prefill through a KV cache, GPT-2
parity with Hugging Face transformers (nash/hf.py's loader and model.py's thin one), optimizers, FLOPs and MFU.
(Decoding, sampling and the caches against model.generate: tests/test_engine.py.) CPU only,
no network, tiny models (the 124M model is only built on the meta device, to count)."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from nash.hf import load_pretrained  # noqa: E402
from nash.common import estimate_mfu, peak_flops  # noqa: E402
from nash.kv_cache import KVCache  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a tiny GPT-2 (learned positions, LayerNorm, GELU, tied, biases, dropout) and a tiny modern model
CLASSIC = dict(n_layers=2, n_heads=4, d_model=32, d_ff=128, max_seq_len=16, vocab_size=100, dropout=0.1)
MODERN = dict(CLASSIC, pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, qk_norm=True,
              bias=False, tie_weights=False)
# more mixes, so every option goes through the cache at least once
MQA_RELU2 = dict(CLASSIC, n_kv_heads=1, mlp="relu2", qk_norm=True, norm="rmsnorm")
ROPE_GELU = dict(CLASSIC, pos_emb="rope", dropout=0.0, pad_vocab_multiple=1)
# a Mixture-of-Experts MLP (model.MoE), and learnable attention-sink tokens with both kinds of positions
MOE = dict(MODERN, n_experts=4, experts_top_k=2)
SINKS_ROPE = dict(ROPE_GELU, attn_sinks=2)
SINKS_LEARNED = dict(CLASSIC, attn_sinks=1, n_experts=3, experts_top_k=1)
CONFIGS = {"classic": CLASSIC, "modern": MODERN, "mqa_relu2": MQA_RELU2, "rope_gelu": ROPE_GELU, "moe": MOE,
           "sinks_rope": SINKS_ROPE, "sinks_learned": SINKS_LEARNED}


def make(cfg, seed=0, randomize=True):
    """A tiny model with weights far from the N(0, 0.02) init, so that attention is sharp and
    positions matter: a bug in the cache or in positions then moves the logits visibly."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg))
    if randomize:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.3)
                else:  # norm gains around 1, biases around 0
                    p.normal_(1.0 if name.endswith("weight") else 0.0, 0.2)
    return model.eval()


# --------------------------------------------------------------------------------------------------
# config, shapes, counts


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        GPTConfig(d_model=100, n_heads=12)
    with pytest.raises(ValueError, match="n_kv_heads"):
        GPTConfig(n_heads=12, n_kv_heads=5)
    with pytest.raises(ValueError, match="unknown pos_emb 'alibi'"):
        GPTConfig(pos_emb="alibi")
    with pytest.raises(ValueError, match="unknown norm"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="unknown mlp"):
        GPTConfig(mlp="geglu")
    with pytest.raises(ValueError, match="even head dim"):
        GPTConfig(d_model=36, n_heads=4, pos_emb="rope")  # head dim 9
    GPTConfig(d_model=36, n_heads=4)  # fine with learned positions


@pytest.mark.parametrize("name", ["classic", "modern"])
def test_shapes(name):
    model = make(CONFIGS[name])
    idx = torch.randint(0, 100, (3, 7))
    logits, loss = model(idx)
    assert logits.shape == (3, 7, 100) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    assert ("wpe" in model.transformer) == (CONFIGS[name].get("pos_emb", "learned") == "learned")


@pytest.mark.parametrize("name", ["classic", "modern"])
def test_causality(name):
    model = make(CONFIGS[name])
    idx = torch.randint(0, 100, (2, 16))
    logits, _ = model(idx)
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 100
        logits2, _ = model(changed)
        torch.testing.assert_close(logits2[:, :t], logits[:, :t], atol=1e-6, rtol=0)
        assert not torch.allclose(logits2[:, t], logits[:, t])  # the changed position does see it


def test_weight_tying():
    tied = GPT(GPTConfig(**CLASSIC))
    assert tied.transformer.wte.weight is tied.lm_head.weight
    assert tied.transformer.wte.weight.data_ptr() == tied.lm_head.weight.data_ptr()
    untied = GPT(GPTConfig(**dict(CLASSIC, tie_weights=False)))
    assert untied.transformer.wte.weight.data_ptr() != untied.lm_head.weight.data_ptr()
    assert untied.num_params() == tied.num_params() + 100 * 32


def test_gpt2_small_param_count():
    with torch.device("meta"):  # counts without allocating 124M floats
        model = GPT(GPTConfig())
    assert model.transformer.wte.weight.shape == (50304, 768)  # padded to a multiple of 64
    assert model.num_params() == 124_439_808  # OpenAI's GPT-2 small
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768  # minus wpe


@pytest.mark.parametrize("tie", [True, False])
def test_padding_rows_not_counted(tie):
    padded = GPT(GPTConfig(**dict(CLASSIC, tie_weights=tie)))
    plain = GPT(GPTConfig(**dict(CLASSIC, tie_weights=tie, pad_vocab_multiple=1)))
    assert padded.lm_head.weight.shape[0] == 128 and plain.lm_head.weight.shape[0] == 100
    assert padded.num_params() == plain.num_params() == sum(p.numel() for p in plain.parameters())
    assert padded.num_params(non_embedding=True) == plain.num_params(non_embedding=True)


def test_padded_vocab_is_never_seen():
    model = make(CLASSIC)
    with torch.no_grad():  # make the padding rows irresistible if they ever leaked into the logits
        model.lm_head.weight[100:] = 50.0
    idx = torch.randint(0, 100, (4, 5))
    logits, loss = model(idx, idx)
    assert logits.shape[-1] == 100
    assert torch.isclose(loss, F.cross_entropy(logits.reshape(-1, 100), idx.reshape(-1)))
    out = model.generate(idx, 20, temperature=2.0, generator=torch.Generator().manual_seed(0))
    assert out.max() < 100


# --------------------------------------------------------------------------------------------------
# loss


def test_loss_ignores_minus_one():
    model = make(MODERN)
    idx = torch.randint(0, 100, (3, 10))
    targets = torch.randint(0, 100, (3, 10))
    targets[0, :6] = -1  # an SFT-style masked prompt
    targets[2, 3] = -1
    logits, loss = model(idx, targets)
    keep = targets != -1
    expected = F.cross_entropy(logits[keep].float(), targets[keep])  # mean over the kept positions only
    torch.testing.assert_close(loss, expected)
    assert loss.dtype == torch.float32


def test_loss_all_ignored_is_zero_with_grad():
    model = make(CLASSIC)
    idx = torch.randint(0, 100, (2, 8))
    _, loss = model(idx, torch.full_like(idx, -1))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def plain_loss_and_grads(model, idx, targets):
    """The reference: full (B, T, V) logits over the real vocabulary, F.cross_entropy, autograd."""
    model.zero_grad(set_to_none=True)
    x = model.hidden_states(idx)
    logits = F.linear(x, model.lm_head.weight[:model.config.vocab_size]).float()
    keep = targets != -1
    loss = F.cross_entropy(logits[keep], targets[keep]) if keep.any() else (logits.sum() * 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", ["classic", "modern"])  # tied and untied head
@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 1000])  # default, one row, uneven chunks, one chunk
@pytest.mark.parametrize("masking", ["none", "some", "all"])
def test_chunked_loss_and_gradients_equal_full_logits(name, chunk_rows, masking, monkeypatch):
    model = make(dict(CONFIGS[name], dropout=0.0)).train()
    torch.manual_seed(1)
    idx, targets = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    if masking == "some":  # a masked prompt, a fully ignored row, a stray ignored position
        targets[0, :9], targets[1], targets[2, 4] = -1, -1, -1
    elif masking == "all":
        targets[:] = -1
    expected, expected_grads = plain_loss_and_grads(model, idx, targets)
    if chunk_rows is not None:  # the model's forward uses the default: make it use this chunk size
        real = M.chunked_cross_entropy
        monkeypatch.setattr(M, "chunked_cross_entropy", lambda x, w, t: real(x, w, t, chunk_rows))
    model.zero_grad(set_to_none=True)
    logits, loss = model(idx, targets, return_logits=False)
    assert logits is None and loss.dtype == torch.float32 and loss.requires_grad
    loss.backward()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-5)
    if masking == "all":
        assert loss.item() == 0.0
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected_grads[n], rtol=1e-5, atol=1e-5, msg=n)
        assert p.grad.abs().max() > 0 or masking == "all" or n.startswith("transformer.wpe"), n
    assert (model.lm_head.weight.grad[100:] == 0).all()  # no gradient ever reaches the padding rows


def test_chunked_loss_scales_with_the_incoming_gradient():
    # train.py backpropagates loss / grad_accum_steps (and a GradScaler multiplies it): dx, dW must scale
    model = make(dict(CLASSIC, dropout=0.0))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    _, grads = plain_loss_and_grads(model, idx, targets)
    model.zero_grad(set_to_none=True)
    (model(idx, targets, return_logits=False)[1] * 0.25).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n] * 0.25, rtol=1e-5, atol=1e-6, msg=n)


def test_chunked_loss_without_grad():
    model = make(dict(CLASSIC, dropout=0.0))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    _, full = model(idx, targets)
    with torch.no_grad():  # as evaluation would: no gradients computed, same value
        _, loss = model(idx, targets, return_logits=False)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, full.detach(), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_chunked_loss_under_autocast(dtype):
    # train.py --dtype=bfloat16 / float16: 16-bit matmuls, the loss in float32, and float16's gradients,
    # scaled up by a GradScaler, neither underflowing nor overflowing: close to the float32 gradients
    model = make(dict(CLASSIC, dropout=0.0))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    targets[0, :5] = -1
    expected, grads = plain_loss_and_grads(model, idx, targets)
    errors = {}
    for return_logits in (True, False):  # the plain 16-bit path sets the bar: no worse than it, give or take
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype):
            _, loss16 = model(idx, targets, return_logits=return_logits)
        assert loss16.dtype == torch.float32
        torch.testing.assert_close(loss16.detach(), expected, rtol=2e-2, atol=2e-2)
        (loss16 * 2**16).backward()  # a GradScaler's initial scale
        for n, p in model.named_parameters():
            assert p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), n
            err = (p.grad / 2**16 - grads[n]).norm() / grads[n].norm().clamp(min=1e-12)
            errors[n, return_logits] = err.item()
    for n, _ in model.named_parameters():
        assert errors[n, False] < max(1.5 * errors[n, True], 1e-3), (n, errors[n, False], errors[n, True])


# --------------------------------------------------------------------------------------------------
# GPT-2 weights: parity with Hugging Face transformers


def hf_gpt2(tmp_path, tie=True):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=50257,
                                     tie_word_embeddings=tie, attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # move everything off its init (zero biases, unit gains) so nothing matches by luck
        for name, p in hf.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and "ln_" in name and name.endswith("weight") else 0.0, 0.1)
    hf.save_pretrained(tmp_path)
    return hf


@pytest.mark.slow
@pytest.mark.parametrize("tie", [True, False])
def test_from_pretrained_safetensors_parity(tmp_path, tie):
    hf = hf_gpt2(tmp_path, tie)
    assert os.path.exists(tmp_path / "model.safetensors")
    model = load_pretrained(tmp_path).eval()
    assert model.config.tie_weights == tie and model.config.dropout == 0.0
    idx = torch.randint(0, 50257, (2, 40))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert ours.shape == theirs.shape == (2, 40, 50257)
    assert (ours - theirs).abs().max().item() < 1e-4
    assert model.num_params() == sum(p.numel() for p in hf.parameters())


@pytest.mark.slow
def test_thin_from_pretrained_through_transformers(tmp_path):
    # model.py's own loader (for a copied file): transformers reads, the same weights come out as nash/hf.py's
    hf_model = hf_gpt2(tmp_path, tie=False)
    ours, checked = GPT.from_pretrained(str(tmp_path)).eval(), load_pretrained(tmp_path).eval()
    idx = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert (ours(idx)[0] - hf_model(idx).logits).abs().max().item() < 1e-4
        assert torch.equal(ours(idx)[0], checked(idx)[0])


@pytest.mark.slow
def test_from_pretrained_bin_parity(tmp_path):
    # an old-style checkpoint: pytorch_model.bin, keys without "transformer.", with attn.bias mask buffers
    from safetensors.torch import load_file
    hf = hf_gpt2(tmp_path / "hf")
    sd = {k.removeprefix("transformer."): v for k, v in load_file(tmp_path / "hf" / "model.safetensors").items()}
    for i in range(2):
        sd[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        sd[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "bin").mkdir()
    torch.save(sd, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    model = load_pretrained(str(tmp_path / "bin"), dropout=0.1).eval()
    assert model.config.dropout == 0.1
    idx = torch.randint(0, 50257, (2, 30))
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4


def test_from_pretrained_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so no local directory can be mistaken for a model name
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        load_pretrained(tmp_path)
    with pytest.raises(ValueError, match="neither a GPT-2 model name"):
        load_pretrained("gpt5")

    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(OSError, match="could not download gpt2 from the Hugging Face hub .*pass a local directory"):
        load_pretrained("gpt2")


@pytest.mark.slow
def test_import_needs_only_torch():
    code = "import sys, model; bad = {'transformers', 'safetensors', 'huggingface_hub', 'numpy'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "transformers" not in out.stdout and "safetensors" not in out.stdout and "huggingface_hub" not in out.stdout


# --------------------------------------------------------------------------------------------------
# optimizers


@pytest.mark.parametrize("name", ["classic", "modern"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_training_reduces_loss(name, optimizer):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**dict(CONFIGS[name], dropout=0.0)))
    optimizers = model.configure_optimizers(optimizer, learning_rate=3e-3)
    x = torch.randint(0, 100, (4, 16))
    y = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(8):
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
    assert losses[-1] < losses[0] - 0.3, losses


@pytest.mark.parametrize("name", ["classic", "modern"])
def test_optimizer_groups(name):
    model = GPT(GPTConfig(**CONFIGS[name]))
    all_ids = {id(p) for p in model.parameters()}

    (adamw,) = model.configure_optimizers("adamw", learning_rate=1e-3, weight_decay=0.1)
    seen = [id(p) for g in adamw.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(all_ids)  # every parameter once (a tied matrix too)
    for g in adamw.param_groups:
        assert g["base_lr"] == g["lr"] == 1e-3
        assert all((p.dim() >= 2) == (g["weight_decay"] == 0.1) for p in g["params"])
    assert adamw.defaults["fused"]  # on CPU too (device_type="cpu", the default)
    assert not model.configure_optimizers(device_type="mps")[0].defaults["fused"]

    adamw, muon = model.configure_optimizers("muon", learning_rate=1e-3, weight_decay=0.1)
    assert isinstance(muon, torch.optim.Muon) and muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    hidden = {id(p) for n, p in model.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == hidden
    rest = [id(p) for g in adamw.param_groups for p in g["params"]]
    assert sorted(rest) == sorted(all_ids - hidden)
    assert id(model.transformer.wte.weight) in rest and id(model.lm_head.weight) in rest
    assert all(g["base_lr"] == g["lr"] for opt in (adamw, muon) for g in opt.param_groups)

    with pytest.raises(ValueError, match="unknown optimizer"):
        model.configure_optimizers("sgd")


def test_fused_adamw_on_cuda_flag():
    model = GPT(GPTConfig(**CLASSIC))
    (adamw,) = model.configure_optimizers(device_type="cuda")  # fused AdamW also builds for CPU tensors
    assert adamw.defaults["fused"]


# --------------------------------------------------------------------------------------------------
# FLOPs and MFU


def test_mfu_none_on_cpu():
    model = GPT(GPTConfig(**CLASSIC))
    assert peak_flops("cpu") is None and peak_flops(torch.device("cpu")) is None
    assert peak_flops("mps") is None
    assert estimate_mfu(model, 1e5, 16, "cpu") is None


@pytest.mark.parametrize("gpu,peak", [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                      ("NVIDIA H100 NVL", 835e12), ("NVIDIA H200", 989e12),
                                      ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA L40S", 362e12),
                                      ("NVIDIA L4", 121e12), ("Tesla V100-PCIE-32GB", 112e12),
                                      ("Some Future GPU", None)])
def test_peak_flops_table(monkeypatch, gpu, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    assert peak_flops("cuda") == peak


def test_flops_and_mfu_gpt2_small(monkeypatch):
    with torch.device("meta"):
        model = GPT(GPTConfig())
    # matmul weights: 12 blocks x (768*2304 + 768*768 + 2 * 768*3072) + lm_head 50257*768 (not the padding)
    N = 12 * (768 * 2304 + 768 * 768 + 2 * 768 * 3072) + 50257 * 768
    assert N == 123_532_032
    expected = 6 * N + 12 * 12 * 12 * 64 * 1024  # + attention at T = 1024
    assert model.flops_per_token(1024) == expected == 854_438_400
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert estimate_mfu(model, 100_000, 1024, "cuda") == pytest.approx(100_000 * 854_438_400 / 989e12)


@pytest.mark.parametrize("name", ["classic", "modern"])
def test_kv_cache_chunked_prefill(name):
    # feeding a sequence to the cache in chunks (several queries after cached keys) equals one pass
    model = make(CONFIGS[name])
    idx = torch.randint(0, 100, (2, 16))
    full = model.hidden_states(idx)
    cache = KVCache(model.config.n_layers, model.config.max_seq_len)
    parts = [model.hidden_states(idx[:, a:b], cache) for a, b in ((0, 5), (5, 6), (6, 13), (13, 16))]
    assert cache.pos == 16
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than max_seq_len"):
        model.hidden_states(idx[:, :1], cache)


def test_an_edited_token_loss_still_drives_the_fused_path(monkeypatch):
    """The fused path writes plain cross-entropy's gradient (softmax - onehot) in place; a researcher's edit of
    token_loss (here a z-loss, PaLM's) must still be what trains: the check sees the edit and autograd takes over,
    and the loss and gradients equal the edited loss on the full logits."""
    assert M.is_plain_cross_entropy(M.token_loss)
    z_loss = lambda logits, targets: (F.cross_entropy(logits.float(), targets, reduction="none")
                                      + 1e-2 * torch.logsumexp(logits.float(), -1) ** 2)
    assert not M.is_plain_cross_entropy(z_loss)
    model = make(dict(CLASSIC, dropout=0.0))
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    logits = F.linear(model.hidden_states(idx), model.lm_head.weight[:100])
    z_loss(logits.view(-1, 100), targets.view(-1)).mean().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(M, "token_loss", z_loss)
    model(idx, targets, return_logits=False)[1].backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-5, atol=1e-6, msg=n)
