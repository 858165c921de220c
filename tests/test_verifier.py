"""The verifier (objective=verifier, nash/objectives/verifier.py; model.py's score head; nash/verifier.py): the head's shape,
gradient and checkpoint, BCE training that ranks right answers above wrong ones on held-out toys, score_replies'
rendering, the ranking metrics, train.py with config/verifier_demo.py at tiny size (the labelled set, exact resume,
one-line errors), the best-of-N measurement as the README runs it, and the export as transformers' sequence
classifiers with equal scores."""
import itertools
import json
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, error_line, read_metrics, run_inline, run_script
from model import GPT, GPTConfig
from nash.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from nash.tokenizer import get_tokenizer
from nash.verifier import auc, pad_right, render_reply, score_replies

SMALL = dict(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=16, vocab_size=50, dropout=0.0)


def tiny_verifier(seed=0, **extra):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**SMALL, score_head=True, **extra))


def test_score_head_shape_gradient_and_checkpoint(tmp_path):
    assert not GPTConfig().score_head and "score_head.weight" not in GPT(GPTConfig(**SMALL)).state_dict()
    model = tiny_verifier()
    with torch.no_grad():
        model.score_head.weight.normal_()  # (it starts at zero)
    x = torch.randint(0, 50, (3, 10))
    last = torch.tensor([9, 4, 0])
    scores = model.score(x, last)
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert torch.equal(model(x, last=last)[0], scores)  # the forward path DDP and compile go through
    # right padding after `last` changes nothing: row 1 alone, cut at its last token, scores the same
    assert torch.allclose(model.score(x[1:2, :5], torch.tensor([4])), scores[1:2], atol=1e-6)
    scores.sum().backward()
    assert model.score_head.weight.grad.abs().sum() > 0 and model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    # a checkpoint brings the head back
    path = tmp_path / "v.pt"
    save_checkpoint(str(path), {"model": model.state_dict(), "model_config": asdict(model.config)})
    back = model_from_checkpoint(load_checkpoint(str(path))).eval()
    assert back.config.score_head and torch.equal(back.score(x, last), model.eval().score(x, last))
    with pytest.raises(ValueError, match="no score head"):
        GPT(GPTConfig(**SMALL)).score(x, last)


def test_add_score_head_to_a_language_model():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SMALL))
    config = model.config
    logits = model(torch.arange(5)[None])[0]
    model.add_score_head()
    assert config.score_head and model.config is config  # in place: train.py saves the config it holds
    assert torch.equal(model(torch.arange(5)[None])[0], logits)  # the language model is untouched
    assert model.score(torch.arange(5)[None], torch.tensor([4])).item() == 0.0  # probability 1/2 to begin with


def toy_set(n, seed):
    """Rows of 4-12 random tokens; right (1) when token 7 is among them: a rule a tiny model learns in a few steps."""
    g = torch.Generator().manual_seed(seed)
    rows, labels = [], []
    for i in range(n):
        row = torch.randint(8, 50, (int(torch.randint(4, 13, (1,), generator=g)),), generator=g)
        if i % 2:
            row[int(torch.randint(0, len(row), (1,), generator=g))] = 7
        rows.append(row.tolist())
        labels.append(float(i % 2))
    return rows, torch.tensor(labels)


@pytest.mark.slow
def test_bce_training_ranks_right_answers_above_wrong_ones():
    model = tiny_verifier()
    train_rows, train_labels = toy_set(256, seed=1)
    test_rows, test_labels = toy_set(40, seed=2)
    x_test, last_test = pad_right(test_rows)
    assert auc(model.score(x_test, last_test).detach(), test_labels) == 0.5  # all tied at the start
    opt = model.configure_optimizers("adamw", 3e-3, 0.0)[0]
    x, last = pad_right(train_rows)
    for _ in range(60):
        loss = F.binary_cross_entropy_with_logits(model(x, last=last)[0], train_labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = model.score(x_test, last_test)
    assert loss.item() < 0.3
    assert auc(scores, test_labels) > 0.9  # held out: right answers outscore wrong ones
    assert scores[test_labels == 1].mean() > 0 > scores[test_labels == 0].mean()


def test_ranking_metrics_against_their_definitions():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (30,), generator=g).float()  # many ties
    labels = torch.rand(30, generator=g) < 0.4
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for (a, la), (b, lb)
             in itertools.product(zip(scores, labels), repeat=2) if la and not lb]
    assert auc(scores, labels) == pytest.approx(sum(pairs) / len(pairs))
    assert auc(scores, torch.ones(30)) is None


def test_score_replies_renders_as_training_does():
    enc = get_tokenizer()
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**SMALL, "vocab_size": 50263, "max_seq_len": 48}))
    with pytest.raises(ValueError, match="no score head"):
        score_replies(model, enc, [[{"role": "user", "content": "1+1?"}]], [["2"]])
    model.add_score_head()
    with torch.no_grad():
        model.score_head.weight.normal_()
    conversations = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "And 4 * 4?"}]]
    replies = [["5 #### 5", "2 + 3 = 6 #### 6", "I do not know"], ["16 #### 16"]]
    got = score_replies(model, enc, conversations, replies, batch_size=2)
    assert [len(g) for g in got] == [3, 1]
    model.eval()
    for conv, group, probs in zip(conversations, replies, got):
        for reply, p in zip(group, probs):
            row = render_reply(enc, conv, reply, 48)
            assert row[-1] == enc.encode("<|assistant_end|>", allowed_special="all")[0]
            alone = torch.sigmoid(model.score(torch.tensor([row]), torch.tensor([len(row) - 1]))).item()
            assert p == pytest.approx(alone, abs=1e-6)
    assert len(set(p for g in got for p in g)) == 4


# -----------------------------------------------------------------------------
# train.py with objective=verifier, at tiny size

TINY_VERIFIER = ["--batch_size=4", "--verifier_samples=2", "--verifier_questions=6", "--verifier_max_new_tokens=6",
                 "--eval_iters=1", "--log_interval=1", "--warmup_steps=1"]


def verifier_run(out, init_from, *flags, check=True):
    """The README's `python train.py config/verifier_demo.py`, at tiny size."""
    return run_script("train.py", "config/verifier_demo.py", f"--init_from={init_from}", *TINY_VERIFIER,
                      f"--out_dir={out}", *flags, check=check)


@pytest.fixture(scope="module")
def verifier_demo_run(arith_sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "verifier"
    proc = verifier_run(out, arith_sft_run, "--max_steps=2", "--eval_interval=2")
    return out, proc


def test_verifier_demo_samples_labels_and_logs(verifier_demo_run):
    out, proc = verifier_demo_run
    assert "sampling 2 answers to each of 6 train and 4 test questions of arith" in proc.stdout
    header, *records = [json.loads(line) for line in open(out / "verifier_examples.jsonl")]
    assert header["sampled_with"]["questions"] == {"train": 6, "val": 4}
    assert header["sampled_with"]["verifier_samples"] == 2 and len(header["sampled_with"]["generator"]) == 16
    assert [(r["split"], r["question"], r["sample"]) for r in records] == \
        [(split, q, j) for split, n in (("train", 6), ("val", 4)) for q in range(n) for j in range(2)]
    from nash.tasks import TASKS, load_rows
    task = TASKS["arith"]
    docs = {"train": load_rows(task, "train"), "val": load_rows(task, "test")}
    for r in records:  # each label is the task's check of its reply
        doc = docs[r["split"]][r["question"]]
        assert r["messages"] == task.chat_prompt(doc, [])
        assert r["correct"] == task.check(doc, r["reply"])["exact_match"]
    (final,) = [m for m in read_metrics(out) if m["event"] == "eval"]
    labels = torch.tensor([float(r["correct"]) for r in records if r["split"] == "val"])
    assert final["pass@1_sampled"] == pytest.approx(labels.mean().item())
    assert final["pass@n"] == pytest.approx(labels.view(4, 2).max(1).values.mean().item())
    assert 0 < final["val_loss"] < 2 and 0 <= final["best_of_n"] <= final["pass@n"] and final["n"] == 2
    state = load_checkpoint(out / "ckpt.pt")
    assert state["model_config"]["score_head"] and "score_head.weight" in state["model"]
    assert json.load(open(out / "config.json"))["score_head"] is True
    # the eval's best-of-N and within-question AUC are those of score_replies' scores (the last eval is of these weights)
    from nash import tokenizer
    from nash.tasks.sampling import best_of_n
    val = [r for r in records if r["split"] == "val"]
    scores = score_replies(model_from_checkpoint(state), tokenizer.from_spec(tokenizer.checkpoint_spec(state)),
                           [val[i]["messages"] for i in range(0, 8, 2)],
                           [[val[i]["reply"], val[i + 1]["reply"]] for i in range(0, 8, 2)])
    right = labels.view(4, 2)
    assert final["best_of_n"] == pytest.approx(sum(right[q, best_of_n(s)].item() for q, s in enumerate(scores)) / 4)
    within = [a for a in map(auc, scores, right) if a is not None]
    assert final["auc_within"] == (pytest.approx(sum(within) / len(within)) if within else None)


def test_verifier_resume_is_exact(arith_sft_run, tmp_path):
    """Stopped at step 2 and resumed: the same weights and logs as straight through, and the labelled set is read
    back, not sampled again by the (changed) model."""
    full, half = tmp_path / "full", tmp_path / "half"
    flags = ["--max_steps=4", "--lr_decay_steps=4", "--dropout=0.1", "--eval_interval=2", "--checkpoint_interval=2",
             "--learning_rate=1e-3"]
    verifier_run(full, arith_sft_run, *flags)
    verifier_run(half, arith_sft_run, *flags, "--max_steps=2")
    before = (half / "verifier_examples.jsonl").read_bytes()
    proc = verifier_run(half, "resume", *flags)
    assert "sampling" not in proc.stdout and (half / "verifier_examples.jsonl").read_bytes() == before
    assert before == (full / "verifier_examples.jsonl").read_bytes()  # seeded: the same set in both runs
    a, b = load_checkpoint(full / "ckpt.pt"), load_checkpoint(half / "ckpt.pt")
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    strip = lambda run: [{k: v for k, v in m.items() if k not in ("time", "ms_per_step", "tokens_per_sec", "mfu")}
                         for m in read_metrics(run) if m["event"] == "train" or m["step"] in (2, 4)]
    assert strip(full) == strip(half)
    # a new run there with the same generator and sampling settings reuses the set; other settings sample anew
    assert "reusing the answers" in verifier_run(full, arith_sft_run, *flags, "--overwrite", "--max_steps=1").stdout
    proc = verifier_run(full, arith_sft_run, *flags, "--overwrite", "--max_steps=1", "--verifier_temperature=0.5")
    assert "sampling 2 answers" in proc.stdout


def test_verifier_bad_input_is_one_error_line(arith_sft_run, tiny_sft_run, tmp_path):
    out = tmp_path / "bad"
    assert "not a chat model" in error_line(verifier_run(out, tiny_sft_run, check=False))
    assert "starts from a trained model" in error_line(verifier_run(out, "scratch", check=False))
    line = error_line(verifier_run(out, arith_sft_run, "--reward_task=hellaswag", check=False))
    assert "no answer check" in line and "verifier" in line
    assert "verifier_samples=0" in error_line(verifier_run(out, arith_sft_run, "--verifier_samples=0", check=False))
    assert "trains every weight" in error_line(verifier_run(out, arith_sft_run, "--lora_rank=4", check=False))
    assert not out.exists()  # nothing half-written


def test_best_of_n_as_the_readme_runs_it(arith_sft_run, verifier_demo_run, tmp_path):
    """`python evaluate.py --out_dir=out-arith-sft --tasks=arith --num_samples=8 --verifier=out-verifier-demo`, at
    tiny size, with a real verifier (tests/test_sampling_eval.py checks the pick itself); a run without a score head is
    one error line."""
    out, _ = verifier_demo_run
    path = tmp_path / "bon.json"
    proc = subprocess.run([sys.executable, "evaluate.py", f"--out_dir={arith_sft_run}", "--tasks=arith",
                           "--num_samples=3", "--max_examples=4", "--max_gen_tokens=6", f"--verifier={out}",
                           f"--output={path}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sampled = json.loads(path.read_text())["tasks"]["arith"]["sampled"]
    assert 0 <= sampled["best_of_3"] <= sampled["pass@3"] and "best_of_3" in proc.stdout
    proc = subprocess.run([sys.executable, "evaluate.py", f"--out_dir={arith_sft_run}", "--tasks=arith",
                           "--num_samples=2", "--max_examples=2", "--max_gen_tokens=4", f"--verifier={arith_sft_run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and "no score head" in proc.stderr
    assert "Traceback" not in proc.stderr


# -----------------------------------------------------------------------------
# export: transformers' sequence classifiers score what we score

transformers = pytest.importorskip("transformers")
LAYOUTS = {"gpt2": (dict(), "GPT2ForSequenceClassification"),
           "gpt2_untied_nobias": (dict(bias=False, tie_weights=False), "GPT2ForSequenceClassification"),
           "llama": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=1, bias=False, tie_weights=False),
                     "LlamaForSequenceClassification"),
           "qwen3": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=False),
                     "Qwen3ForSequenceClassification")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_export_as_a_sequence_classifier_gives_our_scores(name, tmp_path):
    from nash import hf
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=32, vocab_size=50263, dropout=0.0,
                          score_head=True, **LAYOUTS[name][0]))
    with torch.no_grad():  # far from init, so a wrong weight shows
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.normal_(1.0, 0.2)
    model.eval()
    out = tmp_path / "export"
    hf.export_model(model, str(out))
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert type(theirs).__name__ == LAYOUTS[name][1] and theirs.config.num_labels == 1
    assert theirs.config.pad_token_id == 50256
    # right-padded rows as we render them: <|endoftext|> first, then ids that are never the pad
    rows = [[50256] + torch.randint(0, 50256, (n,)).tolist() + [50260] for n in (30, 7, 15)]
    x, last = pad_right(rows)
    x[x == 0] = 50256  # transformers finds each row's end by its pad token
    with torch.no_grad():
        ours, their = model.score(x, last), theirs(x).logits[:, 0]
    assert (ours - their).abs().max().item() <= 1e-4, (ours, their)
    with pytest.raises(ValueError, match="sequence classifier"):
        hf.load_pretrained(str(out))


def test_export_py_writes_a_trained_verifier(verifier_demo_run, tmp_path, monkeypatch):
    out, _ = verifier_demo_run
    folder = tmp_path / "exported"
    run_inline(monkeypatch, "export.py", f"--out_dir={out}", f"--output={folder}")
    assert json.load(open(folder / "config.json"))["architectures"] == ["GPT2ForSequenceClassification"]
    card = (folder / "README.md").read_text()
    assert "verifier" in card and "AutoModelForSequenceClassification" in card and "best-of-2" in card
