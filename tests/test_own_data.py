"""Issue 37 item 7, as the newcomer ran it: SFT on their own 50-row JSONL with the demo's config. 2,000 steps of 32
rows go 1,280 times through 50 examples; the run said nothing while its loss sat at 0.0000 for an hour of ETA. It
now warns before the first step, and the warning names the fixes."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs train.py


def test_fifty_rows_for_two_thousand_steps_warn_before_training(tmp_path):
    data = tmp_path / "my_task"
    data.mkdir()
    for split, n in (("train", 50), ("val", 5)):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"prompt": f"Describe: green owl {i}\n", "completion": f" owl {i} green"}) + "\n" for i in range(n)))
    # the own-data command with the demo's config (a smaller model), stopped once the first step is logged
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), "config/sft_demo.py", "--dataset=my_task",
                             f"--data_dir={data}", f"--out_dir={tmp_path / 'out-my-sft'}", "--n_layers=1",
                             "--d_model=32", "--n_heads=2", "--d_ff=64", "--log_interval=1", "--eval_interval=0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("step ") or len(lines) > 50:
                break
    finally:
        proc.kill()
        proc.wait()
    out = "".join(lines)
    assert "warning: 2000 steps of 32 sequences go 1280 times through the 50 training examples" in out, out
    assert "--max_steps" in out and "--early_stopping_patience" in out, out
    assert out.index("warning:") < out.index("step 1/2000"), out  # before the training, not after an hour of it
