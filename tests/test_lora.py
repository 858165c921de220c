"""LoRA (lora.py) on its own and through train.py, sample.py and evaluate.py: frozen base, only adapters in the
optimizer, merged == unmerged, adapter checkpoints that name their base, exact resume, clear errors."""
import copy
import os
import re
import shutil

import pytest
import torch
import torch.nn.functional as F

from nash import lora
from nash.checkpoint import load_checkpoint, model_from_checkpoint
from conftest import TINY_MODEL, TINY_TRAINING, error_line, run_inline, run_script
from nash.data import SFTExamples
from model import GPT, GPTConfig
from nash.tokenizer import get_tokenizer

LORA = ["--lora_rank=4", "--lora_alpha=8", "--lora_targets=all", "--learning_rate=1e-2"]


def lora_sft(out, base, sft_data, *flags, check=True):
    return run_script("train.py", *TINY_MODEL, *TINY_TRAINING, "--objective=sft", "--dataset=echo", f"--data_dir={sft_data}",
                      f"--init_from={base}", f"--out_dir={out}", *LORA, *flags, check=check)


@pytest.fixture(scope="module")
def lora_run(tiny_sft_run, sft_data, tmp_path_factory):
    """LoRA SFT (rank 4, every target, adapter dropout) on top of the tiny SFT run; returns (out_dir, stdout)."""
    out = tmp_path_factory.mktemp("runs") / "lora"
    proc = lora_sft(out, tiny_sft_run, sft_data, "--lora_dropout=0.1")
    return str(out), proc.stdout


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{**dict(n_layers=2, n_heads=4, n_kv_heads=2, d_model=32, d_ff=48, max_seq_len=16,
                                   vocab_size=100, dropout=0.0), **kw}))


@pytest.mark.parametrize("targets,names", [
    ("attention", ["attn.c_attn", "attn.c_proj"]),
    ("mlp", ["mlp.c_fc", "mlp.c_proj"]),
    ("all", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
])
def test_targets_freeze_the_base_and_only_adapters_reach_the_optimizer(targets, names):
    model = lora.apply_lora(tiny_gpt(mlp="swiglu"), rank=4, alpha=8, targets=targets)
    wrapped = [n for n, _ in lora.lora_layers(model)]
    assert wrapped == [f"transformer.h.{i}.{n}" for i in range(2) for n in names]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{w}.lora_{ab}.weight" for w in wrapped for ab in "AB"}
    (opt,) = model.configure_optimizers("adamw", 1e-3)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    # rank * (in + out) per wrapped layer; c_attn is (n_heads + 2 kv) * head_dim = 64 wide, swiglu's c_fc 2 * 48
    shapes = {"attn.c_attn": (32, 64), "attn.c_proj": (32, 32), "mlp.c_fc": (32, 96), "mlp.c_proj": (48, 32)}
    assert lora.count_trainable(model)[0] == 2 * sum(4 * sum(shapes[n]) for n in names)
    # a fresh adapter (B = 0) changes nothing, and the base keys are unchanged
    assert set(model.state_dict()) - set(lora.adapter_state_dict(model)) == set(tiny_gpt(mlp="swiglu").state_dict())


def test_merged_equals_unmerged_and_disabled_equals_base():
    base = tiny_gpt()
    model = lora.apply_lora(tiny_gpt(), rank=4, alpha=8, targets="all")
    with torch.no_grad():
        for _, m in lora.lora_layers(model):
            m.lora_B.weight.normal_(0, 0.5)  # adapters that do something
    idx = torch.randint(0, 100, (3, 16))
    with torch.no_grad():
        adapted, base_logits = model(idx)[0], base(idx)[0]
        with lora.adapters_disabled(model):
            assert torch.equal(model(idx)[0], base_logits)
        assert (adapted - base_logits).abs().max() > 0.1
        merged = lora.merge_lora(model)
        assert not lora.lora_layers(merged) and type(merged.transformer.h[0].attn.c_attn) is torch.nn.Linear
        torch.testing.assert_close(merged(idx)[0], adapted, atol=1e-5, rtol=1e-5)
        assert set(merged.state_dict()) == set(base.state_dict())


def test_adapter_run_trains_only_adapters_and_names_its_base(lora_run, tiny_sft_run):
    out, stdout = lora_run
    state = load_checkpoint(os.path.join(out, "best.pt"))
    assert set(state["model"]) and all(".lora_A." in k or ".lora_B." in k for k in state["model"])  # no base copy
    assert state["lora"]["base"] == os.path.abspath(os.path.join(tiny_sft_run, "best.pt"))
    assert {k: state["lora"][k] for k in ("rank", "alpha", "targets", "dropout")} == \
        {"rank": 4, "alpha": 8.0, "targets": "all", "dropout": 0.1}
    n = sum(t.numel() for t in state["model"].values())
    line = re.search(r"LoRA rank 4 on all of .*: ([\d,]+) trainable parameters of ([\d,]+) \(([\d.]+)%\)", stdout)
    assert line and int(line[1].replace(",", "")) == n
    assert float(line[3]) == pytest.approx(100 * n / int(line[2].replace(",", "")), abs=0.01)
    # the base stayed frozen: the unmerged model's base weights are the base run's, bit for bit
    model = model_from_checkpoint(state, merge_lora=False)
    base = load_checkpoint(os.path.join(tiny_sft_run, "best.pt"))["model"]
    for k, v in model.state_dict().items():
        if k in base:
            assert torch.equal(v, base[k]), k
    assert all(m.lora_B.weight.abs().max() > 0 for _, m in lora.lora_layers(model))  # the adapters trained


def test_adapter_resume_is_exact(tiny_sft_run, sft_data, tmp_path):
    full, half = tmp_path / "full", tmp_path / "half"
    flags = ["--lora_dropout=0.1", "--lr_decay_steps=20"]
    lora_sft(full, tiny_sft_run, sft_data, *flags)
    lora_sft(half, tiny_sft_run, sft_data, *flags, "--max_steps=10")
    lora_sft(half, "resume", sft_data, *flags)
    a, b = (load_checkpoint(os.path.join(d, "ckpt.pt")) for d in (full, half))
    assert b["step"] == 20 and a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    # resuming with other LoRA settings is refused
    changed = lora_sft(half, "resume", sft_data, *flags, "--lora_rank=8", "--max_steps=30", check=False)
    assert "lora_rank=8 where the run has" in error_line(changed)


def manual_merge(state, base_run):
    """The adapted model built by hand from the checkpoint's tensors: W + alpha / r * B A on the base's weights."""
    base = load_checkpoint(os.path.join(base_run, "best.pt"))
    model = model_from_checkpoint(base, dropout=0.0)
    sd = model.state_dict()
    scale = state["lora"]["alpha"] / state["lora"]["rank"]
    with torch.no_grad():
        for k, A in state["model"].items():
            if k.endswith("lora_A.weight"):
                B = state["model"][k.replace("lora_A", "lora_B")]
                sd[k.replace(".lora_A.weight", ".weight")] += scale * B @ A
    return model.eval()


def test_sample_and_evaluate_load_an_adapter_run(lora_run, tiny_sft_run, sft_data, monkeypatch, capsys):
    out, _ = lora_run
    state = load_checkpoint(os.path.join(out, "best.pt"))
    model = manual_merge(state, tiny_sft_run)
    enc = get_tokenizer()
    prompt = "Echo: cat\n"
    ids = enc.encode_ordinary(prompt)
    tokens = model.generate(torch.tensor([ids]), 6, temperature=0.0)[0, len(ids):].tolist()
    g = run_inline(monkeypatch, "sample.py", f"--out_dir={out}", f"--start={prompt}", "--temperature=0",
                   "--num_samples=1", "--max_new_tokens=6", "--stop_at_eot=False", "--device=cpu")
    assert g["samples"] == [enc.decode(tokens)]  # 6 tokens, end-of-text or not
    # evaluate.py: the completion loss of the hand-merged model on the run's val set
    g = run_inline(monkeypatch, "evaluate.py", f"--out_dir={out}", "--device=cpu", "--max_examples=2")
    data = SFTExamples(os.path.join(sft_data, "val.jsonl"), 32)
    nll = n = 0
    with torch.no_grad():
        for x, y in data.eval_batches(8, 32):
            logits = model(x)[0]
            nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1,
                                   reduction="sum").item()
            n += (y != -1).sum().item()
    assert g["results"]["loss"] == pytest.approx(nll / n, rel=1e-5)


def test_lora_errors_are_one_line(tiny_sft_run, lora_run, sft_data, tiny_data, tmp_path):
    out, _ = lora_run
    proc = run_script("train.py", *TINY_MODEL, "--lora_rank=4", "--dataset=tiny", f"--data_dir={tiny_data}",
                      "--init_from=" + tiny_sft_run, f"--out_dir={tmp_path / 'a'}", check=False)
    assert "is for fine-tuning" in error_line(proc)
    proc = lora_sft(tmp_path / "b", "scratch", sft_data, check=False)
    assert "starts from a trained model" in error_line(proc)
    proc = lora_sft(tmp_path / "c", tiny_sft_run, sft_data, "--lora_targets=qkv", check=False)
    assert "lora_targets='qkv' should be one of attention, mlp, all" in error_line(proc)
    # an adapter run whose base has been replaced (or removed) since is refused, not silently mis-loaded
    base = tmp_path / "base"
    shutil.copytree(tiny_sft_run, base)
    lora_sft(tmp_path / "d", base, sft_data, "--max_steps=2", "--eval_interval=0")
    other = load_checkpoint(os.path.join(base, "best.pt"))
    other["model"]["transformer.h.0.attn.c_attn.weight"] += 1.0
    torch.save(other, os.path.join(base, "best.pt"))
    proc = run_script("sample.py", f"--out_dir={tmp_path / 'd'}", "--start=Echo: a\n", check=False)
    assert "whose weights have changed since it was trained" in error_line(proc)
    shutil.rmtree(base)
    proc = run_script("evaluate.py", f"--out_dir={tmp_path / 'd'}", check=False)
    assert "no longer exists" in error_line(proc)


LLAMA = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=1, bias=False, tie_weights=False)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [{}, LLAMA, {**LLAMA, "qk_norm": True}], ids=["gpt2", "llama", "qwen3"])
def test_peft_loads_the_exported_adapter_with_the_merged_models_logits(tmp_path, shape):
    """GPT-2 keeps c_attn fused (Conv1D, fan_in_fan_out); Llama/Qwen3 split c_attn into q/k/v_proj (with GQA) and
    SwiGLU's c_fc into gate/up_proj, each with the shared A and its rows of B: peft must compute the same."""
    from nash import hf
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base = tiny_gpt(**{"n_heads": 4, "n_kv_heads": None, "d_ff": 64, "vocab_size": 50257, **shape}).eval()
    model = lora.apply_lora(copy.deepcopy(base), rank=4, alpha=8.0, targets="all")
    with torch.no_grad():
        for _, m in lora.lora_layers(model):
            m.lora_B.weight.normal_(0, 0.3)
    info = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": "all", "base": str(tmp_path / "base")}
    hf.export_model(base, str(tmp_path / "base"))
    lora.export_peft({"model": lora.adapter_state_dict(model), "lora": info}, base.config, str(tmp_path / "adapter"))
    assert sorted(os.listdir(tmp_path / "adapter")) == ["adapter_config.json", "adapter_model.safetensors"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                           str(tmp_path / "adapter")).eval()
    per_layer = 4 if not shape else 7  # c_attn c_proj c_fc c_proj | q k v o gate up down
    assert sum(1 for n, _ in peft_model.named_modules() if n.endswith(".lora_A.default")) == 2 * per_layer
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        ours = lora.merge_lora(model)(idx)[0]
        assert (ours - base(idx)[0]).abs().max() > 1e-2  # the adapters matter
        torch.testing.assert_close(peft_model(idx).logits, ours, atol=1e-4, rtol=1e-4)


def test_export_merges_by_default_and_writes_peft_with_adapter_only(lora_run, tiny_sft_run, tmp_path, monkeypatch,
                                                                       capsys):
    """The README's commands: export.py merges an adapter run; --adapter_only writes peft's files for the base,
    exported on its own; peft on them gives the merged export's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    out, _ = lora_run
    run_inline(monkeypatch, "export.py", f"--out_dir={out}", f"--output={tmp_path / 'merged'}")
    with pytest.raises(SystemExit) as done:
        run_inline(monkeypatch, "export.py", f"--out_dir={out}", f"--output={tmp_path / 'adapter'}", "--adapter_only")
    assert done.value.code == 0
    base = os.path.join(tiny_sft_run, "best.pt")
    assert f"python export.py --ckpt={base} --output=BASE" in capsys.readouterr().out
    run_inline(monkeypatch, "export.py", f"--ckpt={base}", f"--output={tmp_path / 'base'}")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                                           str(tmp_path / "adapter")).eval()
    idx = torch.randint(0, 50257, (2, 32))
    with torch.no_grad():
        ours = model_from_checkpoint(load_checkpoint(os.path.join(out, "best.pt"))).eval()(idx)[0]
        torch.testing.assert_close(merged(idx).logits, ours, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(peft_model(idx).logits, ours, atol=1e-4, rtol=1e-4)
    with pytest.raises(SystemExit, match="holds no LoRA adapters"):  # a run without adapters
        run_inline(monkeypatch, "export.py", f"--out_dir={tiny_sft_run}", f"--output={tmp_path / 'x'}",
                   "--adapter_only")
