"""Plumbing shared by every benchmark: processes, console setup, a raw HTTP/SSE client, load
generators (wrk or a built-in asyncio one), statistics and markdown tables.

Everything binds and connects to 127.0.0.1 only. Every process a bench starts is registered here and
killed (its whole process group) on normal exit, exception, SIGTERM or atexit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime as dt
import math
import os
import platform
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.llm import offline_env
from tests.procs import (
    NOFILE,
    ROOT,
    Proc,
    python_env,
    raise_nofile,  # noqa: F401  (re-exported for the bench scripts)
)

# litellm reads these at import (see the offline stack notes); set before anything imports it.
offline_env()

import httpx
import orjson

from shared.natsd import EmbeddedNats, free_port

HOST = "127.0.0.1"
ADMIN = {"email": "bench@example.com", "name": "Bench", "password": "bench-pass-42"}


# ---- processes -------------------------------------------------------------------------------------

_procs: list[Service] = []


class Service(Proc):
    """A tests.procs.Proc that ``start`` waits for (when it has a ready URL) and that ``stop_all`` stops:
    on normal exit, exception, SIGTERM or atexit."""

    def start(self, timeout: float = 90.0) -> Service:
        super().start()
        _procs.append(self)
        if self.ready_url:
            self.wait_ready(timeout)
        return self

    def rss_mb(self) -> float | None:
        return rss_mb(self.pid)

    def stop(self, grace: float = 15.0) -> None:
        super().stop(grace)
        self.proc = None
        if self in _procs:
            _procs.remove(self)


def stop_all() -> None:
    for svc in reversed(list(_procs)):
        with contextlib.suppress(Exception):
            svc.stop(grace=5)


def _on_term(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through every try/finally, then atexit


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_term)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU time of a process (default: this one), to show who saturates the cores."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def plexus_argv(target: str, port: int, data_dir: Path | None = None) -> list[str]:
    argv = [sys.executable, "-m", "services.cli", "run", target, "--host", HOST, "--port", str(port)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    return argv


def start_llm(work: Path, tokens: int = 10, delay: float = 0.0) -> tuple[Service, str]:
    """The scripted OpenAI-compatible server in its own process; returns it and its /v1 base URL."""
    port = free_port()
    svc = Service("llm", [sys.executable, "-m", "bench.llm_proc", "--port", str(port), "--tokens", str(tokens),
                          "--delay", str(delay)],
                  env=python_env(), cwd=ROOT, log_dir=work, nofile=NOFILE,
                  ready_url=f"http://{HOST}:{port}/v1/models").start()
    return svc, f"http://{HOST}:{port}/v1"


def start_hello(work: Path, framework: str = "asgi") -> tuple[Service, str]:
    """A reference server (bench.hello): raw ASGI, or one FastAPI route with Plexus's base middleware."""
    port = free_port()
    svc = Service(f"hello-{framework}", [sys.executable, "-m", "bench.hello", "--port", str(port), "--framework",
                                         framework],
                  env=python_env(), cwd=ROOT, log_dir=work, nofile=NOFILE,
                  ready_url=f"http://{HOST}:{port}/readyz").start()
    return svc, f"http://{HOST}:{port}"


@dataclass
class AllMode:
    plexus: Service
    base: str
    db_path: Path


def start_all_mode(work: Path, **env: str) -> AllMode:
    """`plexus run` (every service in one process: SQLite, embedded NATS, in-memory limiter)."""
    port = free_port()
    data = work / "all-data"
    svc = Service("plexus-all", plexus_argv("all", port, data), env=python_env(**env), cwd=work, log_dir=work,
                  nofile=NOFILE, ready_url=f"http://{HOST}:{port}/readyz").start()
    return AllMode(svc, f"http://{HOST}:{port}", data / "plexus.db")


@dataclass
class SplitMode:
    services: dict[str, Service]
    nats: EmbeddedNats
    base: str  # the gateway
    runtime: str
    db_path: Path
    internal_secret: str

    def stop(self) -> None:
        for svc in reversed(list(self.services.values())):
            svc.stop()
        self.nats.stop()


def start_split_mode(work: Path, targets: Sequence[str] = ("console", "runtime", "gateway"), **env: str
                     ) -> SplitMode:
    """One process per service on production settings: shared SQLite file, one nats-server."""
    nats = EmbeddedNats(work / "split-nats")
    nats.start()
    db_path = work / "split.db"
    ports = {t: free_port() for t in targets}
    base_env = python_env(
        PLEXUS_DATABASE_URL=f"sqlite+aiosqlite:///{db_path}",
        PLEXUS_NATS_URL=nats.url,
        PLEXUS_SECRET_KEY=secrets.token_urlsafe(48),
        PLEXUS_INTERNAL_SECRET=secrets.token_urlsafe(48),
        PLEXUS_DATA_DIR=str(work / "split-data"),
        PLEXUS_GATEWAY__LIMITER="memory",  # one gateway replica; the bench app has no limits anyway
        **{f"PLEXUS_GATEWAY__{t.upper()}_URL": f"http://{HOST}:{ports[t]}" for t in targets if t != "gateway"},
        **env,
    )
    services: dict[str, Service] = {}
    split = SplitMode(services, nats, f"http://{HOST}:{ports['gateway']}", f"http://{HOST}:{ports['runtime']}",
                      db_path, base_env["PLEXUS_INTERNAL_SECRET"])
    try:
        mig = subprocess.run([sys.executable, "-m", "services.cli", "migrate"], check=False, env=base_env,
                             cwd=work, capture_output=True, text=True, timeout=120)
        if mig.returncode != 0:
            raise RuntimeError(f"plexus migrate failed:\n{mig.stdout}\n{mig.stderr}")
        for t in targets:  # gateway last: it needs the others' URLs (and may probe them)
            services[t] = Service(f"plexus-{t}", plexus_argv(t, ports[t]), env=base_env, cwd=work, log_dir=work,
                                  nofile=NOFILE, ready_url=f"http://{HOST}:{ports[t]}/readyz").start()
    except BaseException:
        split.stop()
        raise
    return split


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False):
    """A temp dir for data and logs; processes are stopped before it goes away."""
    path = Path(tempfile.mkdtemp(prefix=f"plexus-bench-{prefix}-"))
    try:
        yield path
    finally:
        stop_all()
        if keep:
            print(f"(logs kept in {path})", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# ---- console setup -----------------------------------------------------------------------------------


@dataclass
class BenchApp:
    key: str
    app_id: str
    key_id: str
    tenant_id: str


def ok(r: httpx.Response) -> dict[str, Any]:
    """A console response's JSON, or a clear error naming the call."""
    if r.status_code >= 300:
        raise RuntimeError(f"{r.request.method} {r.request.url.path} -> {r.status_code}: {r.text[:500]}")
    return r.json() if r.content else {}


def console_admin(c: httpx.Client) -> dict[str, str]:
    """Authorization headers of the bench admin (set up on first use)."""
    if c.get("/console/api/setup").json().get("step") != "finished":
        ok(c.post("/console/api/setup", json=ADMIN))
    token = ok(c.post("/console/api/login", json={"email": ADMIN["email"], "password": ADMIN["password"]}))
    return {"Authorization": f"Bearer {token['data']['access_token']}"}


def setup_chat_app(base: str, llm_base: str, db_path: Path, name: str = "Bench bot") -> BenchApp:
    """Admin, provider at the scripted LLM, a chat app without limits, its model config and a key —
    the same console calls as tests/e2e/test_plexus_run.py, through the gateway at ``base``."""
    with httpx.Client(base_url=base, timeout=60) as c:
        h = console_admin(c)
        ok(c.post("/console/api/workspaces/current/model-providers/openai-compatible/credentials", headers=h,
                  json={"credentials": {"api_key": "sk-bench", "api_base": llm_base}}))
        app_id = ok(c.post("/console/api/apps", headers=h, json={"name": name, "mode": "chat"}))["id"]
        ok(c.post(f"/console/api/apps/{app_id}/model-config", headers=h, json={
            "model": {"provider": "openai-compatible", "name": "scripted", "completion_params": {}},
            "pre_prompt": "You are a benchmark.", "user_input_form": [],
        }))
        # no rate limits and no cap on concurrent runs (null = unlimited)
        app = ok(c.put(f"/console/api/apps/{app_id}", headers=h,
                       json={"api_rpm": 0, "api_rph": 0, "max_active_requests": None}))
        if app.get("max_active_requests") not in (None, 0) or app.get("api_rpm") or app.get("api_rph"):
            raise RuntimeError(f"app limits not cleared: {app}")
        key = ok(c.post(f"/console/api/apps/{app_id}/api-keys", headers=h))
    with contextlib.closing(sqlite3.connect(db_path)) as db:  # the tenant is not in any console response
        (tenant_id,) = db.execute("SELECT tenant_id FROM apps WHERE id = ?", (app_id,)).fetchone()
    return BenchApp(key=key["token"], app_id=app_id, key_id=key["id"], tenant_id=tenant_id)


def runtime_identity(secret: str, app: BenchApp) -> dict[str, str]:
    """The headers the gateway adds when it forwards an app-key call (shared.identity)."""
    from shared.identity import Caller, identity_headers

    caller = Caller(tenant_id=app.tenant_id, app_id=app.app_id, key_id=app.key_id, key_type="app")
    return {k.decode(): v.decode() for k, v in identity_headers(secret, caller)}


# ---- a small HTTP/1.1 keep-alive client (raw asyncio streams: cheap enough for thousands of streams) -


class HttpError(Exception):
    pass


class HttpConn:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    @staticmethod
    def build(method: str, path: str, host: str, headers: dict[str, str], body: bytes | None = None) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")

    async def send(self, raw: bytes) -> tuple[int, dict[str, str]]:
        """Write a prebuilt request; read the status line and headers."""
        if self.writer is None:
            await self.connect()
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        self._hdrs = hdrs
        return status, hdrs

    async def body(self) -> AsyncIterator[bytes]:
        """The response body as it arrives (de-chunked); leaves the connection ready for reuse."""
        hdrs, r = self._hdrs, self.reader
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await r.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await r.readuntil(b"\r\n")  # no trailers expected
                    break
                data = await r.readexactly(size + 2)
                yield data[:-2]
        elif "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if n:
                yield await r.readexactly(n)
        else:  # read to close
            while chunk := await r.read(65536):
                yield chunk
            self.close()
            return
        if hdrs.get("connection", "").lower() == "close":
            self.close()

    async def read_all(self) -> bytes:
        return b"".join([c async for c in self.body()])


@dataclass
class StreamResult:
    ok: bool = False  # ended with message_end
    status: int = 0
    error: str = ""
    t_head: float | None = None  # seconds from send to response head
    t_first: float | None = None  # ... to the first `message` event with text
    t_total: float | None = None
    events: int = 0


async def chat_stream(conn: HttpConn, raw: bytes, timeout: float = 120.0,
                      on_head: Callable[[StreamResult], None] | None = None) -> StreamResult:
    """Send one streaming chat request and read its SSE events until message_end (or failure)."""
    res = StreamResult()
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            res.status, _ = await conn.send(raw)
            res.t_head = time.perf_counter() - t0
            if on_head is not None:
                on_head(res)
            if res.status != 200:
                res.error = f"HTTP {res.status}: {(await conn.read_all())[:200]!r}"
                return res
            buf = b""
            async for piece in conn.body():
                buf += piece
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    for line in block.split(b"\n"):
                        if not line.startswith(b"data:"):
                            continue
                        ev = orjson.loads(line[5:])
                        res.events += 1
                        name = ev.get("event")
                        if name == "message" and res.t_first is None and ev.get("answer"):
                            res.t_first = time.perf_counter() - t0
                        elif name == "message_end":
                            res.ok = True
                        elif name == "error":
                            res.error = f"error event: {ev.get('code')}: {ev.get('message')}"
            if not res.ok and not res.error:
                res.error = "stream ended without message_end"
    except TimeoutError:
        res.error = "timeout"
        conn.close()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        res.error = f"{type(e).__name__}: {e}"
        conn.close()
    res.t_total = time.perf_counter() - t0
    if not res.ok:
        conn.close()  # never reuse a connection in an unknown state
    return res


def chat_request(base: str, key: str, user: str, query: str = "hello") -> bytes:
    host = base.split("://", 1)[1]
    # every chat starts a conversation: without auto_generate_name false each would also cost a background title
    # call to the model, which none of the recorded figures includes (docs/benchmarks.md, Setup)
    body = orjson.dumps({"inputs": {}, "query": query, "user": user, "response_mode": "streaming",
                         "auto_generate_name": False})
    return HttpConn.build("POST", "/v1/chat-messages", host, {
        "Authorization": f"Bearer {key}", "Content-Type": "application/json", "Accept": "text/event-stream",
    }, body)


def host_port(base: str) -> tuple[str, int]:
    host, port = base.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    return host, int(port)


# ---- load generators for a plain GET ---------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def loadgen_name(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk not found (apt-get install -y wrk) — or use --loadgen python")
    return choice


def run_load(tool: str, url: str, headers: dict[str, str], connections: int, duration: float,
             work: Path) -> LoadResult:
    if tool == "wrk":
        return _wrk(url, headers, connections, duration, work)
    return run_async(_python_load(url, headers, connections, duration))


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"unparsed wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _wrk(url: str, headers: dict[str, str], connections: int, duration: float, work: Path) -> LoadResult:
    script = work / "wrk-headers.lua"
    script.write_text("".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items()))
    # one wrk thread: it is far faster than any target here, and leaves the second core to the servers
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency", "--timeout", "10s",
           "-s", str(script), url]
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=duration + 60).stdout
    try:
        pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.MULTILINE))
        m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
        total, secs = int(m.group(1)), _ms(m.group(2)) / 1e3
        errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors += int(non2xx.group(1)) if non2xx else 0
        return LoadResult(total, errors, secs, _ms(pct["50"]), _ms(pct["99"]))
    except (AttributeError, KeyError, ValueError) as e:
        raise RuntimeError(f"could not parse wrk output ({e}):\n{out}") from e


async def _python_load(url: str, headers: dict[str, str], connections: int, duration: float) -> LoadResult:
    """Fallback: N keep-alive connections, each sending the next request when the last one is read."""
    host, port = host_port(url)
    path = "/" + url.split("://", 1)[1].split("/", 1)[1]
    raw = HttpConn.build("GET", path, f"{host}:{port}", headers)
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        conn = HttpConn(host, port)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                status, _ = await conn.send(raw)
                await conn.read_all()
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                conn.close()
                continue
            lat.append(time.perf_counter() - t0)
            if status >= 400:
                errors += 1
        conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    secs = time.perf_counter() - start
    lat.sort()
    return LoadResult(len(lat), errors, secs, percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3)


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# ---- statistics, tables, machine -------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return "–" if math.isnan(x) else f"{x:,.2f}" if abs(x) < 100 else f"{x:,.0f}"
        return str(x)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdict(met: bool, text: str) -> str:
    return f"- {'met' if met else 'NOT met'}: {text}"


def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        ram = f"{kb / 1024 / 1024:.1f} GiB"
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    return {"cpus": str(os.cpu_count()), "cpu": cpu, "ram": ram, "os": os_name,
            "python": platform.python_version(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def print_machine() -> None:
    m = machine()
    print(f"machine: {m['cpus']} CPUs ({m['cpu']}), {m['ram']} RAM, {m['os']}, Python {m['python']}; {m['date']}")
