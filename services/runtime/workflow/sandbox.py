"""The workflow code node's sandbox: ``main(**inputs)`` of user Python in a fresh, fenced interpreter.

One ``python -I -S`` process per call: its own session (the whole group is killed at the wall-clock
limit), an empty environment, a fresh temporary working directory. Before any user code the child fences
itself, outermost first, keeping whatever the kernel allows (``protections()`` says what held here):
- new user, network and mount namespaces: no network interface at all, the whole filesystem read-only, and
  a private size-capped noexec tmpfs as the working directory (containers often refuse this layer);
- no_new_privs plus a seccomp filter: no fork/exec, sockets, signals to others, mounts, ptrace, bpf ...;
- rlimits: CPU seconds, address space, file size, open files, no core dumps, no processes;
- a Python audit hook, which cannot be removed: no sockets, processes, ctypes or foreign extension
  modules, no writes outside the working directory, no reads outside it and the standard library.
The audit hook alone is no security boundary (CPython says so); it is the layer that turns attempts into
readable "forbidden" errors, and the one left where the kernel layers are refused.

The child is untrusted to the end: it replies with one JSON line on its own stdout (the user's fd 1 is
/dev/null), and the parent re-checks that reply's size and shape rather than believing it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import marshal
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

ERROR_CODES = frozenset({"timeout", "memory_limit", "output_too_large", "runtime_error", "invalid_output",
                         "forbidden", "syntax_error"})
FILE_BYTES = 10 * 2**20     # RLIMIT_FSIZE: one file in the working directory
SCRATCH_BYTES = 32 * 2**20  # the whole working directory, where the private tmpfs is available
_STDERR_KEPT = 4096         # the child's fd 2 only carries interpreter crashes: keep the start for messages
_ENV = {"PATH": "/nonexistent", "LANG": "C.UTF-8"}
_KERNEL_FENCES = True       # tests turn it off to check the audit hook alone, as in a strict container


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5.0         # RLIMIT_CPU (whole seconds, rounded up)
    wall_seconds: float = 10.0       # the process group is killed after this
    memory_bytes: int = 256 * 2**20  # RLIMIT_AS (address space)
    output_bytes: int = 1 * 2**20    # the result's JSON
    max_code_bytes: int = 100_000


class SandboxError(Exception):
    """``code`` is one of ERROR_CODES; ``message`` is meant for the workflow's user."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# Runs in the child. Everything it needs is imported and set up before the audit hook goes in. It reads
# a marshal blob (from us, so trusted; and unlike the json package, ~8 ms cheaper to start) and answers
# in JSON through the C encoder the json package itself uses.
BOOTSTRAP = r'''
import _json, marshal, os, sys

def dumps(obj):
    def default(o):
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")
    return "".join(_json.make_encoder({}, default, _json.encode_basestring, None, ":", ",", False, False, False)(obj, 0))

SYSCALLS = {  # refused by seccomp: name -> (x86_64, aarch64); clone/clone3 are handled apart
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281), "socket": (41, 198),
    "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131), "rt_sigqueueinfo": (129, 138),
    "rt_tgsigqueueinfo": (297, 240), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "mknod": (133, None), "mknodat": (259, 33), "memfd_create": (319, 279),
    "personality": (135, 92), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "kexec_load": (246, 104), "reboot": (169, 142),
    **{n: (nr, nr) for nr, n in enumerate((  # 424 and up: numbered alike on every architecture
       "pidfd_send_signal", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
        "pidfd_open"), 424)}, "pidfd_getfd": (438, 438), "mount_setattr": (442, 442)}

def fences(scratch):
    """Kernel-level fences, each best effort; returns the names of those now in force."""
    active = []
    try:
        import ctypes, struct
        libc, L = ctypes.CDLL(None, use_errno=True), ctypes.c_long
    except Exception:
        return active
    work, uid, gid = os.getcwd(), os.geteuid(), os.getegid()
    if libc.unshare(0x10000000 | 0x40000000 | 0x20000) == 0:  # CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS
        active += ["userns", "netns"]
        try:  # map ourselves, or the new tmpfs could not hold our files (EOVERFLOW)
            for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
                with open("/proc/self/" + name, "w") as f:
                    f.write(text)
        except OSError:
            pass
        opts = f"size={scratch},mode=0700".encode()
        if libc.mount(b"tmpfs", work.encode(), b"tmpfs", L(2 | 4 | 8), opts) == 0:  # NOSUID|NODEV|NOEXEC
            os.chdir(work)  # step onto the new mount
            active.append("tmpfs-workdir")
            ro, rw = (ctypes.c_uint64 * 4)(1 | 2, 0, 0, 0), (ctypes.c_uint64 * 4)(0, 1, 0, 0)  # mount_attr
            if (libc.syscall(L(442), L(-100), b"/", L(0x8000), ro, L(32)) == 0  # mount_setattr, AT_RECURSIVE
                    and libc.syscall(L(442), L(-100), work.encode(), L(0), rw, L(32)) == 0):
                active.append("readonly-fs")  # everything but the workdir
    machine = os.uname().machine
    arch = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}.get(machine)
    if libc.prctl(38, L(1), L(0), L(0), L(0)) == 0:  # PR_SET_NO_NEW_PRIVS
        active.append("no-new-privs")
    if arch and "no-new-privs" in active:
        col = int(machine == "aarch64")
        op = lambda code, k, jt=0, jf=0: struct.pack("=HBBI", code, jt, jf, k)  # noqa: E731
        eperm, allow = 0x50001, 0x7FFF0000
        prog = [op(0x20, 4), op(0x15, arch, 1, 0), op(0x06, 0x80000000), op(0x20, 0)]  # other ABIs: kill
        if not col:
            prog += [op(0x35, 0x40000000, 0, 1), op(0x06, eperm)]  # x32 syscall numbers
        for nrs in SYSCALLS.values():
            if nrs[col] is not None:
                prog += [op(0x15, nrs[col], 0, 1), op(0x06, eperm)]
        prog += [op(0x15, 435, 0, 1), op(0x06, 0x50000 | 38),  # clone3 -> ENOSYS: libc falls back to clone
                 op(0x15, (56, 220)[col], 0, 3), op(0x20, 16), op(0x45, 0x10000, 1, 0),  # clone: threads only
                 op(0x06, eperm), op(0x06, allow)]
        code = ctypes.create_string_buffer(b"".join(prog))
        fprog = (ctypes.c_ulong * 2)(len(prog), ctypes.addressof(code))  # sock_fprog, little-endian
        if libc.prctl(22, L(2), fprog, L(0), L(0)) == 0:  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
            active.append("seccomp")
    return active

def limits(req):
    import resource as R
    cpu = max(1, -int(-req["cpu"] // 1))
    for res, soft, hard in ((R.RLIMIT_CORE, 0, 0), (R.RLIMIT_FSIZE, req["files"], req["files"]),
                            (R.RLIMIT_NOFILE, 32, 32), (R.RLIMIT_NPROC, 0, 0), (R.RLIMIT_CPU, cpu, cpu + 1),
                            (R.RLIMIT_AS, req["memory"], req["memory"])):
        R.setrlimit(res, (soft, hard))

def guard(roots):
    """Install the audit hook. Its policy is a closure over immutable values and C functions captured
    here, so nothing user code can reach (builtins, posixpath, these globals) changes its decisions, and
    no reference to it survives this call (gc, tracing and further hooks are refused).
    roots: the working directory (the one writable root), the stdlib, then other readable roots."""
    import posix
    from _stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISLNK
    lstat, stat, readlink, getcwd = posix.lstat, posix.stat, posix.readlink, posix.getcwd
    type_, str_, bytes_, int_, OSError_ = type, str, bytes, int, OSError
    work, stdlib = roots[:1], roots[1:2]
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    process = ("subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork")
    deny = process + ("socket.", "ctypes.", "os.kill", "os.putenv", "os.unsetenv", "os.link", "os.symlink",
                      "os.chown", "os.setxattr", "os.removexattr", "os.chflags", "resource.", "sys.addaudithook",
                      "sys.settrace", "sys.setprofile", "gc.get_", "syslog.", "sqlite3.enable_load_extension",
                      "sqlite3.load_extension", "pty.")
    kinds = ((("socket.",), "network access"), (process, "starting processes"),
             (("ctypes.",), "native code (ctypes)"), (("gc.get_",), "inspecting the heap"))
    # event -> (index of a path it changes, index of that path's dir_fd argument or None), ...
    changes = {"os.mkdir": ((0, 2),), "os.rmdir": ((0, 1),), "os.remove": ((0, 1),), "os.chmod": ((0, 2),),
               "os.rename": ((0, 2), (1, 3)), "os.truncate": ((0, None),), "os.utime": ((0, 3),),
               "os.chdir": ((0, None),), "shutil.rmtree": ((0, 1),), "shutil.copyfile": ((1, None),),
               "shutil.copytree": ((1, None),), "shutil.move": ((0, None), (1, None))}
    banned = ("ctypes", "_ctypes", "_posixsubprocess", "mmap", "_posixshmem", "_multiprocessing", "readline",
              "_curses", "_dbm", "_gdbm", "_xxsubinterpreters", "_xxinterpchannels")

    class SandboxViolation(PermissionError):
        pass

    def resolve(p, base, depth=0):  # realpath, from captured C calls only
        if depth > 20:
            raise SandboxViolation("sandbox: too many symbolic links")
        parts = [] if p.startswith("/") else [x for x in base.split("/") if x]
        for name in p.split("/"):
            if name in ("", "."):
                continue
            if name == "..":
                parts = parts[:-1]
                continue
            parts.append(name)
            here = "/" + "/".join(parts)
            try:
                if not S_ISLNK(lstat(here).st_mode):
                    continue
                target = readlink(here)
            except OSError_:
                continue
            up = "/" + "/".join(parts[:-1])
            parts = [x for x in resolve(target, up, depth + 1).split("/") if x]
        return "/" + "/".join(parts)

    def path_of(p, dir_fd=-1):
        if type_(p) is bytes_:
            p = p.decode("utf-8", "surrogateescape")
        if type_(p) is not str_:
            raise SandboxViolation("sandbox: paths must be str or bytes")
        base = readlink(f"/proc/self/fd/{dir_fd}") if type_(dir_fd) is int_ and dir_fd >= 0 else getcwd()
        return resolve(p, base)

    def under(path, roots):
        for root in roots:
            if path == root or path.startswith(root + "/"):
                return True
        return False

    def refuse(what):
        raise SandboxViolation(f"sandbox: {what} is not allowed")

    def hook(event, args):
        if event.startswith(deny):
            for prefixes, kind in kinds:
                if event.startswith(prefixes):
                    refuse(f"{kind} ({event})")
            refuse(event)
        elif event == "import":
            if args[1] is not None:  # an extension module being loaded from a file
                if not under(path_of(args[1]), stdlib):
                    refuse(f"loading native code from {args[1]!r}")
            elif args[0].split(".")[0] in banned or args[0].startswith(("_test", "_xx")):
                refuse(f"importing {args[0]}")
        elif event == "open":
            if type_(args[0]) is int_:
                return  # an fd that an earlier, checked call produced
            path, flags = path_of(args[0]), args[2]
            if type_(flags) is not int_ or flags & writes:
                if not under(path, work):
                    refuse(f"writing {path} (only the working directory is writable)")
            elif not under(path, roots):
                refuse(f"reading {path}")
            try:
                mode = stat(path).st_mode
            except OSError_:
                return
            if S_ISCHR(mode) or S_ISBLK(mode):  # e.g. a block device made with the unaudited os.mknod
                refuse(f"opening the device {path}")
            if S_ISDIR(mode) and not under(path, work):  # the open event does not show dir_fd: keep them ours
                refuse(f"opening the directory {path}")
        elif event in ("os.listdir", "os.scandir"):
            if type_(args[0]) is not int_ and not under(path_of("." if args[0] is None else args[0]), roots):
                refuse(f"listing {args[0]}")
        elif event in changes:
            for i, j in changes[event]:
                if type_(args[i]) is int_:
                    if event == "os.truncate":
                        continue  # ftruncate: only an fd opened for writing, hence in the workdir, can
                    refuse(f"{event} on a file descriptor")
                if not under(path_of(args[i], -1 if j is None else args[j]), work):
                    refuse(f"{event} outside the working directory")

    sys.addaudithook(hook)
    return SandboxViolation

def failure(exc, violation, source):
    """The error frame for an exception out of the user's code."""
    todo, seen = [exc], []  # the exception, and those it was raised from or while handling
    while todo and len(seen) < 50:
        e = todo.pop()
        if e is not None and not any(e is s for s in seen):
            seen.append(e)
            todo += [e.__cause__, e.__context__]
    for e in seen:
        if isinstance(e, violation):
            return {"error": "forbidden", "message": str(e)}
    if any(isinstance(e, MemoryError) for e in seen):
        return {"error": "memory_limit", "message": "the code ran out of memory"}
    line, tb = None, exc.__traceback__
    while tb is not None:  # the innermost frame of the user's own code, not this bootstrap's
        if tb.tb_frame.f_code.co_filename == "<code>":
            line = tb.tb_lineno
        tb = tb.tb_next
    try:
        text = str(exc)
    except Exception:
        text = "?"
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    if isinstance(exc, SystemExit):
        message = "the code called exit()"
    if line:
        lines = source.splitlines()
        message += f" (line {line}: {lines[line - 1].strip()[:200]})" if line <= len(lines) else f" (line {line})"
    return {"error": "runtime_error", "message": message[:2000]}

def run(req, violation):
    source = req["code"]
    try:
        compiled = compile(source, "<code>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:
        where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
        return {"error": "syntax_error", "message": f"{type(e).__name__}: {getattr(e, 'msg', e)}{where}"}
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compiled, namespace)
        main = namespace.get("main")
        if not callable(main):
            return {"error": "runtime_error", "message": "code must define main(...)"}
        result = main(**req["inputs"])
    except BaseException as e:
        return failure(e, violation, source)
    if not isinstance(result, dict):
        return {"error": "invalid_output", "message": f"main() must return a dict, not {type(result).__name__}"}
    try:
        text = dumps(result)
    except (TypeError, ValueError, RecursionError) as e:
        return {"error": "invalid_output", "message": f"main() returned a dict that is not JSON: {e}"}
    except BaseException as e:  # a dict subclass running code while being serialised
        return failure(e, violation, source)
    if len(text.encode()) > req["output"]:
        return {"error": "output_too_large", "message": f"the result is larger than {req['output']} bytes"}
    return '{"result":' + text + "}"

OUT_OF_MEMORY = b'\n{"error":"memory_limit","message":"the code ran out of memory"}\n'
reply_fd = os.dup(1)  # the reply channel; the user's stdout and stderr go to /dev/null
try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sys.stderr = sys.stdout
    request = marshal.loads(sys.stdin.buffer.read())
    active = fences(request["scratch"]) if request["fences"] else []
    for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
        del sys.modules[name]  # importing it again has to pass the hook, which refuses
    import _signal, posix  # unaudited calls, off the easy path for when no seccomp filter holds
    for module in (os, posix, _signal):
        for name in ("pidfd_open", "pidfd_send_signal", "mknod", "mkfifo"):
            module.__dict__.pop(name, None)
    limits(request)
    zoneinfo = [os.path.realpath(p) for p in ("/usr/share/zoneinfo", "/usr/lib/zoneinfo") if os.path.isdir(p)]
    violation = guard((os.path.realpath(os.getcwd()), os.path.realpath(sys._stdlib_dir), *zoneinfo))
    frame = run(request, violation)
    if isinstance(frame, dict):
        frame = dumps(frame)
    frame = frame[:-1] + ',"protections":' + dumps(active + ["rlimits", "audit-hook"]) + "}"
    data = b"\n" + frame.encode() + b"\n"
except MemoryError:
    data = OUT_OF_MEMORY
except BaseException as e:  # a bug of ours, not the user's: say so rather than die silently
    data = ("\n" + dumps({"error": "runtime_error", "message": f"sandbox bootstrap: {e!r}"}) + "\n").encode()
view = memoryview(data)
while view:
    view = view[os.write(reply_fd, view):]
os._exit(0)  # no interpreter teardown: nothing of the user's (atexit, threads, __del__) runs after this
'''


def _argv() -> list[str]:
    return [sys.executable, "-I", "-S", "-B", "-c", BOOTSTRAP]


def _request(code: str, inputs: dict[str, Any], limits: SandboxLimits) -> bytes:
    if len(code.encode()) > limits.max_code_bytes:
        raise SandboxError("forbidden", f"the code is larger than {limits.max_code_bytes} bytes")
    if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
        raise SandboxError("runtime_error", "inputs must be a dict with str keys")
    try:  # the round trip leaves plain JSON types only, which marshal carries as they are
        inputs = json.loads(json.dumps(inputs, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise SandboxError("runtime_error", f"inputs must be JSON values: {e}") from None
    return marshal.dumps({"code": code, "inputs": inputs, "cpu": limits.cpu_seconds, "memory": limits.memory_bytes,
                          "output": limits.output_bytes, "files": FILE_BYTES, "scratch": SCRATCH_BYTES,
                          "fences": _KERNEL_FENCES})


def _reply(stdout: bytes) -> dict[str, Any] | None:
    """The child's reply: its last line, if that is a JSON object (NaN and friends are not JSON)."""
    line = stdout.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        reply = json.loads(line, parse_constant=_not_json)
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


async def run_python(code: str, inputs: dict[str, Any], limits: SandboxLimits = SandboxLimits()) -> dict[str, Any]:
    """``main(**inputs)`` of ``code`` in a fresh sandboxed process: its dict result, or SandboxError."""
    request = _request(code, inputs, limits)
    work = tempfile.mkdtemp(prefix="plexus-code-")
    try:
        return await _run(request, work, limits)
    finally:
        try:
            os.rmdir(work)  # empty unless the private tmpfs was refused
        except OSError:
            await asyncio.to_thread(shutil.rmtree, work, True)


async def _run(request: bytes, work: str, limits: SandboxLimits) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *_argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=work, env=_ENV, start_new_session=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    cap = limits.output_bytes + 64 * 1024  # the reply's envelope and an error message fit in the slack
    overflow = timed_out = False

    async def feed() -> None:
        try:
            proc.stdin.write(request)
            await proc.stdin.drain()
            proc.stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # it died early; its exit status tells why

    async def read(stream: asyncio.StreamReader, keep: int, kill_over: bool) -> bytes:
        nonlocal overflow
        buf = bytearray()
        while chunk := await stream.read(1 << 16):
            if kill_over and len(buf) + len(chunk) > keep:
                overflow = True
                _kill(proc)
                break
            buf += chunk[: max(0, keep - len(buf))]  # beyond `keep`: drained and dropped
        return bytes(buf)

    try:
        async with asyncio.timeout(limits.wall_seconds):
            _, out, err = await asyncio.gather(feed(), read(proc.stdout, cap, True),
                                               read(proc.stderr, _STDERR_KEPT, False))
            await proc.wait()
    except TimeoutError:
        timed_out = True
    finally:
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
    if timed_out:
        raise SandboxError("timeout", f"the code did not finish within {limits.wall_seconds:g} s")
    if overflow:
        raise SandboxError("output_too_large", f"the result is larger than {limits.output_bytes} bytes")
    reply = _reply(out)
    if reply is not None and "error" in reply:
        code = reply["error"] if reply["error"] in ERROR_CODES else "runtime_error"
        raise SandboxError(code, str(reply.get("message", ""))[:2000])
    if reply is not None and isinstance(reply.get("result"), dict):
        if len(out) > limits.output_bytes + 1024:  # re-checked: the child is not trusted
            raise SandboxError("output_too_large", f"the result is larger than {limits.output_bytes} bytes")
        return reply["result"]
    rc = proc.returncode
    # RLIMIT_CPU sends SIGXCPU at the soft limit and SIGKILL at the hard one (if SIGXCPU was ignored)
    if rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and loop.time() - started >= limits.cpu_seconds):
        raise SandboxError("timeout", f"the code used more than {limits.cpu_seconds:g} s of CPU time")
    if b"MemoryError" in err:
        raise SandboxError("memory_limit", "the code ran out of memory")
    how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
    detail = err.decode(errors="replace").strip()[-500:]
    raise SandboxError("runtime_error", f"the sandbox {how} without a result" + (f": {detail}" if detail else ""))


def _kill(proc: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the child and anything it left
    except (ProcessLookupError, PermissionError):
        pass


@functools.cache
def _probe() -> tuple[str, ...]:
    work = tempfile.mkdtemp(prefix="plexus-code-")
    try:
        done = subprocess.run(_argv(), check=False, input=_request("def main():\n    return {}\n", {}, SandboxLimits()),
                              capture_output=True, cwd=work, env=_ENV, timeout=30, start_new_session=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    reply = _reply(done.stdout) or {}
    return ("process-group", *reply.get("protections", ()))


def protections() -> list[str]:
    """The layers in force on this machine, measured once by a probe run (blocking: ~50 ms, first call)."""
    return list(_probe())
