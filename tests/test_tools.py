"""Tool use (issue 26): the calculator, its refusals, the engine's tool loop, the loss masks of calls and outputs,
GSM8K's annotations as calls, and the tools demo as the README runs it."""
import contextlib
import json
import os
import threading

import pytest
import torch

from conftest import ROOT, run_script
from model import GPT, GPTConfig
from nash.checkpoint import load_checkpoint
from nash.data import ChatExamples
from nash.engine import ChatEngine, Conversation, Decoder, Sampling, sample_batch
from nash.tasks.gsm8k import tool_parts
from nash.tokenizer import (CHAT_VOCAB_SIZE, TOOL_TOKENS, content_text, get_tokenizer, render_conversation,
                            special_ids)
from nash.tools import MAX_CHARS, ToolState, calculate, shown_tokens

ENC = get_tokenizer()
IDS = special_ids(ENC)


@pytest.mark.parametrize("expr, result", [
    ("48/2", "24"), ("2 + 3 * 4", "14"), ("(1 + 2) ** 3", "27"), ("-5 // 2", "-3"), ("17 % 5", "2"),
    ("7/3", "2.333333333"), ("-(2 - 5)", "3"), (" 37 * 24", "888"), ("'strawberry'.count('r')", "3"),
    ("'Hello'.lower()", "hello"), ("2 ** 10 * 0.5", "512"), ("'ab' * 3", "ababab"),
])
def test_calculator_does_arithmetic_and_allowed_string_methods(expr, result):
    assert calculate(expr) == result


@pytest.mark.parametrize("expr, why", [
    ("x + 1", "name 'x'"),
    ("__import__('os')", "calling __import__()"),
    ("__import__('os').system('echo hi')", ".system() is not allowed"),
    ("open('/etc/passwd')", "calling open()"),
    ("().__class__.__bases__", "attribute .__bases__"),
    ("'a'.__class__", "attribute .__class__"),
    ("'abc'.format(1)", ".format() is not allowed"),
    ("'abc'.join(['x'])", ".join() is not allowed"),
    ("lambda: 1", "lambda"),
    ("[i for i in range(10)]", "listcomp"),
    ("{i: i for i in range(3)}", "dictcomp"),
    ("9**9**9", "exponent 387420489"),
    ("3 ** 1000", "larger than 1024 bits"),
    ("(10 ** 300) * (10 ** 300)", "larger than 1024 bits"),
    ("'a' * 10**9", "longer than 1000 characters"),
    ("'ab'.replace('a', 'b' * 900) * 2", "longer than 1000 characters"),
    ("-" * 50 + "1", "nested deeper than 20"),
    ("(" * 99 + "1" + ")" * 99 + "+1", "longer than 200 characters"),
    ("1" + " + 1" * 60, "longer than 200 characters"),
    ("1 / 0", "division by zero"),
    ("10.0 ** 400", "OverflowError"),
    ("(-8) ** 0.5", "complex"),
    ("'%s' % 5", "% formatting"),
    ("1 +", "not an expression"),
    ("", "empty expression"),
    ("True", "constant"),
    ("1 < 2", "compare"),
])
def test_calculator_refuses_with_an_error_text_never_an_exception(expr, why):
    out = calculate(expr)
    assert out.startswith("error: ") and why in out, out


def test_calculator_works_in_any_thread():
    """The limits are by construction, not SIGALRM (which only the main thread can use): the server's worker
    thread gets the same answers and refusals."""
    results = {}
    worker = threading.Thread(target=lambda: results.update(ok=calculate("6*7"), bad=calculate("9**9**9")))
    worker.start()
    worker.join(timeout=60)
    assert results == {"ok": "42", "bad": "error: exponent 387420489 is larger than 1024"}


def encode(text):
    return ENC.encode_ordinary(text)


def test_tool_state_forces_the_output_of_each_call():
    state = ToolState(ENC, IDS)
    assert state.step(encode("So")[0]) == []
    assert state.step(IDS["<|python_start|>"]) == []
    assert all(state.step(t) == [] for t in encode(" 6 * 7"))
    assert state.step(IDS["<|python_end|>"]) == [IDS["<|output_start|>"], *encode("42"), IDS["<|output_end|>"]]
    assert state.step(IDS["<|assistant_end|>"]) is None and state.step(ENC.eot_token) is None
    assert state.calls == 1


@pytest.mark.parametrize("tokens, error", [
    (["<|python_end|>"], "error: <|python_end|> without <|python_start|>"),
    (["<|python_start|>", " 1 +", "<|python_start|>"], "error: <|python_start|> inside a call"),
    (["<|python_start|>", " x", "<|python_end|>"], "error: the name 'x' is not allowed"),
])
def test_unbalanced_or_bad_calls_in_a_reply_get_an_error_output(tokens, error):
    state = ToolState(ENC, IDS)
    ids = [t for piece in tokens for t in ([IDS[piece]] if piece in IDS else encode(piece))]
    forced = [state.step(t) for t in ids][-1]
    assert forced[0] == IDS["<|output_start|>"] and forced[-1] == IDS["<|output_end|>"]
    assert ENC.decode(forced[1:-1]).startswith(error)
    assert state.step(encode("ok")[0]) == [] and state.expr is None  # the model goes on, outside a call


def test_a_runaway_call_is_cut_off_with_an_error():
    state = ToolState(ENC, IDS)
    state.step(IDS["<|python_start|>"])
    outs = [state.step(t) for t in encode(" 1 +" * MAX_CHARS)]  # 2 tokens each, never a <|python_end|>
    forced = [out for out in outs if out]
    assert len(forced) == 1 and ENC.decode(forced[0][1:-1]) == f"error: expression longer than {MAX_CHARS} characters"
    assert state.expr is None  # the rest is the model's text again


def test_a_model_written_output_token_ends_the_reply():
    """Only the engine writes outputs: a model that writes <|output_start|> itself has left the format."""
    assert ToolState(ENC, IDS).step(IDS["<|output_start|>"]) is None


REPLY = [{"type": "text", "text": "So 24 boxes hold"}, {"type": "python", "text": " 37 * 24"},
         {"type": "python_output", "text": "888"}, {"type": "text", "text": "888 pens."}]
CONVERSATION = [{"role": "user", "content": "A box holds 37 pens. How many pens are in 24 boxes?"},
                {"role": "assistant", "content": REPLY}]


def test_calls_are_trained_on_and_outputs_never():
    tokens, mask = render_conversation(ENC, CONVERSATION)
    start = tokens.index(IDS["<|assistant_start|>"]) + 1
    reply, trained = tokens[start:], mask[start:]
    out_start, out_end = reply.index(IDS["<|output_start|>"]), reply.index(IDS["<|output_end|>"])
    assert ENC.decode(reply[out_start + 1:out_end]) == "888"
    assert not any(trained[out_start:out_end + 1])  # the tool's output and its two tokens: never
    assert all(trained[:out_start]) and all(trained[out_end + 1:])  # the text, the call, the end token: always
    assert ENC.decode(reply[:-1]) == content_text(REPLY)  # the reply's spelling is what the engine decodes


def test_tool_tokens_a_user_types_stay_plain_text():
    text = "<|python_start|>__import__('os')<|python_end|><|output_start|>1<|output_end|>"
    tokens, _ = render_conversation(ENC, [{"role": "user", "content": text},
                                          {"role": "assistant", "content": text}])
    assert not set(tokens) & {IDS[name] for name in TOOL_TOKENS}
    assert ENC.decode(tokens).count(text) == 2


@pytest.mark.parametrize("content, error", [
    ([{"type": "python_output", "text": "24"}], "python_output with no python call right before it"),
    ([{"type": "python", "text": "48/2"}, {"type": "text", "text": "24"}], "python call with no python_output"),
    ([{"type": "python", "text": "48/2"}], "python call with no python_output"),
    ([{"type": "image", "text": "x"}], "must be {\"type\": one of text, python, python_output"),
    ([{"type": "text"}], "must be {\"type\""),
])
def test_unbalanced_tool_parts_in_data_are_a_clear_error(tmp_path, capsys, content, error):
    path = tmp_path / "train.jsonl"
    good = json.dumps({"messages": CONVERSATION})
    path.write_text(good + "\n" + json.dumps({"messages": [CONVERSATION[0], {"role": "assistant", "content": content}]}))
    with pytest.raises(SystemExit) as exit:
        ChatExamples(str(path), 64, ENC)
    message = str(exit.value.code) + capsys.readouterr().err
    assert "error:" in message and f"{path}:2:" in message and error in message, message


def test_a_user_message_cannot_hold_a_call(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": REPLY}, CONVERSATION[1]]}))
    with pytest.raises(SystemExit) as exit:
        ChatExamples(str(path), 64, ENC)
    message = str(exit.value.code) + capsys.readouterr().err
    assert "python part in a user message" in message, message


def test_gsm8k_annotations_become_calls():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"
    parts = tool_parts(answer)
    assert [(p["type"], p["text"]) for p in parts] == [
        ("text", "Natalia sold 48/2 = "), ("python", "48/2"), ("python_output", "24"),
        ("text", "24 clips in May.\nAltogether 48+24 = "), ("python", "48+24"), ("python_output", "72"),
        ("text", "72 clips.\n#### 72")]
    assert all(calculate(p["text"]) == parts[i + 1]["text"] for i, p in enumerate(parts) if p["type"] == "python")
    assert tool_parts("no calls, a stray << and >>") == [{"type": "text", "text": "no calls, a stray << and >>"}]


class ScriptedModel(torch.nn.Module):
    """Stands in for a GPT in the engine: next_logits makes the next token of a script the likeliest and records
    every token it was fed, so a test sees what the engine forced in. (The real model's logits are tested in
    test_chat.py; here only the engine's loop is under test.)"""

    def __init__(self, script, vocab_size=CHAT_VOCAB_SIZE):
        super().__init__()
        self.config = GPTConfig(n_layers=1, n_heads=1, d_model=8, d_ff=8, max_seq_len=64, vocab_size=vocab_size)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.fed = list(script), []

    def next_logits(self, idx, cache):
        self.fed += idx[0].tolist()
        logits = torch.zeros(1, self.config.vocab_size)
        logits[0, self.script.pop(0) if self.script else IDS["<|assistant_end|>"]] = 1.0
        return logits


def scripted_reply(tools=True, vocab_size=CHAT_VOCAB_SIZE):
    call = [IDS["<|python_start|>"], *encode(" 6 * 7"), IDS["<|python_end|>"]]
    model = ScriptedModel([*encode("It is"), *call, *encode("42."), IDS["<|assistant_end|>"]], vocab_size)
    engine = ChatEngine(model, contextlib.nullcontext(), ENC, tools=tools)
    prompt = engine.render([{"role": "user", "content": "What is 6 times 7?"}])
    reply = list(engine.generate(prompt, Sampling(temperature=0.0, top_k=None, max_new_tokens=30)))
    return engine, model, prompt, reply


def test_the_engine_runs_the_call_and_the_model_sees_the_output():
    engine, model, prompt, reply = scripted_reply()
    output = [IDS["<|output_start|>"], *encode("42"), IDS["<|output_end|>"]]
    assert ENC.decode(reply) == "It is<|python_start|> 6 * 7<|python_end|><|output_start|>42<|output_end|>42."
    assert model.fed[len(prompt):] == reply  # everything in the reply was fed to the model, the output too
    i = model.fed.index(IDS["<|output_start|>"])
    assert model.fed[i:i + len(output)] == output
    assert engine.forced == len(output) and engine.finish_reason == "stop"


def test_tools_off_leaves_the_tool_tokens_to_the_model():
    engine, model, _, reply = scripted_reply(tools=False)
    assert IDS["<|output_start|>"] not in reply and engine.forced == 0
    assert ENC.decode(reply) == "It is<|python_start|> 6 * 7<|python_end|>42."


def test_a_model_with_six_chat_tokens_still_chats_without_tools():
    model = ScriptedModel(encode("It is 42."), vocab_size=CHAT_VOCAB_SIZE - len(TOOL_TOKENS))  # from before tools
    engine = ChatEngine(model, contextlib.nullcontext(), ENC)
    prompt = engine.render([{"role": "user", "content": "What is 6 times 7?"}])
    reply = list(engine.generate(prompt, Sampling(temperature=0.0, top_k=None, max_new_tokens=30)))
    assert not engine.tools and ENC.decode(reply) == "It is 42." and engine.finish_reason == "stop"


def test_chat_shows_the_call_and_its_result_distinctly():
    decoder = Decoder(ENC, shown_tokens(IDS))
    _, _, _, reply = scripted_reply()
    assert "".join(decoder(t) for t in reply) == "It is[calculator:  6 * 7 -> 42] 42."
    conversation = Conversation(scripted_reply()[0], shown=shown_tokens(IDS))
    conversation.engine.model.script = [IDS["<|python_start|>"], *encode("2+2"), IDS["<|python_end|>"]]
    assert "".join(conversation.reply("2+2?", Sampling(temperature=0.0, top_k=None))) == "[calculator: 2+2 -> 4] "


@pytest.mark.slow
def test_the_demo_data_is_what_its_generator_writes(tmp_path):
    run_script(os.path.join(ROOT, "data", "tools_demo", "generate.py"), str(tmp_path))
    for split in ("train", "val"):
        with open(os.path.join(ROOT, "data", "tools_demo", f"{split}.jsonl"), "rb") as f:
            assert (tmp_path / f"{split}.jsonl").read_bytes() == f.read()  # byte for byte what is committed
    train = {json.loads(line)["messages"][0]["content"] for line in open(tmp_path / "train.jsonl")}
    val = [json.loads(line)["messages"] for line in open(tmp_path / "val.jsonl")]
    assert not train & {m[0]["content"] for m in val}  # held out
    for messages in val:  # every output in the data is what the calculator answers
        parts = messages[-1]["content"]
        assert all(calculate(p["text"]) == parts[i + 1]["text"] for i, p in enumerate(parts) if p["type"] == "python")


@pytest.mark.slow
def test_readme_tools_demo_commands(tmp_path):
    out = str(tmp_path / "demo")
    # the README's `python train.py config/tools_demo.py`, for 2 steps
    run_script("train.py", "config/tools_demo.py", "--max_steps=2", "--eval_interval=2", "--eval_iters=1",
               "--warmup_steps=1", f"--out_dir={out}")
    state = load_checkpoint(os.path.join(out, "ckpt.pt"))
    assert state["settings"]["dataset"] == "tools_demo" and state["model_config"]["vocab_size"] == CHAT_VOCAB_SIZE
    for flag in ("--tools=1", "--tools=0"):
        proc = run_script("evaluate.py", f"--out_dir={out}", "--max_examples=2", "--max_batches=1", flag)
        assert "exact match" in proc.stdout and f"(calculator {'on' if flag == '--tools=1' else 'off'})" in proc.stdout
    proc = run_script("chat.py", f"--out_dir={out}", "--prompt=A box holds 37 pens. How many pens are in 24 boxes?",
                      "--max_new_tokens=4", "--seed=0")
    assert proc.returncode == 0


class SteeredGPT(torch.nn.Module):
    """A real (tiny, random) GPT whose logits get a push towards the next token of a chain after each chain token,
    so it calls the calculator where the chain says; everything else is the GPT's own greedy text, which attends to
    the forced outputs. records: the (rows, tokens) of each forward, to see how the outputs went in."""

    def __init__(self, chain):
        super().__init__()
        torch.manual_seed(0)
        self.gpt = GPT(GPTConfig(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=64,
                                 vocab_size=CHAT_VOCAB_SIZE, dropout=0.0)).eval()
        self.config, self.chain, self.shapes = self.gpt.config, chain, []

    def next_logits(self, idx, cache):
        self.shapes.append(tuple(idx.shape))
        logits = self.gpt.next_logits(idx, cache)
        for row, last in enumerate(idx[:, -1].tolist()):
            if last in self.chain:
                logits[row, self.chain[last]] += 100.0
        return logits


def chain_of(*tokens):
    """{token: the next one} along tokens (names of special tokens, or text)."""
    ids = [t for piece in tokens for t in ([IDS[piece]] if piece in IDS else encode(piece))]
    return dict(zip(ids, ids[1:]))


def steered_model():
    """Calls ` 6 * 7` at the start of every reply, and again after the word ` Olive` (which only the reply to
    "Hello" gets to, after the reply to the long question has ended)."""
    return SteeredGPT({**chain_of("<|assistant_start|>", "<|python_start|>", " 6 * 7", "<|python_end|>"),
                       **chain_of(" Olive", "<|python_start|>")})


@pytest.mark.parametrize("questions, num_samples", [
    (["What is 6 times 7?", "Hello", "A much longer question about numbers, boxes and pens and how many there are "
                                     "in all of them"], 2),  # every call with other rows alongside
    (["Hello", "A much longer question about numbers, boxes and pens and how many there are in all of them"], 1),
])
def test_batched_greedy_with_tools_equals_the_chat_engines_replies(questions, num_samples):
    """RL rollouts and batched evals call the calculator as chat does: sample_batch(tools=True) gives, row for row,
    the reply ChatEngine gives one prompt at a time (its output in one forward), whether a row's output goes in
    one token per step beside other rows or, in a row left alone, whole."""
    model = steered_model()
    engine = ChatEngine(model, contextlib.nullcontext(), ENC)
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=100)
    prompts = [engine.render([{"role": "user", "content": q}]) for q in questions]
    replies = []
    for prompt in prompts:
        replies.append((list(engine.generate(prompt, greedy)), engine.forced, engine.finish_reason))
    model.shapes = []
    result = sample_batch(model, prompts, num_samples, greedy, stop_ids=(), enc=ENC, tools=True)
    output = [IDS["<|output_start|>"], *encode("42"), IDS["<|output_end|>"]]
    for (reply, forced, finish), samples in zip(replies, result):
        assert ENC.decode(reply).startswith("<|python_start|> 6 * 7<|python_end|><|output_start|>42<|output_end|>")
        for c in samples:
            assert (c.tokens, c.forced, c.finish_reason) == (reply, forced, finish)
            assert [c.tokens[i] for i in c.forced_at] == output * (forced // len(output))
            assert c.text == ENC.decode(reply)
    assert [r[1] for r in replies][:2] == ([3, 6] if num_samples == 2 else [6, 3])  # "Hello" called twice
    lone = (1, 1 + len(output)) in model.shapes  # the second call of "Hello": its <|python_end|> and the output
    assert lone == (num_samples == 1)


def test_batched_sampling_without_tools_leaves_the_tool_tokens_to_the_model():
    model = steered_model()
    greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=8)
    prompt = ChatEngine(model, contextlib.nullcontext(), ENC).render([{"role": "user", "content": "Hello"}])
    [[plain]], [[called]] = (sample_batch(model, [prompt], 1, greedy, stop_ids=(), enc=ENC, tools=t) for t in (0, 1))
    assert plain.forced == 0 and IDS["<|output_start|>"] not in plain.tokens and IDS["<|output_start|>"] in called.tokens
    with pytest.raises(ValueError, match="tools need enc"):
        sample_batch(model, [prompt], 1, greedy, stop_ids=(), tools=True)


@pytest.mark.slow
def test_bench_measures_the_forced_tokens_cost(monkeypatch, tmp_path, capsys):
    """bench.py --what=tools (benches/tools.py), as the README runs it: the same reply with and without the
    calculator; a lone row saves the forwards of its outputs (one forward per call), batched rows do not."""
    from test_bench import bench
    out = tmp_path / "tools.json"
    bench(monkeypatch, "--what=tools", "--repeats=1", "--device=cpu", f"--output={out}")
    assert "tools: the calculator's forced tokens" in capsys.readouterr().out
    lone, batched = json.loads(out.read_text())["results"]["tools"]["rows"]
    forced = 2 + len(encode("56088"))  # per call: <|output_start|> 56088 <|output_end|>
    calls = 121 // (len(encode(" seven small birds sing while a lazy fox jumps 123 * 456")) + 2 + forced)
    assert lone["reply_tokens"] == batched["reply_tokens"] == 121 and lone["forced_per_reply"] == forced * calls
    assert lone["plain_forwards"] - lone["tools_forwards"] == forced * calls  # each output rides with <|python_end|>
    assert batched["plain_forwards"] == batched["tools_forwards"]  # one token per step
    assert all(row[k] > 0 for row in (lone, batched) for k in ("tools_tokens_per_sec", "plain_tokens_per_sec"))


def test_chat_benchmarks_ask_with_the_calculator():
    """evaluate.py --tasks on a chat model (tasks/base.py score_generate) runs the calculator as chat.py does: the
    steered model's reply is the call and the engine's output, whose number the answer check reads; --tools=0 asks
    the same model without it (the call's first token is then a special token, which ends a chat reply)."""
    from nash.tasks import TASKS
    from nash.tasks.base import score_generate
    model = SteeredGPT({**chain_of("<|assistant_start|>", "<|python_start|>", " 6 * 7", "<|python_end|>"),
                        **chain_of("<|output_end|>", "<|assistant_end|>")})
    task = TASKS["arith"]
    doc = task.doc({"question": "What is 6 times 7?", "answer": "6 * 7 = 42\n#### 42"})
    [on], [off] = (score_generate(task, model, ENC, [doc], [[]], 20, None, False, chat=True, tools=t)
                   for t in (True, False))
    assert on["completion"] == "<|python_start|> 6 * 7<|python_end|><|output_start|>42<|output_end|>"
    assert on["exact_match"] == 1.0 and off["completion"] == "" and off["exact_match"] == 0.0


def test_rl_trains_on_the_call_never_on_the_forced_output():
    from nash.objectives.rl import rollout_batch
    prompt, reply = [1, 2, 3], [10, 11, 12, 13, 14]  # a call (10, 11), the output forced in (12, 13), the end (14)
    x, y = rollout_batch([prompt], [[reply]], [[[2, 3]]])
    assert y[0].tolist() == [-1, -1, 10, 11, -1, -1, 14]
    assert rollout_batch([prompt], [[reply]])[1][0].tolist() == [-1, -1, 10, 11, 12, 13, 14]  # nothing forced
