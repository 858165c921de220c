"""prepare.py: local and (faked) Hub input through the real datasets pipeline, the shard format, the split,
the token cap, interruption, --force and every one-line error. CPU only, no network."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_inline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import prepare  # noqa: E402
from nash import textsplit  # noqa: E402
from nash import tokenizer  # noqa: E402
from nash.tokenizer import EOT_ID, get_tokenizer  # noqa: E402

WORDS = ["the quick brown fox", "jumps over", "the lazy dog", "ünïcödé ✓"]
DOCS = [f"Document {i}: " + " ".join(WORDS[:1 + i % 4]) * (1 + i % 7) for i in range(40)]
DOCS[5] = "a document that mentions <|endoftext|> as plain text\nand has two lines"


def run(tmp_path, **kwargs):
    kwargs.setdefault("data_root", str(tmp_path / "out"))
    return prepare.prepare(progress=False, **kwargs)


def split_tokens(folder, split):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    return np.concatenate([np.fromfile(os.path.join(folder, f), dtype=np.uint16) for f in meta["shards"][split]])


def decode_docs(tokens):
    """Split at end-of-text (it precedes every document) and decode each document."""
    assert tokens[0] == EOT_ID
    cuts = np.flatnonzero(tokens == EOT_ID)
    return [get_tokenizer().decode(tokens[a + 1:b].tolist()) for a, b in zip(cuts, list(cuts[1:]) + [len(tokens)])]


def expected_split(docs, val_ratio):
    """(train, val) for short documents, which go whole: the first to val, then each one to val when that brings
    val's share of the characters closer to val_ratio."""
    split, chars = {"train": [], "val": []}, {"train": 0, "val": 0}
    for d in docs:
        to = "val" if not split["val"] or val_ratio * (sum(chars.values()) + len(d)) - chars["val"] >= len(d) / 2 \
            else "train"
        split[to].append(d)
        chars[to] += len(d)
    return split["train"], split["val"]


def write_jsonl(path, docs, field="text"):
    with open(path, "w") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
    return str(path)


def leftovers(root):
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_jsonl_round_trip_and_meta(tmp_path):
    folder = run(tmp_path, input=write_jsonl(tmp_path / "docs.jsonl", DOCS), val_ratio=0.1)
    assert folder == str(tmp_path / "out" / "docs")  # the name defaults to the input's file name
    meta = json.load(open(os.path.join(folder, "meta.json")))
    train, val = expected_split(DOCS, 0.1)
    assert val[0] == DOCS[0] and 2 < len(val) < 8  # the first, then about 10% of the characters
    assert meta["val_share"] == meta["tokens"]["val"] / sum(meta["tokens"].values())
    for split, docs in (("train", train), ("val", val)):
        tokens = split_tokens(folder, split)
        assert decode_docs(tokens) == docs
        sizes = [os.path.getsize(os.path.join(folder, f)) // 2 for f in meta["shards"][split]]
        assert meta["tokens"][split] == len(tokens) == sum(sizes)
        assert meta["documents"][split] == len(docs) == (tokens == EOT_ID).sum()
    assert (meta["vocab_size"], meta["eot_id"], meta["dtype"], meta["tokenizer"]) == (50257, EOT_ID, "uint16", "gpt2")
    assert meta["val_ratio"] == 0.1 and meta["max_tokens"] == 0 and meta["source"].startswith("local:")
    assert leftovers(tmp_path / "out") == ["docs"]  # no temp folder left


def test_txt_folder_documents_and_parquet_field(tmp_path):
    src = tmp_path / "notes"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("first doc\nline two\n<|endoftext|>\nsecond doc\n<|endoftext|>\n   \n")
    (src / "sub" / "b.txt").write_text("third doc, a whole file\n")
    (src / ".hidden.txt").write_text("never read\n")
    folder = run(tmp_path, input=str(src), val_ratio=0.5)
    docs = ["first doc\nline two\n", "second doc\n", "third doc, a whole file\n"]  # the whitespace-only one is skipped
    train, val = expected_split(docs, 0.5)
    assert decode_docs(split_tokens(folder, "train")) == train and decode_docs(split_tokens(folder, "val")) == val

    pq.write_table(pa.table({"body": DOCS, "n": list(range(len(DOCS)))}), tmp_path / "docs.parquet")
    folder = run(tmp_path, input=str(tmp_path / "docs.parquet"), text_field="body", name="pq")
    train, val = expected_split(DOCS, 0.01)
    assert decode_docs(split_tokens(folder, "train")) == train and decode_docs(split_tokens(folder, "val")) == val


def test_split_is_deterministic_and_shards_roll_over(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS * 5)
    one = run(tmp_path, input=path, name="one", val_ratio=0.05)
    small = run(tmp_path, input=path, name="small", val_ratio=0.05, shard_size=1000, num_workers=1)
    meta = json.load(open(os.path.join(small, "meta.json")))
    assert len(meta["shards"]["train"]) > 3 and meta["shard_size"] == 1000
    sizes = [os.path.getsize(os.path.join(small, f)) // 2 for f in meta["shards"]["train"]]
    assert all(s == 1000 for s in sizes[:-1]) and 0 < sizes[-1] <= 1000
    assert meta["shards"]["train"][:2] == ["train_000.bin", "train_001.bin"]
    for split in ("train", "val"):  # same tokens, whatever the shard size or thread count
        assert np.array_equal(split_tokens(one, split), split_tokens(small, split))
    again = run(tmp_path, input=path, name="again", val_ratio=0.05)
    for f in ("train_000.bin", "val_000.bin"):  # byte for byte
        assert open(os.path.join(one, f), "rb").read() == open(os.path.join(again, f), "rb").read()


def test_token_cap_stops_at_exactly_the_cap(tmp_path):
    folder = run(tmp_path, input=write_jsonl(tmp_path / "docs.jsonl", DOCS), max_tokens=700, val_ratio=0.1)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert sum(meta["tokens"].values()) == 700 and meta["capped"] and meta["max_tokens"] == 700
    expected = {"train": [], "val": []}  # the token stream in document order, split by document, cut at 700
    stream = 0
    train, val = expected_split(DOCS, 0.1)
    for doc in DOCS:
        tokens = [EOT_ID] + get_tokenizer().encode_ordinary(doc)
        expected["val" if doc in val else "train"] += tokens[:700 - stream]
        stream += len(tokens)
        if stream >= 700:
            break
    assert stream > 700  # the last document was cut
    for split in ("train", "val"):
        assert split_tokens(folder, split).tolist() == expected[split]


def test_force_is_needed_to_overwrite(tmp_path):
    path = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    folder = run(tmp_path, input=path, name="d", shard_size=500)
    first = json.load(open(os.path.join(folder, "meta.json")))
    with pytest.raises(SystemExit, match=r"already holds a prepared dataset; pass --force"):
        run(tmp_path, input=path, name="d")
    run(tmp_path, input=path, name="d", force=True)  # one shard now, where there were several
    assert sorted(os.listdir(folder)) == ["meta.json", "train_000.bin", "val_000.bin"]
    assert len(first["shards"]["train"]) > 1 and leftovers(tmp_path / "out") == ["d"]


def test_installs_into_an_existing_folder_without_touching_other_files(tmp_path):
    target = tmp_path / "out" / "d"  # like data/shakespeare, which holds the embedded input.txt
    target.mkdir(parents=True)
    (target / "input.txt").write_text("keep me")
    (target / "train_007.bin").write_bytes(b"\0\0")  # a stale shard from a killed install
    run(tmp_path, input=write_jsonl(tmp_path / "docs.jsonl", DOCS), name="d")
    assert sorted(os.listdir(target)) == ["input.txt", "meta.json", "train_000.bin", "val_000.bin"]
    assert (target / "input.txt").read_text() == "keep me"


def test_shakespeare_prepares_offline(tmp_path):
    """37 plays of ~130k characters each, long documents: val takes the ends of a few plays, 1% of the text."""
    folder = run(tmp_path, dataset="shakespeare")
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert 1_400_000 < meta["tokens"]["train"] < 1_550_000 and meta["documents"]["train"] == 37
    assert abs(meta["val_share"] - 0.01) < 0.002 and 2 <= meta["documents"]["val"] <= 8
    train, val = decode_docs(split_tokens(folder, "train")), decode_docs(split_tokens(folder, "val"))
    assert train[0].startswith("ALL'S WELL THAT ENDS WELL") and train[-1].startswith("THE WINTER'S TALE")
    with open(os.path.join(ROOT, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        plays = textsplit.SEPARATOR_LINE.split(f.read())
    assert all(sum(p.endswith(v) for p in plays) == 1 for v in val)  # each the end of a play
    assert sum(map(len, train + val)) == sum(map(len, plays))  # nothing lost, nothing twice


@pytest.mark.parametrize("setup, kwargs, message", [
    (None, dict(dataset="wikipedia"),
     r"unknown dataset 'wikipedia'; known: shakespeare, tinystories_10M, openwebtext_100M, fineweb_1B"),
    (None, dict(input="no/such/file.jsonl"), r"input 'no/such/file.jsonl' does not exist"),
    ("empty.jsonl", dict(), r"input .*empty.jsonl is empty"),
    ("blank.jsonl", dict(), r"found no text in"),
    ("data.csv", dict(), r"unsupported file type '.csv'; use .txt, .jsonl, .json or .parquet"),
    ("mixed", dict(), r"mixes json and text files"),
    ("nothing", dict(), r"holds no .txt, .jsonl, .json or .parquet files \(found: .md\)"),
    ("docs.jsonl", dict(text_field="content"), r"has no field 'content'; fields present: id, text; pass --text_field"),
    ("docs.jsonl", dict(text_field="id"), r"field 'id' .* holds int values, not text"),
    ("one.txt", dict(), r"too little text to split: all 5 tokens went to val"),
    ("broken.jsonl", dict(), r"could not read"),
    ("latin1.txt", dict(), r"latin1.txt is not UTF-8 text .*; save it as UTF-8"),
    ("docs.jsonl", dict(dataset="shakespeare"), r"give either --dataset=shakespeare or --input="),
    ("docs.jsonl", dict(name="../up"), r"must be a plain folder name"),
    ("docs.jsonl", dict(val_ratio=1.0), r"val_ratio=1.0 must be between 0 and 1"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, setup, kwargs, message):
    if setup:
        path = tmp_path / setup
        if setup == "empty.jsonl":
            path.write_text("")
        elif setup == "blank.jsonl":
            path.write_text('{"text": ""}\n{"text": "  "}\n')
        elif setup == "data.csv":
            path.write_text("a,b\n")
        elif setup == "mixed":
            path.mkdir()
            (path / "a.txt").write_text("x")
            write_jsonl(path / "b.jsonl", DOCS)
        elif setup == "nothing":
            path.mkdir()
            (path / "README.md").write_text("x")
        elif setup == "one.txt":
            path.write_text("just one document\n")
        elif setup == "latin1.txt":
            path.write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 3)
        elif setup == "broken.jsonl":
            path.write_text('{"text": "fine"}\n{"text": unquoted}\n')
        else:
            write_jsonl(path, DOCS)
        kwargs = dict(input=str(path), **kwargs)
    with pytest.raises(SystemExit, match=message) as e:
        run(tmp_path, **kwargs)
    assert str(e.value).startswith("error: ") and "\n" not in str(e.value)
    assert leftovers(tmp_path / "out") == []


class FakeHub:
    """Stands in for datasets.load_dataset: Hub names fail like an unreachable Hub, or serve a local file."""

    def __init__(self, real, serve=None, fail_when="load"):
        self.real, self.serve, self.fail_when, self.calls = real, serve, fail_when, []

    def __call__(self, path, *args, **kwargs):
        if path in ("text", "json", "parquet"):
            return self.real(path, *args, **kwargs)
        self.calls.append((path, args, kwargs))
        if self.fail_when == "script" and "revision" not in kwargs:
            raise RuntimeError("Dataset scripts are no longer supported, but found openwebtext.py")
        if self.serve:
            return self.real("json", data_files=self.serve, split="train", streaming=True)
        if self.fail_when == "load":
            raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

        class Unreachable:
            def iter(self, batch_size):
                raise ConnectionError("Read timed out")
                yield
        return Unreachable()


@pytest.mark.parametrize("fail_when", ["load", "iterate"])
def test_hub_unreachable(tmp_path, monkeypatch, fail_when):
    import datasets
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(datasets.load_dataset, fail_when=fail_when))
    with pytest.raises(SystemExit, match=r"HuggingFaceFW/fineweb-edu.*(ConnectionError).*--input=PATH --name=NAME"):
        run(tmp_path, dataset="fineweb_1B")
    assert leftovers(tmp_path / "out") == []


def test_hub_datasets_stream_with_their_cap(tmp_path, monkeypatch):
    import datasets
    fake = FakeHub(datasets.load_dataset, serve=write_jsonl(tmp_path / "docs.jsonl", DOCS))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    monkeypatch.setitem(prepare.DATASETS, "fineweb_1B", ("HuggingFaceFW/fineweb-edu", "sample-10BT", 300))
    folder = run(tmp_path, dataset="fineweb_1B")
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert fake.calls == [("HuggingFaceFW/fineweb-edu", ("sample-10BT",), dict(split="train", streaming=True))]
    assert sum(meta["tokens"].values()) == 300 and meta["max_tokens"] == 300 and meta["capped"]
    assert meta["source"] == "hf:HuggingFaceFW/fineweb-edu config=sample-10BT split=train"
    assert os.path.basename(folder) == "fineweb_1B"


def test_hub_datasets_with_a_loading_script_stream_the_hubs_parquet_export(tmp_path, monkeypatch):
    import datasets
    fake = FakeHub(datasets.load_dataset, serve=write_jsonl(tmp_path / "docs.jsonl", DOCS), fail_when="script")
    monkeypatch.setattr(datasets, "load_dataset", fake)
    folder = run(tmp_path, dataset="openwebtext_100M", max_tokens=200)
    assert [call[2].get("revision") for call in fake.calls] == [None, "refs/convert/parquet"]
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert meta["source"] == "hf:Skylion007/openwebtext split=train revision=refs/convert/parquet"


DRIVER = """
import os, runpy, sys, time
import tiktoken.core
real = tiktoken.core.Encoding.encode_to_numpy
def slow(self, text, **kw):
    time.sleep(0.05)  # a big dataset, in miniature
    return real(self, text, **kw)
tiktoken.core.Encoding.encode_to_numpy = slow
sys.argv = ["prepare.py"] + sys.argv[1:]
runpy.run_path(os.path.join({root!r}, "prepare.py"), run_name="__main__")
"""


def start_slow_prepare(tmp_path, name):
    docs = [f"document {i} " * 10_000 for i in range(60)]  # 6 chunks of about a megabyte
    cmd = [sys.executable, "-c", DRIVER.format(root=ROOT), f"--input={write_jsonl(tmp_path / 'big.jsonl', docs)}",
           f"--name={name}", f"--data_root={tmp_path / 'out'}", "--shard_size=2000", "--num_workers=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tmp = tmp_path / "out" / f".tmp-{name}-{proc.pid}"
    deadline = time.time() + 30
    while not (tmp.is_dir() and any(f.endswith(".bin") for f in os.listdir(tmp))):  # wait until shards are being written
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, tmp


@pytest.mark.slow
def test_interrupted_prepare_leaves_no_dataset(tmp_path):
    proc, tmp = start_slow_prepare(tmp_path, "big")
    proc.send_signal(signal.SIGTERM)  # like Ctrl-C: cleans up and says so in one line
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.strip().splitlines()[-1] == ("error: interrupted; the partial preparation was removed and nothing was "
                                            "written; run the command again")
    assert leftovers(tmp_path / "out") == []

    proc, tmp = start_slow_prepare(tmp_path, "big")
    proc.kill()  # SIGKILL: no chance to clean up, but nothing looks finished
    proc.communicate(timeout=30)
    assert leftovers(tmp_path / "out") == [tmp.name]
    run(tmp_path, input=str(tmp_path / "big.jsonl"), name="big")  # the next run removes the dead run's temp folder
    assert leftovers(tmp_path / "out") == ["big"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(prepare.ShardWriter, "close", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run(tmp_path, input=write_jsonl(tmp_path / "docs.jsonl", DOCS))
    assert leftovers(tmp_path / "out") == []


@pytest.mark.slow
def test_command_line_errors_are_one_line(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "prepare.py"), "--dataset=wikitext",
                             f"--data_root={tmp_path}"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == ("error: unknown dataset 'wikitext'; known: shakespeare, tinystories_10M, "
                                     "openwebtext_100M, fineweb_1B, smoltalk, ultrafeedback (or local files with --input=PATH)")


def test_smoltalk_streams_conversations_as_jsonl(tmp_path, monkeypatch):
    import datasets
    rows = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}],
             "source": "smol"} for i in range(5)]
    rows.append({"messages": [{"role": "tool", "content": "not a role objective=chat knows"}]})
    data = tmp_path / "smol.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fake = FakeHub(datasets.load_dataset, serve=str(data))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    folder = run(tmp_path, dataset="smoltalk")
    assert [c[0] for c in fake.calls] == ["HuggingFaceTB/smol-smoltalk"] * 2
    assert [c[2]["split"] for c in fake.calls] == ["train", "test"] and all(c[2]["streaming"] for c in fake.calls)
    for split in ("train", "val"):
        lines = [json.loads(line) for line in open(os.path.join(folder, f"{split}.jsonl"))]
        assert lines == [{"messages": r["messages"]} for r in rows[:5]]  # the unknown role is left out
    from nash.data import ChatExamples
    assert len(ChatExamples(os.path.join(folder, "train.jsonl"), 64).examples) == 5  # what objective=chat reads
    with pytest.raises(SystemExit, match="already holds conversations"):
        run(tmp_path, dataset="smoltalk")
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(datasets.load_dataset))
    with pytest.raises(SystemExit, match="could not stream HuggingFaceTB/smol-smoltalk.*ConnectionError"):
        run(tmp_path, dataset="smoltalk", name="other")
    assert sorted(os.listdir(tmp_path / "out")) == ["smoltalk"]  # nothing half-made left behind


# -----------------------------------------------------------------------------
# any text, in flat memory, with the split it asked for (issue 11)

def shakespeare_text(chars):
    """Shakespeare without its separator lines: one long document, like nanoGPT's input.txt."""
    with open(os.path.join(ROOT, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        return f.read(chars + 10_000).replace("<|endoftext|>\n", "")[:chars]


def val_share(folder):
    meta = json.load(open(os.path.join(folder, "meta.json")))
    return meta["tokens"]["val"] / sum(meta["tokens"].values())


def test_txt_is_read_in_bounded_pieces_that_give_back_its_documents(tmp_path):
    """Read in blocks far smaller than its documents, lines and separators: no piece is longer than the block,
    the pieces give back every document whatever falls on a block's edge, and each document's length comes with
    its first piece."""
    docs = ["a line\n" * 7 + "x" * 45 + "\n", "<|endoftext|> in a line is text\nend\n", "y" * 130 + "\n\n",
            "\n\n  leading blank lines\n", "no line end at the end"]
    path = tmp_path / "docs.txt"
    path.write_text("  \n<|endoftext|>\n" + "<|endoftext|>\n".join(docs[:4]) + "\n<|endoftext|>\n<|endoftext|>\n"
                    + docs[4])
    want = docs[:3] + [docs[3] + "\n", docs[4]]  # the blank documents are skipped
    for size in (16, 17, 40, 1 << 20):
        got, lengths = [], []
        for piece, n in textsplit.txt_pieces(str(path), size=size):
            assert 0 < len(piece) <= size  # bounded by the block, not by the document
            got.append(piece) if n else got.__setitem__(-1, got[-1] + piece)
            lengths += [n] if n else []
        assert got == want and lengths == [len(d) for d in want], size


def test_folder_files_come_in_sorted_path_order_one_folder_at_a_time(tmp_path):
    for rel in ["a-1.txt", "a/x.txt", "a/b/y.txt", "a.txt", "z.txt", "sub/b.txt", "sub/.h.txt", ".hid/c.txt", "sub-"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    want = sorted(os.path.join(root, f) for root, dirs, names in os.walk(tmp_path) for f in names
                  if not f.startswith(".") and ".hid" not in root)
    files = textsplit.walk_files(str(tmp_path))
    assert next(files) == str(tmp_path / "a-1.txt")  # a generator: nothing listed beyond what is read
    assert [str(tmp_path / "a-1.txt"), *files] == want


def test_a_file_that_grows_while_read_loses_nothing():
    """A document's length is read ahead of its text (a .txt is read twice): if more text comes than was said,
    it is still handed on, once."""
    items = list(textsplit.split_pieces([("abc", 1), ("def", 0), ("gh", 2)], 0.5))
    assert "".join(text for _, text, _ in items) == "abcdefgh"


@pytest.mark.parametrize("val_ratio", [0.1, 0.01])
def test_single_txt_without_separators_splits_as_nanogpt(tmp_path, monkeypatch, val_ratio):
    """nanoGPT's input.txt: one document, no separators, prepared by the README's command. Val is the end of the
    text, the very characters of nanoGPT's data[int(n * 0.9):], and the text moves on in pieces, never whole."""
    text = shakespeare_text(1_000_000)  # val's 1% is more than the 8,192 characters val takes at least
    (tmp_path / "input.txt").write_text(text)
    monkeypatch.setattr(textsplit, "PIECE_CHARS", 20_000)
    longest, split_pieces = [0], textsplit.split_pieces

    def watched(*args, **kwargs):  # what goes on to the tokenizer
        for split, piece, starts in split_pieces(*args, **kwargs):
            longest[0] = max(longest[0], len(piece))
            yield split, piece, starts
    monkeypatch.setattr(textsplit, "split_pieces", watched)
    run_inline(monkeypatch, "prepare.py", f"--input={tmp_path / 'input.txt'}", f"--val_ratio={val_ratio}",
               f"--data_root={tmp_path / 'out'}")
    folder = str(tmp_path / "out" / "input")
    assert 0 < longest[0] <= 20_000  # no document is tokenised whole
    assert abs(val_share(folder) - val_ratio) < 0.005
    train, val = (decode_docs(split_tokens(folder, split)) for split in ("train", "val"))
    cut = int(len(text) * (1 - val_ratio))
    assert train == [text[:cut]] and val == [text[cut:]]


@pytest.mark.slow
def test_val_share_holds_for_many_files_and_few_huge_rows(tmp_path):
    rng = np.random.default_rng(0)
    words = shakespeare_text(600_000).split()
    many = tmp_path / "many"
    many.mkdir()
    for i in range(300):  # many files of very different sizes (a tenth of them long documents)
        n = int(rng.integers(20, 4000 if i % 10 else 40_000))
        (many / f"{i:03d}.txt").write_text(" ".join(words[i:i + n]))
    huge = write_jsonl(tmp_path / "huge.jsonl", [" ".join(words[i * 20_000:i * 20_000 + 60_000]) for i in range(3)])
    texts = [(many / f).read_text() for f in sorted(os.listdir(many))]
    for path, ratio in ((many, 0.05), (many, 0.01), (huge, 0.01)):
        folder = run(tmp_path, input=str(path), val_ratio=ratio, force=True)
        assert abs(val_share(folder) - ratio) < 0.005, (path, ratio, val_share(folder))
        if path == many:  # short documents go whole, long ones give val their end
            assert all(v in texts or any(t.endswith(v) and len(t) > textsplit.WHOLE_DOC_CHARS for t in texts)
                       for v in decode_docs(split_tokens(folder, "val")))


def test_token_cap_inside_one_long_document_keeps_val(tmp_path):
    """With a cap the stream may stop anywhere in a long document: it is split in segments, each giving val its
    end, so the capped text still has val."""
    (tmp_path / "input.txt").write_text(shakespeare_text(1_000_000))
    folder = run(tmp_path, input=str(tmp_path / "input.txt"), val_ratio=0.1, max_tokens=120_000)
    meta = json.load(open(os.path.join(folder, "meta.json")))
    assert sum(meta["tokens"].values()) == 120_000 and meta["documents"]["val"] >= 2
    assert abs(val_share(folder) - 0.1) < 0.02


def test_tokenizer_never_learns_from_val_text(tmp_path):
    """Val is the text's end, a made-up word repeated: a tokenizer that had seen it would have merged it."""
    text = shakespeare_text(90_000) + " zyxwvut" * 1500  # 12,000 of 102,000 characters
    (tmp_path / "input.txt").write_text(text)
    folder = run(tmp_path, input=str(tmp_path / "input.txt"), val_ratio=0.15, tokenizer_vocab_size=400)
    enc = tokenizer.from_spec(tokenizer.dataset_spec(folder))
    cut = int(len(text) * 0.85)
    assert "zyxwvut" not in text[:cut] and "zyxwvut" in text[cut:]
    assert not any(b"xwv" in enc.decode_single_token_bytes(t) for t in range(enc.n_vocab - 7))
    assert tokenizer.train_bpe([text[:cut]], 400) == tokenizer.dataset_spec(folder)  # exactly the train text
    val = split_tokens(folder, "val").tolist()
    assert val[0] == enc.eot_token and enc.decode(val[1:]) == text[cut:]  # and val holds it all
