"""Settings: env parsing, nested slices, secrets generation, and the README table staying true."""

from pathlib import Path

import pytest

from shared.settings import Settings, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_env_prefix_and_nesting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEXUS_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    monkeypatch.setenv("PLEXUS_GATEWAY__REDIS_FAILURE_POLICY", "open")
    monkeypatch.setenv("PLEXUS_RUNTIME__MEMORY_TURNS", "3")
    s = Settings(_env_file=None)
    assert s.effective_database_url == "postgresql+asyncpg://u@h/db"
    assert s.gateway.redis_failure_policy == "open"
    assert s.runtime.memory_turns == 3


def test_invalid_enum_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEXUS_GATEWAY__LIMITER", "carrier-pigeon")
    with pytest.raises(Exception, match="limiter"):
        Settings(_env_file=None)


def test_embedded_secrets_are_generated_once(tmp_path: Path) -> None:
    a = Settings(data_dir=tmp_path, _env_file=None)
    a.ensure_secrets()
    b = Settings(data_dir=tmp_path, _env_file=None)
    b.ensure_secrets()
    assert a.secret_key and a.secret_key == b.secret_key
    assert a.internal_secret and a.internal_secret != a.secret_key
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


def test_default_database_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, _env_file=None)
    assert s.effective_database_url == f"sqlite+aiosqlite:///{(tmp_path / 'plexus.db').resolve()}"


def test_split_target_requires_production_settings() -> None:
    s = Settings(_env_file=None)
    with pytest.raises(SystemExit, match="PLEXUS_DATABASE_URL"):
        s.require("database_url")


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in settings_table().splitlines()[2:] if line not in readme]
    assert not missing, "README configuration table is stale; regenerate with `python -m shared.settings`:\n" + "\n".join(missing)


async def test_split_gateway_needs_redis_unless_memory_is_chosen(tmp_path: Path) -> None:
    from services.stack import Stack

    prod = {"database_url": "sqlite+aiosqlite:///x.db", "nats_url": "nats://127.0.0.1:1", "secret_key": "s",
                "internal_secret": "i", "data_dir": tmp_path, "_env_file": None}
    with pytest.raises(SystemExit, match="PLEXUS_REDIS_URL"):
        await Stack(Settings(**prod), "gateway").start()
    with pytest.raises(SystemExit, match="PLEXUS_NATS_URL"):
        await Stack(Settings(**{**prod, "nats_url": None}), "runtime").start()


def test_plexus_run_takes_the_hard_open_files_limit() -> None:
    """A low soft RLIMIT_NOFILE (1,024 is common) would refuse streams long before the hard limit."""
    import resource
    import subprocess
    import sys

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-files limit ({hard}) leaves nothing to raise")
    script = ("import resource; from services.cli import _raise_open_files; _raise_open_files(); "
              "print(*resource.getrlimit(resource.RLIMIT_NOFILE))")
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    ).stdout.split()
    soft_after, hard_after = int(out[0]), int(out[1])
    assert soft_after > 256
    assert soft_after == hard_after
