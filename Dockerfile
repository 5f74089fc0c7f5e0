# syntax=docker/dockerfile:1
# One image for every role; the command picks it: `oms api`, `oms relay`, `oms consumer`,
# `oms worker`, `oms migrate`, `oms check`. It holds no secret and no configuration: everything
# comes from the environment at run time (see .env.example).

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_VERSION=0.13.9

FROM ghcr.io/astral-sh/uv:${UV_VERSION} AS uv

# ---- build: resolve exactly uv.lock into /opt/oms ---------------------------------------------
FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/oms
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-install-project
# Then the project itself, installed as a wheel (not editable): the wheel carries the Alembic
# scripts as oms/_migrations, so the runtime stage needs no source tree.
COPY README.md ./
COPY src ./src
COPY migrations ./migrations
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --locked --no-dev --no-editable

# ---- runtime: the interpreter, the virtual environment, a non-root user -------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 oms \
    && useradd --system --uid 10001 --gid oms --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin oms \
    && install --directory --owner oms --group oms /app
COPY --from=build /opt/oms /opt/oms
ENV PATH=/opt/oms/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    LOG_FORMAT=json
WORKDIR /app
USER 10001:10001
EXPOSE 8000
# Liveness of the API (the default command). Other roles override it: compose probes their
# METRICS_PORT instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["oms", "probe", "http://127.0.0.1:8000/health"]
ENTRYPOINT ["oms"]
CMD ["api", "--workers", "2"]
