"""
Measure a checkpoint on a prepared dataset: loss, next-token accuracy, perplexity and bits per byte;
for a fine-tuned (SFT) checkpoint also the exact match of its greedy completions.

    python evaluate.py --out_dir=out                          # the run's best checkpoint on its dataset's val split
    python evaluate.py --ckpt=out/ckpt.pt --max_batches=50 --output=eval.json
    python evaluate.py --init_from=gpt2 --dataset=shakespeare --batch_size=4

- Pretraining data: the split in consecutive windows of seq_len tokens, the same order every time, all
  of them or the first max_batches batches. Every target counts in loss, accuracy and perplexity
  (= exp(loss)), as in train.py's evals.
- Bits per byte = total nats / (ln 2 * total UTF-8 bytes of the target tokens). End-of-text targets are
  left out of both sums (as nanochat does): they are document boundaries, not text, and have no bytes.
  Unlike the loss per token, this does not depend on the tokenizer, so models with different ones compare.
- SFT data (objective=sft, or a checkpoint trained with it): <split>.jsonl of prompt/completion pairs; loss,
  accuracy and bits per byte count the completion tokens and the end-of-text after them, as in training.
  Exact match: the completion generated greedily (temperature 0) from each prompt, up to end-of-text,
  equals the reference completion token for token (max_examples caps how many are generated).
- Chat data (objective=chat): conversations; loss and accuracy count the assistant replies and their end tokens. Exact
  match: each conversation's last reply, answered greedily by the chat engine (chat.py's) from the turns before
  it, equals the reference token for token and then ends (max_examples caps how many). Replies that call the
  calculator (nash/tools.py) get each call's output forced in by the engine, as in chat.py; --tools=0 asks the
  same model without it (the tool tokens are then plain tokens and the model must write the outputs itself), and
  on data with calls, "answer match" is GSM8K's check: the reply's last number is the reference's.
- Downstream benchmarks instead of the loss: --tasks=hellaswag,arc_easy,arc_challenge,mmlu,gsm8k,humaneval,sst2
  (the machinery and each task's definition live in tasks/), scored as lm-evaluation-harness does; a table of
  task, metric, value, standard error and examples, and `core` (mean centered accuracy of the multiple-choice tasks; `chatcore` too for a chat model).
- --num_samples=N: each generative item (gsm8k, humaneval, arith) is also answered N times by sampling
  (--temperature, --top_k, --seed) through the batched engine, and a second table shows, per task, the greedy
  figure beside pass@1 (the mean over samples), pass@k for k = 1, 2, 4, ... N (Chen et al.'s unbiased estimator),
  maj@N (the majority of the extracted answers; GSM8K-style tasks) and, with --verifier=RUN, best-of-N: the reply
  that verifier run scores highest. They go to the JSON under tasks.<task>.sampled (tasks/sampling.py).
- --report writes out_dir/report.md: the run's card (settings, hardware, tokens, time, loss curves, the loss and any
  --tasks results, a few samples).
- A table goes to stdout, the progress bar to stderr, and with --output=PATH the numbers as JSON.
"""
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nash import tasks as downstream
from nash import tokenizer
from nash.checkpoint import load_model, run_settings
from nash.common import inference_setup
from nash.engine import Completion, Sampling, stream
from configurator import check_output_file, check_range, check_sampling, configure, fail
from nash.data import ChatExamples, SFTExamples, TokenShards, dataset_dir, ensure_prepared
from nash.objectives import OBJECTIVES
from nash.tasks.gsm8k import last_number

# -----------------------------------------------------------------------------
# settings (python evaluate.py --help lists them)
init_from = ""  # "" = the run in out_dir | a run folder or checkpoint file | gpt2 ... gpt2-xl | an HF folder (export.py's)
out_dir = "out"  # the run folder train.py wrote
ckpt = "best"  # best (lowest val loss; the latest when no eval has run) | latest | a checkpoint file
objective = ""  # what the checkpoint was trained as: "" = its own (pretrain for GPT-2 weights) | pretrain | sft | chat
dataset = ""  # "" = the run's dataset (shakespeare for GPT-2 weights); else the folder name under data/
data_dir = ""  # the dataset's folder, if not data/<dataset>
split = "val"  # val | train
batch_size = 8  # sequences per forward pass
seq_len = 0  # tokens per window; 0 = the run's max_seq_len (the model's context for GPT-2 weights)
max_batches = 0  # evaluate only the first this many batches; 0 = the whole split
max_examples = 0  # the first this many items of each task (sft: prompts generated for exact match); 0 = all
tasks = ""  # downstream benchmarks instead of the loss, comma-separated (see tasks/): hellaswag,arc_easy,gsm8k,...
num_fewshot = 0  # tasks: K-shot prompts, the shots drawn deterministically from each task's train split
task_data = ""  # tasks: a folder of <task>.jsonl in the hub datasets' own row schema; "" = the Hugging Face hub
max_gen_tokens = 256  # tasks: the longest generated answer (gsm8k, humaneval)
num_samples = 0  # tasks: also sample this many replies per generative item (pass@k, maj@N, best-of-N); 0 = none
temperature = 0.8  # num_samples: the sampling temperature (Chen et al. sample pass@k at 0.8)
top_k = 0  # num_samples: sample among the k most likely tokens; 0 = off
seed = 1337  # num_samples: the same seed gives the same samples
verifier = ""  # num_samples: a verifier run folder (objective=verifier); best-of-N is the reply it scores highest
tools = True  # chat: replies (and a chat model's --tasks answers) may call the calculator (nash/tools.py); 0: without it
report = False  # also write out_dir/report.md: the run's settings, hardware, curves, benchmarks and a few samples
device = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
dtype = "auto"  # auto (CUDA: bfloat16 where supported, else float16; float32 elsewhere) | float32 | bfloat16 | float16
output = ""  # also write the results as JSON to this file
settings = configure(globals(), renamed={"task": "objective"})  # (--tasks are the benchmarks)
# -----------------------------------------------------------------------------
# checks that need no model

if objective not in ("", "pretrain", "sft", "chat"):
    fail(f"objective={objective!r} should be pretrain, sft or chat (or empty for the checkpoint's own)")
if split not in ("val", "train"):
    fail(f"split={split!r} should be val or train")
if batch_size < 1 or seq_len < 0 or max_batches < 0 or max_examples < 0 or num_fewshot < 0 or max_gen_tokens < 1:
    fail("batch_size and max_gen_tokens must be at least 1; seq_len, max_batches, max_examples and num_fewshot "
         "cannot be negative (0 = default/all)")
task_names = downstream.parse(tasks)
generative = [n for n in task_names if downstream.TASKS[n].kind != "choice"]
if num_samples < 0 or (num_samples and not generative):
    fail(f"num_samples={num_samples} samples replies of generative tasks; give --tasks with one of "
         f"{', '.join(n for n, t in downstream.TASKS.items() if t.kind != 'choice')} and num_samples >= 1")
# a prompt's samples decode together, one KV-cache row each: bound them before any allocation (pass@k and voting
# are measured with tens to hundreds; Chen et al. drew 200)
check_range("num_samples", num_samples, low=0, high=1024, hint="sample in several runs with other --seed values")
if num_samples and temperature <= 0:
    fail(f"temperature={temperature} makes every sample the greedy reply; sample with a temperature above 0 (0.8)")
if num_samples:
    check_sampling(temperature, top_k, 1.0)
    check_range("seed", seed, low=0, below=2**63)
if verifier and not num_samples:
    fail("--verifier picks the best of several samples; give --num_samples=N too")
if verifier and not os.path.exists(verifier):
    fail(f"--verifier={verifier} does not exist; give the run folder of an objective=verifier run")
no_chat = [n for n in generative if downstream.TASKS[n].chat_prompt is None]
if verifier and no_chat:
    fail(f"the verifier scores replies to a conversation, and {', '.join(no_chat)} has no chat format; leave it out "
         f"of --tasks")
if task_data and not os.path.isdir(task_data):
    fail(f"--task_data={task_data} is not a folder; it should hold <task>.jsonl files")
if report and not os.path.isdir(out_dir):
    fail(f"--report writes the report into the run folder, and {out_dir} is not one; give --out_dir=RUN")
if output:
    check_output_file("output", output)  # before the work: a bad path must not cost the whole evaluation

device, dtype, ctx = inference_setup(device, dtype)
prepared = downstream.prepare(task_names, task_data, max_examples, num_fewshot)  # bad task data: before any work

# -----------------------------------------------------------------------------
# the model, and its tokenizer
model, state, where = load_model(init_from, out_dir, ckpt, device)
spec = tokenizer.model_spec(state, init_from)  # the model's tokenizer: its checkpoint's, an export's, GPT-2's
enc = tokenizer.from_spec(spec)
run = run_settings(state) if state else {"objective": "pretrain", "dataset": "shakespeare", "data_dir": ""}
objective = objective or run.get("objective", "pretrain")  # a chat model answers the tasks that have a chat format through it
chat_engine = None  # objective=chat: chat.py's engine answers (exact match of the last replies)
if objective == "chat":
    from nash.engine import ChatEngine
    try:
        chat_engine = ChatEngine(model, ctx, enc, tools=tools)  # (it checks the model has rows for the chat tokens)
    except ValueError:
        fail(f"{where} has no chat tokens in its vocabulary ({model.config.vocab_size} tokens): it was not "
             f"fine-tuned with objective=chat; leave --objective out")


def verifier_scores():
    """--verifier: score_replies (nash/verifier.py) over a verifier run, as downstream.run's verifier callback."""
    try:
        from nash.verifier import check_verifier, score_replies  # only now: the rest of evaluate.py needs no verifier
    except ImportError as e:
        fail(f"--verifier needs nash/verifier.py ({e})")
    vmodel, vstate, vwhere = load_model(verifier, verifier, "best", device)
    venc = tokenizer.from_spec(tokenizer.model_spec(vstate, verifier))
    try:
        check_verifier(vmodel)  # before sampling, not after
    except ValueError as e:
        fail(f"--verifier={vwhere}: {e}")

    def score(task, docs, shots, replies):
        conversations = [task.chat_prompt(doc, doc_shots) for doc, doc_shots in zip(docs, shots)]
        try:
            return score_replies(vmodel, venc, conversations, replies, ctx=ctx, batch_size=batch_size)
        except ValueError as e:  # e.g. a model with no score head
            fail(f"--verifier={vwhere}: {e}")
    return score


def measure_loss():
    """Loss, accuracy, perplexity, bits per byte (and SFT exact match) on the data the run was trained on
    (unless dataset/data_dir/objective say otherwise); prints them and returns them as a dict."""
    global dataset, data_dir, seq_len
    if objective == "rl":  # it learned from rewards, not from a dataset: measure it on the task it was rewarded on
        fail(f"{where} was trained with objective=rl; measure it with --tasks={run.get('reward_task', 'arith')} (pass@1)")
    if objective == "dpo":  # its data are preference pairs; what it learned shows on prompt/completion data
        fail(f"{where} was trained with objective=dpo on preference pairs; measure its completions with --objective=sft and "
             f"--dataset= a prompt/completion set (e.g. --objective=sft --dataset=sft_demo for the DPO demo)")
    if not dataset and not data_dir:
        dataset, data_dir = run.get("dataset", "shakespeare"), run.get("data_dir", "")
    seq_len = seq_len or min(run.get("max_seq_len", model.config.max_seq_len), model.config.max_seq_len)
    if seq_len > model.config.max_seq_len:
        fail(f"seq_len={seq_len} is longer than the model's context ({model.config.max_seq_len}); lower --seq_len")
    if objective == "pretrain":
        folder = ensure_prepared(dataset, data_dir)  # prepares the embedded Shakespeare if needed; else says how
        if tokenizer.dataset_spec(folder) != spec:  # the same ids would mean other text: the numbers would be noise
            fail(f"{folder} was tokenised with {tokenizer.dataset_spec(folder)['name']}, but {where} reads "
                 f"{spec['name']} ids; evaluate on data prepared with the model's tokenizer")
        data = TokenShards(folder, split, vocab_size=model.config.vocab_size)
    else:
        folder = dataset_dir(dataset, data_dir)
        Examples = ChatExamples if objective == "chat" else SFTExamples  # chat: loss on the assistant replies
        data = Examples(os.path.join(folder, f"{split}.jsonl"), seq_len, enc)
        if data.cut_note:  # examples cut to seq_len, counted once
            print(data.cut_note, file=sys.stderr)
    num_batches = data.num_eval_batches(batch_size, seq_len, max_batches or None)

    # UTF-8 bytes of each token id, for bits per byte; special tokens (end-of-text, chat turns) and ids beyond the
    # tokenizer's have none. Counting bytes, not tokens, is what makes bits per byte compare across tokenizers.
    specials = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    token_bytes = [len(enc.decode_single_token_bytes(i)) if i < enc.n_vocab and i not in specials else 0
                   for i in range(model.config.vocab_size)]
    token_bytes = torch.tensor(token_bytes, dtype=torch.long, device=device)

    # loss, accuracy, bits per byte over the targets (y != -1: SFT prompts and padding are -1)
    nats = torch.zeros((), dtype=torch.float64, device=device)  # all targets
    text_nats = torch.zeros((), dtype=torch.float64, device=device)  # targets that have bytes
    correct = torch.zeros((), dtype=torch.long, device=device)
    targets = torch.zeros((), dtype=torch.long, device=device)
    num_bytes = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for x, y in tqdm(data.eval_batches(batch_size, seq_len, max_batches or None), total=num_batches, unit="batch",
                         desc=f"{split} loss", dynamic_ncols=True):
            x, y = x.to(device), y.to(device)
            with ctx:
                logits, _ = model(x)
            logits = logits.float()
            counted = y != -1
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-1, reduction="none")
            nll = nll.view_as(y)  # per target, in float32; 0 where y is -1
            b = token_bytes[y.clamp(min=0)] * counted
            nats += nll[counted].double().sum()
            text_nats += nll[b > 0].double().sum()
            correct += ((logits.argmax(-1) == y) & counted).sum()
            targets += counted.sum()
            num_bytes += b.sum()
    if targets.item() == 0:
        fail(f"the {split} split of {folder} has no target tokens to score")
    loss = (nats / targets).item()
    results = {
        "checkpoint": where, "step": state["step"] if state else None, "objective": objective, "dataset": folder, "split": split,
        "seq_len": seq_len, "batches": num_batches, "tokens": targets.item(), "bytes": num_bytes.item(),
        "loss": loss, "accuracy": (correct / targets).item(), "perplexity": math.exp(min(loss, 700)),
        "bits_per_byte": (text_nats / (math.log(2) * num_bytes)).item() if num_bytes.item() else None,
    }

    # SFT: exact match of greedy completions, one prompt at a time (prompts differ in length)
    if objective == "sft":
        examples = [(p, c) for p, c in data.examples if p]  # an empty prompt gives the model nothing to start from
        examples = examples[:max_examples or None]
        matches = 0
        for prompt_ids, completion_ids in tqdm(examples, unit="example", desc="exact match", dynamic_ncols=True):
            reference = completion_ids + [enc.eot_token]  # a completion ends where the model says end-of-text
            greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=len(reference))  # one more cannot match
            reply = Completion()
            list(stream(model, prompt_ids, greedy, stop_ids={enc.eot_token}, ctx=ctx, completion=reply))
            matches += reply.tokens == completion_ids and reply.finish_reason == "stop"
        results["exact_match"] = matches / len(examples) if examples else None
        results["exact_match_examples"] = len(examples)

    # chat: exact match of each conversation's last reply, answered as chat.py answers (engine.py), greedily
    if objective == "chat":
        last_replies = [m for m in data.examples if m[-1]["role"] == "assistant"][:max_examples or None]
        matches = asked = answers = 0
        calls = tokenizer.special_ids(enc).get("<|python_start|>")
        for messages in tqdm(last_replies, unit="conversation", desc="exact match", dynamic_ncols=True):
            prompt = chat_engine.render(messages[:-1])
            if len(prompt) >= model.config.max_seq_len:  # no room left for a reply: not asked
                continue
            reference = tokenizer.render_conversation(enc, messages[-1:])[0][2:-1]  # the reply's own tokens, calls too
            greedy = Sampling(temperature=0.0, top_k=None, max_new_tokens=len(reference) + 1)  # + its end
            reply = list(chat_engine.generate(prompt, greedy))
            matches += reply == reference and chat_engine.finish_reason == "stop"
            answers += last_number(enc.decode(reply)) == last_number(enc.decode(reference))  # GSM8K's check
            asked += 1
        results["exact_match"] = matches / asked if asked else None
        results["exact_match_examples"] = asked
        if any(calls in tokens for tokens in data.sequences):  # data with calculator calls: their answers too
            results["answer_match"] = answers / asked if asked else None

    # a table to read
    total = data.num_eval_batches(batch_size, seq_len)
    scope = f"the first {num_batches} of {total} batches" if num_batches < total else "all of it"
    at_step = f" at step {state['step']}" if state else ""
    print(f"{where}{at_step} on the {split} split of {folder} ({scope}): {results['tokens']:,} target tokens, "
          f"{results['bytes']:,} bytes")
    rows = [("loss", f"{results['loss']:.4f}"), ("accuracy", f"{100 * results['accuracy']:.2f}%"),
            ("perplexity", f"{results['perplexity']:.2f}"),
            ("bits per byte", "-" if results["bits_per_byte"] is None else f"{results['bits_per_byte']:.4f}")]
    if objective in ("sft", "chat"):
        rows.append(("exact match", "-" if results["exact_match"] is None else
                     f"{100 * results['exact_match']:.2f}% of {results['exact_match_examples']} "
                     + ("completions" if objective == "sft" else "last replies")))
    if results.get("answer_match") is not None:  # the final number, however the reply got there
        rows.append(("answer match", f"{100 * results['answer_match']:.2f}% (calculator {'on' if tools else 'off'})"))
    for name, value in rows:
        print(f"  {name:<14} {value}")
    return results


# -----------------------------------------------------------------------------
# downstream benchmarks and/or the loss; then the report card and the JSON
results = {"checkpoint": where, "step": state["step"] if state else None, "task_data": task_data}  # "" = the hub
if task_names:
    t0 = time.time()
    sampling = Sampling(temperature=temperature, top_k=top_k or None, seed=seed) if num_samples else None
    task_results = downstream.run(prepared, model, enc, batch_size, ctx, max_gen_tokens, keep_items=True,
                                  chat=objective in OBJECTIVES and OBJECTIVES[objective].chat,  # chat and rl runs
                                  num_samples=num_samples, sampling=sampling,
                                  verifier=verifier_scores() if verifier else None, tools=tools)
    at_step = f" at step {state['step']}" if state else ""
    print(f"{where}{at_step}: {len(task_names)} task(s), {num_fewshot}-shot, {time.time() - t0:.0f} s")
    print("\n".join(downstream.table(task_results)))
    if num_samples:
        print(f"\n{num_samples} samples per item at temperature {temperature:g}"
              f"{f', top_k {top_k}' if top_k else ''}, seed {seed}" + (f", verifier {verifier}" if verifier else ""))
        print("\n".join(downstream.sampled_table(task_results)))
    results.update(tasks={k: {m: v for m, v in r.items() if m != "items"} for k, r in task_results.items()
                          if k not in downstream.AGGREGATES},
                   **{k: task_results[k] for k in downstream.AGGREGATES})
if not task_names or report:
    results.update(measure_loss())
if report:
    from nash.tasks.report import write_report
    print(f"wrote {write_report(out_dir, model, enc, results, settings, ctx, device)}")
if output:
    tmp = output + ".tmp"
    with open(tmp, "w") as f:  # written beside and renamed: a reader never sees half a file
        json.dump(results, f, indent=2)
    os.replace(tmp, output)
    print(f"wrote {output}")
