"""bench.py --what=tokenizer: learning a BPE with rustbpe against Hugging Face tokenizers, prepare.py
--tokenizer_vocab_size end to end, encoding speed and bytes per token (see bench.py)."""
import collections
import itertools
import json
import os
import sys
import sysconfig
import time

from nash import textsplit
from nash import tokenizer
from benches.common import CORES, HERE, run


def python_sources():
    """The .py files installed here, the standard library first, then site-packages, in a fixed order."""
    paths = sysconfig.get_paths()
    for top in dict.fromkeys((paths["stdlib"], paths["purelib"])):
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if os.path.join(root, d) != paths["purelib"])  # site-packages comes second
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.join(root, name)


def make_tok_corpus(path, mb):
    """About mb MB of JSON lines {"text", "source"}: Shakespeare's plays (at most half of it), then Python source
    files installed here, the standard library first, a document each; written as it goes."""
    with open(os.path.join(HERE, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        plays = [d for d in textsplit.SEPARATOR_LINE.split(f.read()) if d.strip()]
    chars = 0
    with open(path, "w", encoding="utf-8") as f:
        for play in plays:
            if chars >= mb * 1e6 / 2:
                break
            f.write(json.dumps({"text": play, "source": "shakespeare"}) + "\n")
            chars += len(play)
        for source in python_sources():
            try:
                with open(source, encoding="utf-8") as py:
                    text = py.read()
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                f.write(json.dumps({"text": text, "source": "python"}) + "\n")
                chars += len(text)
                if chars >= mb * 1e6:
                    break
    return path


def tok_documents(path, split, source=None):
    """The train or val documents of make_tok_corpus's file (of one source, or all), streamed: every 50th document
    of each source, its first included, is val."""
    seen = collections.Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            is_val = seen[row["source"]] % 50 == 0
            seen[row["source"]] += 1
            if is_val == (split == "val") and source in (None, row["source"]):
                yield row["text"]


def train_hf(texts, vocab_size):
    """Hugging Face tokenizers' BPE trainer set up like ours: GPT-4's split, byte-level, as many ordinary tokens."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(tokenizer.GPT4_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    hf.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size - len(tokenizer.SPECIAL_TOKENS), min_frequency=0, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return hf


def bench_tokenizer(tmp, cfg):
    """Learning a BPE from tok_mb MB (rustbpe, which prepare.py uses, against Hugging Face tokenizers), prepare.py
    --tokenizer_vocab_size end to end (wall time, peak RSS), encode speed against tiktoken's GPT-2, and bytes per
    token on held-out Shakespeare and Python against GPT-2 and GPT-4."""
    import tok_eval
    corpus = make_tok_corpus(os.path.join(tmp, "tok.jsonl"), cfg.tok_mb)
    val = {source: list(tok_documents(corpus, "val", source)) for source in ("shakespeare", "python")}
    val = {source: docs for source, docs in val.items() if docs}
    times, learnt = collections.defaultdict(list), {}
    for r in range(cfg.repeats):  # alternating, as load hits both; each streams the documents from the file
        for name, train in (("rustbpe", tokenizer.train_bpe), ("hf_tokenizers", train_hf)):
            t0 = time.perf_counter()
            learnt[name] = train(tok_documents(corpus, "train"), cfg.tok_vocab_size)
            times[name].append(time.perf_counter() - t0)
    spec, hf = learnt["rustbpe"], learnt["hf_tokenizers"]
    train_chars = sum(map(len, tok_documents(corpus, "train")))
    _, wall, peak = run([sys.executable, "prepare.py", f"--input={corpus}", "--name=tok", f"--data_root={tmp}",
                         f"--tokenizer_vocab_size={cfg.tok_vocab_size}", "--force"], "prepare.py", memory=True)
    with open(os.path.join(tmp, "tok", "meta.json")) as f:
        meta = json.load(f)
    own = {source: tokenizer.train_bpe(tok_documents(corpus, "train", source), cfg.tok_vocab_size) for source in val}
    # compression: bytes per token of each tokenizer on each source's held-out documents
    enc, gpt2 = tokenizer.from_spec(spec), tokenizer.get_tokenizer()
    encodings = [("gpt2", gpt2), ("cl100k_base", tokenizer.get_cl100k()), ("rustbpe", enc)]
    compression = tok_eval.compare([e for e in encodings if e[1] is not None], val.items())
    for source, docs in val.items():
        row = compression[source]
        row["hf_tokenizers"] = row["bytes"] / sum(len(e.ids) for e in hf.encode_batch(docs))
        own_enc = tokenizer.from_spec(own[source])  # learnt from this source's train documents alone
        row["rustbpe_own_source"] = row["bytes"] / sum(map(len, own_enc.encode_ordinary_batch(docs)))
    # encode speed: the same documents, every core
    docs = list(itertools.islice(tok_documents(corpus, "train", "python"), 2000))
    n_bytes = sum(len(d.encode()) for d in docs)
    speed = collections.defaultdict(list)
    for r in range(cfg.repeats + 1):
        for name, encode in (("tiktoken gpt2", lambda: gpt2.encode_ordinary_batch(docs, num_threads=CORES)),
                             ("tiktoken rustbpe", lambda: enc.encode_ordinary_batch(docs, num_threads=CORES)),
                             ("hf_tokenizers", lambda: hf.encode_batch(docs))):  # (all cores too)
            t0 = time.perf_counter()
            encode()
            if r:
                speed[name].append(n_bytes / (time.perf_counter() - t0))
    return dict(corpus_mb=os.path.getsize(corpus) / 1e6, train_chars=train_chars, vocab_size=cfg.tok_vocab_size,
                train_seconds={k: min(v) for k, v in times.items()}, train_runs=dict(times),
                prepare_wall_s=wall, prepare_peak_mb=peak, prepare_train_seconds=meta["tokenizer_training"]["seconds"],
                prepare_tokens=sum(meta["tokens"].values()),
                encode_bytes=n_bytes, encode_bytes_per_sec={k: max(v) for k, v in speed.items()},
                compression=compression)
