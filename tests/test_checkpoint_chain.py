"""Chaining stages (issue 24): each run starts from the one before, pretrain -> sft / chat -> dpo, each with and
without LoRA, as the one-command pipeline chains them. A LoRA run's adapters are merged into the next stage's
starting weights, which then train as asked: all of them (full), or new adapters (lora_rank) on the merged model."""
import os

import pytest
import torch

from conftest import TINY_MODEL, TINY_TRAINING, run_inline
from nash.checkpoint import load_base, load_checkpoint, model_from_checkpoint
from test_dpo import prefs  # noqa: F401  (the preference set, a fixture)

QUICK = ["--max_steps=2", "--eval_interval=0", "--log_interval=1", "--warmup_steps=0"]
LORA = ["--lora_rank=4", "--lora_targets=attention"]  # the MLP stays frozen: a LoRA run must not move it
STAGES = {  # stage -> (task flags, LoRA flags)
    "sft": (["--objective=sft", "--dataset=echo"], []), "sft+lora": (["--objective=sft", "--dataset=echo"], LORA),
    "chat": (["--objective=chat", "--dataset=demo"], []), "chat+lora": (["--objective=chat", "--dataset=demo"], LORA),
    "dpo": (["--objective=dpo", "--dataset=colours"], []), "dpo+lora": (["--objective=dpo", "--dataset=colours"], LORA),
}


def train_stage(monkeypatch, stage, start, out, data_dirs):
    task_flags, lora_flags = STAGES[stage]
    data_dir = data_dirs[stage.split("+")[0]]
    run_inline(monkeypatch, "train.py", *TINY_MODEL, *TINY_TRAINING, *QUICK, *task_flags, *lora_flags,
               f"--data_dir={data_dir}", f"--init_from={start}", f"--out_dir={out}")
    return str(out)


FIRST = (("pretrain", "sft"), ("pretrain", "sft+lora"), ("pretrain", "chat"), ("chat", "chat+lora"))


@pytest.fixture(scope="module")
def first_stages(tiny_run, sft_data, chat_data, prefs, tmp_path_factory):  # noqa: F811
    """The runs that later stages start from: pretrain, then sft / chat with and without LoRA on it (LoRA on chat
    starts from the full chat run: the pretrained model has no rows for the chat tokens)."""
    monkeypatch = pytest.MonkeyPatch()
    data_dirs = {"sft": sft_data, "chat": chat_data, "dpo": prefs}
    root = tmp_path_factory.mktemp("chain")
    runs = {"pretrain": tiny_run}
    for start, stage in FIRST:
        runs[stage] = train_stage(monkeypatch, stage, runs[start], root / stage, data_dirs)
    monkeypatch.undo()
    return runs, data_dirs


def weights(run):
    """The model a run ends with, adapters merged, as the next stage starts from it."""
    return load_base(run).state_dict()


@pytest.mark.parametrize("start,stage", [
    *FIRST, *[(start, stage) for start in ("sft", "sft+lora", "chat", "chat+lora")
      for stage in (start.split("+")[0], start.split("+")[0] + "+lora", "dpo", "dpo+lora")],
])
def test_each_stage_trains_from_the_one_before(first_stages, start, stage, tmp_path, monkeypatch):
    runs, data_dirs = first_stages
    out = runs[stage] if (start, stage) in FIRST else train_stage(monkeypatch, stage, runs[start], tmp_path / "next", data_dirs)
    before, after = weights(runs[start]), weights(out)
    state = load_checkpoint(os.path.join(out, "ckpt.pt"))
    mlp, attn = "transformer.h.0.mlp.c_fc.weight", "transformer.h.0.attn.c_attn.weight"
    if stage.endswith("+lora"):  # new adapters on the merged start: only they are saved, and they moved attention
        assert os.path.dirname(state["lora"]["base"]) == os.path.abspath(runs[start])
        assert all(".lora_" in k for k in state["model"])
        assert torch.equal(after[mlp], before[mlp])
    else:  # full fine-tuning: every weight trains, the MLP's too (frozen, it could not move)
        assert state["lora"] is None and mlp in state["model"]
        assert not torch.equal(after[mlp], before[mlp])
    assert not torch.equal(after[attn], before[attn])
    if start.endswith("+lora"):  # the start was the merged model: base + its adapters, not the bare base
        base = model_from_checkpoint(load_checkpoint(load_checkpoint(os.path.join(runs[start], "ckpt.pt"))["lora"]
                                                     ["base"])).state_dict()
        assert not torch.equal(before[attn], base[attn])
