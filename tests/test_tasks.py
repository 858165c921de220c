"""Downstream benchmarks (tasks/) through evaluate.py and train.py as a user runs them, on the fixtures in
tests/task_data (each in its hub dataset's row schema): the table and JSON, core, batched scoring against a
computation by hand, GSM8K's answer extraction, the one-line errors, the training hook against evaluate.py, and the
report card. Parity with lm-evaluation-harness itself is in test_lm_eval_parity.py, HumanEval's sandbox in
test_execution.py."""
import json
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from nash import tasks
from nash.checkpoint import load_model
from conftest import ROOT, TINY_MODEL, read_metrics, run_inline, run_script
from nash.tasks import gsm8k
from nash.tokenizer import EOT_ID, get_tokenizer, render_conversation, special_ids

FIXTURES = os.path.join(ROOT, "tests", "task_data")


def evaluate(monkeypatch, *args):
    return run_inline(monkeypatch, "evaluate.py", "--device=cpu", "--dtype=float32", *args)


def test_readme_command_prints_the_table_and_writes_json(tiny_run, tmp_path, monkeypatch, capsys):
    path = tmp_path / "tasks.json"
    evaluate(monkeypatch, f"--out_dir={tiny_run}", "--tasks=hellaswag,arc_easy,gsm8k", "--max_examples=4",
             f"--task_data={FIXTURES}", "--max_gen_tokens=8", f"--output={path}")
    out = capsys.readouterr().out
    results = json.loads(path.read_text())
    assert set(results["tasks"]) == {"hellaswag", "arc_easy", "gsm8k"} and "loss" not in results
    header = next(line for line in out.splitlines() if line.startswith("task"))
    assert header.split() == ["task", "metric", "value", "stderr", "n"]
    for name, metrics in (("hellaswag", ("acc", "acc_norm")), ("arc_easy", ("acc", "acc_norm")),
                          ("gsm8k", ("exact_match",))):
        r = results["tasks"][name]
        assert r["n"] == (3 if name == "gsm8k" else 4) and r["num_fewshot"] == 0  # gsm8k's fixture has 3
        assert r["format"] == "plain"  # a pretrained model is asked in plain text
        for m in metrics:
            assert 0 <= r[m] <= 1 and any(line.split()[:3] == [name, m, f"{r[m]:.4f}"] for line in out.splitlines())
    centered = [(results["tasks"][t]["acc"] - results["tasks"][t]["chance"]) / (1 - results["tasks"][t]["chance"])
                for t in ("hellaswag", "arc_easy")]
    assert results["tasks"]["hellaswag"]["chance"] == 0.25
    assert results["core"] == pytest.approx(sum(centered) / 2)


def test_scores_equal_a_computation_by_hand_whatever_the_batch(tiny_run):
    model, _, _ = load_model("", tiny_run, "best", "cpu")
    enc = get_tokenizer()
    prepared = tasks.prepare(["hellaswag", "mmlu"], FIXTURES, num_fewshot=1)
    one = tasks.run(prepared, model, enc, batch_size=1, progress=False, keep_items=True)
    many = tasks.run(prepared, model, enc, batch_size=7, progress=False, keep_items=True)
    for name, (task, docs, shots) in zip(("hellaswag", "mmlu"), prepared):
        for doc, doc_shots, a, b in zip(docs, shots, one[name]["items"], many[name]["items"]):
            assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-5)
            assert len(doc_shots) == 1
            context = doc.get("description", "") + f"{doc_shots[0]['text']} " \
                f"{doc_shots[0]['choices'][doc_shots[0]['gold']]}\n\n" + doc["text"]
            by_hand = []
            for choice in doc["choices"]:  # one unpadded forward per continuation, log-softmax in float64
                ids = enc.encode_ordinary(context + " " + choice)
                n_ctx = len(enc.encode_ordinary(context))
                ids = ids[-(model.config.max_seq_len + 1):]  # the tiny model's context is 32
                with torch.no_grad():
                    logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0].double(), -1)
                n_cont = len(enc.encode_ordinary(context + " " + choice)) - n_ctx
                by_hand.append(sum(logp[p, ids[p + 1]].item() for p in range(len(ids) - 1 - n_cont, len(ids) - 1)))
            assert a["loglikelihoods"] == pytest.approx(by_hand, abs=1e-4)
            best = max(range(len(by_hand)), key=lambda j: by_hand[j])
            best_norm = max(range(len(by_hand)), key=lambda j: by_hand[j] / len(doc["choices"][j]))
            assert a["acc"] == float(best == doc["gold"]) and a["acc_norm"] == float(best_norm == doc["gold"])
        assert one[name]["acc"] == many[name]["acc"]


def test_gsm8k_reads_the_reference_after_hashes_and_the_models_last_number():  # lm-eval flexible-extract
    doc = gsm8k.doc({"question": "How many?", "answer": "He has 2 + 1,000 = <<2+1000=1002>>1,002.\n#### 1,002"})
    assert doc["answer"] == "1002" and doc["text"] == "Question: How many?\nAnswer:"
    assert gsm8k.check(doc, " 2 + 1000 makes $1,002.")["exact_match"] == 1.0
    assert gsm8k.check(doc, " 1002 is wrong, it is 1003")["exact_match"] == 0.0
    assert gsm8k.check(doc, " no idea")["exact_match"] == 0.0
    assert gsm8k.check(doc, " 1002.0")["exact_match"] == 0.0  # compared as text, as lm-eval does
    assert gsm8k.check(doc, " -1002")["exact_match"] == 0.0 and gsm8k.last_number("so 3.5.") == "3.5"


def test_gsm8k_asks_a_chat_model_through_its_chat_format(tiny_chat_run, tmp_path, monkeypatch, capsys):
    """An objective=chat run: the shots become user/assistant turns, the question the last user turn, and the prompt
    ends in <|assistant_start|>, as chat.py asks; the JSON and the table say so."""
    prompts, real_generate = [], tasks.base.generate
    monkeypatch.setattr(tasks.base, "generate", lambda model, enc, batch, *a, **kw: prompts.extend(batch)
                        or real_generate(model, enc, batch, *a, **kw))
    path = tmp_path / "gsm8k.json"
    evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=gsm8k", "--num_fewshot=1", f"--task_data={FIXTURES}",
             "--max_gen_tokens=4", f"--output={path}")
    r = json.loads(path.read_text())["tasks"]["gsm8k"]
    assert r["format"] == "chat" and r["n"] == 3 and 0 <= r["exact_match"] <= 1
    assert any(line.split()[:3] == ["gsm8k", "(chat)", "exact_match"] for line in capsys.readouterr().out.splitlines())
    [(task, docs, shots)] = tasks.prepare(["gsm8k"], FIXTURES, num_fewshot=1)
    enc = get_tokenizer()
    for prompt, doc, [shot] in zip(prompts, docs, shots):
        assert prompt == render_conversation(enc, [
            {"role": "user", "content": shot["question"]}, {"role": "assistant", "content": shot["target"]},
            {"role": "user", "content": doc["question"]}], for_reply=True)[0]
        assert prompt[-1] == special_ids(enc)["<|assistant_start|>"]


def test_a_chat_model_answers_multiple_choice_by_letter_and_gets_a_chatcore(tiny_chat_run, tmp_path, monkeypatch):
    """ARC and MMLU asked in chat format: the question and its lettered choices in a user turn, the answer the
    choice letter most likely as the reply's first token (nanochat's chat_eval), checked by one forward by hand;
    chatcore is the mean of centered accuracy over the chat-format tasks, GSM8K's exact match counted as it is."""
    path = tmp_path / "chat.json"
    evaluate(monkeypatch, f"--out_dir={tiny_chat_run}", "--tasks=arc_easy,mmlu,gsm8k,hellaswag",
             f"--task_data={FIXTURES}", "--max_gen_tokens=4", "--max_examples=4", f"--output={path}")
    results = json.loads(path.read_text())
    r = results["tasks"]
    assert [r[t]["format"] for t in ("arc_easy", "mmlu", "gsm8k", "hellaswag")] == ["chat", "chat", "chat", "plain"]
    centered = [(r[t]["acc"] - r[t]["chance"]) / (1 - r[t]["chance"]) for t in ("arc_easy", "mmlu")]
    assert results["chatcore"] == pytest.approx((sum(centered) + r["gsm8k"]["exact_match"]) / 3)
    assert results["core"] == pytest.approx((sum(centered) + (r["hellaswag"]["acc"] - 0.25) / 0.75) / 3)

    model, _, _ = load_model("", tiny_chat_run, "best", "cpu")
    enc = get_tokenizer()
    [(task, docs, shots)] = tasks.prepare(["arc_easy"], FIXTURES, max_examples=4)
    items = tasks.run([(task, docs, shots)], model, enc, progress=False, keep_items=True, chat=True)["arc_easy"]["items"]
    for doc, item in zip(docs, items):
        prompt = render_conversation(enc, task.chat_prompt(doc, []), for_reply=True)[0]
        letters = "ABCDE"[:len(doc["choices"])]
        assert f"\n{letters[-1]}. {doc['choices'][-1]}" in enc.decode(prompt)  # the choices are in the user turn
        with torch.no_grad():
            logits = model(torch.tensor([prompt[-model.config.max_seq_len:]]))[0][0, -1]
        by_hand = [logits[enc.encode_ordinary(letter)[0]].item() for letter in letters]
        assert item["acc"] == float(max(range(len(letters)), key=by_hand.__getitem__) == doc["gold"])


class ScriptedModel(torch.nn.Module):
    """A model whose reply to any prompt is a fixed token sequence, then end-of-text, through the engine's interface
    (next_logits on a KV cache): to see where a chat reply ends and how it is scored."""

    def __init__(self, tokens):
        super().__init__()
        self.weight, self.tokens = torch.nn.Parameter(torch.zeros(1)), tokens + [EOT_ID]
        self.config = SimpleNamespace(n_layers=1, max_seq_len=1024, attn_sinks=0, vocab_size=50304)

    def next_logits(self, idx, cache):
        B, T = idx.shape
        self.step = 0 if cache.pos == 0 else self.step + 1  # a fresh cache: a new prompt's prefill
        cache.update(0, torch.zeros(B, 1, T, 1), torch.zeros(B, 1, T, 1))  # the engine stacks and selects rows
        cache.advance(T)
        logits = torch.zeros(B, 50304)
        logits[:, self.tokens[self.step]] = 1.0
        return logits


def test_a_chat_reply_ends_at_assistant_end_and_is_scored_by_its_last_number():
    enc = get_tokenizer()
    [(task, docs, shots)] = tasks.prepare(["gsm8k"], FIXTURES, max_examples=1)
    answer = docs[0]["answer"]
    wrong = str(int(answer) + 1)
    end = special_ids(enc)["<|assistant_end|>"]
    model = ScriptedModel(enc.encode_ordinary(f"It is {answer}.") + [end] + enc.encode_ordinary(f" Or {wrong}."))
    [item] = tasks.base.score_generate(task, model, enc, docs, shots, 64, None, False, chat=True)
    assert item["completion"] == f"It is {answer}." and item["exact_match"] == 1.0
    # in plain text the chat tokens mean nothing special: only end-of-text ends it, and the last number is wrong
    [item] = tasks.base.score_generate(task, model, enc, docs, shots, 64, None, False)
    assert item["exact_match"] == 0.0 and item["completion"].endswith(f"Or {wrong}.")


def test_errors_are_one_line(tiny_run, tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="unknown task.*nope.*the tasks are hellaswag"):
        evaluate(monkeypatch, f"--out_dir={tiny_run}", "--tasks=hellaswag,nope", f"--task_data={FIXTURES}")
    with pytest.raises(SystemExit, match="hellaswag.train.jsonl does not exist.*Rowan/hellaswag"):
        shutil.copy(os.path.join(FIXTURES, "hellaswag.jsonl"), tmp_path)
        evaluate(monkeypatch, f"--out_dir={tiny_run}", "--tasks=hellaswag", "--num_fewshot=1",
                 f"--task_data={tmp_path}")
    (tmp_path / "sst2.jsonl").write_text('{"sentence": "fine"}\n')  # no label
    with pytest.raises(SystemExit, match=r"row 1 of sst2 \(validation\) does not have the schema of stanfordnlp/sst2"):
        evaluate(monkeypatch, f"--out_dir={tiny_run}", "--tasks=sst2", f"--task_data={tmp_path}")
    # offline and no local files: the hub dataset and --task_data named, no traceback
    proc = run_script("evaluate.py", f"--out_dir={tiny_run}", "--tasks=arc_challenge", "--device=cpu", check=False,
                      env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not load allenai/ai2_arc (ARC-Challenge)") and "--task_data=DIR" in last
    with pytest.raises(SystemExit, match="no chat tokens in its vocabulary.*not fine-tuned with objective=chat"):
        evaluate(monkeypatch, f"--out_dir={tiny_run}", "--objective=chat", "--tasks=gsm8k", f"--task_data={FIXTURES}")


def test_train_logs_task_metrics_equal_to_evaluate(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_script("train.py", *TINY_MODEL, "--batch_size=2", "--max_steps=4", "--warmup_steps=1", "--eval_interval=2",
               "--eval_iters=1", "--log_interval=2", "--checkpoint_interval=4", "--dataset=tiny",
               f"--data_dir={tiny_data}", f"--out_dir={out}", "--eval_tasks=hellaswag,sst2", "--eval_task_examples=3",
               f"--task_data={FIXTURES}")
    evals = [r for r in read_metrics(out) if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert {"hellaswag_acc", "hellaswag_acc_norm", "sst2_acc", "core"} <= set(r)
    g = evaluate(monkeypatch, f"--out_dir={out}", "--ckpt=latest", "--tasks=hellaswag,sst2", "--max_examples=3",
                 f"--task_data={FIXTURES}")
    assert evals[-1]["hellaswag_acc_norm"] == g["results"]["tasks"]["hellaswag"]["acc_norm"]
    assert evals[-1]["sst2_acc"] == g["results"]["tasks"]["sst2"]["acc"]
    assert evals[-1]["core"] == pytest.approx(g["results"]["core"])


def test_report_card(tiny_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # the shared tiny run is read-only
    evaluate(monkeypatch, f"--out_dir={run}", "--report", "--tasks=sst2", f"--task_data={FIXTURES}")
    report = (run / "report.md").read_text()
    for heading in ("# Run report: run", "## Run", "## Curves", "## Evaluation", "## Samples", "## Settings"):
        assert heading in report
    assert "| tokens seen | 2,560 (128 per step) |" in report  # 20 steps of 4 x 32
    assert "![loss curves](report_curves.png)" in report
    assert (run / "report_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| sst2 | acc |" in report and "| loss |" in report and report.count("```") >= 8


def test_bench_reports_scoring_examples_per_second(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    run_inline(monkeypatch, "bench.py", "--what=tasks", "--sample_layers=1", "--sample_heads=2", "--sample_d_model=32",
               "--sample_d_ff=64", "--sample_context=64", "--task_examples=8", "--task_batch=4", "--repeats=1",
               "--device=cpu", f"--output={out}")
    r = json.loads(out.read_text())["results"]["tasks"]
    assert r["examples"] == 8 and r["continuations"] == 32 and r["batch"] == 4
    assert r["examples_per_sec"] > 0 and r["unbatched_examples_per_sec"] > 0
    assert r["speedup"] == pytest.approx(r["examples_per_sec"] / r["unbatched_examples_per_sec"])
    assert "tasks: hellaswag multiple choice, 8 items (32 continuations)" in capsys.readouterr().out
