"""
More than one process: DDP (a whole model on every GPU) or FSDP2 (each GPU holds 1/N of the parameters, gradients
and optimizer state), and the sharded checkpoints FSDP writes. train.py calls these; docs/distributed.md explains.

FSDP here is PyTorch's own (torchtitan's recipe, small): `fully_shard` on every block and on the root, a
`MixedPrecisionPolicy` (bf16/fp16 compute, fp32 gradient reduction), AdamW on the sharded parameters, and
torch.distributed.checkpoint (DCP) for checkpoints, each rank writing its own shard.

A sharded checkpoint is two things beside each other in the run folder:

    out_dir/ckpt.pt                      plain data as always (settings, step, config, tokenizer, ...), plus
                                         "shards": the name of the folder below (and no "model"/"optimizers")
    out_dir/ckpt.pt.shards.<id>/         DCP: one __<rank>_0.distcp file per rank + .metadata

The folder is written under .tmp, renamed, and only then does ckpt.pt (written atomically) point at it; the old
folder is deleted last, so a crash at any moment leaves a ckpt.pt whose shards exist. Readers that want a whole
model (sample.py, evaluate.py, export.py, the next stage's init_from) get one from nash/checkpoint.load_checkpoint,
which consolidates the shards in memory; resuming with FSDP loads them resharded to any number of processes.
"""
import os
import shutil
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

SHARDED_OBJECTIVES = ("pretrain", "sft", "chat")  # the objectives whose every step is the same forwards on every rank


def check_fsdp(settings, in_torchrun):
    """One line saying why these settings cannot train with fsdp=True, or None."""
    if not in_torchrun:
        return ("--fsdp=True shards the model over processes: launch with torchrun, e.g. "
                "torchrun --standalone --nproc_per_node=8 train.py --fsdp=True (1 process works too)")
    if settings["optimizer"] != "adamw":
        return (f"--fsdp=True trains with AdamW; optimizer={settings['optimizer']} (Muon) orthogonalises whole "
                f"matrices, which FSDP splits over processes: use --optimizer=adamw, or DDP (--fsdp=False)")
    if settings["lora_rank"]:
        return "LoRA trains small adapters on a frozen model: use DDP (--fsdp=False), the frozen base needs no sharding"
    objective = settings["objective"]
    if objective not in SHARDED_OBJECTIVES:
        return (f"--fsdp=True supports the objectives {', '.join(SHARDED_OBJECTIVES)}; {objective} samples answers (or "
                f"keeps a reference model) per process, which sharded weights cannot do in step: use DDP (--fsdp=False)")
    if settings["eval_tasks"]:
        return ("eval_tasks runs on the first process only, which sharded weights cannot do: drop --eval_tasks and "
                "score the run's checkpoint with evaluate.py afterwards")
    return None


def shard(model, device, dtype):
    """The FSDP2 version of model on device: an empty copy built on the meta device, `fully_shard` on each block
    and the root, then materialised shard by shard; its weights are model's (on the first process: the others may
    pass a model on the meta device), broadcast parameter by parameter, each rank keeping only its slice. So the
    initial weights are exactly those of a one-process run with the same seed, and no GPU ever holds the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
    with torch.device("meta"):
        sharded = type(model)(model.config)
    compute = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32) if compute else MixedPrecisionPolicy()
    for block in sharded.transformer.h:  # one all-gather per block: only one block is ever whole at a time
        fully_shard(block, mp_policy=policy)
    fully_shard(sharded, mp_policy=policy)  # the root: embeddings, final norm, lm_head
    for method in ("score_tokens", "score"):  # the objectives' entry points besides forward gather the root too
        register_fsdp_forward_method(sharded, method)
    sharded.to_empty(device=device)
    first = dist.get_rank() == 0
    set_model_state_dict(sharded, model.state_dict() if first else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    with torch.no_grad():  # buffers outside the state dict (RoPE tables): from the first process too
        originals = dict(model.named_buffers())
        for name, buf in sharded.named_buffers():
            if first:
                buf.copy_(originals[name])
            dist.broadcast(buf, src=0)
    sharded.train(model.training)
    return sharded


def ddp(model, device_type, local_rank):
    """DDP's wrapper: one whole model per process, gradients all-reduced in backward."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[local_rank] if device_type == "cuda" else None)


def is_sharded(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


@contextmanager
def no_sync(model, skip):
    """Gradient accumulation: skip=True on all but the last micro-step, so gradients are reduced once per step
    (DDP's no_sync; FSDP's set_requires_gradient_sync, which keeps them unsharded until then)."""
    if not skip:
        yield
        return
    inner = getattr(model, "_orig_mod", model)  # (under torch.compile)
    if is_sharded(inner):
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        with model.no_sync():
            yield


def clip_grad_norm_(parameters, max_norm):
    """torch.nn.utils.clip_grad_norm_, correct for sharded gradients: each rank's norm is of its shard, so the
    DTensor norm is made whole (an all-reduce) before the clip factor is taken. Returns the global norm."""
    from torch.distributed.tensor import DTensor
    params = [p for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def grad_scaler(device_type, enabled, sharded):
    """float16's loss scaler. Sharded, each rank sees only its gradients' overflows: ShardedGradScaler all-reduces
    them, so every rank skips the same steps and keeps the same scale."""
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        class Scaler(ShardedGradScaler):
            def step(self, optimizer, *args, **kwargs):
                # GradScaler hands a fused AdamW (model.configure_optimizers, CPU and CUDA) its overflow flags to
                # skip inside the kernel; ShardedGradScaler's are shaped (1,) and the update went NaN over DTensors.
                # The plain path is exact: gradients unscaled, the step skipped whole if any rank overflowed.
                fused, optimizer._step_supports_amp_scaling = getattr(optimizer, "_step_supports_amp_scaling", False), False
                try:
                    return super().step(optimizer, *args, **kwargs)
                finally:
                    optimizer._step_supports_amp_scaling = fused
        return Scaler(device_type, enabled=enabled)
    return torch.amp.GradScaler(device_type, enabled=enabled)


def _state_dicts(model, optimizers):
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizers)}


def save_sharded(path, model, optimizers, state):
    """Every process calls this: each writes its shard of the weights and optimizer state with DCP, then the first
    writes path (plain data, pointing at the shards) atomically. Refuses to save NaN weights."""
    import torch.distributed.checkpoint as dcp
    from nash.checkpoint import save_checkpoint
    from nash.common import fail
    first = dist.get_rank() == 0
    model.reshard()  # (after an eval's forward the root's weights are still gathered: save the shards)
    finite = torch.tensor(float(all(torch.isfinite(p.to_local()).all() for p in model.parameters())),
                          device=next(model.parameters()).device)
    dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not finite.item():
        if first:
            fail(f"the weights hold NaN or inf at step {state.get('step')}; not saving over {path}")
        raise SystemExit(1)
    stamp = [time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}"]
    dist.broadcast_object_list(stamp, src=0)  # one folder name for every rank
    name = f"{os.path.basename(path)}.shards.{stamp[0]}"
    folder = os.path.join(os.path.dirname(path), name)
    dcp.save(_state_dicts(model, optimizers), checkpoint_id=f"{folder}.tmp")  # collective: returns once all wrote
    if first:
        os.replace(f"{folder}.tmp", folder)
        save_checkpoint(path, {**state, "shards": name})
        here = os.path.dirname(path) or "."
        for other in os.listdir(here):  # the superseded folder, and any a crash or an --overwrite left behind
            if other.startswith(f"{os.path.basename(path)}.shards.") and other != name:
                shutil.rmtree(os.path.join(here, other), ignore_errors=True)
    dist.barrier()  # nobody reads or overwrites the checkpoint before it is in place


def load_sharded(model, optimizers, resume):
    """Resume an FSDP run: the weights and optimizer state read from the shards into this run's sharding (DCP
    reshards, so the number of processes may differ from the run that saved them)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    from nash.checkpoint import shard_reader
    from nash.common import fail
    if not resume.get("shards"):
        fail("this run was trained without --fsdp (its checkpoint holds whole weights): resume it without "
             "--fsdp=True, or start an FSDP run from it with --init_from=<its folder>")
    if not is_sharded(model):
        fail("this run was trained with --fsdp=True (a sharded checkpoint): resume it with --fsdp=True under "
             "torchrun, on any number of processes")
    state = _state_dicts(model, optimizers)
    dcp.load(state, storage_reader=shard_reader(resume["shards"]))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizers, state["optim"])
