"""Tests for attention-sink tokens and the rolling KV cache (nash/kv_cache.py's RollingKVCache): the rolling cache equals the exact
one within the context, keeps a constant size and cost past it, puts keys at the right positions (checked
exactly on a one-layer model), refuses learned positions; the sinks train; sample.py --rolling_cache.
The exact cache against full recompute with sinks is in test_model.py (its CONFIGS include sink models)."""
import pytest
import torch

from conftest import TINY_MODEL, TINY_TRAINING, run_inline
from nash.engine import Sampling, stream
from nash.kv_cache import RollingKVCache
from model import GPT, GPTConfig

ROPE = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=8, vocab_size=100, dropout=0.0,
            pos_emb="rope", norm="rmsnorm", n_kv_heads=2, qk_norm=True)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**ROPE, **kw}))
    with torch.no_grad():  # far from the init: sharp attention, so position bugs show
        for name, p in model.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and name.endswith("weight") else 0.0, 0.3 if p.dim() >= 2 else 0.2)
    return model.eval()


@pytest.mark.parametrize("sinks", [0, 2])
def test_rolling_equals_exact_within_the_context(sinks):
    model = make(attn_sinks=sinks)
    idx = torch.randint(0, 100, (3, 3))
    # 6 new tokens: the last one is sampled from a full window of 8, still nothing evicted
    exact = model.generate(idx, 6, temperature=0)  # model.py's uncached oracle
    for row in range(3):
        rolling = list(stream(model, idx[row].tolist(), Sampling(0.0, None, None, 6), rolling_cache=True))
        assert exact[row, 3:].tolist() == rolling


@pytest.mark.parametrize("sinks,keep", [(0, None), (2, None), (1, 3)])
def test_rolling_cache_past_the_context_constant_size(sinks, keep, key_lengths):
    model = make(attn_sinks=sinks)
    S = model.config.max_seq_len
    prompt = torch.randint(0, 100, (3,)).tolist()
    out = torch.tensor([prompt + list(stream(model, prompt, Sampling(0.0, None, None, 3 * S), rolling_cache=True,
                                             keep=keep))])
    assert out.shape == (1, 3 + 3 * S)
    per_step = key_lengths[model.config.n_layers:]  # after the prefill: one call per layer per step
    assert len(per_step) == model.config.n_layers * (3 * S - 1)
    assert max(per_step) == S + sinks and per_step[-20:] == [S + sinks] * 20  # full, and it stays that size
    cache = RollingKVCache.for_config(model.config, keep)
    with torch.no_grad():
        for t in range(3 * S):
            model.next_logits(out[:, t:t + 1], cache)
    assert cache.pos == S + sinks and cache.seen == 3 * S + sinks and cache.k[0].shape[2] == S + sinks
    assert cache.keep == (keep if keep is not None else sinks or 4)


@pytest.mark.parametrize("sinks,keep", [(0, 4), (2, 2), (2, 3), (0, 0)])
def test_rolling_cache_positions_exact_on_one_layer(sinks, keep):
    # with one layer a token's key/value depends on nothing but the token, so the rolling cache must give
    # exactly the logits of a plain forward over what it holds: the kept entries, then the recent tokens,
    # at positions 0, 1, 2... (StreamingLLM's positions within the cache)
    model = make(n_layers=1, attn_sinks=sinks)
    S = model.config.max_seq_len
    seq = torch.randint(0, 100, (2, 3 * S))
    cache = RollingKVCache.for_config(model.config, keep)
    kept_tokens = keep - sinks  # kept entries after the sinks are the first tokens
    with torch.no_grad():
        for t in range(3 * S):
            got = model.next_logits(seq[:, t:t + 1], cache)
            held = seq[:, :t + 1] if t < S else torch.cat([seq[:, :kept_tokens], seq[:, t + 1 - (S - kept_tokens):t + 1]], 1)
            if keep < sinks or (t >= S and keep == 0 and sinks):
                continue  # the sinks themselves were evicted: no plain forward reproduces that
            torch.testing.assert_close(got, model.next_logits(held), atol=1e-4, rtol=1e-4)


def test_rolling_cache_refuses_learned_positions():
    model = make(pos_emb="learned", qk_norm=False)
    with pytest.raises(ValueError, match="rolling KV cache needs pos_emb=rope"):
        list(stream(model, [0, 0], Sampling(0.0, None, None, 3), rolling_cache=True))
    with pytest.raises(ValueError, match="once it fills, feed one position at a time"):
        cache = RollingKVCache.for_config(make().config)
        make().next_logits(torch.zeros(1, 9, dtype=torch.long), cache)


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_sinks_are_invisible_and_train(pos_emb):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**ROPE, "pos_emb": pos_emb, "attn_sinks": 3}))
    assert model.sinks.shape == (3, 32)
    x = torch.randint(0, 100, (2, 8))  # a full max_seq_len: the sinks come on top
    logits, loss = model(x, x)
    assert logits.shape == (2, 8, 100)  # no outputs for the sinks
    loss.backward()
    assert model.sinks.grad.abs().sum() > 0
    (opt,) = model.configure_optimizers("adamw", learning_rate=1e-2)
    assert any(p is model.sinks for g in opt.param_groups for p in g["params"])
    before = model.sinks.detach().clone()
    opt.step()
    assert not torch.equal(before, model.sinks)
    # every query can see them: changing a sink changes every position's output
    with torch.no_grad():
        model.sinks[0] += 1.0
    assert (model(x)[0] - logits).abs().amax(-1).min() > 0


def test_sample_rolling_cache_past_the_context(tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "sinks"
    run_inline(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, "--pos_emb=rope", "--attn_sinks=2",
               "--max_steps=4", "--eval_interval=2", "--checkpoint_interval=2", "--dataset=tiny",
               f"--data_dir={tiny_data}", f"--out_dir={out}")
    assert GPT(GPTConfig(**torch.load(out / "ckpt.pt", weights_only=True)["model_config"])).config.attn_sinks == 2
    capsys.readouterr()
    run_inline(monkeypatch, "sample.py", f"--out_dir={out}", "--rolling_cache", "--max_new_tokens=100",
               "--num_samples=1", "--stop_at_eot=False", "--temperature=0")  # 100 > max_seq_len=32
    assert len(capsys.readouterr().out) > 100
