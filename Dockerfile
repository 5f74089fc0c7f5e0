# One image for every role; the command picks it: `oms api`, `oms relay`, `oms consumer`,
# `oms worker`, `oms migrate`, `oms check`. It holds no secret and no configuration: everything
# comes from the environment at run time (see .env.example).

#
# No `# syntax=` line: it makes BuildKit fetch a frontend image from a registry. Builds with
# podman/buildah (`make image`, from local base images, see scripts/image) and with Docker BuildKit
# (`docker build .`, from the public images below). Both images are build arguments:
#   PYTHON_IMAGE: any Debian-like image with Python 3.11+ (python3 on PATH) and useradd;
#   UV_IMAGE: any image with the uv binary at /uv.

ARG PYTHON_IMAGE=python:3.11-slim
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

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
# Liveness of the API (the default command) on the port its own `--port` gives: `oms probe --api`
# reads the running `oms api` command line. Other roles override it: compose probes their
# METRICS_PORT instead.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["oms", "probe", "--api"]
ENTRYPOINT ["oms"]
CMD ["api", "--workers", "2"]
