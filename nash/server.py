"""
The web side of `python chat.py --serve`: one page (ui.html) and an OpenAI-compatible API, FastAPI + uvicorn.

    GET  /                      the chat page (self-contained: no CDN, no build step)
    POST /v1/chat/completions   OpenAI's chat completions, streamed as server-sent events or not
    GET  /v1/models             the one model served
    GET  /health                {"status": "ok", ...}

Any OpenAI client works unchanged:
    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
    client.chat.completions.create(model="nash", messages=[{"role": "user", "content": "Who are you?"}])

One model, one KV cache, so requests are served one at a time: a single worker thread owns the engine and
takes jobs from a FIFO queue, in arrival order; nothing else touches the cache, so requests cannot corrupt
each other. Prompts that extend the previous conversation reuse its cache (engine.py). A client that goes
away (a closed tab, the stop button, a dropped connection) sets its job's cancel flag and the worker stops
generating at the next token. With --rolling_cache, conversations and replies may run past the model's
context (max_tokens up to --max_reply_tokens, 4096 by default), at a constant cost per token (engine.py). Bad requests get
a 4xx with OpenAI's error object {"error": {"message", "type", "param", "code"}}; an exception inside a job
fails that request only.

Hardening, since any web page the user opens can send requests to a local server: a body over max_body_bytes is
refused (413) from its Content-Length, or as soon as it grows past it, before anything is parsed; JSON is parsed
and the conversation tokenised in a thread pool, never on the event loop, so /health and the stream of other
requests stay responsive; POSTs must be JSON (415: the "simple" text/plain or form POST that a foreign page may
send without asking the browser first is not); on a loopback address the Host header must name it and an Origin
must be the page's own (403: DNS rebinding); with an API key every /v1 request needs `Authorization: Bearer KEY`
(401). Stop strings are limited in number and length; the engine's decode loop finds them (engine.stop_cut).

Shedding load (issue 35; measured in docs/server.md): a client that hangs up, streamed or not, stops its reply at the
next decode step; at most max_queue requests wait behind the one being answered (more: 503 with Retry-After, as
vLLM); a connection has header_timeout seconds to send a request's headers (head_timeout_protocol) and a body
body_timeout seconds (408); max_tokens is capped by max_reply_tokens; every number is range-checked (400, never 500).

Calculator calls (issue 26): the engine runs them itself, mid-reply, so they are not OpenAI's client-side tool calls
(no finish_reason "tool_calls" for the client to answer). A reply streams them in its content, spelled with the tool
tokens' names: "It is<|python_start|>37 * 24<|python_end|><|output_start|>888<|output_end|>." (the page shows them
as boxes). What a client sends back is read as the calls the model made, in any of three shapes (conversation()):
that content as it came; OpenAI's own shape, an assistant message with tool_calls (function "calculator", arguments
{"expression": ...}), a "tool" message with each result, and an assistant message with the rest of the reply; or our
python/python_output content parts. Each renders to the token ids the model generated, so the next turn reuses the
cache and the model sees what it saw. Only assistant messages are read so: a user's text stays text.
"""
import asyncio
import hmac
import ipaddress
import json
import math
import os
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, replace

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from nash.engine import Decoder, Sampling, StopStrings, stop_cut
from nash.tokenizer import check_parts

# The longest reply one request may ask for with the rolling cache, by default: a reply past the context costs the
# same per token for ever, so this bounds how long one request holds the (single) worker. --max_reply_tokens sets it.
ROLLING_REPLY_TOKENS = 4096
# The largest request body by default: 1 MiB is ~250k tokens of English, hundreds of times the context of the models
# served here and more than a long rolling-cache conversation; it bounds what one request may make the server hold
# (a 100 MB body cost 1.7 GB of RSS). --max_body_bytes raises it.
MAX_BODY_BYTES = 1 << 20
MAX_STOP_STRINGS = 4  # as the OpenAI API
# Up to len(stop) - 1 characters of a reply are held back while they may be the start of a stop string, so a
# stream can lag that much: stop strings are markers ("\nUser:"), a few characters, not passages.
MAX_STOP_CHARS = 256
# Below these, sampling is greedy in all but name, and float32 cannot do the arithmetic: logits / 1e-300 overflow to
# inf, and a top_p of 1e-320 rounds to 0 (both made the sampler's softmax NaN: a 500)
MIN_TEMPERATURE, MIN_TOP_P = 0.01, 1e-6
MAX_SEED = 2**63 - 1  # seeds are non-negative (numpy's SeedSequence); 64 bits are plenty


@dataclass
class Limits:
    """How much one client may ask of the server (chat.py's --serve settings of the same names)."""
    max_body_bytes: int = MAX_BODY_BYTES  # a larger body: 413 before it is read
    max_queue: int = 16  # requests that may wait behind the one being answered; more: 503 with Retry-After
    max_reply_tokens: int | None = None  # the largest max_tokens; None: the context (rolling: ROLLING_REPLY_TOKENS)
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers (then it is closed)
    body_timeout: float = 30.0  # seconds a request's body may take to arrive once its headers did (then 408)


def reply_limit(engine, limits=None):
    """The most tokens one reply may ask for: the context (or ROLLING_REPLY_TOKENS past it with the rolling cache),
    or less where the server's max_reply_tokens says so."""
    limit = ROLLING_REPLY_TOKENS if engine.rolling else engine.max_seq_len
    cap = limits.max_reply_tokens if limits is not None else None
    return limit if cap is None else (cap if engine.rolling else min(cap, limit))


UI_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui.html")


class BadRequest(Exception):
    def __init__(self, message, param=None, code=None, status=400):
        super().__init__(message)
        self.param, self.code, self.status = param, code, status


def error_response(message, status=400, param=None, code=None, kind="invalid_request_error", headers=None):
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status,
                        headers=headers)


def shown(value, limit=40):
    """A request value as an error message quotes it: its repr, cut short (a value may be a megabyte)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def too_large(limit):
    # Connection: close: uvicorn then drops the connection instead of reading the rest of the body to discard it
    return error_response(f"the request body is larger than this server's limit of {limit:,} bytes; send less, "
                          "or start the server with a higher --max_body_bytes", 413, code="request_too_large",
                          headers={"Connection": "close"})


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def loopback_hosts(host, port):
    """The Host header values a browser sends for this server on a loopback address (a port of 80 goes unsaid)."""
    names = {"localhost", "127.0.0.1", "[::1]", f"[{host}]" if ":" in host else host}
    return {f"{name}:{port}" for name in names} | (names if port == 80 else set())


class Gate:
    """ASGI middleware that checks a request's headers before the app reads its body: the Host (and Origin) of a
    loopback server against DNS rebinding (403), the API key on /v1 (401), JSON for POSTs (415), and the declared
    size of the body (413)."""

    def __init__(self, app, hosts=None, api_key=None, max_body_bytes=MAX_BODY_BYTES):
        self.app, self.hosts, self.api_key, self.max_body_bytes = app, hosts, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        refusal = self.refusal(scope) if scope["type"] == "http" else None
        await (refusal or self.app)(scope, receive, send)

    def refusal(self, scope):
        headers = Headers(scope=scope)
        if self.hosts is not None:
            host = headers.get("host", "").lower()
            if host not in self.hosts:  # a page on another name that resolves here: DNS rebinding
                return error_response(f"the Host header {shown(host)} is not this server's address; open it as "
                                      f"http://{sorted(self.hosts)[0]}", 403, code="forbidden_host")
            origin = headers.get("origin")
            if origin is not None and origin.lower() != f"http://{host}":  # a request from another site's page
                return error_response(f"requests from the page at {shown(origin)} are not allowed: only this "
                                      "server's own page may call it", 403, code="forbidden_origin")
        if self.api_key and scope["path"].startswith("/v1"):
            scheme, _, key = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
                return error_response("this server needs an API key: send the header Authorization: Bearer KEY "
                                      "(the openai client's api_key) with the key the server was started with"
                                      if not key else "the API key is not this server's", 401,
                                      code="invalid_api_key")
        if scope["method"] == "POST":
            kind, _, params = headers.get("content-type", "").partition(";")
            charset = params.strip().lower().removeprefix("charset=").strip('"') if params.strip() else "utf-8"
            if kind.strip().lower() != "application/json" or charset != "utf-8":
                return error_response(f"the request's Content-Type is {shown(headers.get('content-type', 'missing'))}"
                                      "; send the body as JSON with Content-Type: application/json", 415,
                                      code="unsupported_media_type")
            declared = headers.get("content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                return too_large(self.max_body_bytes)
        return None


class TooLarge(Exception):
    pass


async def read_body(request, limit):
    """The request's body, or TooLarge as soon as it grows past limit bytes (a chunked body declares no length)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def refuse_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def load_json(text, what):
    """json.loads, or a BadRequest that names what was being read: NaN and Infinity are Python's, not JSON's, and
    nesting deeper than Python's recursion limit (100,000 brackets) is refused, not a RecursionError (a 500)."""
    try:
        return json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply to be a chat request") from None
    except ValueError as e:
        raise BadRequest(f"{what} is not valid JSON ({e})") from None


def parse_body(raw, engine, defaults, limits=None):
    """parse_request on the raw body: UTF-8 (as JSON must be: json.loads would guess UTF-16 from the bytes), then
    JSON. In a worker thread: tokenising a long conversation takes a while."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the request body is not valid JSON: it is not UTF-8 ({e}); send it encoded as UTF-8") \
            from None
    return parse_request(load_json(text, "the request body"), engine, defaults, limits)


class Job:
    """One request's generation: filled by the worker thread, read by the request's coroutine."""

    def __init__(self, prompt, sampling, stop, loop):
        self.prompt, self.sampling, self.stop = prompt, sampling, stop
        self.loop, self.out = loop, asyncio.Queue()
        self.cancel = threading.Event()

    def put(self, kind, value=None):
        self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, value))


class JobStream(StreamingResponse):
    """A streamed reply whose job is cancelled however the response ends: Starlette cancels the stream when its
    client hangs up (events() then cancels in its finally), but a client gone before the first chunk was read
    would leave events() never started."""

    def __init__(self, job, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel.set()


class Worker:
    """The one thread that runs the engine, a job at a time, in the order they were submitted. It also counts the
    requests let in (admit/release), so that a full queue is refused at the door (503) instead of growing."""

    def __init__(self, engine, max_queue=Limits.max_queue):
        self.engine, self.jobs, self.max_queue = engine, queue.Queue(), max_queue
        self.busy, self.served, self.cancelled, self.tokens_generated = False, 0, 0, 0
        self.admitted, self.refused, self.lock = 0, 0, threading.Lock()
        self.seconds_per_job = 1.0  # a running mean of how long a job takes (Retry-After)
        threading.Thread(target=self.run, daemon=True, name="chat-engine").start()

    def admit(self):
        """Let one more request in (True), unless max_queue already wait behind the one being answered."""
        with self.lock:
            if self.admitted > self.max_queue:
                self.refused += 1
                return False
            self.admitted += 1
            return True

    def release(self):
        with self.lock:
            self.admitted -= 1

    def retry_after(self):
        """Seconds until a place is likely free: the jobs ahead times a job's mean time, 1 to 60 (Retry-After)."""
        return max(1, min(60, math.ceil(self.seconds_per_job * max(1, self.admitted - self.max_queue))))

    def submit(self, job):
        self.jobs.put(job)  # FIFO: served after every job submitted before it; release() when it is done

    def run(self):
        while True:
            job = self.jobs.get()
            self.busy, start = True, time.monotonic()
            try:
                self.serve(job)
            except Exception as e:  # a bug or a bad state: fail this request, keep serving
                self.engine.reset()
                job.put("error", f"{type(e).__name__}: {e}")
            finally:
                self.busy = False
                self.served += 1
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.monotonic() - start)
                self.release()

    def serve(self, job):
        if job.cancel.is_set():  # the client left while waiting in the queue
            self.cancelled += 1
            return job.put("done", ("cancelled", 0))
        decoder, text, sent, n, cut = Decoder(self.engine.enc), "", 0, 0, None
        stops = StopStrings(list(job.stop))  # the engine's matcher: which piece ends the reply, and what to hold back
        # the engine ends the reply at a stop string (or a stop token, the length, a cancel); the text is cut here
        for token in self.engine.generate(job.prompt, job.sampling, should_stop=job.cancel.is_set,
                                          stop_strings=job.stop):
            n += 1
            self.tokens_generated += 1
            piece = decoder(token)
            text += piece
            if stops.feed(piece) is not None:  # this piece completes a stop string: cut before the first to start
                cut = stop_cut(text, job.stop)
                break
            ready = len(text) - stops.held  # an end that may start a stop string waits
            if ready > sent:
                job.put("text", text[sent:ready])
                sent = ready
        if cut is None:
            text += decoder.flush()  # a character whose bytes the reply cut short, as U+FFFD
            cut = stop_cut(text, job.stop)
        finish = "stop" if cut < len(text) else "cancelled" if job.cancel.is_set() else self.engine.finish_reason
        if cut > sent:
            job.put("text", text[sent:cut])
        if job.cancel.is_set():
            self.cancelled += 1
        job.put("done", (finish, n))


# A reply's calculator calls as the stream spells them (Decoder writes each tool token's name): a call and its output.
# The groups hold no tool token, so a malformed sequence (one the calculator answered with an error) stays text.
PLAIN = r"((?:(?!<\|(?:python|output)_(?:start|end)\|>).)*)"
SPELLED_CALL = re.compile(rf"<\|python_start\|>{PLAIN}<\|python_end\|><\|output_start\|>{PLAIN}<\|output_end\|>", re.S)


def spelled_parts(text):
    """An assistant's content as this server sent it, its calls spelled out, back into content parts (text, python,
    python_output), so the model sees the tool tokens it generated, not their names as text; a reply without
    calls stays a string."""
    parts, at = [], 0
    for call in SPELLED_CALL.finditer(text):
        parts += [{"type": "text", "text": text[at:call.start()]}] * (call.start() > at)
        parts += [{"type": "python", "text": call[1]}, {"type": "python_output", "text": call[2]}]
        at = call.end()
    return parts + [{"type": "text", "text": text[at:]}] * (at < len(text)) if parts else text


def text_of(content, i, role):
    """A message's content as a string: a string, or OpenAI's text parts joined."""
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            calls = " (or python and python_output parts, in an assistant message)" if role == "assistant" else ""
            raise BadRequest(f"messages[{i}].content may only hold text parts{calls}", f"messages[{i}].content")
        content = "".join(p["text"] for p in content)
    if content is None and role == "assistant":
        content = ""
    if not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string", f"messages[{i}].content")
    return content


def calculator_calls(m, i):
    """[(id, expression)] of an assistant message's OpenAI tool_calls: each must call the built-in "calculator"."""
    calls = m.get("tool_calls") or []
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, list):
        raise BadRequest(f"{where} must be an array", where)
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (isinstance(function, dict) and call.get("type", "function") == "function"
                and function.get("name") == "calculator" and isinstance(call.get("id"), str)):
            raise BadRequest(f"{where}[{j}] must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\": "
                             f"\"calculator\", \"arguments\"}}}}: this model's one tool is its calculator", f"{where}[{j}]")
        try:
            expression = json.loads(function.get("arguments"))["expression"]
        except RecursionError:  # (100,000 brackets: a 500 before)
            raise BadRequest(f"{where}[{j}].function.arguments is nested too deeply", f"{where}[{j}]") from None
        except (TypeError, ValueError, KeyError):
            expression = None
        if not isinstance(expression, str):
            raise BadRequest(f"{where}[{j}].function.arguments must be a JSON object with a string \"expression\", "
                             f"e.g. '{{\"expression\": \"37 * 24\"}}'", f"{where}[{j}]")
        out.append((call["id"], expression))
    return out


def assistant_parts(content, i):
    """An assistant message's content as parts: our python/python_output parts, text parts, or a string whose
    spelled calls are read back (spelled_parts)."""
    if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") in ("python", "python_output")
                                         for p in content):
        try:
            check_parts(content, "assistant", f"messages[{i}]")
        except ValueError as e:
            raise BadRequest(str(e), f"messages[{i}].content") from None
        return [{"type": p["type"], "text": p["text"]} for p in content]
    parts = spelled_parts(text_of(content, i, "assistant"))
    return [{"type": "text", "text": parts}] * bool(parts) if isinstance(parts, str) else parts


def conversation(messages, tools):
    """The messages of a request as render_conversation takes them. A reply with calculator calls may come in the
    OpenAI API's shape: an assistant message with tool_calls (function "calculator", arguments {"expression"}),
    a "tool" message with each call's result (tool_call_id), and an assistant message that goes on; those join into
    one assistant message of content parts, as the model generated it. So may our own python/python_output parts,
    and the content this server streams (the calls spelled with the tool tokens' names). tools: whether the model
    has the tool tokens (a model without them gets the spelled names as the text it was sent)."""
    clean, turn, waiting = [], None, []  # turn: the reply being joined; waiting: its calls with no result yet
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise BadRequest(f"messages[{i}] must be an object", f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise BadRequest(f"messages[{i}].role is {role!r}; this model knows system, user, assistant and tool "
                             "(the calculator's results)", f"messages[{i}].role")
        if role == "tool":
            if not waiting:
                raise BadRequest(f"messages[{i}] is a tool result with no calculator call before it (an assistant "
                                 "message's tool_calls)", f"messages[{i}]")
            call_id, expression = waiting.pop(0)
            if m.get("tool_call_id") != call_id:
                raise BadRequest(f"messages[{i}].tool_call_id is {shown(m.get('tool_call_id'))}; the next call "
                                 f"waiting for its result is {call_id!r}", f"messages[{i}].tool_call_id")
            turn["content"] += [{"type": "python", "text": expression},
                                {"type": "python_output", "text": text_of(content, i, role)}]
            continue
        if waiting:
            raise BadRequest(f"messages[{i}] comes before the result of the calculator call {waiting[0][0]!r}: "
                             "send a tool message with it first", f"messages[{i}]")
        if role == "assistant" and tools:
            parts, waiting = assistant_parts(content, i), calculator_calls(m, i)
            if turn is not None and messages[i - 1].get("role") == "tool":  # the reply goes on after its calls
                turn["content"] += parts
            else:
                turn = {"role": role, "content": parts}
                clean.append(turn)
            continue
        if m.get("tool_calls"):
            raise BadRequest(f"messages[{i}] has tool_calls, but this model has no calculator (no tool tokens)",
                             f"messages[{i}].tool_calls")
        turn = None
        clean.append({"role": role, "content": text_of(content, i, role)})
    if waiting:
        raise BadRequest(f"the calculator call {waiting[0][0]!r} has no tool message with its result", "messages")
    for m in clean:  # a reply without calls: one string, as before tools
        if isinstance(m["content"], list) and all(p["type"] == "text" for p in m["content"]):
            m["content"] = "".join(p["text"] for p in m["content"])
    return clean


def parse_request(body, engine, defaults, limits=None):
    """(prompt ids, Sampling, stop strings, stream, include_usage) from an OpenAI chat completions body."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array of {\"role\", \"content\"} objects", "messages")
    clean = conversation(messages, engine.tools)
    if not any(m["content"].strip() for m in clean if m["role"] == "user"):
        raise BadRequest("the messages hold no user message with text", "messages")

    def number(name, low, high, default, kind=float, hint=""):
        """body[name] checked against [low, high] before anything uses it (an int of 400 digits is no float)."""
        value = body.get(name)
        if value is None:
            return default
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high
                or (isinstance(value, float) and not math.isfinite(value))  # (1e999 parses as infinity)
                or (kind is int and value != int(value))):
            raise BadRequest(f"'{name}' is {shown(value)}; it must be {'an integer' if kind is int else 'a number'}"
                             f" from {low} to {high}{hint}", name)
        return kind(value)

    ctx = engine.max_seq_len
    limit = reply_limit(engine, limits)
    param = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    where = "this server's limit (--max_reply_tokens)" if limit < (ROLLING_REPLY_TOKENS if engine.rolling else ctx) \
        else "the rolling cache's limit (--max_reply_tokens)" if engine.rolling else "the context"
    max_tokens = number(param, 1, limit, None, int, f" ({where})")
    if body.get("n") is not None and (type(body["n"]) is not int or body["n"] != 1):  # (True == 1 in Python)
        raise BadRequest(f"'n' is {shown(body['n'])}; only n=1 is supported: one reply per request", "n")
    top_k = number("top_k", 0, 1_000_000, defaults.top_k or 0, int, "; 0 turns it off")  # not OpenAI's: extra_body
    top_p = number("top_p", MIN_TOP_P, 1.0, defaults.top_p or 1.0, hint="; 1 turns it off")
    temperature = number("temperature", 0.0, 2.0, defaults.temperature, hint="; 0 is greedy")
    if 0 < temperature < MIN_TEMPERATURE:
        raise BadRequest(f"'temperature' is {temperature}; it must be 0 (greedy) or from {MIN_TEMPERATURE} to 2",
                         "temperature")
    sampling = replace(defaults, temperature=temperature, top_k=top_k or None, top_p=top_p if top_p < 1 else None,
                       max_new_tokens=min(max_tokens or defaults.max_new_tokens, limit),
                       seed=number("seed", 0, MAX_SEED, None, int, "; leave it out for a random reply"))
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= MAX_STOP_STRINGS
                                 and all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop)):
        raise BadRequest(f"'stop' must be a string or an array of up to {MAX_STOP_STRINGS} strings, each of 1 to "
                         f"{MAX_STOP_CHARS} characters", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false", "stream")
    options = body.get("stream_options") or {}
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    prompt = engine.render(clean)
    if len(prompt) >= ctx and not engine.rolling:
        raise BadRequest(f"the conversation is {len(prompt)} tokens, and this model's context is {ctx}; "
                         "send fewer or shorter messages (start a new chat)", "messages", "context_length_exceeded")
    return prompt, sampling, stop or [], stream, include_usage


def create_app(engine, name="nash", defaults=None, host=None, port=None, api_key=None, limits=None):
    """The app. host, port: where it is served; on a loopback host requests must name it (Host, Origin); None: no
    such check (in-process clients). api_key: required on /v1 (None: none). limits: Limits (the defaults: None)."""
    defaults, limits = defaults or Sampling(), limits or Limits()
    worker = Worker(engine, limits.max_queue)
    max_body_bytes = limits.max_body_bytes
    app = FastAPI(title="Nash-LLM chat", docs_url=None, redoc_url=None)
    app.add_middleware(Gate, hosts=loopback_hosts(host, port) if host and is_loopback(host) else None,
                       api_key=api_key, max_body_bytes=max_body_bytes)
    app.state.worker = worker
    created = int(time.time())

    @app.exception_handler(404)
    async def not_found(request, exc):
        return error_response(f"no route {request.method} {request.url.path}; see /v1/chat/completions", 404)

    @app.exception_handler(405)
    async def wrong_method(request, exc):
        return error_response(f"{request.method} is not allowed on {request.url.path}", 405)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        with open(UI_PATH, encoding="utf-8") as f:
            return f.read()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": name, "busy": worker.busy, "waiting": worker.jobs.qsize(),
                "admitted": worker.admitted, "refused": worker.refused,  # (let in and not done; turned away: 503)
                "served": worker.served, "cancelled": worker.cancelled, "tokens_generated": worker.tokens_generated,
                "cached_tokens": len(engine.cached)}  # (what the KV cache holds: how far a prefill got)

    model_card = {"id": name, "object": "model", "created": created, "owned_by": "nash-llm",
                  "context_length": engine.max_seq_len, "max_tokens": reply_limit(engine, limits),  # (the page's limit)
                  "rolling_cache": engine.rolling}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str):
        if model_id != name:
            return error_response(f"the model {model_id!r} does not exist; this server has {name!r}", 404,
                                  "model", "model_not_found")
        return model_card

    @app.post("/v1/chat/completions")
    async def completions(request: Request):
        try:
            raw = await asyncio.wait_for(read_body(request, max_body_bytes), limits.body_timeout)
        except TooLarge:
            return too_large(max_body_bytes)
        except asyncio.TimeoutError:
            return error_response(f"the request body took longer than {limits.body_timeout:g} s to arrive", 408,
                                  code="request_timeout", headers={"Connection": "close"})
        # counted once its body is here (a slow body holds its own connection, not a place in the queue)
        if not worker.admit():  # as vLLM: a full server says so at once, and when to try again
            return error_response(f"the server is busy: {limits.max_queue} requests are already waiting for the "
                                  "model; try again later", 503, code="server_busy", kind="server_error",
                                  headers={"Retry-After": str(worker.retry_after())})
        try:  # off the event loop: the other requests (and /health) go on meanwhile
            prompt, sampling, stop, stream, include_usage = await run_in_threadpool(parse_body, raw, engine, defaults,
                                                                                    limits)
        except BaseException as e:  # (the worker releases a request it was given; one refused here is released now)
            worker.release()
            if isinstance(e, BadRequest):
                return error_response(str(e), e.status, e.param, e.code)
            raise
        job = Job(prompt, sampling, stop, asyncio.get_running_loop())
        worker.submit(job)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        head = {"id": rid, "created": now, "model": name, "system_fingerprint": None}

        def usage(n):
            return {"prompt_tokens": len(prompt), "completion_tokens": n, "total_tokens": len(prompt) + n}

        async def events():
            def chunk(delta, finish=None, **extra):
                return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}) + "\n\n"
            try:
                yield chunk({"role": "assistant", "content": ""})
                while True:
                    kind, value = await job.out.get()
                    if kind == "text":
                        yield chunk({"content": value})
                    elif kind == "error":
                        yield "data: " + json.dumps({"error": {"message": value, "type": "server_error",
                                                               "param": None, "code": None}}) + "\n\n"
                        return
                    else:
                        finish, n = value
                        yield chunk({}, "length" if finish == "length" else "stop")
                        if include_usage:
                            yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                                         "usage": usage(n)}) + "\n\n"
                        yield "data: [DONE]\n\n"
                        return
            finally:  # also when the client went away mid-stream: tell the worker to stop
                job.cancel.set()

        if stream:
            return JobStream(job, events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def watch():  # the body is read: the next message is the client hanging up (or never)
            while (await request.receive())["type"] != "http.disconnect":
                pass
            job.cancel.set()  # the worker stops before its next decode step

        pieces, watcher = [], asyncio.create_task(watch())
        try:
            while True:
                kind, value = await job.out.get()
                if kind == "text":
                    pieces.append(value)
                elif kind == "error":
                    return error_response(f"generation failed: {value}", 500, kind="server_error")
                else:
                    finish, n = value
                    break
        finally:
            watcher.cancel()
            job.cancel.set()
        return {**head, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "".join(pieces), "refusal": None},
             "logprobs": None, "finish_reason": "length" if finish == "length" else "stop"}], "usage": usage(n)}

    return app


def head_timeout_protocol(seconds):
    """uvicorn's h11 protocol with a deadline for each request's head: uvicorn times out only idle keep-alive
    connections, so a client that opens a connection and sends its headers a byte at a time (slowloris), or never
    finishes them, held a socket and a file descriptor for ever; the API key is checked only once the headers are
    complete. Each connection gets `seconds` to send a request's headers, counted from when it opened or from the
    end of its previous response; a body's own deadline is the app's (Limits.body_timeout, 408)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        head_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self.arm()

        def on_response_complete(self):
            super().on_response_complete()
            self.arm()

        def connection_lost(self, exc):
            if self.head_timer is not None:
                self.head_timer.cancel()
            super().connection_lost(exc)

        def arm(self):
            if self.head_timer is not None:
                self.head_timer.cancel()
            self.head_timer = self.loop.call_later(seconds, self.late)

        def late(self):
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():  # no complete head yet
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                self.transport.close()

    return HeadTimeout


def raise_file_limit():
    """Each connection is a file descriptor: with the usual soft limit of 1,024, a thousand half-open connections
    left no descriptor for /health until the header deadline freed them (measured in docs/server.md). The soft limit
    goes up to the hard one, as Go's runtime does for every server it starts."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536),
                                                        hard))
    except (ImportError, ValueError, OSError):  # (not on Windows; a limit the system will not raise stays)
        pass


def serve(engine, name="nash", host="127.0.0.1", port=8000, defaults=None, api_key=None, limits=None):
    import uvicorn
    limits = limits or Limits()
    app = create_app(engine, name, defaults, host, port, api_key, limits)
    address = f"[{host}]" if ":" in host else host
    if not is_loopback(host) and not api_key:
        # a warning, not a refusal: in a container 0.0.0.0 is how the port is published at all, and a trusted
        # network may be the point; but the Host check is off here (the names it is reached by are unknown)
        print(f"warning: serving on {host} without an API key: anyone who can reach this address, and any web page "
              "opened in a browser on it (DNS rebinding), can use the model; set NASH_API_KEY (or --api_key) to "
              "require one", flush=True)
    print(f"serving {name} on http://{address}:{port} (the chat page; API at http://{address}:{port}/v1"
          f"{', API key required' if api_key else ''}); Ctrl-C stops", flush=True)
    # no limit_concurrency: uvicorn counts every open connection, half-open ones too, and would answer /health with
    # 503 while a slow client holds them; max_queue bounds the work instead, the head deadline the sockets.
    # timeout_graceful_shutdown: Ctrl-C does not wait for ever on streams that a client keeps open.
    raise_file_limit()
    uvicorn.run(app, host=host, port=port, log_level="warning", http=head_timeout_protocol(limits.header_timeout),
                timeout_graceful_shutdown=5)
