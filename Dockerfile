# One image for every antifragile process: worker, init (search attributes), demo service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY antifragile ./antifragile
COPY workflows ./workflows
COPY activities ./activities
COPY workers ./workers
# The otel extra: tracing stays off unless ANTIFRAGILE_OTEL_ENDPOINT is set.
RUN pip install ".[otel]" && useradd --system --uid 10001 antifragile
USER antifragile
ENTRYPOINT ["antifragile"]
CMD ["worker"]
