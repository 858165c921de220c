"""experiments.py as the README runs it, at tiny sizes: both experiments train their pairs of models and print
their tables; the numbers are checked for what they must be whatever the training (counts, and scorings
that must agree within the first window)."""
import json
import math

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow  # trains pairs of models through experiments.py

TINY = ["--n_layers=1", "--n_heads=2", "--d_model=32", "--batch_size=2", "--max_steps=3", "--warmup_steps=1",
        "--eval_iters=1", "--moe_seq_len=16", "--dense_d_ff=32", "--n_experts=4", "--sink_seq_len=8",
        "--eval_sequences=2"]


def test_experiments_moe_and_sinks(tiny_data, tmp_path):
    proc = run_script("experiments.py", "--what=moe,sinks", *TINY, "--dataset=tiny", f"--data_dir={tiny_data}",
                      f"--out_dir={tmp_path}")
    out = proc.stdout
    assert "| dense |" in out and "| MoE 4 experts top-2 |" in out and "expert load" in out
    results = json.load(open(tmp_path / "experiments.json"))
    dense, moe = results["moe"]["dense"], results["moe"]["moe"]
    assert dense["active_params"] == dense["num_params"] < moe["num_params"]
    # equal active MLP size: the MoE model's active count exceeds the dense one by the router and a c_proj bias
    assert moe["active_params"] - dense["active_params"] == 32 * 4 + 32
    for r in (dense, moe):
        assert r["tokens_per_sec"] > 0 and r["peak_rss_mb"] > 50 and math.isfinite(r["val_loss"])

    ppl = results["sinks"]["perplexity"]
    assert len(ppl) == 6 and out.count("| (a) sliding window") == 2
    for model in ("no sinks", "1 learned sink(s)"):
        rows = [v for k, v in ppl.items() if k.startswith(model)]
        # within the first window nothing is evicted yet: the three scorings are the same computation
        assert max(r["ppl_first_window"] for r in rows) - min(r["ppl_first_window"] for r in rows) < 1e-3 * rows[0][
            "ppl_first_window"]
        assert all(math.isfinite(r["ppl_past_context"]) for r in rows)


def test_experiments_bad_setting(tmp_path):
    proc = run_script("experiments.py", "--what=speed", check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        "error: what='speed': unknown experiment 'speed'; choose from moe, sinks")
