"""
Reads the data that train.py and evaluate.py learn from: the token shards of prepare.py (TokenShards),
prompt/completion JSONL for supervised fine-tuning (SFTExamples), conversations for chat fine-tuning
(ChatExamples) and prompt/chosen/rejected JSONL for preference training (PreferenceExamples). Importing this
module does no work.

Batches are a pure function of (seed, step, index): `index` is the global micro-batch index within the step
(0 .. micro_batches - 1, where micro_batches counts the micro-batches of one step over all processes), so resume
is exact and 2 processes x 1 micro-step see what 1 process x 2 micro-steps see. The data is walked without
replacement, epoch after epoch: epoch e is a seeded permutation of the windows (examples for SFT), and sample
number (step * micro_batches + index) * batch_size + b is its next entry. In an epoch every window is seen
exactly once, in random order, whatever the number of processes, where nanoGPT's random offsets repeat some
windows and miss others (after as many samples as windows, about 37% were never seen). Each epoch also shifts
the window grid by a seeded offset, so a token sits at different positions of the context from one epoch to
the next.
"""
import hashlib
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import torch

from nash.tokenizer import check_messages, get_tokenizer, render_conversation
from nash.common import fail

KNOWN_DATASETS = ("shakespeare", "tinystories_10M", "openwebtext_100M", "fineweb_1B")  # those of prepare.py


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: nash/ sits in it
DATA_ROOT = os.path.join(ROOT, "data")


def dataset_dir(dataset, data_dir=""):
    """The folder of a dataset: data_dir when given, else data/<dataset>."""
    return data_dir or os.path.join(DATA_ROOT, dataset)


def prepare_command(folder):
    """The command that (re)creates the dataset in folder."""
    folder = os.path.normpath(folder)
    name, root = os.path.basename(folder), os.path.dirname(os.path.abspath(folder))
    command = "python prepare.py " + (f"--dataset={name}" if name in KNOWN_DATASETS else
                                      f"--input=YOUR_FILES --name={name}")
    if root != DATA_ROOT:
        command += f" --data_root={root}"
    return command


def ensure_prepared(dataset, data_dir=""):
    """Returns the dataset's folder; prepares the embedded Shakespeare if it is not prepared yet (offline, a few
    seconds), in its own place (data/shakespeare) only: Nash-LLM never writes into a folder it did not make, so
    any other folder without meta.json, whatever it holds, raises the one-line error with the command."""
    folder = os.path.normpath(dataset_dir(dataset, data_dir))
    if not os.path.exists(os.path.join(folder, "meta.json")):
        if os.path.abspath(folder) != os.path.abspath(dataset_dir("shakespeare")):
            fail(f"{folder} holds no prepared dataset (no meta.json); run `{prepare_command(folder)}`")
        # prepare.py is a script: run it as a user would, so what it prints and how it fails stay its own
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--dataset=shakespeare",
                               f"--name={os.path.basename(folder)}", f"--data_root={os.path.dirname(os.path.abspath(folder))}"],
                              cwd=ROOT)
        if proc.returncode:
            sys.exit(proc.returncode)  # (prepare.py has said why)
    read_meta(folder)  # a corrupt meta.json is one error line here, before anything reads it
    return folder


def mix(*values):
    """A stable 64-bit seed from a few values (Python's hash() changes between runs for strings)."""
    return int.from_bytes(hashlib.blake2b(repr(values).encode(), digest_size=8).digest(), "little")


class EpochSampler:
    """Which item (window or example) sample number `ordinal` of index `index` is, out of n items per epoch."""

    def __init__(self):
        self.cache = OrderedDict()  # (seed, epoch, n, max_offset) -> (permutation, grid offset); a few epochs only

    def epoch(self, seed, epoch, n, max_offset=0):
        key = (seed, epoch, n, max_offset)
        if key not in self.cache:
            rng = np.random.default_rng(mix("epoch", seed, epoch))
            self.cache[key] = (rng.permutation(n).astype(np.int32 if n < 2**31 else np.int64),
                               int(rng.integers(0, max_offset + 1)))
            if len(self.cache) > 4:  # enough for a batch that spans two epochs plus a second seed (train.py's eval)
                self.cache.popitem(last=False)
        return self.cache[key]

    def items(self, n, batch_size, seed, step, index, micro_batches=1, max_offset=0):
        """(item indices, grid offsets) of the batch_size samples of micro-batch index of step."""
        first = (step * micro_batches + index) * batch_size  # samples drawn before this micro-batch, in all processes
        epochs, positions = np.divmod(first + np.arange(batch_size, dtype=np.int64), n)
        items, offsets = np.empty(batch_size, dtype=np.int64), np.empty(batch_size, dtype=np.int64)
        for e in np.unique(epochs):
            perm, offset = self.epoch(seed, int(e), n, max_offset)
            here = epochs == e
            items[here], offsets[here] = perm[positions[here]], offset
        return items, offsets


def read_meta(folder):
    """A prepared dataset's meta.json, checked field by field (a dict), or one error line naming what is wrong:
    every reader of a dataset (the shards, the tokenizer it was made with) takes it from here."""
    path, fix = os.path.join(folder, "meta.json"), f"prepare it again with `{prepare_command(folder)} --force`"
    if not os.path.isfile(path):
        fail(f"{folder} holds no prepared dataset (no meta.json); run `{prepare_command(folder)}`")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (ValueError, OSError, RecursionError) as e:
        fail(f"{path} is not valid JSON ({str(e).splitlines()[0][:200]}); {fix}")
    if not isinstance(meta, dict):
        fail(f"{path} holds a {type(meta).__name__}, not a JSON object, so prepare.py did not write it; {fix}")

    def count(v):  # a JSON integer (not a bool, not a float)
        return type(v) is int and v >= 0

    def name(v):  # a file of the folder itself
        return isinstance(v, str) and v and os.path.basename(v) == v and v not in (".", "..")

    wanted = {"shards": ("a {split: [shard file, ...]} object",
                         lambda v: isinstance(v, dict) and all(isinstance(s, list) for s in v.values())),
              "tokens": ("a {split: number of tokens} object",
                         lambda v: isinstance(v, dict) and all(count(n) for n in v.values())),
              "shard_size": ("a positive integer", lambda v: count(v) and v > 0),
              "vocab_size": ("a positive integer", lambda v: count(v) and v > 0),
              "dtype": ("a string", lambda v: isinstance(v, str))}
    optional = {"tokenizer": ("a string", lambda v: isinstance(v, str)),
                "tokenizer_pattern": ("a string", lambda v: isinstance(v, str)),
                "tokenizer_file": ("a file name in the folder", name),
                "special_tokens": ("a {token: id} object",
                                   lambda v: isinstance(v, dict) and all(count(i) for i in v.values()))}
    for key, (what, ok) in {**wanted, **optional}.items():
        if key not in meta:
            if key in wanted:
                fail(f"{path} lacks {key!r}, so prepare.py did not write it; {fix}")
        elif not ok(meta[key]):
            fail(f"{path}'s {key} should be {what}, not {json.dumps(meta[key])[:100]}; {fix}")
    if meta["dtype"] not in ("uint16", "uint32"):  # uint32 when the vocabulary has more than 65,536 tokens
        fail(f"{path} says dtype {meta['dtype']!r}, but shards hold uint16 or uint32 tokens; {fix}")
    for split, files in meta["shards"].items():
        if split not in meta["tokens"]:
            fail(f"{path} lacks the number of {split} tokens (tokens.{split}); {fix}")
        bad = [f for f in files if not name(f)]
        if bad:
            fail(f"{path} names a shard outside its folder ({json.dumps(bad[0])[:100]}); {fix}")
    return meta


class TokenShards:
    """One split of a prepared dataset, memory-mapped shard by shard (never concatenated)."""

    def __init__(self, data_dir, split, vocab_size=None):
        self.folder, self.split = data_dir, split
        fix = f"prepare it again with `{prepare_command(data_dir)} --force`"
        self.meta = meta = read_meta(data_dir)
        if split not in meta["shards"]:
            fail(f"{os.path.join(data_dir, 'meta.json')} has no split {split!r} (it has {', '.join(meta['shards'])}); "
                 f"use train or val")
        files, shard_size, total = meta["shards"][split], meta["shard_size"], meta["tokens"][split]
        dtype, self.vocab_size = meta["dtype"], vocab_size or meta["vocab_size"]
        itemsize = np.dtype(dtype).itemsize
        self.files, self.shards, sizes = [], [], []
        for i, name in enumerate(files):
            path = os.path.join(data_dir, name)
            expected = min(shard_size, total - i * shard_size)  # every shard is full but the last
            if not os.path.isfile(path):
                fail(f"{path} is missing; {fix}")
            size = os.path.getsize(path)
            if size % itemsize:
                fail(f"{path} has a size of {size} bytes, not a whole number of {dtype} tokens; {fix}")
            if size != itemsize * expected:
                fail(f"{path} holds {size // itemsize:,} tokens where meta.json says {expected:,} (cut short, or from "
                    f"another run); {fix}")
            self.files.append(path)
            self.shards.append(np.memmap(path, dtype=dtype, mode="r"))
            sizes.append(size // itemsize)
        self.num_tokens = sum(sizes)
        if self.num_tokens != total or self.num_tokens < 2:
            fail(f"the {split} split of {data_dir} holds {self.num_tokens:,} tokens where meta.json says {total:,}; {fix}")
        self.starts = np.cumsum([0] + sizes)  # global position of each shard's first token
        self.sampler = EpochSampler()
        for shard, path in zip(self.shards, self.files):  # a sampled check of the ids: 8 blocks of 64k tokens a shard
            block = min(len(shard), 1 << 16)
            for a in np.linspace(0, len(shard) - block, num=8).astype(np.int64):
                self.check_ids(shard[a:a + block], path)

    def check_ids(self, tokens, path):
        top = int(tokens.max())
        if top >= self.vocab_size:
            fail(f"{path} holds token id {top}, beyond the vocabulary of {self.vocab_size}; prepare the data with the "
                f"model's tokenizer (`{prepare_command(self.folder)} --force`) or use a model with a larger vocab_size")

    def windows(self, seq_len):
        """Windows of seq_len + 1 tokens per epoch, and the largest offset of the window grid."""
        if self.num_tokens < seq_len + 1:
            fail(f"the {self.split} split of {self.folder} holds {self.num_tokens:,} tokens, too few for one window of "
                f"{seq_len} + 1; lower max_seq_len or prepare more data (a larger --val_ratio for val)")
        n = max(1, (self.num_tokens - 1) // seq_len - 1)  # one window fewer than fits leaves room to shift the grid
        return n, min(seq_len - 1, self.num_tokens - 1 - n * seq_len)

    def read(self, starts, seq_len):
        """(x, y) for windows starting at the given global token positions, spanning shard boundaries."""
        buf = np.empty((len(starts), seq_len + 1), dtype=np.int64)
        for row, start in zip(buf, starts):
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            pos = 0
            while pos < seq_len + 1:  # copy from this shard, then the next if the window runs over
                offset = start + pos - self.starts[i]
                n = min(seq_len + 1 - pos, len(self.shards[i]) - offset)
                row[pos:pos + n] = self.shards[i][offset:offset + n]
                pos, i = pos + n, i + 1
        if buf.size and buf.max() >= self.vocab_size:  # cheap: one pass over the batch
            bad = int(np.flatnonzero((buf >= self.vocab_size).any(axis=1))[0])
            self.check_ids(buf[bad], self.files[int(np.searchsorted(self.starts, starts[bad], side="right")) - 1])
        t = torch.from_numpy(buf)
        return t[:, :-1].contiguous(), t[:, 1:].contiguous()

    def get_batch(self, batch_size, seq_len, seed, step, index=0, micro_batches=1):
        """(x, y), int64 (batch_size, seq_len), y = x shifted by one: a pure function of (seed, step, index);
        micro_batches is how many indices one step has (over all processes)."""
        n, max_offset = self.windows(seq_len)
        windows, offsets = self.sampler.items(n, batch_size, seed, step, index, micro_batches, max_offset)
        return self.read(offsets + windows * seq_len, seq_len)

    def num_eval_batches(self, batch_size, seq_len, max_batches=None):
        n = -(-((self.num_tokens - 1) // seq_len) // batch_size)  # consecutive windows, the last batch may be short
        return n if max_batches is None else min(n, max_batches)

    def eval_batches(self, batch_size, seq_len, max_batches=None):
        """The split in a fixed order: consecutive non-overlapping windows, all of them when max_batches is None."""
        self.windows(seq_len)
        n = (self.num_tokens - 1) // seq_len
        for b in range(self.num_eval_batches(batch_size, seq_len, max_batches)):
            yield self.read(np.arange(b * batch_size, min(n, (b + 1) * batch_size)) * seq_len, seq_len)


def read_jsonl_fields(path, fields, what):
    """The rows of a JSONL file as tuples of the string fields named; one clear error for anything else.
    what: the file's kind and an example, for the messages (e.g. 'SFT data', 'data/sft_demo/')."""
    shape = "{" + ", ".join(f'"{k}": ...' for k in fields) + "}"
    if not os.path.isfile(path):
        fail(f"{path} not found; {what[0]} is JSONL with one {shape} per line (see {what[1]})")
    rows = []
    with open(path, "rb") as f:  # bytes, decoded line by line, so an error can name the line
        for lineno, line in enumerate(f, 1):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError:
                fail(f"{path}:{lineno}: not UTF-8 text; save the file as UTF-8")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                fail(f"{path}:{lineno}: not valid JSON ({getattr(e, 'msg', e)}); write one JSON object per line")
            if not (isinstance(row, dict) and all(isinstance(row.get(k), str) for k in fields)):
                names = " and ".join(json.dumps(k) for k in fields)
                fail(f"{path}:{lineno}: needs string fields {names}, got {str(row)[:80]}")
            rows.append(tuple(row[k] for k in fields))
    if not rows:
        fail(f"{path} holds no examples; write one {shape} per line")
    return rows


def right_pad(rows, value, length=None):
    """Token-id rows (lists or arrays) -> (B, T) int64, each row from the left and padded with value; T = length,
    or the longest row. The one padding of prompt + completion batches (pack_completions, the verifier's)."""
    T = max(map(len, rows)) if length is None else length
    out = torch.full((len(rows), T), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = torch.as_tensor(row[:T], dtype=torch.long)
        out[i, :len(row)] = row
    return out


def pack_completions(sequences, prompt_lens, pad_id, length=None, ignore=None):
    """Prompt + completion sequences -> (x, y) for a loss on the completions only: x the inputs (each sequence but
    its last token) padded with pad_id, y the next tokens, -1 on the prompt, the padding and, per row, the
    completion positions in ignore[i] (counted from the completion's start: tool outputs no one sampled).
    length: T, else the longest sequence - 1. SFT, chat, DPO and RL batches are built here."""
    T = max(len(s) for s in sequences) - 1 if length is None else length
    x, y = right_pad([s[:-1] for s in sequences], pad_id, T), right_pad([s[1:] for s in sequences], -1, T)
    for i, p in enumerate(prompt_lens):
        y[i, :max(0, p - 1)] = -1  # positions whose next token is still the prompt
        if ignore and ignore[i]:
            y[i, [max(0, p - 1) + j for j in ignore[i] if p - 1 + j < T]] = -1
    return x, y


class SFTExamples:
    """Prompt/completion JSONL, one {"prompt": ..., "completion": ...} per line. The tokens of an example are
    prompt + completion + end-of-text; the loss is on the completion and the end-of-text only (y is -1 on the
    prompt and the padding). An example longer than max_seq_len + 1 tokens is cut at the end (num_truncated
    counts them); one whose prompt alone fills max_seq_len is dropped (num_dropped), as it has nothing to learn."""

    def __init__(self, path, max_seq_len, enc=None):
        self.path = path
        rows = read_jsonl_fields(path, ("prompt", "completion"), ("SFT data", "data/sft_demo/"))
        self.tokenize([p for p, _ in rows], [c for _, c in rows], max_seq_len, enc)

    def tokenize(self, prompts, completions, max_seq_len, enc=None, tokens=None):
        """Fills examples, sequences and prompt_lens; PreferenceExamples tokenises its pairs through here too.
        tokens: (prompt ids, completion ids with their own end) pairs instead, already rendered (chat pairs)."""
        enc = enc or get_tokenizer()  # the model's tokenizer (GPT-2's unless it was trained with its own)
        eot = enc.eot_token
        self.examples, self.sequences, self.prompt_lens = [], [], []
        self.num_truncated = self.num_dropped = 0
        for p, c in tokens or zip(enc.encode_ordinary_batch(prompts), enc.encode_ordinary_batch(completions)):
            if len(p) > max_seq_len:
                self.num_dropped += 1
                continue
            seq = p + c + ([] if tokens else [eot])
            self.num_truncated += len(seq) > max_seq_len + 1
            self.examples.append((p, c))  # whole, for exact-match generation
            self.sequences.append(np.array(seq[:max_seq_len + 1], dtype=np.int64))
            self.prompt_lens.append(len(p))
        if not self.examples:
            fail(f"every prompt in {self.path} is longer than max_seq_len={max_seq_len} tokens; raise max_seq_len")
        self.cut_note = self.note_cuts(len(tokens or prompts), max_seq_len)
        self.num_tokens = sum(len(s) for s in self.sequences)
        self.meta = dict(tokenizer=enc.name, vocab_size=enc.n_vocab, eot_id=eot)
        self.sampler = EpochSampler()

    def note_cuts(self, total, max_seq_len):
        """One line saying how many of the total examples were cut or dropped, or "": the script that reads the
        file says it once, since cutting loses the end of a completion."""
        if not (self.num_truncated or self.num_dropped):
            return ""
        return (f"note: {self.path}: {self.num_truncated} of {total} examples are longer than max_seq_len="
                f"{max_seq_len} + 1 tokens and were cut at the end"
                + (f", {self.num_dropped} dropped (nothing left to learn within the context)"
                   if self.num_dropped else ""))

    def batch(self, rows, seq_len):
        """x padded with end-of-text, y with -1, to the longest example rounded up to a multiple of 8 (fewer
        shapes for torch.compile), at most seq_len."""
        T = min(seq_len, -(-max(len(self.sequences[r]) - 1 for r in rows) // 8) * 8)
        return pack_completions([self.sequences[r][:T + 1] for r in rows], [self.prompt_lens[r] for r in rows],
                                self.meta["eot_id"], T)

    def get_batch(self, batch_size, seq_len, seed, step, index=0, micro_batches=1):
        """(x, y), int64 (batch_size, T): a pure function of (seed, step, index), like TokenShards.get_batch."""
        rows, _ = self.sampler.items(len(self.sequences), batch_size, seed, step, index, micro_batches)
        return self.batch(rows, seq_len)

    def num_eval_batches(self, batch_size, seq_len=None, max_batches=None):
        n = -(-len(self.sequences) // batch_size)
        return n if max_batches is None else min(n, max_batches)

    def eval_batches(self, batch_size, seq_len, max_batches=None):
        """Every example in file order (the last batch may be short), the same every time."""
        for b in range(self.num_eval_batches(batch_size, seq_len, max_batches)):
            yield self.batch(range(b * batch_size, min(len(self.sequences), (b + 1) * batch_size)), seq_len)


class ChatExamples(SFTExamples):
    """Conversations, one {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]} per line
    (the format of Hugging Face chat datasets and of the OpenAI API), any number of turns. Each is rendered by
    tokenizer.render_conversation, and the loss is on every assistant reply and its <|assistant_end|> (y is -1
    elsewhere). Batches are SFTExamples': padded to the longest conversation in the batch (rounded up to 8).
    A conversation longer than max_seq_len + 1 tokens is cut at the end (num_truncated); one with no assistant
    token left to learn within that is dropped (num_dropped)."""

    def __init__(self, path, max_seq_len, enc=None):
        self.path = path
        form = 'one {"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]} per line'
        if not os.path.isfile(path):
            fail(f"{path} not found; chat data is JSONL with {form} (see data/chat_demo/)")
        enc = enc or get_tokenizer()  # the model's tokenizer, as for SFTExamples
        self.examples, self.sequences, self.masks, self.prompt_lens = [], [], [], []
        self.num_truncated = self.num_dropped = 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    messages = row["messages"] if isinstance(row, dict) else None
                    check_messages(messages)
                except (ValueError, KeyError) as e:
                    fail(f"{path}:{lineno}: {getattr(e, 'msg', None) or str(e).strip(chr(39))}; write {form}")
                tokens, mask = render_conversation(enc, messages)
                self.num_truncated += len(tokens) > max_seq_len + 1
                tokens, mask = tokens[:max_seq_len + 1], mask[:max_seq_len + 1]
                if not any(mask[1:]):  # no assistant token to predict within the context
                    self.num_dropped += 1
                    continue
                self.examples.append(messages)
                self.sequences.append(np.array(tokens, dtype=np.int64))
                self.masks.append(np.array(mask, dtype=bool))
                self.prompt_lens.append(0)  # SFTExamples.batch masks nothing itself; batch() below applies the mask
        if not self.examples:
            fail(f"{path} holds no conversation with an assistant reply (within max_seq_len={max_seq_len} tokens); "
                f"write {form}")
        self.cut_note = self.note_cuts(len(self.examples) + self.num_dropped, max_seq_len)
        self.num_tokens = sum(len(s) for s in self.sequences)
        self.meta = dict(tokenizer=enc.name, vocab_size=enc.n_vocab, eot_id=enc.eot_token)
        self.sampler = EpochSampler()

    def batch(self, rows, seq_len):
        x, y = super().batch(rows, seq_len)
        for i, r in enumerate(rows):
            trained = torch.from_numpy(self.masks[r][1:y.size(1) + 1])  # mask of the token each position predicts
            y[i, :len(trained)][~trained] = -1
        return x, y


def chat_pairs(path):
    """Whether the preference file's first row is a chat pair (has "messages")."""
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "")
    try:
        return isinstance(json.loads(first), dict) and "messages" in json.loads(first)
    except ValueError:
        return False


def render_reply_pair(enc, messages, reply):
    """(the conversation's tokens up to the assistant's turn, the reply's tokens and <|assistant_end|>)."""
    check_messages(list(messages) + [{"role": "assistant", "content": reply}])
    prompt = render_conversation(enc, messages, for_reply=True)[0]
    full = render_conversation(enc, list(messages) + [{"role": "assistant", "content": reply}])[0]
    return prompt, full[len(prompt):]


class PreferenceExamples(SFTExamples):
    """Preference pairs for DPO: JSONL of {"prompt": ..., "chosen": ..., "rejected": ...} (TRL's format). Each pair
    is tokenised as two SFT examples, prompt + chosen and prompt + rejected (same truncation, same masks), and a
    batch of batch_size pairs is 2 * batch_size rows: the chosen sequences, then the rejected ones in the same
    order (y = -1 on prompts and padding, so a row's log-prob sums over its completion only)."""

    def __init__(self, path, max_seq_len, enc=None):
        self.path = path
        if chat_pairs(path):  # {"messages": [...], "chosen": reply, "rejected": reply}: a chat model's own answers
            enc = enc or get_tokenizer()
            rows = read_jsonl_fields(path, ("chosen", "rejected"), ("preference data", "data/dpo_demo/"))
            with open(path, encoding="utf-8") as f:
                convs = [json.loads(line)["messages"] for line in f if line.strip()]
            tokens = [render_reply_pair(enc, m, reply) for side in (0, 1) for m, r in zip(convs, rows)
                      for reply in (r[side],)]
            self.tokenize(None, None, max_seq_len, enc, tokens=tokens)
        else:
            rows = read_jsonl_fields(path, ("prompt", "chosen", "rejected"), ("preference data", "data/dpo_demo/"))
            prompts = [p for p, _, _ in rows]
            self.tokenize(prompts + prompts, [c for _, c, _ in rows] + [r for _, _, r in rows], max_seq_len, enc)
        self.num_pairs = len(self.sequences) // 2  # a prompt too long drops both halves: the halves stay aligned
        self.num_dropped //= 2

    def batch(self, rows, seq_len):
        rows = list(rows)
        return super().batch(rows + [r + self.num_pairs for r in rows], seq_len)

    def get_batch(self, batch_size, seq_len, seed, step, index=0, micro_batches=1):
        rows, _ = self.sampler.items(self.num_pairs, batch_size, seed, step, index, micro_batches)
        return self.batch(rows, seq_len)

    def num_eval_batches(self, batch_size, seq_len=None, max_batches=None):
        n = -(-self.num_pairs // batch_size)
        return n if max_batches is None else min(n, max_batches)

    def eval_batches(self, batch_size, seq_len, max_batches=None):
        """Every pair in file order (the last batch may be short), the same every time."""
        for b in range(self.num_eval_batches(batch_size, seq_len, max_batches)):
            yield self.batch(range(b * batch_size, min(self.num_pairs, (b + 1) * batch_size)), seq_len)
