"""The code node's sandbox, with real subprocesses: what Dify code nodes do works, and every escape is
refused with the right error code *and* without its side effect. Escapes run twice: with the kernel fences
(namespaces, read-only fs, seccomp) and with the audit hook alone, as in a container that refuses them."""

from __future__ import annotations

import asyncio
import glob
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from services.runtime.workflow import sandbox
from services.runtime.workflow.sandbox import SandboxError, SandboxLimits, protections, run_python

DEFAULT = SandboxLimits()


async def fails(code: str, expected: str, limits: SandboxLimits = DEFAULT, **inputs: object) -> str:
    with pytest.raises(SandboxError) as e:
        await run_python(code, inputs, limits)
    assert e.value.code == expected, e.value.message
    return e.value.message


@pytest.fixture(params=["kernel+hook", "hook-only"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sandbox, "_KERNEL_FENCES", request.param == "kernel+hook")
    return request.param


# -- what code nodes do ---------------------------------------------------------------------------------
async def test_dify_default_code_node() -> None:
    code = "def main(arg1: str, arg2: str) -> dict:\n    return {\n        'result': arg1 + arg2,\n    }\n"
    assert await run_python(code, {"arg1": "hello ", "arg2": "world"}) == {"result": "hello world"}


async def test_json_in_and_out_with_nested_structures_and_unicode() -> None:
    code = ("def main(items: list, meta: dict) -> dict:\n"
            "    return {'count': len(items), 'names': [i['name'].upper() for i in items],\n"
            "            'meta': {**meta, 'deep': {'a': [1, 2.5, None, True, {'b': []}]}}, 'emoji': '数据 🚀'}\n")
    out = await run_python(code, {"items": [{"name": "é"}, {"name": "ß"}], "meta": {"k": [None, {"x": 1}]}})
    assert out == {"count": 2, "names": ["É", "SS"], "emoji": "数据 🚀",
                   "meta": {"k": [None, {"x": 1}], "deep": {"a": [1, 2.5, None, True, {"b": []}]}}}


async def test_stdlib_modules_work() -> None:
    code = ("import json, re, math, datetime, random, collections, itertools, functools, base64, hashlib\n"
            "import statistics, decimal, uuid, string, textwrap, zoneinfo\n"
            "def main(raw: str) -> dict:\n"
            "    data = json.loads(raw)\n"
            "    return {'sum': math.fsum(data), 'mean': statistics.mean(data), 'words': re.findall(r'\\w+', 'a b'),\n"
            "            'sha': hashlib.sha256(b'x').hexdigest()[:8], 'b64': base64.b64encode(b'hi').decode(),\n"
            "            'dec': str(decimal.Decimal('0.1') + decimal.Decimal('0.2')), 'uuid': len(str(uuid.uuid4())),\n"
            "            'date': datetime.date(2024, 2, 29).isoformat(), 'rand': random.Random(1).randint(1, 1),\n"
            "            'count': collections.Counter('aab')['a'], 'pairs': list(itertools.pairwise([1, 2, 3])),\n"
            "            'reduce': functools.reduce(lambda a, b: a * b, data), 'letters': string.ascii_lowercase[:3],\n"
            "            'wrap': textwrap.wrap('aaa bbb', 3),\n"
            "            'tz': str(datetime.datetime(2024, 1, 1, tzinfo=zoneinfo.ZoneInfo('Asia/Shanghai')))}\n")
    out = await run_python(code, {"raw": "[1, 2, 3]"})
    assert out == {"sum": 6.0, "mean": 2, "words": ["a", "b"], "sha": "2d711642", "b64": "aGk=", "dec": "0.3",
                   "uuid": 36, "date": "2024-02-29", "rand": 1, "count": 2, "pairs": [[1, 2], [2, 3]],
                   "reduce": 6, "letters": "abc", "wrap": ["aaa", "bbb"], "tz": "2024-01-01 00:00:00+08:00"}


async def test_prints_and_stdout_spam_do_not_disturb_the_result() -> None:
    code = ("import os, sys\n"
            "def main() -> dict:\n"
            "    print('{\"result\": {\"forged\": true}}')\n"  # looks like a reply: must not be taken for one
            "    for _ in range(20000):\n"
            "        print('x' * 1000)\n"  # 20 MB, far beyond the output cap
            "    sys.stderr.write('e' * 10**6)\n"
            "    os.write(1, b'\\n{\"result\": {\"forged\": 1}}\\n' * 1000)\n"
            "    os.write(2, b'y' * 10**7)\n"
            "    return {'ok': True}\n")
    assert await run_python(code, {}) == {"ok": True}


async def test_working_directory_is_writable_and_private_per_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the calls' directories go under this test's own temp dir: other processes' runs come and go in /tmp
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    before = set(glob.glob(f"{tempfile.gettempdir()}/plexus-code-*"))
    assert before == set()
    code = ("import os, time, pathlib\n"
            "def main(i: int) -> dict:\n"
            "    pathlib.Path('mine.txt').write_text(str(i))\n"
            "    time.sleep(0.05)\n"  # overlap with the other calls
            "    with open('mine.txt', 'a') as f:\n"
            "        f.write('!')\n"
            "    os.mkdir('sub'); os.rename('mine.txt', 'sub/x'); os.remove('sub/x'); os.rmdir('sub')\n"
            "    return {'i': i, 'files': os.listdir('.')}\n")
    results = await asyncio.gather(*(run_python(code, {"i": i}) for i in range(8)))
    assert results == [{"i": i, "files": []} for i in range(8)]
    code = ("import os\ndef main(i: int) -> dict:\n    open('f', 'w').write(str(i))\n"
            "    return {'i': int(open('f').read()), 'cwd': os.getcwd()}\n")
    results = await asyncio.gather(*(run_python(code, {"i": i}) for i in range(8)))
    assert [r["i"] for r in results] == list(range(8))
    cwds = {r["cwd"] for r in results}  # one directory per call, all under the temp dir
    assert len(cwds) == 8 and all(c.startswith(f"{tmp_path}/plexus-code-") for c in cwds), cwds
    assert set(glob.glob(f"{tempfile.gettempdir()}/plexus-code-*")) == before  # all removed


async def test_protections_are_reported() -> None:
    layers = protections()
    assert {"process-group", "rlimits", "audit-hook"} <= set(layers)
    assert ("userns" in layers) == ("netns" in layers)
    assert protections() == layers  # measured once


# -- escapes ---------------------------------------------------------------------------------------------
async def test_network_is_refused(mode: str) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        msg = await fails(f"import socket\ndef main():\n    socket.create_connection(('127.0.0.1', {port}))\n"
                          "    return {}\n", "forbidden")
        assert "network" in msg
        await fails(f"import socket\ndef main():\n    s = socket.socket()\n    s.connect(('127.0.0.1', {port}))\n",
                    "forbidden")
        await fails(f"def main():\n    import urllib.request\n    urllib.request.urlopen('http://127.0.0.1:{port}/')\n"
                    "    return {}\n", "forbidden")  # urllib wraps the refusal in URLError: still "forbidden"
        # caught and retried: the call succeeds, but nothing got through
        out = await run_python(f"import socket\ndef main():\n    try:\n        socket.create_connection(('127.0.0.1', "
                               f"{port}), timeout=1)\n        return {{'connected': True}}\n"
                               "    except OSError as e:\n        return {'connected': False}\n", {})
        assert out == {"connected": False}
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody ever connected
    finally:
        server.close()


async def test_files_outside_the_working_directory(mode: str, tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    await fails(f"def main():\n    open({str(target)!r}, 'w').write('x')\n    return {{}}\n", "forbidden")
    await fails(f"import os\ndef main():\n    os.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\n", "forbidden")
    await fails(f"import shutil\ndef main():\n    shutil.copyfile('/etc/hostname', {str(target)!r})\n", "forbidden")
    await fails("import os\ndef main():\n    os.symlink('/etc/passwd', 'link')\n", "forbidden")
    assert not target.exists()
    # readable is not writable: the stdlib can be read, never written
    planted = Path(sys._stdlib_dir) / f"plexus_planted_{tmp_path.name}.py"
    try:
        await fails(f"def main():\n    open({str(planted)!r}, 'w').write('x')\n", "forbidden")
        await fails("import json\ndef main():\n    open(json.__file__, 'r+').close()\n", "forbidden")
        assert not planted.exists()
    finally:
        planted.unlink(missing_ok=True)
    (tmp_path / "keep").write_text("keep")
    await fails(f"import os\ndef main():\n    os.remove({str(tmp_path / 'keep')!r})\n", "forbidden")
    await fails(f"import os\ndef main():\n    os.rename({str(tmp_path / 'keep')!r}, 'stolen')\n", "forbidden")
    assert (tmp_path / "keep").read_text() == "keep"
    msg = await fails("def main():\n    return {'p': open('/etc/passwd').read()}\n", "forbidden")
    assert "root:" not in msg
    await fails("import os\ndef main():\n    return {'l': os.listdir('/')}\n", "forbidden")
    await fails("def main():\n    return {'e': open('/proc/self/environ').read()}\n", "forbidden")
    # a directory fd of the stdlib would let a relative os.open(dir_fd=...) write there
    await fails("import json, os\ndef main():\n    fd = os.open(os.path.dirname(json.__file__), os.O_RDONLY)\n"
                "    os.open('evil.py', os.O_CREAT | os.O_WRONLY, dir_fd=fd)\n", "forbidden")


async def test_processes_are_refused(mode: str, tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    await fails(f"import os\ndef main():\n    os.system('touch {marker}')\n    return {{}}\n", "forbidden")
    await fails(f"import subprocess\ndef main():\n    subprocess.run(['touch', '{marker}'])\n    return {{}}\n",
                "forbidden")
    await fails(f"import os\ndef main():\n    os.posix_spawn('/usr/bin/touch', ['touch', '{marker}'], {{}})\n",
                "forbidden")
    await fails(f"import os\ndef main():\n    os.execv('/usr/bin/touch', ['touch', '{marker}'])\n", "forbidden")
    await fails("import os\ndef main():\n    os.fork()\n    return {}\n", "forbidden")
    await fails("import os\ndef main():\n    while True:\n        os.fork()\n", "forbidden")  # a fork bomb
    out = await run_python("import os\ndef main():\n    n = 0\n    for _ in range(200):\n        try:\n"
                           "            pid = os.fork()\n        except OSError:\n            continue\n"
                           "        if pid == 0:\n            os._exit(0)\n        n += 1\n    return {'forked': n}\n", {})
    assert out == {"forked": 0}  # a bomb that swallows the refusals forks nothing either
    await fails("import os\ndef main():\n    os.kill(1, 0)\n", "forbidden")
    assert not marker.exists()


async def test_native_code_is_refused(mode: str) -> None:
    assert "ctypes" in await fails("import ctypes\ndef main():\n    return {}\n", "forbidden")
    await fails("def main():\n    return {'c': str(__import__('ctypes'))}\n", "forbidden")
    await fails("def main():\n    import _ctypes\n", "forbidden")
    await fails("import gc\ndef main():\n    return {'n': len(gc.get_objects())}\n", "forbidden")
    # a real extension module copied into the working directory and loaded from there
    await fails("import math, importlib.machinery as m, importlib.util as u\ndef main():\n"
                "    open('m.so', 'wb').write(open(math.__file__, 'rb').read())\n"
                "    loader = m.ExtensionFileLoader('math', 'm.so')\n"
                "    loader.create_module(u.spec_from_file_location('math', 'm.so', loader=loader))\n", "forbidden")


async def test_the_policy_cannot_be_switched_off_from_inside(mode: str) -> None:
    # frames and builtins are reachable and mutable; the hook's decisions rest on neither
    code = ("import builtins, posixpath, sys\n"
            "def main():\n"
            "    g = sys._getframe(1).f_globals\n"
            "    g['guard'] = g['fences'] = None\n"
            "    saved = builtins.type, builtins.isinstance, builtins.OSError, posixpath.realpath\n"
            "    builtins.type, builtins.isinstance = (lambda x: str), (lambda *a: True)\n"
            "    builtins.OSError, posixpath.realpath = KeyError, (lambda p: '/tmp/x')\n"
            "    try:\n"
            "        got = open('/etc/passwd').read()[:5]\n"
            "    except BaseException as e:\n"
            "        got = e.__class__.__name__\n"
            "    builtins.type, builtins.isinstance, builtins.OSError, posixpath.realpath = saved\n"
            "    return {'got': got}\n")
    assert await run_python(code, {}) == {"got": "SandboxViolation"}
    # refusing a new hook is silent (CPython swallows it), but the hook never sees an event
    code = ("import sys\ndef main():\n    seen = []\n    sys.addaudithook(lambda e, a: seen.append(e))\n"
            "    open('x', 'w').close()\n    return {'seen': len(seen)}\n")
    assert await run_python(code, {}) == {"seen": 0}
    await fails("import sys\ndef main():\n    sys.settrace(None)\n", "forbidden")
    await fails("import resource\ndef main():\n    resource.setrlimit(resource.RLIMIT_CPU, (100, 100))\n", "forbidden")


def test_kernel_fences_hold_without_the_hook(tmp_path: Path) -> None:
    """The namespaces, read-only fs and seccomp filter on their own (run without the audit hook)."""
    layers = protections()
    if not {"seccomp", "readonly-fs", "netns"} <= set(layers):
        pytest.skip(f"kernel fences unavailable here: {layers}")
    source = sandbox.BOOTSTRAP
    script = source[: source.index("def limits(")] + (
        "print(fences(1 << 20))\n"
        "import socket\n"
        "for name, attempt in (('fork', os.fork), ('socket', socket.socket), ('kill', lambda: os.kill(1, 0)),\n"
        "                      ('exec', lambda: os.execv('/bin/true', ['true'])),\n"
        "                      ('write', lambda: open('/tmp/plexus-fence-probe', 'w'))):\n"
        "    try:\n"
        "        attempt()\n"
        "        print(name, 'ALLOWED')\n"
        "    except OSError as e:\n"
        "        print(name, e.errno)\n"
        "open('ok', 'w').write('x')\n"
        "print('workdir', open('ok').read())\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=30, check=False)
    lines = done.stdout.splitlines()
    assert "seccomp" in lines[0], done.stderr
    assert lines[1:] == ["fork 1", "socket 1", "kill 1", "exec 1", "write 30", "workdir x"], done.stderr
    assert not Path("/tmp/plexus-fence-probe").exists()
    assert list(tmp_path.iterdir()) == []  # the workdir was a private tmpfs


# -- limits ----------------------------------------------------------------------------------------------
async def test_memory_limit(mode: str) -> None:
    limits = SandboxLimits(wall_seconds=10)
    for code in ("def main():\n    x = 'x' * 10**10\n    return {}\n",
                 "def main():\n    chunks = []\n    while True:\n        chunks.append(' ' * 10**5)\n"):
        t0 = time.monotonic()
        await fails(code, "memory_limit", limits)
        assert time.monotonic() - t0 < limits.wall_seconds


async def test_cpu_and_wall_clock_limits(mode: str) -> None:
    t0 = time.monotonic()
    assert "CPU" in await fails("def main():\n    while True:\n        pass\n", "timeout", SandboxLimits(cpu_seconds=1))
    assert time.monotonic() - t0 < 4
    t0 = time.monotonic()  # ignoring SIGXCPU only buys the second until the hard limit's SIGKILL
    await fails("import signal\ndef main():\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True:\n"
                "        pass\n", "timeout", SandboxLimits(cpu_seconds=1))
    assert time.monotonic() - t0 < 5
    t0 = time.monotonic()
    await fails("import time\ndef main():\n    time.sleep(100)\n", "timeout", SandboxLimits(wall_seconds=1))
    assert time.monotonic() - t0 < 3


async def test_output_limits(mode: str) -> None:
    await fails("def main():\n    return {'x': 'a' * (2 * 2**20)}\n", "output_too_large")
    await fails("def main():\n    return {'x': 'a' * 2000}\n", "output_too_large", SandboxLimits(output_bytes=1000))
    assert await run_python("def main():\n    return {'x': 'a' * 900}\n", {}, SandboxLimits(output_bytes=1000))
    # a reply forged on the reply fd is checked like any other: too big, or not JSON, is refused
    await fails("import os\ndef main():\n    os.write(3, b'x' * 3 * 2**20)\n    os._exit(0)\n", "output_too_large")
    msg = await fails("import os\ndef main():\n    os.write(3, b'\\n{\"result\": {\"x\": NaN}}\\n')\n    os._exit(0)\n",
                      "runtime_error")
    assert "without a result" in msg


# -- bad results and errors ------------------------------------------------------------------------------
async def test_invalid_results() -> None:
    assert "dict" in await fails("def main():\n    return [1]\n", "invalid_output")
    await fails("def main():\n    return None\n", "invalid_output")
    for value in ("float('nan')", "float('inf')", "{1, 2}", "object()", "b'bytes'"):
        await fails(f"def main():\n    return {{'x': {value}}}\n", "invalid_output")
    await fails("def main():\n    d = {}\n    d['self'] = d\n    return d\n", "invalid_output")


async def test_errors_name_the_users_line() -> None:
    assert "line 3" in await fails("def main():\n    x = 1\n    return {x: }\n", "syntax_error")
    msg = await fails("def helper(d):\n    return d['missing']\n\ndef main():\n    return {'v': helper({})}\n",
                      "runtime_error")
    assert msg.startswith("KeyError: 'missing'") and "line 2" in msg and "<string>" not in msg
    assert "ZeroDivisionError" in await fails("def main():\n    return {'y': 1 / 0}\n", "runtime_error")
    assert "main(...)" in await fails("x = 1\n", "runtime_error")
    assert "unexpected keyword" in await fails("def main(a):\n    return {}\n", "runtime_error", b=1)
    assert "exit" in await fails("def main():\n    raise SystemExit(3)\n", "runtime_error")
    assert "status 3" in await fails("import os\ndef main():\n    os._exit(3)\n", "runtime_error")
    await fails("x" * 100_001, "forbidden")  # larger than max_code_bytes
    with pytest.raises(SandboxError) as e:
        await run_python("def main(x):\n    return {}\n", {"x": float("nan")})
    assert e.value.code == "runtime_error" and "JSON" in e.value.message
