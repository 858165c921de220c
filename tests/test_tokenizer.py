import hashlib
import os

import pytest

from nash import tokenizer
from nash.tokenizer import CHAT_TOKENS, EOT_ID, SPECIAL_TOKENS, VOCAB_SIZE, get_tokenizer, special_ids


def test_known_ids():
    enc = get_tokenizer()
    # ids of OpenAI's GPT-2 encoder for these strings
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.encode(" the") == [262]
    assert enc.encode("<|endoftext|>", allowed_special="all") == [EOT_ID]
    assert VOCAB_SIZE == 50257 and enc.eot_token == EOT_ID == 50256
    assert enc.n_vocab == 50267  # GPT-2's 50257 + the six chat tokens + the four tool tokens


def test_chat_special_tokens_follow_the_shared_contract():
    enc = get_tokenizer()
    assert SPECIAL_TOKENS == ("<|endoftext|>", "<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
                              "<|assistant_start|>", "<|assistant_end|>",
                              "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
    ids = special_ids(enc)
    assert [ids[name] for name in SPECIAL_TOKENS] == list(range(50256, 50267))
    for name in SPECIAL_TOKENS[1:]:
        assert enc.encode(name, allowed_special="all") == [ids[name]]
        assert enc.decode([ids[name]]) == name and enc.decode_single_token_bytes(ids[name]) == name.encode()
        assert not set(enc.encode_ordinary(f"say {name} now")) & set(ids.values())  # text never becomes a special
        assert not set(enc.encode(f"say {name}", disallowed_special=())) & set(ids.values())
        with pytest.raises(ValueError):
            enc.encode(name)  # tiktoken's default refuses to guess: a special in text must be asked for
    # every id an ordinary text can produce is below the chat tokens, so pretraining data never holds one
    assert max(enc.encode_ordinary("".join(SPECIAL_TOKENS) + " naïve 🦜")) < VOCAB_SIZE


@pytest.mark.parametrize("text", [
    "To be, or not to be, that is the question:",
    "  leading and trailing spaces  \n\n\tand tabs\r\n",
    "naïve café — “quotes” ünïcödé, 日本語のテキスト, emoji 🦜🚀, Ελληνικά",
    "code: def f(x):\n    return x ** 2  # comment",
    "",
])
def test_round_trip(text):
    enc = get_tokenizer()
    ids = enc.encode_ordinary(text)
    assert all(0 <= i < VOCAB_SIZE for i in ids)
    assert enc.decode(ids) == text


def test_special_token_only_when_allowed():
    enc = get_tokenizer()
    text = "end<|endoftext|>start"
    assert EOT_ID not in enc.encode_ordinary(text)  # plain text never turns into the control token
    assert enc.encode(text, allowed_special="all").count(EOT_ID) == 1
    assert enc.decode(enc.encode(text, allowed_special="all")) == text


def test_bpe_files_match_tiktoken_hashes():
    # the hashes we check are the ones tiktoken pins for gpt2, and the installed files have them
    import inspect
    from tiktoken_ext import openai_public
    source = inspect.getsource(openai_public.gpt2)
    for name, digest in tokenizer.BPE_FILES.items():
        assert digest in source
        with open(os.path.join(tokenizer.bpe_data_dir(), name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def test_corrupt_bpe_file_is_a_clear_error(tmp_path, monkeypatch):
    for name in tokenizer.BPE_FILES:
        (tmp_path / name).write_bytes(b"not the real file")
    monkeypatch.setattr(tokenizer, "bpe_data_dir", lambda: str(tmp_path))
    get_tokenizer.cache_clear()
    try:
        with pytest.raises(SystemExit, match="sha256"):
            get_tokenizer()
    finally:
        get_tokenizer.cache_clear()
