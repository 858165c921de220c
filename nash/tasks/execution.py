"""
Run generated code (HumanEval's completions) in a sandbox whose boundary is the operating system, not Python.

Each program runs under bubblewrap (bwrap, Debian's `bubblewrap`, what Flatpak uses) in namespaces of its own:
user, PID, mount, IPC, network, UTS and cgroup. It sees a read-only view of /usr and the Python prefix, a minimal
/dev, no /proc at all, and a scratch tmpfs of SCRATCH_BYTES as its cwd, HOME and TMPDIR; a seccomp filter
(compiled here with libseccomp) refuses the system calls that are left (mknod, ptrace, pidfd_*, mount, ...); hard
rlimits cap memory, CPU, file size, open files and processes. Python's audit hook stays as a second layer.

Inside the sandbox, two processes:
- the supervisor (trusted: only this file's code and the task's own tests run in it), which sets the limits,
  forks the program and is the only one to hold the pipe the verdict goes out on;
- the program (untrusted), forked from it, which closes that pipe before any of its code runs.
With `run_check` the tests run in the supervisor and call the program's function through a pipe: arguments go
in and the results come back as built-in values only (int, float, str, bytes, bool, None, list, tuple, dict,
set), so neither a forged "I finished" nor a result whose `__eq__` always says yes can pass.
docs/sandbox.md says what this holds against, what it costs, and what remains.
"""
import ctypes
import ctypes.util
import functools
import marshal
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

OUTPUT_BYTES = 16 << 20  # the program's output file and any file it writes stop here (RLIMIT_FSIZE)
TAIL_BYTES = 8192  # what the parent reads back of the output: the end, where a traceback is
SCRATCH_BYTES = 16 << 20  # the scratch tmpfs: bytes (the kernel refuses more: ENOSPC) ...
SCRATCH_FILES = 1000  # ... and files and folders (the supervisor kills the program past this count)
MAX_PROCESSES = 16  # RLIMIT_NPROC in the sandbox's own user namespace (threads count too)
NOBODY = 65534  # the uid and gid the code runs as inside
INSTALL = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"

# system calls the program has no use for, refused with EPERM: making devices and fifos, reaching into other
# processes (their memory, their fds, signals by pidfd), new namespaces and mounts, kernel keys and modules,
# io_uring (which bypasses seccomp for what it does), BPF and perf (kernel attack surface)
DENIED_SYSCALLS = (
    "mknod", "mknodat", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "kcmp", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount",
    "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr", "open_by_handle_at", "name_to_handle_at",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "iopl", "ioperm", "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl",
    "personality", "setdomainname", "sethostname", "settimeofday", "clock_settime", "adjtimex", "vhangup")

# the supervisor, run in the sandbox as `python -I -S -B -c SUPERVISOR VERDICT_FD`, the job (marshal) on stdin.
# It imports only C modules (json, re, enum, traceback would add ~50 ms to every program on a loaded machine)
SUPERVISOR = r'''
import _ast, marshal, os, resource, select, sys

SCRATCH, SIGKILL = "/tmp", 9


def make_guard():
    """The audit hook, the second layer: refuses in Python what the program should not do (writes outside the
    scratch folder, /proc, new processes, signals, sockets, ctypes). Bypassable; the kernel's layers hold."""
    import posix
    getcwd, stat, str_, bytes_, int_, type_, refuse = posix.getcwd, posix.stat, str, bytes, int, type, PermissionError
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

    def inside(path):  # lexical, with str methods only: os.path's Python code could be monkeypatched
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
        p = "/" + "/".join(parts)
        return p, p == SCRATCH or p.startswith(SCRATCH + "/")

    def guard(event, args):
        if event == "open":
            path, flags = args[0], args[2]
            if type_(path) is int_:
                return
            if type_(path) is not str_ and type_(path) is not bytes_:
                raise refuse("sandbox: open a path given as str or bytes")
            p, ok = inside(path)
            if ok:
                return
            if p == "/proc" or p.startswith("/proc/") or p.startswith("/dev/fd"):
                raise refuse("sandbox: /proc is not readable")
            if (flags or 0) & WRITE:
                raise refuse(f"sandbox: {p} is outside the scratch folder")
        elif event in PATH_EVENTS:
            path = args[0]
            if type_(path) is int_:
                if event in FD_EVENTS:
                    raise refuse(f"sandbox: {event} through a file descriptor is not allowed")
                return
            if (type_(path) is not str_ and type_(path) is not bytes_) or not inside(path)[1]:
                raise refuse(f"sandbox: {event} outside the scratch folder")
            if event == "os.rename" and (type_(args[1]) not in (str_, bytes_) or not inside(args[1])[1]):
                raise refuse("sandbox: os.rename outside the scratch folder")
        elif event in FORBIDDEN or (event == "import" and type_(args[0]) is str_ and args[0] in BANNED_MODULES):
            raise refuse(f"sandbox: {event} is not allowed")
    return guard


def encode(x):
    """The program's result as text, if it is a built-in value through and through (exact types: a subclass, an
    object with its own __eq__, a generator are refused). Runs in the program: the supervisor trusts none of it."""
    def plain(v):
        t = type(v)
        if t in (list, tuple, set, frozenset):
            return all(plain(e) for e in v)
        if t is dict:
            return all(plain(k) and plain(e) for k, e in v.items())
        return v is None or t in (bool, int, float, complex, str, bytes)
    if not plain(x):
        raise TypeError(f"a {type(x).__name__} (or what it holds) is not a built-in value the tests can check")
    return repr(x)


def decode(text):
    """What the program sent, parsed (never run) into built-in values: Python's parser, then a walk that
    accepts only literals, as ast.literal_eval does, plus nan, inf and set() / frozenset(...)."""
    def value(node):
        t = type(node)
        if t is _ast.Constant and type(node.value) in (bool, int, float, complex, str, bytes, type(None)):
            return node.value
        if t in (_ast.Tuple, _ast.List, _ast.Set):
            items = [value(e) for e in node.elts]
            return tuple(items) if t is _ast.Tuple else items if t is _ast.List else set(items)
        if t is _ast.Dict and None not in node.keys:
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if t is _ast.UnaryOp and type(node.op) in (_ast.USub, _ast.UAdd):
            v = value(node.operand)
            if type(v) in (int, float, complex):
                return -v if type(node.op) is _ast.USub else v
        if t is _ast.BinOp and type(node.op) in (_ast.Add, _ast.Sub):  # complex numbers: 1+2j, (-0-1j)
            a, b = value(node.left), value(node.right)
            if type(a) in (int, float) and type(b) is complex:
                return a + b if type(node.op) is _ast.Add else a - b
        if t is _ast.Name and node.id in ("nan", "inf"):
            return float(node.id)
        if (t is _ast.Call and type(node.func) is _ast.Name and node.func.id in ("set", "frozenset")
                and not node.keywords and len(node.args) <= 1):
            kind = set if node.func.id == "set" else frozenset
            return kind(value(node.args[0])) if node.args else kind()
        raise ValueError("the program sent something that is not a built-in value")
    return value(compile(text, "<result>", "eval", 0x400).body)  # 0x400: PyCF_ONLY_AST


def send(fd, kind, data=b""):
    data = kind + len(data).to_bytes(4, "big") + data
    while data:
        data = data[os.write(fd, data):]


class Program:
    """The forked, untrusted program, as the supervisor sees it: its pid and its two pipes."""

    def __init__(self, run_untrusted):
        to_program, self.requests = os.pipe()
        self.replies, from_program = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(VERDICT_FD)  # the verdict's pipe: gone before any of the program's code exists
            os.close(self.requests)
            os.close(self.replies)
            try:
                run_untrusted(to_program, from_program)
            except SystemExit:  # an exit is not a pass: the program never said it reached its end
                pass
            except BaseException as e:  # its traceback from its own first line (C: no traceback module)
                tb = e.__traceback__
                while tb is not None and tb.tb_frame.f_code.co_filename != "program.py":
                    tb = tb.tb_next
                sys.excepthook(type(e), e.with_traceback(tb or e.__traceback__), tb or e.__traceback__)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        os.close(to_program)
        os.close(from_program)
        self.buffer = b""

    def read(self, n):
        """n bytes from the program, or None if it ended; meanwhile its scratch is held to its file count."""
        while len(self.buffer) < n:
            ready, _, _ = select.select([self.replies], [], [], 0.05)
            st = os.statvfs(SCRATCH)
            if st.f_files - st.f_ffree > job["scratch_files"]:
                os.kill(self.pid, SIGKILL)
                raise OSError(f"the program made more than {job['scratch_files']} files and folders in scratch")
            if ready:
                chunk = os.read(self.replies, 1 << 16)
                if not chunk:
                    return None
                self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def receive(self):
        """(kind, data) the program sent, or (None, None) if it ended or sent more than it may."""
        head = self.read(5)
        size = int.from_bytes(head[1:], "big") if head else 0
        data = self.read(size) if head and size <= job["output_bytes"] else None
        return (None, None) if data is None else (head[:1], data)

    def end(self):
        try:
            os.kill(self.pid, SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self.pid, 0)


def untrusted_module():
    module = type(sys)("__main__")  # `import __main__` gives the program its own module, not this one
    sys.modules["__main__"] = module
    code = compile(job["program"], "program.py", "exec")
    if job["guard"]:
        sys.addaudithook(make_guard())
    exec(code, module.__dict__)
    return module


def run_program(to_program, from_program):
    """The program's side of `run_program`: run it, then say that it ran to its end."""
    untrusted_module()
    sys.stdout.flush()
    sys.stderr.flush()
    send(from_program, b"e")


def serve_function(to_program, from_program):
    """The program's side of `run_check`: define the function, then call it on whatever the tests ask."""
    function = untrusted_module().__dict__[job["entry_point"]]
    reader = os.fdopen(to_program, "rb")
    while True:
        head = reader.read(4)
        if len(head) < 4:
            return
        args, kwargs = marshal.loads(reader.read(int.from_bytes(head, "big")))  # from the tests: trusted
        try:
            kind, reply = b"o", encode(function(*args, **kwargs)).encode("utf-8", "surrogatepass")
        except Exception as e:
            name = type(e).__name__ if type(e).__module__ == "builtins" else "Exception"
            kind, reply = b"r", f"{name}:{str(e)[:200]}".encode("utf-8", "replace")
        sys.stdout.flush()
        send(from_program, kind, reply)


def check():
    """The tests, run here in the supervisor with the program's function as a proxy; raises if they fail."""
    import builtins
    program = Program(serve_function)

    def candidate(*args, **kwargs):
        request = marshal.dumps((args, kwargs))
        request = len(request).to_bytes(4, "big") + request
        while request:
            request = request[os.write(program.requests, request):]
        kind, data = program.receive()
        if kind == b"r":  # the tests may expect a built-in exception type
            name, _, message = data.decode("utf-8", "replace").partition(":")
            error = getattr(builtins, name, None)  # never StopIteration: it would end a map() in the tests early
            ok = isinstance(error, type) and issubclass(error, Exception) and not issubclass(
                error, (StopIteration, StopAsyncIteration))
            raise (error if ok else RuntimeError)(message)
        if kind != b"o":
            raise RuntimeError("the program ended before answering")
        return decode(data.decode("utf-8", "surrogatepass"))

    namespace = {"__name__": "__tests__"}
    exec(compile(job["tests"], "tests.py", "exec"), namespace)  # the task's prompt (its helpers) and its tests
    namespace[job["entry_point"]] = candidate  # a test that calls the function by name gets the program's too
    namespace["check"](candidate)
    program.end()


def main():
    global job
    job = marshal.loads(sys.stdin.buffer.read())  # from the parent: trusted
    os.dup2(os.open("/dev/null", os.O_RDONLY), 0)
    if job["drop"]:  # a root parent: from root in here (needed for the mounts) to the uid that rlimits bind
        os.setresgid(job["uid"], job["uid"], job["uid"])
        os.setresuid(job["uid"], job["uid"], job["uid"])
    for limit, value in ((resource.RLIMIT_AS, job["memory_mb"] << 20), (resource.RLIMIT_CPU, job["cpu_s"]),
                         (resource.RLIMIT_FSIZE, job["output_bytes"]), (resource.RLIMIT_CORE, 0),
                         (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, job["processes"])):
        resource.setrlimit(limit, (value, value))  # hard limits too: one-way without privileges
    if job["mode"] == "check":
        try:
            check()
            verdict = "passed"
        except BaseException as e:
            verdict = f"failed: {type(e).__name__}: {e}"
    else:
        program = Program(run_program)
        try:
            kind, _ = program.receive()
            verdict = "passed" if kind == b"e" else "failed"
        except OSError as e:
            verdict = f"failed: {e}"
        program.end()
    os.write(VERDICT_FD, verdict.encode("utf-8", "replace")[:1000])


VERDICT_FD = int(sys.argv[1])
main()
'''


@functools.lru_cache(maxsize=1)
def seccomp_filter():
    """The seccomp program (classic BPF) bwrap installs before the supervisor starts, compiled once with
    libseccomp: it knows each architecture's syscall numbers and refuses foreign ABIs (x32, i386) itself."""
    name = ctypes.util.find_library("seccomp")
    if not name:
        raise RuntimeError("libseccomp is missing; install it (Debian/Ubuntu: `apt-get install libseccomp2`)")
    lib = ctypes.CDLL(name)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    class Arg(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.c_void_p]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW by default ...
    try:
        for syscall in DENIED_SYSCALLS:
            number = lib.seccomp_syscall_resolve_name(syscall.encode())
            if number >= 0 and lib.seccomp_rule_add(ctx, 0x00050000 | 1, number, 0) != 0:  # ... EPERM for these
                raise RuntimeError(f"libseccomp refused a rule for {syscall}")
        # no new user namespace (the door to capabilities, and to mounts over what it sees): clone with
        # CLONE_NEWUSER is refused, and clone3, whose flags a filter cannot read, says ENOSYS so that libc
        # falls back to clone (threads and fork still work)
        newuser = Arg(0, 7, 0x10000000, 0x10000000)  # SCMP_CMP_MASKED_EQ: arg0 & CLONE_NEWUSER
        if (lib.seccomp_rule_add_array(ctx, 0x00050000 | 1, lib.seccomp_syscall_resolve_name(b"clone"), 1,
                                       ctypes.byref(newuser)) != 0
                or lib.seccomp_rule_add(ctx, 0x00050000 | 38, lib.seccomp_syscall_resolve_name(b"clone3"), 0) != 0):
            raise RuntimeError("libseccomp refused the clone rules")
        with tempfile.TemporaryFile() as f:
            if lib.seccomp_export_bpf(ctx, f.fileno()) != 0:
                raise RuntimeError("libseccomp could not export the filter")
            f.seek(0)
            return f.read()
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=1)
def bwrap_command():
    """bwrap's arguments up to the program: what the sandbox contains. Raises RuntimeError if bwrap is missing."""
    bwrap = shutil.which("bwrap")
    if not bwrap:
        raise RuntimeError(f"the code sandbox needs bubblewrap (bwrap), which is not installed: {INSTALL}")
    python = os.path.realpath(sys.executable)  # the base interpreter (a venv's python is a link to it)
    args = [bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged /usr: links into it
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for prefix in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix),
                          os.path.dirname(os.path.dirname(python))}):
        if prefix != "/usr" and not prefix.startswith("/usr/"):
            parts = prefix.strip("/").split("/")
            for i in range(1, len(parts)):  # bwrap would copy /root's 0700 onto the way down to a pyenv prefix
                args += ["--perms", "0755", "--dir", "/" + "/".join(parts[:i])]
            args += ["--ro-bind", prefix, prefix]
    args += ["--dev", "/dev", "--remount-ro", "/dev",  # null, zero, random, urandom, tty; nothing writable
             "--perms", "1777", "--size", str(SCRATCH_BYTES), "--tmpfs", "/tmp", "--remount-ro", "/",
             "--chdir", "/tmp", "--clearenv", "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp",
             "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8"]
    return args, python


@functools.lru_cache(maxsize=1)
def _trial():
    """bwrap's message if it cannot make its sandbox on this machine (no unprivileged user namespaces, say),
    else ''. Once per process: without it every program would just fail, and pass@1 read 0 with no error."""
    args, python = bwrap_command()
    run = subprocess.run(args + ["--uid", str(NOBODY), "--gid", str(NOBODY), python, "-I", "-S", "-c", "pass"],
                         capture_output=True, text=True)
    return "" if run.returncode == 0 else (run.stderr.strip().splitlines() or ["no message"])[-1]


def available():
    """None if the sandbox can run here, else the `error:` message saying what to install or enable."""
    try:
        bwrap_command()
        seccomp_filter()
    except RuntimeError as e:
        return str(e)
    if _trial():
        return (f"bubblewrap cannot make its sandbox here ({_trial()}); it needs unprivileged user namespaces "
                "(sysctl kernel.unprivileged_userns_clone=1; on Ubuntu 24.04+ also "
                "kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for bwrap)")
    return None


def _sandbox(job, timeout, memory_mb):
    """Run the supervisor with `job` in a fresh sandbox. Returns (status, verdict text, output tail)."""
    problem = available()
    if problem:
        from nash.common import fail
        fail(problem)  # never run generated code unsandboxed, and never fail every program silently
    args, python = bwrap_command()
    bpf = seccomp_filter()
    root = os.geteuid() == 0
    job = {**job, "memory_mb": memory_mb, "cpu_s": int(timeout) + 1, "output_bytes": OUTPUT_BYTES,
           "scratch_files": SCRATCH_FILES, "processes": MAX_PROCESSES, "drop": root, "uid": NOBODY}
    fds = []
    def pipe():
        r, w = os.pipe()
        fds.extend((r, w))
        return r, w
    seccomp_r, seccomp_w = pipe()
    verdict_r, verdict_w = pipe()
    os.write(seccomp_w, bpf)  # a few hundred bytes: fits the pipe's buffer
    os.close(seccomp_w)
    fds.remove(seccomp_w)
    extra = ["--seccomp", str(seccomp_r)]
    passed = [seccomp_r, verdict_w]
    if root:
        # bwrap maps the sandbox's one uid to ours, and a process that is root outside is exempt from
        # RLIMIT_NPROC: so we map root (for bwrap's mounts, under /root too) and nobody ourselves, and the
        # supervisor steps down to nobody, keeping only CAP_SETUID/CAP_SETGID long enough to do it
        info_r, info_w = pipe()
        block_r, block_w = pipe()
        extra += ["--info-fd", str(info_w), "--userns-block-fd", str(block_r), "--cap-add", "CAP_SETUID",
                  "--cap-add", "CAP_SETGID"]
        passed += [info_w, block_r]
    else:
        extra += ["--uid", str(NOBODY), "--gid", str(NOBODY)]
    try:
        with tempfile.TemporaryFile() as output:
            proc = subprocess.Popen(args + extra + [python, "-I", "-S", "-B", "-c", SUPERVISOR, str(verdict_w)],
                                    stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT, pass_fds=passed,
                                    start_new_session=True)
            for fd in passed:
                os.close(fd)
                fds.remove(fd)
            status = None
            if root:
                try:
                    _map_ids(info_r, block_w)
                except OSError as e:  # every program would hang until its timeout: say why instead
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    from nash.common import fail
                    fail(f"could not give the code sandbox its user ids ({e}); run the evaluation as a user "
                         "other than root, or where root may write /proc/PID/uid_map")
            try:
                proc.stdin.write(marshal.dumps(job))
                proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):  # it died before reading: its output says why
                pass
            if not _wait(proc, timeout):
                status = "timeout"
            try:  # bwrap's whole session: with it goes the sandbox's PID namespace and everything in it
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            verdict = _read_verdict(verdict_r)
            size = output.seek(0, os.SEEK_END)
            output.seek(max(0, size - TAIL_BYTES))
            text = output.read()
    finally:
        for fd in fds:
            os.close(fd)
    if status is None:
        status = "passed" if verdict == "passed" else "failed"
    return status, verdict, text


def _wait(proc, timeout):
    """Wait for the process up to `timeout` seconds; False if it is still running. Through a pidfd where there is
    one: Popen.wait(timeout) polls with sleeps of up to 50 ms, a quarter of a program's whole cost."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _map_ids(info_r, block_w):
    """Root only: write the new user namespace's uid and gid maps (root and nobody, each to itself), then let
    bwrap go on. bwrap's --info-fd says the sandbox's pid first."""
    text = b""
    while b'"child-pid"' not in text or not any(c in text.split(b'"child-pid"')[1] for c in b",}"):
        chunk = os.read(info_r, 4096)
        if not chunk:
            raise OSError("bwrap ended before its namespace was ready")
        text += chunk
    pid = int(text.split(b'"child-pid":')[1].split(b",")[0].split(b"}")[0])
    ids = f"0 0 1\n{NOBODY} {NOBODY} 1\n"
    for name, value in (("setgroups", "deny"), ("uid_map", ids), ("gid_map", ids)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(value)
    os.write(block_w, b"1")


def _read_verdict(fd):
    """The supervisor's one message, from the pipe only it held: "passed" or "failed: why"."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    except BlockingIOError:
        return ""


def _result(status, verdict, text):
    lines = text.decode("utf-8", "replace").strip().splitlines()
    if status == "failed" and verdict.startswith("failed: "):  # the supervisor's reason, e.g. the test that failed
        lines.append(verdict)
    return {"status": status, "output": "\n".join(lines[-5:])}


def run_program(source, timeout=10.0, memory_mb=1024, guard=True):
    """Run a Python program in the sandbox. Returns {"status": passed | failed | timeout, "output": the last
    lines it printed}; passed means it ran to its last line in time. The program itself could claim that (it
    runs in the process that says so): to grade untrusted code against trusted tests, use run_check.
    guard=False leaves out the audit hook, for the tests of what the kernel holds on its own."""
    return _result(*_sandbox({"mode": "run", "program": source, "guard": guard}, timeout, memory_mb))


def run_check(program, tests, entry_point, timeout=10.0, memory_mb=1024):
    """Grade `program` (untrusted: it defines the function `entry_point`) with `tests` (trusted: defines
    `check(candidate)`, as HumanEval's do). The tests run in the sandbox's supervisor, apart from the program,
    and see only built-in values from it. Returns what run_program returns; passed means check() returned."""
    job = {"mode": "check", "program": program, "tests": tests, "entry_point": entry_point, "guard": True}
    return _result(*_sandbox(job, timeout, memory_mb))


def run_programs(sources, timeout=10.0, memory_mb=1024, workers=2):
    """run_program over many programs, a few sandboxes at a time; results in order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(lambda s: run_program(s, timeout, memory_mb), sources))
