"""sample_batch (nash/engine.py): batched greedy output equals one-at-a-time greedy output token for token, rows stop
on their own, and seeded sampling is reproducible and independent of how the rows are batched."""
import pytest
import torch

from model import GPT, GPTConfig
from nash.engine import Sampling, sample_batch, stream

SMALL = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=32, vocab_size=97, dropout=0.0)
CONFIGS = {"gpt2": {}, "gqa_rope": dict(pos_emb="rope", norm="rmsnorm", n_kv_heads=2, qk_norm=True),
           "moe": dict(n_experts=4, experts_top_k=2), "sinks": dict(pos_emb="rope", attn_sinks=2)}
PROMPTS = [[5, 9, 2], [7, 1, 3, 3, 8, 20, 11, 4, 6], [40], [5, 9, 2]]  # different lengths, one repeated


def tiny(name, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SMALL, **CONFIGS[name])).eval()


def one_at_a_time(model, prompt, n, **kw):
    """The reference: model.generate without any cache (a full forward per token), one prompt alone."""
    out = model.generate(torch.tensor([prompt]), n, temperature=0.0, **kw)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_greedy_equals_one_at_a_time(name):
    model = tiny(name)
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=12)
    for batch_size in (64, 3):  # all rows together, or a few prompts per batch
        result = sample_batch(model, PROMPTS, 3, greedy, stop_ids=(), batch_size=batch_size)
        for prompt, samples in zip(PROMPTS, result):
            reference = one_at_a_time(model, prompt, 12)
            assert [c.tokens for c in samples] == [reference] * 3
            assert all(c.finish_reason == "length" for c in samples)


def test_rows_stop_at_the_context_end_each_at_its_own_length():
    model = tiny("gpt2")
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=100)
    result = sample_batch(model, PROMPTS[:3], 2, greedy, stop_ids=())
    for prompt, samples in zip(PROMPTS, result):
        assert [len(c.tokens) for c in samples] == [32 - len(prompt)] * 2  # prompt + completion fill the context
        assert samples[0].tokens == one_at_a_time(model, prompt, 32 - len(prompt))


@pytest.mark.parametrize("name", ["gqa_rope", "sinks"])
def test_rolling_cache_goes_past_the_context_as_generate_does(name):
    model = tiny(name)
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=50)  # past the 32-token context
    result = sample_batch(model, PROMPTS[:3], 2, greedy, stop_ids=(), rolling_cache=True)
    for prompt, samples in zip(PROMPTS, result):
        reference = list(stream(model, prompt, greedy, rolling_cache=True))  # one row alone
        assert [c.tokens for c in samples] == [reference] * 2


def test_each_row_stops_on_its_own_stop_token_and_stop_string():
    from nash.tokenizer import get_tokenizer
    enc = get_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, "vocab_size": enc.n_vocab})).eval()
    prompts = [enc.encode_ordinary("Hello there"), enc.encode_ordinary("A much longer prompt than the first one")]
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=8)
    free = [one_at_a_time(model, p, 8) for p in prompts]
    stop_id = free[0][3]  # the first row's 4th token ends it; the second row goes on unless it meets that id
    result = sample_batch(model, prompts, 1, greedy, stop_ids=[stop_id], enc=enc)
    first, second = result[0][0], result[1][0]
    cut = free[0].index(stop_id)  # (it may come earlier than the 4th)
    assert first.tokens == free[0][:cut] and first.finish_reason == "stop" and first.text == enc.decode(free[0][:cut])
    expect = free[1][:free[1].index(stop_id)] if stop_id in free[1] else free[1]
    assert second.tokens == expect and second.finish_reason == ("stop" if stop_id in free[1] else "length")
    # a stop string: the text is cut before it, the tokens end with the one that completed it
    text = enc.decode(free[1])
    stop = text[len(text) // 2:len(text) // 2 + 2]
    result = sample_batch(model, prompts, 1, greedy, stop_ids=(), stop_strings=[stop], enc=enc)
    assert result[1][0].text == text[:text.index(stop)] and result[1][0].finish_reason == "stop"
    assert stop in enc.decode(result[1][0].tokens) and stop not in enc.decode(result[1][0].tokens[:-1])


def test_seeded_sampling_is_reproducible_and_independent_of_the_batching():
    model = tiny("gqa_rope")
    sampling = Sampling(temperature=1.0, top_k=20, max_new_tokens=10, seed=123)
    a = sample_batch(model, PROMPTS, 4, sampling, stop_ids=())
    b = sample_batch(model, PROMPTS, 4, sampling, stop_ids=(), batch_size=4)  # one prompt's rows at a time
    tokens = [[c.tokens for c in row] for row in a]
    assert tokens == [[c.tokens for c in row] for row in b]
    assert len({tuple(t) for t in tokens[0]}) > 1  # the samples of one prompt differ from each other
    other = sample_batch(model, PROMPTS, 4, Sampling(temperature=1.0, top_k=20, max_new_tokens=10, seed=124), ())
    assert [[c.tokens for c in row] for row in other] != tokens


def test_bad_prompts_are_refused():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="1 to 31"):
        sample_batch(model, [[1, 2], list(range(32))], 1, Sampling(), ())
    with pytest.raises(ValueError, match="1 to 31"):
        sample_batch(model, [[]], 1, Sampling(), ())
