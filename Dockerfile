# syntax=docker/dockerfile:1
# The registration service: API (`serve`), event worker (`worker`) and migrations (`migrate`).
# Installed from uv.lock; runs as a non-root user; the data folder is a volume.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
# Dependencies first, so code changes do not invalidate this layer.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project
COPY README.md alembic.ini cli.py ./
COPY app ./app
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-editable

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# bubblewrap isolates the models the service evaluates (docs/evaluation.md); util-linux's
# setpriv and prlimit, which the sandbox also uses, are in the base image.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 hokusai \
    && useradd --system --uid 10001 --gid hokusai --home-dir /srv --no-create-home hokusai \
    && mkdir -p /srv/data \
    && chown hokusai:hokusai /srv/data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOKUSAI_ENV=production \
    HOKUSAI_DATA_DIR=/srv/data \
    HOST=0.0.0.0 \
    PORT=8000
WORKDIR /srv
USER 10001:10001
VOLUME ["/srv/data"]
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health\", timeout=4)"]
# On SIGTERM, `serve` stops accepting connections, lets the requests in flight finish (at most
# HOKUSAI_SHUTDOWN_GRACE_SECONDS, default 90) and exits 0; `worker` finishes its deliveries in
# flight. Give the container a longer stop timeout than that (docker stop -t / stop_grace_period).
# Exec form, so the signal reaches the Python process itself (PID 1), not a shell.
STOPSIGNAL SIGTERM
# Migrations run as their own step (`hokusai-registry migrate`) before new API replicas start.
CMD ["hokusai-registry", "serve", "--no-migrate"]
