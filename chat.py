"""
Talk to a chat model (a run trained with objective=chat): in the terminal, or in a browser and through an
OpenAI-compatible API with --serve.

    python chat.py --out_dir=out-chat-demo                         # terminal chat, replies stream as generated
    python chat.py --out_dir=out-chat-demo --prompt="Who are you?"  # one answer, then exit (for scripts)
    echo "Reverse: red fox runs" | python chat.py                   # stdin that is not a terminal: line by line
    python chat.py --out_dir=out-chat-demo --serve --port=8000      # http://127.0.0.1:8000 and /v1/chat/completions
    NASH_API_KEY=secret python chat.py --serve --host=0.0.0.0       # shared: /v1 needs Authorization: Bearer secret

A model trained to call the calculator (config/tools_demo.py) does so mid-reply; the call and its result show as
"[calculator: 37 * 24 -> 888]" (--tools=0: the model gets no calculator and must write the results itself).

In the terminal: /clear starts a new conversation, /system TEXT sets the system prompt (and starts over),
/quit or Ctrl-D leaves, Ctrl-C stops a reply. The KV cache is kept across turns, so each turn only
computes the new message (engine.py). When the conversation outgrows the model's context, the oldest
turns are dropped, and chat.py says so; with --rolling_cache (RoPE models) nothing is dropped and replies are
not cut at the context: the KV cache keeps the sinks (or first tokens) and the most recent tokens, StreamingLLM's
approximation, at a constant cost per token.
"""
import os
import sys

from nash.checkpoint import load_model
from nash.common import inference_setup
from configurator import check_sampling, configure, fail

# -----------------------------------------------------------------------------
# settings (python chat.py --help lists them)
out_dir = "out-chat-demo"  # the run folder of a chat model (train.py objective=chat)
init_from = ""  # another run folder or checkpoint file instead of out_dir
ckpt = "best"  # best | latest | a checkpoint file
system = ""  # system prompt, the first message of every conversation; "" = none
prompt = ""  # answer this one message, print the reply and exit
temperature = 0.6  # < 1 sharper, > 1 more random; 0 = always the most likely token (greedy)
top_k = 50  # sample only among the k most likely tokens; 0 = off
top_p = 1.0  # sample only among the most likely tokens that together reach probability top_p; 1.0 = off
max_new_tokens = 256  # the longest reply, in tokens (also cut where the context ends, unless rolling_cache)
rolling_cache = False  # past the context: cache the sinks (or first 4 tokens) + recent tokens, O(1) per token (RoPE)
tools = True  # replies may call the calculator (a model trained with tool calls, e.g. config/tools_demo.py); 0 = off
seed = -1  # >= 0: the same seed gives the same replies; -1 = random
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (bfloat16 on CUDA where supported, float32 elsewhere) | float32 | bfloat16 | float16
serve = False  # serve a web page and an OpenAI-compatible API instead of the terminal chat
host = "127.0.0.1"  # --serve: the address to listen on (0.0.0.0 = every interface: anyone who can reach you)
port = 8000  # --serve: the port
api_key = ""  # --serve: clients must send Authorization: Bearer KEY on /v1; "" = $NASH_API_KEY (kept out of ps), or none
max_body_bytes = 1 << 20  # --serve: the largest request body; larger ones get 413 before they are read
max_queue = 16  # --serve: requests that may wait behind the one being answered; more get 503 with Retry-After
max_reply_tokens = 0  # --serve: the largest max_tokens a request may ask; 0 = the context (rolling_cache: 4096)
header_timeout = 10.0  # --serve: seconds a connection may take to send a request's headers, then it is closed
body_timeout = 30.0  # --serve: seconds a request's body may take to arrive, then 408
settings = configure(globals())
# -----------------------------------------------------------------------------

check_sampling(temperature, top_k, top_p)
if max_new_tokens < 1:
    fail(f"max_new_tokens={max_new_tokens} must be at least 1")
if not 0 < port < 65536:
    fail(f"port={port} is not a TCP port (1 to 65535)")
if max_body_bytes < 1:
    fail(f"max_body_bytes={max_body_bytes} must be at least 1 (bytes; the default, 1048576, is 1 MiB)")
if max_queue < 0:
    fail(f"max_queue={max_queue} cannot be negative; 0 lets in only the request being answered")
if max_reply_tokens < 0:
    fail(f"max_reply_tokens={max_reply_tokens} cannot be negative; 0 = the model's context (4096 with rolling_cache)")
for name in ("header_timeout", "body_timeout"):
    if not 0 < globals()[name] <= 3600:
        fail(f"{name}={globals()[name]} must be a number of seconds from above 0 to 3600")
api_key = api_key or os.environ.get("NASH_API_KEY", "")

import torch  # noqa: E402  (after the checks: --help and bad flags answer at once)

from nash.engine import ChatEngine, Conversation, Sampling  # noqa: E402
from nash.tools import shown_tokens  # noqa: E402
from nash.tokenizer import checkpoint_spec, from_spec  # noqa: E402

device, dtype, ctx = inference_setup(device, dtype)
model, state, where = load_model(init_from, out_dir, ckpt, device)
if rolling_cache and model.config.pos_emb != "rope":
    fail(f"rolling_cache needs a model with pos_emb=rope, and {where} has learned positions: every cached key/value "
         f"carries its absolute position, so it cannot go past the context (drop --rolling_cache)")
try:
    engine = ChatEngine(model, ctx, from_spec(checkpoint_spec(state)), rolling_cache, tools)  # the run's tokenizer
except ValueError as e:
    fail(f"{where}: {e}")
if seed >= 0:
    torch.manual_seed(seed)
sampling = Sampling(temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                    max_new_tokens=max_new_tokens, seed=seed if seed >= 0 else None)
info = f"step {state['step']}" + (f", val loss {state['metrics']['val_loss']:.4f}" if state.get("metrics") else "")
window = ", rolling KV cache" if rolling_cache else ""
print(f"chatting with {where} ({info}, context {engine.max_seq_len} tokens{window}) on {device}, {dtype}", file=sys.stderr)

if serve:
    from nash import server
    name = os.path.basename(os.path.dirname(os.path.abspath(where)))  # the run folder's name is the model's id
    limits = server.Limits(max_body_bytes, max_queue, max_reply_tokens or None, header_timeout, body_timeout)
    server.serve(engine, name=name, host=host, port=port, defaults=sampling, api_key=api_key or None, limits=limits)
    sys.exit(0)

conversation = Conversation(engine, system, shown_tokens(engine.ids) if engine.tools else None)


def answer(text):
    """Stream the reply to text to stdout; Ctrl-C stops it (the part said so far stays in the conversation)."""
    try:
        stream = conversation.reply(text, sampling)
        first = next(stream)  # fitting the context happens here, before anything is printed
    except ValueError as e:
        print(f"error: {e}; /clear starts over", file=sys.stderr)
        return
    if conversation.dropped:
        print(f"(the conversation outgrew the model's context of {engine.max_seq_len} tokens: the oldest "
              f"{conversation.dropped} message(s) were dropped)", file=sys.stderr)
    try:
        print(first, end="", flush=True)
        for piece in stream:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        stream.close()
        print(" [stopped]", end="")
    print(flush=True)


if prompt:
    answer(prompt)
    sys.exit(0)

tty = sys.stdin.isatty()
if tty:
    import readline  # noqa: F401  (line editing and history for input())
    print("/clear starts over, /system TEXT sets the system prompt, /quit or Ctrl-D leaves, Ctrl-C stops a reply",
          file=sys.stderr)
while True:
    try:
        line = input("> ") if tty else sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        break
    if not tty and not line:  # end of the piped input
        break
    line = line.strip()
    if not line:
        continue
    if line in ("/quit", "/exit"):
        break
    if line == "/clear":
        conversation.clear()
        print("(new conversation)", file=sys.stderr)
    elif line == "/system" or line.startswith("/system "):
        conversation.system = line[len("/system"):].strip()
        conversation.clear()
        print(f"(new conversation, system prompt: {conversation.system or 'none'})", file=sys.stderr)
    elif line.startswith("/"):
        print(f"unknown command {line.split()[0]}; /clear, /system TEXT or /quit", file=sys.stderr)
    else:
        answer(line)
