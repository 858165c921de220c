"""The chat engine's rolling KV cache (nash/engine.py, nash/kv_cache.py's RollingKVCache): within the context it is the exact engine (same
tokens, same logits, prefix reuse included); past it a reply and a conversation go on at a constant cache size,
a new turn prefills only itself, and an edited history after eviction is prefilled from scratch and lands where
a fresh engine would. Also: the exact engine with sink tokens rewinds to the right positions, and chat.py /
the API with --rolling_cache, as users run them."""
import contextlib
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch
from fastapi.testclient import TestClient

from nash import engine as E
from nash import server
from nash.checkpoint import save_checkpoint
from conftest import ROOT, run_script
from nash.engine import ChatEngine, Conversation, Decoder, Sampling
from model import GPT, GPTConfig
from nash.tokenizer import CHAT_VOCAB_SIZE, VOCAB_SIZE, render_conversation

GREEDY = Sampling(temperature=0.0, max_new_tokens=6)


def rope_chat_model(max_seq_len=16, sinks=0, seed=0, pos_emb="rope"):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=max_seq_len, dropout=0.0,
                          vocab_size=CHAT_VOCAB_SIZE, pos_emb=pos_emb, norm="rmsnorm", attn_sinks=sinks,
                          tie_weights=False))
    with torch.no_grad():  # far from the init, so position bugs show; special tokens never sampled
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.endswith("wte.weight"):
                p.normal_(0.0, 0.3)
        model.lm_head.weight[VOCAB_SIZE:] = 0.0  # logit 0, far below the best of 50257 random ones
    return model.eval()


def engine_for(model, rolling):
    engine = ChatEngine(model, contextlib.nullcontext(), rolling_cache=rolling)
    engine.stop_ids = set()  # every reply runs its full length
    return engine


@pytest.fixture
def logits_seen(monkeypatch):
    """The logits each sampled token was drawn from, in order."""
    seen, real = [], E.sample_next

    def recording(logits, *args):
        seen.append(logits.clone())
        return real(logits, *args)

    monkeypatch.setattr(E, "sample_next", recording)
    return seen


def full_logits(model, tokens):
    with torch.no_grad():
        return model.next_logits(torch.tensor([tokens]))  # one forward over everything, no cache


def run_turns(engine, turns, sampling=GREEDY):
    """A conversation of `turns` user messages, prompted as Conversation does; returns (prompt, reply) per turn."""
    conversation, out = Conversation(engine, system="Be brief."), []
    for i in range(turns):
        reply = "".join(conversation.reply(f"question {i}", sampling))
        out.append((conversation.prompt(conversation.pieces[:-1]), reply))
    return conversation, out


@pytest.mark.parametrize("sinks", [0, 2])
def test_rolling_engine_is_the_exact_engine_within_the_context(sinks, logits_seen):
    model = rope_chat_model(max_seq_len=64, sinks=sinks)
    results = []
    for rolling in (False, True):
        engine = engine_for(model, rolling)
        conversation, turns = run_turns(engine, 3)
        other = engine.render([{"role": "user", "content": "Reverse: a b c"}])  # a new chat rewinds the cache
        turns.append((other, list(engine.generate(other, GREEDY))))
        assert engine.prefilled == len(other) - 1 and not (rolling and engine.cache.evicted)  # <|endoftext|> kept
        results.append((turns, list(logits_seen)))
        logits_seen.clear()
    (exact, exact_logits), (rolling, rolling_logits) = results
    assert exact == rolling and len(rolling_logits) == 4 * 6
    for a, b in zip(exact_logits, rolling_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # both are full forward passes, step by step: the first reply's logits
    prompt = exact[0][0]
    tokens = render_conversation(E.get_tokenizer(), [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "question 0"}], for_reply=True)[0]
    assert prompt == tokens  # Conversation's prompt is render_conversation's
    for step in range(6):
        reply = [int(x.argmax()) for x in exact_logits[:step]]
        torch.testing.assert_close(exact_logits[step], full_logits(model, prompt + reply), atol=1e-4, rtol=1e-4)


def test_exact_engine_with_sinks_rewinds_to_the_right_positions(logits_seen):
    # the cache positions count the sinks: a rewind to the common prefix must land after them
    model = rope_chat_model(max_seq_len=64, sinks=2)
    engine = engine_for(model, rolling=False)
    first = engine.render([{"role": "user", "content": "Who are you and where do you live?"}])
    list(engine.generate(first, GREEDY))
    edited = first[:8] + engine.render([{"role": "user", "content": "x"}])[2:]  # diverges after 8 tokens
    logits_seen.clear()
    list(engine.generate(edited, Sampling(temperature=0.0, max_new_tokens=1)))
    assert engine.prefilled == len(edited) - 8
    torch.testing.assert_close(logits_seen[0], full_logits(model, edited), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("sinks", [0, 2])
def test_a_reply_three_times_the_context_at_a_constant_cache_size(sinks, key_lengths):
    model = rope_chat_model(max_seq_len=16, sinks=sinks)
    S, n = 16, 48
    prompt = engine_for(model, False).render([{"role": "user", "content": "Tell me a long story."}])
    exact = engine_for(model, False)
    assert len(prompt) + len(list(exact.generate(prompt, Sampling(temperature=0.0, max_new_tokens=n)))) == S
    assert exact.finish_reason == "length"  # the exact engine stops where the context ends
    engine = engine_for(model, True)
    key_lengths.clear()
    reply = list(engine.generate(prompt, Sampling(temperature=0.0, max_new_tokens=n)))
    assert len(reply) == n and engine.finish_reason == "length"
    steps = key_lengths[model.config.n_layers:]  # after the prefill: one call per layer per token
    assert len(steps) == model.config.n_layers * n and steps[-40:] == [S + sinks] * 40
    assert engine.cache.k[0].shape[2] == engine.cache.pos == S + sinks and engine.cache.evicted
    # the same tokens as sample.py's rolling generation (engine.stream) from the same prompt
    assert reply == list(E.stream(model, prompt, Sampling(temperature=0.0, max_new_tokens=n), rolling_cache=True))


def test_a_conversation_past_the_context_keeps_every_turn_and_prefills_only_the_new_one(logits_seen):
    model = rope_chat_model(max_seq_len=32, sinks=2)
    engine = engine_for(model, True)
    conversation = Conversation(engine, system="Be brief.")
    previous, sampling = 0, Sampling(temperature=0.0, max_new_tokens=10)
    for i in range(6):
        "".join(conversation.reply(f"question number {i}", sampling))
        prompt = conversation.prompt(conversation.pieces[:-1])
        assert conversation.dropped == 0 and engine.prefilled == len(prompt) - previous  # only the new turn
        previous = len(prompt) + 10
        assert engine.cached == prompt + conversation.pieces[-1][1:-1]  # the reply as generated
    assert len(conversation.messages) == 13 and len(prompt) > 3 * 32 and engine.cache.evicted
    assert engine.cache.pos == 34 and engine.cache.k[0].shape[2] == 34
    # the rolling state is a function of the tokens fed: a fresh engine fed the whole prompt at once agrees
    last = logits_seen[-10:]
    logits_seen.clear()
    fresh = engine_for(model, True)
    assert list(fresh.generate(prompt, sampling)) == conversation.pieces[-1][1:-1]
    for a, b in zip(last, logits_seen):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # an edited history cannot rewind into the evicted past: prefilled from scratch, same as a fresh engine
    edited = prompt[:20] + prompt[21:]
    reply = list(engine.generate(edited, sampling))
    assert engine.prefilled == len(edited) and reply == list(engine_for(model, True).generate(edited, sampling))


def test_rolling_cache_refuses_learned_positions():
    with pytest.raises(ValueError, match="needs pos_emb=rope"):
        ChatEngine(rope_chat_model(pos_emb="learned"), contextlib.nullcontext(), rolling_cache=True)


@pytest.fixture(scope="module")
def rope_chat_ckpt(tmp_path_factory):
    """Random chat checkpoints with a 32-token context that never end a reply by themselves: (rope, learned)."""
    paths = []
    for pos_emb in ("rope", "learned"):
        model = rope_chat_model(max_seq_len=32, sinks=2 if pos_emb == "rope" else 0, pos_emb=pos_emb)
        path = str(tmp_path_factory.mktemp(pos_emb) / "ckpt.pt")
        save_checkpoint(path, {"model": model.state_dict(), "model_config": asdict(model.config), "step": 0,
                               "settings": {"task": "chat"}, "metrics": None})
        paths.append(path)
    return paths


def reference(path, messages, n, rolling=True):
    from nash.checkpoint import load_model
    model, _, _ = load_model(path, "", "best", "cpu")
    engine = engine_for(model, rolling)
    decoder = Decoder(engine.enc)
    return "".join(decoder(t) for t in engine.generate(engine.render(messages), Sampling(0.0, None, None, n)))


@pytest.mark.slow
def test_chat_cli_rolling_cache_goes_past_the_context(rope_chat_ckpt):
    rope, learned = rope_chat_ckpt
    proc = run_script("chat.py", f"--init_from={rope}", "--rolling_cache", "--prompt=Tell me a story.",
                      "--temperature=0", "--max_new_tokens=80")  # 80 tokens > the context of 32
    expected = reference(rope, [{"role": "user", "content": "Tell me a story."}], 80)
    assert proc.stdout == expected + "\n" and "rolling KV cache" in proc.stderr
    cut = run_script("chat.py", f"--init_from={rope}", "--prompt=Tell me a story.", "--temperature=0",
                     "--max_new_tokens=80").stdout  # without it, the reply stops at the context's end
    assert expected.startswith(cut.rstrip("\n")) and len(cut) < len(expected)
    # a conversation that outgrows the context keeps every turn: nothing dropped, every question answered
    proc = subprocess.run([sys.executable, "chat.py", f"--init_from={rope}", "--rolling_cache", "--temperature=0",
                           "--max_new_tokens=12"], input="".join(f"question {i}\n" for i in range(4)),
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "outgrew" not in proc.stderr and len(proc.stdout.splitlines()) >= 4
    proc = run_script("chat.py", f"--init_from={learned}", "--rolling_cache", "--prompt=hi", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: rolling_cache needs")
    assert "Traceback" not in proc.stderr


def test_api_with_rolling_cache_answers_past_the_context(rope_chat_ckpt):
    from nash.checkpoint import load_model
    model, _, _ = load_model(rope_chat_ckpt[0], "", "best", "cpu")
    engine = engine_for(model, True)
    client = TestClient(server.create_app(engine, "rolling", Sampling(temperature=0.0)))
    messages = [{"role": "user", "content": "word " * 40}]  # the prompt alone is longer than the context
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 70})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 70 and body["usage"]["prompt_tokens"] > 32
    assert body["choices"][0]["message"]["content"] == reference(rope_chat_ckpt[0], messages, 70)
    r = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": server.ROLLING_REPLY_TOKENS + 1})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]
    # the model card tells clients (the chat page) how long a reply may be: past the context
    [card] = client.get("/v1/models").json()["data"]
    assert card["max_tokens"] == server.ROLLING_REPLY_TOKENS and card["rolling_cache"] and card["context_length"] == 32
