"""
A pipeline folder's stages.jsonl (runs/lib.sh writes it, nash/tasks/report.py reads it): one line per finished stage,
{"stage": name, "seconds": wall time, "run": the run folder it wrote or null}. Torch-free, so that the stage runner
can call it after every stage at no cost:

    python -m nash.stages DIR NAME T0 T1 RUN     # record stage NAME, run from T0 to T1 (date +%s.%N), RUN or -

A stage killed while its line was being written (or a full disk) leaves a cut-short last line. Reading skips a line
that is not a whole record and says so; recording rewrites the file whole (atomically: a temporary file, then a
rename), so such a line is dropped, and a stage redone (its .done marker deleted) keeps one line, its latest.
"""
import json
import os
import sys

NAME = "stages.jsonl"


def read(folder):
    """(the stages' records, in order, one per stage: its latest; how many lines were not whole records)."""
    path = os.path.join(folder, NAME)
    records, bad = {}, 0
    if not os.path.isfile(path):
        return [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError:
                r = None
            if not (isinstance(r, dict) and isinstance(r.get("stage"), str)
                    and isinstance(r.get("seconds"), (int, float))):
                bad += 1
                continue
            records[r["stage"]] = r  # a stage redone: its latest line, at its first place
    return list(records.values()), bad


def cut_note(folder, bad):
    """The one line a reader prints when lines were left out."""
    return (f"note: {os.path.join(folder, NAME)}: {bad} line(s) cut short left out (a stage stopped while writing "
            f"it): the card lacks that stage's time until the stage is run again")


def record(folder, stage, seconds, run):
    """Add (or replace, in its place) one stage's line and write the file whole, atomically; say so in one line
    if lines that were not whole records are dropped."""
    records, bad = read(folder)
    if bad:
        print(f"note: {os.path.join(folder, NAME)}: {bad} line(s) cut short dropped (a stage stopped while writing "
              f"it); the file is rewritten whole")
    new = {"stage": stage, "seconds": seconds, "run": run}
    records = [new if r["stage"] == stage else r for r in records]
    if new not in records:
        records.append(new)
    path = os.path.join(folder, NAME)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)


if __name__ == "__main__":  # runs/lib.sh, after each stage
    folder, stage, t0, t1, run = sys.argv[1:]
    record(folder, stage, float(t1) - float(t0), None if run == "-" else run)
