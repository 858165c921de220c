"""model.py stands alone: copied by itself into an empty folder, it imports, builds every switch (the score head
too), trains a step, generates (its uncached generate) and loads OpenAI's GPT-2 layout, with nothing of the project
beside it; and what it generated there agrees token for token with the engine's cached decoding, run from the
repository on the same weights."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # a fresh interpreter in an empty folder, against transformers

CHILD = textwrap.dedent('''
    import sys, torch
    import model
    from model import GPT, GPTConfig
    assert model.__file__.startswith(sys.argv[1]), model.__file__  # the copy, not the repository's
    small = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=16, vocab_size=97, dropout=0.0)
    switches = [{}, dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, n_kv_heads=2, tie_weights=False),
                dict(mlp="relu2", bias=False), dict(n_experts=4, experts_top_k=2), dict(pos_emb="rope", attn_sinks=2)]
    torch.manual_seed(0)
    outputs = []
    for extra in switches:
        m = GPT(GPTConfig(**small, **extra))
        opt = m.configure_optimizers("adamw", 1e-2)[0]
        x = torch.randint(0, 97, (2, 16))
        y = torch.roll(x, -1, 1)
        _, fused = m(x, y, return_logits=False)  # the training path: fused chunked loss
        _, plain = m(x, y)
        assert torch.allclose(fused, plain, atol=1e-5), (extra, fused, plain)
        fused.backward()
        opt.step()
        m.eval()
        prompt = x[:1, :4]
        exact = m.generate(prompt, 20, temperature=0.0)  # past the 16-token context: the window slides
        assert exact.shape == (1, 24)
        assert m.generate(prompt, 5, temperature=1.0, generator=torch.Generator().manual_seed(0)).shape == (1, 9)
        outputs.append((extra, m.state_dict(), exact))
    torch.save(outputs, sys.argv[4])
    v = GPT(GPTConfig(**small, score_head=True))  # a verifier: the score head, read at each row's last real token
    scores = v.score(x, torch.tensor([15, 3]))
    assert scores.shape == (2,) and torch.equal(v(x, last=torch.tensor([15, 3]))[0], scores)
    scores.sum().backward()
    assert v.score_head.weight.grad is not None
    m = GPT.from_pretrained(sys.argv[2]).eval()
    assert m.config.n_layers == 2 and m.config.vocab_size == 50257
    ids = torch.tensor([[464, 2068, 7586]])
    with torch.no_grad():
        logits = m(ids)[0]
    torch.save(logits, sys.argv[3])
    project = {"nash", "hf", "kvcache", "loss", "moe", "checkpoint", "tokenizer", "configurator"} & set(sys.modules)
    assert not project, project
    print("alone ok")
''')


def test_model_py_runs_alone_in_an_empty_folder(tmp_path):
    transformers = __import__("pytest").importorskip("transformers")
    import torch
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(os.path.join(ROOT, "model.py"), alone / "model.py")
    (alone / "child.py").write_text(CHILD)
    # a GPT-2 folder written by transformers itself (a tiny one: 2 layers)
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "child.py", str(alone), str(tmp_path / "gpt2-tiny"), str(tmp_path / "l.pt"),
                           str(tmp_path / "gen.pt")],
                          cwd=alone, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "alone ok" in proc.stdout, proc.stdout + proc.stderr
    with torch.no_grad():
        theirs = hf(torch.tensor([[464, 2068, 7586]])).logits
    assert (torch.load(tmp_path / "l.pt") - theirs).abs().max() < 1e-4
    # the engine's cached decoding (the repository's), on the weights trained there, gives the same tokens
    from model import GPT, GPTConfig
    from nash.engine import Sampling, stream
    small = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=16, vocab_size=97, dropout=0.0)
    for extra, state, exact in torch.load(tmp_path / "gen.pt"):
        m = GPT(GPTConfig(**small, **extra))
        m.load_state_dict(state)
        prompt = exact[0, :4].tolist()
        within = list(stream(m, prompt, Sampling(temperature=0.0, top_k=None, max_new_tokens=20)))
        assert within == exact[0, 4:16].tolist(), extra  # the exact cache: up to the context's end
        if m.config.pos_emb == "rope":  # the rolling cache agrees within the context too, then goes on
            rolling = list(stream(m, prompt, Sampling(temperature=0.0, top_k=None, max_new_tokens=20), rolling_cache=True))
            assert rolling[:12] == within and len(rolling) == 20, extra
