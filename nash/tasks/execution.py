"""
Run generated code (HumanEval's completions) in a separate process, never in the evaluating one.

A program passes only if its tests ran to their end: after the program's last line (check(entry_point)) returns,
the child prints a sentinel, a random token the parent sends it per run, and exits 0. An exit of any kind
(exit(), sys.exit(0), os._exit(0), SystemExit), a closed stdout or a guessed sentinel is a failure, as in
human-eval and nanochat. The token lives only in the audit hook's closure, which the program cannot reach.

Layers, outermost first (docs/sandbox.md says what each holds against and what none of them does):
- the parent: a new session (the timeout kills its whole process group), a clean environment (no HF_TOKEN,
  WANDB_API_KEY...), a scratch folder as cwd, HOME and TMPDIR (removed afterwards), stdout and stderr into an
  unlinked file of which only the last few KB are read back;
- the kernel, set by the child before the program runs, none of it undoable from inside: hard rlimits (memory,
  CPU seconds, file size, which also caps the output, open files, no core dumps); a user and network namespace
  of its own (no network at all) where the kernel allows; Landlock where the kernel has it (no writes of any kind
  outside the scratch folder, no TCP, no signals to or ptrace of processes outside, which also keeps other
  processes' /proc files, such as the evaluator's environ, closed);
- an audit hook (sys.addaudithook: it cannot be removed once set), installed from a closure, refusing with
  PermissionError what the program should not do in Python: writes and directory opens outside the scratch
  folder, /proc, chmod through a descriptor, sqlite outside, sockets, new processes, signals, symlinks, ctypes.
The audit hook is a guard against accidents, bypassable by a determined program; the kernel's layers are what
holds, where the machine has them. For hostile code, run evaluations in a container or VM as well.
"""
import os
import secrets
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

OUTPUT_BYTES = 16 << 20  # the child's output file and any file it writes stop here (RLIMIT_FSIZE)
TAIL_BYTES = 8192  # what the parent reads back of the output: the end, where the sentinel and a traceback are

# the child, run as `python -I -B -c CHILD scratch program memory_mb cpu_s output_bytes guarding`
CHILD = r'''
import sys


def make_guard(token, scratch, finisher, guarding):
    """The audit hook, a closure: what it holds (the sentinel token, the scratch path, the C functions it calls)
    lives only in its cells, and the interpreter keeps no Python-visible list of hooks, so the program cannot
    reach or change any of it. It never calls program-controlled code (only exact str/bytes/int paths, C
    functions bound here), so a program can't run code inside it and read its frame."""
    import os, posix
    write, exit_now, getcwd, stat, fspath = posix.write, posix._exit, posix.getcwd, posix.stat, posix.fspath
    getframe, str_, bytes_, int_, type_, refuse = sys._getframe, str, bytes, int, type, PermissionError
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                             "os.chflags", "os.setxattr", "os.removexattr", "shutil.rmtree", "os.rename"})
    FD_EVENTS = frozenset({"os.chmod", "os.chown", "os.utime", "os.chflags", "os.setxattr", "os.removexattr"})
    FORBIDDEN = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                           "os.forkpty", "os.kill", "os.killpg", "signal.pthread_kill", "ctypes.dlopen", "ctypes.cdata",
                           "pty.spawn", "os.link", "os.symlink", "gc.get_objects", "gc.get_referrers",
                           "gc.get_referents", "sys._current_frames", "sys.settrace", "sys.setprofile",
                           "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo",
                           "_posixsubprocess.fork_exec", "os.startfile", "webbrowser.open"})
    BANNED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_xxsubinterpreters"})

    def absolute(path):  # lexical, with str methods only: os.path's Python code could be monkeypatched
        if type_(path) is bytes_:
            path = path.decode("utf-8", "surrogateescape")
        if not path.startswith("/"):
            path = getcwd() + "/" + path
        parts = []
        for part in path.split("/"):
            if part == "..":
                parts = parts[:-1]
            elif part and part != ".":
                parts.append(part)
        return "/" + "/".join(parts)

    def inside(path):  # no symlinks can be made (os.symlink is refused), so the lexical path is the real one
        p = absolute(path)
        return p == scratch or p.startswith(scratch + "/")

    def guard(event, args):
        if event == "nash.finished":  # the tests ran to their end: only the wrapper's own frame may say so
            if getframe(1) is finisher:
                write(1, b"\n" + token + b"\n")
                exit_now(0)
            raise refuse("sandbox: only the sandbox says when the program finished")
        if not guarding:  # tests of the kernel's layers alone
            return
        if event == "open":
            path, flags = args[0], args[2]
            if type_(path) is int_:
                return
            if type_(path) is not str_ and type_(path) is not bytes_:
                raise refuse("sandbox: open a path given as str or bytes")
            p = absolute(path)
            if p == "/proc" or p.startswith("/proc/"):  # other processes' environ, our own memory (the token)
                raise refuse("sandbox: /proc is not readable")
            if inside(path):
                return
            if (flags or 0) & WRITE:
                raise refuse(f"sandbox: {p} is outside the scratch folder")
            try:
                is_dir = stat(path).st_mode & 0o170000 == 0o040000
            except OSError:
                return
            if is_dir:  # a directory descriptor would let os.open(..., dir_fd=) write anywhere
                raise refuse(f"sandbox: {p} is a directory outside the scratch folder")
        elif event in PATH_EVENTS:
            path = args[0]
            if type_(path) is int_:
                if event in FD_EVENTS:  # os.fchmod & co: the descriptor may be a file opened outside, read-only
                    raise refuse(f"sandbox: {event} through a file descriptor is not allowed")
                return
            if (type_(path) is not str_ and type_(path) is not bytes_) or not inside(path):
                raise refuse(f"sandbox: {event} outside the scratch folder")
            if event == "os.rename" and (type_(args[1]) not in (str_, bytes_) or not inside(args[1])):
                raise refuse("sandbox: os.rename outside the scratch folder")
        elif event == "sqlite3.connect":
            path = args[0]
            if type_(path) not in (str_, bytes_) or not (path == ":memory:" or inside(path)):
                raise refuse("sandbox: sqlite3.connect outside the scratch folder")
        elif event in FORBIDDEN or (event == "import" and type_(args[0]) is str_ and args[0] in BANNED_MODULES):
            raise refuse(f"sandbox: {event} is not allowed")
    return guard


def contain(scratch, memory_mb, cpu_s, output_bytes):
    """The kernel's layers, which hold whatever the program does in Python (none can be undone from inside):
    limits, no network, Landlock. Returns the names of the layers that took, for the tests and the docs."""
    import ctypes, os, resource
    for limit, value in ((resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_CPU, cpu_s),
                         (resource.RLIMIT_FSIZE, output_bytes), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NOFILE, 64)):
        resource.setrlimit(limit, (value, value))  # hard limits too: lowering them is one-way without privileges
    layers = ["rlimits"]
    libc = ctypes.CDLL(None, use_errno=True)
    # a user namespace (so that even root loses its privileges over the host: no raising the hard limits) with
    # a network namespace of its own (no interface but a loopback that is down: 127.0.0.1 is unreachable)
    if libc.unshare(0x10000000 | 0x40000000) == 0:  # CLONE_NEWUSER | CLONE_NEWNET
        layers.append("namespaces")
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: no setuid escalation; Landlock needs it
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    if abi >= 1:
        # writes of every kind (write, truncate, remove, make a file, dir, fifo, device, socket or link) are
        # handled, so allowed only where a rule says: beneath the scratch folder, and /dev/null; reads stay open
        write_file, truncate = 1 << 1, (1 << 14 if abi >= 3 else 0)
        handled_fs = 0x1FF2 | (1 << 13 if abi >= 2 else 0) | truncate
        handled_net = 0b11 if abi >= 4 else 0  # TCP bind and connect, with no rule allowing either
        scoped = 0b11 if abi >= 6 else 0  # no signals to processes outside, no abstract unix sockets

        class Ruleset(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]

        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]

        attr = Ruleset(handled_fs, handled_net, scoped)
        size = 24 if abi >= 6 else 16 if abi >= 4 else 8
        ruleset = libc.syscall(444, ctypes.byref(attr), size, 0)
        ok = ruleset >= 0
        for path, allowed in ((scratch, handled_fs), ("/dev/null", write_file | truncate)):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            ok = ok and libc.syscall(445, ruleset, 1, ctypes.byref(PathBeneath(allowed, fd)), 0) == 0
            os.close(fd)
        if ok and libc.syscall(446, ruleset, 0) == 0:  # landlock_restrict_self
            layers.append(f"landlock{abi}")
        if ruleset >= 0:
            os.close(ruleset)
    for name in ("ctypes", "_ctypes", "ctypes._endian"):  # an import from the cache would skip the hook's ban
        sys.modules.pop(name, None)
    return layers


def read_token():
    """The parent's sentinel, from stdin, which then becomes /dev/null: it is never in a variable of ours."""
    import os
    token = os.read(0, 64).strip()
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    return token


def main():
    import os, types
    scratch, program, memory_mb, cpu_s, output_bytes, guarding = sys.argv[1:7]
    with open(program) as f:
        code = compile(f.read(), "program.py", "exec")
    layers = contain(scratch, int(memory_mb), int(cpu_s), int(output_bytes))
    if os.environ.get("NASH_SANDBOX_LAYERS"):  # asked by the tests: which layers this machine gives
        print("layers:", ",".join(layers), flush=True)
    module = types.ModuleType("__main__")  # `import __main__` gives the program its own module, not this one
    sys.modules["__main__"] = module
    sys.addaudithook(make_guard(read_token(), scratch, sys._getframe(), guarding == "1"))
    exec(code, module.__dict__)
    sys.stdout.flush()
    sys.stderr.flush()
    sys.audit("nash.finished")  # the hook prints the sentinel and exits 0: only reached if the tests returned
    os._exit(1)


main()
'''


def _run(source, timeout, memory_mb, guarding=True, extra_env=None):
    token = secrets.token_hex(16).encode()  # unguessable, and new for every run
    with tempfile.TemporaryDirectory(prefix="nash-exec-") as scratch, tempfile.TemporaryFile() as output:
        scratch = os.path.realpath(scratch)  # the child compares paths lexically, so no symlink in its name
        program = os.path.join(scratch, "program.py")
        with open(program, "w") as f:
            f.write(source)
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8", **(extra_env or {})}
        proc = subprocess.Popen([sys.executable, "-I", "-B", "-c", CHILD, scratch, program, str(memory_mb),
                                 str(int(timeout) + 1), str(OUTPUT_BYTES), str(int(guarding))], cwd=scratch,
                                env=env, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.stdin.write(token + b"\n")
            proc.stdin.close()
        except BrokenPipeError:  # it died before reading: its output says why
            pass
        try:
            proc.wait(timeout=timeout)
            status = None
        except subprocess.TimeoutExpired:
            status = "timeout"
        try:  # its whole session, should anything in it have got past the fork guard
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        size = output.seek(0, os.SEEK_END)
        output.seek(max(0, size - TAIL_BYTES))
        text = output.read()
    finished = text.endswith(b"\n" + token + b"\n")
    if finished:
        text = text[:-len(token) - 2]
    if status is None:
        status = "passed" if finished and proc.returncode == 0 else "failed"
    lines = text.decode("utf-8", "replace").strip().splitlines()
    return {"status": status, "output": "\n".join(lines[-5:])}


def run_program(source, timeout=10.0, memory_mb=1024):
    """Run a Python program in a limited child process. Returns {"status": passed | failed | timeout,
    "output": the last lines it printed}; passed means it ran to its last line in time (see above)."""
    return _run(source, timeout, memory_mb)


def run_programs(sources, timeout=10.0, memory_mb=1024, workers=2):
    """run_program over many programs, a few child processes at a time; results in order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda s: run_program(s, timeout, memory_mb), sources))


def sandbox_layers():
    """The kernel layers this machine gives a child (rlimits, namespaces, landlockN): for tests and docs."""
    result = _run("", 10.0, 1024, extra_env={"NASH_SANDBOX_LAYERS": "1"})
    return next((line.split(": ", 1)[1].split(",") for line in result["output"].splitlines()
                 if line.startswith("layers: ")), [])
