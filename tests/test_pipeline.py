"""SMOKE=1 runs/cpu.sh as the README shows it: every stage of the pipeline (tokenizer, data, base, its evals, chat
SFT, DPO, RL, SFT for RL's compute, their evals, verifier, best-of-N) shrunk to seconds, each announced with the
pipeline's progress and time left, ending in a report card with a figure, a refusal or "not run" in every cell and
one curve panel per kind of quantity; a rerun skips the finished stages; a failing stage stops the script with its
own error. The full-size scripts' commands (runs/gpu.sh's too) are checked in a dry run."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow  # runs/cpu.sh and runs/gpu.sh end to end


def run(tmp_path, **env):
    return subprocess.run(["bash", "runs/cpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "SMOKE": "1", "DIR": str(tmp_path / "pipeline"), **env})


STAGES = ["data", "base", "base_eval", "base_loss", "sft", "sft_eval", "dpo_pairs", "dpo", "dpo_eval", "rl",
          "rl_eval", "sft_more", "sft_more_eval", "verifier", "best_of_n"]


def write_pairs(folder, n=4):
    """DPO pairs as nash/tasks/pairs.py writes them, by hand: the SMOKE chat model answers nothing right, so it gives
    none. Chosen: a right answer; rejected: the same working with a wrong result."""
    rows = [json.loads(line) for line in open(os.path.join(ROOT, "data", "countdown", "train.jsonl"))][:n]
    folder.mkdir()
    for split in ("train", "val"):
        with open(folder / f"{split}.jsonl", "w") as f:
            for r in rows:
                reply = r["answer"]
                wrong = reply.rsplit("#### ", 1)[0] + f"#### {int(reply.rsplit('#### ', 1)[1]) + 1}"
                f.write(json.dumps({"messages": [{"role": "user", "content": r["question"]}], "chosen": reply,
                                    "rejected": wrong}) + "\n")


def table(report, section):
    body = report.split(f"## {section}")[1].split("\n## ")[0]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in body.splitlines() if line.startswith("| ") and not line.startswith("| metric")}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One SMOKE run of the whole pipeline: the first test reads what it printed, later ones copy its folder."""
    tmp = tmp_path_factory.mktemp("smoke")
    return tmp, run(tmp)


def test_smoke_pipeline_runs_every_stage_and_writes_the_report(smoke):
    tmp_path, proc = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("threads: ")  # decided on purpose, and said
    lines = proc.stdout.splitlines()
    headers = [line for line in lines if line.startswith("== stage")]
    assert [h.split(":")[:2] for h in headers] == [[f"== stage {k} of {len(STAGES)}", f" {name}"]
                                                   for k, name in enumerate(STAGES, 1)]
    # under each header, where the whole pipeline stands: stage i/N, elapsed, the time left
    progress = [lines[lines.index(h) + 1] for h in headers]
    assert all(p.startswith(f"   pipeline: stage {k}/{len(STAGES)} | elapsed ") and " left " in p
               for k, p in enumerate(progress, 1))
    assert progress[0].endswith("left (the measured stage times)")  # nothing ran yet: the times as measured
    assert progress[-1].endswith("scaled by this run's speed so far)")  # a smoke run is fast: its estimate shrinks
    assert proc.stdout.strip().splitlines()[-1] == f"the report card: {tmp_path / 'pipeline'}/report.md"
    # the SMOKE chat model answers no problem right: no pairs of its own, said in one line, DPO and its eval skipped
    assert "   no DPO pairs: the chat model answered no question both right and wrong; DPO and its eval are skipped" \
        in lines and lines.count("   skipped: no DPO pairs (stage dpo_pairs)") == 2
    assert not (tmp_path / "pipeline" / "dpo").exists() and "error:" not in proc.stderr
    report = (tmp_path / "pipeline" / "report.md").read_text()
    assert list(table(report, "Headline").values())[2][2] == "not run"  # countdown, DPO
    # with pairs (written by hand here), a rerun trains DPO from the chat model on them and asks it in chat format
    write_pairs(tmp_path / "pipeline" / "dpo_pairs")
    for stage in ("dpo", "dpo_eval"):
        (tmp_path / "pipeline" / ".done" / stage).unlink()
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("finished in an earlier run: skipped") == len(STAGES) - 2
    assert "--data_dir=" + str(tmp_path / "pipeline" / "dpo_pairs") in proc.stdout and "--objective=chat" in proc.stdout
    report = (tmp_path / "pipeline" / "report.md").read_text()
    headline, checks = table(report, "Headline"), table(report, "Machinery checks")
    assert all(len(cells) == 6 for cells in headline.values()) and all(c for cells in headline.values() for c in cells)
    text, bpb, countdown = headline.values()
    # 4 items of each at SMOKE scale: refused unless their interval excludes chance; bits per byte has its tokens
    assert text[0] == "no signal (n=4): in the machinery checks" or "± " in text[0]
    assert bpb[0].endswith(")") and int(bpb[0].split("n=")[1][:-1]) >= 200 and bpb[1:] == ["not run"] * 5
    assert all(c.startswith("no signal (n=4)") or "(n=4)" in c for c in countdown[1:])
    assert countdown[0] == "not run" and text[1] == "not run"
    assert checks["CORE"][0] != "not run" and checks["ChatCORE"][1] != "not run" and checks["ChatCORE"][3] != "not run"
    assert checks["HumanEval"][1].endswith("(n=4)") and checks["ChatCORE"][4] == "not run"  # (a mean of greedy figures)
    # what the headline refused, measured: the held-out text on the base model, countdown on every chat stage
    assert checks["Held-out Shakespeare"][0].endswith("(n=4)") and checks["Held-out Shakespeare"][1] == "not run"
    countdown_checks = checks["Countdown (correct: working and target)"]
    assert all(c.endswith("(n=4)") for c in countdown_checks[1:]) and countdown_checks[0] == "not run"
    assert all(cell for cells in checks.values() for cell in cells)
    stages = report.split("## Stages")[1]
    for stage in ("base", "sft", "dpo", "rl", "sft_more", "verifier"):
        assert f"| {stage} |" in stages
    settings = table(report, "Settings that matter")
    assert settings["rl"][1].startswith("countdown problems") and settings["verifier"][1].startswith("countdown problems")
    assert settings["base"][1] == "corpus" and settings["sft"][1] == "countdown/chat" and settings["dpo"][1] == "dpo_pairs"
    assert "![one panel per kind of quantity](pipeline_curves.png)" in report

    again = run(tmp_path)  # everything finished: every stage is skipped
    assert again.returncode == 0 and again.stdout.count("finished in an earlier run: skipped") == len(STAGES)


def test_a_stages_file_cut_short_is_repaired_and_said_in_one_line(smoke, tmp_path):
    """A stage killed while runs/lib.sh wrote its line leaves stages.jsonl cut mid-line (issue 35): the rerun finishes,
    no traceback, one line says what was dropped, and the file is whole again, one line per stage."""
    folder = tmp_path / "pipeline"
    shutil.copytree(smoke[0] / "pipeline", folder)
    stages = folder / "stages.jsonl"
    lines = stages.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["stage"] == "best_of_n"
    stages.write_text("".join(lines[:-1]) + lines[-1][:20])  # killed mid-write: the line cut, the stage not done
    (folder / ".done" / "best_of_n").unlink()
    proc = run(tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if "stages.jsonl" in line]
    assert notes == [f"note: {stages}: 1 line(s) cut short dropped (a stage stopped while writing it); the file is "
                     f"rewritten whole"]
    assert [json.loads(line)["stage"] for line in stages.read_text().splitlines()] == STAGES
    assert not (folder / "stages.jsonl.tmp").exists()
    # every stage done and the file cut again (by hand, or an older runs/lib.sh): nothing runs; the card leaves the
    # line out and says so in one line
    stages.write_text(stages.read_text()[:-10])
    proc = run(tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    notes = [line for line in (proc.stdout + proc.stderr).splitlines() if "stages.jsonl" in line]
    assert len(notes) == 1 and notes[0].startswith(f"note: {stages}: 1 line(s) cut short left out")
    assert f"over {len(STAGES) - 1} stages |" in (folder / "report.md").read_text()


def test_a_failing_stage_stops_the_script_with_its_own_error(tmp_path):
    proc = run(tmp_path, TOKENIZER="nonsense")
    assert proc.returncode == 1 and "error: TOKENIZER=nonsense should be bpe or gpt2" in proc.stderr
    done = tmp_path / "pipeline" / ".done"
    done.mkdir(parents=True, exist_ok=True)
    (done / "data").touch()  # the data stage "finished" but left no shards: pretraining must fail, and stop there
    proc = run(tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert "holds no prepared dataset" in errors[0]  # train.py's own message first
    assert errors[-1].startswith("error: stage 2 (base) failed") and "== stage 3" not in proc.stdout


@pytest.mark.parametrize("script", ["runs/cpu.sh", "runs/gpu.sh"])
def test_every_stage_of_the_full_scripts_names_real_settings(script, tmp_path):
    """DRY_RUN=1 prints each stage's command, runs none: the full-size runs (gpu.sh cannot run here: the hub, GPUs)
    have as many stages as they announce, and every --flag of every command is a setting of its script."""
    proc = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DRY_RUN": "1", "DIR": str(tmp_path / "pipeline")})
    assert proc.returncode == 0, proc.stderr
    headers = [line.split(":")[0] for line in proc.stdout.splitlines() if line.startswith("== stage")]
    n = int(headers[0].split(" of ")[1])
    assert headers == [f"== stage {k} of {n}" for k in range(1, n + 1)]
    commands = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("   $ ")]
    assert len(commands) == n
    known = {}
    for command in commands:
        # the program: a script (train.py) or a module (python -m nash.tasks.pairs), after any wrapper (own_pairs)
        at = next(i for i, a in enumerate(command)
                  if a.endswith(".py") and not a.startswith("config/") or command[i - 1:i] == ["-m"])
        name = command[at]
        if name not in known:  # the settings its --help lists, "  --name = default  # comment" (argparse: "  --name X")
            program = ["-m", name] if command[at - 1] == "-m" else [name]
            help_text = subprocess.run([sys.executable, *program, "--help"], cwd=ROOT, capture_output=True,
                                       text=True).stdout
            assert help_text, f"{script}: {name} --help printed nothing"
            known[name] = {line.split()[0][2:] for line in help_text.splitlines() if line.startswith("  --")}
        for arg in command[at + 1:]:
            if arg.startswith("--"):
                assert arg[2:].split("=")[0] in known[name], f"{script}: {name} has no setting {arg}"
            else:
                assert os.path.isfile(os.path.join(ROOT, arg)), f"{script}: {arg} is not a config file"


def test_the_thread_count_is_decided_on_purpose(tmp_path):
    """Unset, OMP_NUM_THREADS becomes the cores free now (cores less the load, at least 1), and the script says so;
    set, it is kept: torch's default of one thread per core is 6x slower per step on a loaded machine."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run(["bash", "runs/cpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "DRY_RUN": "1", "DIR": str(tmp_path / "a")})
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("threads: ") and "(the cores free now: " in first
    assert 1 <= int(first.split()[1]) <= os.cpu_count()
    proc = subprocess.run(["bash", "runs/cpu.sh"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "DRY_RUN": "1", "DIR": str(tmp_path / "b"), "OMP_NUM_THREADS": "3"})
    assert proc.stdout.splitlines()[0] == "threads: 3 (OMP_NUM_THREADS)"
