"""bench.py --what=finetune: full fine-tuning against LoRA adapters on the embedded SFT demo, as a user runs them
(`python train.py config/sft_demo.py --init_from=BASE [--lora_rank=8 --lora_targets=all]`): each run is train.py in
a fresh process from the same base checkpoint; ms/step from its metrics.jsonl (the first train_warmup steps left
out), peak RSS polled from outside, trainable parameters counted on the model as train.py builds it."""
import json
import os
import sys
from statistics import median

from nash import lora
from benches.common import run
from nash.checkpoint import load_checkpoint, model_from_checkpoint


def bench_finetune(tmp, cfg):
    common = ["config/sft_demo.py", f"--device={cfg.device}", f"--dtype={cfg.dtype}", f"--seed={cfg.seed}",
              "--eval_interval=0", "--checkpoint_interval=0", "--log_interval=1", "--overwrite"]
    env = {"OMP_NUM_THREADS": str(cfg.threads)} if cfg.threads else {}
    base = os.path.join(tmp, "finetune_base")  # the demo's shape after one step: speed does not depend on weights
    run([sys.executable, "train.py", *common, "--max_steps=1", "--checkpoint_interval=1", f"--out_dir={base}"],
        "train.py (the base)", env)
    adapters = [f"--lora_rank={cfg.finetune_rank}", f"--lora_targets={cfg.finetune_targets}"]
    kinds = {"full": [], f"LoRA r={cfg.finetune_rank}": adapters}
    runs = {kind: {"ms": [], "peak_mb": []} for kind in kinds}
    for r in range(cfg.repeats):  # alternating, so that load from other processes hits both alike
        for kind, flags in kinds.items():
            out_dir = os.path.join(tmp, f"finetune{r}")
            _, _, peak = run([sys.executable, "train.py", *common, f"--init_from={base}",
                              f"--max_steps={cfg.train_steps}", *flags, f"--out_dir={out_dir}"], "train.py", env,
                             memory=True)
            with open(os.path.join(out_dir, "metrics.jsonl")) as f:
                times = [e["ms_per_step"] for e in map(json.loads, f) if e["event"] == "train"]
            runs[kind]["ms"].append(median(times[cfg.train_warmup:]))
            runs[kind]["peak_mb"].append(peak)
    model = model_from_checkpoint(load_checkpoint(os.path.join(base, "ckpt.pt")))
    total = model.num_params()
    lora.apply_lora(model, cfg.finetune_rank, targets=cfg.finetune_targets)
    trainable = {"full": total, f"LoRA r={cfg.finetune_rank}": lora.count_trainable(model)[0]}
    peaks = {kind: [p for p in r["peak_mb"] if p] for kind, r in runs.items()}  # polling can only miss a peak: max
    return {kind: dict(ms_per_step=min(r["ms"]), peak_rss_mb=max(peaks[kind], default=None),
                       trainable_params=trainable[kind], total_params=total, run_medians_ms=r["ms"],
                       run_peaks_mb=r["peak_mb"]) for kind, r in runs.items()}
