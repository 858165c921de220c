"""objective=rl (nash/objectives/rl.py): the policy-gradient math on hand-made rollouts (gradient sign, zero-std groups,
the prompt masked, the clip, the KL), the embedded arithmetic task and its checker, and train.py with objective=rl:
one-line errors, exact resume, the demo commands at tiny size."""
import json
import os

import pytest
import torch

from model import GPT, GPTConfig
from nash.objectives.rl import STATS, group_advantages, policy_loss, rollout_batch, token_logps
from nash.tasks import TASKS, load_rows


def tiny_policy(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, max_seq_len=16, vocab_size=50, dropout=0.0))


PROMPTS = [[1, 2, 3], [4, 5]]
REPLIES = [[[7, 8, 9], [10]], [[11, 12], [13, 14, 15, 16]]]  # two answers to each question


def pg_step(model, rewards, lr=0.1, **loss_args):
    """One SGD step of the RL loss on the hand-made rollouts; returns the loss and the stats."""
    x, y = rollout_batch(PROMPTS, REPLIES)
    advantages, _ = group_advantages(torch.tensor(rewards))
    logps = token_logps(model, x, y)
    loss, kl, clip_ratio = policy_loss(logps, logps.detach(), advantages.flatten(), y != -1, **loss_args)
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    return loss, kl, clip_ratio


def sequence_logps(model):
    x, y = rollout_batch(PROMPTS, REPLIES)
    with torch.no_grad():
        return token_logps(model, x, y).sum(-1)


def test_rollout_batch_trains_on_the_sampled_tokens_only():
    x, y = rollout_batch(PROMPTS, REPLIES)
    assert x.shape == y.shape == (4, 3 + 3 - 1)  # the longest prompt + reply, less one
    for row, (prompt, reply) in enumerate((p, r) for p, group in zip(PROMPTS, REPLIES) for r in group):
        seq = prompt + reply
        assert x[row, :len(seq) - 1].tolist() == seq[:-1]
        # the prompt's positions and the padding predict nothing; each reply token is the target once
        assert y[row].tolist() == [-1] * (len(prompt) - 1) + reply + [-1] * (x.size(1) - len(seq) + 1)
    assert (y != -1).sum() == sum(len(r) for group in REPLIES for r in group)


def test_prompt_tokens_get_no_gradient():
    """Every position scored (the prompt's too, as if it had been sampled): only the sampled tokens get a gradient,
    -A / (number of sampled tokens) each, the policy gradient of the token-level mean."""
    model = tiny_policy()
    x, y = rollout_batch(PROMPTS, REPLIES)
    scored = torch.where(y == -1, torch.roll(x, -1, dims=1), y)  # the prompt's and padding's next tokens as targets
    logps = token_logps(model, x, scored).detach().requires_grad_()
    assert (logps != 0).all()
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, _, _ = policy_loss(logps, logps.detach(), advantages, y != -1)
    loss.backward()
    sampled = y != -1
    assert (logps.grad[~sampled] == 0).all()
    expected = (-advantages[:, None] / sampled.sum()).expand_as(logps)
    assert torch.allclose(logps.grad[sampled], expected[sampled])
    # and through the model: y = -1 gives those positions log-prob 0, outside the graph
    assert (token_logps(model, x, y)[~sampled] == 0).all()


def test_group_advantages():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages, std = group_advantages(rewards)
    assert advantages.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]
    assert torch.allclose(std, torch.tensor([rewards[0].std().item(), 0.0]))
    scaled, _ = group_advantages(rewards, std_normalize=True)
    assert torch.allclose(scaled[0], advantages[0] / (rewards[0].std() + 1e-4))
    assert (scaled[1] == 0).all()


def test_positive_advantage_gains_log_probability():
    model = tiny_policy()
    before = sequence_logps(model)
    pg_step(model, [[1.0, 0.0], [0.0, 1.0]])  # the first answer right to question 0, the second to question 1
    after = sequence_logps(model)
    assert after[0] > before[0] and after[3] > before[3]  # rewarded answers: more likely
    assert after[1] < before[1] and after[2] < before[2]  # the others: less


def test_zero_std_groups_contribute_no_gradient():
    model = tiny_policy()
    pg_step(model, [[1.0, 1.0], [0.0, 0.0]], lr=0.0)  # every answer as good as its group's others
    assert all(p.grad is None or (p.grad == 0).all() for p in model.parameters())
    # one informative group: gradients flow, and they are the same as without the uninformative group's advantage
    pg_step(model, [[1.0, 0.0], [1.0, 1.0]], lr=0.0)
    mixed = [p.grad.clone() for p in model.parameters()]
    pg_step(model, [[1.0, 0.0], [0.0, 0.0]], lr=0.0)
    assert any((g != 0).any() for g in mixed)
    assert all(torch.allclose(a, p.grad) for a, p in zip(mixed, model.parameters()))


def test_clip_stops_the_gradient_past_epsilon():
    logps = torch.zeros(2, 3, requires_grad=True)
    old = torch.log(torch.tensor([[1 / 1.5] * 3, [1 / 0.5] * 3]))  # ratio 1.5 on row 0, 0.5 on row 1
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss, _, clip_ratio = policy_loss(logps, old, torch.tensor([1.0, 1.0]), mask, clip=0.2)
    loss.backward()
    # row 0 is past 1 + 0.2 with a positive advantage: clipped, no gradient; row 1 (ratio below 1) still pushes up
    assert (logps.grad[0] == 0).all() and (logps.grad[1] < 0).all()
    assert clip_ratio.item() == pytest.approx(0.5)


def test_kl_penalty_to_the_reference():
    model = tiny_policy()
    x, y = rollout_batch(PROMPTS, REPLIES)
    logps = token_logps(model, x, y)
    zero = torch.zeros(4)
    _, kl_same, _ = policy_loss(logps, logps.detach(), zero, y != -1, ref_logps=logps.detach(), kl_beta=0.1)
    other = token_logps(tiny_policy(seed=1), x, y).detach()
    loss, kl, _ = policy_loss(logps, logps.detach(), zero, y != -1, ref_logps=other, kl_beta=0.1)
    delta = other - logps.detach()
    k3 = (torch.exp(delta) - delta - 1)[y != -1].mean()
    assert kl_same.item() == pytest.approx(0.0, abs=1e-7)
    assert kl.item() == pytest.approx(k3.item(), rel=1e-5) and kl > 0
    assert loss.item() == pytest.approx(0.1 * k3.item(), rel=1e-5)  # advantages 0: the loss is the penalty alone


# -----------------------------------------------------------------------------
# the embedded arithmetic task

@pytest.mark.slow
def test_arith_data_is_the_generator_output(tmp_path):
    """data/arith is exactly what its seeded script writes, and no test or held-out question is in train or the chat
    data (nor in each other)."""
    import runpy
    import shutil
    from conftest import ROOT
    copy = tmp_path / "arith"
    shutil.copytree(os.path.join(ROOT, "data", "arith"), copy)
    for name in ("train.jsonl", "test.jsonl", "heldout.jsonl", "chat/train.jsonl", "chat/val.jsonl"):
        os.remove(copy / name)
    runpy.run_path(str(copy / "generate.py"), run_name="__main__")
    for name in ("train.jsonl", "test.jsonl", "heldout.jsonl", "chat/train.jsonl", "chat/val.jsonl"):
        assert (copy / name).read_bytes() == open(os.path.join(ROOT, "data", "arith", name), "rb").read(), name
    test = {json.loads(line)["question"] for line in open(copy / "test.jsonl")}
    chat = {json.loads(line)["messages"][0]["content"] for f in ("chat/train.jsonl", "chat/val.jsonl")
            for line in open(copy / f)}
    train = {json.loads(line)["question"] for line in open(copy / "train.jsonl")}
    heldout = {json.loads(line)["question"] for line in open(copy / "heldout.jsonl")}
    assert len(test) == 200 and not test & train and not test & chat
    assert len(heldout) == 1000 and not heldout & (train | chat | test)


def test_arith_task_checks_answers_as_gsm8k():
    task = TASKS["arith"]
    docs = load_rows(task, "test")
    assert len(docs) == 200 and len(load_rows(task, "train")) == 2000
    heldout = TASKS["arith_heldout"]  # the same task on the 1,000 held-out problems
    assert len(load_rows(heldout, heldout.split)) == 1000 and heldout.check is task.check
    doc = docs[0]
    worked = doc["target"]  # the reference's own working ends in "#### N"
    assert task.check(doc, worked)["exact_match"] == 1.0
    assert task.check(doc, worked.rsplit("#### ", 1)[0] + f"#### {int(doc['answer']) + 1}")["exact_match"] == 0.0
    assert task.check(doc, "no number here")["exact_match"] == 0.0
    assert task.chat_prompt(doc, []) == [{"role": "user", "content": doc["question"]}]


# -----------------------------------------------------------------------------
# train.py with objective=rl, at tiny sizes

from conftest import error_line, read_metrics, run_script  # noqa: E402
from nash.checkpoint import load_checkpoint  # noqa: E402

TINY_RL = ["--batch_size=2", "--rl_samples=3", "--rl_max_new_tokens=6", "--eval_iters=1", "--log_interval=1"]


def rl_run(out, init_from, *flags, check=True):
    """The README's `python train.py config/rl_demo.py`, at tiny size."""
    return run_script("train.py", "config/rl_demo.py", f"--init_from={init_from}", *TINY_RL, f"--out_dir={out}",
                      *flags, check=check)


def test_rl_demo_logs_trl_names_and_pass_at_1(arith_sft_run, tmp_path):
    out = tmp_path / "rl"
    proc = rl_run(out, arith_sft_run, "--max_steps=2", "--eval_interval=2")
    assert "reward" in proc.stdout and "pass@1" in proc.stdout
    metrics = read_metrics(out)
    train = [m for m in metrics if m["event"] == "train"]
    assert [m["step"] for m in train] == [1, 2]
    for m in train:
        assert set(("reward", "reward_std", "frac_reward_zero_std", "completion_length", "kl", "clip_ratio")) <= set(m)
        assert 0 <= m["reward"] <= 1 and 0 <= m["frac_reward_zero_std"] <= 1
        assert 1 <= m["completion_length"] <= 6 + 1  # the sampled tokens and the stop token, at most
    (final,) = [m for m in metrics if m["event"] == "eval"]
    assert final["questions"] == 2 and final["val_loss"] == pytest.approx(1 - final["pass@1"])
    state = load_checkpoint(out / "ckpt.pt")
    assert state["settings"]["objective"] == "rl" and state["step"] == 2
    # the README's pass@1 of the run (a LoRA run: config/rl_demo.py trains adapters), as written but on 4 problems
    proc = run_script("evaluate.py", f"--out_dir={out}", "--tasks=arith", "--max_examples=4")
    assert "arith (chat)" in proc.stdout and "exact_match" in proc.stdout
    proc = run_script("evaluate.py", f"--out_dir={out}", "--tasks=arith_heldout", "--max_examples=4")
    assert "arith_heldout (chat)" in proc.stdout
    # the README's curve of the run, as written (there on out-rl-demo)
    png = tmp_path / "rl-demo.png"
    proc = run_script("compare.py", out, "--metrics=pass@1,train_pass@1,reward", f"--output={png}")
    assert png.stat().st_size > 0 and "pass@1" in proc.stdout and "reward" in proc.stdout


@pytest.mark.parametrize("updates", [1, 2])
def test_rl_resume_is_exact(arith_sft_run, tmp_path, updates):
    """Stopped and resumed (rl_updates=1: at step 2; rl_updates=2: at step 3, inside a batch of rollouts, which the
    checkpoint keeps): the same rollouts, rewards and weights as a run straight through, KL reference and dropout
    included."""
    full, half = tmp_path / "full", tmp_path / "half"
    stop = 3 if updates == 2 else 2
    flags = ["--max_steps=4", "--lr_decay_steps=4", "--warmup_steps=1", "--dropout=0.1", "--eval_interval=2",
             f"--checkpoint_interval={stop}", f"--rl_updates={updates}", "--rl_kl_beta=0.05", "--learning_rate=1e-3"]
    rl_run(full, arith_sft_run, *flags)
    rl_run(half, arith_sft_run, *flags, f"--max_steps={stop}")
    assert load_checkpoint(half / "ckpt.pt")["step"] == stop
    rl_run(half, "resume", *flags)
    a, b = load_checkpoint(full / "ckpt.pt"), load_checkpoint(half / "ckpt.pt")
    assert a["step"] == b["step"] == 4
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    kept = ("step", "loss", "val_loss", "pass@1", "train_pass@1") + STATS
    logged = lambda run: [{k: v for k, v in m.items() if k in kept} for m in read_metrics(run)
                          if m["event"] == "train" or m["step"] in (2, 4)]
    assert logged(full) == logged(half)
    assert any(m.get("kl", 0) > 0 for m in logged(full))  # the KL to the reference was measured


def test_rl_lora(arith_sft_run, tmp_path):
    out = tmp_path / "lora"
    rl_run(out, arith_sft_run, "--max_steps=1", "--eval_interval=0", "--lora_rank=4", "--rl_kl_beta=0.1",
           "--rl_temperature=0.7", "--rl_skip_zero_std=True")  # sampled and scored at 0.7, flat groups dropped
    assert load_checkpoint(out / "ckpt.pt")["lora"]["rank"] == 4


def test_rl_bad_input_is_one_error_line(arith_sft_run, tiny_sft_run, tmp_path):
    out = tmp_path / "bad"
    assert "rl_samples=1" in error_line(rl_run(out, arith_sft_run, "--rl_samples=1", check=False))
    assert "above 0" in error_line(rl_run(out, arith_sft_run, "--rl_temperature=0", check=False))
    assert "reward_metric='final'" in error_line(rl_run(out, arith_sft_run, "--reward_metric=final", check=False))
    assert "starts from a trained model" in error_line(rl_run(out, "scratch", check=False))
    assert "not a chat model" in error_line(rl_run(out, tiny_sft_run, check=False))
    line = error_line(rl_run(out, arith_sft_run, "--max_seq_len=24", check=False))
    assert "no room for an answer" in line and "max_seq_len" in line
    assert "no answer check" in error_line(rl_run(out, arith_sft_run, "--reward_task=hellaswag", check=False))
    assert not out.exists()  # nothing half-written


# -----------------------------------------------------------------------------
# RL and DPO score the completion rows only: never the whole (N, T, V) logits

class LargestTensor:
    """Records the largest tensor any torch op makes while it is active (forward and backward)."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(t, torch.Tensor):
                        outer.largest = max(outer.largest, t.numel())
                return out

        self.largest, self.mode = 0, Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def long_prompt_rollouts():
    """8 rollouts whose prompts (30 tokens) dwarf their 2-token replies: what a full-logits pass would waste."""
    prompts = [list(range(1, 31)), list(range(2, 32))]
    replies = [[[40, 41]] * 4, [[42, 43]] * 4]
    return rollout_batch(prompts, replies)


def test_rl_and_dpo_losses_never_build_the_full_logits():
    from nash.objectives.dpo import sequence_logps
    model = GPT(GPTConfig(n_layers=1, n_heads=2, d_model=16, d_ff=32, max_seq_len=32, vocab_size=2000, dropout=0.0))
    x, y = long_prompt_rollouts()
    N, T, V = *x.shape, model.config.vocab_size
    for score in (token_logps, sequence_logps):
        with LargestTensor() as seen:
            logps = score(model, x, y)
            logps.sum().backward()
        assert seen.largest < N * T * V // 4, (score.__name__, seen.largest, N * T * V)
        # and it is the same number the full logits give
        full = torch.log_softmax(model(x)[0].float(), -1).gather(-1, y.clamp(min=0)[..., None])[..., 0]
        full = (full * (y != -1)).detach()
        assert torch.allclose(logps.detach(), full if score is token_logps else full.sum(-1), atol=1e-5)
    # and DPO's whole loss, the RPO term included (the rows as 4 chosen then 4 rejected; the model its own reference)
    from nash.objectives.dpo import batch_loss
    with LargestTensor() as seen:
        loss, _ = batch_loss(model, model, x, y, beta=0.1, rpo_alpha=1.0)
        loss.backward()
    assert seen.largest < N * T * V // 4, ("dpo batch_loss", seen.largest, N * T * V)


def test_rl_scores_rollouts_at_their_sampling_temperature():
    # rollouts sampled at T are scored under log_softmax(logits / T), through the loss path (no full logits), and
    # the gradient flows; T=1 is the plain distribution
    model = tiny_policy()
    x, y = rollout_batch(PROMPTS, REPLIES)
    logits = model(x)[0].float().detach()
    for T in (0.6, 1.0, 1.7):
        want = torch.log_softmax(logits / T, -1).gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != -1)
        got = token_logps(model, x, y, temperature=T)
        assert torch.allclose(got.detach(), want, atol=1e-5), T
    assert not torch.allclose(token_logps(model, x, y, 0.6), token_logps(model, x, y, 1.0))
    token_logps(model, x, y, 0.6).sum().backward()
    assert model.lm_head.weight.grad is not None


def test_arith_reward_needs_every_line_of_the_working_true():
    task = TASKS["arith"]
    doc = task.doc({"question": "Ann has 14 pens. Ann loses 13. Then Ann finds 1 more. How many pens does Ann have?",
                    "answer": "14 - 13 = 1\n1 + 1 = 2\n#### 2"})
    assert task.check(doc, "14 - 13 = 1\n1 + 1 = 2\n#### 2")["correct"] == 1.0
    false_line = "14 - 13 = 2\n2 - 1 = 2\n#### 2"  # the right final number, reached through 14 - 13 = 2
    assert task.check(doc, false_line) == {"correct": 0.0, "exact_match": 1.0, "predicted": "2"}
    assert task.check(doc, "14 - 13 = 1\n1 + 1 =\n#### 2")["correct"] == 0.0  # a line that is no equation
    assert task.check(doc, "14 - 13 = 1\n1 + 1 = 2\n#### 3")["correct"] == 0.0  # true working, wrong answer
    assert task.check(doc, "14 - 13 = 1\n1 + 0 = 1\n#### 2")["correct"] == 0.0  # true lines that do not reach it
    assert task.metrics[0] == "correct"  # the reward, unless reward_metric=exact_match
