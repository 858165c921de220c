"""FSDP (nash/distributed.py): 2 gloo processes against one, exact and resharded resume, sharded runs read by every
script, what it refuses, and the SLURM script's and GPU check's commands. The multi-process runs are slow."""
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY_MODEL, TINY_TRAINING, assert_ddp_matches, error_line, read_metrics, run_script
from nash import distributed
from nash.checkpoint import load_checkpoint, shard_reader
from test_moe import MOE_FLAGS


def torchrun(nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(ROOT, "train.py"), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    return proc


def common(data):
    # grad_clip=0.05: the gradient norm is ~1, so every step clips, and a rank-local (wrong) norm would show
    return [*TINY_MODEL, *TINY_TRAINING, "--dataset=tiny", f"--data_dir={data}", "--max_steps=6", "--eval_interval=3",
            "--grad_accum_steps=2", "--device=cpu", "--bias=False", "--grad_clip=0.05", "--lr_decay_steps=6"]


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """one: a plain 1-process run; two: FSDP on 2 processes; resumed: FSDP on 2, stopped at step 3 and resumed on 2;
    resharded: the same step-3 checkpoint resumed on 1 FSDP process."""
    root = tmp_path_factory.mktemp("fsdp")
    run_script("train.py", *common(tiny_data), f"--out_dir={root / 'one'}")
    torchrun(2, *common(tiny_data), "--fsdp=True", f"--out_dir={root / 'two'}")
    torchrun(2, *common(tiny_data), "--fsdp=True", "--max_steps=3", f"--out_dir={root / 'resumed'}")
    shutil.copytree(root / "resumed", root / "resharded")
    torchrun(2, *common(tiny_data), "--fsdp=True", "--init_from=resume", f"--out_dir={root / 'resumed'}")
    torchrun(1, *common(tiny_data), "--fsdp=True", "--init_from=resume", f"--out_dir={root / 'resharded'}")
    return root


@pytest.mark.slow
def test_fsdp_two_processes_match_one(runs):
    one, two = load_checkpoint(runs / "one" / "ckpt.pt"), load_checkpoint(runs / "two" / "ckpt.pt")
    assert two.get("shards") and "model" not in torch.load(runs / "two" / "ckpt.pt", weights_only=True)
    shard_files = sorted(f for f in os.listdir(two["shards"]) if f.endswith(".distcp"))
    assert len(shard_files) == 2  # each rank wrote its own shard
    assert_ddp_matches(one["model"], two["model"], learning_rate=3e-3, steps=6)  # DDP's bound (conftest: why)
    logged = [[(e["step"], e["loss"], e["grad_norm"]) for e in read_metrics(runs / r) if e["event"] == "train"]
              for r in ("one", "two")]
    assert [s for s, *_ in logged[0]] == [s for s, *_ in logged[1]] == [5, 6]
    for (_, l1, g1), (_, l2, g2) in zip(*logged):
        assert l2 == pytest.approx(l1, rel=1e-5) and g2 == pytest.approx(g1, rel=1e-3)  # the whole norm, not a shard's
        assert g1 > 0.05  # (so clipping was on)


@pytest.mark.slow
def test_fsdp_resume_is_exact_and_reshards(runs):
    two = load_checkpoint(runs / "two" / "ckpt.pt")["model"]
    resumed = load_checkpoint(runs / "resumed" / "ckpt.pt")
    assert resumed["step"] == 6
    for name, w in two.items():
        assert torch.equal(resumed["model"][name], w), name  # bit for bit the uninterrupted run
    resharded = load_checkpoint(runs / "resharded" / "ckpt.pt")
    assert resharded["step"] == 6
    assert_ddp_matches(two, resharded["model"], learning_rate=3e-3, steps=3)  # 1 process instead of 2: rounding only
    # each checkpoint keeps only its newest shard folder: the superseded ones were removed after the switch
    folders = [f for f in os.listdir(runs / "resumed") if ".shards." in f]
    assert sorted(f.split(".shards.")[0] for f in folders) == ["best.pt", "ckpt.pt"]


@pytest.mark.slow
def test_sharded_run_feeds_sample_evaluate_export_and_the_next_stage(runs, tiny_data, sft_data, tmp_path):
    run = runs / "two"
    proc = run_script("sample.py", f"--out_dir={run}", "--max_new_tokens=5", "--num_samples=1", "--device=cpu")
    assert "best.pt (step 6" in proc.stderr and proc.stdout.strip()
    run_script("evaluate.py", f"--out_dir={run}", f"--data_dir={tiny_data}", "--device=cpu")
    run_script("export.py", f"--out_dir={run}", f"--output={tmp_path / 'hf'}")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    # the next stage, itself sharded: SFT from the sharded run, on 2 FSDP processes
    torchrun(2, "--objective=sft", "--dataset=echo", f"--data_dir={sft_data}", f"--init_from={run}", "--fsdp=True",
             "--device=cpu", "--batch_size=4", "--max_steps=2", "--eval_interval=2", "--eval_iters=2",
             "--log_interval=1", "--grad_accum_steps=2", f"--out_dir={tmp_path / 'sft'}")
    sft = load_checkpoint(tmp_path / "sft" / "ckpt.pt")
    assert sft["step"] == 2 and sft["model"].keys() == load_checkpoint(run / "ckpt.pt")["model"].keys()


@pytest.mark.slow
def test_fsdp_moe_two_processes_match_one(tiny_data, tmp_path):
    flags = [*common(tiny_data), *MOE_FLAGS, "--max_steps=3", "--eval_interval=3", "--lr_decay_steps=3",
             "--checkpoint_interval=3"]
    run_script("train.py", *flags, f"--out_dir={tmp_path / 'one'}")
    torchrun(2, *flags, "--fsdp=True", f"--out_dir={tmp_path / 'two'}")
    a, b = load_checkpoint(tmp_path / "one" / "ckpt.pt"), load_checkpoint(tmp_path / "two" / "ckpt.pt")
    assert any(".experts." in name for name in a["model"])
    assert_ddp_matches(a["model"], b["model"], learning_rate=3e-3, steps=3)
    aux = [[e["aux_loss"] for e in read_metrics(tmp_path / r) if e["event"] == "train"] for r in ("one", "two")]
    assert aux[1] == pytest.approx(aux[0], rel=1e-5)


SETTINGS = {"optimizer": "adamw", "lora_rank": 0, "objective": "pretrain", "eval_tasks": ""}


@pytest.mark.parametrize("change, words", [
    ({"optimizer": "muon"}, "--optimizer=adamw"), ({"lora_rank": 8}, "LoRA"), ({"objective": "dpo"}, "dpo"),
    ({"objective": "rl"}, "rl"), ({"objective": "verifier"}, "verifier"), ({"eval_tasks": "arith"}, "evaluate.py"),
])
def test_what_fsdp_refuses_is_named(change, words):
    assert distributed.check_fsdp(SETTINGS, in_torchrun=True) is None
    problem = distributed.check_fsdp({**SETTINGS, **change}, in_torchrun=True)
    assert problem and words in problem and "\n" not in problem


def test_fsdp_without_torchrun_or_with_muon_is_one_error_line(tiny_data, tmp_path):
    proc = run_script("train.py", "--fsdp=True", f"--out_dir={tmp_path / 'o'}", check=False)
    assert "torchrun" in error_line(proc)
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}  # as torchrun sets them; the check comes first
    proc = run_script("train.py", "--fsdp=True", "--optimizer=muon", f"--out_dir={tmp_path / 'o'}", env=env, check=False)
    assert "Muon" in error_line(proc)
    assert not (tmp_path / "o").exists()


def test_a_missing_shard_folder_is_one_error_line(tmp_path):
    from nash.checkpoint import save_checkpoint
    save_checkpoint(str(tmp_path / "ckpt.pt"), {"shards": "ckpt.pt.shards.gone", "step": 1})
    proc = run_script("sample.py", f"--out_dir={tmp_path}", check=False)
    assert "missing or incomplete" in error_line(proc)


def test_shard_metadata_that_holds_code_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))
    (tmp_path / ".metadata").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="not part of a DCP"):
        shard_reader(str(tmp_path)).read_metadata()


def slurm_command(tmp_path, *args, env=None):
    """runs/slurm.sbatch's command in a dry run, on a pretend two-node job (a stand-in scontrol lists the nodes)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] || exit 2\necho "$3" | tr , "\\n"\n')
    (bin_dir / "scontrol").chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "runs", "slurm.sbatch"), *map(str, args)], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                                         "DRY_RUN": "1", "SLURM_JOB_NODELIST": "gpu-a,gpu-b",
                                                         "SLURM_JOB_ID": "77", **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return shlex.split(proc.stdout)


def test_slurm_dry_run_builds_one_agent_per_node_meeting_on_the_first(tmp_path):
    cmd = slurm_command(tmp_path, "config/train_100m.py", "--fsdp=True", "--out_dir=/shared/my run")
    assert cmd[:3] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"]
    launcher = cmd[3:cmd.index("train.py")]
    assert launcher[:3] == ["python", "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc_per_node=8", "--rdzv_id=77", "--rdzv_backend=c10d",
            "--rdzv_endpoint=gpu-a:29500"} == set(launcher[3:])
    assert cmd[cmd.index("train.py") + 1:] == ["config/train_100m.py", "--fsdp=True", "--out_dir=/shared/my run"]
    cmd = slurm_command(tmp_path, env={"GPUS_PER_NODE": "4", "RDZV_PORT": "1234"})
    assert "--nproc_per_node=4" in cmd and "--rdzv_endpoint=gpu-a:1234" in cmd
    proc = subprocess.run(["bash", os.path.join(ROOT, "runs", "slurm.sbatch")], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "SLURM_JOB_NODELIST"})
    assert proc.returncode != 0 and "run this with sbatch" in proc.stderr


@pytest.mark.slow
def test_two_nodes_on_loopback_train_with_fsdp(runs, tiny_data, tmp_path):
    """The dry run's command, run as SLURM would on each of two nodes (here two agents on this machine, one GPU-less
    process each), trains the same model as 2 processes of one torchrun."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = slurm_command(tmp_path, *common(tiny_data), "--fsdp=True", f"--out_dir={tmp_path / 'nodes'}",
                        env={"GPUS_PER_NODE": "1", "RDZV_PORT": str(port)})
    agent = [sys.executable if a == "python" else a for a in cmd[cmd.index("python"):]]
    agent = [f"--rdzv_endpoint=127.0.0.1:{port}" if a.startswith("--rdzv_endpoint=") else a for a in agent]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(agent, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    two = load_checkpoint(runs / "two" / "ckpt.pt")["model"]
    nodes = load_checkpoint(tmp_path / "nodes" / "ckpt.pt")
    assert sorted(f for f in os.listdir(nodes["shards"]) if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert_ddp_matches(two, nodes["model"], learning_rate=3e-3, steps=6)


def test_gpu_check_without_cuda_says_so_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the check would run")
    proc = subprocess.run(["bash", os.path.join(ROOT, "runs", "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120)
    assert "needs a CUDA GPU" in error_line(proc) and proc.stdout == ""


@pytest.mark.slow
def test_gpu_check_code_paths_run_on_the_cpu():
    """--smoke: every row of the GPU check at a tiny size on the CPU, so the script is not first run on a GPU."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benches", "gpu.py"), "--smoke"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 and "FSDP" in proc.stdout and "DDP" in proc.stdout
    assert "4/4 prompts agree" in lines[-1]


@pytest.mark.slow
def test_memory_bench_measures_fsdp_holding_half_per_rank_on_two(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_script("bench.py", "--what=memory", "--n_layers=2", "--n_heads=2", "--d_model=32", "--d_ff=64",
                      "--max_seq_len=32", f"--output={out}", "--threads=1")
    import json
    r = json.loads(out.read_text())["results"]["memory"]
    for mode, share in (("ddp", 1.0), ("fsdp", 0.5)):
        for rec in r[mode]["per_rank"]:
            whole = r["ddp"]["per_rank"][0]
            for k in ("params", "grads", "optimizer"):  # each rank's own shard: half of everything, within padding
                assert rec[k] == pytest.approx(share * whole[k], rel=0.01), (mode, k)
    assert r["ddp"]["bytes_per_param"] == pytest.approx(16, rel=0.01)  # fp32 weights + grads + Adam's two moments
    assert "largest that fits" in proc.stdout and "nanochat d32" in proc.stdout


FP16_OVERFLOW = '''
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from model import GPT, GPTConfig
from nash import distributed
dist.init_process_group("gloo")
torch.manual_seed(0)
model = distributed.shard(GPT(GPTConfig(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=32, vocab_size=100,
                                        dropout=0.0)), "cpu", "float16")
[opt] = model.configure_optimizers("adamw", 1e-3, 0.1, (0.9, 0.95), "cpu")
scaler = distributed.grad_scaler("cpu", True, sharded=True)
x = torch.randint(0, 100, (2, 16))
for i in range(3):
    _, loss = model(x, x)
    scaler.scale(loss).backward()
    if dist.get_rank() == 1 and i == 1:  # an overflow in one rank's shard only
        next(p for p in model.parameters() if p.grad is not None).grad._local_tensor.fill_(float("inf"))
    scaler.unscale_(opt)
    distributed.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    # one write of the whole line: the two ranks share the pipe, and print's pieces could interleave
    os.write(1, f"{dist.get_rank()} {i} {scaler.get_scale()} {loss.item()}\\n".encode())
'''


@pytest.mark.slow
def test_fsdp_float16_skips_an_overflow_on_every_rank(tmp_path):
    """float16 under FSDP: an inf in one rank's gradient shard makes every rank skip the step and halve the scale
    (a per-rank scaler would step on one rank and not the other, and their scales would part)."""
    (tmp_path / "fp16.py").write_text(FP16_OVERFLOW)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "fp16.py"), ROOT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = sorted(tuple(line.split()) for line in proc.stdout.splitlines())
    by_step = {}
    for rank, i, scale, loss in rows:
        by_step.setdefault(int(i), set()).add((float(scale), float(loss)))
    assert all(len(v) == 1 for v in by_step.values()), by_step  # the ranks agree at every step
    (s0, l0), (s1, l1), (s2, l2) = (next(iter(by_step[i])) for i in range(3))
    assert s1 == s0 / 2 and s2 == s1  # the overflow halved the scale once
    assert l2 == l1 != l0  # and its step was skipped: the weights did not move
