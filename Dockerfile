# syntax=docker/dockerfile:1
# One image for every target: the command picks it (`plexus run gateway`, `plexus migrate`, ...).
# Default: `plexus run all` (everything in one process on embedded defaults under /data).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: resolve nothing, install the locked pins into a venv ----
FROM ${PYTHON_IMAGE} AS builder
# Same uv as the Makefile (UV_VERSION) so the lock is read the same way.
ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN pip install "uv==${UV_VERSION}" && python -m venv /opt/plexus
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY shared/ shared/
COPY services/ services/
# Runtime dependencies only: the project (not editable, no `dev` extra) with every version held to
# requirements.lock by a constraint, so test and lint tools never reach the image.
RUN uv pip install --python /opt/plexus/bin/python --constraint requirements.lock . \
    && /opt/plexus/bin/python -c "import services.cli, shared.settings"

# ---- runtime: the venv and a non-root user, nothing else ----
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="plexus" \
      org.opencontainers.image.description="Dify-compatible backend-as-a-service for LLM applications" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 plexus \
    && useradd --system --uid 10001 --gid plexus --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin plexus \
    && mkdir -p /data \
    && chown plexus:plexus /data
COPY --from=builder /opt/plexus /opt/plexus
ENV PATH=/opt/plexus/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/data \
    PLEXUS_HOST=0.0.0.0 \
    PLEXUS_PORT=8080 \
    PLEXUS_DATA_DIR=/data
WORKDIR /data
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["plexus"]
CMD ["run", "all"]
