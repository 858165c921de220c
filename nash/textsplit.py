"""
Text for prepare.py in bounded pieces, each one bound for train or val before anything is tokenised.

Reading. A .txt file is read PIECE_CHARS characters at a time, never whole: lines that read exactly <|endoftext|>
separate its documents, and a file without them (nanoGPT's input.txt, enwik8) is one long document. A row of a
.jsonl/.parquet file or of a Hub dataset is a document as it comes. Every document moves on in pieces of at most
PIECE_CHARS characters (cut at a line end where there is one), so nothing after the reader holds a long document.
Empty and whitespace-only documents are skipped.

Splitting (split_pieces), by characters, as the text streams:
- a document of up to WHOLE_DOC_CHARS characters goes whole to one split: to val when that brings val's share of
  the characters so far closer to val_ratio; the first document always goes to val, so val is never empty;
- a longer one gives val its end, as many characters as val lacks with the whole document counted (at least
  MIN_VAL_CHARS, or none). For a single input.txt this is nanoGPT's split, character for character: train the
  first int(n * (1 - val_ratio)) characters, val the rest. A .txt document's length must be known before its
  first piece moves on, so a second reader of the same file runs one document ahead (the file is read twice).
- with a token cap the stream may stop anywhere, so long documents are decided in segments of
  max(WHOLE_DOC_CHARS, min(PIECE_CHARS, cap)) characters, each giving val its end: the share holds wherever the cap
  falls (text has about a character or more per token, so the cap lies past the first segment).
So val's character share is val_ratio to within WHOLE_DOC_CHARS / 2 at every document's end, and its token share
follows closely (prepare.py records it in meta.json as val_share).

Why by characters, before tokenising: prepare.py may first learn a tokenizer from the train text (a pass of its
own over the source) and then tokenise with it. Both passes must agree on which text is val, and val text must
never teach the tokenizer, so the split has to be a rule on the text itself, decided before any token exists.
"""
import os
import re

PIECE_CHARS = 1 << 20  # text moves on in pieces of at most this many characters: memory does not follow the input
WHOLE_DOC_CHARS = 1 << 14  # a document (or segment) up to this long goes to one split whole (~4,000 tokens)
MIN_VAL_CHARS = 1 << 13  # the shortest end of a long document given to val (the first gives at least this)
SEPARATOR = "<|endoftext|>"
SEPARATOR_LINE = re.compile(r"^<\|endoftext\|>(?:\n|\Z)", re.M)  # a line that is just this separates .txt documents


def cut(text, size=None):
    """text in pieces of at most size (PIECE_CHARS) characters, each cut after a line end (else a space) where
    there is one in its second half."""
    size = size or PIECE_CHARS
    while len(text) > size:
        at = text.rfind("\n", 0, size) + 1 or text.rfind(" ", 0, size) + 1
        at = at if at > size // 2 else size
        yield text[:at]
        text = text[at:]
    if text:
        yield text


def read_txt(path, size=None):
    """(piece, starts_document) for a .txt file read size (PIECE_CHARS) characters at a time; pieces of at most
    size characters. A separator line can only be told once it is whole, so each block is handed on up to its last
    line end (a block without one is inside a long line, which cannot be a separator)."""
    size = size or PIECE_CHARS
    new_doc, line_start, rest, blank = True, True, "", ""  # blank: a document's leading whitespace, held back
    with open(path, encoding="utf-8") as f:
        while True:
            block = f.read(size)
            buf, end = rest + block, not block
            if end:
                part, rest = buf, ""
            elif "\n" in buf:
                at = buf.rfind("\n") + 1
                part, rest = buf[:at], buf[at:]
            elif len(buf) > len(SEPARATOR):  # inside one long line: hand on what it holds
                part, rest = buf, ""
            else:
                rest = buf  # too short to tell yet
                continue
            head = ""
            if not line_start:  # the part goes on with a line begun in the last one: that line is no separator
                at = part.find("\n") + 1 or len(part)
                head, part = part[:at], part[at:]
            line_start = (head + part).endswith("\n")  # whether the next part begins a line
            texts = SEPARATOR_LINE.split(part)
            texts[0] = head + texts[0]
            for i, text in enumerate(texts):
                if i:  # a separator line: the next document begins
                    new_doc, blank = True, ""
                if new_doc and not text.strip():
                    blank = (blank + text)[-size:]  # kept (boundedly) in case the document has text after it
                    continue
                for piece in cut(blank + text, size) if new_doc else cut(text, size):
                    yield piece, new_doc
                    new_doc = False
                blank = ""
            if end:
                return


def walk_files(folder):
    """The files under folder, hidden ones left out, in the order of their sorted paths, listed one folder at a
    time: a folder of a million files is held as a million names only while it is being read."""
    names = sorted(e.name + "/" if e.is_dir() else e.name for e in os.scandir(folder) if not e.name.startswith("."))
    for name in names:  # a folder sorts as name + "/", as it does inside the paths of its files
        path = os.path.join(folder, name.rstrip("/"))
        if not name.endswith("/"):
            yield path
        elif not os.path.islink(path):  # as os.walk: a linked folder is not entered
            yield from walk_files(path)


def txt_pieces(path, size=None):
    """(piece, document length) for a .txt file: the length in characters with a document's first piece, 0 with
    the others. The lengths come from a second reader of the file running a document ahead."""
    def lengths():
        n = None
        for piece, starts in read_txt(path, size):
            if starts and n is not None:
                yield n
            n = (0 if starts else n) + len(piece)
        if n is not None:
            yield n
    ahead = lengths()
    for piece, starts in read_txt(path, size):
        yield piece, (next(ahead, 0) or len(piece)) if starts else 0  # (0: the file grew since; go on)


def text_pieces(text, size=None):
    """(piece, document length) for one document held in memory (a row), skipped if blank."""
    if text.strip():
        for i, piece in enumerate(cut(text, size)):
            yield piece, 0 if i else len(text)


def split_pieces(pieces, val_ratio, cap=0):
    """(split, piece, starts) for each (piece, document length) of a reader, split as the module says. starts
    says an end-of-text goes before the piece: it begins a document, or a part that does not go on from the text
    its split received last (val's end of a document; train's next segment after it)."""
    segment = max(WHOLE_DOC_CHARS, min(PIECE_CHARS, cap)) if cap else 0  # 0: a document is one segment
    held = {"train": 0, "val": 0}  # characters given to each split so far
    doc_left = seg_left = val = 0  # characters left in the document, in its segment; val's at the segment's end
    last = None  # the split that received the document's text last
    for piece, n in pieces:
        if n:
            doc_left, seg_left, last = n, 0, None
        while piece:
            if seg_left == 0:  # a segment begins: decide how much of its end goes to val
                doc_left = max(doc_left, len(piece))  # (more text than said: a file that grew while read)
                seg_left = min(doc_left, segment or doc_left)
                total = held["train"] + held["val"] + seg_left
                if seg_left <= WHOLE_DOC_CHARS:  # whole, to val if that brings val closer to its share
                    val = seg_left if not held["val"] or val_ratio * total - held["val"] >= seg_left / 2 else 0
                else:  # train up to int(total * (1 - val_ratio)) characters, as nanoGPT's data[:int(n * 0.9)]
                    val = min(seg_left, max(0, seg_left - (int(total * (1 - val_ratio)) - held["train"])))
                    val = max(val, min(MIN_VAL_CHARS, seg_left)) if not held["val"] else val
                    val = 0 if val < MIN_VAL_CHARS and held["val"] else val
            split = "val" if seg_left <= val else "train"
            take = seg_left if split == "val" else seg_left - val  # up to val's part, or the segment's end
            text, piece = piece[:take], piece[take:]
            yield split, text, split != last
            held[split] += len(text)
            seg_left, doc_left, last = seg_left - len(text), doc_left - len(text), split
