"""export.py and hf.py against transformers itself: tiny random models of every mapping (GPT-2 tied/untied,
with and without bias; Llama with GQA, with bias; Qwen3) exported and loaded by transformers with the same
logits and the same greedy tokens, the tokenizer files giving our ids, the round trip back through train.py,
sample.py and evaluate.py, lm-evaluation-harness on an export, HF folders made by transformers loading into
ours, and the refusals. Offline, CPU, float32."""
import json
import os
from dataclasses import asdict

import pytest
import torch

from nash import hf
from nash.checkpoint import load_checkpoint, save_checkpoint
from conftest import ROOT, run_inline, run_script
from model import GPT, GPTConfig
from nash.tokenizer import EOT_ID, get_tokenizer

transformers = pytest.importorskip("transformers")

TINY = dict(n_layers=2, n_heads=4, d_model=32, d_ff=64, max_seq_len=32, dropout=0.0)
MAPPINGS = {  # name: (our settings, the transformers class they export to)
    "gpt2": (dict(), "GPT2LMHeadModel"),
    "gpt2_nobias_untied": (dict(bias=False, tie_weights=False), "GPT2LMHeadModel"),
    "llama_gqa": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, bias=False, tie_weights=False,
                       rope_theta=500.0), "LlamaForCausalLM"),
    "llama_bias_tied": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=True), "LlamaForCausalLM"),
    "qwen3": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=1, qk_norm=True, bias=False,
                   tie_weights=False, rope_theta=20000.0), "Qwen3ForCausalLM"),
    "mixtral": (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, bias=False, n_experts=4,
                     experts_top_k=2), "MixtralForCausalLM"),
}


def make(name, seed=0):
    """A tiny model of one mapping with weights far from init (norm gains and biases too), so that a wrong
    transpose, split, eps or rotation moves the logits visibly."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY, **MAPPINGS[name][0]))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
            else:
                p.normal_(1.0 if pname.endswith("weight") else 0.0, 0.2)
        model.transformer.wte.weight[model.config.vocab_size:].zero_()  # padding rows stay zero, as trained
        model.lm_head.weight[model.config.vocab_size:].zero_()
    return model.eval()


def make_run(tmp_path, name):
    """A run folder holding that model as best.pt, with settings and metrics like train.py's."""
    model = make(name)
    run = tmp_path / f"run_{name}"
    run.mkdir()
    settings = {"task": "pretrain", "dataset": "shakespeare", "data_dir": "", "batch_size": 4, "max_seq_len": 32,
                "grad_accum_steps": 2, "init_from": "scratch", **{k: v for k, v in MAPPINGS[name][0].items()}}
    for name in ("best.pt", "ckpt.pt"):
        save_checkpoint(str(run / name), {"model": model.state_dict(), "model_config": asdict(model.config),
                                          "step": 20, "settings": settings,
                                          "metrics": {"val_loss": 3.25, "perplexity": 25.79, "accuracy": 0.125}})
    return model, str(run)


def hf_model(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder).eval()


def max_diff(ours, theirs, idx):
    with torch.no_grad():
        return (ours(idx)[0] - theirs(idx).logits).abs().max().item()


# -----------------------------------------------------------------------------
# every mapping: transformers computes what we compute


@pytest.mark.slow
@pytest.mark.parametrize("name", list(MAPPINGS))
def test_transformers_gives_our_logits_and_greedy_tokens(name, tmp_path):
    model = make(name)
    out = tmp_path / "export"
    assert hf.CLASSES[hf.export_model(model, str(out))] == MAPPINGS[name][1]
    theirs = hf_model(out)
    assert type(theirs).__name__ == MAPPINGS[name][1]
    c = theirs.config
    assert c.vocab_size == 50257 and theirs.get_input_embeddings().weight.shape[0] == 50257  # padding trimmed
    assert c.tie_word_embeddings == model.config.tie_weights
    if model.config.pos_emb == "rope":
        assert c.rope_parameters["rope_theta"] == model.config.rope_theta and c.rms_norm_eps == 1e-5
        assert c.num_key_value_heads == model.config.kv_heads
    else:
        assert c.layer_norm_epsilon == 1e-5 and c.n_positions == 32
    idx = torch.randint(0, 50257, (3, 32))
    diff = max_diff(model, theirs, idx)
    print(f"{name}: max abs logit diff vs transformers {diff:.2e}")
    assert diff <= 1e-4
    # greedy generation: transformers' generate against our KV-cache generate at temperature 0
    prompt = torch.randint(0, 50257, (1, 5))
    ours = model.generate(prompt, 20, temperature=0.0, stop_token=EOT_ID)
    with torch.no_grad():
        their_tokens = theirs.generate(prompt, max_new_tokens=20, do_sample=False,
                                       attention_mask=torch.ones_like(prompt))
    assert their_tokens.tolist() == ours.tolist()
    # and back: hf.load_pretrained gives the same model, settings and all
    back = hf.load_pretrained(str(out)).eval()
    assert back.config == model.config
    with torch.no_grad():
        assert torch.equal(back(idx)[0], model(idx)[0])


def test_gpt2_without_bias_exports_zero_biases(tmp_path):
    model = make("gpt2_nobias_untied")
    hf.export_model(model, str(tmp_path / "x"))
    from safetensors.torch import load_file
    sd = load_file(tmp_path / "x" / "model.safetensors")
    biases = [k for k in sd if k.endswith(".bias")]
    assert len(biases) == 2 * 6 + 1 and all(not sd[k].any() for k in biases)
    assert "lm_head.weight" in sd and sd["lm_head.weight"].shape == (50257, 32)


TEXTS = ["Hello world", "<|endoftext|>ROMEO: O, she doth teach the torches to burn bright!<|endoftext|>",
         "  spaces   and\n\n\ttabs, 1234 numbers 's 're 've", "émoji 🎉, 中文, naïve café", " . , ! ?", "x" * 300,
         "a<|endoftext|>b <|endoftext|> c", "<|user_start|>Reverse: big red car<|user_end|><|assistant_start|>car"]


@pytest.mark.slow
@pytest.mark.parametrize("vocab_size", [50257, 50263])
def test_tokenizer_files_give_our_ids(vocab_size, tmp_path):
    """A GPT-2-vocabulary model gets <|endoftext|> as its one special token (the chat tokens' spellings are
    text to it); a chat model (50263 rows) gets the six chat tokens as specials too, at our ids."""
    torch.manual_seed(0)
    hf.export_model(GPT(GPTConfig(**TINY, vocab_size=vocab_size)), str(tmp_path / "x"))
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "x")
    enc = get_tokenizer()
    allowed = "all" if vocab_size == 50263 else {"<|endoftext|>"}
    for text in TEXTS:
        ids = enc.encode(text, allowed_special=allowed, disallowed_special=())
        assert theirs(text)["input_ids"] == ids, text
        assert theirs.decode(ids) == text
    assert (50259 in theirs(TEXTS[-1])["input_ids"]) == (vocab_size == 50263)  # <|user_start|>
    assert theirs.bos_token_id == theirs.eos_token_id == EOT_ID and len(theirs) == vocab_size
    gen = json.loads((tmp_path / "x" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == gen["bos_token_id"] == EOT_ID


# -----------------------------------------------------------------------------
# export.py: the script, its card, its refusals


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "qwen3"])
def test_round_trip_through_sample_evaluate_and_train(name, tmp_path, tiny_data, monkeypatch, capsys):
    model, run = make_run(tmp_path, name)
    out = str(tmp_path / "export")
    run_inline(monkeypatch, "export.py", f"--out_dir={run}", f"--output={out}")
    assert f"as {MAPPINGS[name][1]}" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == sorted(["config.json", "model.safetensors", "generation_config.json", "README.md",
                                              "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                              "vocab.json", "merges.txt"])
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporary folder left behind

    # sample.py --temperature=0 from the export == from the run == transformers' greedy generate
    flags = ["--device=cpu", "--start=ROMEO:", "--temperature=0", "--num_samples=1", "--max_new_tokens=12"]
    from_export = run_inline(monkeypatch, "sample.py", f"--init_from={out}", *flags)["samples"]
    from_run = run_inline(monkeypatch, "sample.py", f"--out_dir={run}", *flags)["samples"]
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    with torch.no_grad():
        gen = hf_model(out).generate(ids, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids))
    assert from_export == from_run == [tok.decode(gen[0, ids.size(1):])]

    # evaluate.py: the same loss on the same windows
    flags = ["--device=cpu", "--dtype=float32", "--dataset=tiny", f"--data_dir={tiny_data}", "--max_batches=2",
             "--batch_size=2"]
    a = run_inline(monkeypatch, "evaluate.py", f"--init_from={out}", *flags)["results"]
    b = run_inline(monkeypatch, "evaluate.py", f"--out_dir={run}", *flags)["results"]
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5) and a["tokens"] == b["tokens"] > 0

    # train.py: starts from the export's weights (one step at learning rate 0 keeps them, so we can look)
    train_out = tmp_path / "train"
    run_inline(monkeypatch, "train.py", f"--init_from={out}", f"--out_dir={train_out}", "--dataset=tiny",
               f"--data_dir={tiny_data}", "--max_steps=1", "--learning_rate=0", "--batch_size=2", "--max_seq_len=32",
               "--eval_interval=0", "--device=cpu", "--dtype=float32")
    state = load_checkpoint(str(train_out / "ckpt.pt"))
    assert GPTConfig(**state["model_config"]) == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k


def test_model_card(tmp_path, monkeypatch):
    _, run = make_run(tmp_path, "qwen3")
    out = tmp_path / "export"
    run_inline(monkeypatch, "export.py", f"--out_dir={run}", f"--output={out}")
    card = (out / "README.md").read_text()
    for words in ("Qwen3ForCausalLM", "qk_norm=True", "20 steps", f"{20 * 4 * 32 * 2:,} tokens", "3.2500",
                  "perplexity 25.79", "RoPE base 20000", "AutoModelForCausalLM.from_pretrained",
                  '"grad_accum_steps": 2'):
        assert words in card, words
    assert f"{make('qwen3').num_params():,}" in card


def test_export_of_a_trained_run_and_bfloat16(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "bf16"
    run_inline(monkeypatch, "export.py", f"--out_dir={tiny_run}", f"--output={out}", "--dtype=bfloat16")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    model = load_checkpoint(os.path.join(tiny_run, "best.pt"))
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ours = GPT(GPTConfig(**model["model_config"])).eval()
    ours.load_state_dict(model["model"])
    idx = torch.randint(0, 50257, (2, 32))
    assert 0 < max_diff(ours, theirs, idx) < 0.1  # rounded to bfloat16, so close but not exact
    assert "final val loss" in (out / "README.md").read_text()


def test_an_export_exports_again_unchanged(tmp_path, monkeypatch):
    """--init_from=DIR reads an export back (hf.load_pretrained) and writes the very same weights and config."""
    hf.export_model(make("llama_bias_tied"), str(tmp_path / "a"))
    run_inline(monkeypatch, "export.py", f"--init_from={tmp_path / 'a'}", f"--output={tmp_path / 'b'}")
    from safetensors.torch import load_file
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "config.json").read_text() == (tmp_path / "b" / "config.json").read_text()
    assert "not trained here" in (tmp_path / "b" / "README.md").read_text()


def export_error(monkeypatch, *args):
    with pytest.raises(SystemExit) as info:
        run_inline(monkeypatch, "export.py", *args)
    message = info.value.code
    assert isinstance(message, str) and message.startswith("error: ") and "\n" not in message, message
    return message


@pytest.mark.parametrize("settings, blocking", [
    (dict(mlp="relu2"), "mlp='relu2'"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="relu2"), "mlp='relu2'"),
    (dict(pos_emb="rope"), "norm='layernorm', mlp='gelu'"),
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(n_kv_heads=2), "n_kv_heads=2"),
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True, bias=True), "bias=True"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, n_experts=4, experts_top_k=1), "experts_top_k=1"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_experts=4), "bias=True"),
    (dict(n_experts=4), "pos_emb='learned'"),
    (dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", attn_sinks=1), "attn_sinks=1"),
])
def test_refusals_name_the_setting_and_what_exports(settings, blocking, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, **settings}))
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(str(run / "ckpt.pt"), {"model": model.state_dict(), "model_config": asdict(model.config),
                                           "step": 1, "settings": {}, "metrics": None})
    message = export_error(monkeypatch, f"--out_dir={run}", f"--output={tmp_path / 'out'}")
    assert blocking in message and "cannot export" in message
    for cls in ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen3ForCausalLM", "MixtralForCausalLM"):
        assert cls in message
    assert not (tmp_path / "out").exists()


def test_output_never_loses_files(tmp_path, monkeypatch):
    _, run = make_run(tmp_path, "llama_gqa")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    message = export_error(monkeypatch, f"--out_dir={run}", f"--output={out}")
    assert "not empty" in message and "--force" in message and (out / "notes.txt").read_text() == "mine"
    message = export_error(monkeypatch, f"--out_dir={run}", f"--output={run}", "--force")
    assert "holds a training run" in message and os.path.exists(os.path.join(run, "best.pt"))
    assert "is a file" in export_error(monkeypatch, f"--out_dir={run}", f"--output={out / 'notes.txt'}")
    assert "--output" in export_error(monkeypatch, f"--out_dir={run}")
    run_inline(monkeypatch, "export.py", f"--out_dir={run}", "--ckpt=latest", f"--output={out}", "--force")
    assert not (out / "notes.txt").exists() and hf.is_hf_folder(str(out))
    assert sorted(os.listdir(tmp_path)) == ["out", "run_llama_gqa"]  # nothing temporary left behind
    (tmp_path / "empty").mkdir()  # an empty folder is fine without --force
    run_inline(monkeypatch, "export.py", f"--out_dir={run}", f"--output={tmp_path / 'empty'}")
    assert hf.is_hf_folder(str(tmp_path / "empty"))


@pytest.mark.slow
def test_refusal_from_the_command_line(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "mlp": "relu2"}))
    save_checkpoint(str(tmp_path / "ckpt.pt"), {"model": model.state_dict(), "model_config": asdict(model.config),
                                                "step": 1, "settings": {}, "metrics": None})
    proc = run_script("export.py", f"--ckpt={tmp_path / 'ckpt.pt'}", f"--output={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: cannot export: mlp='relu2'")


# -----------------------------------------------------------------------------
# HF folders made by transformers itself load into ours, or are refused


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen3", "mixtral"])
def test_folders_saved_by_transformers_load_with_parity(arch, tmp_path):
    torch.manual_seed(0)
    kw = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=40, rms_norm_eps=1e-5, rope_theta=1234.0,
              tie_word_embeddings=arch == "qwen3")
    config = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config,
              "mixtral": lambda **kw: transformers.MixtralConfig(**kw, num_local_experts=4)}[arch](**kw)
    theirs = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.normal_(1.0, 0.2)
    theirs.save_pretrained(tmp_path)
    ours = hf.load_pretrained(str(tmp_path)).eval()
    assert ours.config.qk_norm == (arch == "qwen3") and ours.config.kv_heads == 2 and ours.config.rope_theta == 1234.0
    assert ours.config.n_experts == (4 if arch == "mixtral" else 0)
    idx = torch.randint(0, 300, (2, 40))
    assert max_diff(ours, theirs, idx) <= 1e-4


@pytest.mark.parametrize("change, words", [
    (dict(rms_norm_eps=1e-6), "rms_norm_eps 1e-06"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu'"),
    (dict(head_dim=16), "head_dim 16"),
    (dict(rope_scaling={"rope_type": "linear", "factor": 2.0}), "RoPE scaling 'linear'"),
    (dict(model_type="mistral"), "model_type 'mistral'"),
])
def test_folders_we_cannot_compute_are_refused(change, words, tmp_path, monkeypatch):
    cfg = hf.hf_config(GPTConfig(**TINY, **MAPPINGS["llama_gqa"][0]), "llama")
    cfg.update(change)
    if "rope_scaling" in change:
        cfg["rope_parameters"] = {**change["rope_scaling"], "rope_theta": 500.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: the config is refused first
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        hf.load_pretrained(str(tmp_path))
    with pytest.raises(SystemExit) as info:  # and in the scripts, one line
        run_inline(monkeypatch, "sample.py", f"--init_from={tmp_path}")
    assert str(info.value.code).startswith("error: ") and words in str(info.value.code)


# -----------------------------------------------------------------------------
# lm-evaluation-harness on an export, offline, with the local task in tests/lm_eval_task


@pytest.mark.slow
def test_lm_eval_runs_on_an_export(tmp_path, monkeypatch):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)  # the task's data_files path is relative to the repo
    hf.export_model(make("qwen3"), str(tmp_path / "export"))
    tasks = TaskManager(include_path="tests/lm_eval_task", include_defaults=False)  # as in the README
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={tmp_path / 'export'},dtype=float32",
                                      tasks=["nash_tiny_mc"], task_manager=tasks, device="cpu", batch_size=4)
    scores = results["results"]["nash_tiny_mc"]
    assert scores["sample_len"] == 8
    # the accuracy it reports is the one our model gives: the choice with the highest log-likelihood
    model, enc, correct = make("qwen3"), get_tokenizer(), 0
    with open(os.path.join(ROOT, "tests", "lm_eval_task", "nash_tiny_mc.jsonl")) as f:
        items = [json.loads(line) for line in f]
    for item in items:
        context = enc.encode(item["question"])
        scores_by_hand = []
        for choice in item["choices"]:
            ids = enc.encode(item["question"] + " " + choice)  # lm-eval's target_delimiter, " " 
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0][0].double(), -1)
            scores_by_hand.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
        correct += max(range(len(scores_by_hand)), key=scores_by_hand.__getitem__) == item["answer"]
    assert scores["acc,none"] == correct / len(items)
