"""
Export a trained run as a Hugging Face model folder, for transformers, lm-evaluation-harness, peft, vLLM, the hub.

    python export.py --out_dir=out --output=export/my-model             # the run's best checkpoint
    python export.py --out_dir=out --ckpt=latest --output=export/my-model --force
    python export.py --init_from=gpt2 --output=export/gpt2               # GPT-2 (or any HF folder) again
    python export.py --out_dir=out-lora --output=export/my-adapter --adapter_only   # a LoRA run's adapters, for peft

The folder holds config.json, model.safetensors, generation_config.json, GPT-2's tokenizer files
(tokenizer.json, vocab.json, merges.txt; <|endoftext|> is bos and eos) and a README.md model card. A run
trained on data with its own tokenizer (prepare.py --tokenizer_vocab_size) exports that one instead, as a
tokenizer.json with the very same ids.
`AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` load it offline, and
`--init_from=DIR` in train.py, sample.py and evaluate.py brings it back. The class follows the model's
settings (see hf.py): GPT-2 layout -> GPT2LMHeadModel, RoPE+RMSNorm+SwiGLU -> LlamaForCausalLM, plus
QK-norm -> Qwen3ForCausalLM, Mixture of Experts (top-k >= 2, no bias) -> MixtralForCausalLM; anything else is
refused with the setting that stands in the way.
The folder is written beside its destination and renamed into place: there is never half an export.
"""
import json
import os

import torch

from nash import hf
from nash import lora
from nash import tokenizer
from nash.checkpoint import load_model, run_settings
from configurator import configure, fail

# -----------------------------------------------------------------------------
# settings (python export.py --help lists them)
init_from = ""  # "" = the run in out_dir | a run folder | gpt2 ... gpt2-xl | a Hugging Face folder
out_dir = "out"  # the run folder train.py wrote
ckpt = "best"  # best (lowest val loss; the latest when no eval has run) | latest | a checkpoint file
output = ""  # the folder to write (new or empty; see force)
force = False  # replace a non-empty output folder
dtype = "float32"  # float32 (exact) | bfloat16 | float16: the dtype of the saved weights
adapter_only = False  # a LoRA run: only its adapters, in peft's format (else they are merged into the weights)
settings = configure(globals())
# -----------------------------------------------------------------------------

if not output:
    fail("say where to write the export with --output=DIR (a new or empty folder)")
if dtype not in ("float32", "bfloat16", "float16"):
    fail(f"dtype={dtype!r} should be float32, bfloat16 or float16")
try:
    hf.check_output(output, force)  # before loading anything: a refusal costs nothing
except hf.ExportError as e:
    fail(str(e))

model, state, source = load_model(init_from, out_dir, ckpt, "cpu")
try:
    arch = hf.architecture(model.config)
except hf.ExportError as e:
    fail(str(e))
cls = hf.class_name(model.config, arch)  # a verifier (score head): the sequence classifier
spec = tokenizer.model_spec(state, init_from)  # GPT-2's, or the tokenizer the run learnt (prepare.py)
write_tokenizer = tokenizer.write_gpt2_tokenizer if spec["name"] == "gpt2" else \
    lambda folder, config: tokenizer.write_trained_tokenizer(folder, config, spec)
if adapter_only:  # peft's adapter_config.json + adapter_model.safetensors, for the base exported on its own
    if not (state and state.get("lora")):
        fail(f"{source} holds no LoRA adapters (trained with lora_rank=0); export it without --adapter_only")
    base = lora.export_peft(state, model.config, output, force)
    how = (f"--init_from={base}" if base in hf.GPT2_NAMES else f"--ckpt={base}") if not hf.is_hf_folder(base) else ""
    print(f"exported the adapters of {source} in peft's format to {output}; they adapt {base}"
          + (f", exported by `python export.py {how} --output=BASE`" if how else "") + ": load them with "
          f"peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), {output!r})")
    raise SystemExit(0)


def model_card():
    """README.md: what the model is, how it was trained, how well it did, how to load it."""
    c, run = model.config, run_settings(state or {})
    name = os.path.basename(os.path.abspath(output))
    rows = [("architecture", f"`{cls}` (Nash-LLM: pos_emb={c.pos_emb}, norm={c.norm}, mlp={c.mlp}, "
                             f"qk_norm={c.qk_norm}, bias={c.bias}, tie_weights={c.tie_weights})"),
            ("parameters", f"{model.num_params():,}"),
            ("layers / heads / kv heads", f"{c.n_layers} / {c.n_heads} / {c.kv_heads}"),
            ("d_model / d_ff / head_dim", f"{c.d_model} / {c.d_ff} / {c.head_dim}"),
            ("context", f"{c.max_seq_len} tokens" + (f", RoPE base {c.rope_theta:g}" if c.pos_emb == "rope" else "")),
            ("vocabulary", f"{c.vocab_size:,} (GPT-2 BPE; `<|endoftext|>` = {tokenizer.EOT_ID} is bos and eos)"
                           if spec["name"] == "gpt2" else f"{c.vocab_size:,} ({spec['name']}, a byte-level BPE learnt by "
                           f"Nash-LLM; `<|endoftext|>` = {len(spec['tokens'])} is bos and eos)")]
    if state:
        tokens = state["step"] * run.get("batch_size", 0) * run.get("max_seq_len", 0) * run.get("grad_accum_steps", 1)
        rows += [("trained", f"{state['step']:,} steps, {tokens:,} tokens, objective {run.get('objective', 'pretrain')} on "
                             f"{run.get('data_dir') or run.get('dataset', '?')}"
                             + (f", from {run['init_from']}" if run.get("init_from") not in (None, "scratch") else ""))]
        if state.get("metrics"):
            m = state["metrics"]
            if model.config.score_head:  # a verifier's eval (nash/objectives/verifier.py)
                rows.append(("final val loss", f"{m['val_loss']:.4f} (binary cross-entropy; accuracy "
                                               f"{100 * m['accuracy']:.1f}%, best-of-{m['n']} {100 * m['best_of_n']:.1f}%)"))
            else:
                rows.append(("final val loss", f"{m['val_loss']:.4f} (perplexity {m['perplexity']:.2f}, "
                                               f"next-token accuracy {100 * m['accuracy']:.2f}%)"))
    else:
        rows.append(("weights", f"from {source} (not trained here)"))
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    trained = f"\n## Training settings\n\n```json\n{json.dumps(run, indent=2)}\n```\n" if run else ""
    if model.config.score_head:
        return verifier_card(name, table, trained)
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [nash-llm, {arch}]
---
# {name}

A {cls} language model trained with Nash-LLM and exported by `export.py` from
`{source}`, in {dtype}.

| | |
|---|---|
{table}
{trained}
## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{name}")
model = AutoModelForCausalLM.from_pretrained("{name}")
ids = tokenizer("<|endoftext|>ROMEO:", return_tensors="pt").input_ids  # documents start after <|endoftext|>
print(tokenizer.decode(model.generate(ids, max_new_tokens=50, do_sample=True, top_k=200)[0]))
```

Back in Nash-LLM: `python sample.py --init_from={name}` (or train.py / evaluate.py with `--init_from`).
Context is {c.max_seq_len} tokens: {"positions beyond it do not exist (learned position embeddings)"
                                    if c.pos_emb == "learned" else "RoPE runs past it, untrained"}.
"""


def verifier_card(name, table, trained):
    """README.md of a verifier: a one-label sequence classifier, scoring a rendered conversation at its last token."""
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [nash-llm, verifier, {arch}]
---
# {name}

A verifier (outcome reward model) trained with Nash-LLM (objective=verifier) and exported by `export.py` from
`{source}`, in {dtype}, as a {cls} with one label: sigmoid(logit) is its probability that the conversation's last
reply is right. It reads the text as Nash-LLM renders a chat (its special tokens: `<|endoftext|>`, then
`<|user_start|>` question `<|user_end|>` `<|assistant_start|>` reply `<|assistant_end|>`) at the last token that is
not `pad_token_id` (`<|endoftext|>`, which only starts a conversation), so pad on the right with it.

| | |
|---|---|
{table}
{trained}
## Use

```python
import torch
from transformers import AutoModelForSequenceClassification

model = AutoModelForSequenceClassification.from_pretrained("{name}")
# ids: nash.tokenizer.render_conversation(enc, messages + [{{"role": "assistant", "content": reply}}])[0]
print(torch.sigmoid(model(torch.tensor([ids])).logits[0, 0]))
```

In Nash-LLM: `nash.verifier.score_replies` on the run itself, e.g. best-of-N with `python evaluate.py --num_samples=N --verifier=RUN`.
"""


try:
    hf.export_model(model, output, card=model_card(), force=force, write_tokenizer=write_tokenizer,
                    dtype=getattr(torch, dtype))
except hf.ExportError as e:
    fail(str(e))
print(f"exported {source} as {cls} ({model.num_params():,} parameters, {dtype}) to {output}")
