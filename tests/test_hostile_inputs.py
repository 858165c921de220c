"""Inputs tried as an attacker would (issue 35, round two): task data, tokenizer files and checkpoint fields that
are damaged or hostile, and flags that would size an allocation. Each runs the real script as a user does, in a
subprocess under an address-space limit, and must end in exactly one `error:` line naming the problem, a non-zero
exit and no traceback (test_model_files.run_refused)."""
import base64
import json
import shutil

import pytest
import torch

from conftest import ROOT
from test_model_files import run_refused

pytestmark = pytest.mark.slow  # each case starts the script in its own process


# -----------------------------------------------------------------------------
# benchmark rows from --task_data: the hub datasets' schema, but anyone's file

def task_folder(tmp_path, task, rows, pool=None):
    """A --task_data folder holding <task>.jsonl (bytes or rows) and its few-shot pool <task>.train.jsonl."""
    folder = tmp_path / "task_data"
    folder.mkdir()
    data = rows if isinstance(rows, bytes) else "".join(json.dumps(r) + "\n" for r in rows).encode()
    (folder / f"{task}.jsonl").write_bytes(data)
    pool_rows = pool if pool is not None else [json.loads(line) for line in
                                               open(f"{ROOT}/tests/task_data/{task}.train.jsonl")]
    (folder / f"{task}.train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pool_rows))
    return folder


def shipped_rows(task):
    return [json.loads(line) for line in open(f"{ROOT}/tests/task_data/{task}.jsonl")]


@pytest.mark.parametrize("case, task, words", [
    ("not_utf8", "hellaswag", "line 1 is not UTF-8"),
    ("no_endings", "hellaswag", "has no choices"),
    ("label_out_of_range", "hellaswag", "names answer 7, not one of its 4 choices"),
    ("answer_a_number", "gsm8k", "does not have the schema of openai/gsm8k"),
])
def test_task_data_that_is_not_the_schema(case, task, words, tiny_run, tmp_path):
    row = shipped_rows(task)[0]
    rows = {"not_utf8": b'{"ctx": "caf\xe9"}\n', "no_endings": [{**row, "endings": []}],
            "label_out_of_range": [{**row, "label": "7"}], "answer_a_number": [{**row, "answer": 5}]}[case]
    folder = task_folder(tmp_path, task, rows)
    error = run_refused("evaluate.py", f"--init_from={tiny_run}", f"--tasks={task}", f"--task_data={folder}")
    assert words in error and task in error, error


def test_few_shot_pool_smaller_than_the_shots(tiny_run, tmp_path):
    """lm-eval draws k + 1 shots for hellaswag: a pool of 2 cannot give 2 shots (random.sample's ValueError before)."""
    pool = [json.loads(line) for line in open(f"{ROOT}/tests/task_data/hellaswag.train.jsonl")][:2]
    folder = task_folder(tmp_path, "hellaswag", shipped_rows("hellaswag"), pool=pool)
    error = run_refused("evaluate.py", f"--init_from={tiny_run}", "--tasks=hellaswag", f"--task_data={folder}",
                        "--num_fewshot=2")
    assert "--num_fewshot=2 needs at least 3 examples" in error and "has 2" in error, error


def test_num_samples_is_bounded_before_sampling(tiny_run):
    error = run_refused("evaluate.py", f"--init_from={tiny_run}", "--tasks=arith", "--num_samples=100000")
    assert "num_samples=100000" in error, error


# -----------------------------------------------------------------------------
# a dataset's own tokenizer (meta.json + tokenizer.tiktoken) and a checkpoint's

@pytest.fixture(scope="module")
def bpe_data(tmp_path_factory):
    """A dataset prepared with a small BPE of its own."""
    import subprocess
    import sys
    root = tmp_path_factory.mktemp("bpe")
    (root / "text.txt").write_text(open(f"{ROOT}/data/shakespeare/input.txt").read(40_000))
    subprocess.run([sys.executable, f"{ROOT}/prepare.py", f"--input={root / 'text.txt'}", "--name=bpe",
                    f"--data_root={root}", "--tokenizer_vocab_size=300", "--val_ratio=0.1"], check=True,
                   capture_output=True, cwd=ROOT)
    return root / "bpe"


@pytest.mark.parametrize("damage, words", [
    ("pattern_does_not_parse", "Parsing error"),
    ("token_twice", "a token appears twice"),
    ("three_million_tokens", "more than 1,048,576 tokens"),
    ("not_utf8", "is not a tokenizer prepare.py wrote"),
])
def test_damaged_dataset_tokenizer(damage, words, bpe_data, tmp_path):
    data = tmp_path / "bpe"
    shutil.copytree(bpe_data, data)
    meta_path, file = data / "meta.json", data / "tokenizer.tiktoken"
    meta = json.loads(meta_path.read_text())
    lines = file.read_text().splitlines()
    if damage == "pattern_does_not_parse":
        meta_path.write_text(json.dumps({**meta, "tokenizer_pattern": "((("}))
    elif damage == "token_twice":  # the last token's bytes again under the next id: tiktoken asserted before
        file.write_text("\n".join(lines + [f"{lines[-1].split()[0]} {len(lines)}"]) + "\n")
        meta_path.write_text(json.dumps({**meta, "special_tokens": {k: v + 1 for k, v in
                                                                     meta["special_tokens"].items()}}))
    elif damage == "three_million_tokens":
        with open(file, "w") as f:
            f.writelines(f"{base64.b64encode(i.to_bytes(4, 'big')).decode()} {i}\n" for i in range(3_000_000))
    elif damage == "not_utf8":
        file.write_bytes(b"\xff\xfe" + file.read_bytes())
    error = run_refused("tok_eval.py", f"--data_dir={data}")
    assert words in error, error


def test_checkpoint_whose_tokenizer_is_not_one(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("ckpt.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["tokenizer"] = {"name": "evil"}
        torch.save(state, run / name)
    error = run_refused("sample.py", f"--init_from={run}", "--num_samples=1", "--max_new_tokens=2")
    assert "'evil'" in error and "tokens" in error, error


def test_tok_eval_output_that_is_a_folder(bpe_data, tmp_path):
    error = run_refused("tok_eval.py", f"--data_dir={bpe_data}", f"--output={tmp_path}")
    assert "output=" in error and "not a folder" in error, error


@pytest.mark.parametrize("case, words", [
    ("base_is_itself", "leads back to itself"),
    ("record_a_string", "LoRA record is not one train.py writes"),
    ("rank_huge", "LoRA rank 1000000000 is not between 1 and the model's width"),
])
def test_checkpoint_whose_lora_record_is_hostile(case, words, tiny_run, tmp_path):
    """The "lora" record names a base to open and sizes adapters: a base that is the run itself recursed until
    RecursionError, and "yes" was a TypeError traceback."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("ckpt.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["lora"] = {"base": str(run / "best.pt"), "base_fingerprint": "x", "rank": 4, "alpha": 8.0,
                         "dropout": 0.0, "targets": "attention"}
        if case == "record_a_string":
            state["lora"] = "yes"
        elif case == "rank_huge":
            state["lora"]["rank"] = 10 ** 9
        torch.save(state, run / name)
    error = run_refused("sample.py", f"--init_from={run}", "--num_samples=1", "--max_new_tokens=2")
    assert words in error, error


def test_sample_at_extreme_settings_samples(tiny_run):
    """sample.py --temperature=1e-300 --top_p=1e-50 was a multinomial traceback; it is greedy to float precision."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, f"{ROOT}/sample.py", f"--init_from={tiny_run}", "--num_samples=1",
                           "--max_new_tokens=3", "--temperature=1e-300", "--top_p=1e-50", "--start=ROMEO:"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_checkpoint_with_two_million_sinks(tiny_run, tmp_path):
    """attn_sinks=2000000 passed the size check, which counted none of the sinks' parameters (6 MiB for 250 MiB);
    sinks beyond the context are refused by the config, and memory_bytes counts them."""
    from model import GPTConfig
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for name in ("ckpt.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["model_config"]["attn_sinks"] = 2_000_000
        torch.save(state, run / name)
    error = run_refused("sample.py", f"--init_from={run}", "--num_samples=1", "--max_new_tokens=2")
    assert "attn_sinks (2000000) cannot exceed max_seq_len" in error, error
    small, sinks = GPTConfig(n_layers=1, d_model=64, n_heads=2, d_ff=64, vocab_size=100), 500
    big = GPTConfig(n_layers=1, d_model=64, n_heads=2, d_ff=64, vocab_size=100, attn_sinks=sinks, max_seq_len=1024)
    assert big.memory_bytes() - small.memory_bytes() >= 4 * sinks * 64  # the sinks' own parameters are counted


def test_negative_rl_top_k_is_one_line(tiny_run, tmp_path):
    """--rl_top_k=-1 reached torch.topk in the first rollout (a traceback after the model loaded)."""
    error = run_refused("train.py", "--objective=rl", "--rl_top_k=-1", f"--init_from={tiny_run}",
                        f"--out_dir={tmp_path / 'rl'}")
    assert "rl_top_k=-1 cannot be negative" in error, error
