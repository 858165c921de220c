"""Chat: conversation rendering and its loss mask, ChatExamples batches, growing a vocabulary for the chat tokens,
train.py objective=chat (from a pretraining run, resumed), and the engine's KV cache reused across turns, checked
against full forward passes without any cache."""
import json
import os

import pytest
import torch

from nash.checkpoint import load_checkpoint
from conftest import ROOT, TINY_MODEL, TINY_TRAINING, run_script
from nash.data import ChatExamples
from nash.engine import ChatEngine, Conversation, Sampling
from model import GPT, GPTConfig
from nash.tokenizer import CHAT_VOCAB_SIZE, EOT_ID, VOCAB_SIZE, get_tokenizer, render_conversation, special_ids

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <|assistant_end|>"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Reverse: a b"},
                {"role": "assistant", "content": "b a"}]


def chat_model(max_seq_len=64, seed=0, **overrides):
    torch.manual_seed(seed)
    config = dict(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=max_seq_len, vocab_size=CHAT_VOCAB_SIZE,
                  dropout=0.0)
    return GPT(GPTConfig(**{**config, **overrides})).eval()


def test_render_marks_turns_and_trains_on_assistant_replies_only():
    enc = get_tokenizer()
    ids = special_ids(enc)
    tokens, mask = render_conversation(enc, CONVERSATION)
    assert len(tokens) == len(mask)
    assert enc.decode(tokens) == ("<|endoftext|><|system_start|>Be brief.<|system_end|><|user_start|>Hi <|assistant_end|>"
                                  "<|user_end|><|assistant_start|>Hello!<|assistant_end|><|user_start|>Reverse: a b"
                                  "<|user_end|><|assistant_start|>b a<|assistant_end|>")
    # what the user typed stays text: exactly one real <|assistant_end|> token per assistant reply
    assert tokens.count(ids["<|assistant_end|>"]) == 2 and tokens[0] == EOT_ID
    trained = [t for t, m in zip(tokens, mask) if m]
    assert trained == enc.encode_ordinary("Hello!") + [ids["<|assistant_end|>"]] + enc.encode_ordinary("b a") + \
        [ids["<|assistant_end|>"]]
    prompt, prompt_mask = render_conversation(enc, CONVERSATION[:4], for_reply=True)
    assert prompt == tokens[:len(prompt)] and prompt[-1] == ids["<|assistant_start|>"] and not prompt_mask[-1]


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user", "content": 3}], "string \"content\""),
    (["hello"], "must be an object"),
])
def test_render_refuses_malformed_messages(messages, message):
    with pytest.raises(ValueError, match=message):
        render_conversation(get_tokenizer(), messages)


def write_chats(path, conversations):
    with open(path, "w") as f:
        for c in conversations:
            f.write(json.dumps({"messages": c}) + "\n")
    return str(path)


def test_chat_examples_batches_mask_everything_but_the_replies(tmp_path):
    enc = get_tokenizer()
    short = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "Nash."}]
    data = ChatExamples(write_chats(tmp_path / "c.jsonl", [CONVERSATION, short]), max_seq_len=64)
    x, y = data.batch([0, 1], 64)
    assert x.shape == y.shape and x.shape[1] % 8 == 0
    for i, messages in enumerate([CONVERSATION, short]):
        tokens, mask = render_conversation(enc, messages)
        n = len(tokens) - 1
        assert x[i, :n].tolist() == tokens[:-1] and (x[i, n:] == EOT_ID).all()
        expected = [t if m else -1 for t, m in zip(tokens[1:], mask[1:])]
        assert y[i, :n].tolist() == expected and (y[i, n:] == -1).all()
    # get_batch is a pure function of (seed, step, index), like SFT's
    assert torch.equal(data.get_batch(2, 64, 1, 3, 0)[1], data.get_batch(2, 64, 1, 3, 0)[1])


def test_chat_examples_cut_long_conversations_and_drop_those_with_nothing_to_learn(tmp_path):
    long_user = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok"}]
    long_reply = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 40}]
    no_reply = [{"role": "user", "content": "hi"}]
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    data = ChatExamples(write_chats(tmp_path / "c.jsonl", [long_user, long_reply, no_reply, short]), 16)
    assert (len(data.examples), data.num_dropped, data.num_truncated) == (2, 2, 2)
    assert all(len(s) <= 17 for s in data.sequences)


@pytest.mark.parametrize("line, message", [
    ("{not json", "c.jsonl:2: "),
    ('{"prompt": "a", "completion": "b"}', "c.jsonl:2: .*messages"),
    ('{"messages": [{"role": "bot", "content": "b"}]}', "c.jsonl:2: messages\\[0\\] has role 'bot'"),
])
def test_chat_examples_name_file_and_line_of_bad_rows(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": CONVERSATION}) + "\n" + line + "\n")
    with pytest.raises(SystemExit, match="error: .*" + message):
        ChatExamples(str(path), 64)


@pytest.mark.parametrize("pad, tie", [(64, True), (1, True), (1, False)])
def test_grow_vocab_keeps_the_trained_rows_and_starts_new_ones_near_the_mean(pad, tie):
    model = chat_model(vocab_size=VOCAB_SIZE, pad_vocab_multiple=pad, tie_weights=tie)
    idx = torch.randint(0, VOCAB_SIZE, (2, 12))
    before = model(idx)[0]
    old_rows = model.transformer.wte.weight[:VOCAB_SIZE].clone()
    model.grow_vocab(CHAT_VOCAB_SIZE)
    assert model.config.vocab_size == CHAT_VOCAB_SIZE
    after = model(idx)[0]
    assert after.shape[-1] == CHAT_VOCAB_SIZE and torch.allclose(after[..., :VOCAB_SIZE], before, atol=1e-6)
    wte = model.transformer.wte.weight
    assert torch.equal(wte[:VOCAB_SIZE], old_rows) and (wte[CHAT_VOCAB_SIZE:] == 0).all()
    new = wte[VOCAB_SIZE:CHAT_VOCAB_SIZE]
    assert torch.allclose(new, old_rows.mean(0).expand_as(new), atol=0.5 * old_rows.std().item())
    assert (new[0] != new[1]).any()  # distinct tokens
    assert (model.lm_head.weight is wte) == tie
    # the new logits are ordinary ones, not spikes: within the range of the old tokens' logits
    assert after[..., VOCAB_SIZE:].max() <= after[..., :VOCAB_SIZE].max()
    model(torch.tensor([[EOT_ID, CHAT_VOCAB_SIZE - 1]]), torch.tensor([[CHAT_VOCAB_SIZE - 1, 5]]))[1].backward()


def test_chat_fine_tuning_grows_a_pretrained_vocabulary_and_resumes(tiny_run, chat_data, tmp_path):
    out = tmp_path / "chat"
    flags = [*TINY_MODEL, *TINY_TRAINING, "--objective=chat", "--dataset=demo", f"--data_dir={chat_data}",
             f"--out_dir={out}", "--init_from=" + os.path.join(tiny_run, "best.pt")]
    proc = run_script("train.py", *flags, "--max_steps=10")
    assert f"vocab_size 50257 -> {CHAT_VOCAB_SIZE}" in proc.stdout
    state = load_checkpoint(str(out / "ckpt.pt"))
    assert state["model_config"]["vocab_size"] == CHAT_VOCAB_SIZE and state["step"] == 10
    pretrained = load_checkpoint(os.path.join(tiny_run, "best.pt"))
    assert state["model"]["lm_head.weight"].shape == pretrained["model"]["lm_head.weight"].shape  # the spare rows
    proc = run_script("train.py", *flags, "--init_from=resume")
    assert "resuming" in proc.stdout and load_checkpoint(str(out / "ckpt.pt"))["step"] == 20
    losses = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert all(e["val_loss"] < 11 for e in losses if e["event"] == "eval")


def greedy_reference(model, prompt, n):
    """Greedy tokens by full forward passes over the whole sequence, no cache anywhere."""
    seq, out = list(prompt), []
    stops = set(special_ids(get_tokenizer()).values())
    with torch.no_grad():
        for _ in range(n):
            if len(seq) >= model.config.max_seq_len:
                break
            t = int(model.next_logits(torch.tensor([seq]))[0].argmax())  # a full forward, no cache
            if t in stops:
                break
            out.append(t)
            seq.append(t)
    return out


def test_engine_prefills_only_the_new_turn_and_matches_full_forward_passes():
    import contextlib
    model = chat_model(max_seq_len=96)
    engine = ChatEngine(model, contextlib.nullcontext())
    greedy = Sampling(temperature=0.0, max_new_tokens=8)
    messages = [{"role": "user", "content": "Who are you?"}]
    for turn in range(3):
        prompt = engine.render(messages)
        reply = list(engine.generate(prompt, greedy))
        assert reply == greedy_reference(model, prompt, 8)
        if turn:  # the previous prompt and reply are in the cache: only the new turn's tokens are computed
            assert engine.prefilled == len(prompt) - previous
        assert engine.cached == (prompt + reply)[:len(engine.cached)] and len(engine.cached) >= len(prompt) + len(reply) - 1
        previous = len(engine.cached)
        messages += [{"role": "assistant", "content": get_tokenizer().decode(reply)},
                     {"role": "user", "content": f"and {turn}?"}]
    # a different conversation rewinds to the common prefix (<|endoftext|><|user_start|>) and is still exact
    other = engine.render([{"role": "user", "content": "Reverse: a b c"}])
    assert list(engine.generate(other, greedy)) == greedy_reference(model, other, 8) and engine.prefilled == len(other) - 2
    engine.reuse = False
    assert list(engine.generate(other, greedy)) == greedy_reference(model, other, 8) and engine.prefilled == len(other)


def test_engine_stops_at_the_context_and_refuses_models_without_chat_tokens():
    import contextlib
    model = chat_model(max_seq_len=16)
    with torch.no_grad():  # make <|assistant_end|> never likely, so only the context can end the reply
        model.lm_head.weight[VOCAB_SIZE:CHAT_VOCAB_SIZE] = -model.lm_head.weight[:VOCAB_SIZE].abs().mean(0) * 50
    engine = ChatEngine(model, contextlib.nullcontext())
    prompt = engine.render([{"role": "user", "content": "hi"}])
    reply = list(engine.generate(prompt, Sampling(temperature=1.0, max_new_tokens=100, seed=0)))
    assert len(prompt) + len(reply) == 16 and engine.finish_reason == "length"
    with pytest.raises(ValueError, match="not fine-tuned for chat"):
        ChatEngine(chat_model(vocab_size=VOCAB_SIZE), contextlib.nullcontext())


def test_conversation_drops_the_oldest_turns_but_keeps_the_system_prompt():
    import contextlib
    engine = ChatEngine(chat_model(max_seq_len=48), contextlib.nullcontext())
    conversation = Conversation(engine, system="Be brief.")
    sampling = Sampling(temperature=0.0, max_new_tokens=6)
    dropped = []
    for i in range(6):
        "".join(conversation.reply(f"question number {i}", sampling))
        dropped.append(conversation.dropped)
        assert len(engine.render(conversation.messages[:-1])) + 6 <= 48  # the prompt left room for the reply
    assert sum(dropped) > 0 and conversation.messages[0] == {"role": "system", "content": "Be brief."}
    assert conversation.messages[-2] == {"role": "user", "content": "question number 5"}
    with pytest.raises(ValueError, match="too long"):
        next(conversation.reply("word " * 60, sampling))
    assert conversation.messages[-2]["content"] == "question number 5"  # the refused message is not kept


@pytest.mark.slow
def test_demo_set_is_generated_deterministically(tmp_path):
    import shutil
    shutil.copy(os.path.join(ROOT, "data", "chat_demo", "generate.py"), tmp_path / "generate.py")
    run_script(str(tmp_path / "generate.py"))
    for split in ("train", "val"):
        with open(os.path.join(ROOT, "data", "chat_demo", f"{split}.jsonl"), "rb") as f:
            assert (tmp_path / f"{split}.jsonl").read_bytes() == f.read()  # byte for byte what is committed
    train = ChatExamples(str(tmp_path / "train.jsonl"), 128)
    val = ChatExamples(str(tmp_path / "val.jsonl"), 128)
    assert (len(train.examples), len(val.examples), train.num_truncated) == (3000, 150, 0)
    assert not {json.dumps(m) for m in val.examples} & {json.dumps(m) for m in train.examples}


@pytest.mark.slow
def test_demo_config_trains(tmp_path):
    # the README's `python train.py config/chat_demo.py`, for 2 steps
    run_script("train.py", "config/chat_demo.py", "--max_steps=2", "--eval_interval=2", "--eval_iters=1",
               "--warmup_steps=1", f"--out_dir={tmp_path / 'demo'}")
    state = load_checkpoint(str(tmp_path / "demo" / "ckpt.pt"))
    assert state["settings"]["objective"] == "chat" and state["model_config"]["vocab_size"] == CHAT_VOCAB_SIZE


def test_evaluate_scores_each_conversations_last_reply_by_exact_match(tiny_chat_run, tmp_path):
    """evaluate.py on a chat run: besides the loss, the exact match of each conversation's last reply as chat.py
    would answer it, greedily. The reference here is computed apart, with model.generate: the reply's tokens and
    then a special token. (The tiny run ends its replies at once, so an empty reference matches.)"""
    from nash.checkpoint import load_model
    model, _, _ = load_model("", tiny_chat_run, "best", "cpu")
    enc, specials = get_tokenizer(), set(special_ids(get_tokenizer()).values())
    conversations = [
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "Reverse: red fox"}, {"role": "assistant", "content": "fox red"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
         {"role": "assistant", "content": "Hello"}],
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}, {"role": "user", "content": "again"},
         {"role": "assistant", "content": ""}],
    ]
    expected = []
    for messages in conversations:
        prompt = render_conversation(enc, messages[:-1], for_reply=True)[0]
        reference = enc.encode_ordinary(messages[-1]["content"])
        out = model.generate(torch.tensor([prompt]), len(reference) + 1, temperature=0.0)[0, len(prompt):].tolist()
        expected.append(out[:-1] == reference and out[-1] in specials)
    assert 0 < sum(expected) < len(conversations)  # some match, some do not: the count means something
    data = tmp_path / "convs"
    data.mkdir()
    (data / "val.jsonl").write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations))
    out = tmp_path / "eval.json"
    proc = run_script("evaluate.py", f"--out_dir={tiny_chat_run}", f"--data_dir={data}", "--device=cpu",
                      f"--output={out}")
    results = json.loads(out.read_text())
    assert results["objective"] == "chat" and results["exact_match_examples"] == len(conversations)
    assert results["exact_match"] == sum(expected) / len(conversations)
    assert f"of {len(conversations)} last replies" in proc.stdout
