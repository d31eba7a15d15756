"""The code node's sandbox with real subprocesses: what Dify code nodes do works; each escape is refused
and its side effect does not happen."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from services.runtime.workflow.sandbox import SandboxError, SandboxLimits, run_python

DEFAULT = SandboxLimits()


async def fails(code: str, expected: str, limits: SandboxLimits = DEFAULT, **inputs: object) -> str:
    with pytest.raises(SandboxError) as e:
        await run_python(code, inputs, limits)
    assert e.value.code == expected, e.value.message
    return e.value.message


async def test_dify_default_code_node_and_stdlib() -> None:
    code = "def main(arg1: str, arg2: str) -> dict:\n    return {'result': arg1 + arg2}\n"
    assert await run_python(code, {"arg1": "数据", "arg2": "流"}) == {"result": "数据流"}
    code = ("import json, re, math, datetime, random, collections, hashlib, base64, statistics, decimal, uuid\n"
            "from collections import namedtuple\n"
            "def main(items: list) -> dict:\n"
            "    print('debug output must not disturb the result' * 1000)\n"
            "    total = sum(i['n'] for i in items)\n"
            "    return {'total': total, 'sha': hashlib.sha256(b'x').hexdigest()[:8], 'nested': {'a': [1, {'b': None}]},\n"
            "            'mean': statistics.mean([1, 2, 3]), 'words': re.findall(r'\\w+', 'a b')}\n")
    out = await run_python(code, {"items": [{"n": 1}, {"n": 2}]})
    assert out == {"total": 3, "sha": "2d711642", "nested": {"a": [1, {"b": None}]}, "mean": 2, "words": ["a", "b"]}


async def test_working_directory_is_writable_and_private() -> None:
    code = "def main():\n    open('scratch.txt', 'w').write('hi')\n    return {'r': open('scratch.txt').read()}\n"
    assert await run_python(code, {}) == {"r": "hi"}


async def test_network_is_refused() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        await fails(f"import socket\ndef main():\n    socket.create_connection(('127.0.0.1', {port}))\n    return {{}}\n",
                    "forbidden")
        await fails(f"def main():\n    import urllib.request\n    urllib.request.urlopen('http://127.0.0.1:{port}/')\n"
                    "    return {}\n", "forbidden")  # urllib cannot even be imported without sockets
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


async def test_files_outside_the_working_directory(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    await fails(f"def main():\n    open({str(target)!r}, 'w').write('x')\n    return {{}}\n", "forbidden")
    await fails("def main():\n    return {'p': open('/etc/passwd').read()}\n", "forbidden")
    await fails("import os\ndef main():\n    return {'l': os.listdir('/')}\n", "forbidden")
    await fails(f"import os\ndef main():\n    os.remove({str(tmp_path)!r})\n    return {{}}\n", "forbidden")
    assert not target.exists()


async def test_processes_and_native_code(tmp_path: Path) -> None:
    marker = tmp_path / "spawned"
    await fails(f"import os\ndef main():\n    os.system('touch {marker}')\n    return {{}}\n", "forbidden")
    await fails(f"import subprocess\ndef main():\n    subprocess.run(['touch', '{marker}'])\n    return {{}}\n", "forbidden")
    await fails("import os\ndef main():\n    while True:\n        os.fork()\n", "forbidden")  # a fork bomb
    await fails("import ctypes\ndef main():\n    return {}\n", "forbidden")
    await fails("def main():\n    return {'c': str(__import__('ctypes'))}\n", "forbidden")
    await fails("import gc\ndef main():\n    return {'n': len(gc.get_objects())}\n", "forbidden")
    assert not marker.exists()


async def test_the_policy_cannot_be_switched_off_from_inside() -> None:
    # the bootstrap's globals are reachable through frames, but the policy lives in the unreachable hook
    await fails("import sys\ndef main():\n    g = sys._getframe(1).f_globals\n    g['tmp'] = '/'\n"
                "    return {'x': open('/etc/hostname').read()}\n", "forbidden")


async def test_resource_limits() -> None:
    await fails("def main():\n    x = 'a' * 10**10\n    return {}\n", "memory_limit")
    await fails("def main():\n    l = []\n    while True:\n        l.append(' ' * 10**6)\n", "memory_limit")
    t0 = time.monotonic()
    await fails("def main():\n    while True:\n        pass\n", "timeout", SandboxLimits(cpu_seconds=1))
    await fails("import time\ndef main():\n    time.sleep(100)\n", "timeout", SandboxLimits(wall_seconds=1))
    assert time.monotonic() - t0 < 6


async def test_bad_results_and_errors() -> None:
    await fails("def main():\n    return {'x': 'a' * (2 * 2**20)}\n", "output_too_large")
    await fails("def main():\n    return [1]\n", "invalid_output")
    await fails("def main():\n    return {'x': float('nan')}\n", "invalid_output")
    await fails("def main():\n    return {'x': {1, 2}}\n", "invalid_output")
    assert "line 1" in await fails("def main(:\n    pass\n", "syntax_error")
    assert "ZeroDivisionError" in await fails("def main():\n    x = 1\n    return {'y': x / 0}\n", "runtime_error")
    assert "main" in await fails("x = 1\n", "runtime_error")


async def test_concurrent_sandboxes_keep_their_own_results() -> None:
    code = "def main(i: int) -> dict:\n    return {'i': i * 2}\n"
    results = await asyncio.gather(*(run_python(code, {"i": i}) for i in range(8)))
    assert [r["i"] for r in results] == [i * 2 for i in range(8)]
