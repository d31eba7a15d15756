"""Static checks of the Dockerfile (no Docker engine here, so the image is not built in tests): the
properties the chart relies on — multi-stage, runtime deps only, non-root, `plexus` entrypoint."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            out.append((op.upper(), args.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for op, args in instructions():
        if op == "FROM":
            result.append([])
        if result:
            result[-1].append((op, args))
    return result


def test_multi_stage_on_python_311_slim():
    ins = instructions()
    base = next(a for op, a in ins if op == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base)
    froms = [a for op, a in ins if op == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS builder", "${PYTHON_IMAGE} AS runtime"]


def test_builder_installs_the_lock_with_the_makefiles_uv_and_no_dev_extra():
    builder = stages()[0]
    makefile_uv = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE).group(1)
    assert ("ARG", f"UV_VERSION={makefile_uv}") in builder
    runs = " ".join(a for op, a in builder if op == "RUN")
    assert "--constraint requirements.lock ." in runs  # the project, every version held to the lock
    assert "[dev]" not in runs and "--extra" not in runs and "-r requirements.lock" not in runs
    assert "-e " not in runs  # not editable: the runtime stage gets no source tree
    copies = [a for op, a in builder if op == "COPY"]
    assert "requirements.lock pyproject.toml README.md ./" in copies  # README.md: pyproject's readme
    assert "shared/ shared/" in copies and "services/ services/" in copies


def test_dev_tools_are_only_in_the_dev_extra():
    """The image installs the project without extras: test tooling must stay out of the runtime deps."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"]).lower()
    for tool in ("pytest", "ruff", "helm-python-sdk", "kubernetes-validate"):
        assert tool not in runtime
        assert any(d.startswith(tool) for d in project["optional-dependencies"]["dev"])


def test_runtime_stage_is_slim_non_root_and_runs_plexus():
    runtime = stages()[-1]
    ops = dict(runtime)
    copies = [a for op, a in runtime if op == "COPY"]
    assert copies == ["--from=builder /opt/plexus /opt/plexus"]  # the venv only: no sources, no uv, no lock
    user = [a for op, a in runtime if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    uid = user[-1].split(":")[0]
    assert f"--uid {uid}" in " ".join(a for op, a in runtime if op == "RUN")
    env = " ".join(a for op, a in runtime if op == "ENV")
    assert "PLEXUS_HOST=0.0.0.0" in env and "/opt/plexus/bin" in env
    assert ops["ENTRYPOINT"] == '["plexus"]'
    assert ops["CMD"] == '["run", "all"]'
    assert not any(op == "RUN" and ("apt-get install" in a or "pip install" in a) for op, a in runtime)


def test_chart_runs_as_the_images_user():
    yaml = pytest.importorskip("yaml")
    values = yaml.safe_load((ROOT / "deploy/k8s/plexus/values.yaml").read_text())
    user = [a for op, a in stages()[-1] if op == "USER"][-1]
    uid, gid = (int(x) for x in user.split(":"))
    psc = values["podSecurityContext"]
    assert (psc["runAsUser"], psc["runAsGroup"], psc["runAsNonRoot"]) == (uid, gid, True)
    port = [a for op, a in stages()[-1] if op == "EXPOSE"][-1]
    assert int(port) == values["containerPort"]


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".plexus", "tests", ".env"} <= ignored
    for needed in ("shared", "services", "pyproject.toml", "requirements.lock", "README.md"):
        assert needed not in ignored
