"""The engine (nash/engine.py) in milliseconds, for the edit-and-rerun loop: a mock model whose next token is
scripted and a byte tokenizer test the one decode loop (per-row stops, stop strings, budgets), the one sampler
(temperature, top-k, top-p), the UTF-8 decoder and the stop matcher; then tiny real models check the engine's
cached decoding against model.py's uncached generate, token for token and logit for logit (as nanochat's
tests/test_engine.py)."""
import pytest
import torch
import torch.nn.functional as F

import model as M
from model import GPT, GPTConfig
from nash import engine as E
from nash.engine import Completion, Decoder, Sampling, StopStrings, sample_batch, sample_next, stream
from nash.kv_cache import KVCache

GREEDY = Sampling(temperature=0.0, top_k=None, max_new_tokens=10)


class ByteTokenizer:
    """Token id = byte value: a character of several UTF-8 bytes always spans tokens."""

    def decode_single_token_bytes(self, token):
        return bytes([token])

    def encode(self, text):
        return list(text.encode("utf-8"))


class MockModel(torch.nn.Module):
    """Greedy next token = (last token + 1) mod 256, or script[last token] where given; it writes one
    dummy key/value per position, so the cache machinery (stack, select, expand) really runs."""

    def __init__(self, max_seq_len=64, script=None):
        super().__init__()
        self.config = GPTConfig(n_layers=1, n_heads=1, d_model=2, d_ff=2, max_seq_len=max_seq_len, vocab_size=256)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.script = script or {}
        self.calls = []  # the (B, T) of each forward

    def next_logits(self, idx, kv_cache=None):
        self.calls.append(tuple(idx.shape))
        if kv_cache is not None:  # what attention would do: write T entries, then advance
            B, T = idx.shape
            kv_cache.slot(T)
            kv = torch.zeros(B, 1, T, 1)
            kv_cache.update(0, kv, kv)
            kv_cache.advance(T)
        last = idx[:, -1].tolist()
        nxt = torch.tensor([self.script.get(t, (t + 1) % 256) for t in last])
        return F.one_hot(nxt, 256).float() * 10.0


def test_decode_counts_up_and_stops_at_the_budget():
    out = list(stream(MockModel(), [ord("a")], Sampling(0.0, None, None, 5)))
    assert bytes(out) == b"bcdef"


def test_each_row_stops_on_its_own():
    model = MockModel()
    stop = {ord("d")}  # the row starting at "a" meets it after "b", "c"; the row at "x" never does
    rows = sample_batch(model, [[ord("a")], [ord("x")]], 1, Sampling(0.0, None, None, 5), stop)
    a, x = rows[0][0], rows[1][0]
    assert bytes(a.tokens) == b"bc" and a.finish_reason == "stop"
    assert bytes(x.tokens) == b"yz{|}" and x.finish_reason == "length"
    # the finished row left the batch: the forwards after "d" was sampled are one row wide
    assert model.calls[-1] == (1, 1) and (2, 1) in model.calls


def test_stop_string_spanning_tokens_cuts_the_text():
    rows = sample_batch(MockModel(), [[ord("a")]], 2, Sampling(0.0, None, None, 20), (), stop_strings=["de"],
                        enc=ByteTokenizer())
    for c in rows[0]:
        assert c.finish_reason == "stop" and bytes(c.tokens) == b"bcde" and c.text == "bc"


def test_context_end_and_empty_prompt():
    c = Completion()
    out = list(stream(MockModel(max_seq_len=8), [1, 2, 3], Sampling(0.0, None, None, 100), completion=c))
    assert len(out) == 5 and c.finish_reason == "length"  # prompt + completion fill the 8-token context
    with pytest.raises(ValueError, match="empty"):
        list(stream(MockModel(), [], GREEDY))


def test_stream_restores_train_mode():
    model = MockModel()
    model.train()
    assert len(list(stream(model, [1], GREEDY))) == 10 and model.training


def test_decoder_holds_back_a_split_character():
    enc, text = ByteTokenizer(), "héllo 🦙!"
    decoder = Decoder(enc)
    pieces = [decoder(t) for t in enc.encode(text)]
    assert "".join(pieces) + decoder.flush() == text
    assert "\ufffd" not in "".join(pieces) and "" in pieces  # the first bytes of é and 🦙 gave nothing yet
    assert Decoder.text(enc, enc.encode(text)) == text
    assert Decoder.text(enc, [0xF0, 0x9F]) == "\ufffd"  # a character cut short is replaced, once, at the end


@pytest.mark.parametrize("pieces,stops,cut", [
    (["ab", "cU", "ser:", "x"], ["User:"], 3),  # across pieces
    (["aaab"], ["aab"], 1),  # a partial match that restarts (KMP's fallback)
    (["hello"], ["z"], None),
    (["xabc"], ["abc", "b"], 2),  # the first to complete wins
])
def test_stop_strings(pieces, stops, cut):
    matcher, found, seen = StopStrings(stops), None, ""
    for p in pieces:
        seen += p
        found = matcher.feed(p)
        if found is not None:
            break
    assert found == cut
    if cut is None:
        assert matcher.held == 0


def test_stop_strings_hold_back_a_possible_start():
    matcher = StopStrings(["User:"])
    assert matcher.feed("hi Us") is None and matcher.held == 2


def test_sample_next_filters():
    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04])
    logits = probs.log().repeat(4000, 1)
    g = torch.Generator().manual_seed(0)

    def support(**kw):
        return set(sample_next(logits, generator=g, **kw).tolist())

    assert support(top_k=3) == {0, 1, 2}
    assert support(top_k=1) == {0}
    assert support(top_p=0.65) == {0, 1}  # 0.4 < 0.65 <= 0.4 + 0.3
    assert support(top_p=0.3) == {0}
    assert support(top_k=2, top_p=0.9) == {0, 1}
    assert support(top_p=1.0) == {0, 1, 2, 3, 4}
    assert support(temperature=0) == {0}
    counts = torch.bincount(sample_next(logits, generator=g), minlength=5).float() / 4000
    torch.testing.assert_close(counts, probs, atol=0.03, rtol=0)  # really samples from softmax(logits)
    sharp = torch.bincount(sample_next(logits, temperature=0.5, generator=g), minlength=5).float() / 4000
    torch.testing.assert_close(sharp, probs ** 2 / (probs ** 2).sum(), atol=0.03, rtol=0)  # softmax(logits / 0.5)


def test_draw_inverts_the_cdf_and_never_picks_a_token_of_probability_zero():
    """The engine's draw (one uniform per row against the row's cumulative probabilities, not torch.multinomial)
    follows the probabilities, with a generator per row or one for all, and leaves probability-0 tokens alone, at
    the edges too (the first and last columns, where a cumsum's rounding or u's top end could land)."""
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    g = torch.Generator().manual_seed(0)
    picks = E.draw(probs.expand(20000, 6), g)
    torch.testing.assert_close(torch.bincount(picks, minlength=6).float() / 20000, probs, atol=0.015, rtol=0)
    rows = [torch.Generator().manual_seed(s) for s in range(300)]
    assert set(E.draw(probs.expand(300, 6), rows).tolist()) <= {1, 3, 4}
    one_hot = torch.eye(6)[[0, 5, 2]]  # all mass on the first, the last, a middle token
    for _ in range(200):
        assert E.draw(one_hot, g).tolist() == [0, 5, 2]
    tiny = torch.tensor([[1e-30, 1.0 - 1e-7, 0.0, 0.0]])  # zeros after the mass stay zero in the cumsum
    assert set(E.draw(tiny.expand(5000, 4), g).tolist()) <= {0, 1}


def test_per_row_generators_make_rows_independent():
    logits = torch.zeros(3, 50)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    a, b = sample_next(logits, generator=gens()), sample_next(logits[1:], generator=gens()[1:])
    assert a[1:].tolist() == b.tolist()


# -----------------------------------------------------------------------------
# tiny real models: the engine's cached decoding against model.py's uncached generate

CLASSIC = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=16, vocab_size=100, dropout=0.0)
CONFIGS = {"classic": CLASSIC,
           "modern": dict(CLASSIC, pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, qk_norm=True,
                          bias=False, tie_weights=False),
           "moe_sinks": dict(CLASSIC, pos_emb="rope", n_experts=4, experts_top_k=2, attn_sinks=2),
           "sinks_learned": dict(CLASSIC, attn_sinks=1, n_experts=3, experts_top_k=1)}


def make(cfg, seed=0):
    """Weights far from the init, so attention is sharp and a bug in the cache or positions shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**cfg))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if p.dim() == 1 and name.endswith("weight") else 0.0, 0.3 if p.dim() >= 2 else 0.2)
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("prompt_len", [1, 5, 12])
def test_cached_decoding_equals_uncached_generate(name, prompt_len, monkeypatch):
    model = make(CONFIGS[name])
    S = model.config.max_seq_len
    logged = []
    monkeypatch.setattr(E, "sample_next", lambda logits, *a, **k: logged.append(logits) or sample_next(logits, *a, **k))
    prompts = torch.randint(0, 100, (3, prompt_len))
    oracle = model.generate(prompts, S - prompt_len, temperature=0.0)  # model.py: a full forward per token
    rows = sample_batch(model, prompts.tolist(), 1, Sampling(0.0, None, None, 100), ())
    for r in range(3):
        assert rows[r][0].tokens == oracle[r, prompt_len:].tolist() and rows[r][0].finish_reason == "length"
    assert list(stream(model, prompts[0].tolist(), Sampling(0.0, None, None, 100))) == oracle[0, prompt_len:].tolist()
    for step, logits in enumerate(logged[:S - prompt_len]):  # the batched run's: each what a plain forward gives
        expected = model(oracle[:, :prompt_len + step])[0][:, -1]
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw", [dict(top_k=4), dict(top_p=0.6), dict(top_k=6, top_p=0.5, temperature=0.7)])
def test_sampling_draws_only_from_the_allowed_set(kw, monkeypatch):
    model = make(CONFIGS["modern"])
    logged = []
    monkeypatch.setattr(E, "sample_next", lambda logits, *a, **k: logged.append(logits) or sample_next(logits, *a, **k))
    sampling = Sampling(**{"temperature": 1.0, "top_k": None, **kw}, max_new_tokens=6, seed=0)
    rows = sample_batch(model, [[1, 2, 3, 4]], 64, sampling, ())[0]
    temperature = kw.get("temperature", 1.0)
    for step, logits in enumerate(logged):
        probs = F.softmax(logits / temperature, dim=-1)
        for row in range(64):
            order = probs[row].argsort(descending=True)
            allowed = order[:kw.get("top_k", 100)]
            if "top_p" in kw:  # the smallest prefix (of the top-k, renormalised) that reaches top_p
                p = probs[row, allowed] / probs[row, allowed].sum()
                allowed = allowed[:int((p.cumsum(0) < kw["top_p"]).sum()) + 1]
            assert rows[row].tokens[step] in allowed.tolist()
    assert len({tuple(c.tokens) for c in rows}) > 1  # it did sample, not just take the argmax


def test_uncached_generate_stops_and_samples():
    model = make(CLASSIC)
    idx = torch.randint(0, 100, (3, 4))
    free = model.generate(idx, 20, temperature=0)[:, 4:]
    stop = free[0, 2].item()
    out = model.generate(idx, 20, temperature=0, stop_token=stop)[:, 4:]
    hits = [(row == stop).nonzero() for row in free]
    end = max(h[0].item() + 1 for h in hits) if all(len(h) for h in hits) else 20
    expected = free[:, :end].clone()
    for r, h in enumerate(hits):
        if len(h):
            expected[r, h[0].item():] = stop
    assert torch.equal(out, expected)
    s1, s2 = (model.generate(idx, 8, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(s1, s2) and model.generate(idx, 0).shape == (3, 4)


def test_kv_cache_select_and_stack_keep_rows():
    model = make(CLASSIC)
    a, b = [5, 6, 7], [8, 9]
    caches = []
    for p in (a, b):
        c = KVCache(model.config.n_layers, 16)
        model.next_logits(torch.tensor([p]), c)
        caches.append(c)
    stacked = KVCache.stack(caches, 2, 10)
    assert stacked.pos == 3 and stacked.pad.tolist() == [0, 0, 1, 1]
    stacked.select(torch.tensor([3, 0]))
    assert stacked.pad.tolist() == [1, 0] and stacked.k[0].size(0) == 2
    assert M.GPT is GPT  # (the engine builds on model.py's GPT, nothing else of it)


@pytest.mark.parametrize("settings", [dict(top_p=1e-50), dict(temperature=1e-300), dict(temperature=1e-300, top_p=1e-320),
                                      dict(temperature=1e-300, top_k=3)])
def test_extreme_sampling_settings_pick_the_argmax_instead_of_failing(settings):
    """Issue 35: temperature 1e-300 made the logits inf (softmax NaN, multinomial raised) and top_p=1e-50 could keep
    no token at all; both are the greedy token to float precision."""
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(sample_next(logits, **settings), logits.argmax(-1))
