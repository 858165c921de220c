"""Tests for the Mixture-of-Experts MLP (model.py's MoE): routing, the load-balancing loss against a hand
computation, the batched dispatch against a per-token loop, gradients for idle experts, parameter and
FLOP counts, train.py with n_experts (logs, exact resume, SFT, DDP on 2 processes), torch.compile. The KV
cache against full recompute with MoE is in test_model.py (its CONFIGS include a MoE model)."""
import math

import pytest
import torch
import torch.nn.functional as F

from nash.checkpoint import load_checkpoint
from conftest import assert_ddp_matches, TINY_MODEL, TINY_TRAINING, read_metrics, run_inline, run_script
from model import GPT, GPTConfig, MLP
from model import MoE

TINY = dict(n_layers=2, n_heads=2, d_model=16, d_ff=24, max_seq_len=16, vocab_size=50, dropout=0.0)


def moe_layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = MoE(GPTConfig(**{**TINY, "n_experts": 4, "experts_top_k": 2, **kw}), MLP)
    with torch.no_grad():  # far from the init, so that experts differ clearly and routing is sharp
        for p in layer.parameters():
            p.normal_(0.0, 0.5)
    return layer


@pytest.mark.parametrize("k", [1, 2, 3])
def test_routing_picks_top_k(k):
    layer = moe_layer(experts_top_k=k)
    x = torch.randn(50, 16)
    probs, weights, experts = layer.route(x)
    expected = F.softmax(x @ layer.router.weight.T, dim=-1)
    torch.testing.assert_close(probs, expected)
    assert probs.dtype == torch.float32
    for row in range(50):
        chosen = set(experts[row].tolist())
        assert len(chosen) == k
        # every chosen expert beats every other one
        assert min(probs[row, list(chosen)]) >= max([probs[row, e] for e in range(4) if e not in chosen], default=0)
    top = probs.gather(1, experts)
    if k == 1:  # Switch: the raw probability, so the router learns from the LM loss
        torch.testing.assert_close(weights, top)
    else:  # Mixtral: renormalised over the chosen experts
        torch.testing.assert_close(weights, top / top.sum(1, keepdim=True))


def test_router_is_float32_under_autocast():
    layer = moe_layer()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs, weights, _ = layer.route(torch.randn(8, 16))
        y = layer(torch.randn(1, 8, 16))
    assert probs.dtype == weights.dtype == torch.float32 and torch.isfinite(y).all()


def test_aux_loss_by_hand():
    # 2 experts, top-1, 4 tokens; the router reads the first two features, so the logits are set by hand
    layer = MoE(GPTConfig(**{**TINY, "d_model": 4, "n_heads": 1, "n_experts": 2, "experts_top_k": 1}), MLP)
    with torch.no_grad():
        layer.router.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[2.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0], [0.5, 0, 0, 0]])  # logits (2,0) (1,0) (0,3) (.5,0)
    layer(x.view(1, 4, 4))
    p = [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(3)), 1 / (1 + math.exp(-0.5))]  # P(expert 0)
    f = [0.75, 0.25]  # the argmax: experts 0, 0, 1, 0
    P = [sum(p) / 4, sum(1 - q for q in p) / 4]
    expected = 2 * (f[0] * P[0] + f[1] * P[1])
    assert layer.aux_loss.item() == pytest.approx(expected, rel=1e-6)
    assert layer.load.tolist() == f
    # balanced: one token each with mirrored probabilities, P = f = (1/2, 1/2): the loss is exactly 1
    x = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0]])
    layer(x.view(1, 2, 4))
    assert layer.aux_loss.item() == pytest.approx(1.0)


@pytest.mark.parametrize("mlp,k", [("gelu", 2), ("swiglu", 2), ("relu2", 1), ("swiglu", 4)])
def test_batched_experts_equal_a_per_token_loop(mlp, k):
    layer = moe_layer(mlp=mlp, experts_top_k=k)
    x = torch.randn(3, 7, 16)
    y = layer(x)
    _, weights, experts = layer.route(x.view(-1, 16))
    naive = torch.stack([sum(w * layer.experts[e](t) for w, e in zip(weights[i], experts[i].tolist()))
                         for i, t in enumerate(x.view(-1, 16))])
    torch.testing.assert_close(y, naive.view(3, 7, 16), atol=1e-5, rtol=1e-5)
    counts = torch.bincount(experts.flatten(), minlength=4)
    torch.testing.assert_close(layer.load, counts.float() / (21 * k))


def test_idle_experts_still_get_a_gradient():
    # DDP waits for a gradient from every parameter: an expert no token chose must get zeros, not None
    layer = moe_layer(experts_top_k=1)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[2, 0] = 100.0
    x = torch.randn(1, 5, 16).abs()  # feature 0 > 0: expert 2 wins everywhere
    layer(x).sum().backward()
    assert layer.load.tolist() == [0.0, 0.0, 1.0, 0.0]
    for e, expert in enumerate(layer.experts):
        for p in expert.parameters():
            assert p.grad is not None and (p.grad.abs().sum() > 0) == (e == 2)


def test_training_loss_adds_the_aux_loss_and_eval_does_not():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "n_experts": 4, "experts_top_k": 2, "moe_aux_loss_coef": 0.5}))
    x = torch.randint(0, 50, (2, 10))
    model.eval()
    logits, ce = model(x, x)
    model.train()
    _, loss = model(x, x)
    aux = torch.stack([b.mlp.aux_loss for b in model.transformer.h]).mean()
    assert aux.item() >= 1.0 - 1e-6  # the Switch loss is at least 1 (uniform)
    torch.testing.assert_close(loss, ce + 0.5 * aux)
    _, chunked = model(x, x, return_logits=False)  # train.py's path: the chunked loss carries the balancing too
    torch.testing.assert_close(chunked, ce + 0.5 * aux)
    loss.backward()
    assert model.transformer.h[0].mlp.router.weight.grad.abs().sum() > 0


def test_params_and_flops_count_active_experts():
    dense = GPT(GPTConfig(**{**TINY, "d_ff": 48}))  # the same active MLP size as 2 experts of 24
    moe = GPT(GPTConfig(**{**TINY, "n_experts": 8, "experts_top_k": 2}))
    expert = 2 * 16 * 24 + 24 + 16  # c_fc and c_proj weights and biases
    router = 16 * 8
    assert moe.num_params() == sum(p.numel() for p in moe.parameters()) - (64 - 50) * 16  # padding rows
    assert moe.num_params(active=True) == moe.num_params() - 2 * 6 * expert
    assert dense.num_params() == moe.num_params(active=True) - 2 * (router + 16)  # 2 experts: one more c_proj bias
    assert moe.flops_per_token(16) == dense.flops_per_token(16) + 6 * 2 * router
    assert dense.num_params(active=True) == dense.num_params()


def test_config_errors():
    with pytest.raises(ValueError, match="experts_top_k .3. must be between 1 and n_experts .2."):
        GPTConfig(n_experts=2, experts_top_k=3)
    with pytest.raises(ValueError, match="cannot be negative"):
        GPTConfig(n_experts=-1)


MOE_FLAGS = ["--n_experts=4", "--experts_top_k=2", "--mlp=swiglu", "--moe_aux_loss_coef=0.1", "--max_steps=12",
             "--checkpoint_interval=6", "--eval_interval=6", "--log_interval=3", "--lr_decay_steps=12"]


def test_train_with_experts_logs_and_resumes_exactly(tiny_data, tmp_path, monkeypatch, capsys):
    def train(out, *flags):
        return run_inline(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, *MOE_FLAGS, "--dataset=tiny",
                          f"--data_dir={tiny_data}", f"--out_dir={out}", *flags)

    train(tmp_path / "full")
    stdout = capsys.readouterr().out
    model = GPT(GPTConfig(**load_checkpoint(tmp_path / "full" / "ckpt.pt")["model_config"]))
    assert model.config.n_experts == 4
    assert f"{model.num_params():,} parameters ({model.num_params(active=True):,} active per token)" in stdout
    assert "busiest expert" in stdout
    logs = [e for e in read_metrics(tmp_path / "full") if e["event"] == "train"]
    for e in logs:
        assert e["aux_loss"] >= 1.0 - 1e-6  # the Switch loss: 1 when balanced, more when not
        assert len(e["expert_load"]) == 2 and all(len(layer) == 4 for layer in e["expert_load"])
        assert all(sum(layer) == pytest.approx(1.0, abs=1e-3) for layer in e["expert_load"])
    assert logs[-1]["loss"] < logs[0]["loss"] - 0.3  # the logged loss is the language-model loss, and it learns
    assert 6 < logs[0]["loss"] < 12  # ~ln(50257), not shifted by the aux loss

    half = tmp_path / "half"
    train(half, "--max_steps=6")
    train(half, "--init_from=resume")
    a, b = load_checkpoint(tmp_path / "full" / "ckpt.pt"), load_checkpoint(half / "ckpt.pt")
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda run: [(e["step"], e["loss"], e["aux_loss"]) for e in read_metrics(run) if e["event"] == "train"]
    assert strip(tmp_path / "full") == strip(half)


def test_sft_and_sampling_with_experts(sft_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sft"
    run_inline(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, *MOE_FLAGS, "--objective=sft", "--dataset=echo",
               f"--data_dir={sft_data}", f"--out_dir={out}", "--max_steps=6")
    capsys.readouterr()
    run_inline(monkeypatch, "sample.py", f"--out_dir={out}", "--start=Echo: cat\n", "--num_samples=1",
               "--max_new_tokens=40", "--temperature=0", "--stop_at_eot=False")  # 40 > max_seq_len: past the context
    stdout = capsys.readouterr().out
    assert "== completion ==" in stdout and len(stdout.split("== completion ==")[1]) > 40


@pytest.mark.slow
def test_torch_compile_gives_eager_loss_gradients_and_aux_loss():
    # aot_eager: TorchDynamo's capture (a graph break at the per-expert split, whose sizes change every batch)
    # and AOTAutograd's backward, without inductor's C++ code generation (a minute on a small CPU; also checked
    # by hand: same loss within 5e-7). The aux loss and load are set inside the compiled forward.
    torch.manual_seed(0)
    config = GPTConfig(**{**TINY, "n_experts": 4, "experts_top_k": 2, "mlp": "swiglu", "pos_emb": "rope"})
    eager, compiled = GPT(config), GPT(config)
    compiled.load_state_dict(eager.state_dict())
    step = torch.compile(compiled, backend="aot_eager")
    for seed in (1, 2):  # two batches: different expert loads, so the split sizes change
        x, y = torch.randint(0, 50, (2, 2, 16), generator=torch.Generator().manual_seed(seed))
        _, expected = eager(x, y, return_logits=False)
        _, loss = step(x, y, return_logits=False)
        torch.testing.assert_close(loss, expected)
        expected.backward(), loss.backward()
        for a, b in zip(eager.transformer.h, compiled.transformer.h):
            torch.testing.assert_close(b.mlp.aux_loss, a.mlp.aux_loss)
            assert torch.equal(b.mlp.load, a.mlp.load)
    for (name, a), (_, b) in zip(eager.named_parameters(), compiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_two_processes_match_one(tiny_data, tmp_path):
    # each rank routes its own micro-batch, so the aux loss is per micro-batch either way: the same gradients,
    # and the logged aux loss and expert loads are the global batch's
    from test_train import torchrun
    common = [*TINY_MODEL, *TINY_TRAINING, *MOE_FLAGS, "--dataset=tiny", f"--data_dir={tiny_data}", "--max_steps=3",
              "--eval_interval=3", "--grad_accum_steps=2", "--device=cpu", "--bias=False"]
    run_script("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    proc = torchrun(2, *common, f"--out_dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "two" / "ckpt.pt")
    assert_ddp_matches(a["model"], b["model"], learning_rate=3e-3, steps=3)  # (conftest: why not bit for bit)
    logged = [[(e["step"], e["loss"], e["aux_loss"], e["expert_load"]) for e in read_metrics(tmp_path / run)
               if e["event"] == "train"] for run in ("one", "two")]
    assert len(logged[0]) == len(logged[1]) > 0
    for (s1, l1, _, _), (s2, l2, _, _) in zip(*logged):
        assert s1 == s2 and l2 == pytest.approx(l1, rel=1e-5)  # the language-model loss, all-reduced
    for (_, _, x1, _), (_, _, x2, _) in zip(*logged):
        assert x2 == pytest.approx(x1, rel=1e-5)  # the load-balancing loss and the expert loads, all-reduced too
    torch.testing.assert_close(torch.tensor([e for *_, e in logged[1]]), torch.tensor([e for *_, e in logged[0]]))
