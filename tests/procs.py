"""Child processes for the split topology (tests/topology.py) and the benchmarks (bench/common.py).

A ``Proc`` runs in its own session, logs to ``<log_dir>/<name>.log`` (appended: a restart keeps the
earlier lines), dies with its parent (PR_SET_PDEATHSIG, Linux) and stops with SIGINT, then SIGKILL of its
whole group. ``python_env`` is the environment every child gets.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

import httpx

from shared.llm import OFFLINE_ENV

ROOT = Path(__file__).resolve().parents[1]
NOFILE = 65536


def python_env(**extra: str) -> dict[str, str]:
    """Our environment without PLEXUS_* (nothing leaks in by accident), offline, the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLEXUS_")}
    for k, v in OFFLINE_ENV.items():
        env.setdefault(k, v)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def raise_nofile(limit: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may raise the hard limit too); returns the soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (max(limit, hard), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, want), want))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return None


_PRCTL = _load_prctl()  # loaded here, not in the forked child: there only the call itself runs


def _child_setup(nofile: int | None) -> Callable[[], None]:
    """What runs in the forked child before exec: keep it to a syscall or two."""

    def fn() -> None:
        if nofile:
            raise_nofile(nofile)
        if _PRCTL is not None:
            _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return fn


class Proc:
    """A child in its own session, logging to a file; stop = SIGINT, then SIGKILL of its whole group.

    ``start`` does not wait: call ``wait_ready`` (for ``ready_url`` to answer 200, or just alive without
    one), so that many children can start at once. ``nofile`` raises the child's RLIMIT_NOFILE."""

    def __init__(self, name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, ready_url: str | None = None, nofile: int | None = None) -> None:
        self.name, self.argv, self.env, self.cwd, self.ready_url = name, argv, env, cwd, ready_url
        self.log_path = log_dir / f"{name}.log"
        self.nofile = nofile
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        with open(self.log_path, "ab") as log:
            # started from the main thread: PDEATHSIG fires when the *thread* that forked exits
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                         preexec_fn=_child_setup(self.nofile))  # noqa: PLW1509 - see _child_setup
        return self

    @property
    def pid(self) -> int:
        assert self.proc
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                code = self.proc.returncode if self.proc is not None else None
                raise RuntimeError(f"{self.name} exited with {code}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.ready_url is None or httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {self.ready_url} after {timeout:.0f} s:\n"
                           f"{self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, no goodbye: what a crash or an OOM kill looks like to the rest."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, grace: float = 15.0) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)  # clean shutdown first: plexus stops its embedded NATS
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # whatever is left in its session (e.g. nats-server)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)
