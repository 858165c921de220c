"""The countdown task of the RL demo (data/countdown, nash/tasks/countdown.py), DPO pairs from a model's own
answers (nash/tasks/pairs.py, chat pairs in PreferenceExamples) and the paired comparison (nash/tasks/paired.py)."""
import json
import os
import shutil

import pytest

from conftest import ROOT, run_script
from nash.tasks import TASKS


def test_countdown_data_is_the_generator_output_and_fresh_draws_skip_it(tmp_path):
    folder = tmp_path / "countdown"
    shutil.copytree(os.path.join(ROOT, "data", "countdown"), folder)
    for f in folder.rglob("*.jsonl"):
        f.unlink()
    run_script(str(folder / "generate.py"))
    for name in ("train.jsonl", "test.jsonl", "heldout.jsonl", "chat/train.jsonl", "chat/val.jsonl"):
        assert (folder / name).read_bytes() == open(os.path.join(ROOT, "data", "countdown", name), "rb").read()
    shipped = set()
    for name in ("train.jsonl", "test.jsonl", "heldout.jsonl"):
        rows = [json.loads(line) for line in open(folder / name)]
        assert len({r["question"] for r in rows}) == len(rows)
        assert not shipped & {r["question"] for r in rows}  # no split repeats another's questions
        shipped |= {r["question"] for r in rows}
    draws = []
    for seed in (1, 2):
        out = run_script(str(folder / "generate.py"), f"--seed={seed}", "--count=500").stdout
        draws.append([json.loads(line) for line in out.splitlines()])
        assert len(draws[-1]) == 500 and not shipped & {r["question"] for r in draws[-1]}
    assert draws[0] != draws[1]  # another seed, another draw
    again = run_script(str(folder / "generate.py"), "--seed=1", "--count=500").stdout
    assert [json.loads(line) for line in again.splitlines()] == draws[0]  # and the same seed, the same
    task = TASKS["countdown"]
    for r in draws[0]:  # every generated answer passes the check
        assert task.check(task.doc(r), r["answer"])["correct"] == 1.0
    too_many = run_script(str(folder / "generate.py"), "--seed=1", "--count=100000", check=False)
    assert too_many.returncode == 2 and too_many.stderr.startswith("error: ")


def test_countdown_check_needs_the_numbers_in_order_true_lines_and_the_target():
    task = TASKS["countdown"]
    doc = task.doc({"question": "Make 11 from 7, 3 and 1, in that order, with + and -.",
                    "answer": "7 + 3 = 10\n10 + 1 = 11\n#### 11"})
    assert task.check(doc, "7 + 3 = 10\n10 + 1 = 11\n#### 11")["correct"] == 1.0
    assert task.check(doc, "7 + 3 = 10\n10 - 1 = 9\n#### 9")["correct"] == 0.0  # true, but not the target
    wrong_fact = task.check(doc, "7 + 3 = 10\n10 + 1 = 12\n#### 11")
    assert wrong_fact["correct"] == 0.0 and wrong_fact["exact_match"] == 1.0  # a false line: no reward
    assert task.check(doc, "7 + 1 = 8\n8 + 3 = 11\n#### 11")["correct"] == 0.0  # not in the given order
    assert task.check(doc, "7 + 4 = 11\n#### 11")["correct"] == 0.0  # a number not given, a step left out


def test_chat_preference_pairs_mask_the_prompt_and_end_at_assistant_end(tmp_path):
    from nash.data import PreferenceExamples
    from nash.tokenizer import get_tokenizer, special_ids
    enc = get_tokenizer()
    path = tmp_path / "train.jsonl"
    messages = [{"role": "user", "content": "Make 11 from 7, 3 and 1, in that order, with + and -."}]
    path.write_text(json.dumps({"messages": messages, "chosen": "7 + 3 = 10\n10 + 1 = 11\n#### 11",
                                "rejected": "7 - 3 = 4\n4 + 1 = 5\n#### 5"}) + "\n")
    pairs = PreferenceExamples(str(path), 64, enc)
    x, y = pairs.batch([0], 64)
    end = special_ids(enc)["<|assistant_end|>"]
    for row, reply in zip(y, ("7 + 3 = 10\n10 + 1 = 11\n#### 11", "7 - 3 = 4\n4 + 1 = 5\n#### 5")):
        trained = row[row != -1].tolist()
        assert trained == enc.encode_ordinary(reply) + [end]  # the reply and its end, never the question


def test_the_demonstrator_has_a_habit_where_it_misses_the_target():
    """The SFT demonstrations reach the target or add the three numbers (the habit), nothing else: the habit is what
    makes the SFT model's mistakes choices that RL can unlearn (docs/learning.md). About 60% add, and adding misses
    the target on a good share of them (else there would be nothing to unlearn)."""
    import re
    task = TASKS["countdown"]
    rows = [json.loads(line) for line in open(os.path.join(ROOT, "data", "countdown", "chat", "train.jsonl"))]
    habit = misses = 0
    for r in rows:
        question, answer = r["messages"][0]["content"], r["messages"][1]["content"]
        a, b, c = map(int, re.findall(r"(\d+), (\d+) and (\d+)", question)[0])
        target = int(re.match(r"Make (\d+)", question).group(1))
        right = task.check(task.doc({"question": question, "answer": f"#### {target}"}), answer)["correct"] == 1.0
        adds = answer == f"{a} + {b} = {a + b}\n{a + b} + {c} = {a + b + c}\n#### {a + b + c}"
        assert right or adds, answer
        habit += adds
        misses += adds and not right
    assert 0.7 < habit / len(rows) < 0.85  # 60% habit + the right answers that happen to add (40% of 40%)
    assert misses / len(rows) > 0.3


@pytest.mark.slow
def test_the_readme_countdown_commands_run_as_written(tmp_path):
    """README, past SFT: config/countdown_sft.py then config/countdown_rl.py from its run folder, as written (tiny
    step counts): the RL run starts from the SFT run's folder, samples, rewards with the check and saves."""
    run_script("train.py", "config/countdown_sft.py", "--max_steps=2", "--eval_interval=0", "--log_interval=1",
               "--batch_size=2")
    out = run_script("train.py", "config/countdown_rl.py", "--max_steps=1", "--batch_size=2", "--rl_samples=2",
                     "--eval_interval=0", "--log_interval=1", "--checkpoint_interval=1").stdout
    assert "starting from out-countdown-sft" in out and "reward" in out
    assert os.path.isfile("out-countdown-rl/ckpt.pt")
