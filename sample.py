"""
Sample text from a trained run, or from OpenAI's GPT-2, streamed to the terminal as it is generated.

    python sample.py --out_dir=out                          # the run's best checkpoint
    python sample.py --out_dir=out --ckpt=latest --start="ROMEO:" --num_samples=5
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --temperature=0.7 --top_p=0.9

- The prompt is --start, or the contents of a file with --start=FILE:path. For a pretraining run (or GPT-2)
  the default, <|endoftext|>, starts a new document, as every training document was (prepare.py puts
  an end-of-text before each); the literal <|endoftext|> is that token anywhere in a prompt.
- A checkpoint fine-tuned with objective=sft is prompted the way it was trained: the prompt's text as-is,
  then the completion it generates, up to end-of-text. Write the prompt exactly like the training
  prompts, trailing newline included if they had one (in bash: --start=$'Reverse: big red car\n').
- Samples come one after another, each streamed token by token through the engine's decode loop (KV cache,
  nash/engine.py). Bytes are decoded incrementally (engine.Decoder), so a character whose UTF-8 bytes span two
  tokens prints whole, once complete. A sample ends at the model's context (max_seq_len tokens with the prompt);
  --rolling_cache (RoPE models) goes on past it.
- The same seed gives the same text. Only the samples go to stdout (what was loaded goes to stderr),
  so `python sample.py ... > samples.txt` keeps just the text.
"""
import sys

import torch

from nash import tokenizer
from nash.checkpoint import load_model, run_settings as saved_settings
from nash.common import inference_setup
from nash.engine import Decoder, Sampling, stream
from configurator import check_range, check_sampling, configure, fail

# -----------------------------------------------------------------------------
# settings (python sample.py --help lists them)
init_from = ""  # "" = the run in out_dir | a run folder or checkpoint file | gpt2 ... gpt2-xl | an HF folder (export.py's)
out_dir = "out"  # the run folder train.py wrote
ckpt = "best"  # best (lowest val loss; the latest when no eval has run) | latest | a checkpoint file
start = "<|endoftext|>"  # the prompt: text, or FILE:path to read it from a file
num_samples = 3  # samples, one after another
max_new_tokens = 200  # tokens generated per sample (fewer if it stops at end-of-text)
temperature = 0.8  # < 1 sharper, > 1 more random; 0 = always the most likely token (greedy)
top_k = 200  # sample only among the k most likely tokens; 0 = off
top_p = 1.0  # sample only among the most likely tokens that together reach probability top_p; 1.0 = off
seed = 1337  # the same seed gives the same samples
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (CUDA: bfloat16 where supported, else float16; float32 elsewhere) | float32 | bfloat16 | float16
stop_at_eot = True  # end a sample at end-of-text; False prints <|endoftext|> and goes on
rolling_cache = False  # past max_seq_len: cache the sinks (or first 4 tokens) + recent tokens, O(1) per token (RoPE)
settings = configure(globals())
# -----------------------------------------------------------------------------
# checks that need no model: one clear line each, before any loading

check_sampling(temperature, top_k, top_p)
check_range("seed", seed, low=0, below=2**63)
if num_samples < 1 or max_new_tokens < 1:
    fail(f"num_samples={num_samples} and max_new_tokens={max_new_tokens} must be at least 1")
prompt = start
if start.startswith("FILE:"):
    path = start[len("FILE:"):]
    try:
        with open(path, encoding="utf-8") as f:
            prompt = f.read()
    except OSError as e:
        fail(f"cannot read the prompt file {path} ({e.strerror}); write --start=FILE:path to an existing text file")
    except UnicodeDecodeError:
        fail(f"the prompt file {path} is not UTF-8 text")

device, dtype, ctx = inference_setup(device, dtype)

# -----------------------------------------------------------------------------
# the model and the prompt
model, state, where = load_model(init_from, out_dir, ckpt, device)
run_settings = saved_settings(state) if state else {}
sft = run_settings.get("objective") in ("sft", "dpo")  # both learned prompt -> completion
if run_settings.get("objective") == "chat":
    fail(f"{where} was fine-tuned on conversations (objective=chat); talk to it with `python chat.py --out_dir={out_dir}`")
if rolling_cache and model.config.pos_emb != "rope":
    fail(f"rolling_cache needs a model with pos_emb=rope, and {where} has learned positions: every cached key/value "
         f"carries its absolute position, so past the context only the exact window works (drop --rolling_cache)")

enc = tokenizer.from_spec(tokenizer.model_spec(state, init_from))  # the run's own (GPT-2's for GPT-2 weights)
eot = enc.eot_token
if sft:
    if start == "<|endoftext|>":
        fail(f"{where} was fine-tuned on prompts and completions (objective=sft); give it a prompt written like those of "
             f"its training data, with --start=TEXT or --start=FILE:path")
    prompt_ids = enc.encode_ordinary(prompt)  # exactly as data.py encodes SFT prompts: no special tokens
else:
    prompt_ids = enc.encode(prompt, allowed_special={"<|endoftext|>"}, disallowed_special=())  # chat tokens stay text
if not prompt_ids:
    fail(f"the prompt {start!r} tokenises to nothing; give some text with --start=TEXT or --start=FILE:path")
if sft and len(prompt_ids) >= model.config.max_seq_len:
    print(f"warning: the prompt has {len(prompt_ids)} tokens, as many as the model's context "
          f"({model.config.max_seq_len}); only its end is seen", file=sys.stderr)
info = f"step {state['step']}" if state else "Hugging Face weights"
if state and state.get("metrics"):
    info += f", val loss {state['metrics']['val_loss']:.4f}"
print(f"sampling from {where} ({info}{', fine-tuned: prompt -> completion' if sft else ''}) on {device}, {dtype}",
      file=sys.stderr)
echo = enc.decode([t for t in prompt_ids if t != eot])  # the prompt as text; a document start is not text

# -----------------------------------------------------------------------------
# generate, one sample after another, printing each token as it comes
generator = torch.Generator(device=device).manual_seed(seed)
torch.manual_seed(seed)
samples = []  # the generated text of each sample (without the prompt)
try:
    for i in range(num_samples):
        if sft:
            print("== prompt ==")
            print(echo, end="" if echo.endswith("\n") else "\n")
            print("== completion ==")
        else:
            print(echo, end="", flush=True)
        decoder, pieces = Decoder(enc), []  # holds back an incomplete character
        sampling = Sampling(temperature=temperature, top_k=top_k or None, top_p=top_p, max_new_tokens=max_new_tokens)
        for t in stream(model, prompt_ids, sampling, stop_ids={eot} if stop_at_eot else (), generators=[generator],
                        rolling_cache=rolling_cache, ctx=ctx):
            pieces.append(decoder(t))
            print(pieces[-1], end="", flush=True)
        pieces.append(decoder.flush())
        samples.append("".join(pieces))
        print(pieces[-1])
        if i < num_samples - 1:
            print("-" * 40)
except KeyboardInterrupt:
    print()
    sys.exit(130)
