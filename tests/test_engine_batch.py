"""Batched sampling (nash.engine.sample_batch): the same tokens as one sequence at a time, rows that stop on
their own, reproducible seeds; and the pass@k / maj@N metrics evaluate.py --num_samples reports."""
import pytest
import torch

from model import GPT, GPTConfig, KVCache, sample_next
from nash.engine import Completion, Sampling, sample_batch

CONFIGS = {
    "gpt2": dict(pos_emb="learned", norm="layernorm", mlp="gelu", bias=True),
    "rope_gqa": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_heads=4, n_kv_heads=2, qk_norm=True),
    "moe": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_experts=4, experts_top_k=2),
    "sinks": dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", attn_sinks=2),
}
PROMPTS = [[5, 9, 2], [7, 1, 4, 4, 8, 3, 2, 6, 11], [3], [12, 5, 5, 1, 9]]
GREEDY = Sampling(temperature=0, top_k=None, max_new_tokens=12)


def tiny(name, seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(n_layers=2, n_heads=4, d_model=32, max_seq_len=32, vocab_size=64)
    kw.update(CONFIGS[name])
    kw.update(overrides)
    return GPT(GPTConfig(**kw)).eval()


def one_at_a_time(model, prompt, sampling, stop_ids=()):
    """The reference: greedy decoding with a full forward over the whole sequence at every step (no cache)."""
    tokens = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(min(sampling.max_new_tokens, model.config.max_seq_len - len(prompt))):
            logits, _ = model(torch.tensor([tokens]))
            token = int(sample_next(logits[:, -1].float(), 0)[0])
            if token in stop_ids:
                return out, "stop"
            out.append(token)
            tokens.append(token)
    return out, "length"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_batched_equals_one_at_a_time(name):
    model = tiny(name)
    result = sample_batch(model, PROMPTS, 3, GREEDY, stop_ids=())
    assert len(result) == len(PROMPTS) and all(len(r) == 3 for r in result)
    for prompt, samples in zip(PROMPTS, result):
        want, reason = one_at_a_time(model, prompt, GREEDY)
        for c in samples:
            assert c.tokens == want and c.finish_reason == reason


def test_greedy_equal_for_any_batch_size_and_at_the_context_end():
    model = tiny("gpt2")
    long = Sampling(temperature=0, top_k=None, max_new_tokens=40)  # past the 32-token context for every prompt
    a = sample_batch(model, PROMPTS, 2, long, stop_ids=(), batch_size=2)
    b = sample_batch(model, PROMPTS, 2, long, stop_ids=(), batch_size=64)
    assert [[c.tokens for c in r] for r in a] == [[c.tokens for c in r] for r in b]
    for prompt, samples in zip(PROMPTS, a):
        assert samples[0].tokens == one_at_a_time(model, prompt, long)[0]
        assert len(prompt) + len(samples[0].tokens) == 32 and samples[0].finish_reason == "length"


def test_each_row_stops_on_its_own():
    model = tiny("rope_gqa")
    free = sample_batch(model, PROMPTS, 1, GREEDY, stop_ids=())
    stop = free[1][0].tokens[4]  # a token prompt 1 produces at step 5
    result = sample_batch(model, PROMPTS, 2, GREEDY, stop_ids={stop})
    for prompt, samples, ref in zip(PROMPTS, result, free):
        want, reason = one_at_a_time(model, prompt, GREEDY, stop_ids={stop})
        assert want == ref[0].tokens[:len(want)]  # stopping one row changes no other row
        assert [c.tokens for c in samples] == [want, want] and samples[0].finish_reason == reason
    assert result[1][0].finish_reason == "stop" and len(result[1][0].tokens) <= 4
    assert stop not in result[1][0].tokens


class ByteEnc:
    """A stand-in tokenizer: token t is the character chr(97 + t % 26)."""

    def decode_single_token_bytes(self, t):
        return bytes([97 + t % 26])


def test_stop_strings_cut_the_text_and_end_the_row():
    model = tiny("gpt2")
    enc = ByteEnc()
    free = sample_batch(model, PROMPTS, 1, GREEDY, stop_ids=(), enc=enc)
    text = free[0][0].text
    assert text == "".join(chr(97 + t % 26) for t in free[0][0].tokens)
    stop = text[3:5]  # spans two tokens
    cut = text.index(stop)
    result = sample_batch(model, PROMPTS, 2, GREEDY, stop_ids=(), stop_strings=(stop,), enc=enc)
    for c in result[0]:
        assert c.text == text[:cut] and c.finish_reason == "stop"
        assert len(c.tokens) == cut + len(stop)  # the row stopped at the token that completed the string
    with pytest.raises(ValueError, match="enc"):
        sample_batch(model, PROMPTS, 1, GREEDY, stop_ids=(), stop_strings=("x",))


def test_seeded_sampling_is_reproducible_and_independent_of_batching():
    model = tiny("rope_gqa")
    hot = Sampling(temperature=1.0, top_k=20, max_new_tokens=10, seed=123)
    a = sample_batch(model, PROMPTS, 4, hot, stop_ids=())
    b = sample_batch(model, PROMPTS, 4, hot, stop_ids=(), batch_size=4)
    c = sample_batch(model, PROMPTS[:2], 4, hot, stop_ids=())  # fewer prompts: prompt i's samples unchanged
    tokens = lambda r: [[s.tokens for s in row] for row in r]
    assert tokens(a) == tokens(b) and tokens(a)[:2] == tokens(c)
    assert len({tuple(s) for s in tokens(a)[1]}) > 1  # the samples of one prompt differ
    other = sample_batch(model, PROMPTS, 4, Sampling(temperature=1.0, top_k=20, max_new_tokens=10, seed=124),
                         stop_ids=())
    assert tokens(other) != tokens(a)


def test_bad_prompts_are_refused():
    model = tiny("gpt2")
    with pytest.raises(ValueError, match="prompt"):
        sample_batch(model, [[1, 2], []], 1, GREEDY, stop_ids=())
    with pytest.raises(ValueError, match="prompt"):
        sample_batch(model, [list(range(32))], 1, GREEDY, stop_ids=())
