"""bench.py --what=data: prepare.py's tokens/s against tiktoken's batch encoding, and its peak memory and val
share for one big .txt and for many files at two sizes (see bench.py)."""
import collections
import inspect
import json
import os
import shutil
import sys
import time

import numpy as np

import prepare
from nash import textsplit
from nash import tokenizer
from benches.common import CORES, HERE, run


def make_corpus(path, mb, seed, separators=True):
    """About mb megabytes of random text: documents of 200-2000 words drawn with Shakespeare's word frequencies,
    12 to a line, written as it goes: as JSON lines (path *.jsonl), as one .txt (path *.txt) with <|endoftext|>
    lines between documents or, without separators, run together like nanoGPT's input.txt, or as a folder of one
    .txt per document (a path without a suffix)."""
    with open(os.path.join(HERE, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        counts = collections.Counter(f.read().split())
    words, cdf = np.array(list(counts)), np.cumsum(np.fromiter(counts.values(), dtype=np.float64))
    rng, chars, n = np.random.default_rng(seed), 0, 0
    folder = not os.path.splitext(path)[1]
    if folder:
        os.makedirs(path)
    with open(os.devnull if folder else path, "w", encoding="utf-8") as f:
        while chars < mb * 2**20:
            picked = words[np.searchsorted(cdf, rng.random(int(rng.integers(200, 2000))) * cdf[-1], side="right")]
            doc = "\n".join(" ".join(picked[i:i + 12]) for i in range(0, len(picked), 12))
            if folder:
                with open(os.path.join(path, f"{n:07d}.txt"), "w", encoding="utf-8") as g:
                    g.write(doc)
            elif path.endswith(".jsonl"):
                f.write(json.dumps({"text": doc}) + "\n")
            else:
                f.write((("\n<|endoftext|>\n" if separators else "\n") if chars else "") + doc)
            chars, n = chars + len(doc), n + 1
    return path


def read_documents(path):
    """The documents of a corpus from make_corpus, read whole: a .txt without separators is one document."""
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            return [json.loads(line)["text"] for line in f]
        return [d for d in textsplit.SEPARATOR_LINE.split(f.read()) if d.strip()]


# tiktoken's batch encoding in a fresh process, for its peak memory (argv: corpus, threads): it needs every
# document in memory, and gives back every token as a Python int
TIKTOKEN_BATCH = "\n".join(["import json, sys", "from nash import textsplit, tokenizer", inspect.getsource(read_documents),
                            "docs = read_documents(sys.argv[1])",
                            "tokenizer.get_tokenizer().encode_ordinary_batch(docs, num_threads=int(sys.argv[2]))"])


def bench_data(tmp, cfg):
    corpus = make_corpus(os.path.join(tmp, f"words.{cfg.data_format}"), cfg.data_mb, cfg.seed)
    # throughput: both in this process, alternating, after a warm-up round (imports, the tokenizer's tables)
    docs, enc = read_documents(corpus), tokenizer.get_tokenizer()
    speeds = {"prepare.py": [], "tiktoken": []}
    for r in range(cfg.repeats + 1):
        t0 = time.perf_counter()
        folder = prepare.prepare(input=corpus, name="words", data_root=tmp, force=True, progress=False)
        seconds = time.perf_counter() - t0
        with open(os.path.join(folder, "meta.json")) as f:
            tokens = sum(json.load(f)["tokens"].values())  # with one end-of-text per document
        t0 = time.perf_counter()
        raw_tokens = sum(map(len, enc.encode_ordinary_batch(docs, num_threads=CORES)))
        raw_seconds = time.perf_counter() - t0
        if r:
            speeds["prepare.py"].append(tokens / seconds)
            speeds["tiktoken"].append(raw_tokens / raw_seconds)
    del docs
    memory = []  # peak RSS, each in a fresh process: one big .txt without separators, and many small files
    for i, mb in enumerate([cfg.data_mb, cfg.data_mb * cfg.memory_scale]):
        for shape, path in (("one .txt", make_corpus(os.path.join(tmp, f"big{i}.txt"), mb, cfg.seed, False)),
                            ("many files", make_corpus(os.path.join(tmp, f"files{i}"), mb, cfg.seed))):
            _, wall, peak = run([sys.executable, "prepare.py", f"--input={path}", "--name=memory",
                                 f"--data_root={tmp}", "--force"], "prepare.py", memory=True)
            with open(os.path.join(tmp, "memory", "meta.json")) as f:
                meta = json.load(f)
            m = dict(shape=shape, data_mb=mb, prepare_peak_mb=peak, prepare_wall_s=wall, val_share=meta["val_share"],
                     val_ratio=meta["val_ratio"], tokens=sum(meta["tokens"].values()), tiktoken_peak_mb=None,
                     tiktoken_wall_s=None)
            if shape == "one .txt":  # nanoGPT's way: read the file whole, encode it in one call
                _, m["tiktoken_wall_s"], m["tiktoken_peak_mb"] = run([sys.executable, "-c", TIKTOKEN_BATCH, path,
                                                                      str(CORES)], "tiktoken batch", memory=True)
                os.remove(path)
            else:
                shutil.rmtree(path)
            memory.append(m)
    speed, raw_speed = max(speeds["prepare.py"]), max(speeds["tiktoken"])
    growth = {}  # peak RSS at the larger size over that at the smaller, per shape
    for shape in ("one .txt", "many files"):
        peaks = [m["prepare_peak_mb"] for m in memory if m["shape"] == shape]
        growth[shape] = peaks[1] / peaks[0] - 1 if None not in peaks else None
    return dict(tokens=tokens, threads=CORES, prepare_tokens_per_sec=speed, tiktoken_tokens_per_sec=raw_speed,
                ratio=speed / raw_speed, runs=speeds, memory=memory, memory_growth=growth,
                val_share_error=max(abs(m["val_share"] - m["val_ratio"]) for m in memory))
