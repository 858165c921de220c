"""nash/data.py: the shard reader (windows across shard boundaries, pure batches, epochs without replacement, the
fixed eval walk, every validation error) and SFT batches (masking, padding, JSONL errors). CPU, no network."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from nash import data  # noqa: E402
import prepare  # noqa: E402
from nash.data import SFTExamples, TokenShards, dataset_dir, ensure_prepared  # noqa: E402
from nash.tokenizer import EOT_ID, get_tokenizer  # noqa: E402

SHARD = 1000  # tokens per shard: small, so windows cross shard boundaries


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A dataset of about 4.6k tokens in shards of 1000 tokens, prepared once for the module."""
    tmp = tmp_path_factory.mktemp("prep")
    with open(tmp / "docs.jsonl", "w") as f:
        for i in range(120):
            f.write(json.dumps({"text": f"Story {i}. " + "Once upon a time there was a little fox. " * (1 + i % 5)}) + "\n")
    return prepare.prepare(input=str(tmp / "docs.jsonl"), name="stories", data_root=str(tmp / "data"),
                           shard_size=SHARD, val_ratio=0.1, progress=False)


@pytest.fixture
def copy(prepared, tmp_path):
    """A private copy of the prepared dataset, for tests that break it."""
    return shutil.copytree(prepared, tmp_path / "stories")


def all_tokens(folder, split):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    shards = [np.fromfile(os.path.join(folder, f), dtype=np.uint16) for f in meta["shards"][split]]
    return np.concatenate(shards).astype(np.int64)


def test_windows_match_the_tokens_across_shard_boundaries(prepared):
    train, tokens = TokenShards(prepared, "train"), all_tokens(prepared, "train")
    assert len(train.shards) >= 4 and train.num_tokens == len(tokens)
    starts = np.array([0, SHARD - 3, 2 * SHARD - 64, len(tokens) - 65])  # inside, across boundaries, the very end
    x, y = train.read(starts, 64)
    for row, s in enumerate(starts):
        assert x[row].tolist() == tokens[s:s + 64].tolist() and y[row].tolist() == tokens[s + 1:s + 65].tolist()
    n, max_offset = train.windows(64)
    for step, index in ((0, 0), (3, 1), (40, 2)):  # get_batch rows are windows of the grid of their epoch
        x, y = train.get_batch(8, 64, 1337, step, index)
        assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
        windows, offsets = train.sampler.items(n, 8, 1337, step, index, 1, max_offset)
        for row, s in enumerate(offsets + windows * 64):
            assert x[row].tolist() == tokens[s:s + 64].tolist() and y[row].tolist() == tokens[s + 1:s + 65].tolist()


def test_batches_are_a_pure_function_of_seed_step_index(prepared):
    a, b = TokenShards(prepared, "train"), TokenShards(prepared, "train")
    x, y = a.get_batch(4, 32, 7, 5, 1)
    b.get_batch(4, 32, 7, 900, 0)  # other calls in between change nothing
    assert all(torch.equal(u, v) for u, v in zip((x, y), b.get_batch(4, 32, 7, 5, 1)))
    assert not torch.equal(x, a.get_batch(4, 32, 7, 5, 0)[0])  # another micro-batch of the same step
    assert not torch.equal(x, a.get_batch(4, 32, 7, 6, 1)[0])  # the next step
    assert not torch.equal(x, a.get_batch(4, 32, 8, 5, 1)[0])  # another seed


def test_every_window_is_seen_once_per_epoch_over_all_micro_batches(prepared):
    train = TokenShards(prepared, "train")
    n, max_offset = train.windows(16)
    assert max_offset == 15  # the grid moves by up to a window from epoch to epoch
    for micro_batches in (1, 3):  # e.g. 3 processes, or 3 accumulation steps: together they walk one permutation
        seen = np.concatenate([train.sampler.items(n, 5, 3, step, index, micro_batches, max_offset)[0]
                               for step in range(n // (5 * micro_batches)) for index in range(micro_batches)])
        assert len(set(seen.tolist())) == len(seen) == n // (5 * micro_batches) * 5 * micro_batches
    offsets = {int(train.sampler.items(n, 5, 3, step, 0, 1, max_offset)[1][0]) for step in range(0, 20 * n // 5, n // 5 + 1)}
    assert len(offsets) > 1


def test_eval_batches_walk_the_split_in_a_fixed_order(prepared):
    val, tokens = TokenShards(prepared, "val"), all_tokens(prepared, "val")
    batches = list(val.eval_batches(3, 32))
    assert len(batches) == val.num_eval_batches(3, 32) == -(-((len(tokens) - 1) // 32) // 3)
    x = torch.cat([b[0] for b in batches]).flatten()
    y = torch.cat([b[1] for b in batches]).flatten()
    covered = (len(tokens) - 1) // 32 * 32
    assert x.tolist() == tokens[:covered].tolist() and y.tolist() == tokens[1:covered + 1].tolist()
    again = list(val.eval_batches(3, 32, max_batches=2))
    assert len(again) == val.num_eval_batches(3, 32, 2) == 2
    assert all(torch.equal(u[0], v[0]) for u, v in zip(again, batches))


def test_vocab_checks(prepared):
    with pytest.raises(SystemExit, match=r"train_000.bin holds token id \d+, beyond the vocabulary of 1000"):
        TokenShards(prepared, "train", vocab_size=1000)
    train = TokenShards(prepared, "train", vocab_size=50304)  # a padded vocabulary is fine
    train.vocab_size = 300  # as if a bad id hid where the check at open did not look: every batch is checked
    with pytest.raises(SystemExit, match=r"train_00\d.bin holds token id \d+, beyond the vocabulary of 300"):
        train.get_batch(2, 16, 0, 0)


def break_meta(folder, **changes):
    path = os.path.join(folder, "meta.json")
    meta = json.load(open(path))
    meta.update(changes)
    json.dump(meta, open(path, "w"))


@pytest.mark.parametrize("damage, message", [
    ("no_dir", r"holds no prepared dataset \(no meta.json\); "
               r"run `python prepare.py --input=YOUR_FILES --name=stories --data_root="),
    ("no_meta", r"holds no prepared dataset \(no meta.json\)"),
    ("bad_json", r"meta.json is not valid JSON"),
    ("no_shards_key", r"meta.json lacks 'shards'"),
    ("dtype", r"says dtype 'int8', but shards hold uint16 or uint32 tokens"),
    ("dtype32", r"train_000.bin holds 500 tokens where meta.json says 1,000"),  # uint16 shards that say uint32
    ("odd", r"train_001.bin has a size of 1999 bytes, not a whole number of uint16 tokens"),
    ("short", r"train_001.bin holds 900 tokens where meta.json says 1,000 .*prepare it again with `python prepare.py "
              r"--input=YOUR_FILES --name=stories --data_root=.* --force`"),
    ("missing", r"train_002.bin is missing"),
    ("split", r"has no split 'test' \(it has train, val\)"),
])
def test_reader_validation_errors(copy, damage, message):
    split = "train"
    if damage == "no_dir":
        shutil.rmtree(copy)
    elif damage == "no_meta":
        os.remove(copy / "meta.json")
    elif damage == "bad_json":
        (copy / "meta.json").write_text("{not json")
    elif damage == "no_shards_key":
        meta = json.load(open(copy / "meta.json"))
        del meta["shards"]
        json.dump(meta, open(copy / "meta.json", "w"))
    elif damage == "dtype":
        break_meta(copy, dtype="int8")
    elif damage == "dtype32":
        break_meta(copy, dtype="uint32")
    elif damage == "odd":
        with open(copy / "train_001.bin", "r+b") as f:
            f.truncate(1999)
    elif damage == "short":
        with open(copy / "train_001.bin", "r+b") as f:
            f.truncate(1800)
    elif damage == "missing":
        os.remove(copy / "train_002.bin")
    elif damage == "split":
        split = "test"
    with pytest.raises(SystemExit, match=message) as e:
        TokenShards(str(copy), split)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)


def test_too_few_tokens_for_a_window(prepared):
    val = TokenShards(prepared, "val")
    with pytest.raises(SystemExit, match=rf"the val split of .* holds {val.num_tokens:,} tokens, too few for one window"):
        val.get_batch(1, val.num_tokens, 0, 0)
    with pytest.raises(SystemExit, match=r"too few for one window"):
        next(val.eval_batches(1, val.num_tokens))
    x, y = val.get_batch(2, val.num_tokens - 1, 0, 0)  # exactly one window fits
    assert x.shape == (2, val.num_tokens - 1)


@pytest.mark.slow
def test_dataset_dir_and_ensure_prepared(tmp_path, monkeypatch):
    assert dataset_dir("shakespeare") == os.path.join(ROOT, "data", "shakespeare")
    assert dataset_dir("shakespeare", str(tmp_path)) == str(tmp_path)
    message = r"tinystories_10M holds no prepared dataset .*run `python prepare.py --dataset=tinystories_10M --data_root="
    with pytest.raises(SystemExit, match=message):
        ensure_prepared("tinystories_10M", str(tmp_path / "tinystories_10M"))
    # the embedded Shakespeare is prepared on the spot, offline, in its own place only (data/, here a temp folder)
    other = tmp_path / "mine"
    other.mkdir()
    with pytest.raises(SystemExit, match="mine holds no prepared dataset"):
        ensure_prepared("shakespeare", str(other))
    assert os.listdir(other) == []  # a folder Nash-LLM did not make is never written into
    monkeypatch.setattr(data, "DATA_ROOT", str(tmp_path))
    folder = ensure_prepared("shakespeare")
    assert folder == str(tmp_path / "shakespeare") and TokenShards(folder, "val").meta["tokens"]["val"] > 0
    assert ensure_prepared("shakespeare") == folder  # and not again


# ---------------------------------------------------------------------------- SFT

def write_sft(path, rows):
    with open(path, "w") as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    return str(path)


def test_sft_masks_the_prompt_and_pads(tmp_path):
    enc = get_tokenizer()
    rows = [{"prompt": "Reverse: red fox runs\n", "completion": " runs fox red"},
            {"prompt": "Reverse: a b c d e f g h i j k l\n", "completion": " l k j i h g f e d c b a"}]
    sft = SFTExamples(write_sft(tmp_path / "t.jsonl", rows), max_seq_len=64)
    x, y = next(sft.eval_batches(2, 64))
    assert x.shape == y.shape and x.shape[1] % 8 == 0 and x.dtype == y.dtype == torch.int64
    for i, row in enumerate(rows):
        p, c = enc.encode_ordinary(row["prompt"]), enc.encode_ordinary(row["completion"])
        assert sft.examples[i] == (p, c)
        seq, n = p + c + [EOT_ID], len(p) + len(c)
        assert x[i, :n].tolist() == seq[:-1] and (x[i, n:] == EOT_ID).all()  # padded with end-of-text
        assert (y[i, :len(p) - 1] == -1).all() and y[i, len(p) - 1:n].tolist() == c + [EOT_ID]  # loss on completion + EOT
        assert (y[i, n:] == -1).all() and (y[i] != -1).sum() == len(c) + 1
    assert sft.num_truncated == sft.num_dropped == 0


def test_sft_batches_are_pure_and_walk_epochs(tmp_path):
    rows = [{"prompt": f"Q{i}:", "completion": f" A{i}"} for i in range(10)]
    sft = SFTExamples(write_sft(tmp_path / "t.jsonl", rows), max_seq_len=16)
    x, y = sft.get_batch(5, 16, 1, 3, 1)
    assert torch.equal(x, SFTExamples(str(tmp_path / "t.jsonl"), 16).get_batch(5, 16, 1, 3, 1)[0])
    assert not torch.equal(x, sft.get_batch(5, 16, 1, 3, 0)[0])
    seen = [sft.sampler.items(10, 5, 1, step, 0)[0] for step in (0, 1)]  # one epoch: each example once
    assert sorted(np.concatenate(seen).tolist()) == list(range(10))
    seen = [sft.sampler.items(10, 5, 1, 0, index, 2)[0] for index in (0, 1)]  # the same, as 2 micro-batches
    assert sorted(np.concatenate(seen).tolist()) == list(range(10))
    assert len(list(sft.eval_batches(4, 16))) == sft.num_eval_batches(4, 16) == 3


def test_sft_truncates_long_examples_and_drops_prompts_that_fill_the_window(tmp_path):
    rows = [{"prompt": "short:", "completion": " and long" * 20}, {"prompt": "word " * 30, "completion": " x"},
            {"prompt": "ok:", "completion": " yes"}]
    sft = SFTExamples(write_sft(tmp_path / "t.jsonl", rows), max_seq_len=16)
    assert (sft.num_truncated, sft.num_dropped, len(sft.examples)) == (1, 1, 2)
    x, y = next(sft.eval_batches(2, 16))
    prompt = len(get_tokenizer().encode_ordinary("short:"))
    assert x.shape == (2, 16) and (y[0, :prompt - 1] == -1).all() and (y[0, prompt - 1:] != -1).all()  # no EOT: cut
    assert y[0, -1] != EOT_ID


@pytest.mark.parametrize("lines, message", [
    (None, r"nope.jsonl not found; SFT data is JSONL"),
    ([], r"t.jsonl holds no examples"),
    (['{"prompt": "a", "completion": "b"}', '{"prompt": "a", "completion": '], r"t.jsonl:2: not valid JSON"),
    (['{"prompt": "a", "completion": "b"}', '', '{"prompt": "a"}'],
     r"t.jsonl:3: needs string fields \"prompt\" and \"completion\""),
    (['{"prompt": 1, "completion": "b"}'], r"t.jsonl:1: needs string fields"),
    (['["prompt", "completion"]'], r"t.jsonl:1: needs string fields"),
])
def test_sft_errors_name_the_file_and_line(tmp_path, lines, message):
    path = str(tmp_path / "nope.jsonl") if lines is None else write_sft(tmp_path / "t.jsonl", lines)
    with pytest.raises(SystemExit, match=message) as e:
        SFTExamples(path, 64)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)


def test_the_demo_sft_set_is_committed_and_well_formed():
    train = SFTExamples(os.path.join(ROOT, "data", "sft_demo", "train.jsonl"), 64)
    val = SFTExamples(os.path.join(ROOT, "data", "sft_demo", "val.jsonl"), 64)
    assert len(train.examples) == 4000 and len(val.examples) == 200 and train.num_truncated == 0
    assert not {tuple(p) for p, _ in val.examples} & {tuple(p) for p, _ in train.examples}
    enc = get_tokenizer()
    for p, c in val.examples[:20]:
        words = enc.decode(p).removeprefix("Reverse: ").split()
        assert enc.decode(c) == " " + " ".join(reversed(words)) and len(c) == len(words)  # one token per word
    assert data.mix(1, 2) == data.mix(1, 2) != data.mix(2, 1)
