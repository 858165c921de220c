"""DPO (nash/objectives/dpo.py, objective=dpo in train.py) and its data (data.PreferenceExamples): the loss against a computation by
hand, log 2 at the start, reward accuracy that rises on held-out pairs, TRL's metric names, one-line errors."""
import json
import math
import os
import shutil

import pytest
import torch

from model import token_loss
from nash.objectives import dpo
from nash.checkpoint import load_checkpoint
from conftest import ROOT, TINY_MODEL, TINY_TRAINING, read_metrics, run_inline, run_script
from nash.data import PreferenceExamples
from nash.tokenizer import EOT_ID, get_tokenizer

COLOURS = ["red", "blue", "green", "black", "white", "gold"]
ANIMALS = ["cat", "dog", "fox", "bird", "fish", "cow"]
THINGS = ["tree", "rock", "sea", "sky", "rain", "snow", "wind", "fire", "king", "queen", "book", "car"]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    """An easy preference set: answer with a colour (chosen), not an animal (rejected); val has other prompts and
    other colour/animal pairings than train."""
    root = tmp_path_factory.mktemp("prefs") / "colours"
    root.mkdir()
    for split, n, offset in (("train", 48, 0), ("val", 16, 5)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(n):
                thing = THINGS[(i + offset) % len(THINGS)] if split == "train" else THINGS[(i * 5 + offset) % 12]
                f.write(json.dumps({"prompt": f"Name: {thing}\n", "chosen": f" {COLOURS[(i + offset) % 6]}",
                                    "rejected": f" {ANIMALS[(i * 7 + offset) % 6]}"}) + "\n")
    return str(root)


@pytest.fixture(scope="module")
def base_run(sft_data, tmp_path_factory):
    """A tiny trained model to start from (a few SFT steps)."""
    out = tmp_path_factory.mktemp("runs") / "base"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=sft", "--dataset=echo", f"--data_dir={sft_data}",
               f"--out_dir={out}", "--max_steps=5", "--eval_interval=0")
    return str(out)


def dpo_run(out, base, data_dir, *flags, check=True):
    return run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=dpo", "--dataset=colours",
                      f"--data_dir={data_dir}", f"--init_from={base}", f"--out_dir={out}", *flags, check=check)


class FixedLM(torch.nn.Module):
    """Stands in for a GPT: returns the same logits whatever it is given (a parameter, so gradients flow)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor(logits))

    def forward(self, x, y=None, return_logits=True, reduction="mean"):  # what DPO asks of a GPT: per-target loss
        keep = y != -1
        loss = token_loss(self.logits[keep], y[keep])
        return None, loss.new_zeros(y.shape).masked_scatter(keep, loss)


def log_softmax_by_hand(row, i):
    return row[i] - math.log(sum(math.exp(v) for v in row))


def test_loss_on_a_tiny_example_matches_a_computation_by_hand():
    # 2 pairs -> 4 rows (chosen, chosen, rejected, rejected), 3 positions, vocabulary of 3; the first target of every
    # row is the prompt (-1): it must not count
    policy = [[[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 3.0]],
              [[2.0, 0.0, 0.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]],
              [[0.0, 0.0, 9.0], [0.0, 1.0, 0.0], [2.0, 0.0, 1.0]],
              [[1.0, 3.0, 0.0], [0.3, 0.2, 0.1], [0.0, 0.0, 0.0]]]
    reference = [[[1.0, 1.0, 1.0]] * 3] * 4  # uniform: log(1/3) per token
    y = torch.tensor([[-1, 0, 2], [-1, 1, -1], [-1, 1, 0], [-1, 2, 1]])
    beta = 0.5
    logp = [sum(log_softmax_by_hand(policy[r][t], y[r, t].item()) for t in range(3) if y[r, t] >= 0) for r in range(4)]
    ref = [math.log(1 / 3) * int((y[r] >= 0).sum()) for r in range(4)]
    expected_losses, margins = [], []
    for i in range(2):
        chosen, rejected = beta * (logp[i] - ref[i]), beta * (logp[2 + i] - ref[2 + i])
        margins.append(chosen - rejected)
        expected_losses.append(-math.log(1 / (1 + math.exp(-(chosen - rejected)))))
    loss, stats = dpo.batch_loss(FixedLM(policy), FixedLM(reference), torch.zeros(4, 3, dtype=torch.long), y, beta)
    assert loss.item() == pytest.approx(sum(expected_losses) / 2, rel=1e-6)
    assert stats[0].item() == sum(m > 0 for m in margins) / 2  # rewards/accuracies
    assert stats[1].item() == pytest.approx(sum(margins) / 2, rel=1e-6)  # rewards/margins
    assert stats[2].item() == pytest.approx(beta * (logp[0] - ref[0] + logp[1] - ref[1]) / 2, rel=1e-6)
    loss.backward()  # the loss reaches the policy
    # RPO: plus alpha times the chosen rows' NLL as a mean over their 3 counted tokens (not the rejected rows')
    chosen_nll = -(logp[0] + logp[1]) / 3
    assert stats[4].item() == pytest.approx((-logp[0] / 2 - logp[1] / 1) / 2, rel=1e-6)  # nll_loss: mean per answer
    rpo, _ = dpo.batch_loss(FixedLM(policy), FixedLM(reference), torch.zeros(4, 3, dtype=torch.long), y, beta, 0.7)
    assert rpo.item() == pytest.approx(sum(expected_losses) / 2 + 0.7 * chosen_nll, rel=1e-6)


def test_preference_batches_are_chosen_rows_then_rejected_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "Q: one two\n", "chosen": " two one", "rejected": " one"},
            {"prompt": "Q: a\n", "chosen": " a", "rejected": " b c d"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = PreferenceExamples(str(path), 32)
    x, y = next(data.eval_batches(2, 32))
    assert x.shape[0] == 4
    enc = get_tokenizer()
    for row, (r, key) in enumerate([(0, "chosen"), (1, "chosen"), (0, "rejected"), (1, "rejected")]):
        p, c = enc.encode_ordinary(rows[r]["prompt"]), enc.encode_ordinary(rows[r][key])
        seq = p + c + [EOT_ID]
        assert x[row, :len(seq) - 1].tolist() == seq[:-1]
        assert y[row].tolist() == [-1] * (len(p) - 1) + c + [EOT_ID] + [-1] * (x.shape[1] - len(seq) + 1)
    # train batches pair up the same way: row i and row B + i share their prompt
    x, y = data.get_batch(2, 32, seed=0, step=3)
    assert x[0, :3].tolist() == x[2, :3].tolist() and x[1, :3].tolist() == x[3, :3].tolist()


@pytest.mark.slow
def test_identical_policy_and_reference_start_at_log_2(base_run, prefs, tmp_path):
    for name, flags in (("full", []), ("lora", ["--lora_rank=4"])):
        dpo_run(tmp_path / name, base_run, prefs, "--log_interval=1", "--max_steps=2", "--eval_interval=0",
                "--dpo_beta=0.1", *flags)
        first = read_metrics(tmp_path / name)[0]
        assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-6), name
        assert first["rewards/margins"] == pytest.approx(0, abs=1e-6) and first["rewards/accuracies"] == 0
    # the LoRA run keeps no second model for the reference: only adapters are saved, and the base is named
    state = load_checkpoint(os.path.join(tmp_path / "lora", "ckpt.pt"))
    assert all("lora_" in k for k in state["model"])
    assert state["lora"]["base"] == os.path.join(base_run, "ckpt.pt")  # no eval ran there, so no best.pt


@pytest.mark.slow
def test_reward_accuracy_rises_well_above_chance_on_held_out_pairs(base_run, prefs, tmp_path):
    out = tmp_path / "dpo"
    proc = dpo_run(out, base_run, prefs, "--batch_size=8", "--max_steps=16", "--eval_interval=8", "--eval_iters=2",
                   "--learning_rate=3e-3", "--dpo_beta=0.5")
    evals = [e for e in read_metrics(out) if e["event"] == "eval"]
    for e in evals:
        assert set(e) >= {"val_loss", "val_rewards/accuracies", "val_rewards/margins", "val_rewards/chosen",
                          "val_rewards/rejected", "train_loss", "train_rewards/accuracies"}
    assert evals[-1]["val_rewards/accuracies"] >= 0.9 and evals[-1]["val_rewards/margins"] > 0
    assert evals[-1]["val_loss"] < math.log(2) - 0.1
    assert "reward acc" in proc.stdout
    train = [e for e in read_metrics(out) if e["event"] == "train"]
    assert {"rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"} <= set(train[-1])


@pytest.mark.slow
def test_reward_accuracy_on_the_demos_own_val_rises_well_above_chance(tmp_path):
    """The embedded demos as the README chains them, Base -> SFT (data/sft_demo) -> DPO (data/dpo_demo: correct
    reversals over plausible mistakes), at a tiny size, scored on the DPO demo's held-out pairs: every reward
    is 0 at the start (accuracy 0, chance 0.5), and 40 steps take it well past chance on the whole val set (0.62
    is 3.4 standard errors above 0.5 on its 200 pairs)."""
    sft, out = tmp_path / "sft", tmp_path / "dpo"
    run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=sft", "--dataset=sft_demo", f"--out_dir={sft}",
               "--max_steps=5", "--eval_interval=0")
    dpo_run(out, sft, os.path.join(ROOT, "data", "dpo_demo"), "--batch_size=16", "--max_steps=40",
            "--eval_interval=40", "--eval_iters=13", "--learning_rate=3e-3", "--dpo_beta=0.5", "--log_interval=1")
    assert read_metrics(out)[0]["rewards/accuracies"] == 0  # policy = reference: all rewards 0
    last = [e for e in read_metrics(out) if e["event"] == "eval"][-1]
    assert last["val_rewards/accuracies"] >= 0.62 and last["val_rewards/margins"] > 0


@pytest.mark.slow
def test_resume_of_full_dpo_rebuilds_the_reference(base_run, prefs, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    flags = ["--max_steps=6", "--eval_interval=3", "--checkpoint_interval=3", "--lr_decay_steps=6"]
    dpo_run(full, base_run, prefs, *flags)
    dpo_run(half, base_run, prefs, *flags[1:], "--max_steps=3")
    dpo_run(half, "resume", prefs, *flags)
    a, b = (load_checkpoint(os.path.join(d, "ckpt.pt")) for d in (full, half))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # the reference is reloaded from where the run started: if those weights changed since, the rewards would
    # silently measure against another model, so a resume refuses
    changed = tmp_path / "changed"
    shutil.copytree(base_run, changed)
    dpo_run(half, changed, prefs, *flags[1:], "--max_steps=3", "--overwrite")
    state = torch.load(changed / "ckpt.pt", weights_only=True)
    state["model"]["transformer.wte.weight"] += 0.01
    torch.save(state, changed / "ckpt.pt")
    proc = dpo_run(half, "resume", prefs, *flags, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "DPO reference" in proc.stderr and "has changed since the run started" in proc.stderr.splitlines()[-1]
    assert a["metrics"] == b["metrics"]


@pytest.mark.parametrize("line,message", [
    ('{"prompt": "a", "chosen": "b"}', r"p.jsonl:1: needs string fields \"prompt\" and \"chosen\" and \"rejected\""),
    ("not json", "p.jsonl:1: not valid JSON"),
])
def test_bad_preference_data_is_one_line(tmp_path, line, message):
    (tmp_path / "p.jsonl").write_text(line + "\n")
    with pytest.raises(SystemExit, match=message):
        PreferenceExamples(str(tmp_path / "p.jsonl"), 32)


@pytest.mark.slow
def test_dpo_setting_errors(prefs, base_run, tmp_path):
    for flags, message in ((["--init_from=scratch"], "objective=dpo starts from a trained model"),
                           (["--dpo_beta=0"], "dpo_beta=0.0 must be positive"),
                           (["--dpo_rpo_alpha=-1"], "dpo_rpo_alpha=-1.0 must be 0")):
        proc = run_script("train.py", *TINY_MODEL, "--objective=dpo", "--dataset=colours", f"--data_dir={prefs}",
                          f"--out_dir={tmp_path}", f"--init_from={base_run}", *flags, check=False)
        assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
        assert message in proc.stderr


ULTRAFEEDBACK_ROWS = [  # the shape of HuggingFaceH4/ultrafeedback_binarized: conversations in chosen/rejected
    {"prompt": "What is 2+2?", "prompt_id": "a", "score_chosen": 9.0, "score_rejected": 2.0,
     "chosen": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
     "rejected": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "5"}]},
    {"prompt": "Name a colour. ", "prompt_id": "b", "score_chosen": 8.0, "score_rejected": 1.0,
     "chosen": "Blue.", "rejected": "Seven."},  # TRL's standard (string) format works too
]


def test_prepare_brings_ultrafeedback_into_trl_format(tmp_path, monkeypatch):
    import datasets
    import prepare
    from test_prepare import FakeHub
    source = tmp_path / "uf.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in ULTRAFEEDBACK_ROWS))
    fake = FakeHub(datasets.load_dataset, serve=str(source))
    monkeypatch.setattr(datasets, "load_dataset", fake)
    folder = prepare.prepare(dataset="ultrafeedback", data_root=str(tmp_path / "data"), progress=False)
    assert [(c[0], c[2]["split"]) for c in fake.calls] == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs"),
                                                           ("HuggingFaceH4/ultrafeedback_binarized", "test_prefs")]
    expected = [{"prompt": "What is 2+2?\n\n", "chosen": "4", "rejected": "5"},
                {"prompt": "Name a colour.\n\n", "chosen": "Blue.", "rejected": "Seven."}]
    for split in ("train", "val"):
        assert [json.loads(line) for line in open(os.path.join(folder, f"{split}.jsonl"))] == expected
    assert sorted(os.listdir(tmp_path / "data")) == ["ultrafeedback"]  # no temp folder left
    assert PreferenceExamples(os.path.join(folder, "train.jsonl"), 64).num_pairs == 2  # what objective=dpo reads
    # unreachable Hub: one line, nothing written
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(datasets.load_dataset, fail_when="load"))
    with pytest.raises(SystemExit, match=r"^error: could not read hf:HuggingFaceH4/ultrafeedback_binarized"):
        prepare.prepare(dataset="ultrafeedback", name="uf2", data_root=str(tmp_path / "data"), progress=False)
    assert sorted(os.listdir(tmp_path / "data")) == ["ultrafeedback"]


@pytest.mark.slow
def test_demo_pairs_are_regenerated_byte_for_byte(tmp_path):
    """data/dpo_demo/generate.py, run on a copy of data/, rewrites exactly the committed files."""
    import shutil
    from conftest import ROOT
    for folder in ("sft_demo", "dpo_demo"):
        shutil.copytree(os.path.join(ROOT, "data", folder), tmp_path / folder)
        for f in ("train.jsonl", "val.jsonl"):
            if folder == "dpo_demo":
                os.remove(tmp_path / folder / f)
    run_script(str(tmp_path / "dpo_demo" / "generate.py"))
    sft_val = {json.loads(line)["prompt"] for line in open(os.path.join(ROOT, "data", "sft_demo", "val.jsonl"))}
    for f in ("train.jsonl", "val.jsonl"):
        committed = open(os.path.join(ROOT, "data", "dpo_demo", f), "rb").read()
        assert (tmp_path / "dpo_demo" / f).read_bytes() == committed
        pairs = [json.loads(line) for line in committed.decode().splitlines()]
        for p in pairs:
            words = p["prompt"].removeprefix("Reverse: ").split()
            assert p["chosen"].split() == words[::-1] and p["rejected"] != p["chosen"]
            assert p["prompt"] not in sft_val


@pytest.mark.slow
def test_demo_config_with_lora_under_ddp_matches_one_process_and_runs_in_float16(base_run, prefs, tmp_path):
    """config/dpo_demo.py (README) at tiny sizes with LoRA: 2 processes (gloo) = 1 process, and float16 AMP."""
    from test_train import torchrun
    common = ["config/dpo_demo.py", *TINY_MODEL, *TINY_TRAINING, "--dataset=colours", f"--data_dir={prefs}",
              f"--init_from={base_run}", "--lora_rank=4", "--max_steps=4", "--eval_interval=2", "--eval_iters=2",
              "--grad_accum_steps=2", "--device=cpu"]
    run_script("train.py", *common, f"--out_dir={tmp_path / 'one'}")
    proc = torchrun(2, *common, f"--out_dir={tmp_path / 'two'}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    a, b = load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "two" / "ckpt.pt")
    assert a["model"].keys() == b["model"].keys() and all("lora_" in k for k in a["model"])
    for name, tensor in a["model"].items():
        torch.testing.assert_close(b["model"][name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("val_loss", "val_rewards/accuracies", "val_rewards/margins"):
        assert b["metrics"][key] == pytest.approx(a["metrics"][key], abs=1e-5)
    logged = [[e for e in read_metrics(tmp_path / run) if e["event"] == "train"] for run in ("one", "two")]
    assert len(logged[0]) == len(logged[1]) > 0
    for e1, e2 in zip(*logged):  # the logged train statistics are the global batch's, not rank 0's half of it
        for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
            assert e2[key] == pytest.approx(e1[key], abs=1e-5), key
    run_script("train.py", *common, "--dtype=float16", f"--out_dir={tmp_path / 'fp16'}")
    state = load_checkpoint(tmp_path / "fp16" / "ckpt.pt")
    assert state["scaler"]["scale"] > 0 and math.isfinite(state["metrics"]["val_loss"])
