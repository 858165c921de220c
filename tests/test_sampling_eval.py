"""Generative scoring through the batched engine and evaluate.py --num_samples: greedy replies equal model.generate's
for prompts of different lengths, long prompts are trimmed from the left as lm-eval does, and the pure functions of
tasks/sampling.py (pass@k against its formula, the majority vote and its tie rule, best-of-N's pick) on fixed
inputs; then the README's command end to end on a tiny chat run."""
import json
from math import comb

import pytest
import torch

from conftest import ROOT, run_inline
from model import GPT, GPTConfig
from nash import tasks
from nash.engine import Sampling
from nash.tasks import sampling
from nash.tasks.base import fit_prompt, generate
from nash.tokenizer import get_tokenizer


def evaluate(monkeypatch, *args):
    return run_inline(monkeypatch, "evaluate.py", "--device=cpu", "--dtype=float32", *args)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=48, dropout=0.0)).eval()


def test_greedy_replies_equal_model_generate_for_prompts_of_different_lengths(model):
    enc = get_tokenizer()
    texts = ["Hi", "Question: what is two plus two?\nAnswer:", "a b c d e f g h i j k l m n o p q r s t u v w"]
    prompts = [enc.encode_ordinary(t) for t in texts]
    assert len({len(p) for p in prompts}) == 3
    for rows in (64, 1):  # all prompts in one batch (left-padded together), then one at a time
        replies = generate(model, enc, prompts, (), 12, rows=rows)
        for prompt, [reply] in zip(prompts, replies):
            out = model.generate(torch.tensor([prompt]), 12, temperature=0.0)[0, len(prompt):].tolist()
            assert reply == enc.decode(out)
    # a stop string cuts the reply before it, as the old one-at-a-time loop did
    [[whole]] = generate(model, enc, prompts[:1], (), 12)
    stop = whole[3:6]
    [[cut]] = generate(model, enc, prompts[:1], (stop,), 12)
    assert cut == whole[:whole.index(stop)]


def test_a_long_prompt_keeps_its_last_tokens_and_room_for_the_reply(model):
    prompt = list(range(100))
    assert fit_prompt(prompt, 48, 8) == prompt[-40:]  # lm-eval: max_length - max_gen_toks
    assert fit_prompt(prompt, 48, 12) == prompt[-36:]
    assert fit_prompt(prompt, 48, 256) == prompt[-36:]  # a budget past a quarter of the context: 3/4 stay
    assert fit_prompt(prompt[:10], 48, 8) == prompt[:10]  # a prompt that fits is untouched
    enc = get_tokenizer()
    [[reply]] = generate(model, enc, [prompt], (), 8)
    out = model.generate(torch.tensor([prompt[-40:]]), 8, temperature=0.0)[0, 40:].tolist()
    assert reply == enc.decode(out)


def test_seeded_samples_are_reproducible_and_differ_between_rows(model):
    enc = get_tokenizer()
    prompts = [enc.encode_ordinary("Once upon"), enc.encode_ordinary("The cat")]
    hot = Sampling(temperature=1.0, top_k=None, seed=7)
    first = generate(model, enc, prompts, (), 6, num_samples=4, sampling=hot)
    assert generate(model, enc, prompts, (), 6, num_samples=4, sampling=hot) == first
    assert [len(r) for r in first] == [4, 4] and len(set(first[0])) > 1  # random weights: samples differ


@pytest.mark.parametrize("n", [1, 2, 5, 8, 20])
def test_pass_at_k_equals_its_formula(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert sampling.pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)
    assert sampling.pass_at_k(n, 0, 1) == 0 and sampling.pass_at_k(n, n, 1) == 1
    assert sampling.pass_at_k(200, 3, 100) == pytest.approx(1 - comb(197, 100) / comb(200, 100))  # no overflow
    with pytest.raises(ValueError):
        sampling.pass_at_k(4, 5, 1)


def test_ks_are_powers_of_two_and_n():
    assert sampling.ks(1) == [1] and sampling.ks(8) == [1, 2, 4, 8] and sampling.ks(6) == [1, 2, 4, 6]


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_reply():
    assert sampling.majority(["3", "4", "4", None, None, None]) == 1  # None never wins
    assert sampling.majority(["5", "3", "3", "5"]) == 0  # a tie: the answer given first
    assert sampling.majority(["3", "5", "5", "3"]) == 0
    assert sampling.majority([None, "7", "8", "8", "7"]) == 1
    assert sampling.majority([None, None]) is None


def test_best_of_n_picks_the_highest_score_the_first_on_ties():
    assert sampling.best_of_n([0.1, 0.9, 0.3]) == 1
    assert sampling.best_of_n([0.2, 0.7, 0.7]) == 1
    assert sampling.best_of_n([0.5]) == 0


def test_summarize_samples_by_hand():
    def reply(answer, right):
        return {"exact_match": float(right), "predicted": answer}
    samples = [  # question 0: 1 of 4 right, the vote wrong; question 1: 3 of 4 right, the vote right
        [reply("1", False), reply("1", False), reply("2", True), reply(None, False)],
        [reply("5", True), reply("6", False), reply("5", True), reply("5", True)]]
    scores = [[0.1, 0.2, 0.9, 0.3], [0.4, 0.8, 0.1, 0.1]]  # the verifier picks right, then wrong
    out = sampling.summarize_samples(samples, "exact_match", scores)
    assert out["num_samples"] == 4 and out["n"] == 2
    assert out["pass@1"] == pytest.approx((1 / 4 + 3 / 4) / 2)
    assert out["pass@2"] == pytest.approx((1 - comb(3, 2) / comb(4, 2) + 1) / 2)
    assert out["pass@4"] == 1.0 and out["pass@4_stderr"] == 0.0
    assert out["maj@4"] == 0.5 and out["best_of_4"] == 0.5
    assert out["maj@4_stderr"] == pytest.approx(0.5)  # sd of (0, 1) is 0.707, over sqrt(2)
    logprobs = [[-0.5, -0.4, -0.9, -2.0], [-0.1, -0.3, -0.2, -0.2]]  # the generator likes wrong, then right
    both = sampling.summarize_samples(samples, "exact_match", scores, logprobs)
    assert both["logprob_of_4"] == 0.5 and both["per_question"]["logprob_of_4"] == [0.0, 1.0]
    # combined ranks: q0 reply 2 (verifier top, log-prob lowest of 3) ties reply 1, the first wins; q1 reply 0
    assert both["per_question"]["combined_of_4"] == [0.0, 1.0]
    code = [[{"pass@1": 1.0, "status": "passed"}, {"pass@1": 0.0, "status": "failed"}]]  # no answers: no vote
    assert "maj@2" not in sampling.summarize_samples(code, "pass@1")


def test_readme_command_samples_and_reports_pass_at_k_and_majority(tiny_chat_run, tmp_path, monkeypatch, capsys):
    path = tmp_path / "sampled.json"
    # the README's command (evaluate section), on the tiny chat run and 4 items
    evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=arith", "--num_samples=8", "--max_gen_tokens=24",
             "--max_examples=4", f"--output={path}")
    out = capsys.readouterr().out
    r = json.loads(path.read_text())["tasks"]["arith"]
    assert 0 <= r["exact_match"] <= 1 and r["n"] == 4  # the greedy figure, under its usual key
    s = r["sampled"]
    assert s["num_samples"] == 8 and s["n"] == 4 and s["temperature"] == 0.8 and s["seed"] == 1337
    assert set(s) >= {"pass@1", "pass@2", "pass@4", "pass@8", "maj@8", "pass@1_stderr", "maj@8_stderr"}
    assert s["pass@1"] <= s["pass@2"] <= s["pass@4"] <= s["pass@8"]
    header = next(line for line in out.splitlines() if line.startswith("task") and "pass@1" in line)
    # the generator's own ranking (mean token log-prob), the free baseline of best-of-N, beside the vote
    assert header.split() == ["task", "n", "greedy", "pass@1", "pass@2", "pass@4", "pass@8", "maj@8", "logprob_of_8"]
    assert 0 <= s["logprob_of_8"] <= s["pass@8"] and len(s["per_question"]["logprob_of_8"]) == 4
    # the greedy figure is the one the plain command gives: one generation path
    plain = tmp_path / "plain.json"
    evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=arith", "--max_examples=4", "--max_gen_tokens=24",
             f"--output={plain}")
    assert json.loads(plain.read_text())["tasks"]["arith"]["exact_match"] == r["exact_match"]


@pytest.mark.parametrize("flags, message", [
    (["--tasks=hellaswag", "--num_samples=4"], "samples replies of generative tasks"),
    (["--tasks=arith", "--num_samples=4", "--temperature=0.0"], "makes every sample the greedy reply"),
    (["--tasks=arith", "--verifier=nowhere"], "give --num_samples=N too"),
    (["--tasks=arith", "--num_samples=2", "--verifier=nowhere"], "--verifier=nowhere does not exist"),
    (["--tasks=humaneval", "--num_samples=2", f"--verifier={ROOT}"], "humaneval has no chat format"),
])
def test_sampling_errors_are_one_line(monkeypatch, flags, message):
    with pytest.raises(SystemExit) as info:
        evaluate(monkeypatch, *flags)
    text = info.value.code
    assert isinstance(text, str) and text.startswith("error: ") and "\n" not in text and message in text, text


def test_best_of_n_goes_through_the_verifier(tiny_chat_run, tmp_path, monkeypatch, capsys):
    """A stand-in nash.verifier whose scores favour the longest reply, so the pick is known: best-of-N is the check
    of exactly that reply; and a ValueError while scoring is one line."""
    import sys
    import types
    calls = []

    def score_replies(model, enc, conversations, replies, ctx=None, batch_size=32):
        calls.append((conversations, replies))
        return [[float(len(r)) for r in rs] for rs in replies]  # the longest reply: deterministic, checkable
    fake = types.ModuleType("nash.verifier")
    fake.score_replies = score_replies
    fake.check_verifier = lambda model: None  # (the tiny chat run has no score head: this stand-in scores anyway)
    monkeypatch.setitem(sys.modules, "nash.verifier", fake)
    path = tmp_path / "best.json"
    evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=arith", "--num_samples=3", "--max_examples=4",
             "--max_gen_tokens=6", f"--verifier={tiny_chat_run}", f"--output={path}")
    [(conversations, replies)] = calls
    [(task, docs, shots)] = tasks.prepare(["arith"], max_examples=4)
    assert conversations == [task.chat_prompt(d, s) for d, s in zip(docs, shots)]
    s = json.loads(path.read_text())["tasks"]["arith"]["sampled"]
    picked = [max(range(3), key=lambda j: (len(r[j]), -j)) for r in replies]
    assert s["best_of_3"] == pytest.approx(sum(task.check(d, r[j])["exact_match"]
                                               for d, r, j in zip(docs, replies, picked)) / 4)
    assert "best_of_3" in capsys.readouterr().out

    def no_head(*args, **kwargs):
        raise ValueError("the model has no score head")
    fake.score_replies = no_head
    with pytest.raises(SystemExit, match="^error: --verifier=.*no score head$"):
        evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=arith", "--num_samples=2", "--max_examples=2",
                 "--max_gen_tokens=4", f"--verifier={tiny_chat_run}")
