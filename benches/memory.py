"""bench.py --what=memory: the bytes each process holds for weights, gradients and AdamW state under DDP and under
FSDP, measured (each rank sums the storage of the tensors it really holds after one training step, in CPU processes
under torchrun), and from those the largest model whose training state fits a GPU.

Run by bench.py; this file is also the worker that torchrun starts (python -m torch.distributed.run ... memory.py)."""
import json
import os
import sys
from dataclasses import asdict, replace

RANKS = 2  # processes measured (the CPU here is small; FSDP's share is 1/N, so the 2-process figure scales)
CARDS_GB = (24, 40, 80)
GPUS = 8  # FSDP over this many GPUs in the fit table (a node)
HEADROOM = 0.75  # the training state may take this share of a card; the rest is for activations and workspace
SHAPES = {  # GPT-2's four sizes, and nanochat's depth-20 and depth-32 models (untied, ReLU², 65,536 tokens)
    "GPT-2 124M": dict(n_layers=12, n_heads=12, d_model=768, d_ff=3072),
    "GPT-2 350M": dict(n_layers=24, n_heads=16, d_model=1024, d_ff=4096),
    "GPT-2 774M": dict(n_layers=36, n_heads=20, d_model=1280, d_ff=5120),
    "GPT-2 1.5B": dict(n_layers=48, n_heads=25, d_model=1600, d_ff=6400),
    "nanochat d20": dict(n_layers=20, n_heads=10, d_model=1280, d_ff=5120, vocab_size=65536, tie_weights=False,
                         mlp="relu2", pos_emb="rope", norm="rmsnorm", bias=False),
    "nanochat d32": dict(n_layers=32, n_heads=16, d_model=2048, d_ff=8192, vocab_size=65536, tie_weights=False,
                         mlp="relu2", pos_emb="rope", norm="rmsnorm", bias=False),
}


def local_bytes(tensors):
    """Bytes of memory the tensors hold in this process (a DTensor: its local shard only), each storage once (FSDP's
    gradients are views into one reduce-scatter buffer per block)."""
    storages = {}
    for t in tensors:
        storage = getattr(t, "_local_tensor", t).untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def worker(mode, shape):
    """One rank: build, wrap (DDP or FSDP), one AdamW step on random tokens; print this rank's bytes as JSON."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from model import GPT, GPTConfig
    from nash import distributed
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**shape))
    if mode == "fsdp":
        model = distributed.shard(model, "cpu", "float32")
    [opt] = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")
    step_model = model if mode == "fsdp" else DDP(model)
    x = torch.randint(model.config.vocab_size, (2, shape["max_seq_len"]))
    _, loss = step_model(x, x)
    loss.backward()
    opt.step()
    params = list(model.parameters())
    record = {"params": local_bytes(params), "grads": local_bytes(p.grad for p in params if p.grad is not None),
              "optimizer": local_bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()),
              "num_params": model.num_params(), "rank": dist.get_rank()}
    records = [None] * dist.get_world_size()
    dist.all_gather_object(records, record)
    if dist.get_rank() == 0:
        print(json.dumps(records))
    dist.destroy_process_group()


def bench_memory(tmp, cfg):
    from benches.common import run
    shape = {**cfg.train_args, "vocab_size": 50257}
    results = {"ranks": RANKS, "shape": shape}
    for mode in ("ddp", "fsdp"):
        line, _, _ = run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={RANKS}",
                          os.path.abspath(__file__), mode, json.dumps(shape)], f"the {mode} memory worker",
                         env={"OMP_NUM_THREADS": "1"})
        records = json.loads(line)
        results[mode] = {"per_rank": records, "num_params": records[0]["num_params"],
                         "bytes_per_param": max(sum(r[k] for k in ("params", "grads", "optimizer")) for r in records)
                         / records[0]["num_params"]}
    results["fits"] = fit_table(results["ddp"]["bytes_per_param"], results["fsdp"]["bytes_per_param"] * RANKS / GPUS)
    return results


def fit_table(ddp_bytes, fsdp_bytes):
    """For each shape: its parameters and, per card size, whether DDP and FSDP (over GPUS GPUs) fit its state."""
    import torch
    from model import GPT, GPTConfig
    rows = []
    for name, shape in SHAPES.items():
        with torch.device("meta"):
            n = GPT(GPTConfig(**shape)).num_params()
        rows.append({"shape": name, "num_params": n, **{f"{gb}GB": [n * b <= HEADROOM * gb * 2**30 for b in
                                                                    (ddp_bytes, fsdp_bytes)] for gb in CARDS_GB}})
    largest = {f"{gb}GB": [int(HEADROOM * gb * 2**30 / b) for b in (ddp_bytes, fsdp_bytes)] for gb in CARDS_GB}
    return {"rows": rows, "largest": largest, "ddp_bytes_per_param": ddp_bytes, "fsdp_bytes_per_param": fsdp_bytes}


def report(r, table):
    n = r["ddp"]["num_params"]
    table(f"memory: bytes per rank after one AdamW step, {n / 1e6:.2f}M parameters ({r['shape']['n_layers']} layers x "
          f"{r['shape']['d_model']}), {r['ranks']} CPU processes, float32, measured",
          ["", "rank", "weights", "gradients", "AdamW state", "total", "bytes/parameter"],
          [[mode.upper(), rec["rank"], *(f"{rec[k] / 2**20:.2f} MB" for k in ("params", "grads", "optimizer")),
            f"{sum(rec[k] for k in ('params', 'grads', 'optimizer')) / 2**20:.2f} MB",
            f"{sum(rec[k] for k in ('params', 'grads', 'optimizer')) / n:.2f}"]
           for mode in ("ddp", "fsdp") for rec in r[mode]["per_rank"]])
    f = r["fits"]
    table(f"memory: does the training state fit in {HEADROOM:.0%} of a card? (DDP: {f['ddp_bytes_per_param']:.1f} B/param "
          f"measured; FSDP over {GPUS} GPUs: {f['fsdp_bytes_per_param']:.1f} B/param, the {r['ranks']}-process figure "
          f"x {r['ranks']}/{GPUS}; activations not included)",
          ["model", "parameters", *(f"{gb} GB: DDP / FSDP" for gb in CARDS_GB)],
          [[row["shape"], f"{row['num_params'] / 1e6:,.0f}M",
            *(" / ".join("yes" if ok else "no" for ok in row[f"{gb}GB"]) for gb in CARDS_GB)] for row in f["rows"]]
          + [["largest that fits", "", *(" / ".join(f"{p / 1e9:.1f}B" for p in f["largest"][f"{gb}GB"])
                                         for gb in CARDS_GB)]])


if __name__ == "__main__":  # a torchrun worker: python memory.py ddp|fsdp '<shape json>'
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker(sys.argv[1], json.loads(sys.argv[2]))
