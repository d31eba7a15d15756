"""The code node's sandbox: user Python in a fresh, isolated interpreter process per call.

Layers, outermost first:
- a new session (the whole process group is killed at the wall-clock limit), an empty environment, a
  fresh temporary working directory, ``python -I -S`` (no site-packages, no user paths);
- resource limits set by the child on itself before any user code: CPU seconds, address space, file
  size, open files, no core dumps;
- new user and network namespaces when the kernel lets an unprivileged process have them (no network
  interface at all); where it does not (many containers), the next layer still holds;
- a Python audit hook, installed before the user's code is even compiled and impossible to remove from
  Python (no reference to it is left, and gc is refused): no sockets, no process creation or signals, no
  ctypes or other native loading, no file writes outside the temp dir and no reads outside it and the
  standard library. Modules that need a refused one (urllib, email.utils …) fail to import.
The result comes back as JSON on stdout behind a marker; the user's prints go to a capped buffer.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

_ERR_CODES = {"timeout", "memory_limit", "output_too_large", "runtime_error", "invalid_output", "forbidden",
              "syntax_error"}


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_bytes: int = 256 * 2**20
    output_bytes: int = 1 * 2**20
    max_code_bytes: int = 100_000


class SandboxError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# Runs in the child. Everything it needs is imported before the audit hook goes in.
BOOTSTRAP = r'''
import io, json, os, resource, sys, sysconfig
req = json.loads(sys.stdin.read())
marker, tmp, lim = req["marker"], os.path.realpath(req["tmp"]), req["limits"]
out = sys.stdout

def report(obj):
    out.write("\n" + marker + json.dumps(obj) + "\n")
    out.flush()

cpu = max(1, int(lim["cpu"] + 0.999))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (lim["memory"], lim["memory"]))
resource.setrlimit(resource.RLIMIT_FSIZE, (10 * 2**20, 10 * 2**20))
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
namespaces = False
try:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    namespaces = libc.unshare(0x10000000 | 0x40000000) == 0   # CLONE_NEWUSER | CLONE_NEWNET
    del ctypes, libc
except Exception:
    pass
for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
    del sys.modules[name]  # user code must import it afresh, which the hook refuses

def make_hook(tmp, read_roots):
    """The policy, closed over immutable values. Once installed, no Python reference to it remains:
    audit hooks cannot be removed, and the frame and gc routes to its closure are themselves refused."""
    write_roots = (tmp + os.sep,)
    readable = write_roots + read_roots
    # Frames stay readable (the stdlib needs sys._getframe): they lead to this bootstrap's globals, which
    # hold nothing of the policy; gc, the one way to the hook object itself, is refused.
    deny = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
            "os.forkpty", "os.kill", "os.killpg", "os.putenv", "os.unsetenv", "ctypes.", "sys._current_frames",
            "sys.setprofile", "sys.settrace", "gc.get_", "resource.setrlimit", "mmap.", "pty.", "fcntl.",
            "winreg.")
    dir_events = frozenset({"os.listdir", "os.scandir"})
    path_events = frozenset({"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                             "os.link", "os.symlink", "os.truncate", "os.utime", "os.chdir", "os.chflags",
                             "os.setxattr", "os.removexattr", "shutil.copyfile", "shutil.copymode",
                             "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.rmtree", "shutil.chown"})
    banned = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "mmap", "fcntl", "pty", "termios", "_socket",
                        "socket", "select", "selectors", "_ssl", "ssl", "subprocess", "multiprocessing",
                        "resource", "signal", "gc", "_testcapi", "_testinternalcapi", "_xxsubinterpreters",
                        "_posixshmem", "_multiprocessing", "_testbuffer", "_testimportmultiple"})
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep

    def inside(path, roots):
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return any((p + sep).startswith(r) for r in roots)

    def hook(event, args):
        if event.startswith(deny):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "import" and args[0].split(".")[0] in banned:
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
        if event == "open":
            path, mode = args[0], args[1] or "r"
            if isinstance(path, int):
                return
            if any(c in str(mode) for c in "wax+"):
                if not inside(path, write_roots):
                    raise PermissionError(f"sandbox: writing {path!r} is not allowed (only the working directory)")
            elif not inside(path, readable):
                raise PermissionError(f"sandbox: reading {path!r} is not allowed")
        elif event in dir_events:
            if args and isinstance(args[0], (str, bytes)) and not inside(args[0], readable):
                raise PermissionError(f"sandbox: listing {args[0]!r} is not allowed")
        elif event in path_events:
            for a in args:
                if isinstance(a, (str, bytes)) and not inside(a, write_roots):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

    return hook

for name in [m for m in sys.modules if m.split(".")[0] == "gc"]:
    del sys.modules[name]
paths = sysconfig.get_paths()
sys.addaudithook(make_hook(tmp, tuple(os.path.realpath(p) + os.sep for p in {paths["stdlib"], paths["platstdlib"]})))
del make_hook, paths
source = req["code"]
try:
    compiled = compile(source, "<code>", "exec")
except SyntaxError as e:
    report({"error": "syntax_error", "message": f"line {e.lineno}: {e.msg}"})
    sys.exit(0)

captured = io.StringIO()
sys.stdout = sys.stderr = captured

def user_line(tb):
    # the entry after this bootstrap's own is the user's code (frames themselves are off limits now)
    tb = tb.tb_next if tb is not None else None
    return f" (line {tb.tb_lineno})" if tb is not None else ""

try:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compiled, namespace)
    main = namespace.get("main")
    if not callable(main):
        raise NameError("code must define main(...)")
    result = main(**req["inputs"])
except PermissionError as e:
    report({"error": "forbidden", "message": str(e)})
    sys.exit(0)
except MemoryError:
    report({"error": "memory_limit", "message": "the code ran out of memory"})
    sys.exit(0)
except RecursionError as e:
    report({"error": "runtime_error", "message": f"RecursionError: {e}"})
    sys.exit(0)
except BaseException as e:
    report({"error": "runtime_error", "message": f"{type(e).__name__}: {e}{user_line(e.__traceback__)}"})
    sys.exit(0)
if not isinstance(result, dict):
    report({"error": "invalid_output", "message": f"main() must return a dict, not {type(result).__name__}"})
    sys.exit(0)
try:
    text = json.dumps(result, allow_nan=False, ensure_ascii=False)
except (TypeError, ValueError) as e:
    report({"error": "invalid_output", "message": f"the dict main() returned is not JSON: {e}"})
    sys.exit(0)
if len(text.encode()) > lim["output"]:
    report({"error": "output_too_large", "message": f"the result is larger than {lim['output']} bytes"})
    sys.exit(0)
report({"result": result, "namespaces": namespaces})
'''

_protections: list[str] | None = None


async def run_python(code: str, inputs: dict[str, Any], limits: SandboxLimits | None = None) -> dict[str, Any]:
    """``main(**inputs)`` of ``code`` in a fresh sandboxed process; its dict result, or SandboxError."""
    limits = limits or SandboxLimits()
    if len(code.encode()) > limits.max_code_bytes:
        raise SandboxError("invalid_output", f"the code is larger than {limits.max_code_bytes} bytes")
    marker = "@@plexus-result-" + secrets.token_hex(16) + "@@"
    with tempfile.TemporaryDirectory(prefix="plexus-code-") as tmp:
        request = json.dumps({"marker": marker, "tmp": tmp, "code": code, "inputs": inputs,
                              "limits": {"cpu": limits.cpu_seconds, "memory": limits.memory_bytes,
                                         "output": limits.output_bytes}}).encode()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-S", "-c", BOOTSTRAP, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=tmp, start_new_session=True,
            env={"PATH": "/nonexistent", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"})
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(request), limits.wall_seconds)
        except TimeoutError:
            _kill(proc.pid)
            await proc.wait()
            raise SandboxError("timeout", f"the code did not finish within {limits.wall_seconds:g} s") from None
        finally:
            if proc.returncode is None:
                _kill(proc.pid)
    _, found, tail = stdout.rpartition(marker.encode())
    if not found:
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise SandboxError("timeout", f"the code used more than {limits.cpu_seconds:g} s of CPU")
        if b"MemoryError" in stderr:
            raise SandboxError("memory_limit", "the code ran out of memory")
        raise SandboxError("runtime_error", f"the sandbox exited with {proc.returncode}: "
                                            f"{stderr.decode(errors='replace')[-300:]}")
    reply = json.loads(tail.decode())
    if "error" in reply:
        raise SandboxError(reply["error"], reply["message"])
    global _protections
    if _protections is None:
        _protections = ["process", "rlimits", "audit-hook"] + (["network-namespace"] if reply.get("namespaces") else [])
    return reply["result"]


def protections() -> list[str]:
    """The layers active on this machine (known after the first run)."""
    return list(_protections or [])


def _kill(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
